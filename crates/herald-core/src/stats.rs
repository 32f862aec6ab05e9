//! Server-wide counters, cheap to bump from any thread: each [`Counter`] has one slot per
//! core-ish (a thread adds to its own slot's cache line), so the publish path shares no
//! counter between threads; a reading sums the slots.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

#[derive(Default)]
pub struct Stats {
    pub connections_total: Counter,
    pub disconnections_total: Counter,
    /// Publications accepted (one per channel published to).
    pub publications: Counter,
    /// Frames queued to subscribers (messages out).
    pub deliveries: Counter,
    /// Direct messages queued.
    pub direct_messages: Counter,
    /// Requests received from clients (messages in).
    pub client_requests: Counter,
    pub slow_consumers: Counter,
    pub timed_out: Counter,
    pub kicked: Counter,
    /// Webhooks (herald-server's `webhooks` module): events delivered (2xx), events given up
    /// after `max_attempts`, events dropped because an endpoint's queue was full, and POSTs
    /// retried.
    pub webhook_delivered: Counter,
    pub webhook_failed: Counter,
    pub webhook_dropped: Counter,
    pub webhook_retries: Counter,
    /// WebSocket handshakes refused by a connection limit (the sum of the `refused_*` below).
    pub refused_connections: Counter,
    pub refused_max_connections: Counter,
    pub refused_per_ip: Counter,
    pub refused_per_user: Counter,
    pub refused_connect_rate: Counter,
    pub refused_origin: Counter,
    /// Messages dropped by `limits.messages_per_second`.
    pub rate_limited: Counter,
    /// Connections closed (4102) for flooding past the message rate.
    pub rate_limited_disconnects: Counter,
    /// Kept publications dropped to stay within `[history] max_bytes`.
    pub history_evicted: Counter,
    /// History changes the store writer could not take (its queue was full): not kept on disk.
    pub history_write_dropped: Counter,
    /// Recoveries that replayed every missed publication, and those that could not.
    pub recovered: Counter,
    pub recover_failed: Counter,
    /// `[[ingress]]` (herald-server's `ingress` module): queue messages published, and those
    /// refused (not JSON, missing fields, refused by the hub), acknowledged and dropped.
    pub ingress_published: Counter,
    pub ingress_rejected: Counter,
}

impl Stats {
    pub fn add(counter: &Counter, n: u64) {
        counter.add(n);
    }
}

/// Slots per counter: threads beyond this share slots (still correct, only contended).
const SLOTS: usize = 8;

/// A relaxed counter that threads bump without sharing a cache line: thread `t` adds to slot
/// `t % SLOTS` (threads are numbered as they first count); [`Counter::get`] sums the slots.
#[derive(Default)]
pub struct Counter {
    slots: [Slot; SLOTS],
}

/// One slot, alone on its cache line (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// Numbers threads in the order they first count.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

impl Counter {
    pub fn add(&self, n: u64) {
        let slot = MY_SLOT.try_with(|s| *s).unwrap_or(0);
        self.slots[slot].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum so far (each slot read once; counts added meanwhile may or may not be in it).
    pub fn get(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..SLOTS * 2 + 1)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(i as u64 + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (SLOTS * 2 + 1) as u64;
        assert_eq!(c.get(), 1000 * n * (n + 1) / 2);
    }

    #[test]
    fn slots_are_on_their_own_cache_lines() {
        assert_eq!(std::mem::align_of::<Slot>(), 128);
        assert_eq!(std::mem::size_of::<Counter>(), 128 * SLOTS);
    }
}
