//! Bookkeeping shared by all tasks of one `herald bench` run: connection counters, delivery
//! counts and latency histograms (sharded, so that receiver tasks on different worker threads
//! rarely contend), the run's clock, the payload format, the list of distinct errors, and the
//! once-a-second progress line on stderr.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Number of delivery shards; connection `i` records into shard `i % SHARDS`.
const SHARDS: usize = 32;
/// Distinct error messages kept (each with a count); later new ones are only counted.
const MAX_DISTINCT_ERRORS: usize = 12;

/// A latency histogram in microseconds, 1 µs .. 1000 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1_000_000_000, 3).expect("valid histogram bounds")
}

/// `{"p50":..,"p90":..,"p99":..,"max":..}` of a histogram (µs), or nulls if it is empty.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"p50": null, "p90": null, "p99": null, "max": null});
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

/// Builds a payload `p|<seq>|<send ns>|xxxx…`, padded with `x` to `size` bytes (longer if
/// `size` is smaller than the header). Only letters, digits and `|`: it needs no JSON escaping.
pub fn make_payload(seq: u64, send_ns: u64, size: usize) -> String {
    let mut s = format!("p|{seq}|{send_ns}|");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// Parses `p|<seq>|<send ns>|…` into `(seq, send ns)`.
pub fn parse_payload(p: &str) -> Option<(u64, u64)> {
    let rest = p.strip_prefix("p|")?;
    let mut it = rest.splitn(3, '|');
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}

/// Per-shard delivery accounting.
struct Shard {
    latency: Histogram<u64>,
    received: u64,
    duplicates: u64,
    last_ns: u64,
}

/// Totals over all shards.
pub struct Deliveries {
    /// Deliveries of published messages (first delivery of each per connection when
    /// duplicates are tracked).
    pub received: u64,
    /// Repeated deliveries of the same message to the same connection.
    pub duplicates: u64,
    /// Run-clock time of the last delivery (ns), 0 if none.
    pub last_ns: u64,
    /// Merged end-to-end latency histogram (µs).
    pub latency: Histogram<u64>,
}

/// Counters and histograms shared by every task of a run.
pub struct Shared {
    t0: Instant,
    /// Connections that completed the WebSocket handshake and got the welcome frame.
    pub connected: AtomicUsize,
    /// Connections whose subscribe request was acknowledged.
    pub subscribed: AtomicUsize,
    /// Connections that failed before they were subscribed.
    pub failed: AtomicUsize,
    /// Subscribed connections that ended (closed by the server, transport error, unsubscribed).
    pub closed: AtomicUsize,
    /// Publish requests answered with 2xx.
    pub published_ok: AtomicU64,
    /// Publish requests that failed (non-2xx, transport error, timeout).
    pub publish_errors: AtomicU64,
    /// Live subscribers when publishing started (0 before): the progress line expects each
    /// successful publish to reach all of them.
    pub phase_subscribers: AtomicU64,
    /// Messages the publisher will send (bounds the duplicate bitsets).
    pub messages: u64,
    /// Whether receivers keep a per-connection bitset of seen messages.
    pub track_duplicates: bool,
    /// Deliveries that could not be attributed to a published message.
    pub unparsed: AtomicU64,
    /// Deliveries whose `offset` was not greater than the previous one on that connection.
    pub offset_regressions: AtomicU64,
    /// Run-clock time (ns) of the last successful subscription.
    pub last_sub_ns: AtomicU64,
    shards: Vec<Mutex<Shard>>,
    subscribe_latency: Mutex<Histogram<u64>>,
    errors: Mutex<(Vec<(String, u64)>, u64)>,
}

impl Shared {
    /// A fresh state; `messages` is the number of messages that will be published and
    /// `track_duplicates` whether receivers keep bitsets of the messages they saw.
    pub fn new(messages: u64, track_duplicates: bool) -> Shared {
        Shared {
            t0: Instant::now(),
            connected: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            published_ok: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            phase_subscribers: AtomicU64::new(0),
            messages,
            track_duplicates,
            unparsed: AtomicU64::new(0),
            offset_regressions: AtomicU64::new(0),
            last_sub_ns: AtomicU64::new(0),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        latency: new_histogram(),
                        received: 0,
                        duplicates: 0,
                        last_ns: 0,
                    })
                })
                .collect(),
            subscribe_latency: Mutex::new(new_histogram()),
            errors: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Nanoseconds since the run started (one process-wide monotonic clock).
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// The run-clock time (ns) of `t`.
    pub fn ns_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// Seconds since the run started.
    pub fn elapsed_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Subscribed connections that are still open.
    pub fn live_subscribers(&self) -> u64 {
        let s = self.subscribed.load(Relaxed);
        s.saturating_sub(self.closed.load(Relaxed)) as u64
    }

    /// Records an error message; identical messages are counted, not repeated.
    pub fn note_error(&self, msg: impl Into<String>) {
        let msg = msg.into();
        let mut guard = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let (list, dropped) = &mut *guard;
        if let Some(entry) = list.iter_mut().find(|(m, _)| *m == msg) {
            entry.1 += 1;
        } else if list.len() < MAX_DISTINCT_ERRORS {
            list.push((msg, 1));
        } else {
            *dropped += 1;
        }
    }

    /// The recorded errors as JSON strings (`"message (xN)"` when repeated).
    pub fn errors_json(&self) -> Vec<Value> {
        let guard = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let (list, dropped) = &*guard;
        let mut out: Vec<Value> = list
            .iter()
            .map(|(m, c)| {
                if *c > 1 {
                    json!(format!("{m} (x{c})"))
                } else {
                    json!(m)
                }
            })
            .collect();
        if *dropped > 0 {
            out.push(json!(format!("... and {dropped} more errors")));
        }
        out
    }

    /// Marks a connection subscribed `latency_us` after it started connecting.
    pub fn mark_subscribed(&self, latency_us: u64) {
        self.subscribe_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(latency_us.max(1));
        self.last_sub_ns.fetch_max(self.now_ns(), Relaxed);
        self.subscribed.fetch_add(1, Relaxed);
    }

    /// The connect→subscribed latency histogram (µs).
    pub fn subscribe_latency(&self) -> Histogram<u64> {
        self.subscribe_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records one delivery for connection `conn`, `latency_us` after its send timestamp;
    /// `duplicate` if that connection had already received the message.
    pub fn record_delivery(&self, conn: usize, latency_us: u64, duplicate: bool) {
        let now = self.now_ns();
        let mut s = self.shards[conn % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if duplicate {
            s.duplicates += 1;
        } else {
            s.received += 1;
            s.latency.saturating_record(latency_us.max(1));
        }
        s.last_ns = s.last_ns.max(now);
    }

    /// Delivery count so far (cheap: no histogram merge).
    pub fn received(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).received)
            .sum()
    }

    /// Totals over all shards, with the merged latency histogram.
    pub fn deliveries(&self) -> Deliveries {
        let mut d = Deliveries {
            received: 0,
            duplicates: 0,
            last_ns: 0,
            latency: new_histogram(),
        };
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            d.received += s.received;
            d.duplicates += s.duplicates;
            d.last_ns = d.last_ns.max(s.last_ns);
            // Same bounds everywhere, so adding cannot fail.
            let _ = d.latency.add(&s.latency);
        }
        d
    }

    /// One progress line for stderr.
    pub fn progress_line(&self, scenario: &str, n: usize) -> String {
        format!(
            "[bench {scenario} {:6.1}s] connected {}/{n} subscribed {} failed {} closed {} | published {} (errors {}) | received {}/{}",
            self.elapsed_s(),
            self.connected.load(Relaxed),
            self.subscribed.load(Relaxed),
            self.failed.load(Relaxed),
            self.closed.load(Relaxed),
            self.published_ok.load(Relaxed),
            self.publish_errors.load(Relaxed),
            self.received(),
            self.phase_subscribers.load(Relaxed) * self.published_ok.load(Relaxed),
        )
    }
}

