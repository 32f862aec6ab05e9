//! Server-wide counters, cheap to bump from any thread (relaxed atomics).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub disconnections_total: AtomicU64,
    /// Publications accepted (one per channel published to).
    pub publications: AtomicU64,
    /// Frames queued to subscribers (messages out).
    pub deliveries: AtomicU64,
    /// Direct messages queued.
    pub direct_messages: AtomicU64,
    /// Requests received from clients (messages in).
    pub client_requests: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub timed_out: AtomicU64,
    pub kicked: AtomicU64,
    /// Webhooks (herald-server's `webhooks` module): events delivered (2xx), events given up
    /// after `max_attempts`, events dropped because an endpoint's queue was full, and POSTs
    /// retried.
    pub webhook_delivered: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub webhook_retries: AtomicU64,
    /// WebSocket handshakes refused by a connection limit (the sum of the `refused_*` below).
    pub refused_connections: AtomicU64,
    pub refused_max_connections: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_per_user: AtomicU64,
    pub refused_connect_rate: AtomicU64,
    pub refused_origin: AtomicU64,
    /// Messages dropped by `limits.messages_per_second`.
    pub rate_limited: AtomicU64,
    /// Connections closed (4102) for flooding past the message rate.
    pub rate_limited_disconnects: AtomicU64,
    /// Kept publications dropped to stay within `[history] max_bytes`.
    pub history_evicted: AtomicU64,
    /// History changes the store writer could not take (its queue was full): not kept on disk.
    pub history_write_dropped: AtomicU64,
    /// Recoveries that replayed every missed publication, and those that could not.
    pub recovered: AtomicU64,
    pub recover_failed: AtomicU64,
    /// `[[ingress]]` (herald-server's `ingress` module): queue messages published, and those
    /// refused (not JSON, missing fields, refused by the hub), acknowledged and dropped.
    pub ingress_published: AtomicU64,
    pub ingress_rejected: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A point-in-time view, as served by `GET /api/v1/stats`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatsSnapshot {
    /// Nodes whose figures are summed here (1: this node alone).
    #[serde(default)]
    pub nodes: u64,
    /// Open connections now.
    pub connections: u64,
    pub connections_total: u64,
    pub disconnections_total: u64,
    /// Channels that exist now (created through the API or having subscribers).
    pub channels: u64,
    /// Subscriptions now, summed over channels.
    pub subscriptions: u64,
    pub messages_in: u64,
    pub publications: u64,
    pub messages_out: u64,
    pub direct_messages: u64,
    pub slow_consumers: u64,
    pub timed_out: u64,
    pub kicked: u64,
    /// Lifecycle events a webhook endpoint acknowledged with a 2xx.
    pub webhook_delivered: u64,
    /// Lifecycle events given up after a webhook's `max_attempts`.
    pub webhook_failed: u64,
    /// Lifecycle events dropped because a webhook's queue was full.
    pub webhook_dropped: u64,
    /// Webhook POSTs retried after a failure.
    pub webhook_retries: u64,
    /// WebSocket handshakes refused by a connection limit, in all (docs/errors.md).
    pub refused_connections: u64,
    /// ... of them at `limits.max_connections` (503 `too_many`).
    pub refused_max_connections: u64,
    /// ... at `limits.max_connections_per_ip` (429 `too_many`).
    pub refused_per_ip: u64,
    /// ... at `limits.max_connections_per_user` (429 `too_many`; also counts `auth` refusals).
    pub refused_per_user: u64,
    /// ... by `limits.connect_rate_per_ip` (429 `rate_limited`).
    pub refused_connect_rate: u64,
    /// ... by `websocket.allowed_origins` (403 `forbidden`).
    pub refused_origin: u64,
    /// Messages dropped by `limits.messages_per_second` (answered `rate_limited`).
    pub rate_limited: u64,
    /// Connections closed with 4102 for flooding past the message rate.
    pub rate_limited_disconnects: u64,
    /// Publications kept in channel history now, and the bytes they count (`[history]
    /// max_bytes`).
    pub history_messages: u64,
    pub history_bytes: u64,
    /// Kept publications dropped to stay within `[history] max_bytes`.
    pub history_evicted: u64,
    /// History changes not written to disk because the store writer fell behind.
    pub history_write_dropped: u64,
    /// Recoveries that replayed every missed publication (`recovered: true`), and those that
    /// could not (`recovered: false`).
    pub recovered: u64,
    pub recover_failed: u64,
    /// Messages taken from an `[[ingress]]` queue and published (one per message, whatever
    /// the number of channels).
    #[serde(default)]
    pub ingress_published: u64,
    /// Ingress messages refused (not JSON, missing fields, refused by the hub): counted,
    /// logged and dropped.
    #[serde(default)]
    pub ingress_rejected: u64,
    pub uptime_seconds: u64,
}
