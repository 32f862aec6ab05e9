//! `herald bench recover`: N subscribers that drop their connection every `--drop-every`
//! seconds (each at its own phase) and come back with recovery, while one publisher sends to
//! their channel at `--rate` over the HTTP API for `--duration` seconds. Every subscriber
//! checks each channel offset it receives: a gap is a loss, an offset seen before a duplicate.
//! At the end each subscriber recovers once more and must reach the last offset published.
//!
//! Reports deliveries, losses, duplicates, recoveries that worked and failed, and recovery
//! time (reconnect until the subscribe reply, replayed messages included).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::{Api, Client, Event};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::state::percentiles;
use super::{Ctx, Report, round};

/// Counters of all subscribers.
#[derive(Default)]
struct Totals {
    delivered: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    drops: AtomicU64,
    recovered: AtomicU64,
    recover_failed: AtomicU64,
    /// Of `lost`: missing from a recovery that failed, and gaps between live deliveries.
    lost_unrecovered: AtomicU64,
    lost_live: AtomicU64,
    /// Subscriptions the server ended (`unsubscribed`), each subscribed again with recovery.
    resubscribed: AtomicU64,
    /// Subscribe requests refused, by error code (each retried on a new connection).
    refused: Mutex<std::collections::BTreeMap<String, u64>>,
    connect_errors: AtomicU64,
    /// Subscribers that reached the last offset at the end.
    caught_up: AtomicU64,
    /// Microseconds from starting to reconnect until the subscribe reply.
    recovery_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Totals {
    fn refused(&self, code: &str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(code.to_string()).or_default() += 1;
        }
    }
}

/// What one subscriber has seen: the epoch and the last offset, in order.
struct Seen {
    epoch: String,
    last: u64,
}

