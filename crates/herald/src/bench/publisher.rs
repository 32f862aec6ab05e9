//! The publishing side of `herald bench fanout` and `channels`: `POST /api/v1/publish` (or
//! `POST /api/v1/batch` with `--batch K` publications per request) over keep-alive HTTP
//! connections (the pool opens up to `window` of them), either on a fixed-rate schedule or as
//! fast as `window` in-flight requests allow. Each payload carries its send timestamp; in rate
//! mode that is the *scheduled* send time, so a server that holds the publisher up is charged
//! for it (no coordinated omission). Publication `seq` goes to one channel, or in `channels`
//! to channel `seq % n` (round robin over the subscribers' own channels).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use herald_client::Api;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::state::{Shared, make_payload};

/// Time limit of one publish request.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishing stops when this many requests failed before any succeeded.
const GIVE_UP_AFTER_ERRORS: u64 = 10;

/// How to pace the publishes.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// `rate` messages per second on a fixed schedule (still at most `window` in flight).
    Rate(f64),
    /// As fast as possible with at most `window` requests in flight.
    Max,
}

/// Where publication `seq` goes.
pub enum Destinations {
    /// Every publication to this channel.
    One(String),
    /// Publication `seq` to `channel_of(base, seq % n)`.
    RoundRobin { base: String, n: u64 },
}

impl Destinations {
    /// The JSON string (with quotes) of publication `seq`'s channel.
    fn channel_json(&self, seq: u64) -> String {
        match self {
            Destinations::One(c) => serde_json::Value::from(c.as_str()).to_string(),
            Destinations::RoundRobin { base, n } => {
                serde_json::Value::from(super::subscriber::channel_of(base, seq % n)).to_string()
            }
        }
    }
}

/// What the publisher did.
pub struct Published {
    /// Publications issued.
    pub attempted: u64,
    /// Publications accepted (a 2xx answer; in a batch, each publication's own answer).
    pub ok: u64,
    /// Publications that failed.
    pub errors: u64,
    /// Sum of `delivered` over the 2xx answers (what the server says it fanned out to).
    pub server_delivered: u64,
    /// Run-clock time (ns) of the first request.
    pub first_ns: u64,
    /// Run-clock time (ns) when the last answer arrived.
    pub done_ns: u64,
}

/// Publishing parameters.
pub struct PublishPlan {
    /// Where each publication goes.
    pub destinations: Destinations,
    /// Messages to publish.
    pub messages: u64,
    /// Publications per request: 1 is `POST /api/v1/publish`, more is `POST /api/v1/batch`.
    pub batch: usize,
    /// Pacing (in publications per second: a batch request is sent when its first
    /// publication is due).
    pub pace: Pace,
    /// Maximum requests in flight.
    pub window: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Stop issuing requests after this instant.
    pub deadline: Instant,
}

