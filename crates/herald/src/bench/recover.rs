//! `herald bench recover`: N subscribers that drop their connection every `--drop-every`
//! seconds (each at its own phase) and come back with recovery, while one publisher sends to
//! their channel at `--rate` over the HTTP API for `--duration` seconds. Every subscriber
//! checks each channel offset it receives: a gap is a loss, an offset seen before a duplicate.
//! At the end each subscriber recovers once more and must reach the last offset published.
//!
//! Each publication also carries its own sequence number (`{"seq": k}`), which every
//! subscriber checks too: with NATS each node numbers a channel itself, so offsets seen on one
//! node say nothing about the publisher's on another, while the sequence does. A sequence gap
//! the server warned of (a recovery answered `recovered: false`, or an offset that skips) is a
//! loss the client knows of; a gap without such a warning is a silent loss, which must never
//! happen. A publication answered with an error (503 `broker_unavailable` while the broker is
//! down) is no gap; if it arrives all the same (the broker did it, then died before
//! answering) it is counted apart. The publisher starts, and its `--duration` runs, once every
//! subscriber's first subscribe is answered.
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
    /// Subscribers that reached the last publication at the end.
    caught_up: AtomicU64,
    /// By the publications' own sequence numbers: gaps the server had warned of (a recovery
    /// that failed, an offset that skips), gaps without a warning, and sequences not above
    /// the last one seen (twice, or out of order).
    seq_lost_warned: AtomicU64,
    seq_lost_silent: AtomicU64,
    seq_duplicates: AtomicU64,
    /// Deliveries of a publication answered with an error (a 503 may come after the broker
    /// did it and died before answering): reported, neither a loss nor a fault.
    seq_unconfirmed_delivered: AtomicU64,
    /// The sequence numbers whose publication was answered with an error, in order: a gap
    /// there is not a loss. The publisher waits for each answer before the next, so a gap is
    /// judged after the answers before it are known.
    unconfirmed_seqs: Mutex<Vec<u64>>,
    /// When the publisher stops (set when it starts, once every subscriber is subscribed).
    stop_at: Mutex<Option<Instant>>,
    /// Subscribers whose first subscribe was answered (the publisher waits for all).
    ready: AtomicU64,
    ready_notify: tokio::sync::Notify,
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

/// What one subscriber has seen: the epoch and the last offset, in order; the last sequence
/// number, and whether the server has warned of a gap since the last delivery.
struct Seen {
    epoch: String,
    last: u64,
    seq: u64,
    warned: bool,
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
    // The last sequence number published with success (0: the publisher has not finished).
    let last_seq = Arc::new(AtomicU64::new(0));
    let n = args.connections;
    for i in 0..n {
        let url = args.url.clone();
        let channel = args.channel.clone();
        let totals = totals.clone();
        let last_seq = last_seq.clone();
        let seen = Seen {
            epoch: epoch.to_string(),
            last: start_offset,
            seq: 0,
            warned: false,
        };
        // Spread the drops: subscriber i drops first after a share of the period.
        let phase = drop_every.mul_f64(i as f64 / n as f64);
        tasks.spawn(subscriber(
            url, channel, seen, phase, drop_every, deadline, last_seq, totals,
        ));
    }
    // Publish once every subscriber follows the channel (bounded: a run whose subscribers cannot
    // subscribe still publishes, and reports what they missed).
    let everyone = async {
        while totals.ready.load(Relaxed) < n as u64 {
            let notified = totals.ready_notify.notified();
            if totals.ready.load(Relaxed) >= n as u64 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), everyone)
        .await
        .is_err()
    {
        ctx.shared.note_error(format!(
            "only {} of {n} subscribers were subscribed after 30 s; publishing anyway",
            totals.ready.load(Relaxed)
        ));
    }