pub async fn recover(ctx: &Ctx, tasks: &mut JoinSet<()>, report: &mut Report, deadline: Instant) {
    let args = &ctx.args;
    let Some(api) = ctx.api.clone() else { return };
    let rate = args.rate.unwrap_or(super::DEFAULT_RATE);
    let duration = Duration::from_secs_f64(args.duration);
    let drop_every = Duration::from_secs_f64(args.drop_every);
    report.set("mode", "recover");
    report.set("rate", rate);
    report.set("duration_s", args.duration);
    report.set("drop_every_s", args.drop_every);
    // The channel must keep what a subscriber misses while it is away.
    let keep = ((rate * (args.drop_every + 5.0)).ceil() as u64).clamp(100, 10_000);
    let create = json!({"name": args.channel, "history_size": keep, "history_ttl_secs": 600});
    match api.request("POST", "/api/v1/channels", Some(&create)).await {
        Ok((201, _)) => report.set("history_size", keep),
        Ok((409, _)) => report.set("history_size", "existing channel"),
        Ok((status, body)) => {
            ctx.shared
                .note_error(format!("creating the channel: {status} {body}"));
            return;
        }
        Err(e) => {
            ctx.shared
                .note_error(format!("creating the channel: {e:#}"));
            return;
        }
    }
    let first = match api.publish(&[&args.channel], json!("start")).await {
        Ok(r) => r,
        Err(e) => {
            ctx.shared.note_error(format!("first publish: {e:#}"));
            return;
        }
    };
    let epoch = first["channels"][0]["epoch"].as_str().unwrap_or_default();
    let start_offset = first["channels"][0]["offset"].as_u64().unwrap_or(0);

    let totals = Arc::new(Totals {
        recovery_us: Mutex::new(hdrhistogram::Histogram::new(3).ok()),
        ..Totals::default()
    });
    let last_offset = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + duration;
    let n = args.connections;
    for i in 0..n {
        let url = args.url.clone();
        let channel = args.channel.clone();
        let totals = totals.clone();
        let last_offset = last_offset.clone();
        let seen = Seen {
            epoch: epoch.to_string(),
            last: start_offset,
        };
        // Spread the drops: subscriber i drops first after a share of the period.
        let phase = drop_every.mul_f64(i as f64 / n as f64);
        tasks.spawn(subscriber(
            url,
            channel,
            seen,
            phase,
            drop_every,
            stop_at,
            deadline,
            last_offset,
            totals,
        ));
    }

    let cpu0 = ctx.probe.cpu_seconds().await;
    let t0 = Instant::now();
    let published = publish(&api, &args.channel, rate, stop_at, deadline).await;
    last_offset.store(published.last.max(start_offset), Relaxed);
    report.set("published_ok", published.ok);
    report.set("publish_errors", published.errors);
    // The subscribers catch up and end on their own (bounded by the run deadline).
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            ctx.shared.note_error(format!("subscriber task: {e}"));
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let t = &totals;
    report.set("subscribed", n as u64);
    report.set("received", t.delivered.load(Relaxed));
    let expected = n as u64 * (published.last.saturating_sub(start_offset));
    report.set("expected", expected);
    report.set("lost", t.lost.load(Relaxed));
    report.set("duplicates", t.duplicates.load(Relaxed));
    report.set("extra", t.duplicates.load(Relaxed));
    report.set("drops", t.drops.load(Relaxed));
    report.set("recovered", t.recovered.load(Relaxed));
    report.set("recover_failed", t.recover_failed.load(Relaxed));
    report.set("lost_unrecovered", t.lost_unrecovered.load(Relaxed));
    report.set("lost_live", t.lost_live.load(Relaxed));
    report.set("resubscribed", t.resubscribed.load(Relaxed));
    let refused = t.refused.lock().map(|m| m.clone()).unwrap_or_default();
    report.set("subscribe_refused", refused.values().sum::<u64>());
    report.set("subscribe_refused_by_code", json!(refused));
    report.set("connect_errors", t.connect_errors.load(Relaxed));
    report.set("caught_up", t.caught_up.load(Relaxed));
    if let Some(h) = t
        .recovery_us
        .lock()
        .ok()
        .as_deref()
        .and_then(Option::as_ref)
    {
        report.set("recovery_us", percentiles(h));
    }
    if wall > 0.0 {
        report.set(
            "deliveries_per_s",
            round(t.delivered.load(Relaxed) as f64 / wall, 0),
        );
    }
    if let (Some(a), Some(b)) = (cpu0, ctx.probe.cpu_seconds().await) {
        report.set("server_cpu_s", round((b - a).max(0.0), 3));
        report.set("server_cpu_pct", round((b - a).max(0.0) / wall * 100.0, 1));
    }
}

struct Published {
    ok: u64,
    errors: u64,
    last: u64,
}

