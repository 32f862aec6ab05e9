//! The hub: every operation a connection, the HTTP API or an admin can perform, checked
//! against policy and applied to the registry, the broker and the store. It knows nothing
//! about sockets: tests drive it directly, and every front end calls the same functions, so
//! errors and behaviour are identical everywhere.

mod channels;
mod history;
mod moderation;
mod policy;
mod presence;
mod publish;
pub(crate) mod registry;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

pub use channels::CreatedChannel;
pub use history::{HistoryPage, HistoryQuery, Publication};
pub use moderation::{BanRequest, BanSubject, Banned, ClientSummary, MAX_REASON_LEN, parse_ban_id};
pub use policy::Actor;
pub use presence::{PresenceEntry, PresenceList, PresenceStats};
pub use publish::{ChannelPublished, PublishRequest};
pub use registry::{Added, Channel, ChannelSummary, ChannelView, Registry};
pub use subscribe::Subscribed;

use crate::bans::{BanList, BanRecord, BanTarget};
use crate::broker::Broker;
use crate::channel::{ChannelName, ChannelOptions};
use crate::client::{
    ClientHandle, ClientInfo, ConnectExtras, Disconnect, DisconnectReason, close_code, now_ms,
};
use crate::error::{ErrorCode, HeraldError};
use crate::events::{EventBus, EventMask, EventType};
use crate::format::WireFormat;
use crate::ids::ClientId;
use crate::publication::{Publish, Published};
use crate::secret;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{ChannelRecord, Store};

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
    /// The byte budget of all channels' history (`[history] max_bytes`).
    pub history_max_bytes: usize,
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
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
        }
    }
}

/// The default `[history] max_bytes`: 64 MiB.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 64 << 20;

impl HubConfig {
    /// The options a channel called `name` starts from: its namespace's, or the defaults
    /// when it has no prefix or one that is not configured.
    pub fn defaults_for(&self, name: &ChannelName) -> &ChannelOptions {
        name.namespace()
            .and_then(|ns| self.namespaces.get(ns))
            .unwrap_or(&self.channel_defaults)
    }
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
            registry: Registry::new(
                config.outbox_max_bytes,
                stats.clone(),
                config.history_max_bytes,
            ),
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

    /// Resolves once this node receives every node's publications to `channels` (see
    /// [`Broker::ready`]); a subscriber's reply waits for it.
    pub async fn broker_ready(&self, channels: &[ChannelName]) -> Result<(), HeraldError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.broker.ready(channels).await
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
        let s = &self.stats;
        let channels = self.registry.all_channels();
        StatsSnapshot {
            nodes: 1,
            connections: self.registry.client_count() as u64,
            connections_total: s.connections_total.get(),
            disconnections_total: s.disconnections_total.get(),
            channels: channels.len() as u64,
            subscriptions: channels.iter().map(|c| c.summary().subscribers).sum(),
            messages_in: s.client_requests.get(),
            publications: s.publications.get(),
            messages_out: s.deliveries.get(),
            direct_messages: s.direct_messages.get(),
            slow_consumers: s.slow_consumers.get(),
            timed_out: s.timed_out.get(),
            kicked: s.kicked.get(),
            webhook_delivered: s.webhook_delivered.get(),
            webhook_failed: s.webhook_failed.get(),
            webhook_dropped: s.webhook_dropped.get(),
            webhook_retries: s.webhook_retries.get(),
            refused_connections: s.refused_connections.get(),
            refused_max_connections: s.refused_max_connections.get(),
            refused_per_ip: s.refused_per_ip.get(),
            refused_per_user: s.refused_per_user.get(),
            refused_connect_rate: s.refused_connect_rate.get(),
            refused_origin: s.refused_origin.get(),
            rate_limited: s.rate_limited.get(),
            rate_limited_disconnects: s.rate_limited_disconnects.get(),
            history_messages: channels
                .iter()
                .map(|c| c.read_history(|h, _, _| h.len() as u64))
                .sum(),
            history_bytes: self.registry.history_budget().used() as u64,
            history_evicted: s.history_evicted.get(),
            history_write_dropped: s.history_write_dropped.get(),
            recovered: s.recovered.get(),
            recover_failed: s.recover_failed.get(),
            ingress_published: s.ingress_published.get(),
            ingress_rejected: s.ingress_rejected.get(),
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
