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

use crate::channel::{ChannelName, ChannelOptions};
use crate::client::{ClientHandle, Disconnect, now_ms};
use crate::error::{ErrorCode, HeraldError};
use crate::events::{EventBus, EventType};
use crate::format::{EncodeCache, Message};
use crate::history::{Budget, Entry, History, HistoryOp, HistorySink, Recovered, Replay};
use crate::ids::ClientId;
use crate::outbox::Push;
use crate::publication::{Interest, Publish, Published};
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
    /// Kept publications (`history_size` > 0), under the same lock as `offset`.
    history: History,
    /// Holds while a recovery prepares the channel (a clustered broker fills its history):
    /// the channel stays, and is followed, even with nobody subscribed.
    held: u32,
    /// A channel that keeps history stays this long after its last subscriber left (its
    /// history TTL), as a publication would, so its epoch, and the position of a client that
    /// blinked, outlive the blink: what is published meanwhile is kept for it.
    linger_until: Option<std::time::Instant>,
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
    /// An ephemeral channel with nobody subscribed, nothing kept and no lingering left: it
    /// may go.
    fn is_vacant(&self) -> bool {
        self.is_vacant_at(std::time::Instant::now())
    }

    fn is_vacant_at(&self, now: std::time::Instant) -> bool {
        self.subscribers.is_empty()
            && !self.persistent
            && self.history.is_empty()
            && self.held == 0
            && self.linger_until.is_none_or(|t| now >= t)
    }

    /// Publications to it from every node must reach this one: it has local subscribers, or a
    /// recovery holds it.
    fn followed(&self) -> bool {
        !self.subscribers.is_empty() || self.held > 0
    }

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
                history: History::default(),
                held: 0,
                linger_until: None,
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

    /// Runs `f` on the channel's history, epoch and latest offset (under its lock).
    pub fn read_history<R>(&self, f: impl FnOnce(&History, &str, u64) -> R) -> R {
        let st = self.state.lock();
        f(&st.history, &st.epoch, st.offset)
    }

    /// The subscribers now (a snapshot).
    pub fn subscribers(&self) -> Vec<Arc<ClientHandle>> {
        self.state.lock().subscribers.values().cloned().collect()
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
    /// How many are in `firehose`: publications read this (no write to a shared line) and
    /// take the lock only when someone is there.
    firehose_len: std::sync::atomic::AtomicUsize,
    channels: Sharded<ChannelName, Arc<Channel>>,
    outbox_limit: usize,
    stats: Arc<Stats>,
    events: EventBus,
    /// The byte budget of all channels' history.
    budget: Budget,
    /// Where history changes go to be kept (set once at startup when history is durable).
    sink: std::sync::OnceLock<Arc<dyn HistorySink>>,
    /// Who follows which channels have local subscribers (a clustered broker).
    interest: std::sync::OnceLock<Arc<dyn Interest>>,
}

impl Registry {
    pub fn new(outbox_limit: usize, stats: Arc<Stats>, history_max_bytes: usize) -> Self {
        Registry {
            clients: Sharded::new(),
            admins: RwLock::new(HashMap::new()),
            firehose: RwLock::new(HashMap::new()),
            firehose_len: Default::default(),
            channels: Sharded::new(),
            outbox_limit,
            stats,
            events: EventBus::default(),
            budget: Budget::new(history_max_bytes),
            sink: std::sync::OnceLock::new(),
            interest: std::sync::OnceLock::new(),
        }
    }

    /// Tells `interest` from now on when channels gain their first or lose their last local
    /// subscriber (once; later calls are ignored).
    pub fn set_interest(&self, interest: Arc<dyn Interest>) {
        let _ = self.interest.set(interest);
    }

