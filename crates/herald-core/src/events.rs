//! Lifecycle events: what happened to clients and channels (connected, subscribed, vacated,
//! banned, ...), for admin connections (`{"op":"events"}`) and for [`EventSink`]s such as the
//! server's webhooks.
//!
//! The registry emits an event where the change happens, under the lock that orders it: a
//! client's events under its `subscriptions` lock, `channel.occupied` / `channel.vacated`
//! under the channel's state lock. So each client's events are emitted in the order they
//! happened and each channel's occupied/vacated alternate, exactly once per transition.
//! Emitting never waits: admin connections get frames pushed to their outboxes, sinks must
//! queue and return.
//!
//! An event is built only when someone wants its type ([`EventBus::wanted`] is one atomic
//! load), so a server without listeners pays nothing on the connect path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::client::{ClientHandle, now_ms};
use crate::ids::ClientId;
pub use crate::lifecycle::{Event, EventMask, EventType};

/// Receives every event of the types it wants. `emit` runs on the thread that made the
/// change, possibly under registry locks and the bus's own read locks: it must not block,
/// take hub locks, emit events or change the bus (`add_sink`, `set_listener`): queue and
/// return.
pub trait EventSink: Send + Sync + 'static {
    fn wants(&self) -> EventMask;
    fn emit(&self, event: &Arc<Event>);
}

/// The listeners: sinks (fixed at start) and admin connections (each with its own mask).
#[derive(Default)]
pub struct EventBus {
    seq: AtomicU64,
    /// Union of every sink's and listener's mask: the fast "does anyone care" check.
    wanted: AtomicU32,
    sinks: RwLock<Vec<Arc<dyn EventSink>>>,
    listeners: RwLock<HashMap<ClientId, (Arc<ClientHandle>, EventMask)>>,
    /// Serializes changes of the lists with the recomputation of `wanted`, so the last
    /// stored union is always that of the current lists.
    changes: parking_lot::Mutex<()>,
}

impl EventBus {
    /// Whether anyone wants events of type `t`.
    #[inline]
    pub fn wanted(&self, t: EventType) -> bool {
        self.wanted.load(Ordering::Relaxed) & t.bit() != 0
    }

    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        let _change = self.changes.lock();
        self.sinks.write().push(sink);
        self.recompute();
    }

    /// Sets what an admin connection hears; `EventMask::NONE` removes it.
    pub fn set_listener(&self, client: &Arc<ClientHandle>, mask: EventMask) {
        let _change = self.changes.lock();
        {
            let mut listeners = self.listeners.write();
            if mask == EventMask::NONE {
                listeners.remove(&client.id);
            } else {
                listeners.insert(client.id, (client.clone(), mask));
            }
        }
        self.recompute();
    }

    pub fn listener_mask(&self, id: ClientId) -> EventMask {
        self.listeners
            .read()
            .get(&id)
            .map(|(_, m)| *m)
            .unwrap_or_default()
    }

    pub fn remove_listener(&self, id: ClientId) {
        let _change = self.changes.lock();
        if self.listeners.write().remove(&id).is_some() {
            self.recompute();
        }
    }

    /// Stores the union of every mask. Called with `changes` held.
    fn recompute(&self) {
        let sinks = self
            .sinks
            .read()
            .iter()
            .fold(EventMask::NONE, |m, s| m.union(s.wants()));
        let all = self
            .listeners
            .read()
            .values()
            .fold(sinks, |m, (_, mask)| m.union(*mask));
        self.wanted.store(all.0, Ordering::Relaxed);
    }

    /// Builds and dispatches an event of type `kind` if anyone wants it. `fields` is only
    /// called then. `push` queues a frame to an admin connection (the registry's
    /// push-or-close); `encode` turns the event into that connection's frame.
    pub(crate) fn emit(
        &self,
        kind: EventType,
        fields: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
        push: impl Fn(&ClientHandle, Bytes) -> bool,
    ) {
        if !self.wanted(kind) {
            return;
        }
        let mut data = serde_json::Map::new();
        fields(&mut data);
        let event = Arc::new(Event {
            kind,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: now_ms(),
            data,
        });
        for sink in self.sinks.read().iter() {
            if sink.wants().contains(kind) {
                sink.emit(&event);
            }
        }
        self.to_listeners(&event, push);
    }

    /// Recomputes what is wanted after a sink's [`EventSink::wants`] changed (a cluster
    /// relay learning what other nodes' admin connections listen to).
    pub fn refresh(&self) {
        let _change = self.changes.lock();
        self.recompute();
    }

    /// What this node's admin connections listen to (sinks left out).
    pub fn listeners_mask(&self) -> EventMask {
        self.listeners
            .read()
            .values()
            .fold(EventMask::NONE, |m, (_, mask)| m.union(*mask))
    }

    /// Hands an event to the admin connections that want its type, not to sinks: for events
    /// that happened on another node of a cluster (that node's sinks had them).
    pub(crate) fn to_listeners(&self, event: &Event, push: impl Fn(&ClientHandle, Bytes) -> bool) {
        let kind = event.kind;
        // Listeners are almost always native connections: encode once per format.
        let mut encoded: Vec<(&'static str, Option<Bytes>)> = Vec::new();
        for (client, mask) in self.listeners.read().values() {
            if !mask.contains(kind) {
                continue;
            }
            let name = client.format.name();
            let frame = match encoded.iter().find(|(n, _)| *n == name) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = client.format.event(event);
                    encoded.push((name, f.clone()));
                    f
                }
            };
            if let Some(frame) = frame {
                push(client, frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_and_name_unknown_types() {
        let m = EventMask::parse(["client.connected", "channel.vacated"]).unwrap();
        assert!(m.contains(EventType::ClientConnected));
        assert!(m.contains(EventType::ChannelVacated));
        assert!(!m.contains(EventType::ClientBanned));
        assert_eq!(EventMask::parse(["*"]).unwrap(), EventMask::ALL);
        assert_eq!(
            EventMask::parse(["client.connected", "client.exploded"]).unwrap_err(),
            "client.exploded"
        );
        assert_eq!(EventMask::ALL.types().count(), EventType::ALL.len());
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}
