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
//!   from that list ([`Broker::prepare`]), so a client recovers on any node. The list is read
//!   by a script that also publishes a *fence* on the channel, and the local history is
//!   completed only when the fence comes back on the pub/sub connection: every publication
//!   read from the list that this node's subscribers are owed has then been delivered to them
//!   (without the fence the node took a publication it read for one it had delivered, and its
//!   subscribers never got it).
//!
//! Keys ([`topology::Keys`]; in a Redis Cluster the channel is a hash tag instead,
//! `<prefix>:{<channel>}:ch`, ...): `<prefix>:ch:<channel>` (hash: `epoch`, `offset`; expires
//! a day after the channel's last publication, or its history's time to live if longer),
//! `<prefix>:hist:<channel>` (list of `offset\ntime_ms\nenvelope`),
//! `<prefix>:presence:<channel>` (hash: client → record), `<prefix>:nodes` (hash: node →
//! report), and the Redis channels `<prefix>:pub:<channel>` (sharded in a cluster),
//! `<prefix>:ctl` (control messages to every node) and `<prefix>:node:<name>` (answers to one
//! node). This module is also the cluster's [`ControlPlane`].
//!
//! - [`topology`]: how the node reaches Redis (one server, Sentinel, Cluster), following
//!   failovers, and the key names.
//! - [`feed`]: the pub/sub connection, whatever the topology.

pub mod feed;
pub mod topology;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::broker::{BoxFuture, Broker, Interest, Publish, Published};
use herald_core::history::Entry;
use herald_core::hub::Registry;
use herald_core::{ChannelName, ClientId, HeraldError, Message};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use self::feed::Incoming;
use self::topology::{Keys, Link, Topology};
use super::carry::{receive, tell_channel_subscribers_to_recover, tell_subscribers_to_recover};
use super::wire::{Envelope, PresenceRecord};
use super::{ControlPlane, Report, unavailable};
use crate::config::BrokerConfig;
use crate::state::AppState;

/// Seconds a channel's position is kept in Redis after its last publication.
const POSITION_TTL_SECS: u64 = 86_400;
/// Longest wait between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// KEYS: position hash, pub/sub channel, history list (one slot in a cluster: the channel's
/// hash tag). ARGV: a new epoch (used the first time), the envelope, the position's TTL,
/// `history_size`, `history_ttl_secs`, `time_ms`, and the publishing command (`PUBLISH`, or
/// `SPUBLISH` in a cluster).
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
local nodes = redis.call(ARGV[7], KEYS[2], offset .. '\n' .. epoch .. '\n' .. ARGV[2])
return {offset, epoch, nodes}
"#;

/// KEYS: position hash, pub/sub channel, history list (one slot in a cluster). ARGV: the
/// fence message and the publishing command. Reads the channel's epoch, offset and kept
/// publications and, if it has a position, publishes the fence on its pub/sub channel in the
/// same step: whatever was published before the read reaches a follower before the fence.
/// Returns `{epoch, offset, kept}` (`''` as the epoch: no position, nothing published).
const READ_SCRIPT: &str = r#"
local pos = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not pos[1] then
  return {'', 0, {}}
end
local kept = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call(ARGV[2], KEYS[2], ARGV[1])
return {pos[1], tonumber(pos[2] or '0'), kept}
"#;

/// The first line of a fence message (`fence\n<instance>\n<number>`).
const FENCE: &str = "fence";

enum Command {
    Follow(ChannelName),
    Unfollow(ChannelName),
    /// Answered once every command before it is done.
    Flush(oneshot::Sender<()>),
}

