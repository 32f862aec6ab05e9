//! The publishing side of `herald bench fanout`: `POST /api/v1/publish` over keep-alive HTTP
//! connections (the pool opens up to `window` of them), either on a fixed-rate schedule or as
//! fast as `window` in-flight requests allow. Each payload carries its send timestamp; in rate
//! mode that is the *scheduled* send time, so a server that holds the publisher up is charged
//! for it (no coordinated omission).

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

/// What the publisher did.
pub struct Published {
    /// Requests issued.
    pub attempted: u64,
    /// Requests answered with 2xx.
    pub ok: u64,
    /// Requests that failed.
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
    /// JSON-encoded channel name, e.g. `"bench"` with the quotes.
    pub channel_json: String,
    /// Messages to publish.
    pub messages: u64,
    /// Pacing.
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
    let mut inflight: JoinSet<(bool, u64)> = JoinSet::new();
    let start = Instant::now();
    let mut out = Published {
        attempted: 0,
        ok: 0,
        errors: 0,
        server_delivered: 0,
        first_ns: shared.ns_at(start.into_std()),
        done_ns: 0,
    };
    for seq in 0..plan.messages {
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
                "publishing abandoned: the first {} requests all failed",
                out.errors
            ));
            break;
        }
        let send_ns = scheduled_ns.unwrap_or_else(|| shared.now_ns());
        let body = format!(
            "{{\"channels\":[{}],\"data\":\"{}\"}}",
            plan.channel_json,
            make_payload(seq, send_ns, plan.payload_bytes)
        );
        let api = api.clone();
        let shared = shared.clone();
        out.attempted += 1;
        inflight.spawn(async move {
            let r = publish_one(&api, body).await;
            drop(permit);
            match r {
                Ok(delivered) => {
                    shared.published_ok.fetch_add(1, Relaxed);
                    (true, delivered)
                }
                Err(e) => {
                    shared.publish_errors.fetch_add(1, Relaxed);
                    shared.note_error(format!("publish: {e}"));
                    (false, 0)
                }
            }
        });
    }
    while let Some(r) = inflight.join_next().await {
        book(&mut out, r);
    }
    out.done_ns = shared.now_ns();
    out
}

/// Adds one finished request to the totals.
fn book(out: &mut Published, r: Result<(bool, u64), tokio::task::JoinError>) {
    match r {
        Ok((true, delivered)) => {
            out.ok += 1;
            out.server_delivered += delivered;
        }
        _ => out.errors += 1,
    }
}

/// One publish request; returns the `delivered` count of the answer.
async fn publish_one(api: &Api, body: String) -> anyhow::Result<u64> {
    let req = api.request_raw(
        "POST",
        "/api/v1/publish",
        &[("content-type", "application/json")],
        Bytes::from(body),
    );
    let (status, _headers, answer) = tokio::time::timeout(PUBLISH_TIMEOUT, req)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {PUBLISH_TIMEOUT:?}"))??;
    if !(200..300).contains(&status) {
        anyhow::bail!("HTTP {status}: {:.200}", String::from_utf8_lossy(&answer));
    }
    let delivered = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| {
            v["channels"].as_array().map(|chs| {
                chs.iter()
                    .filter_map(|c| c["delivered"].as_u64())
                    .sum::<u64>()
            })
        })
        .unwrap_or(0);
    Ok(delivered)
}
