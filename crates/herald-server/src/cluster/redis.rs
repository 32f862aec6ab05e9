//! The Redis broker (`[broker] type = "redis"`): several Herald nodes share one Redis, and a
//! publication on any node reaches subscribers on every node, each channel in one order.
//!
//! - **Sequencing.** One Lua script per publication assigns the channel's next offset (and its
//!   epoch, the first time) in Redis and PUBLISHes the publication on the channel's Redis
//!   channel, atomically: Redis delivers a channel's messages to every subscriber connection
//!   in that order, so every node sees the offsets in order, whichever node published.
//! - **Following.** Each node keeps one pub/sub connection ([`follow`]) subscribed to the
//!   channels that have local subscribers only: the registry tells it when a channel gains its
//!   first or loses its last local subscriber ([`Interest`]), through an ordered queue. A
//!   subscribe request is answered once its channels are followed ([`Broker::ready`]).
//! - **Delivery.** Each message is handed to the local registry's `deliver_at`, which fans it
//!   out (and keeps it in the channel's local history).
//!
//! - **History.** The same script keeps the channel's last `history_size` publications in a
//!   Redis list. Before a recovery the node follows the channel and completes its local history
//!   from that list ([`Broker::prepare`]), so a client recovers on any node.
//!
//! Keys: `<prefix>:ch:<channel>` (hash: `epoch`, `offset`; expires a day after the channel's
//! last publication, or its history's time to live if longer), `<prefix>:hist:<channel>` (list
//! of `offset\ntime_ms\nenvelope`), `<prefix>:presence:<channel>` (hash: client → record),
//! `<prefix>:nodes` (hash: node → report), and the Redis channels `<prefix>:pub:<channel>`,
//! `<prefix>:ctl` (control messages to every node) and `<prefix>:node:<name>` (answers to one
//! node). This module is also the cluster's [`ControlPlane`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::broker::{BoxFuture, Broker, Interest, Publish, Published};
use herald_core::history::Entry;
use herald_core::hub::Registry;
use herald_core::{ChannelName, ClientId, HeraldError, Message};
use redis::aio::ConnectionManager;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use super::control::{receive, tell_subscribers_to_recover};
use super::wire::{Envelope, PresenceRecord};
use super::{ControlPlane, Report, redacted, unavailable};
use crate::config::BrokerConfig;
use crate::server::AppState;

/// Seconds a channel's position is kept in Redis after its last publication.
const POSITION_TTL_SECS: u64 = 86_400;
/// Longest wait between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// KEYS: position hash, pub/sub channel, history list. ARGV: a new epoch (used the first
/// time), the envelope, the position's TTL, `history_size`, `history_ttl_secs`, `time_ms`.
const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[3])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('RPUSH', KEYS[3], offset .. '\n' .. ARGV[6] .. '\n' .. ARGV[2])
  redis.call('LTRIM', KEYS[3], -size, -1)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
local nodes = redis.call('PUBLISH', KEYS[2], offset .. '\n' .. epoch .. '\n' .. ARGV[2])
return {offset, epoch, nodes}
"#;

/// A channel's position as Redis keeps it (`None` before its first publication).
type Position = (Option<String>, Option<u64>);

enum Command {
    Follow(ChannelName),
    Unfollow(ChannelName),
    /// Answered once every command before it is done.
    Flush(oneshot::Sender<()>),
}

pub struct RedisBroker {
    client: redis::Client,
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by [`follow`] when it starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    presence_tx: mpsc::UnboundedSender<PresenceChange>,
    /// Taken by [`presence_writer`] when it starts.
    presence_rx: Mutex<Option<mpsc::UnboundedReceiver<PresenceChange>>>,
    /// This node's name (known once the listener is bound).
    node: std::sync::OnceLock<String>,
    /// The name and a random id of this start: what presence entries are tagged with.
    instance: std::sync::OnceLock<String>,
    presence_ttl: Duration,
    /// True once the pub/sub connection listens to the control channels (a node hears the
    /// cluster before it serves).
    hearing: watch::Sender<bool>,
}

/// A local subscriber of a channel with presence came or went.
struct PresenceChange {
    channel: ChannelName,
    client: ClientId,
    user: Option<String>,
    joined: bool,
    /// Tell the other nodes' subscribers (`join_leave`).
    notify: bool,
}

