//! The registry: who is connected, which channels exist and who is subscribed to what, in
//! sharded maps so that work on different channels (or clients) does not contend.
//!
//! Channels exist while they were created through the API ("persistent") or have at least one
//! subscriber; an ephemeral channel is removed when its last subscriber leaves, so publishing
//! to or subscribing to arbitrary names cannot grow memory without bound.
//!
//! Fan-out: [`Registry::publish_sequenced`] takes the channel's state lock, assigns the next
//! offset, encodes the publication once per wire format and pushes the shared bytes to every
//! subscriber's outbox. Pushing never waits; a full outbox closes that client as a slow
//! consumer.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::broker::{Publish, Published};
use crate::channel::{ChannelName, ChannelOptions};
use crate::client::{ClientHandle, Disconnect, now_ms};
use crate::error::{ErrorCode, HeraldError};
use crate::events::{EventBus, EventType};
use crate::format::{EncodeCache, Message};
use crate::ids::ClientId;
use crate::outbox::Push;
use crate::secret;
use crate::stats::Stats;

const SHARDS: usize = 64;

/// An event's `client` and `user` fields.
pub(crate) fn client_fields(f: &mut serde_json::Map<String, serde_json::Value>, c: &ClientHandle) {
    f.insert("client".into(), c.id.to_string().into());
    f.insert(
        "user".into(),
        c.user()
            .map_or(serde_json::Value::Null, |u| u.as_ref().into()),
    );
}

struct Sharded<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K: std::hash::Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
    fn shard(&self, key: u64) -> &RwLock<HashMap<K, V>> {
        &self.shards[(key % SHARDS as u64) as usize]
    }
}

/// A channel and its mutable state.
pub struct Channel {
    pub name: ChannelName,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    options: ChannelOptions,
    /// Created through the API: kept (and stored) until deleted.
    persistent: bool,
    token_hash: Option<String>,
    /// Set when removed from the map; holders of a stale `Arc` must look it up again.
    removed: bool,
    offset: u64,
    epoch: Arc<str>,
    subscribers: HashMap<ClientId, Arc<ClientHandle>>,
    created_at_ms: u64,
}

/// A snapshot of a channel for listings.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ChannelSummary {
    #[schema(value_type = String)]
    pub name: ChannelName,
    pub subscribers: u64,
    pub persistent: bool,
    pub options: ChannelOptions,
    /// Offset of the last publication (0: none yet).
    pub offset: u64,
    pub epoch: String,
    pub created_at_ms: u64,
}

/// A channel's policy-relevant state, borrowed under its lock.
pub struct ChannelView<'a> {
    pub options: &'a ChannelOptions,
    pub token_hash: Option<&'a str>,
    pub subscribers: usize,
    pub persistent: bool,
}

impl<'a> ChannelView<'a> {
    /// The view of a channel that does not exist yet and would be created with `defaults`.
    pub fn absent(defaults: &'a ChannelOptions) -> Self {
        ChannelView {
            options: defaults,
            token_hash: None,
            subscribers: 0,
            persistent: false,
        }
    }
}

/// Result of adding a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Already,
}

fn new_epoch() -> Arc<str> {
    let s = secret::random_secret();
    Arc::from(&s[..8])
}

impl ChannelState {
    fn view(&self) -> ChannelView<'_> {
        ChannelView {
            options: &self.options,
            token_hash: self.token_hash.as_deref(),
            subscribers: self.subscribers.len(),
            persistent: self.persistent,
        }
    }
}

impl Channel {
    fn new(name: ChannelName, options: ChannelOptions, persistent: bool) -> Self {
        Channel {
            name,
            state: Mutex::new(ChannelState {
                options,
                persistent,
                token_hash: None,
                removed: false,
                offset: 0,
                epoch: new_epoch(),
                subscribers: HashMap::new(),
                created_at_ms: now_ms(),
            }),
        }
    }

    /// Runs `f` on the channel's policy-relevant state (under its lock: keep `f` short and
    /// never call back into this channel from it).
    pub fn view<R>(&self, f: impl FnOnce(&ChannelView) -> R) -> R {
        let st = self.state.lock();
        f(&st.view())
    }

    pub fn summary(&self) -> ChannelSummary {
        let st = self.state.lock();
        ChannelSummary {
            name: self.name.clone(),
            subscribers: st.subscribers.len() as u64,
            persistent: st.persistent,
            options: st.options.clone(),
            offset: st.offset,
            epoch: st.epoch.to_string(),
            created_at_ms: st.created_at_ms,
        }
    }

    pub fn has_subscriber(&self, id: ClientId) -> bool {
        self.state.lock().subscribers.contains_key(&id)
    }

