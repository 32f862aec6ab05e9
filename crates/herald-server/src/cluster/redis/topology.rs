//! How a node reaches Redis, and what Herald's keys and channels are called there.
//!
//! `[broker] type = "redis"` takes one of three topologies ([`Topology`]), from exactly one of
//! `url`, `sentinel_nodes` and `cluster_nodes`:
//!
//! - **Standalone** (`url`): one server. Commands go over a `ConnectionManager`, which
//!   reconnects to the same address.
//! - **Sentinel** (`sentinel_nodes` with `sentinel_master`): the node asks the sentinels, in
//!   the configured order, for the master's address (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and
//!   checks with `ROLE` that the server there is a master ([`Sentinels`]). A command that fails
//!   because the master went away (connection lost or refused, READONLY, MASTERDOWN, LOADING,
//!   or no answer in time) drops the connection, and the next command asks the sentinels again;
//!   a command refused with READONLY (not carried out) is retried once on the new master
//!   ([`SentinelLink`]). The newest master's address is shared with the pub/sub connection
//!   ([`super::feed`]), which reconnects when it changes. The user, password and database of a
//!   sentinel's URL are the master's; they are also sent to that sentinel (as user `default`
//!   when the URL names none, which a sentinel without a password accepts).
//! - **Cluster** (`cluster_nodes`): redis-rs's cluster connection, which sends each command
//!   to the shard owning its key's slot and follows MOVED/ASK redirections and failovers.
//!
//! [`Keys`] names keys and channels. Standalone and Sentinel keep the layout of earlier
//! versions (`<prefix>:ch:<channel>`, ...), so existing deployments keep their data. In a
//! cluster every key of one channel carries the channel as a hash tag
//! (`<prefix>:{<channel>}:ch`, `:hist`, `:presence`, and the sharded Pub/Sub channel `:pub`),
//! so they live in one slot: the publish script touches them all and SPUBLISHes atomically.
//! Channel names cannot contain `{` or `}`, so the tag is always the whole name.
//!
//! [`Blocking`] is the plain (blocking) connection of the shared store
//! ([`crate::cluster::shared`]), opened the same way.

use std::sync::Arc;
use std::time::Duration;

use herald_core::ChannelName;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::watch;

use crate::cluster::redacted;
use crate::config::BrokerConfig;

/// The names of Herald's keys and Redis channels.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// Redis Cluster: one hash tag per Herald channel, sharded Pub/Sub.
    sharded: bool,
}

