//! `[[ingress]]`: what arrives on a queue is published, as if by the admin. This module owns
//! reading the queues (a Redis stream through a consumer group, a NATS subject through a queue
//! group), turning each message into a publication (`format = "herald"`: the body of
//! `POST /api/v1/publish`; `format = "gogin"`: gogin's `{"channel","message"}` notification,
//! published as push-stream text), counting what was published and refused
//! (`ingress_published`, `ingress_rejected`), and staying up while a queue server is away.
//!
//! - **Redis streams.** Each node is a consumer named by its node name in the group (created
//!   at the stream's start, with MKSTREAM, if missing), so several nodes share the work. At
//!   each (re)connection the node first takes the entries still pending for it (read from id
//!   0: delivered before a restart or an outage but not acknowledged), then new ones (`>`),
//!   in batches, with a blocking read. A batch is published in order, then acknowledged with
//!   one XACK; acknowledgements a broken connection lost are sent again on the next one.
//!   Delivery is at least once: a crash between publishing and acknowledging publishes those
//!   entries again.
//! - **NATS.** A queue subscription in the group `herald`; the client reconnects (and
//!   subscribes again) by itself. Core NATS keeps nothing: what is published while no node
//!   listens is lost.
//! - **Refusals.** A message that is not JSON, lacks a field or is refused by the hub is
//!   counted, logged (at most one warning per [`WARN_EVERY`], without the message's data)
//!   and acknowledged. A refusal that says "not now" (the cluster's broker or the store is
//!   unavailable) is retried with backoff instead, holding the messages behind it.
//! - **Outages.** Reconnection with backoff from 100 ms doubling to 5 s; one warning when the
//!   queue server goes away and one line when it is back. Nothing else waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::hub::PublishRequest;
use herald_core::stats::Stats;
use herald_core::{Actor, ChannelName, ErrorCode, HeraldError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::IngressConfig;
use crate::state::AppState;

/// Entries read from a Redis stream at once (XREADGROUP COUNT).
const BATCH: usize = 100;
/// How long one XREADGROUP waits for new entries.
const BLOCK: Duration = Duration::from_secs(5);
/// How long connecting to a queue server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most one warning about refused messages per ingress in this time.
pub const WARN_EVERY: Duration = Duration::from_secs(1);
/// The NATS queue group the nodes share.
pub const QUEUE_GROUP: &str = "herald";

/// The configured ingresses, checked before the server starts anything.
pub struct Ingresses(Vec<(IngressConfig, Reader)>);

enum Reader {
    Redis(redis::Client),
    Nats(NatsTarget),
}

/// A NATS server address without its credentials (so no log line of the client shows them),
/// and the credentials: user and password, or a token (a user without a password).
struct NatsTarget {
    addr: async_nats::ServerAddr,
    user: Option<String>,
    password: Option<String>,
}

/// Opens each `[[ingress]]`'s client (nothing is connected yet); a URL the client refuses
/// fails the start, naming the key.
pub fn prepare(configs: &[IngressConfig]) -> anyhow::Result<Ingresses> {
    let mut ready = Vec::with_capacity(configs.len());
    for (i, config) in configs.iter().enumerate() {
        let shown = crate::cluster::redacted(&config.url.0);
        let reader = match config.kind.as_str() {
            "nats" => Reader::Nats(
                nats_target(&config.url.0)
                    .with_context(|| format!("ingress[{i}].url: {shown} is not a NATS URL"))?,
            ),
            _ => Reader::Redis(redis::Client::open(config.url.0.as_str()).map_err(|e| {
                anyhow::anyhow!("ingress[{i}].url: {shown} is not a usable Redis URL: {e}")
            })?),
        };
        ready.push((config.clone(), reader));
    }
    Ok(Ingresses(ready))
}

impl Ingresses {
    /// One task per ingress, until `shutdown`.
    pub fn spawn(
        self,
        state: &Arc<AppState>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, (config, reader))| {
                let ingress = Ingress {
                    state: state.clone(),
                    name: format!("ingress[{i}]"),
                    source: config.source(),
                    gogin: config.format == "gogin",
                    outage: Outage::default(),
                    warnings: Warnings::default(),
                    held: false,
                };
                let shutdown = shutdown.clone();
                match reader {
                    Reader::Redis(client) => {
                        let stream = RedisStream {
                            client,
                            stream: config.stream().to_string(),
                            group: config.group().to_string(),
                            consumer: state.node_name.clone(),
                            unacked: Vec::new(),
                        };
                        tokio::spawn(stream.run(ingress, shutdown))
                    }
                    Reader::Nats(target) => {
                        let subject = config.subject().to_string();
                        tokio::spawn(run_nats(ingress, target, subject, shutdown))
                    }
                }
            })
            .collect()
    }
}