impl RedisBroker {
    /// Connects to `[broker] url`; fails (naming the key) when Redis does not answer within
    /// `timeout_ms`.
    pub async fn connect(config: &BrokerConfig) -> anyhow::Result<Arc<RedisBroker>> {
        let shown = redacted(&config.url.0);
        let client = redis::Client::open(config.url.0.as_str())
            .map_err(|e| anyhow::anyhow!("broker.url: {shown} is not a Redis URL: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = tokio::time::timeout(
            timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("broker.url: no answer from Redis at {shown} within {timeout:?}")
        })?
        .map_err(|e| anyhow::anyhow!("broker.url: cannot reach Redis at {shown}: {e}"))?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(RedisBroker {
            client,
            conn,
            script: redis::Script::new(PUBLISH_SCRIPT),
            prefix: config.prefix.clone(),
            timeout,
            commands,
            inbox: Mutex::new(Some(inbox)),
            presence_tx,
            presence_rx: Mutex::new(Some(presence_rx)),
            node: std::sync::OnceLock::new(),
            instance: std::sync::OnceLock::new(),
            presence_ttl: Duration::from_secs(config.presence_ttl_secs),
            hearing: watch::channel(false).0,
        }))
    }

    /// What the registry tells of channels gaining or losing local subscribers.
    pub fn interest(&self) -> Arc<dyn Interest> {
        Arc::new(Interested {
            follow: self.commands.clone(),
            presence: self.presence_tx.clone(),
        })
    }

    /// Names this node (once the listener is bound).
    pub fn set_node(&self, name: &str) {
        let _ = self.node.set(name.to_string());
        let boot = &herald_core::secret::random_secret()[..8];
        let _ = self.instance.set(format!("{name}#{boot}"));
    }

    /// Resolves once the node listens to the control channels (at most `timeout_ms`).
    pub async fn hearing(&self) -> bool {
        let mut rx = self.hearing.subscribe();
        matches!(
            tokio::time::timeout(self.timeout, rx.wait_for(|h| *h)).await,
            Ok(Ok(_))
        )
    }

    fn control_topic(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    fn answer_topic(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The store keeping bans and API channels in Redis besides `local` (after `set_node`).
    pub fn shared_store(&self, local: Arc<dyn herald_core::Store>) -> super::shared::SharedStore {
        let node = self.node.get().map_or("", String::as_str);
        super::shared::SharedStore::new(
            local,
            self.client.clone(),
            self.timeout,
            &self.prefix,
            node,
        )
    }

    async fn publish_to(&self, topic: String, json: String) -> Result<(), HeraldError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            self.timeout,
            redis::cmd("PUBLISH")
                .arg(topic)
                .arg(json)
                .query_async::<u64>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Every node that reported within the presence time to live (this one once it has
    /// reported); older reports (a node that died) are deleted.
    async fn live_nodes(&self) -> Result<Vec<(String, Report)>, HeraldError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = tokio::time::timeout(
            self.timeout,
            redis::cmd("HGETALL")
                .arg(self.nodes_key())
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))?
        .map_err(unavailable)?;
        let now = herald_core::client::now_ms();
        let mut live = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<Report>(&json) {
                Ok(r) if now.saturating_sub(r.at_ms) <= self.presence_ttl.as_millis() as u64 => {
                    live.push((name, r));
                }
                _ => {
                    let _: Result<(), _> = redis::cmd("HDEL")
                        .arg(self.nodes_key())
                        .arg(&name)
                        .query_async(&mut conn)
                        .await;
                }
            }
        }
        // This node before its first report.
        if let (Some(me), Some(instance)) = (self.node.get(), self.instance.get())
            && !live.iter().any(|(name, _)| name == me)
        {
            live.push((
                me.clone(),
                Report {
                    at_ms: now,
                    instance: instance.clone(),
                    stats: herald_core::stats::StatsSnapshot::default(),
                    listening: 0,
                },
            ));
        }
        Ok(live)
    }

    fn presence_key(&self, channel: &ChannelName) -> String {
        format!("{}:presence:{channel}", self.prefix)
    }

    async fn presence_now(
        &self,
        channel: &ChannelName,
    ) -> Result<Option<Vec<herald_core::broker::Present>>, HeraldError> {
        let mut conn = self.conn.clone();
        let live: Vec<String> = self
            .live_nodes()
            .await?
            .into_iter()
            .map(|(_, report)| report.instance)
            .collect();
        let key = self.presence_key(channel);
        let entries: Vec<(String, String)> = tokio::time::timeout(
            self.timeout,
            redis::cmd("HGETALL").arg(&key).query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))?
        .map_err(unavailable)?;
        let mut present = Vec::new();
        for (field, json) in entries {
            let record = serde_json::from_str::<PresenceRecord>(&json).ok();
            match record.filter(|r| live.contains(&r.node)) {
                Some(r) => {
                    if let Ok(id) = ClientId::parse(&r.client) {
                        present.push((id, r.user));
                    }
                }
                None => {
                    // A node that died (or a bad entry): forget it, so no ghost remains.
                    let _: Result<(), _> = redis::cmd("HDEL")
                        .arg(&key)
                        .arg(field)
                        .query_async(&mut conn)
                        .await;
                }
            }
        }
        Ok(Some(present))
    }

    fn position_key(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }

    fn topic(&self, channel: &ChannelName) -> String {
        format!("{}:pub:{channel}", self.prefix)
    }

    fn history_key(&self, channel: &ChannelName) -> String {
        format!("{}:hist:{channel}", self.prefix)
    }

    /// Completes the local history of `channels` from Redis (after they are followed).
    async fn prepare_now(
        &self,
        local: &Registry,
        channels: &[ChannelName],
    ) -> Result<(), HeraldError> {
        self.ready(channels).await?;
        for channel in channels {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(self.position_key(channel))
                .arg("epoch")
                .arg("offset")
                .lrange(self.history_key(channel), 0, -1);
            let answer = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await;
            let ((epoch, offset), kept): (Position, Vec<Vec<u8>>) = match answer {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => {
                    return Err(unavailable(format!("no answer within {:?}", self.timeout)));
                }
            };
            let Some(epoch) = epoch else { continue };
            let entries = kept.iter().filter_map(|raw| kept_entry(raw)).collect();
            local.backfill(channel, &epoch, offset.unwrap_or(0), entries);
        }
        Ok(())
    }

    async fn publish_now(
        &self,
        local: &Registry,
        publish: Publish,
    ) -> Result<Published, HeraldError> {
        let data = std::str::from_utf8(&publish.data)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            .ok_or_else(|| HeraldError::bad_request("data must be JSON"))?;
        let envelope = serde_json::to_string(&Envelope {
            from: publish.from.map(|c| c.to_string()),
            to: publish
                .to
                .map(|to| to.iter().map(ToString::to_string).collect()),
            data,
        })
        .map_err(|e| HeraldError::internal(e.to_string()))?;
        let epoch = herald_core::secret::random_secret();
        // The channel's history options: its own where this node has it, else its namespace's.
        let (size, ttl) = match local.lookup(&publish.channel) {
            Some(c) => c.view(|v| (v.options.history_size, v.options.history_ttl_secs)),
            None => publish
                .create
                .as_ref()
                .map_or((0, 1), |o| (o.history_size, o.history_ttl_secs)),
        };
        let mut conn = self.conn.clone();
        let mut call = self.script.prepare_invoke();
        call.key(self.position_key(&publish.channel))
            .key(self.topic(&publish.channel))
            .key(self.history_key(&publish.channel))
            .arg(&epoch[..8])
            .arg(envelope)
            .arg(POSITION_TTL_SECS.max(u64::from(ttl)))
            .arg(size)
            .arg(ttl)
            .arg(herald_core::client::now_ms());
        let answer = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        let (offset, epoch, nodes): (u64, String, u64) = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable(format!("no answer within {:?}", self.timeout))),
        };
        Ok(Published {
            offset,
            epoch,
            delivered: nodes,
        })
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn is_clustered(&self) -> bool {
        true
    }

    fn publish<'a>(
        &'a self,
        local: &'a Registry,
        publish: Publish,
    ) -> BoxFuture<'a, Result<Published, HeraldError>> {
        Box::pin(self.publish_now(local, publish))
    }

    fn prepare<'a>(
        &'a self,
        local: &'a Registry,
        channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<(), HeraldError>> {
        Box::pin(self.prepare_now(local, channels))
    }

    fn presence<'a>(
        &'a self,
        _local: &'a Registry,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Option<Vec<herald_core::broker::Present>>, HeraldError>> {
        Box::pin(self.presence_now(channel))
    }

    fn ready<'a>(&'a self, _channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), HeraldError>> {
        Box::pin(async move {
            let (done, answered) = oneshot::channel();
            self.commands
                .send(Command::Flush(done))
                .map_err(|_| unavailable("the node is not following the broker"))?;
            match tokio::time::timeout(self.timeout, answered).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(unavailable(format!(
                    "subscribing on the backplane took longer than {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

struct Interested {
    follow: mpsc::UnboundedSender<Command>,
    presence: mpsc::UnboundedSender<PresenceChange>,
}

impl Interest for Interested {
    fn occupied(&self, channel: &ChannelName) {
        let _ = self.follow.send(Command::Follow(channel.clone()));
    }

    fn vacated(&self, channel: &ChannelName) {
        let _ = self.follow.send(Command::Unfollow(channel.clone()));
    }

    fn joined(&self, channel: &ChannelName, client: ClientId, user: Option<&str>, notify: bool) {
        let _ = self.presence.send(PresenceChange {
            channel: channel.clone(),
            client,
            user: user.map(str::to_string),
            joined: true,
            notify,
        });
    }

    fn left(&self, channel: &ChannelName, client: ClientId, user: Option<&str>, notify: bool) {
        let _ = self.presence.send(PresenceChange {
            channel: channel.clone(),
            client,
            user: user.map(str::to_string),
            joined: false,
            notify,
        });
    }
}

impl ControlPlane for RedisBroker {
    fn broadcast(&self, json: String) -> BoxFuture<'_, Result<(), HeraldError>> {
        Box::pin(self.publish_to(self.control_topic(), json))
    }

    fn answer(&self, node: String, json: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.publish_to(self.answer_topic(&node), json).await;
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<(String, Report)>, HeraldError>> {
        Box::pin(self.live_nodes())
    }
}

/// Writes this node's presence changes to Redis in order (batched), and publishes join/leave
/// notices for the other nodes, until `shutdown`.
pub async fn presence_writer(broker: Arc<RedisBroker>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = broker.presence_rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let node = broker.instance.get().cloned().unwrap_or_default();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            n = rx.recv_many(&mut batch, 1024) => if n == 0 { return },
        }
        let mut pipe = redis::pipe();
        for change in batch.drain(..) {
            let key = broker.presence_key(&change.channel);
            let record = PresenceRecord {
                client: change.client.to_string(),
                user: change.user,
                node: node.clone(),
            };
            let Ok(json) = serde_json::to_string(&record) else {
                continue;
            };
            if change.joined {
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(&record.client)
                    .arg(&json)
                    .ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(POSITION_TTL_SECS).ignore();
            } else {
                pipe.cmd("HDEL").arg(&key).arg(&record.client).ignore();
            }
            if change.notify {
                let kind = if change.joined { "join" } else { "leave" };
                pipe.cmd("PUBLISH")
                    .arg(broker.topic(&change.channel))
                    .arg(format!("{kind}\n{json}"))
                    .ignore();
            }
        }
        let mut conn = broker.conn.clone();
        match tokio::time::timeout(broker.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("broker: presence changes not written (Redis unavailable)"),
        }
    }
}

/// The node's pub/sub connection: follows the channels with local subscribers and delivers
/// what arrives, reconnecting with backoff (and following again) until `shutdown`.
pub async fn follow(
    state: Arc<AppState>,
    broker: Arc<RedisBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut inbox) = broker.inbox.lock().ok().and_then(|mut i| i.take()) else {
        return;
    };
    let registry = state.hub.registry();
    let topic_prefix = format!("{}:pub:", broker.prefix);
    let me = state.node_name.clone();
    let instance = broker.instance.get().cloned().unwrap_or_default();
    let control_topic = broker.control_topic();
    let answer_topic = broker.answer_topic(&me);
    let mut backoff = Duration::from_millis(100);
    let mut reconnecting = false;
    loop {
        let connected = tokio::select! {
            c = broker.client.get_async_pubsub() => c,
            _ = shutdown.changed() => return,
        };
        let (mut sink, mut stream) = match connected {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::warn!(error = %e, "broker: cannot open the pub/sub connection; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if reconnecting {
            // Publications made while the connection was down never reached this node: its
            // subscribers are told, so they resubscribe with recovery instead of silently
            // missing them.
            tell_subscribers_to_recover(&state);
        }
        reconnecting = true;
        backoff = Duration::from_millis(100);
        let mut ok = sink.subscribe(broker.control_topic()).await.is_ok()
            && sink.subscribe(broker.answer_topic(&me)).await.is_ok();
        broker.hearing.send_replace(ok);
        for channel in registry.occupied_channels() {
            if sink.subscribe(broker.topic(&channel)).await.is_err() {
                ok = false;
                break;
            }
        }
        while ok {
            tokio::select! {
                _ = shutdown.changed() => return,
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Follow(c)) => ok = sink.subscribe(broker.topic(&c)).await.is_ok(),
                    Some(Command::Unfollow(c)) => ok = sink.unsubscribe(broker.topic(&c)).await.is_ok(),
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                    }
                },
                message = stream.next() => match message {
                    Some(m) if m.get_channel_name() == control_topic => {
                        receive(&state, m.get_payload_bytes()).await;
                    }
                    Some(m) if m.get_channel_name() == answer_topic => {
                        if let Some(cluster) = &state.cluster {
                            cluster.take_answer(m.get_payload_bytes());
                        }
                    }
                    Some(m) => deliver(registry, &instance, &topic_prefix, m.get_channel_name(), m.get_payload_bytes()),
                    None => ok = false,
                },
            }
        }
        tracing::warn!("broker: lost the pub/sub connection; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}

/// A kept publication as the script stores it: `offset\ntime_ms\nenvelope`.
fn kept_entry(raw: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(raw).ok()?;
    let (offset, rest) = text.split_once('\n')?;
    let (time_ms, envelope) = rest.split_once('\n')?;
    let (from, to, data) = Envelope::parse(envelope)?;
    Some(Entry {
        offset: offset.parse().ok()?,
        from,
        data,
        time_ms: time_ms.parse().ok()?,
        to,
    })
}

/// Hands one published message to the local fan-out; malformed ones are logged and dropped.
/// `me`: this node's instance (its own join/leave notices were given when they happened).
fn deliver(registry: &Registry, me: &str, topic_prefix: &str, topic: &str, payload: &[u8]) {
    // A join or leave notice of another node's subscriber.
    if let Some(channel) = topic
        .strip_prefix(topic_prefix)
        .and_then(|c| ChannelName::parse(c).ok())
        && let Ok(text) = std::str::from_utf8(payload)
        && let Some((kind @ ("join" | "leave"), json)) = text.split_once('\n')
    {
        // This node's own notices were given when they happened.
        if let Ok(r) = serde_json::from_str::<PresenceRecord>(json)
            && r.node != me
            && let Ok(client) = ClientId::parse(&r.client)
        {
            registry.announce_remote(&channel, client, r.user.as_deref(), kind == "join");
        }
        return;
    }
    let parsed = (|| {
        let channel = ChannelName::parse(topic.strip_prefix(topic_prefix)?).ok()?;
        let text = std::str::from_utf8(payload).ok()?;
        let (offset, rest) = text.split_once('\n')?;
        let (epoch, envelope) = rest.split_once('\n')?;
        let (from, to, data) = Envelope::parse(envelope)?;
        let message = Message {
            channel,
            offset: offset.parse().ok()?,
            epoch: Arc::from(epoch),
            from,
            data,
        };
        Some((message, to))
    })();
    match parsed {
        Some((message, to)) => {
            registry.deliver_at(&message, to.as_deref());
        }
        None => tracing::warn!(topic, "broker: malformed message dropped"),
    }
}

/// Reports this node's figures to the cluster every third of `presence_ttl_secs`, and takes
/// them back at shutdown, so other nodes list it while it lives and forget it within the time
/// to live after it dies.
pub async fn heartbeat(
    state: Arc<AppState>,
    broker: Arc<RedisBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(state.config.broker.presence_ttl_secs) / 3;
    let key = broker.nodes_key();
    loop {
        let report = Report {
            at_ms: herald_core::client::now_ms(),
            instance: broker.instance.get().cloned().unwrap_or_default(),
            stats: state.hub.stats_snapshot(),
            listening: state.hub.events().listeners_mask().bits(),
        };
        if let Ok(json) = serde_json::to_string(&report) {
            let mut conn = broker.conn.clone();
            let sent = tokio::time::timeout(
                broker.timeout,
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&state.node_name)
                    .arg(json)
                    .query_async::<()>(&mut conn),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!("broker: could not report this node to the cluster");
            }
        }
        // What the other nodes' admin connections listen to, for the event relay.
        if let (Some(cluster), Ok(nodes)) = (&state.cluster, broker.live_nodes().await) {
            cluster.relay.reported(&state.hub, &state.node_name, &nodes);
        }
        let asked = async {
            match &state.cluster {
                Some(cluster) => cluster.report_now.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = asked => {}
            _ = shutdown.changed() => {
                let mut conn = broker.conn.clone();
                let _ = tokio::time::timeout(
                    broker.timeout,
                    redis::cmd("HDEL").arg(&key).arg(&state.node_name).query_async::<()>(&mut conn),
                )
                .await;
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}
