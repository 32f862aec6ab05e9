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
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A point-in-time view, as served by `GET /api/v1/stats`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StatsSnapshot {
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
    pub uptime_seconds: u64,
}