    /// The channels that have local subscribers now.
    pub fn occupied_channels(&self) -> Vec<ChannelName> {
        self.all_channels()
            .into_iter()
            .filter(|c| c.state.lock().followed())
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn history_budget(&self) -> &Budget {
        &self.budget
    }

    /// Sends history changes to `sink` from now on (once; later calls are ignored).
    pub fn set_history_sink(&self, sink: Arc<dyn HistorySink>) {
        let _ = self.sink.set(sink);
    }

    fn record(&self, op: impl FnOnce() -> HistoryOp) {
        if let Some(sink) = self.sink.get() {
            sink.record(op());
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

    /// Hands an event of another node to this node's admin connections that listen to it.
    pub fn relay_event(&self, event: &crate::events::Event) {
        self.events
            .to_listeners(event, |client, frame| self.push_or_close(client, frame));
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
        let mut firehose = self.firehose.write();
        firehose.insert(client.id, client);
        self.firehose_len
            .store(firehose.len(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn remove_firehose(&self, id: ClientId) {
        let mut firehose = self.firehose.write();
        firehose.remove(&id);
        self.firehose_len
            .store(firehose.len(), std::sync::atomic::Ordering::Relaxed);
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
        self.push_or_close_since(client, frame, None)
    }

    /// [`Registry::push_or_close`] of a publication made at `published`.
    fn push_or_close_since(
        &self,
        client: &ClientHandle,
        frame: bytes::Bytes,
        published: Option<std::time::Instant>,
    ) -> bool {
        match client
            .outbox
            .push_since(frame, self.outbox_limit, published)
        {
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

    /// Holds `name` (created ephemeral with `options` if need be) while a recovery prepares
    /// it: it stays, and is followed, until [`Registry::release`].
    pub fn hold(&self, name: &ChannelName, options: &ChannelOptions) {
        loop {
            let channel = self.get_or_create(name, options);
            let mut st = channel.state.lock();
            if st.removed {
                continue;
            }
            let was_followed = st.followed();
            st.held += 1;
            if !was_followed && let Some(interest) = self.interest.get() {
                interest.occupied(name);
            }
            return;
        }
    }

    /// Ends a [`Registry::hold`].
    pub fn release(&self, name: &ChannelName) {
        let Some(channel) = self.lookup(name) else {
            return;
        };
        {
            let mut st = channel.state.lock();
            if st.held == 0 {
                return; // Not held (deleted and recreated meanwhile).
            }
            st.held -= 1;
            if !st.followed()
                && let Some(interest) = self.interest.get()
            {
                interest.vacated(name);
            }
        }
        self.remove_if_vacant(name);
    }

    /// Completes a channel's local history from the backplane's: `epoch` and `offset` are the
    /// channel's position there and `entries` what it keeps (oldest first). Entries the node
    /// already has stay; older ones go in front; the offset moves to the backplane's.
    pub fn backfill(&self, name: &ChannelName, epoch: &str, offset: u64, entries: Vec<Entry>) {
        let Some(channel) = self.lookup(name) else {
            return;
        };
        let mut st = channel.state.lock();
        if &*st.epoch != epoch {
            self.record(|| HistoryOp::Forget {
                channel: name.clone(),
            });
            st.epoch = Arc::from(epoch);
            st.offset = 0;
            st.history.clear(&self.budget);
        }
        let ttl = std::time::Duration::from_secs(u64::from(st.options.history_ttl_secs));
        let size = st.options.history_size as usize;
        // The backplane's window is authoritative; of the local entries keep those it does not
        // reach yet (arrived after it was read), then only the contiguous tail.
        let backplane_first = entries.first().map(|e| e.offset);
        let mut all: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        all.extend(
            st.history
                .iter()
                .filter(|e| backplane_first.is_none_or(|f| e.offset >= f))
                .cloned(),
        );
        all.sort_by_key(|e| e.offset);
        all.dedup_by_key(|e| e.offset);
        if let Some(gap) = all.windows(2).rposition(|w| w[1].offset != w[0].offset + 1) {
            all.drain(..=gap);
        }
        st.history.clear(&self.budget);
        if size > 0 {
            let now_wall = now_ms();
            let now = std::time::Instant::now();
            for e in all
                .into_iter()
                .rev()
                .take(size)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let age = std::time::Duration::from_millis(now_wall.saturating_sub(e.time_ms));
                if let Some(left) = ttl.checked_sub(age) {
                    st.history.restore(e, now + left, &self.budget);
                }
            }
        }
        st.offset = st.offset.max(offset);
    }

    /// Publications to `name` may have gone by that this node did not receive (a broker
    /// without history stopped delivering them for a while): the channel's position moves on
    /// by one offset that no publication has, so a recovery from before it answers
    /// `recovered: false` and a subscriber that checks offsets sees the hole. Nothing for a
    /// channel that has no position yet.
    pub fn skip_offset(&self, name: &ChannelName) {
        let Some(channel) = self.lookup(name) else {
            return;
        };
        let mut st = channel.state.lock();
        if !st.removed && st.offset > 0 {
            st.offset += 1;
        }
    }

    /// Drops every kept publication of `name` (the channel and its position stay).
    pub fn clear_history(&self, name: &ChannelName) -> usize {
        let Some(channel) = self.lookup(name) else {
            return 0;
        };
        let cleared = {
            let mut st = channel.state.lock();
            let n = st.history.len();
            st.history.clear(&self.budget);
            self.record(|| HistoryOp::Trim {
                channel: name.clone(),
                keep_from: st.offset + 1,
            });
            n
        };
        self.remove_if_vacant(name);
        cleared
    }

    /// Expires kept publications past their time, then, while all history together is over
    /// its byte budget, drops the oldest publications of all channels first. Ephemeral
    /// channels left with nothing kept, nobody subscribed and their lingering over go.
    pub fn history_sweep(&self, now: std::time::Instant) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut emptied = Vec::new();
        let mut heap = BinaryHeap::new();
        let over = self.budget.over();
        for channel in self.all_channels() {
            let mut st = channel.state.lock();
            if st.history.is_empty() {
                if st.linger_until.is_some() && st.is_vacant_at(now) {
                    emptied.push(channel.name.clone()); // Its lingering is over.
                }
                continue;
            }
            if st.history.expire(now, &self.budget) {
                self.trimmed(&channel.name, &st, &mut emptied);
            }
            if over && let Some(t) = st.history.oldest_time_ms() {
                heap.push(Reverse((t, channel.name.clone())));
            }
        }
        while self.budget.over() {
            let Some(Reverse((_, name))) = heap.pop() else {
                break;
            };
            let Some(channel) = self.lookup(&name) else {
                continue;
            };
            let mut st = channel.state.lock();
            if st.history.pop_oldest(&self.budget) {
                Stats::add(&self.stats.history_evicted, 1);
                self.trimmed(&name, &st, &mut emptied);
            }
            if let Some(t) = st.history.oldest_time_ms() {
                heap.push(Reverse((t, name)));
            }
        }
        for name in emptied {
            self.remove_if_vacant_at(&name, now);
        }
    }

    /// Tells the store what is left of a channel's history after entries were dropped.
    fn trimmed(&self, name: &ChannelName, st: &ChannelState, emptied: &mut Vec<ChannelName>) {
        let keep_from = st.history.first_offset().unwrap_or(st.offset + 1);
        if st.history.is_empty() && st.subscribers.is_empty() && !st.persistent {
            self.record(|| HistoryOp::Forget {
                channel: name.clone(),
            });
            emptied.push(name.clone());
        } else {
            self.record(|| HistoryOp::Trim {
                channel: name.clone(),
                keep_from,
            });
        }
    }

    /// Puts a channel's position and kept publications back after a restart: into the
    /// channel if it exists (persistent), else into a new ephemeral one with `options` when
    /// anything is left to keep. Entries come oldest first, each with its expiry.
    pub fn restore_history(
        &self,
        name: &ChannelName,
        options: &ChannelOptions,
        epoch: &str,
        offset: u64,
        entries: Vec<(Entry, std::time::Instant)>,
    ) {
        let channel = match self.lookup(name) {
            Some(c) => c,
            None if entries.is_empty() => return,
            None => self.get_or_create(name, options),
        };
        let mut st = channel.state.lock();
        st.epoch = Arc::from(epoch);
        st.offset = st.offset.max(offset);
        st.history.clear(&self.budget);
        let size = st.options.history_size as usize;
        let skip = entries.len().saturating_sub(size);
        for (entry, expires) in entries.into_iter().skip(skip) {
            st.history.restore(Arc::new(entry), expires, &self.budget);
        }
    }

    /// Removes a channel and returns its former subscribers (whose subscription sets the
    /// caller must update and notify).
    pub fn remove_channel(&self, name: &ChannelName) -> Option<Vec<Arc<ClientHandle>>> {
        let mut shard = self.channels.shard(name.shard_key()).write();
        let channel = shard.remove(name)?;
        let mut st = channel.state.lock();
        st.removed = true;
        if st.followed()
            && let Some(interest) = self.interest.get()
        {
            interest.vacated(name);
        }
        st.history.clear(&self.budget);
        self.record(|| HistoryOp::Forget {
            channel: name.clone(),
        });
        let former: Vec<_> = st.subscribers.drain().map(|(_, c)| c).collect();
        if (st.options.presence || st.options.join_leave)
            && let Some(interest) = self.interest.get()
        {
            for c in &former {
                interest.left(name, c.id, None, false);
            }
        }
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
    ///
    /// `replay` is pushed to the new subscriber under the same lock, so it comes before any
    /// newer publication; a recovery's outcome is returned with the result.
    pub(crate) fn add_subscriber(
        &self,
        name: &ChannelName,
        client: &Arc<ClientHandle>,
        create: Option<&ChannelOptions>,
        replay: Replay<'_>,
        check: impl Fn(&ChannelView) -> Result<(), HeraldError>,
    ) -> Result<(Added, Option<Recovered>), HeraldError> {
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
                // Already receiving everything: nothing to replay.
                let recovered = matches!(replay, Replay::After { .. }).then(|| Recovered {
                    recovered: false,
                    epoch: st.epoch.to_string(),
                    offset: st.offset,
                });
                return Ok((Added::Already, recovered));
            }
            if let Err(e) = check(&st.view()) {
                let empty = st.is_vacant();
                drop(st);
                if empty {
                    self.remove_if_vacant(name);
                }
                return Err(e);
            }
            let was_followed = st.followed();
            st.subscribers.insert(client.id, client.clone());
            if !was_followed && let Some(interest) = self.interest.get() {
                interest.occupied(name);
            }
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
            if st.options.join_leave {
                self.announce(name, &st, client, true);
            }
            if (st.options.presence || st.options.join_leave)
                && let Some(interest) = self.interest.get()
            {
                let user = client.user().map(|u| u.to_string());
                interest.joined(name, client.id, user.as_deref(), st.options.join_leave);
            }
            let recovered = self.replay(name, &st, client, replay);
            return Ok((Added::New, recovered));
        }
    }

    /// Tells the other subscribers of `name` that `who` joined or left (`join_leave`), each
    /// notice encoded once per wire format. Under the channel's lock, so notices and
    /// publications keep their order.
    fn announce(&self, name: &ChannelName, st: &ChannelState, who: &ClientHandle, joined: bool) {
        let user = who.user().map(|u| u.to_string());
        self.announce_id(name, st, who.id, user.as_deref(), joined);
    }

    fn announce_id(
        &self,
        name: &ChannelName,
        st: &ChannelState,
        who: ClientId,
        user: Option<&str>,
        joined: bool,
    ) {
        let mut frames: Vec<(&'static str, Option<bytes::Bytes>)> = Vec::new();
        for client in st.subscribers.values() {
            if client.id == who {
                continue;
            }
            let name_of = client.format.name();
            let frame = match frames.iter().find(|(n, _)| *n == name_of) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = client.format.presence_change(name, who, user, joined);
                    frames.push((name_of, f.clone()));
                    f
                }
            };
            if let Some(frame) = frame {
                self.push_or_close(client, frame);
            }
        }
    }

    /// A subscriber of another node joined or left `name`: tells the local subscribers if the
    /// channel has `join_leave`.
    pub fn announce_remote(
        &self,
        name: &ChannelName,
        who: ClientId,
        user: Option<&str>,
        joined: bool,
    ) {
        let Some(channel) = self.lookup(name) else {
            return;
        };
        let st = channel.state.lock();
        if st.options.join_leave {
            self.announce_id(name, &st, who, user, joined);
        }
    }

    /// Pushes `replay` to a new subscriber (under the channel's lock). A recovery is all or
    /// nothing: every missed publication, or none when one is no longer held, the epoch
    /// changed, or they would not fit in the client's outbox (it would be cut off as a slow
    /// consumer). A backtrack sends the newest that fit.
    fn replay(
        &self,
        name: &ChannelName,
        st: &ChannelState,
        client: &Arc<ClientHandle>,
        replay: Replay<'_>,
    ) -> Option<Recovered> {
        let room = self
            .outbox_limit
            .saturating_sub(client.outbox.pending_bytes());
        let frames = |entries: &[Arc<Entry>]| -> Vec<bytes::Bytes> {
            entries
                .iter()
                // Publications for some subscribers only go back to them alone.
                .filter(|e| e.for_client(client.id))
                .map(|e| {
                    let msg = Message {
                        channel: name.clone(),
                        offset: e.offset,
                        epoch: st.epoch.clone(),
                        from: e.from,
                        data: e.data.clone(),
                        time_ms: e.time_ms,
                    };
                    client
                        .format
                        .for_recipient(&client.format.message(&msg), client)
                })
                .collect()
        };
        let (frames, outcome) = match replay {
            Replay::Nothing => return None,
            Replay::Last(n) | Replay::Since { newest: n, .. } => {
                let kept = match replay {
                    Replay::Since { after_ms, newest } => st.history.since(after_ms, newest),
                    _ => st.history.last(n),
                };
                let mut frames = frames(&kept);
                let mut total: usize = frames.iter().map(|f| f.len()).sum();
                while total > room && !frames.is_empty() {
                    total -= frames.remove(0).len();
                }
                (frames, None)
            }
            Replay::After { epoch, offset } => {
                // A position ahead of the channel is none this sequence reached: the client
                // cannot know what it missed (it answered `recovered: true` and skipped).
                let missed = (epoch == &*st.epoch && offset <= st.offset)
                    .then(|| st.history.after(offset, st.offset))
                    .flatten();
                let frames = missed
                    .map(|m| frames(&m))
                    .filter(|frames| frames.iter().map(|f| f.len()).sum::<usize>() <= room);
                Stats::add(
                    if frames.is_some() {
                        &self.stats.recovered
                    } else {
                        &self.stats.recover_failed
                    },
                    1,
                );
                let recovered = Recovered {
                    recovered: frames.is_some(),
                    epoch: st.epoch.to_string(),
                    offset: st.offset,
                };
                (frames.unwrap_or_default(), Some(recovered))
            }
        };
        let mut sent = 0;
        for frame in frames {
            if self.push_or_close(client, frame) {
                sent += 1;
            }
        }
        Stats::add(&self.stats.deliveries, sent);
        client
            .messages_out
            .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        outcome
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
            let was_followed = st.followed();
            let removed = st.subscribers.remove(&client);
            if was_followed
                && !st.followed()
                && let Some(interest) = self.interest.get()
            {
                interest.vacated(name);
            }
            if removed.is_some() && st.subscribers.is_empty() && st.options.history_size > 0 {
                let ttl = std::time::Duration::from_secs(u64::from(st.options.history_ttl_secs));
                st.linger_until = Some(std::time::Instant::now() + ttl);
            }
            if let Some(c) = &removed {
                self.emit_left(name, c, reason, st.subscribers.is_empty());
                if st.options.join_leave {
                    self.announce(name, &st, c, false);
                }
                if (st.options.presence || st.options.join_leave)
                    && let Some(interest) = self.interest.get()
                {
                    let user = c.user().map(|u| u.to_string());
                    interest.left(name, c.id, user.as_deref(), st.options.join_leave);
                }
            }
            (removed.is_some(), st.is_vacant())
        };
        if vacant {
            self.remove_if_vacant(name);
        }
        was
    }

    /// Drops an ephemeral channel that has no subscribers (re-checked under the locks).
    fn remove_if_vacant(&self, name: &ChannelName) {
        self.remove_if_vacant_at(name, std::time::Instant::now());
    }

    fn remove_if_vacant_at(&self, name: &ChannelName, now: std::time::Instant) {
        let mut shard = self.channels.shard(name.shard_key()).write();
        let Some(channel) = shard.get(name) else {
            return;
        };
        let mut st = channel.state.lock();
        if st.is_vacant_at(now) {
            st.removed = true;
            drop(st);
            shard.remove(name);
        }
    }

    // ---- fan-out ------------------------------------------------------------------------

    /// Single-node publish: assigns the next offset, records it in the channel's history and
    /// delivers, in one critical section per channel so every subscriber sees offsets in order
    /// and a recovery never interleaves with a newer publication. A channel that does not
    /// exist has nobody to deliver to and records nothing (offset 0), unless the publication
    /// says to create it (its options keep history: the usual case of a client that blinked
    /// and will come back for what it missed).
    pub fn publish_sequenced(&self, publish: &Publish) -> Published {
        loop {
            let channel = match (self.lookup(&publish.channel), &publish.create) {
                (Some(c), _) => c,
                (None, Some(options)) => self.get_or_create(&publish.channel, options),
                (None, None) => return self.publish_nowhere(publish),
            };
            // Checked and used under one lock: a channel removed meanwhile is looked up again.
            let mut st = channel.state.lock();
            if st.removed {
                continue;
            }
            return self.sequence(&mut st, publish);
        }
    }

    /// Assigns the next offset to `publish`, keeps it and fans it out (under the channel's
    /// lock).
    fn sequence(&self, st: &mut ChannelState, publish: &Publish) -> Published {
        st.offset += 1;
        let msg = Message {
            channel: publish.channel.clone(),
            offset: st.offset,
            epoch: st.epoch.clone(),
            from: publish.from,
            data: publish.data.clone(),
            time_ms: now_ms(),
        };
        self.keep(st, &msg, publish.to.as_deref());
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

    /// A publication to a channel that does not exist: nobody to deliver to, nothing
    /// recorded, but the firehose still hears of it.
    fn publish_nowhere(&self, publish: &Publish) -> Published {
        let msg = Message {
            channel: publish.channel.clone(),
            offset: 0,
            epoch: Arc::from(""),
            from: publish.from,
            data: publish.data.clone(),
            time_ms: now_ms(),
        };
        let delivered = self.fan_out(
            &HashMap::new(),
            &msg,
            publish.to.as_deref(),
            publish.once.as_deref(),
            None,
        );
        Published {
            offset: 0,
            epoch: String::new(),
            delivered,
        }
    }

    /// The channel `name`, created ephemeral with `options` if it does not exist.
    fn get_or_create(&self, name: &ChannelName, options: &ChannelOptions) -> Arc<Channel> {
        self.channels
            .shard(name.shard_key())
            .write()
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Channel::new(name.clone(), options.clone(), false)))
            .clone()
    }

    /// Records a just-sequenced publication: in the channel's history if it keeps one, and
    /// its position for the store (persistent channels keep their epoch and offset).
    fn keep(&self, st: &mut ChannelState, msg: &Message, to: Option<&[ClientId]>) {
        let size = st.options.history_size as usize;
        if size == 0 {
            if st.persistent {
                self.record(|| HistoryOp::Position {
                    channel: msg.channel.clone(),
                    epoch: st.epoch.clone(),
                    offset: st.offset,
                });
            }
            return;
        }
        let entry = Arc::new(Entry {
            offset: msg.offset,
            from: msg.from,
            data: bytes::Bytes::copy_from_slice(&msg.data),
            time_ms: msg.time_ms,
            to: to.map(<[ClientId]>::to_vec),
        });
        let ttl = std::time::Duration::from_secs(u64::from(st.options.history_ttl_secs));
        st.history.push(entry.clone(), ttl, size, &self.budget);
        self.record(|| HistoryOp::Append {
            channel: msg.channel.clone(),
            epoch: st.epoch.clone(),
            entry,
            keep_from: st.history.first_offset().unwrap_or(msg.offset),
        });
    }

    /// Delivers a message whose position was assigned elsewhere (a clustered broker).
    pub fn deliver_at(&self, msg: &Message, to: Option<&[ClientId]>) -> u64 {
        let Some(channel) = self.lookup(&msg.channel) else {
            return 0;
        };
        let mut st = channel.state.lock();
        if st.removed {
            // Nobody follows it here any more (a new channel of the name gets the next one).
            return 0;
        }
        if st.epoch != msg.epoch {
            // The backplane's numbering is the channel's: adopt it (its first message here).
            // What the store kept under the old epoch goes.
            self.record(|| HistoryOp::Forget {
                channel: msg.channel.clone(),
            });
            st.epoch = msg.epoch.clone();
            st.offset = 0;
            st.history.clear(&self.budget);
        }
        if msg.offset <= st.offset {
            return 0; // Already delivered here.
        }
        if msg.offset != st.offset + 1 {
            // Publications went by while this node did not follow the channel: what it kept
            // is no longer a contiguous tail (a recovery completes it from the backplane).
            st.history.clear(&self.budget);
        }
        st.offset = msg.offset;
        self.keep(&mut st, msg, to);
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
        let published = Some(std::time::Instant::now());
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
            if self.push_or_close_since(client, frame, published) {
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
        let listened = self.firehose_len.load(std::sync::atomic::Ordering::Relaxed) > 0;
        let firehose = listened.then(|| self.firehose.read());
        if let Some(firehose) = firehose.filter(|f| !f.is_empty()) {
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