/// One ingress's publishing side: parsing, publishing, counting and logging.
struct Ingress {
    state: Arc<AppState>,
    /// `ingress[<index>]`, for log lines.
    name: String,
    /// What it reads, without credentials, for log lines.
    source: String,
    gogin: bool,
    outage: Outage,
    warnings: Warnings,
    /// A "not now" refusal is being retried (logged once until a message passes again).
    held: bool,
}

/// What became of one message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Published,
    Rejected,
    /// Shutdown came while a "not now" refusal was being retried: the message is not done.
    Stopped,
}

impl Ingress {
    /// Publishes one message (`payload`, or why there is none), retrying refusals that say
    /// "not now" with backoff until they pass or `shutdown` comes. `id` names the message in
    /// log lines (a stream entry's id, a NATS message's subject).
    async fn handle(
        &mut self,
        id: &str,
        payload: Result<&Bytes, HeraldError>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let stats = self.state.hub.stats();
        let mut backoff = Backoff::default();
        loop {
            let result = match &payload {
                Ok(payload) => self.publish(payload).await,
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok(()) => {
                    if std::mem::take(&mut self.held) {
                        tracing::info!(ingress = %self.name, "ingress: publishing again");
                    }
                    Stats::add(&stats.ingress_published, 1);
                    return Outcome::Published;
                }
                Err(e) if not_now(&e) => {
                    if !std::mem::replace(&mut self.held, true) {
                        tracing::warn!(ingress = %self.name, entry = %id, error = %e,
                            "ingress: publishing refused for now; retrying (messages wait)");
                    }
                    if !backoff.sleep(shutdown).await {
                        return Outcome::Stopped;
                    }
                }
                Err(e) => {
                    Stats::add(&stats.ingress_rejected, 1);
                    self.warnings.rejected(&self.name, id, &e);
                    return Outcome::Rejected;
                }
            }
        }
    }

    async fn publish(&self, payload: &Bytes) -> Result<(), HeraldError> {
        let max = self.state.config.limits.max_http_body_bytes;
        if payload.len() > max {
            return Err(HeraldError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "{} bytes; at most limits.max_http_body_bytes ({max})",
                    payload.len()
                ),
            ));
        }
        let req = if self.gogin {
            gogin_request(payload)?
        } else {
            crate::http::publish_request(payload)?
        };
        self.state.hub.publish(&Actor::Admin, req).await.map(drop)
    }
}

/// Refusals that say "not now" rather than "never".
fn not_now(e: &HeraldError) -> bool {
    matches!(
        e.code,
        ErrorCode::BrokerUnavailable | ErrorCode::StoreUnavailable | ErrorCode::ShuttingDown
    )
}

/// gogin's NATS notification, `{"channel": 1, "message": "text"}` (the channel a number as
/// gogin sent it, or a string), as the push-stream publisher (`POST /pub?id=<channel>`) would
/// publish its body: the text as a JSON string. Like that publisher, an empty message is
/// refused.
fn gogin_request(payload: &[u8]) -> Result<PublishRequest, HeraldError> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| HeraldError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(HeraldError::bad_request(
            "a gogin notification is a JSON object",
        ));
    };
    let missing = |field: &str| {
        HeraldError::new(
            ErrorCode::MissingField,
            format!("missing field \"{field}\""),
        )
    };
    let channel = match fields.get("channel") {
        Some(serde_json::Value::String(name)) => ChannelName::parse(name)?,
        Some(serde_json::Value::Number(n)) if n.is_u64() => ChannelName::parse(&n.to_string())?,
        Some(_) => {
            return Err(HeraldError::bad_request(
                "\"channel\" must be a string or a non-negative integer",
            ));
        }
        None => return Err(missing("channel")),
    };
    let text = match fields.get("message") {
        Some(serde_json::Value::String(text)) if text.is_empty() => {
            return Err(HeraldError::bad_request("\"message\" is empty"));
        }
        Some(serde_json::Value::String(text)) => text,
        Some(_) => return Err(HeraldError::bad_request("\"message\" must be a string")),
        None => return Err(missing("message")),
    };
    Ok(PublishRequest {
        channels: vec![channel],
        data: herald_protocol::pushstream::text_to_data(text),
        to: None,
        once_per_client: false,
    })
}

