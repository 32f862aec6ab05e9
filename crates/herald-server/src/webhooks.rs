//! Webhooks: lifecycle events POSTed to the `[[webhooks]]` endpoints as CloudEvents 1.0
//! (structured JSON mode, or a JSON array in batch mode), signed with HMAC-SHA256, retried
//! with exponential backoff and full jitter. docs/webhooks.md is the user-facing side.
//!
//! Each endpoint is an [`EventSink`] on the hub's event bus with a bounded queue, and one
//! worker task that drains it. The sink's `emit` runs on the hub's thread, possibly under
//! registry locks: it only `try_send`s, so a slow or dead endpoint never delays the hub or a
//! client. A full queue drops the new event, counts it (`webhook_dropped`) and logs at most
//! once per [`OVERFLOW_LOG_INTERVAL_MS`] per endpoint (`crate::drop_log`). Counters live in the hub's `Stats`, so
//! `GET /api/v1/stats` shows them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::client::now_ms;
use herald_core::stats::Stats;
use herald_core::{Event, EventMask, EventSink, Hub};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::WebhookConfig;
use crate::drop_log::DropLog;

/// Content type of a POST holding one CloudEvent (`batch_max = 1`).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of a POST holding a JSON array of CloudEvents (`batch_max > 1`).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Unix seconds at which the POST was signed.
pub const TIMESTAMP_HEADER: &str = "herald-timestamp";
/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "herald-signature";
/// Identifies one delivery (one batch); the same on every retry of it.
pub const DELIVERY_HEADER: &str = "herald-webhook-id";

/// Overflow is logged at most this often per endpoint (the counter sees every drop).
pub const OVERFLOW_LOG_INTERVAL_MS: u64 = 10_000;
/// How long shutdown waits for the workers' last POSTs.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Bytes of an endpoint's answer that are read (and ignored).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The running webhook workers.
pub struct Webhooks {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Registers a sink per configured endpoint on `hub`'s event bus and spawns its worker.
    pub fn start(configs: &[WebhookConfig], hub: &Hub) -> anyhow::Result<Webhooks> {
        let (stop, stop_rx) = watch::channel(false);
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let host = hostname();
        let mut tasks = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let mask = config
                .mask()
                .map_err(|t| anyhow::anyhow!("webhooks[{i}].types: unknown event type {t:?}"))?;
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            let stats = hub.shared_stats();
            hub.events().add_sink(Arc::new(Sink {
                mask,
                tx,
                stats: stats.clone(),
                url: config.url.clone(),
                drops: DropLog::new(OVERFLOW_LOG_INTERVAL_MS),
            }));
            let source = if config.source.is_empty() {
                format!("herald://{host}")
            } else {
                config.source.clone()
            };
            let endpoint = Endpoint {
                url: config.url.clone(),
                secret: config.secret.0.as_bytes().to_vec(),
                batch_max: config.batch_max,
                timeout: Duration::from_millis(config.timeout_ms),
                max_attempts: config.max_attempts,
                backoff_base_ms: config.backoff_base_ms,
                backoff_max_ms: config.backoff_max_ms,
                source,
                run_id: run_id.clone(),
                client: Client::builder(TokioExecutor::new()).build_http(),
                stats,
            };
            tracing::info!(url = %config.url, types = ?config.types, "webhook endpoint configured");
            tasks.push(tokio::spawn(endpoint.run(rx, stop_rx.clone())));
        }
        Ok(Webhooks { stop, tasks })
    }

    /// Asks the workers to stop: each makes one last attempt at what is queued (no more
    /// retries), within `grace`; then they are aborted. Dropping `Webhooks` also stops them.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// The hub side of an endpoint: queue and return.
struct Sink {
    mask: EventMask,
    tx: mpsc::Sender<Arc<Event>>,
    stats: Arc<Stats>,
    url: String,
    drops: DropLog,
}

impl EventSink for Sink {
    fn wants(&self) -> EventMask {
        self.mask
    }

    fn emit(&self, event: &Arc<Event>) {
        match self.tx.try_send(event.clone()) {
            Ok(()) => {
                if let Some(dropped) = self.drops.room() {
                    tracing::warn!(url = %self.url, dropped,
                        "webhook queue has room again; more events were dropped before");
                }
            }
            Err(TrySendError::Closed(_)) => {} // the server is stopping
            Err(TrySendError::Full(_)) => {
                Stats::add(&self.stats.webhook_dropped, 1);
                if let Some(dropped) = self.drops.dropped(now_ms()) {
                    tracing::warn!(
                        url = %self.url,
                        dropped,
                        "webhook queue full: events dropped (endpoint too slow or down)"
                    );
                }
            }
        }
    }
}

/// The worker side of an endpoint.
struct Endpoint {
    url: String,
    secret: Vec<u8>,
    batch_max: usize,
    timeout: Duration,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    source: String,
    run_id: String,
    client: Client<HttpConnector, Full<Bytes>>,
    stats: Arc<Stats>,
}