impl Keys {
    pub fn new(prefix: &str, sharded: bool) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            sharded,
        }
    }

    /// Whether publications travel on sharded channels (SPUBLISH / SSUBSCRIBE).
    pub fn sharded(&self) -> bool {
        self.sharded
    }

    fn of(&self, what: &str, channel: &ChannelName) -> String {
        if self.sharded {
            format!("{}:{{{channel}}}:{what}", self.prefix)
        } else {
            format!("{}:{what}:{channel}", self.prefix)
        }
    }

    /// The channel's position (hash: `epoch`, `offset`).
    pub fn position(&self, channel: &ChannelName) -> String {
        self.of("ch", channel)
    }

    /// The channel's kept publications (list).
    pub fn history(&self, channel: &ChannelName) -> String {
        self.of("hist", channel)
    }

    /// The channel's subscribers on every node (hash: client → record).
    pub fn presence(&self, channel: &ChannelName) -> String {
        self.of("presence", channel)
    }

    /// The Redis channel carrying the channel's publications and join/leave notices.
    pub fn topic(&self, channel: &ChannelName) -> String {
        self.of("pub", channel)
    }

    /// The Herald channel whose publications `topic` carries.
    pub fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?;
        if self.sharded {
            rest.strip_prefix('{')?.strip_suffix("}:pub")
        } else {
            rest.strip_prefix("pub:")
        }
    }

    /// The command publishing on [`Keys::topic`].
    pub fn publish_command(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
    }

    /// Control messages to every node (plain Pub/Sub, cluster-wide in a Redis Cluster).
    pub fn control(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// Answers to the node named `node`.
    pub fn answers(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The nodes' reports (hash: node → report).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A hash of the shared store: `bans` or `channels`.
    pub fn shared(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }
}

/// Where Redis is, as configured.
pub struct Topology {
    kind: Kind,
    timeout: Duration,
    /// The configuration key naming the servers, for messages.
    key: &'static str,
    /// The servers, passwords hidden, for messages.
    shown: String,
}

enum Kind {
    Standalone(Box<redis::Client>),
    Sentinel(Arc<Sentinels>),
    Cluster(Vec<ConnectionInfo>),
}

impl Topology {
    /// Reads the topology from `[broker]` (validated); errors name the key.
    pub fn from_config(config: &BrokerConfig) -> anyhow::Result<Topology> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let parse = |key: String, url: &str| -> anyhow::Result<ConnectionInfo> {
            let info = url.into_connection_info().map_err(|e| {
                anyhow::anyhow!("broker.{key}: {} is not a Redis URL: {e}", redacted(url))
            })?;
            if !matches!(info.addr(), ConnectionAddr::Tcp(..)) {
                anyhow::bail!(
                    "broker.{key}: {}: only redis:// (plain TCP) is supported here",
                    redacted(url)
                );
            }
            Ok(info)
        };
        let shown_list = |list: &[crate::config::Secret]| {
            list.iter()
                .map(|u| redacted(&u.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !config.sentinel_nodes.is_empty() {
            let mut nodes = Vec::new();
            for (i, url) in config.sentinel_nodes.iter().enumerate() {
                let info = parse(format!("sentinel_nodes[{i}]"), &url.0)?;
                nodes.push(Sentinels::node(info));
            }
            let sentinels = Arc::new(Sentinels {
                name: config.sentinel_master.clone(),
                nodes,
                timeout,
                newest: watch::channel(String::new()).0,
            });
            return Ok(Topology {
                kind: Kind::Sentinel(sentinels),
                timeout,
                key: "broker.sentinel_nodes",
                shown: format!(
                    "the master {:?} named by the sentinels {}",
                    config.sentinel_master,
                    shown_list(&config.sentinel_nodes)
                ),
            });
        }
        if !config.cluster_nodes.is_empty() {
            let mut seeds = Vec::new();
            for (i, url) in config.cluster_nodes.iter().enumerate() {
                seeds.push(parse(format!("cluster_nodes[{i}]"), &url.0)?);
            }
            // Seeds with different credentials are refused here rather than at first use.
            redis::cluster::ClusterClient::new(seeds.clone())
                .map_err(|e| anyhow::anyhow!("broker.cluster_nodes: {e}"))?;
            return Ok(Topology {
                kind: Kind::Cluster(seeds),
                timeout,
                key: "broker.cluster_nodes",
                shown: format!("the Redis Cluster at {}", shown_list(&config.cluster_nodes)),
            });
        }
        let shown = redacted(&config.url.0);
        let client = redis::Client::open(config.url.0.as_str())
            .map_err(|e| anyhow::anyhow!("broker.url: {shown} is not a Redis URL: {e}"))?;
        Ok(Topology {
            kind: Kind::Standalone(Box::new(client)),
            timeout,
            key: "broker.url",
            shown: format!("Redis at {shown}"),
        })
    }

    /// The configuration key naming the servers (`broker.url`, ...).
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The servers, passwords hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Redis Cluster: hash tags and sharded Pub/Sub.
    pub fn sharded(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn cluster_client(
        &self,
        seeds: &[ConnectionInfo],
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        if let Some(push) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push);
        }
        builder.build()
    }

    /// Opens the connection commands go over (at most the broker's timeout).
    pub async fn link(&self) -> RedisResult<Link> {
        let opened = async {
            match &self.kind {
                Kind::Standalone(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    let conn = client.get_connection_manager_with_config(config).await?;
                    Ok(Link::Standalone(conn))
                }
                Kind::Sentinel(sentinels) => {
                    let link = Arc::new(SentinelLink::new(sentinels.clone()));
                    link.connection().await?;
                    Ok(Link::Sentinel(link))
                }
                Kind::Cluster(seeds) => {
                    let client = self.cluster_client(seeds, None)?;
                    Ok(Link::Cluster(client.get_async_connection().await?))
                }
            }
        };
        tokio::time::timeout(self.timeout, opened)
            .await
            .unwrap_or_else(|_| Err(timed_out("no answer in time")))
    }

    /// Opens a pub/sub connection ([`super::feed`]), at most the broker's timeout.
    pub async fn feed(&self) -> RedisResult<super::feed::Feed> {
        use super::feed::Feed;
        let opened = async {
            match &self.kind {
                Kind::Standalone(client) => {
                    Ok(Feed::single(client.get_async_pubsub().await?, None))
                }
                Kind::Sentinel(sentinels) => {
                    let found = sentinels.master().await?;
                    let pubsub = found.client.get_async_pubsub().await?;
                    let moved = (sentinels.newest.subscribe(), found.addr);
                    Ok(Feed::single(pubsub, Some(moved)))
                }
                Kind::Cluster(seeds) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let client = self.cluster_client(seeds, Some(tx))?;
                    Ok(Feed::cluster(client.get_async_connection().await?, rx))
                }
            }
        };
        tokio::time::timeout(self.timeout, opened)
            .await
            .unwrap_or_else(|_| Err(timed_out("no answer in time")))
    }

    /// Opens a blocking connection (for the shared store), each step within the timeout.
    pub fn blocking(&self) -> RedisResult<Blocking> {
        match &self.kind {
            Kind::Standalone(client) => {
                let conn = client.get_connection_with_timeout(self.timeout)?;
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                Ok(Blocking::Single(conn))
            }
            Kind::Sentinel(sentinels) => Ok(Blocking::Single(sentinels.master_blocking()?)),
            Kind::Cluster(seeds) => {
                let conn = self.cluster_client(seeds, None)?.get_connection()?;
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                Ok(Blocking::Cluster(Box::new(conn)))
            }
        }
    }
}

/// A blocking connection: one server, or a Redis Cluster.
pub enum Blocking {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Blocking {
    pub fn conn(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Blocking::Single(c) => c,
            Blocking::Cluster(c) => c.as_mut(),
        }
    }
}

/// An I/O time-out error (a server that did not answer in time).
pub fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Whether `e` says the server is no longer a usable master: the connection is gone, the
/// server became a replica or is loading, or it did not answer.
pub fn master_gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || refused_as_replica(e)
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

/// A write refused by a replica (also from inside a script): it was not carried out.
fn refused_as_replica(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) || e.to_string().contains("READONLY")
}