/// Waits between attempts: 100 ms, doubling up to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(FIRST_BACKOFF)
    }
}

impl Backoff {
    /// The wait before attempt `n` (from 1), as NATS's reconnection asks for it.
    fn nth(n: usize) -> Duration {
        let doublings = n.saturating_sub(1).min(16) as u32;
        (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
    }

    /// Sleeps the current wait, then doubles it; false when shutdown came first.
    async fn sleep(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => !*shutdown.borrow(),
            _ = shutdown.changed() => false,
        }
    }
}

/// Whether the queue server is away: logged once when it goes and once when it is back.
/// Shared with the NATS client's event callback.
#[derive(Clone, Default)]
struct Outage(Arc<AtomicBool>);

impl Outage {
    fn down(&self, name: &str, source: &str, error: &dyn std::fmt::Display) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::warn!(ingress = %name, %source, %error,
                "ingress: queue server unavailable; reconnecting with backoff");
        } else {
            tracing::debug!(ingress = %name, %error, "ingress: still unavailable");
        }
    }

    fn up(&self, name: &str, source: &str) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::info!(ingress = %name, %source, "ingress: queue server reachable again");
        }
    }
}

/// Rate-limits the warnings about refused messages.
#[derive(Default)]
struct Warnings {
    /// No warning before this.
    quiet_until: Option<Instant>,
    /// Refusals not logged since the last warning.
    unlogged: u64,
}

impl Warnings {
    fn rejected(&mut self, name: &str, id: &str, e: &HeraldError) {
        let now = Instant::now();
        if self.quiet_until.is_some_and(|t| now < t) {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(ingress = %name, entry = %id, code = %e.code, error = %e.message,
            unlogged_since_last = self.unlogged,
            "ingress: message refused, dropped and counted in ingress_rejected");
        self.quiet_until = Some(now + WARN_EVERY);
        self.unlogged = 0;
    }
}

// ---- Redis streams ------------------------------------------------------------------------

/// One stream read through a consumer group, as consumer `consumer`.
struct RedisStream {
    client: redis::Client,
    stream: String,
    group: String,
    consumer: String,
    /// Entries done (published or refused) whose XACK has not gone through yet.
    unacked: Vec<String>,
}

/// One stream entry: its id and its `payload` field (or why it has none).
struct Entry {
    id: String,
    payload: Result<Bytes, HeraldError>,
}

impl RedisStream {
    async fn run(mut self, mut ingress: Ingress, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            match self
                .session(&mut ingress, &mut backoff, &mut shutdown)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    ingress.outage.down(&ingress.name, &ingress.source, &e);
                    if !backoff.sleep(&mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// One connection: the group made sure of, lost acknowledgements sent, this consumer's
    /// pending entries, then new ones until shutdown (`Ok`) or a Redis failure.
    async fn session(
        &mut self,
        ingress: &mut Ingress,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(BLOCK + CONNECT_TIMEOUT));
        let mut conn = tokio::select! {
            conn = self.client.get_multiplexed_async_connection_with_config(&config) => conn?,
            _ = shutdown.changed() => return Ok(()),
        };
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => {}
        }
        ingress.outage.up(&ingress.name, &ingress.source);
        *backoff = Backoff::default();
        self.ack(&mut conn).await?;
        // Pending for this consumer first (delivered before, never acknowledged), in order.
        let mut after = "0".to_string();
        loop {
            let entries = self.read(&mut conn, &after, None).await?;
            let Some(last) = entries.last() else { break };
            after = last.id.clone();
            if !self.publish(ingress, &mut conn, entries, shutdown).await? {
                return Ok(());
            }
        }
        loop {
            let entries = tokio::select! {
                entries = self.read(&mut conn, ">", Some(BLOCK)) => entries?,
                _ = shutdown.changed() => return Ok(()),
            };
            if !self.publish(ingress, &mut conn, entries, shutdown).await? {
                return Ok(());
            }
        }
    }

    /// XREADGROUP: up to [`BATCH`] entries after `after` (`>`: never delivered to the group),
    /// waiting up to `block` for some.
    async fn read(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        after: &str,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(after);
        entries(cmd.query_async(conn).await?)
    }