    pub fn subscriber_ids(&self) -> Vec<ClientId> {
        self.state.lock().subscribers.keys().copied().collect()
    }
}

pub struct Registry {
    clients: Sharded<ClientId, Arc<ClientHandle>>,
    /// Admin connections (few): they hear of every connect and disconnect.
    admins: RwLock<HashMap<ClientId, Arc<ClientHandle>>>,
    /// Clients that receive every publication on every channel (Eventual's `global`).
    firehose: RwLock<HashMap<ClientId, Arc<ClientHandle>>>,
    channels: Sharded<ChannelName, Arc<Channel>>,
    outbox_limit: usize,
    stats: Arc<Stats>,
    events: EventBus,
}

impl Registry {
    pub fn new(outbox_limit: usize, stats: Arc<Stats>) -> Self {
        Registry {
            clients: Sharded::new(),
            admins: RwLock::new(HashMap::new()),
            firehose: RwLock::new(HashMap::new()),
            channels: Sharded::new(),
            outbox_limit,
            stats,
            events: EventBus::default(),
        }
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Emits a lifecycle event if anyone wants it (`fields` runs only then).
    pub(crate) fn emit(
        &self,
        kind: EventType,
        fields: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) {
        self.events.emit(kind, fields, |client, frame| {
            self.push_or_close(client, frame)
        });
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn outbox_limit(&self) -> usize {
        self.outbox_limit
    }

    // ---- clients ------------------------------------------------------------------------

    pub fn add_client(&self, client: Arc<ClientHandle>) {
        self.clients
            .shard(client.id.shard_key())
            .write()
            .insert(client.id, client);
    }

    pub fn remove_client(&self, id: ClientId) -> Option<Arc<ClientHandle>> {
        self.clients.shard(id.shard_key()).write().remove(&id)
    }

    pub fn client(&self, id: ClientId) -> Option<Arc<ClientHandle>> {
        self.clients.shard(id.shard_key()).read().get(&id).cloned()
    }

    pub fn add_firehose(&self, client: Arc<ClientHandle>) {
        self.firehose.write().insert(client.id, client);
    }

    pub fn remove_firehose(&self, id: ClientId) {
        self.firehose.write().remove(&id);
    }

    pub fn add_admin(&self, client: Arc<ClientHandle>) {
        self.admins.write().insert(client.id, client);
    }

    pub fn remove_admin(&self, id: ClientId) {
        self.admins.write().remove(&id);
    }

    /// The admin connections (a snapshot).
    pub fn admins(&self) -> Vec<Arc<ClientHandle>> {
        self.admins.read().values().cloned().collect()
    }

    pub fn client_count(&self) -> usize {
        self.clients.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Every connected client (a snapshot; shard by shard).
    pub fn all_clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut all = Vec::new();
        for shard in self.clients.shards.iter() {
            all.extend(shard.read().values().cloned());
        }
        all
    }

    /// Queues `frame` for `client`; closes it as a slow consumer when its outbox is full.
    /// Returns whether the frame was queued.
    pub fn push_or_close(&self, client: &ClientHandle, frame: bytes::Bytes) -> bool {
        match client.outbox.push(frame, self.outbox_limit) {
            Push::Queued => true,
            Push::Full => {
                if client.outbox.close(Disconnect::slow_consumer()) {
                    Stats::add(&self.stats.slow_consumers, 1);
                    tracing::info!(client = %client.id, "slow consumer disconnected: outbox full");
                }
                false
            }
            Push::Closed => false,
        }
    }

    // ---- channels -----------------------------------------------------------------------

    pub fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        let key = ChannelName::parse(name).ok()?;
        self.channels
            .shard(key.shard_key())
            .read()
            .get(name)
            .cloned()
    }

    /// The channel of a name already validated (no re-parsing).
    pub fn lookup(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.channels
            .shard(name.shard_key())
            .read()
            .get(name)
            .cloned()
    }

    /// Every channel (a snapshot).
    pub fn all_channels(&self) -> Vec<Arc<Channel>> {
        let mut all = Vec::new();
        for shard in self.channels.shards.iter() {
            all.extend(shard.read().values().cloned());
        }
        all
    }

    pub fn channel_count(&self) -> usize {
        self.channels.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Creates a persistent channel; `channel_exists` if the name is taken by a persistent
    /// one. An ephemeral channel of that name becomes persistent, keeping its subscribers.
    pub fn create_persistent(
        &self,
        name: &ChannelName,
        options: ChannelOptions,
        token_hash: String,
        created_at_ms: u64,
    ) -> Result<(), HeraldError> {
        let mut shard = self.channels.shard(name.shard_key()).write();
        if let Some(existing) = shard.get(name) {
            let mut st = existing.state.lock();
            if st.persistent {
                return Err(HeraldError::new(
                    ErrorCode::ChannelExists,
                    format!("channel {name:?} already exists"),
                ));
            }
            st.persistent = true;
            st.options = options;
            st.token_hash = Some(token_hash);
            st.created_at_ms = created_at_ms;
            return Ok(());
        }
        let channel = Channel::new(name.clone(), options, true);
        {
            let mut st = channel.state.lock();
            st.token_hash = Some(token_hash);
            st.created_at_ms = created_at_ms;
        }
        shard.insert(name.clone(), Arc::new(channel));
        Ok(())
    }

    /// Replaces a persistent channel's options; returns its stored record fields (token hash,
    /// creation time), or `None` if there is no such persistent channel.
    pub fn update_options(
        &self,
        name: &ChannelName,
        options: ChannelOptions,
    ) -> Option<(String, u64)> {
        let channel = self.lookup(name)?;
        let mut st = channel.state.lock();
        if !st.persistent || st.removed {
            return None;
        }
        st.options = options;
        Some((st.token_hash.clone().unwrap_or_default(), st.created_at_ms))
    }

    /// Removes a channel and returns its former subscribers (whose subscription sets the
    /// caller must update and notify).
    pub fn remove_channel(&self, name: &ChannelName) -> Option<Vec<Arc<ClientHandle>>> {
        let mut shard = self.channels.shard(name.shard_key()).write();
        let channel = shard.remove(name)?;
        let mut st = channel.state.lock();
        st.removed = true;
        let former: Vec<_> = st.subscribers.drain().map(|(_, c)| c).collect();
        for (i, c) in former.iter().enumerate() {
            self.emit_left(name, c, "channel_deleted", i + 1 == former.len());
        }
        Some(former)
    }

    /// `client.unsubscribed`, and `channel.vacated` when it was the last subscriber. Called
    /// under the channel's state lock.
    fn emit_left(
        &self,
        name: &ChannelName,
        client: &ClientHandle,
        reason: &'static str,
        last: bool,
    ) {
        self.emit(EventType::ClientUnsubscribed, |f| {
            client_fields(f, client);
            f.insert("channel".into(), name.as_str().into());
            f.insert("reason".into(), reason.into());
        });
        if last {
            self.emit(EventType::ChannelVacated, |f| {
                f.insert("channel".into(), name.as_str().into());
            });
        }
    }

    /// Adds `client` to `name`, creating an ephemeral channel with `defaults` if it does not
    /// exist and `create` is set. `check` runs under the channel's lock (permissions and
    /// limits need the channel's current options). The caller holds the client's
    /// subscriptions lock.
    pub(crate) fn add_subscriber(
        &self,
        name: &ChannelName,
        client: &Arc<ClientHandle>,
        create: Option<&ChannelOptions>,
        check: impl Fn(&ChannelView) -> Result<(), HeraldError>,
    ) -> Result<Added, HeraldError> {
        loop {
            let channel = match self.lookup(name) {
                Some(c) => c,
                None => {
                    let Some(defaults) = create else {
                        return Err(HeraldError::new(
                            ErrorCode::ChannelNotFound,
                            format!("channel {name:?} does not exist"),
                        ));
                    };
                    let mut shard = self.channels.shard(name.shard_key()).write();
                    shard
                        .entry(name.clone())
                        .or_insert_with(|| {
                            Arc::new(Channel::new(name.clone(), defaults.clone(), false))
                        })
                        .clone()
                }
            };
            let mut st = channel.state.lock();
            if st.removed {
                continue;
            }
            if st.subscribers.contains_key(&client.id) {
                return Ok(Added::Already);
            }
            if let Err(e) = check(&st.view()) {
                let empty = st.subscribers.is_empty() && !st.persistent;
                drop(st);
                if empty {
                    self.remove_if_vacant(name);
                }
                return Err(e);
            }
            st.subscribers.insert(client.id, client.clone());
            // Under the channel's lock: occupied/vacated alternate, once per transition.
            self.emit(EventType::ClientSubscribed, |f| {
                client_fields(f, client);
                f.insert("channel".into(), name.as_str().into());
            });
            if st.subscribers.len() == 1 {
                self.emit(EventType::ChannelOccupied, |f| {
                    f.insert("channel".into(), name.as_str().into());
                });
            }
            return Ok(Added::New);
        }
    }

    /// Removes `client` from `name`; returns whether it was subscribed. `reason` goes into
    /// the `client.unsubscribed` event.
    pub(crate) fn remove_subscriber(
        &self,
        name: &ChannelName,
        client: ClientId,
        reason: &'static str,
    ) -> bool {
        let Some(channel) = self.lookup(name) else {
            return false;
        };
        let (was, vacant) = {
            let mut st = channel.state.lock();
            let removed = st.subscribers.remove(&client);
            if let Some(c) = &removed {
                self.emit_left(name, c, reason, st.subscribers.is_empty());
            }
            (
                removed.is_some(),
                st.subscribers.is_empty() && !st.persistent,
            )
        };
        if vacant {
            self.remove_if_vacant(name);
        }
        was
    }

    /// Drops an ephemeral channel that has no subscribers (re-checked under the locks).
    fn remove_if_vacant(&self, name: &ChannelName) {
        let mut shard = self.channels.shard(name.shard_key()).write();
        let Some(channel) = shard.get(name) else {
            return;
        };
        let mut st = channel.state.lock();
        if st.subscribers.is_empty() && !st.persistent {
            st.removed = true;
            drop(st);
            shard.remove(name);
        }
    }

    // ---- fan-out ------------------------------------------------------------------------

    /// Single-node publish: assigns the next offset and delivers, in one critical section per
    /// channel so every subscriber sees offsets in order. A channel that does not exist has
    /// nobody to deliver to and records nothing (offset 0).
    pub fn publish_sequenced(&self, publish: &Publish) -> Published {
        let Some(channel) = self.lookup(&publish.channel) else {
            // Nobody subscribed: nothing is recorded, but the firehose still hears of it.
            let msg = Message {
                channel: publish.channel.clone(),
                offset: 0,
                epoch: Arc::from(""),
                from: publish.from,
                data: publish.data.clone(),
            };
            let delivered = self.fan_out(
                &HashMap::new(),
                &msg,
                publish.to.as_deref(),
                publish.once.as_deref(),
                None,
            );
            return Published {
                offset: 0,
                epoch: String::new(),
                delivered,
            };
        };
        let mut st = channel.state.lock();
        st.offset += 1;
        let msg = Message {
            channel: publish.channel.clone(),
            offset: st.offset,
            epoch: st.epoch.clone(),
            from: publish.from,
            data: publish.data.clone(),
        };
        let skip = msg.from.filter(|_| !st.options.echo);
        let delivered = self.fan_out(
            &st.subscribers,
            &msg,
            publish.to.as_deref(),
            publish.once.as_deref(),
            skip,
        );
        Published {
            offset: msg.offset,
            epoch: msg.epoch.to_string(),
            delivered,
        }
    }

    /// Delivers a message whose position was assigned elsewhere (a clustered broker).
    pub fn deliver_at(&self, msg: &Message, to: Option<&[ClientId]>) -> u64 {
        let Some(channel) = self.lookup(&msg.channel) else {
            return 0;
        };
        let mut st = channel.state.lock();
        st.offset = st.offset.max(msg.offset);
        let skip = msg.from.filter(|_| !st.options.echo);
        self.fan_out(&st.subscribers, msg, to, None, skip)
    }

    fn fan_out(
        &self,
        subscribers: &HashMap<ClientId, Arc<ClientHandle>>,
        msg: &Message,
        to: Option<&[ClientId]>,
        once: Option<&Mutex<std::collections::HashSet<ClientId>>>,
        // The publisher, on a channel with `echo` off: it does not get its own message.
        skip: Option<ClientId>,
    ) -> u64 {
        Stats::add(&self.stats.publications, 1);
        let mut cache = EncodeCache::new(msg);
        let mut delivered = 0u64;
        let mut once = once.map(|m| m.lock());
        let mut deliver = |client: &Arc<ClientHandle>| {
            if skip == Some(client.id) {
                return;
            }
            if let Some(seen) = once.as_mut()
                && !seen.insert(client.id)
            {
                return;
            }
            let frame = client
                .format
                .for_recipient(&cache.frame(client.format), client);
            if self.push_or_close(client, frame) {
                delivered += 1;
                client
                    .messages_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        match to {
            None => subscribers.values().for_each(&mut deliver),
            Some(ids) => ids
                .iter()
                .filter_map(|id| subscribers.get(id))
                .for_each(&mut deliver),
        }
        // Firehose clients get what their channels did not already bring them.
        let firehose = self.firehose.read();
        if !firehose.is_empty() {
            firehose
                .values()
                .filter(|c| !subscribers.contains_key(&c.id))
                .filter(|c| to.is_none_or(|ids| ids.contains(&c.id)))
                .for_each(&mut deliver);
        }
        Stats::add(&self.stats.deliveries, delivered);
        delivered
    }
}
