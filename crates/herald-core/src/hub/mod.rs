//! The hub: every operation a connection, the HTTP API or an admin can perform, checked
//! against policy and applied to the registry, the broker and the store. It knows nothing
//! about sockets: tests drive it directly, and every front end calls the same functions, so
//! errors and behaviour are identical everywhere.

mod policy;
mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

pub use policy::Actor;
pub use registry::{Added, Channel, ChannelSummary, ChannelView, Registry};

use crate::bans::{BanList, BanRecord, BanTarget};
use crate::broker::{Broker, Publish, Published};
use crate::channel::{ChannelName, ChannelOptions};
use crate::client::{
    ClientHandle, ClientInfo, ConnectExtras, Disconnect, DisconnectReason, close_code, now_ms,
};
use crate::error::{ErrorCode, HeraldError};
use crate::events::{EventBus, EventMask, EventType};
use crate::format::WireFormat;
use crate::ids::ClientId;
use crate::secret;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{ChannelRecord, Store};

/// The channel whose subscribers (through [`Hub::subscribe_firehose`]) get every publication.
pub const FIREHOSE_CHANNEL: &str = "global";

/// Limits and defaults the hub enforces (from the `[limits]` and `[channels]` config).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Bytes a connection may have queued before it is disconnected as a slow consumer.
    pub outbox_max_bytes: usize,
    pub max_channels_per_connection: usize,
    pub max_channels_per_request: usize,
    /// Largest `data` of a publication or direct message, in bytes of JSON.
    pub max_payload_bytes: usize,
    /// Longest `to` list of a publication.
    pub max_recipients: usize,
    /// Subscribing to an unknown channel creates it (ephemeral). Publishing to an unknown
    /// channel reaches nobody and creates nothing. When off, both are `channel_not_found`.
    pub auto_create_channels: bool,
    /// Options of channels created on first use whose name has no configured namespace
    /// (the default namespace, `[channels]`).
    pub channel_defaults: ChannelOptions,
    /// Options of each namespace (`[namespaces.<ns>]`, already merged over
    /// `channel_defaults`), by the prefix before the first `:` of a channel name.
    pub namespaces: HashMap<String, ChannelOptions>,
    /// Clients may send direct messages to other clients (admins always may).
    pub client_direct_messages: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            outbox_max_bytes: 1 << 20,
            max_channels_per_connection: 1000,
            max_channels_per_request: 100,
            max_payload_bytes: 64 * 1024,
            max_recipients: 1000,
            auto_create_channels: true,
            channel_defaults: ChannelOptions::default(),
            namespaces: HashMap::new(),
            client_direct_messages: false,
        }
    }
}

impl HubConfig {
    /// The options a channel called `name` starts from: its namespace's, or the defaults
    /// when it has no prefix or one that is not configured.
    pub fn defaults_for(&self, name: &ChannelName) -> &ChannelOptions {
        name.namespace()
            .and_then(|ns| self.namespaces.get(ns))
            .unwrap_or(&self.channel_defaults)
    }
}

/// A publication request as the hub receives it from any front end.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    pub channels: Vec<ChannelName>,
    /// Valid JSON text.
    pub data: Bytes,
    pub to: Option<Vec<ClientId>>,
    /// Each client gets the publication at most once, however many of its channels it is in
    /// (for dialects whose frames do not name the channel).
    pub once_per_client: bool,
}

/// One channel's outcome of a publication.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelPublished {
    #[schema(value_type = String)]
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: String,
    pub delivered: u64,
}

/// A client for listings.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClientSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: ClientId,
    pub dialect: &'static str,
    pub remote: Option<String>,
    pub connected_at_ms: u64,
    pub admin: bool,
    /// The user it authenticated as, if any.
    pub user: Option<String>,
    pub subscriptions: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub pending_bytes: usize,
    /// Present in single-client views.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Vec<ChannelName>>,
}

/// Longest ban or kick reason accepted.
pub const MAX_REASON_LEN: usize = 512;

/// Who to ban.
#[derive(Clone, Debug)]
pub enum BanSubject {
    /// A connected client: its user if it has one, else its address.
    Client(ClientId),
    Target(BanTarget),
}

#[derive(Clone, Debug)]
pub struct BanRequest {
    pub target: BanSubject,
    /// `None`: until lifted.
    pub duration_secs: Option<u64>,
    pub reason: String,
}

/// A ban that was put in force, and how many connections it closed.
#[derive(Clone, Debug)]
pub struct Banned {
    pub ban: BanRecord,
    pub disconnected: u64,
}