    /// Publishes `entries` in order, then acknowledges those done. False when shutdown
    /// stopped it (what was not done stays pending for the next start).
    async fn publish(
        &mut self,
        ingress: &mut Ingress,
        conn: &mut redis::aio::MultiplexedConnection,
        entries: Vec<Entry>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<bool> {
        let mut going = true;
        for entry in entries {
            if *shutdown.borrow() {
                going = false;
                break;
            }
            let payload = entry.payload.as_ref().map_err(Clone::clone);
            if ingress.handle(&entry.id, payload, shutdown).await == Outcome::Stopped {
                going = false;
                break;
            }
            self.unacked.push(entry.id);
        }
        self.ack(conn).await?;
        Ok(going)
    }

    async fn ack(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        if self.unacked.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.unacked)
            .query_async::<u64>(conn)
            .await?;
        self.unacked.clear();
        Ok(())
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

fn text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(b) => String::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The entries of an XREADGROUP answer (RESP2 arrays or RESP3 maps; nil when none came).
fn entries(reply: redis::Value) -> redis::RedisResult<Vec<Entry>> {
    use redis::Value;
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.pop().expect("two")),
                _ => Err(unexpected("XREADGROUP: a stream is not [key, entries]")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(unexpected("XREADGROUP: not a list of streams")),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else {
            return Err(unexpected("XREADGROUP: entries are not a list"));
        };
        for item in items {
            let Value::Array(mut parts) = item else {
                return Err(unexpected("XREADGROUP: an entry is not [id, fields]"));
            };
            if parts.len() != 2 {
                return Err(unexpected("XREADGROUP: an entry is not [id, fields]"));
            }
            let fields = parts.pop().expect("two");
            let id = text(parts.pop().expect("two"))
                .ok_or_else(|| unexpected("XREADGROUP: an entry id is not text"))?;
            let pairs: Vec<(Value, Value)> = match fields {
                // A pending entry deleted from the stream since it was delivered.
                Value::Nil => {
                    let gone = HeraldError::bad_request("the entry was deleted from the stream");
                    out.push(Entry {
                        id,
                        payload: Err(gone),
                    });
                    continue;
                }
                Value::Array(flat) => {
                    let mut flat = flat.into_iter();
                    std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
                }
                Value::Map(pairs) => pairs,
                _ => return Err(unexpected("XREADGROUP: entry fields are not a list")),
            };
            let payload = pairs
                .into_iter()
                .find(|(name, _)| matches!(name, Value::BulkString(n) if n == b"payload"))
                .map(|(_, value)| match value {
                    Value::BulkString(b) => Ok(Bytes::from(b)),
                    _ => Err(HeraldError::bad_request("\"payload\" is not a string")),
                })
                .unwrap_or_else(|| {
                    Err(HeraldError::new(
                        ErrorCode::MissingField,
                        "the entry has no \"payload\" field",
                    ))
                });
            out.push(Entry { id, payload });
        }
    }
    Ok(out)
}

// ---- NATS ---------------------------------------------------------------------------------

/// Splits `nats://user:password@host:port` into the address and its (percent-decoded)
/// credentials.
fn nats_target(url: &str) -> anyhow::Result<NatsTarget> {
    let (scheme, rest) = url.split_once("://").context("no scheme")?;
    let (credentials, host) = match rest.rsplit_once('@') {
        Some((credentials, host)) => (Some(credentials), host),
        None => (None, rest),
    };
    let addr: async_nats::ServerAddr = format!("{scheme}://{host}").parse()?;
    let (user, password) = match credentials.map(|c| c.split_once(':')) {
        None => (None, None),
        Some(None) => (credentials.map(percent_decode), None),
        Some(Some((user, password))) => {
            (Some(percent_decode(user)), Some(percent_decode(password)))
        }
    };
    Ok(NatsTarget {
        addr,
        user: user.filter(|u| !u.is_empty()),
        password,
    })
}

/// `%XX` escapes decoded (URL user info); anything else kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn run_nats(
    mut ingress: Ingress,
    target: NatsTarget,
    subject: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    loop {
        let client = tokio::select! {
            client = nats_options(&ingress, &target).connect(target.addr.clone()) => client,
            _ = shutdown.changed() => return,
        };
        let subscribed = match client {
            Ok(client) => client
                .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
                .await
                .map(|subscriber| (client, subscriber))
                .map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        let (_client, mut subscriber) = match subscribed {
            Ok(subscribed) => subscribed,
            Err(e) => {
                ingress.outage.down(&ingress.name, &ingress.source, &e);
                if !backoff.sleep(&mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        ingress.outage.up(&ingress.name, &ingress.source);
        backoff = Backoff::default();
        // The client reconnects by itself and subscribes again; the stream ends only if the
        // client gives up, and then this loop starts over.
        loop {
            let message = tokio::select! {
                message = subscriber.next() => message,
                // Dropping the subscriber unsubscribes.
                _ = shutdown.changed() => return,
            };
            let Some(message) = message else { break };
            let id = message.subject.to_string();
            if ingress
                .handle(&id, Ok(&message.payload), &mut shutdown)
                .await
                == Outcome::Stopped
            {
                return;
            }
        }
    }
}

fn nats_options(ingress: &Ingress, target: &NatsTarget) -> async_nats::ConnectOptions {
    let mut options = match (&target.user, &target.password) {
        (Some(user), Some(password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        (Some(token), None) => async_nats::ConnectOptions::with_token(token.clone()),
        _ => async_nats::ConnectOptions::new(),
    };
    options = options
        .name(format!("herald {}", ingress.state.node_name))
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(Backoff::nth);
    let (outage, name, source) = (
        ingress.outage.clone(),
        ingress.name.clone(),
        ingress.source.clone(),
    );
    options.event_callback(move |event| {
        match event {
            async_nats::Event::Disconnected => outage.down(&name, &source, &"disconnected"),
            async_nats::Event::Connected => outage.up(&name, &source),
            _ => {}
        }
        std::future::ready(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gogin_notifications_become_push_stream_text() {
        let req = gogin_request(br#"{"channel":1,"message":"say \"hi\""}"#).unwrap();
        assert_eq!(req.channels[0].as_str(), "1");
        assert_eq!(&req.data[..], br#""say \"hi\"""#);
        let req = gogin_request(br#"{"channel":"news","message":"x","extra":true}"#).unwrap();
        assert_eq!(req.channels[0].as_str(), "news");
        for (bad, code) in [
            (&b"nope"[..], ErrorCode::InvalidJson),
            (b"[1]", ErrorCode::BadRequest),
            (br#"{"message":"x"}"#, ErrorCode::MissingField),
            (br#"{"channel":"a"}"#, ErrorCode::MissingField),
            (br#"{"channel":-1,"message":"x"}"#, ErrorCode::BadRequest),
            (br#"{"channel":"a","message":5}"#, ErrorCode::BadRequest),
            (br#"{"channel":"a","message":""}"#, ErrorCode::BadRequest),
            (
                br#"{"channel":"a b","message":"x"}"#,
                ErrorCode::InvalidChannel,
            ),
        ] {
            let err = gogin_request(bad).unwrap_err();
            assert_eq!(err.code, code, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stream_replies_are_read_in_both_protocols() {
        use redis::Value as V;
        let s = |t: &str| V::BulkString(t.as_bytes().to_vec());
        let entry = |id: &str, fields: V| V::Array(vec![s(id), fields]);
        let entries_of = vec![
            entry("1-0", V::Array(vec![s("payload"), s("{}")])),
            entry("2-0", V::Array(vec![s("other"), s("x")])),
            entry("3-0", V::Nil),
        ];
        let resp2 = V::Array(vec![V::Array(vec![s("k"), V::Array(entries_of.clone())])]);
        let resp3 = V::Map(vec![(s("k"), V::Array(entries_of))]);
        for reply in [resp2, resp3] {
            let got = entries(reply).unwrap();
            let ids: Vec<_> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["1-0", "2-0", "3-0"]);
            assert_eq!(&got[0].payload.as_ref().unwrap()[..], b"{}");
            assert_eq!(
                got[1].payload.as_ref().unwrap_err().code,
                ErrorCode::MissingField
            );
            assert!(got[2].payload.is_err());
        }
        assert!(entries(V::Nil).unwrap().is_empty());
        assert!(entries(V::Int(3)).is_err());
    }

    #[test]
    fn nats_credentials_leave_the_address() {
        let t = nats_target("nats://al%40ice:p%3Ass@127.0.0.1:4222").unwrap();
        assert_eq!(t.addr.host(), "127.0.0.1");
        assert!(!t.addr.has_user_pass());
        assert_eq!(t.user.as_deref(), Some("al@ice"));
        assert_eq!(t.password.as_deref(), Some("p:ss"));
        let t = nats_target("nats://s3cret-token@h:4222").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.password.as_deref()),
            (Some("s3cret-token"), None)
        );
        let t = nats_target("nats://h").unwrap();
        assert_eq!((t.user, t.password, t.addr.port()), (None, None, 4222));
    }

    #[test]
    fn backoff_doubles_from_100ms_to_5s() {
        let waits: Vec<_> = (1..=8).map(Backoff::nth).collect();
        let ms: Vec<_> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(Backoff::nth(1000), MAX_BACKOFF);
    }
}