    let stop_at = Instant::now() + duration;
    if let Ok(mut at) = totals.stop_at.lock() {
        *at = Some(stop_at);
    }
    let cpu0 = ctx.probe.cpu_seconds().await;
    let t0 = Instant::now();
    let published = publish(&api, &args.channel, rate, stop_at, deadline, &totals).await;
    last_seq.store(published.last_seq, Relaxed);
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
    report.set("seq_lost_warned", t.seq_lost_warned.load(Relaxed));
    report.set("seq_lost_silent", t.seq_lost_silent.load(Relaxed));
    report.set("seq_duplicates", t.seq_duplicates.load(Relaxed));
    report.set(
        "seq_unconfirmed_delivered",
        t.seq_unconfirmed_delivered.load(Relaxed),
    );
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
    /// The highest offset and sequence number published with success.
    last: u64,
    last_seq: u64,
}

/// Publishes at `rate` until `stop_at`; one request at a time, on a fixed schedule.
async fn publish(
    api: &Api,
    channel: &str,
    rate: f64,
    stop_at: Instant,
    deadline: Instant,
    totals: &Totals,
) -> Published {
    let mut out = Published {
        ok: 0,
        errors: 0,
        last: 0,
        last_seq: 0,
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
                out.last_seq = seq;
                out.last = out
                    .last
                    .max(r["channels"][0]["offset"].as_u64().unwrap_or(0));
            }
            Err(_) => {
                out.errors += 1;
                if let Ok(mut unconfirmed) = totals.unconfirmed_seqs.lock() {
                    unconfirmed.push(seq);
                }
            }
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
    deadline: Instant,
    last_seq: Arc<AtomicU64>,
    totals: Arc<Totals>,
) {
    let stopped = || {
        let at = totals.stop_at.lock().ok().and_then(|at| *at);
        at.is_some_and(|at| Instant::now() >= at)
    };
    let mut next_drop = Instant::now() + phase;
    let mut first = true;
    'connection: loop {
        let finishing = stopped();
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
            if std::mem::take(&mut first) {
                totals.ready.fetch_add(1, Relaxed);
                totals.ready_notify.notify_one();
            }
            let r = &reply["result"]["recovered"][&channel];
            if r["recovered"] == true {
                totals.recovered.fetch_add(1, Relaxed);
            } else {
                totals.recover_failed.fetch_add(1, Relaxed);
                seen.warned = true;
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
            let finishing = finishing || stopped();
            let until = if finishing {
                deadline
            } else {
                next_drop.min(deadline)
            };
            let mut ended = false;
            loop {
                if finishing {
                    let target = last_seq.load(Relaxed);
                    if target > 0 && seen.seq >= target {
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
                        if !finishing && stopped() {
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
        // A new epoch: the channel's history was lost; whatever is missing was warned of.
        seen.epoch = epoch.to_string();
        seen.last = offset;
        seen.warned = true;
    } else if offset <= seen.last {
        totals.duplicates.fetch_add(1, Relaxed);
    } else {
        let skipped = offset - seen.last - 1;
        totals.lost.fetch_add(skipped, Relaxed);
        totals.lost_live.fetch_add(skipped, Relaxed);
        seen.warned |= skipped > 0;
        seen.last = offset;
    }
    count_seq(seen, msg["data"]["seq"].as_u64(), totals);
}

/// Checks a delivery's sequence number (none: the first publication, "start").
fn count_seq(seen: &mut Seen, seq: Option<u64>, totals: &Totals) {
    let Some(seq) = seq else { return };
    if seq <= seen.seq {
        totals.seq_duplicates.fetch_add(1, Relaxed);
        return;
    }
    totals.delivered.fetch_add(1, Relaxed);
    // Publications answered with an error in between: a gap there is not a loss.
    let (unconfirmed_between, this_unconfirmed) = match totals.unconfirmed_seqs.lock() {
        Ok(r) => (
            r.partition_point(|&s| s < seq) - r.partition_point(|&s| s <= seen.seq),
            r.binary_search(&seq).is_ok(),
        ),
        Err(_) => (0, false),
    };
    if this_unconfirmed {
        totals.seq_unconfirmed_delivered.fetch_add(1, Relaxed);
    }
    let missed = seq - seen.seq - 1 - unconfirmed_between as u64;
    if std::mem::take(&mut seen.warned) {
        totals.seq_lost_warned.fetch_add(missed, Relaxed);
    } else {
        totals.seq_lost_silent.fetch_add(missed, Relaxed);
    }
    seen.seq = seq;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen {
            epoch: "e".into(),
            last: 10,
            seq: 0,
            warned: false,
        }
    }

    fn msg(offset: u64, seq: u64) -> Value {
        json!({"op": "message", "epoch": "e", "offset": offset, "data": {"seq": seq}})
    }

    #[test]
    fn deliveries_in_order_count_no_loss() {
        let (mut s, t) = (seen(), Totals::default());
        for i in 1..=3 {
            count(&mut s, &msg(10 + i, i), &t);
        }
        assert_eq!(t.delivered.load(Relaxed), 3);
        assert_eq!(
            t.seq_lost_silent.load(Relaxed) + t.seq_lost_warned.load(Relaxed),
            0
        );
        assert_eq!(t.lost.load(Relaxed), 0);
    }

    #[test]
    fn a_sequence_gap_with_consecutive_offsets_is_a_silent_loss() {
        let (mut s, t) = (seen(), Totals::default());
        count(&mut s, &msg(11, 1), &t);
        count(&mut s, &msg(12, 4), &t);
        assert_eq!(t.seq_lost_silent.load(Relaxed), 2);
        assert_eq!(t.seq_lost_warned.load(Relaxed), 0);
    }

    #[test]
    fn a_sequence_gap_where_the_offset_skips_was_warned_of() {
        let (mut s, t) = (seen(), Totals::default());
        count(&mut s, &msg(11, 1), &t);
        count(&mut s, &msg(13, 4), &t);
        assert_eq!(t.seq_lost_warned.load(Relaxed), 2);
        assert_eq!(t.seq_lost_silent.load(Relaxed), 0);
        assert_eq!(t.lost_live.load(Relaxed), 1);
        // The warning covers that one gap only.
        count(&mut s, &msg(14, 6), &t);
        assert_eq!(t.seq_lost_silent.load(Relaxed), 1);
    }

    #[test]
    fn a_failed_recovery_warns_of_the_next_gap_and_a_new_epoch_too() {
        let (mut s, t) = (seen(), Totals::default());
        s.warned = true; // as the subscriber sets it when `recovered` is false
        count(&mut s, &msg(11, 3), &t);
        assert_eq!(t.seq_lost_warned.load(Relaxed), 2);
        let other = json!({"op": "message", "epoch": "f", "offset": 1, "data": {"seq": 5}});
        count(&mut s, &other, &t);
        assert_eq!(t.seq_lost_warned.load(Relaxed), 3);
        assert_eq!(t.seq_lost_silent.load(Relaxed), 0);
    }

    #[test]
    fn publications_answered_with_an_error_are_not_missed_and_counted_if_they_arrive() {
        let (mut s, t) = (seen(), Totals::default());
        *t.unconfirmed_seqs.lock().unwrap() = vec![2, 3, 6];
        count(&mut s, &msg(11, 1), &t);
        count(&mut s, &msg(12, 4), &t);
        assert_eq!(t.seq_lost_silent.load(Relaxed), 0);
        count(&mut s, &msg(13, 6), &t);
        assert_eq!(
            t.seq_lost_silent.load(Relaxed),
            1,
            "5 is missing; 6 was answered 503"
        );
        assert_eq!(t.seq_unconfirmed_delivered.load(Relaxed), 1);
    }

    #[test]
    fn a_sequence_seen_before_is_a_duplicate_and_not_a_delivery() {
        let (mut s, t) = (seen(), Totals::default());
        count(&mut s, &msg(11, 1), &t);
        count(&mut s, &msg(12, 2), &t);
        count(&mut s, &msg(12, 2), &t);
        count(&mut s, &msg(13, 1), &t);
        assert_eq!(t.delivered.load(Relaxed), 2);
        assert_eq!(t.seq_duplicates.load(Relaxed), 2);
        assert_eq!(t.duplicates.load(Relaxed), 1);
    }
}