/// Publishes `plan.messages` messages; returns once every issued request has been answered or
/// has timed out (bounded by `plan.deadline` + the request timeout).
pub async fn publish(shared: &Arc<Shared>, api: &Api, plan: &PublishPlan) -> Published {
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let mut inflight: JoinSet<Booked> = JoinSet::new();
    let start = Instant::now();
    let mut out = Published {
        attempted: 0,
        ok: 0,
        errors: 0,
        server_delivered: 0,
        first_ns: shared.ns_at(start.into_std()),
        done_ns: 0,
    };
    let batch = plan.batch.max(1) as u64;
    let mut seq = 0;
    while seq < plan.messages {
        let scheduled_ns = match plan.pace {
            Pace::Rate(rate) => {
                let at = start + Duration::from_secs_f64(seq as f64 / rate);
                if at > plan.deadline {
                    shared.note_error("publish phase hit its time limit");
                    break;
                }
                sleep_until(at).await;
                Some(shared.ns_at(at.into_std()))
            }
            Pace::Max => None,
        };
        let Ok(permit) = timeout_at(plan.deadline, window.clone().acquire_owned()).await else {
            shared.note_error("publish phase hit its time limit");
            break;
        };
        let Ok(permit) = permit else { break };
        // Reap finished requests so the set stays small.
        while let Some(r) = inflight.try_join_next() {
            book(&mut out, r);
        }
        if out.ok == 0 && out.errors >= GIVE_UP_AFTER_ERRORS {
            shared.note_error(format!(
                "publishing abandoned: the first {} publications all failed",
                out.errors
            ));
            break;
        }
        let send_ns = scheduled_ns.unwrap_or_else(|| shared.now_ns());
        let count = batch.min(plan.messages - seq);
        let one = |seq: u64| {
            format!(
                "{{\"channels\":[{}],\"data\":\"{}\"}}",
                plan.destinations.channel_json(seq),
                make_payload(seq, send_ns, plan.payload_bytes)
            )
        };
        let (path, body) = if plan.batch <= 1 {
            ("/api/v1/publish", one(seq))
        } else {
            let items: Vec<String> = (seq..seq + count).map(one).collect();
            (
                "/api/v1/batch",
                format!("{{\"publications\":[{}]}}", items.join(",")),
            )
        };
        seq += count;
        let api = api.clone();
        let shared = shared.clone();
        out.attempted += count;
        inflight.spawn(async move {
            let r = publish_one(&api, path, body).await;
            drop(permit);
            let booked = match r {
                Ok(booked) => booked,
                Err(e) => {
                    shared.note_error(format!("publish: {e}"));
                    Booked {
                        ok: 0,
                        errors: count,
                        delivered: 0,
                    }
                }
            };
            if booked.errors > 0 && booked.ok > 0 {
                shared.note_error("a batch had refused publications");
            }
            shared.published_ok.fetch_add(booked.ok, Relaxed);
            shared.publish_errors.fetch_add(booked.errors, Relaxed);
            booked
        });
    }
    while let Some(r) = inflight.join_next().await {
        book(&mut out, r);
    }
    out.done_ns = shared.now_ns();
    out
}

/// What one request did.
struct Booked {
    ok: u64,
    errors: u64,
    delivered: u64,
}

/// Adds one finished request to the totals.
fn book(out: &mut Published, r: Result<Booked, tokio::task::JoinError>) {
    match r {
        Ok(b) => {
            out.ok += b.ok;
            out.errors += b.errors;
            out.server_delivered += b.delivered;
        }
        Err(_) => out.errors += 1,
    }
}

/// One publish (or batch) request; what the answer says of its publications.
async fn publish_one(api: &Api, path: &str, body: String) -> anyhow::Result<Booked> {
    let req = api.request_raw(
        "POST",
        path,
        &[("content-type", "application/json")],
        Bytes::from(body),
    );
    let (status, _headers, answer) = tokio::time::timeout(PUBLISH_TIMEOUT, req)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {PUBLISH_TIMEOUT:?}"))??;
    if !(200..300).contains(&status) {
        anyhow::bail!("HTTP {status}: {:.200}", String::from_utf8_lossy(&answer));
    }
    let v = serde_json::from_slice::<serde_json::Value>(&answer)
        .map_err(|e| anyhow::anyhow!("answer is not JSON: {e}"))?;
    let delivered = |one: &serde_json::Value| -> u64 {
        one["channels"].as_array().map_or(0, |chs| {
            chs.iter().filter_map(|c| c["delivered"].as_u64()).sum()
        })
    };
    Ok(match v["results"].as_array() {
        // A batch: one answer per publication, in order.
        Some(results) => {
            let ok = results.iter().filter(|r| r.get("error").is_none()).count() as u64;
            Booked {
                ok,
                errors: results.len() as u64 - ok,
                delivered: results.iter().map(delivered).sum(),
            }
        }
        None => Booked {
            ok: 1,
            errors: 0,
            delivered: delivered(&v),
        },
    })
}
