//! The NATS broker (`[broker] type = "nats"`): several Herald nodes joined by core NATS
//! subjects. A publication on any node reaches subscribers on every node; NATS keeps no
//! history, so each node sequences what it receives itself.
//!
//! - **Publishing.** The publishing node sends the publication on the channel's subject and
//!   sequences it into its own channel (its own offset and epoch). NATS delivers one
//!   publisher's messages in order, so **a channel's order is guaranteed per publishing node**;
//!   publications of two nodes may interleave differently on different nodes.
//! - **Following.** Each node subscribes to the subjects of the channels that have local
//!   subscribers only ([`Interest`]), one NATS subscription each, through an ordered queue;
//!   a subscriber is answered once NATS has its subscription ([`Broker::ready`]: a marker
//!   published on the node's own connection after it has come back). A channel with
//!   history is followed `follow_linger_secs` longer after its last local subscriber left
//!   ([`super::linger`]), so a subscriber back within that time recovers there.
//! - **Delivery.** Each node sequences what arrives from other nodes into its own channel
//!   and history: offsets and epochs are per node, so a client recovers on the node it left
//!   and gets `recovered: false` on another (nothing is lost silently). Where the node may
//!   have missed publications (it follows a channel again, or its connection to NATS came
//!   back) the channel skips an offset ([`Registry::skip_offset`]), so a recovery across that
//!   time answers `recovered: false` too.
//! - **Presence** is asked of every live node when wanted (a control request), so a node
//!   that died has no entries to leave behind; join/leave notices travel on the channel's
//!   subject.
//! - **Nodes** publish reports on `<prefix>.nodes` every third of `presence_ttl_secs` (and
//!   once more when they see a node they did not know), so each node keeps the list itself.
//!
//! Subjects: `<prefix>.pub.<channel>` (the channel name with bytes outside `A-Za-z0-9_-:`
//! written `%XX`), `<prefix>.ctl`, `<prefix>.node.<name>`, `<prefix>.nodes`. This module is
//! also the cluster's [`ControlPlane`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::broker::{BoxFuture, Broker, Interest, Present, Publish, Published};
use herald_core::hub::Registry;
use herald_core::store::StoreError;
use herald_core::{ChannelName, ClientId, HeraldError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::carry::{receive, tell_subscribers_to_recover};
use super::control::Control;
use super::linger::Linger;
use super::wire::{Envelope, PresenceRecord};
use super::{Cluster, ControlPlane, Report, redacted, unavailable};
use crate::config::BrokerConfig;
use crate::state::AppState;

/// Most vacated channels a node keeps following at once (`follow_linger_secs`); beyond it
/// the oldest is let go.
const MAX_LINGERING: usize = 10_000;

enum Command {
    Follow(ChannelName),
    Unfollow(ChannelName),
    /// Answered once every command before it is done and NATS has the subscriptions.
    Flush(oneshot::Sender<bool>),
    /// A join or leave notice for a channel's subject, sent in order with the rest.
    Notice(String, Bytes),
}

/// A report on `<prefix>.nodes`; `report: None` says the node is leaving.
#[derive(Serialize, Deserialize)]
struct NodeReport {
    name: String,
    report: Option<Report>,
}

pub struct NatsBroker {
    client: async_nats::Client,
    prefix: String,
    timeout: Duration,
    presence_ttl: Duration,
    /// How long a vacated channel with history is still followed.
    follow_linger: Duration,
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by [`follow`] when it starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// NATS connection events, taken by [`follow`].
    events: Mutex<Option<mpsc::UnboundedReceiver<async_nats::Event>>>,
    node: OnceLock<String>,
    /// The node's name and a random id of this start.
    instance: OnceLock<String>,
    /// The other nodes as their reports said, and when each was heard (this process's clock).
    peers: Mutex<HashMap<String, (Report, Instant)>>,
    /// For presence requests to the other nodes.
    cluster: OnceLock<Weak<Cluster>>,
    /// True once the node listens to the control subjects.
    hearing: watch::Sender<bool>,
}

/// The channel's subject token: bytes outside `A-Za-z0-9_-:` as `%XX`, so dots, spaces and
/// wildcards in channel names never change a subject's meaning.
fn subject_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_-:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl NatsBroker {
    /// Connects to `[broker] url`; fails (naming the key) when NATS does not answer within
    /// `timeout_ms`.
    pub async fn connect(config: &BrokerConfig) -> anyhow::Result<Arc<NatsBroker>> {
        let shown = redacted(&config.url.0);
        let timeout = Duration::from_millis(config.timeout_ms);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * 2u64.pow(attempts.min(6) as u32)).min(MAX_BACKOFF)
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        let client = tokio::time::timeout(timeout, options.connect(config.url.0.as_str()))
            .await
            .map_err(|_| {
                anyhow::anyhow!("broker.url: no answer from NATS at {shown} within {timeout:?}")
            })?
            .map_err(|e| anyhow::anyhow!("broker.url: cannot reach NATS at {shown}: {e}"))?;
        let (commands, inbox) = mpsc::unbounded_channel();
        Ok(Arc::new(NatsBroker {
            client,
            prefix: config.prefix.clone(),
            timeout,
            presence_ttl: Duration::from_secs(config.presence_ttl_secs),
            follow_linger: Duration::from_secs(config.follow_linger_secs),
            commands,
            inbox: Mutex::new(Some(inbox)),
            events: Mutex::new(Some(events_rx)),
            node: OnceLock::new(),
            instance: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            cluster: OnceLock::new(),
            hearing: watch::channel(false).0,
        }))
    }

    /// Names this node (before it serves).
    pub fn set_node(&self, name: &str) {
        let _ = self.node.set(name.to_string());
        let boot = &herald_core::secret::random_secret()[..8];
        let _ = self.instance.set(format!("{name}#{boot}"));
    }

    /// The cluster whose control plane this is (for presence requests).
    pub fn set_cluster(&self, cluster: &Arc<Cluster>) {
        let _ = self.cluster.set(Arc::downgrade(cluster));
    }

    /// What the registry tells of channels gaining or losing local subscribers.
    pub fn interest(self: &Arc<Self>) -> Arc<dyn Interest> {
        Arc::new(Interested {
            broker: Arc::downgrade(self),
        })
    }

    /// Resolves once the node listens to the control subjects (at most `timeout_ms`).
    pub async fn hearing(&self) -> bool {
        let mut rx = self.hearing.subscribe();
        matches!(
            tokio::time::timeout(self.timeout, rx.wait_for(|h| *h)).await,
            Ok(Ok(_))
        )
    }

    fn topic(&self, channel: &ChannelName) -> String {
        format!("{}.pub.{}", self.prefix, subject_token(channel.as_str()))
    }

    fn control_subject(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    fn answer_subject(&self, node: &str) -> String {
        format!("{}.node.{}", self.prefix, subject_token(node))
    }

    fn nodes_subject(&self) -> String {
        format!("{}.nodes", self.prefix)
    }

    fn me(&self) -> &str {
        self.instance.get().map_or("", String::as_str)
    }

    /// Sends on a subject; refused at once while NATS is away (the client would only queue).
    async fn send(&self, subject: String, payload: Bytes) -> Result<(), HeraldError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(unavailable("not connected to NATS"));
        }
        match tokio::time::timeout(self.timeout, self.client.publish(subject, payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
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
                .as_ref()
                .map(|to| to.iter().map(ToString::to_string).collect()),
            data,
        })
        .map_err(|e| HeraldError::internal(e.to_string()))?;
        let payload = Bytes::from(format!("{}\n{envelope}", self.me()));
        self.send(self.topic(&publish.channel), payload).await?;
        // This node's own subscribers: sequenced here, as every other node does on receipt.
        Ok(local.publish_sequenced(&publish))
    }

    async fn presence_now(
        &self,
        local: &Registry,
        channel: &ChannelName,
    ) -> Result<Option<Vec<Present>>, HeraldError> {
        let mut present: Vec<Present> = local
            .lookup(channel)
            .map(|c| c.subscribers())
            .unwrap_or_default()
            .iter()
            .map(|c| (c.id, c.user().map(|u| u.to_string())))
            .collect();
        let Some(cluster) = self.cluster.get().and_then(Weak::upgrade) else {
            return Ok(Some(present));
        };
        let control = Control::Presence {
            channel: channel.to_string(),
        };
        for answer in cluster.ask(control).await? {
            let Some(value) = answer.value else { continue };
            let Ok(entries) = serde_json::from_value::<Vec<(String, Option<String>)>>(value) else {
                continue;
            };
            for (client, user) in entries {
                if let Ok(id) = ClientId::parse(&client) {
                    present.push((id, user));
                }
            }
        }
        Ok(Some(present))
    }

    /// The nodes heard from within the presence time to live, and this one.
    fn live_nodes(&self) -> Vec<(String, Report)> {
        let ttl = self.presence_ttl;
        let mut peers = self.peers.lock();
        peers.retain(|_, (_, heard)| heard.elapsed() <= ttl);
        let mut live: Vec<(String, Report)> = peers
            .iter()
            .map(|(name, (report, _))| (name.clone(), report.clone()))
            .collect();
        if let Some(me) = self.node.get() {
            live.push((
                me.clone(),
                Report {
                    at_ms: herald_core::client::now_ms(),
                    instance: self.me().to_string(),
                    ..Report::default()
                },
            ));
        }
        live
    }

    async fn report(&self, state: &AppState, leaving: bool) {
        let report = NodeReport {
            name: state.node_name.clone(),
            report: (!leaving).then(|| Report {
                at_ms: herald_core::client::now_ms(),
                instance: self.me().to_string(),
                stats: state.hub.stats_snapshot(),
                listening: state.hub.events().listeners_mask().bits(),
            }),
        };
        if let Ok(json) = serde_json::to_vec(&report)
            && self.send(self.nodes_subject(), json.into()).await.is_err()
        {
            tracing::warn!("broker: could not report this node to the cluster");
        }
    }
}

