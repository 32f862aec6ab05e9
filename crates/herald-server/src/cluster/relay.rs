//! Lifecycle events across nodes: this node's events go to the other nodes whose admin
//! connections listen to them, and theirs come here (through [`super::control`]).
//!
//! [`Relay`] is an event sink whose wanted types are the union of what the other nodes'
//! admin connections listen to, so a cluster where no admin listens builds no events. A node
//! tells the others when its admin connections start listening (a `listening` notice) and in
//! every report; masks of nodes that stop reporting are forgotten with their reports.
//! Webhooks stay per node: each event is sent once, by the node where it happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herald_core::Hub;
use herald_core::events::{Event, EventMask, EventSink};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::Cluster;
use super::control::{Control, RelayedEvent};

/// Most events in one notice.
const BATCH: usize = 256;
/// Most events waiting to be relayed; beyond it (the broker is slow or away) events are
/// dropped for the other nodes, counted and logged, never queued without bound.
const QUEUE: usize = 65_536;

#[derive(Default)]
struct Remote {
    reported: HashMap<String, EventMask>,
    noticed: HashMap<String, (EventMask, Instant)>,
}

pub struct Relay {
    /// What each other node's admin connections listen to: as its last report said, and as
    /// its notices since said (kept until its reports have surely caught up).
    remote: Mutex<Remote>,
    /// How long a notice counts without a report saying the same (`presence_ttl_secs`).
    notice_ttl: Duration,
    wanted: AtomicU32,
    queue: mpsc::Sender<RelayedEvent>,
    /// Events dropped because the queue was full.
    dropped: std::sync::atomic::AtomicU64,
    /// Taken by [`send`] when it starts.
    outgoing: Mutex<Option<mpsc::Receiver<RelayedEvent>>>,
}

impl Relay {
    pub fn new(notice_ttl: Duration) -> Arc<Relay> {
        Self::bounded(notice_ttl, QUEUE)
    }

    fn bounded(notice_ttl: Duration, capacity: usize) -> Arc<Relay> {
        let (queue, outgoing) = mpsc::channel(capacity);
        Arc::new(Relay {
            remote: Mutex::new(Remote::default()),
            notice_ttl,
            wanted: AtomicU32::new(0),
            queue,
            dropped: Default::default(),
            outgoing: Mutex::new(Some(outgoing)),
        })
    }

    /// Another node's admin connections now listen to `mask` (a notice: it counts until the
    /// node's reports have caught up).
    pub fn listening(&self, hub: &Hub, node: &str, mask: EventMask) {
        let mut remote = self.remote.lock();
        remote
            .noticed
            .insert(node.to_string(), (mask, Instant::now()));
        self.recompute(hub, &remote);
    }

    /// The live nodes' reports: their masks replace what was reported before; nodes absent
    /// are dropped.
    pub fn reported(&self, hub: &Hub, me: &str, nodes: &[(String, super::Report)]) {
        let mut remote = self.remote.lock();
        remote.reported = nodes
            .iter()
            .filter(|(name, _)| name != me)
            .map(|(name, r)| (name.clone(), EventMask::from_bits(r.listening)))
            .collect();
        let ttl = self.notice_ttl;
        remote.noticed.retain(|_, (_, at)| at.elapsed() < ttl);
        self.recompute(hub, &remote);
    }

    fn recompute(&self, hub: &Hub, remote: &Remote) {
        let reported = remote.reported.values();
        let noticed = remote.noticed.values().map(|(mask, _)| mask);
        let all = reported
            .chain(noticed)
            .fold(EventMask::NONE, |m, mask| m.union(*mask));
        if self.wanted.swap(all.bits(), Ordering::Relaxed) != all.bits() {
            hub.events().refresh();
        }
    }
}

impl EventSink for Relay {
    fn wants(&self) -> EventMask {
        EventMask::from_bits(self.wanted.load(Ordering::Relaxed))
    }

    fn emit(&self, event: &Arc<Event>) {
        let relayed = RelayedEvent {
            event: event.kind.as_str().to_string(),
            seq: event.seq,
            time_ms: event.time_ms,
            data: event.data.clone(),
        };
        if self.queue.try_send(relayed).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "cluster: lifecycle events not relayed (queue full)"
                );
            }
        }
    }
}

/// Sends this node's events to the other nodes, in order and batched, until `shutdown`.
pub async fn send(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = cluster.relay.outgoing.lock().take() else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
        }
        let events = std::mem::take(&mut batch);
        if let Err(e) = cluster.notify(Control::Events { events }).await {
            tracing::warn!(error = %e.message, "cluster: lifecycle events not relayed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_events_instead_of_growing() {
        let relay = Relay::bounded(Duration::from_secs(3), 4);
        let event = Arc::new(Event {
            kind: herald_core::events::EventType::ClientConnected,
            seq: 1,
            time_ms: 0,
            data: serde_json::Map::new(),
        });
        for _ in 0..10 {
            relay.emit(&event);
        }
        assert_eq!(relay.dropped.load(Ordering::Relaxed), 6);
        let rx = relay.outgoing.lock().take().unwrap();
        assert_eq!(rx.len(), 4, "the queue holds its capacity and no more");
    }
}