pub struct RedisBroker {
    topology: Arc<Topology>,
    conn: Link,
    keys: Keys,
    script: redis::Script,
    read_script: redis::Script,
    timeout: Duration,
    /// Fences this node published and waits for ([`RedisBroker::read_behind_fence`]).
    fences: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_fence: std::sync::atomic::AtomicU64,
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
    /// Connects to Redis as `[broker]` says (`url`, `sentinel_nodes` or `cluster_nodes`);
    /// fails (naming the key) when Redis does not answer within `timeout_ms`.
    pub async fn connect(config: &BrokerConfig) -> anyhow::Result<Arc<RedisBroker>> {
        let topology = Arc::new(Topology::from_config(config)?);
        let timeout = topology.timeout();
        let conn = topology.link().await.map_err(|e| {
            if e.is_timeout() {
                anyhow::anyhow!(
                    "{}: no answer from {} within {timeout:?}",
                    topology.key(),
                    topology.shown()
                )
            } else {
                anyhow::anyhow!("{}: cannot reach {}: {e}", topology.key(), topology.shown())
            }
        })?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(RedisBroker {
            keys: Keys::new(&config.prefix, topology.sharded()),
            topology,
            conn,
            script: redis::Script::new(PUBLISH_SCRIPT),
            read_script: redis::Script::new(READ_SCRIPT),
            timeout,
            fences: Mutex::new(HashMap::new()),
            next_fence: std::sync::atomic::AtomicU64::new(1),
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

    /// The store keeping bans and API channels in Redis besides `local` (after `set_node`).
    pub fn shared_store(&self, local: Arc<dyn herald_core::Store>) -> super::shared::SharedStore {
        let node = self.node.get().map_or("", String::as_str);
        super::shared::SharedStore::new(local, self.topology.clone(), self.keys.clone(), node)
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
    /// reported); older reports (a node that died) are deleted, and so are reports from
    /// further in the future than that (a clock far ahead, or a forged entry), which would
    /// otherwise count as live for good.
    async fn live_nodes(&self) -> Result<Vec<(String, Report)>, HeraldError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = tokio::time::timeout(
            self.timeout,
            redis::cmd("HGETALL")
                .arg(self.keys.nodes())
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))?
        .map_err(unavailable)?;
        let now = herald_core::client::now_ms();
        let mut live = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<Report>(&json) {
                Ok(r) if super::fresh(r.at_ms, now, self.presence_ttl) => live.push((name, r)),
                report => {
                    if let Ok(r) = report
                        && r.at_ms > now
                    {
                        tracing::warn!(node = %name, ahead_ms = r.at_ms - now,
                            "cluster: a node's report is from the future; dropped (check the clocks)");
                    }
                    let _: Result<(), _> = redis::cmd("HDEL")
                        .arg(self.keys.nodes())
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
        let key = self.keys.presence(channel);
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

    /// Completes the local history of `channels` from Redis (after they are followed).
    async fn prepare_now(
        &self,
        local: &Registry,
        channels: &[ChannelName],
    ) -> Result<(), HeraldError> {
        self.ready(channels).await?;
        let reads = channels.iter().map(|c| self.read_behind_fence(c));
        let read = futures_util::future::join_all(reads).await;
        for (channel, read) in channels.iter().zip(read) {
            if let Some((epoch, offset, entries)) = read? {
                local.backfill(channel, &epoch, offset, entries);
            }
        }
        Ok(())
    }

    /// A followed channel's position and kept publications (`None`: never published), once
    /// the pub/sub connection has delivered every publication made before they were read.
    async fn read_behind_fence(
        &self,
        channel: &ChannelName,
    ) -> Result<Option<(String, u64, Vec<Entry>)>, HeraldError> {
        let late = || unavailable(format!("no answer within {:?}", self.timeout));
        let id = self
            .next_fence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (passed, arrived) = oneshot::channel();
        let _waiting = Waiting::new(&self.fences, id, passed);
        let instance = self.instance.get().map_or("", String::as_str);
        let mut conn = self.conn.clone();
        let mut call = self.read_script.prepare_invoke();
        call.key(self.keys.position(channel))
            .key(self.keys.topic(channel))
            .key(self.keys.history(channel))
            .arg(format!("{FENCE}\n{instance}\n{id}"))
            .arg(self.keys.publish_command());
        let started = tokio::time::Instant::now();
        let (epoch, offset, kept): (String, u64, Vec<Vec<u8>>) =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(late()),
            };
        if epoch.is_empty() {
            return Ok(None);
        }
        match tokio::time::timeout_at(started + self.timeout, arrived).await {
            Ok(Ok(())) => {}
            _ => return Err(late()),
        }
        let entries = kept.iter().filter_map(|raw| kept_entry(raw)).collect();
        Ok(Some((epoch, offset, entries)))
    }

    /// A fence of this node's came back (from the pub/sub connection).
    fn fence_arrived(&self, id: u64) {
        if let Some(passed) = self.fences.lock().ok().and_then(|mut f| f.remove(&id)) {
            let _ = passed.send(());
        }
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
        call.key(self.keys.position(&publish.channel))
            .key(self.keys.topic(&publish.channel))
            .key(self.keys.history(&publish.channel))
            .arg(&epoch[..8])
            .arg(envelope)
            .arg(POSITION_TTL_SECS.max(u64::from(ttl)))
            .arg(size)
            .arg(ttl)
            .arg(herald_core::client::now_ms())
            .arg(self.keys.publish_command());
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
        Box::pin(self.publish_to(self.keys.control(), json))
    }

    fn answer(&self, node: String, json: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.publish_to(self.keys.answers(&node), json).await;
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<(String, Report)>, HeraldError>> {
        Box::pin(self.live_nodes())
    }
}

/// Writes this node's presence changes to Redis in order (batched), and publishes join/leave
/// notices for the other nodes, until `shutdown`. In a cluster each channel's changes go in a
/// pipeline of their own (its keys live in one slot); the channels' pipelines run together.
pub async fn presence_writer(broker: Arc<RedisBroker>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = broker.presence_rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let node = broker.instance.get().cloned().unwrap_or_default();
    let keys = &broker.keys;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            n = rx.recv_many(&mut batch, 1024) => if n == 0 { return },
        }
        // One pipeline, or one per channel in a cluster (in the order of the changes).
        let mut pipes: Vec<(Option<ChannelName>, redis::Pipeline)> = Vec::new();
        for change in batch.drain(..) {
            let group = keys.sharded().then(|| change.channel.clone());
            let pipe = match pipes.iter().position(|(g, _)| *g == group) {
                Some(i) => &mut pipes[i].1,
                None => {
                    pipes.push((group, redis::pipe()));
                    &mut pipes.last_mut().expect("just pushed").1
                }
            };
            let key = keys.presence(&change.channel);
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
                pipe.cmd(keys.publish_command())
                    .arg(keys.topic(&change.channel))
                    .arg(format!("{kind}\n{json}"))
                    .ignore();
            }
        }
        let writes = pipes.iter().map(|(_, pipe)| {
            let mut conn = broker.conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        let all = futures_util::future::join_all(writes);
        match tokio::time::timeout(broker.timeout, all).await {
            Ok(results) if results.iter().all(Result::is_ok) => {}
            _ => tracing::warn!("broker: presence changes not written (Redis unavailable)"),
        }
    }
}

/// The node's pub/sub connection ([`feed`]): follows the channels with local subscribers and
/// delivers what arrives, reconnecting with backoff (and following again) until `shutdown`.
pub async fn follow(
    state: Arc<AppState>,
    broker: Arc<RedisBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut inbox) = broker.inbox.lock().ok().and_then(|mut i| i.take()) else {
        return;
    };
    let registry = state.hub.registry();
    let keys = &broker.keys;
    let me = state.node_name.clone();
    let instance = broker.instance.get().cloned().unwrap_or_default();
    let control_topic = keys.control();
    let answer_topic = keys.answers(&me);
    let mut backoff = Duration::from_millis(100);
    let mut reconnecting = false;
    loop {
        let connected = tokio::select! {
            c = broker.topology.feed() => c,
            _ = shutdown.changed() => return,
        };
        let mut feed = match connected {
            Ok(feed) => feed,
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
        let mut ok =
            feed.listen(&control_topic).await.is_ok() && feed.listen(&answer_topic).await.is_ok();
        broker.hearing.send_replace(ok);
        for channel in registry.occupied_channels() {
            if feed.follow(&keys.topic(&channel)).await.is_err() {
                ok = false;
                break;
            }
        }
        // Sharded subscriptions this node ended itself, whose confirmations are still to come
        // (a cluster reports every end of a sharded subscription as a push).
        let mut ending: HashMap<String, u32> = HashMap::new();
        while ok {
            tokio::select! {
                _ = shutdown.changed() => return,
                command = inbox.recv() => match command {
                    None => return,
                    Some(Command::Follow(c)) => ok = feed.follow(&keys.topic(&c)).await.is_ok(),
                    Some(Command::Unfollow(c)) => {
                        let topic = keys.topic(&c);
                        ok = feed.unfollow(&topic).await.is_ok();
                        if keys.sharded() {
                            *ending.entry(topic).or_default() += 1;
                        }
                    }
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                    }
                },
                incoming = feed.next() => match incoming {
                    Incoming::Message(m) if m.get_channel_name() == control_topic => {
                        receive(&state, m.get_payload_bytes()).await;
                    }
                    Incoming::Message(m) if m.get_channel_name() == answer_topic => {
                        if let Some(cluster) = &state.cluster {
                            cluster.take_answer(m.get_payload_bytes());
                        }
                    }
                    Incoming::Message(m) => deliver(registry, &broker, &instance, m.get_channel_name(), m.get_payload_bytes()),
                    Incoming::Interrupted => {
                        tracing::warn!("broker: a Redis Cluster shard's pub/sub connection was re-established");
                        tell_subscribers_to_recover(&state);
                    }
                    Incoming::Dropped(topic) => {
                        if let Some(n) = ending.get_mut(&topic) {
                            *n -= 1;
                            if *n == 0 {
                                ending.remove(&topic);
                            }
                        } else if let Some(channel) = keys.channel_of(&topic).and_then(|c| ChannelName::parse(c).ok())
                            && registry.lookup(&channel).is_some()
                        {
                            // The channel's slot moved to another shard: follow it there.
                            tracing::warn!(%channel, "broker: Redis ended a sharded subscription; following again");
                            ok = feed.follow(&topic).await.is_ok();
                            tell_channel_subscribers_to_recover(&state, &channel);
                        }
                    }
                    Incoming::Lost => ok = false,
                },
            }
        }
        tracing::warn!("broker: lost the pub/sub connection; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}

/// A fence being waited for; forgotten when the wait ends, however it ends.
struct Waiting<'a> {
    fences: &'a Mutex<HashMap<u64, oneshot::Sender<()>>>,
    id: u64,
}

impl<'a> Waiting<'a> {
    fn new(
        fences: &'a Mutex<HashMap<u64, oneshot::Sender<()>>>,
        id: u64,
        passed: oneshot::Sender<()>,
    ) -> Self {
        if let Ok(mut f) = fences.lock() {
            f.insert(id, passed);
        }
        Waiting { fences, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.fences.lock() {
            f.remove(&self.id);
        }
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
/// `me`: this node's instance (its own join/leave notices were given when they happened, its
/// fences are waited for; other nodes' fences mean nothing here).
fn deliver(registry: &Registry, broker: &RedisBroker, me: &str, topic: &str, payload: &[u8]) {
    let keys = &broker.keys;
    if let Some(fence) = payload
        .strip_prefix(FENCE.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"\n"))
    {
        if let Ok(fence) = std::str::from_utf8(fence)
            && let Some((instance, id)) = fence.rsplit_once('\n')
            && instance == me
            && let Ok(id) = id.parse()
        {
            broker.fence_arrived(id);
        }
        return;
    }
    // A join or leave notice of another node's subscriber.
    if let Some(channel) = keys
        .channel_of(topic)
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
        let channel = ChannelName::parse(keys.channel_of(topic)?).ok()?;
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
            // Stamped on arrival: the envelope does not carry the publishing node's clock.
            time_ms: herald_core::client::now_ms(),
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
    let key = broker.keys.nodes();
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