impl Endpoint {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Event>>, mut stop: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                event = rx.recv() => match event {
                    Some(e) => e,
                    None => return,
                },
            };
            let batch = self.fill_batch(first, &mut rx);
            self.deliver(&batch, &mut stop).await;
        }
        // Stopping: one attempt for each batch still queued (the caller's grace bounds it).
        rx.close();
        while let Ok(first) = rx.try_recv() {
            let batch = self.fill_batch(first, &mut rx);
            self.deliver(&batch, &mut stop).await;
        }
    }

    fn fill_batch(
        &self,
        first: Arc<Event>,
        rx: &mut mpsc::Receiver<Arc<Event>>,
    ) -> Vec<Arc<Event>> {
        let mut batch = vec![first];
        while batch.len() < self.batch_max {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        batch
    }

    /// POSTs `batch` until a 2xx, `max_attempts` or shutdown.
    async fn deliver(&self, batch: &[Arc<Event>], stop: &mut watch::Receiver<bool>) {
        let n = batch.len() as u64;
        let body = match self.body(batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(url = %self.url, error = %e, "webhook body not serializable");
                Stats::add(&self.stats.webhook_failed, n);
                return;
            }
        };
        let delivery = uuid::Uuid::new_v4().to_string();
        let mut attempt = 1;
        loop {
            let error = match self.post(&body, &delivery).await {
                Ok(()) => {
                    Stats::add(&self.stats.webhook_delivered, n);
                    return;
                }
                Err(e) => e,
            };
            if attempt >= self.max_attempts || stopping(stop) {
                Stats::add(&self.stats.webhook_failed, n);
                tracing::warn!(
                    url = %self.url, %delivery, events = n, attempts = attempt, %error,
                    "webhook delivery given up"
                );
                return;
            }
            let delay = backoff(attempt, self.backoff_base_ms, self.backoff_max_ms);
            tracing::debug!(
                url = %self.url, %delivery, attempt, %error, delay_ms = delay.as_millis() as u64,
                "webhook POST failed, retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Stats::add(&self.stats.webhook_retries, 1);
            attempt += 1;
        }
    }

    /// The POST body: one CloudEvent, or an array of them in batch mode.
    fn body(&self, batch: &[Arc<Event>]) -> serde_json::Result<Bytes> {
        let events: Vec<CloudEvent<'_>> = batch.iter().map(|e| self.cloud_event(e)).collect();
        let body = if self.batch_max > 1 {
            serde_json::to_vec(&events)?
        } else {
            serde_json::to_vec(&events[0])?
        };
        Ok(Bytes::from(body))
    }

    fn cloud_event<'a>(&'a self, e: &'a Event) -> CloudEvent<'a> {
        CloudEvent {
            specversion: "1.0",
            id: format!("{}-{}", self.run_id, e.seq),
            source: &self.source,
            kind: e.kind.as_str(),
            time: rfc3339_ms(e.time_ms),
            datacontenttype: "application/json",
            data: &e.data,
        }
    }

    async fn post(&self, body: &Bytes, delivery: &str) -> Result<(), String> {
        let timestamp = now_ms() / 1000;
        let content_type = if self.batch_max > 1 {
            BATCH_CONTENT_TYPE
        } else {
            CONTENT_TYPE
        };
        let request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, sign(&self.secret, timestamp, body))
            .header(DELIVERY_HEADER, delivery)
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            // Read the answer so the connection can be reused; its content does not matter.
            let _ = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
    }
}

/// Shutdown was asked for, or the server was dropped without it.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// One CloudEvent 1.0 in structured JSON mode.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    datacontenttype: &'static str,
    data: &'a serde_json::Map<String, serde_json::Value>,
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the `Herald-Signature` value.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The delay before retry number `attempt` (1 = after the first failure): uniformly random
/// in `[0, min(max, base * 2^(attempt-1))]` ("full jitter").
fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let ceiling = base_ms
        .saturating_mul(1u64 << (attempt - 1).min(40))
        .min(max_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2023-11-14T22:13:20.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms % 1000
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// This machine's name (the default CloudEvents `source`, and part of the default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_from_millis() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'whsec-0123456789abcdef'
        let sig = sign(b"whsec-0123456789abcdef", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "v1=d77c78ac4da074c56908b55eac30358b2a7bfc573be4c76819af5102e8dcf939"
        );
        assert_ne!(
            sig,
            sign(b"whsec-0123456789abcdeX", 1_700_000_000, br#"{"a":1}"#)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for _ in 0..100 {
            assert!(backoff(1, 200, 30_000) <= Duration::from_millis(200));
            assert!(backoff(3, 200, 30_000) <= Duration::from_millis(800));
            assert!(backoff(30, 200, 30_000) <= Duration::from_millis(30_000));
            assert!(backoff(100, 200, 30_000) <= Duration::from_millis(30_000));
        }
    }
}