/// The sentinels of one master.
pub struct Sentinels {
    name: String,
    /// Each sentinel (with the credentials it is sent), and how to reach the master it names
    /// (the credentials and database of its URL).
    nodes: Vec<(ConnectionInfo, ConnectionInfo)>,
    timeout: Duration,
    /// The address (`host:port`) of the master found last; the pub/sub connection reconnects
    /// when it changes.
    newest: watch::Sender<String>,
}

/// A master found through a sentinel.
struct Found {
    conn: MultiplexedConnection,
    client: redis::Client,
    addr: String,
}

impl Sentinels {
    /// A sentinel's URL: how to reach it, and the master it names.
    fn node(info: ConnectionInfo) -> (ConnectionInfo, ConnectionInfo) {
        let master = info.redis_settings().clone();
        let mut to_sentinel = redis::RedisConnectionInfo::default();
        if let Some(password) = master.password() {
            // `AUTH default <password>`: accepted by a sentinel with that password and by one
            // without any (its default user takes every password), unlike `AUTH <password>`.
            to_sentinel = to_sentinel
                .set_username(master.username().unwrap_or("default"))
                .set_password(password);
        }
        (info.clone().set_redis_settings(to_sentinel), info)
    }

    /// How long one sentinel may take: the timeout shared between them, so trying them all
    /// fits in one broker call.
    fn per_sentinel(&self) -> Duration {
        (self.timeout / self.nodes.len().max(1) as u32).max(Duration::from_millis(50))
    }

    fn master_at(master: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
        master.clone().set_addr(ConnectionAddr::Tcp(host, port))
    }

    /// Notes the master found, for the pub/sub connection.
    fn found(&self, addr: &str) {
        self.newest.send_if_modified(|newest| {
            let changed = newest != addr;
            if changed {
                tracing::info!(master = addr, name = %self.name, "broker: the sentinels name a master");
                *newest = addr.to_string();
            }
            changed
        });
    }