impl NatsBroker {
    /// The store keeping bans and API channels in a JetStream key-value bucket besides
    /// `local` (after `set_node`); see [`super::nats_shared`].
    pub async fn shared_store(
        &self,
        local: Arc<dyn herald_core::Store>,
    ) -> Result<super::nats_shared::NatsStore, StoreError> {
        let node = self.node.get().cloned().unwrap_or_default();
        super::nats_shared::NatsStore::open(
            local,
            self.client.clone(),
            &self.prefix,
            self.control_subject(),
            node,
            self.timeout,
        )
        .await
    }
}

/// Longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
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

    fn presence<'a>(
        &'a self,
        local: &'a Registry,
        channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Option<Vec<Present>>, HeraldError>> {
        Box::pin(self.presence_now(local, channel))
    }

    /// NATS keeps no history: a recovery only waits until the node follows the channels, so
    /// a hole where it did not (see the follow task) is in place before the replay.
    fn prepare<'a>(
        &'a self,
        _local: &'a Registry,
        channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<(), HeraldError>> {
        self.ready(channels)
    }

    fn ready<'a>(&'a self, _channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), HeraldError>> {
        Box::pin(async move {
            let (done, answered) = oneshot::channel();
            self.commands
                .send(Command::Flush(done))
                .map_err(|_| unavailable("the node is not following the broker"))?;
            match tokio::time::timeout(self.timeout, answered).await {
                Ok(Ok(true)) => Ok(()),
                _ => Err(unavailable(format!(
                    "subscribing on NATS took longer than {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

impl ControlPlane for NatsBroker {
    fn broadcast(&self, json: String) -> BoxFuture<'_, Result<(), HeraldError>> {
        Box::pin(self.send(self.control_subject(), json.into()))
    }

    fn answer(&self, node: String, json: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.send(self.answer_subject(&node), json.into()).await;
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<(String, Report)>, HeraldError>> {
        Box::pin(async move { Ok(self.live_nodes()) })
    }
}

struct Interested {
    broker: Weak<NatsBroker>,
}

impl Interested {
    fn notice(&self, channel: &ChannelName, client: ClientId, user: Option<&str>, kind: &str) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let record = PresenceRecord {
            client: client.to_string(),
            user: user.map(str::to_string),
            node: broker.me().to_string(),
        };
        let Ok(json) = serde_json::to_string(&record) else {
            return;
        };
        // Sent by the follow task, in order (this must not wait).
        let payload = Bytes::from(format!("{kind}\n{json}"));
        let _ = broker
            .commands
            .send(Command::Notice(broker.topic(channel), payload));
    }
}

impl Interest for Interested {
    fn occupied(&self, channel: &ChannelName) {
        if let Some(b) = self.broker.upgrade() {
            let _ = b.commands.send(Command::Follow(channel.clone()));
        }
    }

    fn vacated(&self, channel: &ChannelName) {
        if let Some(b) = self.broker.upgrade() {
            let _ = b.commands.send(Command::Unfollow(channel.clone()));
        }
    }

    fn joined(&self, channel: &ChannelName, client: ClientId, user: Option<&str>, notify: bool) {
        if notify {
            self.notice(channel, client, user, "join");
        }
    }

    fn left(&self, channel: &ChannelName, client: ClientId, user: Option<&str>, notify: bool) {
        if notify {
            self.notice(channel, client, user, "leave");
        }
    }
}

/// Round trips through NATS on the node's own connection, for [`Command::Flush`]. NATS
/// handles one connection's operations in order, so once a marker published after some
/// subscriptions comes back on the node's own inbox, NATS has those subscriptions: a
/// publication made anywhere after that reaches this node. (A client flush only writes them
/// to the socket: NATS may still be reading them when another node publishes.)
#[derive(Default)]
struct Synced {
    /// The last marker sent.
    sent: u64,
    /// Who waits for which marker, oldest first. Those that gave up (their `ready` timed out)
    /// are dropped at the next marker, so this holds no more than the waits in progress.
    waiting: std::collections::VecDeque<(u64, oneshot::Sender<bool>)>,
}

impl Synced {
    /// Sends the next marker; `done` is answered `true` when it is back, `false` at once if
    /// it cannot be sent.
    async fn ask(&mut self, broker: &NatsBroker, subject: &str, done: oneshot::Sender<bool>) {
        self.sent += 1;
        let marker = Bytes::from(self.sent.to_string());
        let sent = broker
            .client
            .publish(subject.to_string(), marker)
            .await
            .is_ok()
            && matches!(
                tokio::time::timeout(broker.timeout, broker.client.flush()).await,
                Ok(Ok(()))
            );
        if !sent {
            let _ = done.send(false);
            return;
        }
        self.waiting.retain(|(_, d)| !d.is_closed());
        self.waiting.push_back((self.sent, done));
    }

    /// A marker came back: answers everybody waiting for it or an earlier one (markers come
    /// back in order). Whether anybody was waiting for it.
    fn answered(&mut self, payload: &[u8]) -> bool {
        let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return false;
        };
        let mut any = false;
        while self.waiting.front().is_some_and(|(m, _)| *m <= n) {
            if let Some((_, done)) = self.waiting.pop_front() {
                any |= done.send(true).is_ok();
            }
        }
        any
    }
}

/// Follows the channels with local subscribers and the control subjects, and tells local
/// subscribers to recover after NATS comes back, until `shutdown`.
pub async fn follow(
    state: Arc<AppState>,
    broker: Arc<NatsBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Some(mut inbox), Some(mut events)) =
        (broker.inbox.lock().take(), broker.events.lock().take())
    else {
        return;
    };
    let subscribe = |subject: String| {
        let client = broker.client.clone();
        async move { client.subscribe(subject).await }
    };
    // Round trips to this node's own connection (see `Synced`).
    let sync_subject = broker.client.new_inbox();
    let (Ok(mut control), Ok(mut answers), Ok(mut reports), Ok(mut sync)) = (
        subscribe(broker.control_subject()).await,
        subscribe(broker.answer_subject(&state.node_name)).await,
        subscribe(broker.nodes_subject()).await,
        subscribe(sync_subject.clone()).await,
    ) else {
        tracing::error!("broker: cannot subscribe to the control subjects on NATS");
        return;
    };
    let mut synced = Synced::default();
    let (first, _first_back) = oneshot::channel();
    synced.ask(&broker, &sync_subject, first).await;
    let round_trip = async {
        while let Some(m) = sync.next().await {
            if synced.answered(&m.payload) {
                return;
            }
        }
    };
    if tokio::time::timeout(broker.timeout, round_trip)
        .await
        .is_ok()
    {
        broker.hearing.send_replace(true);
    }
    let mut followed: HashMap<ChannelName, JoinHandle<()>> = HashMap::new();
    let mut lingering = Linger::new(broker.follow_linger, MAX_LINGERING);
    let mut away = false;
    loop {
        let next_expiry = lingering.next_expiry();
        let expiry = async {
            match next_expiry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = expiry => {
                for channel in lingering.expired(Instant::now()) {
                    if let Some(task) = followed.remove(&channel) {
                        task.abort();
                    }
                }
            }
            command = inbox.recv() => match command {
                None => break,
                Some(Command::Follow(channel)) => {
                    // Still followed (it was lingering): nothing was missed.
                    lingering.occupied(&channel);
                    if followed.contains_key(&channel) {
                        continue;
                    }
                    match subscribe(broker.topic(&channel)).await {
                        Ok(sub) => {
                            // Not followed until now: what other nodes published meanwhile
                            // never reached this node (a recovery across it is not claimed).
                            state.hub.registry().skip_offset(&channel);
                            let task = deliver(state.clone(), broker.clone(), channel.clone(), sub);
                            followed.insert(channel, tokio::spawn(task));
                        }
                        Err(e) => tracing::warn!(error = %e, "broker: cannot follow a channel on NATS"),
                    }
                }
                Some(Command::Unfollow(channel)) => {
                    // A channel with history is followed a while longer, so that a
                    // subscriber coming back soon recovers here; any other stops at once.
                    let kept = followed.contains_key(&channel)
                        && state.hub.registry().lookup(&channel).is_some_and(|c| {
                            c.view(|v| v.options.history_size > 0)
                        });
                    let (lingers, evicted) = if kept {
                        lingering.vacated(&channel, Instant::now())
                    } else {
                        (false, Vec::new())
                    };
                    let stop = if lingers { None } else { Some(channel) };
                    for channel in evicted.into_iter().chain(stop) {
                        if let Some(task) = followed.remove(&channel) {
                            task.abort(); // Dropping its subscription unsubscribes.
                        }
                    }
                }
                Some(Command::Notice(subject, payload)) => {
                    if broker.send(subject, payload).await.is_err() {
                        tracing::warn!("broker: a join/leave notice was not sent (NATS unavailable)");
                    }
                }
                Some(Command::Flush(done)) => synced.ask(&broker, &sync_subject, done).await,
            },
            Some(m) = sync.next() => {
                synced.answered(&m.payload);
            }
            Some(m) = control.next() => receive(&state, &m.payload).await,
            Some(m) = answers.next() => {
                if let Some(cluster) = &state.cluster {
                    cluster.take_answer(&m.payload);
                }
            }
            Some(m) = reports.next() => heard(&state, &broker, &m.payload).await,
            Some(event) = events.recv() => match event {
                async_nats::Event::Disconnected => {
                    away = true;
                    tracing::warn!("broker: lost the connection to NATS; reconnecting");
                }
                async_nats::Event::Connected if away => {
                    away = false;
                    tracing::info!("broker: connected to NATS again");
                    // Publications made meanwhile never reached this node: a hole in each
                    // followed channel's offsets, and its subscribers are told.
                    for channel in followed.keys() {
                        state.hub.registry().skip_offset(channel);
                    }
                    tell_subscribers_to_recover(&state);
                }
                _ => {}
            },
        }
    }
    for (_, task) in followed {
        task.abort();
    }
}

/// A node's report: remembered; a node heard for the first time gets this node's report at
/// once, so nodes that start learn of each other without waiting for the next round.
async fn heard(state: &AppState, broker: &NatsBroker, payload: &[u8]) {
    let Ok(r) = serde_json::from_slice::<NodeReport>(payload) else {
        tracing::warn!("broker: malformed node report dropped");
        return;
    };
    if r.name == state.node_name {
        return;
    }
    let new = match r.report {
        Some(report) => broker
            .peers
            .lock()
            .insert(r.name, (report, Instant::now()))
            .is_none(),
        None => {
            broker.peers.lock().remove(&r.name);
            false
        }
    };
    if let Some(cluster) = &state.cluster {
        cluster
            .relay
            .reported(&state.hub, &state.node_name, &broker.live_nodes());
    }
    if new {
        broker.report(state, false).await;
    }
}

/// Sequences what other nodes publish to `channel` into this node's channel.
async fn deliver(
    state: Arc<AppState>,
    broker: Arc<NatsBroker>,
    channel: ChannelName,
    mut sub: async_nats::Subscriber,
) {
    let registry = state.hub.registry();
    while let Some(m) = sub.next().await {
        let Ok(text) = std::str::from_utf8(&m.payload) else {
            tracing::warn!("broker: malformed message dropped");
            continue;
        };
        let Some((head, body)) = text.split_once('\n') else {
            tracing::warn!("broker: malformed message dropped");
            continue;
        };
        if head == "join" || head == "leave" {
            if let Ok(r) = serde_json::from_str::<PresenceRecord>(body)
                && r.node != broker.me()
                && let Ok(client) = ClientId::parse(&r.client)
            {
                registry.announce_remote(&channel, client, r.user.as_deref(), head == "join");
            }
            continue;
        }
        if head == broker.me() {
            continue; // Sequenced here when it was published.
        }
        match Envelope::parse(body) {
            Some((from, to, data)) => {
                registry.publish_sequenced(&Publish {
                    channel: channel.clone(),
                    from,
                    data,
                    to,
                    once: None,
                    create: None,
                });
            }
            None => tracing::warn!("broker: malformed message dropped"),
        }
    }
}

/// Reports this node every third of `presence_ttl_secs` (and when asked), and says goodbye at
/// shutdown.
pub async fn heartbeat(
    state: Arc<AppState>,
    broker: Arc<NatsBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = broker.presence_ttl / 3;
    loop {
        broker.report(&state, false).await;
        if let Some(cluster) = &state.cluster {
            cluster
                .relay
                .reported(&state.hub, &state.node_name, &broker.live_nodes());
        }
        let asked = async {
            match &state.cluster {
                Some(cluster) => cluster.report_now.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = asked => {}
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {
                broker.report(&state, true).await;
                let _ = tokio::time::timeout(broker.timeout, broker.client.flush()).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel_of_token(token: &str) -> Option<ChannelName> {
        let bytes = token.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        ChannelName::parse(&String::from_utf8(out).ok()?).ok()
    }

    #[test]
    fn channel_names_make_safe_subject_tokens_and_come_back() {
        for name in ["news", "chat:room-1", "a.b", "a b", "x*y>z", "100%", "ünï"] {
            let token = subject_token(name);
            assert!(
                !token.contains(['.', ' ', '*', '>']),
                "{name:?} -> {token:?}"
            );
            let Ok(parsed) = ChannelName::parse(name) else {
                continue;
            };
            assert_eq!(channel_of_token(&token), Some(parsed), "{name:?}");
        }
        assert_eq!(channel_of_token("%4"), None);
        assert_eq!(channel_of_token("%zz"), None);
    }
}