/// Parses a ban id: `ip:<address>`, `cidr:<range>`, `user:<user id>`.
pub fn parse_ban_id(id: &str) -> Result<BanTarget, HeraldError> {
    match id.split_once(':') {
        Some(("ip", rest)) => BanTarget::ip(rest),
        Some(("cidr", rest)) => BanTarget::cidr(rest),
        Some(("user", rest)) => BanTarget::user(rest),
        _ => Err(HeraldError::bad_request(
            "a ban id looks like ip:<address>, cidr:<range> or user:<user id>",
        )),
    }
}

/// A newly created channel and its token (shown once; only its hash is kept).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedChannel {
    #[serde(flatten)]
    pub channel: ChannelSummary,
    pub token: String,
}

pub struct Hub {
    registry: Registry,
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    config: HubConfig,
    stats: Arc<Stats>,
    started: Instant,
    /// Held while creating or deleting a persistent channel (store write + registry update).
    channel_changes: tokio::sync::Mutex<()>,
    bans: BanList,
}

impl Hub {
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>, store: Arc<dyn Store>) -> Self {
        let stats = Arc::new(Stats::default());
        Hub {
            registry: Registry::new(config.outbox_max_bytes, stats.clone()),
            broker,
            store,
            config,
            stats,
            started: Instant::now(),
            channel_changes: tokio::sync::Mutex::new(()),
            bans: BanList::default(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The counters, for tasks that outlive a borrow of the hub (webhook workers).
    pub fn shared_stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Re-creates the channels kept in the store (at start).
    pub fn restore(&self) -> Result<usize, HeraldError> {
        let records = self
            .store
            .load_channels()
            .map_err(|e| HeraldError::new(ErrorCode::StoreUnavailable, e.to_string()))?;
        let mut restored = 0;
        for rec in records {
            let name = match ChannelName::parse(&rec.name) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping stored channel with an invalid name");
                    continue;
                }
            };
            self.registry.create_persistent(
                &name,
                rec.options,
                rec.token_hash,
                rec.created_at_ms,
            )?;
            restored += 1;
        }
        let bans = self
            .store
            .load_bans()
            .map_err(|e| HeraldError::new(ErrorCode::StoreUnavailable, e.to_string()))?;
        let now = now_ms();
        for ban in bans {
            if ban.active_at(now) {
                self.bans.insert(ban);
            } else if let Err(e) = self.store.delete_ban(&ban.id()) {
                tracing::warn!(ban = %ban.id(), error = %e, "could not forget an expired ban");
            }
        }
        Ok(restored)
    }

    // ---- connections ----------------------------------------------------------------------

    /// Registers a new connection.
    pub fn connect(&self, format: &'static dyn WireFormat, info: ClientInfo) -> Arc<ClientHandle> {
        self.connect_as(format, info, ConnectExtras::default())
    }

    /// Registers a new connection that authenticated as `extras.user` at connect; its
    /// `client.connected` event carries `extras.headers`.
    pub fn connect_as(
        &self,
        format: &'static dyn WireFormat,
        info: ClientInfo,
        extras: ConnectExtras,
    ) -> Arc<ClientHandle> {
        let ConnectExtras { user, headers } = extras;
        let client = Arc::new(ClientHandle::new(format, info, user));
        Stats::add(&self.stats.connections_total, 1);
        // Before the client is listed, so nothing can subscribe it ahead of this event.
        self.registry.emit(EventType::ClientConnected, |f| {
            registry::client_fields(f, &client);
            let info = &client.info;
            f.insert(
                "remote".into(),
                info.remote.map_or(Value::Null, |a| a.to_string().into()),
            );
            f.insert("dialect".into(), info.dialect.into());
            let headers: serde_json::Map<_, _> = headers
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect();
            f.insert("headers".into(), headers.into());
        });
        self.registry.add_client(client.clone());
        self.announce(client.id, true);
        client
    }

    /// The lifecycle-event listeners (sinks are added at start, e.g. webhooks).
    pub fn events(&self) -> &EventBus {
        self.registry.events()
    }

    /// Chooses the lifecycle events an admin connection receives (`{"op":"events"}`).
    pub fn listen_events(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        mask: EventMask,
    ) -> Result<(), HeraldError> {
        actor.require_admin("receiving lifecycle events")?;
        let subs = client.subscriptions.lock();
        if subs.closed {
            return Err(HeraldError::new(
                ErrorCode::ClientNotFound,
                "the client is disconnecting",
            ));
        }
        self.registry.events().set_listener(client, mask);
        Ok(())
    }

    /// Makes a connection an admin (it presented the admin secret): it may do what the admin
    /// key allows over the HTTP API, and hears of every connect and disconnect.
    pub fn make_admin(&self, client: &Arc<ClientHandle>) {
        client.set_admin(true);
        self.registry.add_admin(client.clone());
    }

    /// Tells every admin connection (but the subject) that a client came or went.
    fn announce(&self, subject: ClientId, connected: bool) {
        for admin in self.registry.admins() {
            if admin.id == subject {
                continue;
            }
            if let Some(frame) = admin.format.connection_notice(subject, connected) {
                self.registry.push_or_close(&admin, frame);
            }
        }
    }

    /// Sends `data` to every connected client, admins and the sender included (admin only).
    /// Returns how many it was queued to.
    pub fn broadcast(&self, actor: &Actor, data: &[u8]) -> Result<u64, HeraldError> {
        actor.require_admin("broadcasting")?;
        self.check_payload(data)?;
        let from = match actor {
            Actor::Client(c) => Some(c.id),
            _ => None,
        };
        let mut sent = 0;
        for client in self.registry.all_clients() {
            if self
                .registry
                .push_or_close(&client, client.format.broadcast(from, data))
            {
                sent += 1;
            }
        }
        Stats::add(&self.stats.direct_messages, sent);
        Ok(sent)
    }

    /// Removes a connection and all its subscriptions. Idempotent.
    pub fn disconnect(&self, client: &Arc<ClientHandle>, reason: DisconnectReason) {
        let channels = {
            let mut subs = client.subscriptions.lock();
            if subs.closed {
                return;
            }
            subs.closed = true;
            std::mem::take(&mut subs.channels)
        };
        for name in &channels {
            self.registry
                .remove_subscriber(name, client.id, "disconnected");
        }
        self.registry.remove_admin(client.id);
        self.registry.events().remove_listener(client.id);
        self.registry.remove_firehose(client.id);
        if self.registry.remove_client(client.id).is_some() {
            Stats::add(&self.stats.disconnections_total, 1);
            self.registry.emit(EventType::ClientDisconnected, |f| {
                registry::client_fields(f, client);
                f.insert("reason".into(), reason.as_str().into());
            });
            self.announce(client.id, false);
        }
        tracing::debug!(client = %client.id, reason = reason.as_str(), "client disconnected");
    }

    // ---- subscriptions --------------------------------------------------------------------

    /// Subscribes `client` to `channels` on behalf of `actor` (the client itself, or an
    /// admin). Everything that can be checked up front is, so a refused request changes
    /// nothing; only `channel_full` can stop a request part-way. Subscribing twice is harmless.
    /// Returns the channels that were newly subscribed.
    pub fn subscribe(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        token: Option<&str>,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.subscribe_creating(actor, client, channels, token, Create::Namespace)
    }

    /// Joins `client` to `room`, creating it (ephemeral) with `options` if it does not exist,
    /// whatever `auto_create_channels` says: dialects with rooms that their clients create
    /// (SimplySocket's `join-room` with a `playerlimit`). Returns whether it newly joined.
    pub fn join_room(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        room: &ChannelName,
        options: &ChannelOptions,
    ) -> Result<bool, HeraldError> {
        let added = self.subscribe_creating(
            actor,
            client,
            std::slice::from_ref(room),
            None,
            Create::With(options),
        )?;
        Ok(!added.is_empty())
    }

    fn subscribe_creating(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        token: Option<&str>,
        create: Create<'_>,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.check_list_len(
            "channels",
            channels.len(),
            self.config.max_channels_per_request,
        )?;
        let mut subs = client.subscriptions.lock();
        if subs.closed {
            return Err(HeraldError::new(
                ErrorCode::ClientNotFound,
                "the client is disconnecting",
            ));
        }
        let fresh = channels
            .iter()
            .filter(|c| !subs.channels.contains(*c))
            .count();
        if subs.channels.len() + fresh > self.config.max_channels_per_connection {
            return Err(HeraldError::new(
                ErrorCode::TooMany,
                format!(
                    "a connection may subscribe to at most {} channels",
                    self.config.max_channels_per_connection
                ),
            ));
        }
        for name in channels {
            self.precheck_subscribe(actor, name, token, self.creating(&create, name))?;
        }
        let mut added = Vec::new();
        for name in channels {
            let check = |view: &ChannelView| {
                actor.check_subscribe(name, view, token)?;
                if let Some(max) = view.options.max_subscribers
                    && view.subscribers >= max as usize
                {
                    return Err(HeraldError::new(
                        ErrorCode::ChannelFull,
                        format!("channel {name:?} has reached its {max} subscribers"),
                    ));
                }
                Ok(())
            };
            let create = self.creating(&create, name);
            if self.registry.add_subscriber(name, client, create, check)? == Added::New {
                subs.channels.insert(name.clone());
                added.push(name.clone());
            }
        }
        Ok(added)
    }

    /// The options `name` would be created with if it does not exist (`None`: not created).
    fn creating<'a>(
        &'a self,
        create: &Create<'a>,
        name: &ChannelName,
    ) -> Option<&'a ChannelOptions> {
        match create {
            Create::Namespace => self
                .config
                .auto_create_channels
                .then(|| self.config.defaults_for(name)),
            Create::With(options) => Some(options),
        }
    }

    fn precheck_subscribe(
        &self,
        actor: &Actor,
        name: &ChannelName,
        token: Option<&str>,
        create: Option<&ChannelOptions>,
    ) -> Result<(), HeraldError> {
        match (self.registry.lookup(name), create) {
            (Some(channel), _) => channel.view(|view| actor.check_subscribe(name, view, token)),
            (None, Some(options)) => {
                actor.check_subscribe(name, &ChannelView::absent(options), token)
            }
            (None, None) => Err(not_found(name)),
        }
    }

    /// Adds `client` to the firehose: it receives every publication on every channel (once),
    /// as Eventual's `global` subscribers do. Needs permission to subscribe to `global`.
    pub fn subscribe_firehose(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
    ) -> Result<(), HeraldError> {
        let global = ChannelName::parse(FIREHOSE_CHANNEL)?;
        self.subscribe(actor, client, std::slice::from_ref(&global), None)?;
        let subs = client.subscriptions.lock();
        if !subs.closed {
            self.registry.add_firehose(client.clone());
        }
        Ok(())
    }

    pub fn unsubscribe_firehose(&self, client: &Arc<ClientHandle>) {
        self.registry.remove_firehose(client.id);
    }

    /// Removes `client` from `channels`; channels it was not in are ignored. Returns the
    /// channels it actually left.
    pub fn unsubscribe(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.unsubscribe_because(client, channels, "unsubscribed")
    }

    fn unsubscribe_because(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        reason: &'static str,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.check_list_len(
            "channels",
            channels.len(),
            self.config.max_channels_per_request,
        )?;
        let mut subs = client.subscriptions.lock();
        let mut left = Vec::new();
        for name in channels {
            if subs.channels.remove(name) {
                self.registry.remove_subscriber(name, client.id, reason);
                left.push(name.clone());
            }
        }
        Ok(left)
    }

    /// Removes a subscription on the server's initiative and tells the client why.
    pub fn force_unsubscribe(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        reason: &str,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        let left = self.unsubscribe_because(client, channels, "removed")?;
        for name in &left {
            if let Some(notice) = client.format.unsubscribed(name, reason) {
                self.registry.push_or_close(client, notice);
            }
        }
        Ok(left)
    }

    // ---- publishing -----------------------------------------------------------------------

    /// Publishes `req.data` to each channel in turn. Checks everything first (names, sizes,
    /// permissions), so a refused publication reaches no channel.
    pub async fn publish(
        &self,
        actor: &Actor,
        mut req: PublishRequest,
    ) -> Result<Vec<ChannelPublished>, HeraldError> {
        if req.channels.is_empty() {
            return Err(HeraldError::new(
                ErrorCode::MissingField,
                "no channel to publish to",
            ));
        }
        self.check_list_len(
            "channels",
            req.channels.len(),
            self.config.max_channels_per_request,
        )?;
        self.check_payload(&req.data)?;
        if let Some(to) = req.to.as_mut() {
            self.check_list_len("to", to.len(), self.config.max_recipients)?;
            to.sort_unstable();
            to.dedup();
        }
        let mut seen = std::collections::HashSet::new();
        req.channels.retain(|c| seen.insert(c.clone()));
        for name in &req.channels {
            let check = |view: &ChannelView| {
                actor.check_publish(name, view)?;
                check_channel_payload(name, view.options, req.data.len())
            };
            match self.registry.lookup(name) {
                Some(ch) => ch.view(check)?,
                None => {
                    // The credential first, so a channel token cannot tell a channel that
                    // does not exist from another channel's.
                    check(&ChannelView::absent(self.config.defaults_for(name)))?;
                    if !self.config.auto_create_channels {
                        return Err(not_found(name));
                    }
                }
            }
        }
        let from = match actor {
            Actor::Client(c) => Some(c.id),
            _ => None,
        };
        let once = req.once_per_client.then(Default::default);
        let mut results = Vec::with_capacity(req.channels.len());
        for name in req.channels {
            let publish = Publish {
                channel: name.clone(),
                from,
                data: req.data.clone(),
                to: req.to.clone(),
                once: once.clone(),
            };
            let Published {
                offset,
                epoch,
                delivered,
            } = self.broker.publish(&self.registry, publish).await?;
            results.push(ChannelPublished {
                channel: name,
                offset,
                epoch,
                delivered,
            });
        }
        Ok(results)
    }

    /// Sends `data` to one client.
    pub fn send_direct(&self, actor: &Actor, to: ClientId, data: &[u8]) -> Result<(), HeraldError> {
        if let Actor::Client(c) = actor
            && !c.is_admin()
            && !self.config.client_direct_messages
        {
            return Err(HeraldError::forbidden(
                "clients may not send direct messages on this server",
            ));
        }
        if let Actor::ChannelToken(_) | Actor::Issuer = actor {
            return Err(HeraldError::forbidden("direct messages need the admin key"));
        }
        self.check_payload(data)?;
        let target = self
            .registry
            .client(to)
            .ok_or_else(|| client_not_found(to))?;
        let from = match actor {
            Actor::Client(c) => Some(c.id),
            _ => None,
        };
        if !self
            .registry
            .push_or_close(&target, target.format.direct(from, data))
        {
            return Err(HeraldError::new(
                ErrorCode::ClientNotFound,
                format!("client {to} is disconnecting; the message was not delivered"),
            ));
        }
        Stats::add(&self.stats.direct_messages, 1);
        Ok(())
    }

    // ---- channels -------------------------------------------------------------------------

    /// Creates a persistent channel (kept in the store) and returns it with its token.
    pub async fn create_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<CreatedChannel, HeraldError> {
        self.create(actor, name, options, Existing::MayBeEphemeral)
            .await
    }

    /// Creates a persistent channel only if no channel of that name exists, ephemeral ones
    /// included: for creators that are handed the new channel's token without being admins
    /// (WS-PushServer's `/channel/create`), so they never take over a channel in use.
    pub async fn create_unused_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<CreatedChannel, HeraldError> {
        self.create(actor, name, options, Existing::Refused).await
    }

    async fn create(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
        existing: Existing,
    ) -> Result<CreatedChannel, HeraldError> {
        actor.require_admin("creating channels")?;
        // Serialise creates and deletes so the store and the registry always agree.
        let _guard = self.channel_changes.lock().await;
        if let Some(channel) = self.registry.lookup(&name)
            && (existing == Existing::Refused || channel.summary().persistent)
        {
            return Err(HeraldError::new(
                ErrorCode::ChannelExists,
                format!("channel {name:?} already exists"),
            ));
        }
        let token = secret::new_channel_token();
        let record = ChannelRecord {
            name: name.to_string(),
            options: options.clone(),
            token_hash: secret::hash_token(&token),
            created_at_ms: now_ms(),
        };
        let store = self.store.clone();
        let rec = record.clone();
        run_blocking(move || store.put_channel(&rec)).await?;
        self.registry
            .create_persistent(&name, options, record.token_hash, record.created_at_ms)?;
        let channel = self
            .registry
            .lookup(&name)
            .ok_or_else(|| not_found(&name))?;
        Ok(CreatedChannel {
            channel: channel.summary(),
            token,
        })
    }

    /// Creates a persistent channel, or replaces the options of an existing one (keeping its
    /// token and subscribers). Returns the token when a channel was created.
    pub async fn put_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<Option<String>, HeraldError> {
        actor.require_admin("creating channels")?;
        {
            let _guard = self.channel_changes.lock().await;
            if let Some((token_hash, created_at_ms)) =
                self.registry.update_options(&name, options.clone())
            {
                let record = ChannelRecord {
                    name: name.to_string(),
                    options,
                    token_hash,
                    created_at_ms,
                };
                let store = self.store.clone();
                run_blocking(move || store.put_channel(&record)).await?;
                return Ok(None);
            }
        }
        Ok(Some(self.create_channel(actor, name, options).await?.token))
    }

    /// Deletes a channel: its subscribers get an `unsubscribed` notice, the store forgets it.
    pub async fn delete_channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<u64, HeraldError> {
        let _guard = self.channel_changes.lock().await;
        let channel = self.managed_channel(actor, name)?;
        if channel.summary().persistent {
            let store = self.store.clone();
            let key = name.to_string();
            run_blocking(move || store.delete_channel(&key).map(|_| ())).await?;
        }
        let subscribers = self.registry.remove_channel(name).unwrap_or_default();
        let notice = |c: &Arc<ClientHandle>| c.format.unsubscribed(name, "channel_deleted");
        for client in &subscribers {
            let mut subs = client.subscriptions.lock();
            // The client may already have re-subscribed to a new channel of the same name;
            // then the name stays in its set (lock order: subscriptions, then channel state).
            let resubscribed = self
                .registry
                .lookup(name)
                .is_some_and(|c| c.has_subscriber(client.id));
            if !resubscribed {
                subs.channels.remove(name);
            }
            let channelless = subs.channels.is_empty();
            drop(subs);
            if let Some(notice) = notice(client) {
                self.registry.push_or_close(client, notice);
            }
            if channelless && client.format.closes_without_channels() {
                // After the notice: closes other than a slow consumer's flush first.
                client.outbox.close(Disconnect::new(
                    DisconnectReason::ChannelDeleted,
                    close_code::NORMAL,
                    "Channel deleted.",
                ));
            }
        }
        Ok(subscribers.len() as u64)
    }

    /// One channel, for `actor` (admin or the channel's token).
    pub fn channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<ChannelSummary, HeraldError> {
        Ok(self.managed_channel(actor, name)?.summary())
    }

    /// The channel `name` if `actor` may manage it. The credential is checked first: a
    /// channel token gets the same refusal for a channel that does not exist as for another
    /// channel's, so it cannot probe which channels exist.
    fn managed_channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<Arc<registry::Channel>, HeraldError> {
        match self.registry.lookup(name) {
            Some(channel) => {
                channel.view(|view| actor.check_manage(name, view))?;
                Ok(channel)
            }
            None => {
                actor.check_manage(name, &ChannelView::absent(self.config.defaults_for(name)))?;
                Err(not_found(name))
            }
        }
    }

    /// Every channel, sorted by name (admin only).
    pub fn channels(&self, actor: &Actor) -> Result<Vec<ChannelSummary>, HeraldError> {
        actor.require_admin("listing channels")?;
        let mut all: Vec<_> = self
            .registry
            .all_channels()
            .iter()
            .map(|c| c.summary())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    // ---- clients --------------------------------------------------------------------------

    pub fn client_summary(&self, client: &ClientHandle, with_channels: bool) -> ClientSummary {
        use std::sync::atomic::Ordering::Relaxed;
        let subs = client.subscriptions();
        ClientSummary {
            id: client.id,
            dialect: client.info.dialect,
            remote: client.info.remote.map(|a| a.to_string()),
            connected_at_ms: client.info.connected_at_ms,
            admin: client.is_admin(),
            user: client.user().map(|u| u.to_string()),
            subscriptions: subs.len(),
            messages_in: client.frames_in.load(Relaxed),
            messages_out: client.messages_out.load(Relaxed),
            pending_bytes: client.outbox.pending_bytes(),
            channels: with_channels.then_some(subs),
        }
    }

    /// Every connected client, oldest first (admin only).
    pub fn clients(&self, actor: &Actor) -> Result<Vec<ClientSummary>, HeraldError> {
        actor.require_admin("listing clients")?;
        let mut all: Vec<_> = self
            .registry
            .all_clients()
            .iter()
            .map(|c| self.client_summary(c, false))
            .collect();
        all.sort_by_key(|c| (c.connected_at_ms, c.id));
        Ok(all)
    }

    /// Looks a client up for an admin operation.
    pub fn client(&self, actor: &Actor, id: ClientId) -> Result<Arc<ClientHandle>, HeraldError> {
        actor.require_admin("managing clients")?;
        self.registry.client(id).ok_or_else(|| client_not_found(id))
    }

    /// Disconnects a client with a close code and reason it will see.
    pub fn kick(
        &self,
        actor: &Actor,
        id: ClientId,
        disconnect: Disconnect,
    ) -> Result<(), HeraldError> {
        let client = self.client(actor, id)?;
        if client.outbox.close(disconnect) {
            Stats::add(&self.stats.kicked, 1);
        }
        Ok(())
    }

    // ---- bans -----------------------------------------------------------------------------

    /// Bans `request.target` (kept in the store) and closes every connection it covers with
    /// 4003 (do not reconnect). A ban of a client names that client's user if it has one,
    /// else the address it connected from.
    pub async fn ban(&self, actor: &Actor, request: BanRequest) -> Result<Banned, HeraldError> {
        actor.require_admin("banning")?;
        if request.reason.len() > MAX_REASON_LEN {
            return Err(HeraldError::bad_request(format!(
                "a reason may be at most {MAX_REASON_LEN} bytes"
            )));
        }
        let target = match request.target {
            BanSubject::Client(id) => {
                let client = self.client(actor, id)?;
                match (client.user(), client.info.remote) {
                    (Some(user), _) => BanTarget::User(user.to_string()),
                    (None, Some(remote)) => BanTarget::Ip(remote.ip().to_canonical()),
                    (None, None) => {
                        return Err(HeraldError::bad_request(
                            "this client has neither a user id nor an address to ban",
                        ));
                    }
                }
            }
            BanSubject::Target(BanTarget::Ip(ip)) => BanTarget::Ip(ip.to_canonical()),
            BanSubject::Target(t) => t,
        };
        let target = target.canonical();
        let now = now_ms();
        self.bans.check_room(&target, now)?;
        let ban = BanRecord {
            target,
            reason: request.reason,
            created_at_ms: now,
            expires_at_ms: request
                .duration_secs
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
        };
        let store = self.store.clone();
        let record = ban.clone();
        run_blocking(move || store.put_ban(&record)).await?;
        self.bans.insert(ban.clone());
        let message = ban.message();
        let close = Disconnect::new(DisconnectReason::Banned, close_code::BANNED, message);
        let mut closed = Vec::new();
        for other in self.registry.all_clients() {
            let ip = other.info.remote.map(|a| a.ip());
            // Admin connections hold the admin secret: an address ban does not lock them out.
            let exempt = other.is_admin() && !matches!(ban.target, BanTarget::User(_));
            if !exempt
                && BanList::covers(&ban, ip, other.user().map(|u| u.as_ref()))
                && other.outbox.close(close.clone())
            {
                Stats::add(&self.stats.kicked, 1);
                closed.push(other.id);
            }
        }
        self.registry.emit(EventType::ClientBanned, |f| {
            if let Value::Object(fields) = serde_json::to_value(&ban).unwrap_or_default() {
                f.extend(fields);
            }
            // The ban's id as "ban": "id" is the request id in native frames.
            f.insert("ban".into(), ban.id().into());
            let ids = closed.iter().map(|id| Value::from(id.to_string()));
            f.insert("clients".into(), Value::Array(ids.collect()));
        });
        Ok(Banned {
            disconnected: closed.len() as u64,
            ban,
        })
    }

    /// Bans the address or user of client `id` (SubSocket's `ban <uuid> [seconds]`).
    pub async fn ban_client(
        &self,
        actor: &Actor,
        id: ClientId,
        duration_secs: Option<u64>,
        reason: &str,
    ) -> Result<BanRecord, HeraldError> {
        let request = BanRequest {
            target: BanSubject::Client(id),
            duration_secs,
            reason: reason.to_string(),
        };
        Ok(self.ban(actor, request).await?.ban)
    }

    /// Lifts the ban with this id (`ip:...`, `cidr:...`, `user:...`).
    pub async fn unban(&self, actor: &Actor, id: &str) -> Result<BanRecord, HeraldError> {
        actor.require_admin("lifting bans")?;
        let target = parse_ban_id(id)?;
        let Some(ban) = self.bans.remove(&target) else {
            return Err(HeraldError::new(
                ErrorCode::NotFound,
                format!("no ban {:?} is in force", crate::ids::truncate(id, 300)),
            ));
        };
        let store = self.store.clone();
        let key = ban.id();
        if let Err(e) = run_blocking(move || store.delete_ban(&key)).await {
            self.bans.insert(ban);
            return Err(e);
        }
        Ok(ban)
    }

    /// The bans in force, oldest first (admin only).
    pub fn bans(&self, actor: &Actor) -> Result<Vec<BanRecord>, HeraldError> {
        actor.require_admin("listing bans")?;
        Ok(self.bans.list(now_ms()))
    }

    /// Forgets expired bans, in memory and in the store (the server's housekeeping calls it).
    pub async fn prune_bans(&self) {
        let expired = self.bans.prune(now_ms());
        if expired.is_empty() {
            return;
        }
        let store = self.store.clone();
        let ids: Vec<String> = expired.iter().map(|b| b.id()).collect();
        let result = run_blocking(move || {
            for id in &ids {
                store.delete_ban(id)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e.message, "could not forget expired bans");
        }
    }

    /// The ban that refuses a connection from `ip` now, if any.
    pub fn banned(&self, ip: std::net::IpAddr) -> Option<BanRecord> {
        self.bans.check_ip(ip, now_ms())
    }

    /// Changes whenever a ban is put in force (see [`BanList::generation`]).
    pub fn ban_generation(&self) -> u64 {
        self.bans.generation()
    }

    /// The ban that refuses connections of `user` now, if any.
    pub fn banned_user(&self, user: &str) -> Option<BanRecord> {
        self.bans.check_user(user, now_ms())
    }

    /// Disconnects every connection of `user` with `disconnect`; returns how many.
    pub fn kick_user(
        &self,
        actor: &Actor,
        user: &str,
        disconnect: Disconnect,
    ) -> Result<u64, HeraldError> {
        actor.require_admin("managing clients")?;
        let mut kicked = 0;
        for client in self.user_clients(user) {
            if client.outbox.close(disconnect.clone()) {
                kicked += 1;
            }
        }
        Stats::add(&self.stats.kicked, kicked);
        Ok(kicked)
    }

    /// Sends `data` directly to every connection of `user`; returns how many got it.
    pub fn send_to_user(&self, actor: &Actor, user: &str, data: &[u8]) -> Result<u64, HeraldError> {
        actor.require_admin("messaging users")?;
        self.check_payload(data)?;
        let mut sent = 0;
        for client in self.user_clients(user) {
            if self
                .registry
                .push_or_close(&client, client.format.direct(None, data))
            {
                sent += 1;
            }
        }
        Stats::add(&self.stats.direct_messages, sent);
        Ok(sent)
    }

    /// The connections of `user`. A scan: admin operations are rare next to the hot path, and
    /// an index would cost every connection memory.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        let mut found = self.registry.all_clients();
        found.retain(|c| c.user().is_some_and(|u| **u == *user));
        found
    }

    // ---- housekeeping ---------------------------------------------------------------------

    /// One keep-alive round: clients silent for longer than `timeout_ms` are closed, every
    /// other one gets a keep-alive probe. Called by the server's pinger every interval.
    pub fn keepalive_sweep(&self, now_ms: u64, timeout_ms: u64) {
        for client in self.registry.all_clients() {
            if now_ms.saturating_sub(client.last_activity_ms()) > timeout_ms {
                if client.outbox.close(Disconnect::timed_out()) {
                    Stats::add(&self.stats.timed_out, 1);
                }
            } else {
                self.registry
                    .push_or_close(&client, client.format.keepalive());
            }
        }
    }

    /// Asks every connection to close (server shutdown).
    pub fn close_all(&self, disconnect: Disconnect) {
        for client in self.registry.all_clients() {
            client.outbox.close(disconnect.clone());
        }
    }

    pub fn stats_snapshot(&self) -> StatsSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let channels = self.registry.all_channels();
        StatsSnapshot {
            connections: self.registry.client_count() as u64,
            connections_total: s.connections_total.load(Relaxed),
            disconnections_total: s.disconnections_total.load(Relaxed),
            channels: channels.len() as u64,
            subscriptions: channels.iter().map(|c| c.summary().subscribers).sum(),
            messages_in: s.client_requests.load(Relaxed),
            publications: s.publications.load(Relaxed),
            messages_out: s.deliveries.load(Relaxed),
            direct_messages: s.direct_messages.load(Relaxed),
            slow_consumers: s.slow_consumers.load(Relaxed),
            timed_out: s.timed_out.load(Relaxed),
            kicked: s.kicked.load(Relaxed),
            webhook_delivered: s.webhook_delivered.load(Relaxed),
            webhook_failed: s.webhook_failed.load(Relaxed),
            webhook_dropped: s.webhook_dropped.load(Relaxed),
            webhook_retries: s.webhook_retries.load(Relaxed),
            refused_connections: s.refused_connections.load(Relaxed),
            refused_max_connections: s.refused_max_connections.load(Relaxed),
            refused_per_ip: s.refused_per_ip.load(Relaxed),
            refused_per_user: s.refused_per_user.load(Relaxed),
            refused_connect_rate: s.refused_connect_rate.load(Relaxed),
            refused_origin: s.refused_origin.load(Relaxed),
            rate_limited: s.rate_limited.load(Relaxed),
            rate_limited_disconnects: s.rate_limited_disconnects.load(Relaxed),
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }

    fn check_list_len(&self, what: &str, len: usize, max: usize) -> Result<(), HeraldError> {
        if len > max {
            return Err(HeraldError::new(
                ErrorCode::TooMany,
                format!("{what} lists {len} entries; at most {max} are allowed"),
            ));
        }
        Ok(())
    }

    fn check_payload(&self, data: &[u8]) -> Result<(), HeraldError> {
        if data.len() > self.config.max_payload_bytes {
            return Err(HeraldError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "data is {} bytes; at most {} are allowed",
                    data.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Whether creating a persistent channel may turn a live ephemeral one of the same name into
/// it (admins), or must find no channel at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    MayBeEphemeral,
    Refused,
}

/// Which options a subscription creates a missing channel with.
enum Create<'a> {
    /// Its namespace's (or the defaults), if `auto_create_channels` is on.
    Namespace,
    /// These, whatever `auto_create_channels` says (dialect rooms).
    With(&'a ChannelOptions),
}

/// A channel's own payload limit (`max_payload_bytes` of its namespace or its options).
fn check_channel_payload(
    name: &ChannelName,
    options: &ChannelOptions,
    len: usize,
) -> Result<(), HeraldError> {
    match options.max_payload_bytes {
        Some(max) if len > max as usize => Err(HeraldError::new(
            ErrorCode::PayloadTooLarge,
            format!("data is {len} bytes; channel {name:?} accepts at most {max}"),
        )),
        _ => Ok(()),
    }
}

fn not_found(name: &ChannelName) -> HeraldError {
    HeraldError::new(
        ErrorCode::ChannelNotFound,
        format!("channel {name:?} does not exist"),
    )
}

fn client_not_found(id: ClientId) -> HeraldError {
    HeraldError::new(
        ErrorCode::ClientNotFound,
        format!("no client {id} is connected"),
    )
}

/// Runs a store call off the async workers.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, HeraldError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store operation failed");
            Err(HeraldError::new(ErrorCode::StoreUnavailable, e.to_string()))
        }
        Err(e) => Err(HeraldError::internal(format!("store task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests;