/// Prints [`Shared::progress_line`] to stderr every `every` until the task is aborted.
pub async fn progress(
    shared: std::sync::Arc<Shared>,
    scenario: &'static str,
    n: usize,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tick.tick().await;
        eprintln!("{}", shared.progress_line(scenario, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = make_payload(42, 123_456_789, 100);
        assert_eq!(p.len(), 100);
        assert!(p.starts_with("p|42|123456789|x"));
        assert_eq!(parse_payload(&p), Some((42, 123_456_789)));
        // A size below the header length gives just the header.
        assert_eq!(make_payload(1, 2, 0), "p|1|2|");
        assert_eq!(parse_payload("q|1|2|"), None);
    }

    #[test]
    fn errors_are_counted_not_repeated() {
        let s = Shared::new(10, false);
        s.note_error("a");
        s.note_error("a");
        s.note_error("b");
        assert_eq!(s.errors_json(), vec![json!("a (x2)"), json!("b")]);
    }

    #[test]
    fn deliveries_and_duplicates() {
        let s = Shared::new(10, true);
        s.record_delivery(0, 10, false);
        s.record_delivery(1, 30, false);
        s.record_delivery(1, 30, true);
        let d = s.deliveries();
        assert_eq!((d.received, d.duplicates), (2, 1));
        assert_eq!(d.latency.len(), 2);
        assert_eq!(s.received(), 2);
    }
}