    /// Asks the sentinels in order for the master, and connects to it.
    async fn master(&self) -> RedisResult<Found> {
        let mut last = None;
        for (sentinel, master) in &self.nodes {
            match tokio::time::timeout(self.per_sentinel(), self.ask(sentinel, master)).await {
                Ok(Ok(found)) => {
                    self.found(&found.addr);
                    return Ok(found);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(timed_out("a sentinel or the master did not answer in time")),
            }
        }
        Err(last.unwrap_or_else(|| (ErrorKind::EmptySentinelList, "no sentinels").into()))
    }

    async fn ask(&self, sentinel: &ConnectionInfo, master: &ConnectionInfo) -> RedisResult<Found> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut to_sentinel = redis::Client::open(sentinel.clone())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .query_async(&mut to_sentinel)
            .await?;
        let (host, port) = addr.ok_or_else(|| self.unknown())?;
        let addr = format!("{host}:{port}");
        let client = redis::Client::open(Self::master_at(master, host, port))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        if !is_master(&role) {
            return Err(not_master(addr));
        }
        Ok(Found { conn, client, addr })
    }

    /// The same, blocking (for the shared store).
    fn master_blocking(&self) -> RedisResult<redis::Connection> {
        let mut last = None;
        let per = self.per_sentinel();
        for (sentinel, master) in &self.nodes {
            let asked = (|| {
                let mut to_sentinel =
                    redis::Client::open(sentinel.clone())?.get_connection_with_timeout(per)?;
                to_sentinel.set_read_timeout(Some(per))?;
                to_sentinel.set_write_timeout(Some(per))?;
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.name)
                    .query(&mut to_sentinel)?;
                let (host, port) = addr.ok_or_else(|| self.unknown())?;
                let addr = format!("{host}:{port}");
                let mut conn = redis::Client::open(Self::master_at(master, host, port))?
                    .get_connection_with_timeout(self.timeout)?;
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                let role: Value = redis::cmd("ROLE").query(&mut conn)?;
                if !is_master(&role) {
                    return Err(not_master(addr));
                }
                self.found(&addr);
                Ok(conn)
            })();
            match asked {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (ErrorKind::EmptySentinelList, "no sentinels").into()))
    }

    fn unknown(&self) -> RedisError {
        (
            ErrorKind::MasterNameNotFoundBySentinel,
            "the sentinel does not know this master",
            self.name.clone(),
        )
            .into()
    }
}

fn not_master(addr: String) -> RedisError {
    (
        ErrorKind::Server(ServerErrorKind::MasterDown),
        "the server the sentinel names is not a master (yet)",
        addr,
    )
        .into()
}

/// Whether a `ROLE` answer is a master's (`["master", offset, replicas]`).
fn is_master(role: &Value) -> bool {
    let Value::Array(items) = role else {
        return false;
    };
    match items.first() {
        Some(Value::BulkString(b)) => b.as_slice() == b"master",
        Some(Value::SimpleString(s)) => s == "master",
        _ => false,
    }
}

/// The connection commands go over.
#[derive(Clone)]
pub enum Link {
    Standalone(ConnectionManager),
    Sentinel(Arc<SentinelLink>),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(c) => c.req_packed_command(cmd),
            Link::Sentinel(s) => Box::pin(s.command(cmd)),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(s) => Box::pin(s.commands(pipeline, offset, count)),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(c) => c.get_db(),
            Link::Sentinel(s) => s
                .sentinels
                .nodes
                .first()
                .map_or(0, |(_, m)| m.redis_settings().db()),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands to the master the sentinels name, following it through failovers.
pub struct SentinelLink {
    sentinels: Arc<Sentinels>,
    /// The connection to the current master, and its address.
    current: parking_lot::Mutex<Option<(MultiplexedConnection, String)>>,
    /// One lookup at a time.
    looking: tokio::sync::Mutex<()>,
}

/// Drops the link's connection when a command on it did not finish (timed out by its caller).
struct Unfinished<'a> {
    link: &'a SentinelLink,
    addr: String,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.link.forget(&self.addr);
        }
    }
}