/// Publishes at `rate` until `stop_at`; one request at a time, on a fixed schedule.
async fn publish(
    api: &Api,
    channel: &str,
    rate: f64,
    stop_at: Instant,
    deadline: Instant,
) -> Published {
    let mut out = Published {
        ok: 0,
        errors: 0,
        last: 0,
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut seq = 0u64;
    while Instant::now() < stop_at.min(deadline) {
        tokio::time::sleep_until(next).await;
        next += interval;
        seq += 1;
        match api.publish(&[channel], json!({ "seq": seq })).await {
            Ok(r) => {
                out.ok += 1;
                out.last = out
                    .last
                    .max(r["channels"][0]["offset"].as_u64().unwrap_or(0));
            }
            Err(_) => out.errors += 1,
        }
    }
    out
}

/// One subscriber: connect and recover, read until its next drop, drop, again; after the
/// publisher stops, recover once more and read up to the last offset. As the native clients
/// do, it subscribes again with recovery at once when the server ends its subscription
/// (`unsubscribed`, e.g. `broker_reconnected` in a cluster), and after a refused subscribe it
/// drops the connection and comes back a moment later.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    url: String,
    channel: String,
    mut seen: Seen,
    phase: Duration,
    every: Duration,
    stop_at: Instant,
    deadline: Instant,
    last_offset: Arc<AtomicU64>,
    totals: Arc<Totals>,
) {
    let mut next_drop = Instant::now() + phase;
    'connection: loop {
        let finishing = Instant::now() >= stop_at;
        let t0 = Instant::now();
        let Ok(mut client) = Client::connect(&url).await else {
            totals.connect_errors.fetch_add(1, Relaxed);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut since = t0;
        loop {
            let reply = client
                .request(json!({"op":"subscribe","channel":channel,
                    "recover":{ channel.clone(): {"epoch": seen.epoch, "offset": seen.last}}}))
                .await;
            let Ok(reply) = reply else {
                totals.connect_errors.fetch_add(1, Relaxed);
                continue 'connection;
            };
            if let Some(code) = reply["error"]["code"].as_str() {
                // Refused (a cluster node without its broker answers 503-like errors): not a
                // recovery that failed; the next attempt recovers from the same position.
                totals.refused(code);
                if Instant::now() >= deadline {
                    return;
                }
                drop(client);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'connection;
            }
            if let Some(h) = totals
                .recovery_us
                .lock()
                .ok()
                .as_deref_mut()
                .and_then(Option::as_mut)
            {
                let _ = h.record(since.elapsed().as_micros() as u64);
            }
            let r = &reply["result"]["recovered"][&channel];
            if r["recovered"] == true {
                totals.recovered.fetch_add(1, Relaxed);
            } else {
                totals.recover_failed.fetch_add(1, Relaxed);
                // Resynchronise: what is missing counts as lost.
                if let (Some(e), Some(o)) = (r["epoch"].as_str(), r["offset"].as_u64()) {
                    if e == seen.epoch {
                        let missed = o.saturating_sub(seen.last);
                        totals.lost.fetch_add(missed, Relaxed);
                        totals.lost_unrecovered.fetch_add(missed, Relaxed);
                    }
                    seen.epoch = e.to_string();
                    seen.last = seen.last.max(o);
                }
            }
            // Read until the next drop (or, at the end, until the last offset).
            let finishing = finishing || Instant::now() >= stop_at;
            let until = if finishing {
                deadline
            } else {
                next_drop.min(deadline)
            };
            let mut ended = false;
            loop {
                if finishing {
                    let target = last_offset.load(Relaxed);
                    if target > 0 && seen.last >= target {
                        totals.caught_up.fetch_add(1, Relaxed);
                        let _ = client.close().await;
                        return;
                    }
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let wait = left.min(Duration::from_millis(250));
                match client.next_event(wait).await {
                    Ok(Event::Frame(v)) if v["op"] == "message" => count(&mut seen, &v, &totals),
                    Ok(Event::Frame(v)) if v["op"] == "unsubscribed" && v["channel"] == channel => {
                        totals.resubscribed.fetch_add(1, Relaxed);
                        ended = true;
                        break;
                    }
                    Ok(Event::Closed { .. }) => break,
                    Ok(_) => {}
                    Err(e) if e.to_string().starts_with("timed out") => {
                        if !finishing && Instant::now() >= stop_at {
                            // The publisher stopped: go and catch up.
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !ended {
                break;
            }
            // The server ended the subscription: subscribe again with recovery at once.
            since = Instant::now();
        }
        if Instant::now() >= deadline {
            return;
        }
        // Drop without a goodbye, as a lost network would.
        drop(client);
        totals.drops.fetch_add(1, Relaxed);
        next_drop += every;
    }
}

fn count(seen: &mut Seen, msg: &Value, totals: &Totals) {
    let (Some(offset), Some(epoch)) = (msg["offset"].as_u64(), msg["epoch"].as_str()) else {
        return;
    };
    if epoch != seen.epoch {
        seen.epoch = epoch.to_string();
        seen.last = offset;
        totals.delivered.fetch_add(1, Relaxed);
        return;
    }
    if offset <= seen.last {
        totals.duplicates.fetch_add(1, Relaxed);
        return;
    }
    totals.lost.fetch_add(offset - seen.last - 1, Relaxed);
    totals.lost_live.fetch_add(offset - seen.last - 1, Relaxed);
    totals.delivered.fetch_add(1, Relaxed);
    seen.last = offset;
}