impl SentinelLink {
    fn new(sentinels: Arc<Sentinels>) -> SentinelLink {
        SentinelLink {
            sentinels,
            current: parking_lot::Mutex::new(None),
            looking: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection to the master: the current one unless another master was found since.
    fn usable(&self) -> Option<(MultiplexedConnection, String)> {
        let newest = self.sentinels.newest.borrow().clone();
        let current = self.current.lock();
        current
            .as_ref()
            .filter(|(_, addr)| newest.is_empty() || *addr == newest)
            .cloned()
    }

    async fn connection(&self) -> RedisResult<(MultiplexedConnection, String)> {
        if let Some(found) = self.usable() {
            return Ok(found);
        }
        let _one = self.looking.lock().await;
        if let Some(found) = self.usable() {
            return Ok(found);
        }
        let found = self.sentinels.master().await?;
        *self.current.lock() = Some((found.conn.clone(), found.addr.clone()));
        Ok((found.conn, found.addr))
    }

    /// Drops the connection to `addr` (if it is still the current one).
    fn forget(&self, addr: &str) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|(_, a)| a == addr) {
            tracing::warn!(
                master = addr,
                "broker: lost the master; asking the sentinels again"
            );
            *current = None;
        }
    }

    /// Runs one request on the master; on an error saying the master went away, drops the
    /// connection (and retries once where the master refused as a replica: not carried out).
    async fn run<T, F>(&self, send: impl Fn(MultiplexedConnection) -> F) -> RedisResult<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (conn, addr) = self.connection().await?;
            let mut guard = Unfinished {
                link: self,
                addr,
                done: false,
            };
            let result = send(conn).await;
            guard.done = true;
            match result {
                Err(e) if master_gone(&e) => {
                    self.forget(&guard.addr);
                    if attempt == 1 && refused_as_replica(&e) {
                        continue;
                    }
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.run(|mut conn| async move { conn.req_packed_command(cmd).await })
            .await
    }

    async fn commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.run(|mut conn| async move { conn.req_packed_commands(pipeline, offset, count).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_channel_share_one_hash_tag_in_a_cluster() {
        let c = ChannelName::parse("chat:room-1").unwrap();
        let plain = Keys::new("herald", false);
        assert_eq!(plain.position(&c), "herald:ch:chat:room-1");
        assert_eq!(plain.topic(&c), "herald:pub:chat:room-1");
        assert_eq!(
            plain.channel_of("herald:pub:chat:room-1"),
            Some("chat:room-1")
        );
        let sharded = Keys::new("herald", true);
        assert_eq!(sharded.position(&c), "herald:{chat:room-1}:ch");
        assert_eq!(sharded.history(&c), "herald:{chat:room-1}:hist");
        assert_eq!(sharded.presence(&c), "herald:{chat:room-1}:presence");
        assert_eq!(sharded.topic(&c), "herald:{chat:room-1}:pub");
        assert_eq!(
            sharded.channel_of("herald:{chat:room-1}:pub"),
            Some("chat:room-1")
        );
        assert_eq!(sharded.channel_of("herald:ctl"), None);
        assert_eq!(sharded.channel_of("other:{x}:pub"), None);
        // Redis hashes what is between the first `{` and the next `}` (when not empty).
        let tag = |k: &str| {
            let open = k.find('{').unwrap();
            let len = k[open + 1..].find('}').unwrap();
            assert!(len > 0);
            k[open + 1..open + 1 + len].to_string()
        };
        for key in [sharded.history(&c), sharded.presence(&c), sharded.topic(&c)] {
            assert_eq!(tag(&key), "chat:room-1");
        }
        assert_eq!(tag(&sharded.position(&c)), "chat:room-1");
    }

    #[test]
    fn a_role_answer_is_read_without_panicking() {
        assert!(is_master(&Value::Array(vec![Value::BulkString(
            b"master".to_vec()
        )])));
        assert!(!is_master(&Value::Array(vec![Value::BulkString(
            b"slave".to_vec()
        )])));
        assert!(!is_master(&Value::Array(vec![])));
        assert!(!is_master(&Value::Nil));
    }

    #[test]
    fn sentinels_get_the_password_as_user_default() {
        let info = "redis://:pw@127.0.0.1:26379/2"
            .into_connection_info()
            .unwrap();
        let (sentinel, master) = Sentinels::node(info);
        assert_eq!(sentinel.redis_settings().username(), Some("default"));
        assert_eq!(sentinel.redis_settings().password(), Some("pw"));
        assert_eq!(sentinel.redis_settings().db(), 0);
        assert_eq!(master.redis_settings().db(), 2);
        assert_eq!(master.redis_settings().username(), None);
    }
}
