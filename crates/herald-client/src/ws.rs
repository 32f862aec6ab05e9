//! The native-protocol WebSocket client: [`Client`] owns one connection to `ws://HOST:PORT/ws`,
//! the welcome handshake, request/reply correlation by `"id"`, and the queue of frames that
//! arrived while a caller was waiting for something else. [`Event`] is what it yields.
//!
//! The connection is only read while one of the async methods that wait for frames
//! ([`Client::next_event`], [`Client::next_op`], [`Client::request`] and the helpers built on
//! it, [`Client::pump`]) is running. WebSocket pings from the server are answered from inside
//! those reads, so a client that should stay connected for a long time without expecting
//! anything should call [`Client::pump`] rather than sleep. Not reading is also how a test
//! makes the server see a slow consumer.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use http::Uri;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_websockets::{ClientBuilder, CloseCode, Message, WebSocketStream};

/// How long [`Client::connect`] waits for TCP connect, upgrade and the welcome frame together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Client::request`] waits for the matching reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Client::close`] waits for the server to acknowledge the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something received on a [`Client`] connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame that parsed as JSON (normally an object with an `"op"` key).
    Frame(Value),
    /// A text frame that is not JSON. Binary frames are reported here too, decoded as UTF-8
    /// (lossily); the server is not expected to send any.
    Text(String),
    /// The connection ended. `code`/`reason` come from the server's close frame; a connection
    /// that ended without one is reported as code 1006 (abnormal closure). After this event
    /// [`Client::next_event`] returns errors.
    Closed {
        /// WebSocket close code, e.g. 1000 (normal), 4100 (slow consumer).
        code: u16,
        /// Close reason sent by the server (may be empty).
        reason: String,
    },
}

/// The server answered the WebSocket upgrade request with `status` instead of 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRejected {
    /// HTTP status of the server's answer (e.g. 401, 403, 404, 429).
    pub status: u16,
}

impl fmt::Display for HandshakeRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebSocket handshake rejected with HTTP {}", self.status)
    }
}

impl std::error::Error for HandshakeRejected {}

/// A request was answered with `{"op":"reply","id":..,"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyError {
    /// The error's `code` (empty if the reply had none).
    pub code: String,
    /// The error's `message` (empty if the reply had none).
    pub message: String,
    /// The whole reply frame.
    pub reply: Value,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request failed: {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ReplyError {}

/// The TCP stream under a WebSocket, tolerant of write failures while reading.
///
/// While a WebSocket stream is read, it writes too: pongs for the server's pings and the
/// acknowledgement of a close frame. When the server has already closed the connection those
/// writes fail (EPIPE, ECONNRESET), and the WebSocket stream would report that failure instead
/// of the frames it has already received — typically the server's close frame with its code.
/// In *tolerant* mode this wrapper remembers the first write error and pretends later writes
/// succeeded, so reading goes on until the received data is exhausted. Outside tolerant mode a
/// remembered error is returned by the next write.
#[derive(Debug)]
pub struct TolerantStream {
    tcp: TcpStream,
    tolerant: bool,
    write_error: Option<io::Error>,
}

impl TolerantStream {
    /// Wraps `tcp`, not tolerant.
    pub fn new(tcp: TcpStream) -> TolerantStream {
        TolerantStream {
            tcp,
            tolerant: false,
            write_error: None,
        }
    }

    /// Switches tolerant mode (see the type's documentation).
    pub fn set_tolerant(&mut self, tolerant: bool) {
        self.tolerant = tolerant;
    }

    /// The first write error seen in tolerant mode, if any.
    pub fn write_error(&self) -> Option<&io::Error> {
        self.write_error.as_ref()
    }

    /// The wrapped TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Applies the tolerance policy to the outcome of a write of `len` bytes.
    fn filter(&mut self, r: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Err(e)) if self.tolerant => {
                self.write_error.get_or_insert(e);
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }

    /// The remembered error as a fresh `io::Error` (outside tolerant mode).
    fn replay(&self) -> Option<io::Error> {
        self.write_error
            .as_ref()
            .map(|e| io::Error::new(e.kind(), e.to_string()))
    }
}

impl AsyncRead for TolerantStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TolerantStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_error.is_some() {
            return match this.replay() {
                Some(e) if !this.tolerant => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.filter(r, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.write_error.is_some() {
            return match this.replay() {
                Some(e) if !this.tolerant => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(len)),
            };
        }
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.filter(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.tcp).poll_flush(cx) {
            Poll::Ready(Err(e)) if this.tolerant => {
                this.write_error = Some(e);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// One native-protocol WebSocket connection to a Herald server.
pub struct Client {
    ws: WebSocketStream<TolerantStream>,
    id: String,
    welcome: Value,
    queue: VecDeque<Event>,
    next_request_id: u64,
    /// Set once [`Event::Closed`] has been produced by the reader.
    ended: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("queued", &self.queue.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Host and port of a `ws://` URL (the scheme is checked; `wss://` is not supported).
fn ws_host_port(uri: &Uri) -> anyhow::Result<(String, u16)> {
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("wss:// URLs are not supported by herald-client (plain ws:// only)"),
        other => bail!("not a ws:// URL (scheme {other:?})"),
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

/// Resolves the server address of a `ws://` URL (the first address the resolver returns,
/// preferring IPv4).
pub async fn resolve_ws_url(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    let (host, port) = ws_host_port(&uri)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{host} resolved to no address"))
}

/// Maps a tokio-websockets error to an anyhow error, turning a refused upgrade into
/// [`HandshakeRejected`].
fn ws_error(e: tokio_websockets::Error) -> anyhow::Error {
    match e {
        tokio_websockets::Error::Upgrade(
            tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status),
        ) => anyhow::Error::new(HandshakeRejected { status }),
        e => anyhow::Error::new(e),
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) and waits for the welcome frame.
    /// Fails if the upgrade is refused ([`HandshakeRejected`]), if the first frame is not
    /// `{"op":"welcome",...}`, or if all of this takes more than 10 s.
    pub async fn connect(url: &str) -> anyhow::Result<Client> {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects subscribed to `channels` in one round trip (`/ws?channels=a,b`: the server
    /// subscribes before its welcome). Fails, naming the channel and the server's error, if
    /// any was refused.
    pub async fn connect_subscribed(url: &str, channels: &[&str]) -> anyhow::Result<Client> {
        let list: Vec<String> = channels
            .iter()
            .map(|c| form_urlencoded::byte_serialize(c.as_bytes()).collect())
            .collect();
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}channels={}", list.join(","));
        let client = Self::connect(&url).await?;
        if let Some((channel, error)) = client
            .welcome()
            .get("errors")
            .and_then(Value::as_object)
            .and_then(|errors| errors.iter().next())
        {
            anyhow::bail!("subscribing to {channel} was refused: {error}");
        }
        Ok(client)
    }

    /// Like [`Client::connect`], with extra HTTP headers on the upgrade request (e.g.
    /// `("authorization", "Bearer ...")`, `("origin", ...)`). `Host`, `Upgrade`, `Connection`
    /// and the `Sec-WebSocket-Key`/`-Version` headers cannot be overridden.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let addr = timeout_at(deadline, resolve_ws_url(url))
            .await
            .map_err(|_| anyhow!("timed out resolving {url}"))??;
        let stream = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to {addr}"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        timeout_at(deadline, Self::connect_on(stream, url, headers))
            .await
            .map_err(|_| {
                anyhow!("timed out waiting for the WebSocket handshake and welcome from {url}")
            })?
    }

    /// Performs the WebSocket upgrade for `url` on an already connected TCP stream (for
    /// example one bound to a chosen source address with [`crate::os::tcp_connect`]) and waits
    /// for the welcome frame. No timeout of its own: wrap it in one.
    pub async fn connect_on(
        stream: TcpStream,
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        ws_host_port(&uri)?;
        let mut builder = ClientBuilder::from_uri(uri);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("invalid header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value for header {name}"))?;
            builder = builder
                .add_header(name.clone(), value)
                .with_context(|| format!("header {name} cannot be set"))?;
        }
        let (ws, _response) = builder
            .connect_on(TolerantStream::new(stream))
            .await
            .map_err(ws_error)?;
        let mut client = Client {
            ws,
            id: String::new(),
            welcome: Value::Null,
            queue: VecDeque::new(),
            next_request_id: 1,
            ended: false,
        };
        match client.read_event().await? {
            Event::Frame(v) if v["op"] == "welcome" => {
                client.id = v["client"]
                    .as_str()
                    .ok_or_else(|| anyhow!("welcome frame without a client id: {v}"))?
                    .to_string();
                client.welcome = v;
                Ok(client)
            }
            Event::Closed { code, reason } => {
                bail!("connection closed before the welcome frame: {code} {reason}")
            }
            other => bail!("expected a welcome frame first, got {other:?}"),
        }
    }

    /// The client id the server assigned (the welcome frame's `"client"`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole welcome frame.
    pub fn welcome(&self) -> &Value {
        &self.welcome
    }

    /// Sends `v` as one JSON text frame.
    pub async fn send_json(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// Sends `s` as one text frame, verbatim (it need not be JSON).
    pub async fn send_text(&mut self, s: &str) -> anyhow::Result<()> {
        self.ws.get_mut().set_tolerant(false);
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .map_err(ws_error)
    }

    /// Sends `b` as one binary frame.
    pub async fn send_binary(&mut self, b: &[u8]) -> anyhow::Result<()> {
        self.ws.get_mut().set_tolerant(false);
        self.ws
            .send(Message::binary(b.to_vec()))
            .await
            .map_err(ws_error)
    }

    /// Adds a fresh numeric `"id"` to `req` (replacing any it had), sends it and returns the
    /// matching reply frame: the whole `{"op":"reply",...}` object, whether it carries
    /// `result` or `error`. Frames that arrive meanwhile are queued for
    /// [`Client::next_event`]. Fails after 10 s without the reply, or if the connection ends.
    pub async fn request(&mut self, req: Value) -> anyhow::Result<Value> {
        self.request_timeout(req, REQUEST_TIMEOUT).await
    }

    /// [`Client::request`] with a caller-chosen timeout.
    pub async fn request_timeout(
        &mut self,
        mut req: Value,
        wait: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let Some(obj) = req.as_object_mut() else {
            bail!("a request must be a JSON object, got {req}");
        };
        obj.insert("id".into(), json!(id));
        self.send_json(&req).await?;
        let deadline = Instant::now() + wait;
        loop {
            let ev = match timeout_at(deadline, self.read_event()).await {
                Ok(ev) => ev?,
                Err(_) => bail!("timed out after {wait:?} waiting for the reply to {req}"),
            };
            match ev {
                Event::Frame(v) if v["op"] == "reply" && v["id"] == json!(id) => return Ok(v),
                Event::Closed { code, reason } => {
                    self.queue.push_back(Event::Closed {
                        code,
                        reason: reason.clone(),
                    });
                    bail!(
                        "connection closed ({code} {reason}) while waiting for the reply to {req}"
                    )
                }
                other => self.queue.push_back(other),
            }
        }
    }

    /// Sends a request like [`Client::request`] and returns the whole reply frame if it has no
    /// `error`; an `error` reply becomes a [`ReplyError`] (recoverable with `downcast_ref`).
    pub async fn request_ok(&mut self, req: Value) -> anyhow::Result<Value> {
        let reply = self.request(req).await?;
        if let Some(err) = reply.get("error") {
            return Err(anyhow::Error::new(ReplyError {
                code: err["code"].as_str().unwrap_or_default().to_string(),
                message: err["message"].as_str().unwrap_or_default().to_string(),
                reply: reply.clone(),
            }));
        }
        Ok(reply)
    }

    /// Sends a request and returns just the reply's `result` (`Value::Null` if absent); an
    /// `error` reply becomes a [`ReplyError`].
    pub async fn call(&mut self, req: Value) -> anyhow::Result<Value> {
        let mut reply = self.request_ok(req).await?;
        Ok(reply
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// Subscribes to `channels`; returns the whole reply frame (`{"op":"reply","id":..,
    /// "result":..}`), or a [`ReplyError`] if the reply has an `error`.
    pub async fn subscribe(&mut self, channels: &[&str]) -> anyhow::Result<Value> {
        self.request_ok(json!({"op": "subscribe", "channels": channels}))
            .await
    }

    /// Unsubscribes from `channels`; returns the whole reply frame, or a [`ReplyError`].
    pub async fn unsubscribe(&mut self, channels: &[&str]) -> anyhow::Result<Value> {
        self.request_ok(json!({"op": "unsubscribe", "channels": channels}))
            .await
    }

    /// Publishes `data` to `channels` over this WebSocket; returns the whole reply frame, or a
    /// [`ReplyError`].
    pub async fn publish(&mut self, channels: &[&str], data: Value) -> anyhow::Result<Value> {
        self.request_ok(json!({"op": "publish", "channels": channels, "data": data}))
            .await
    }

    /// Sends `data` directly to the client `to` (`{"op":"send",...}`); returns the whole reply
    /// frame, or a [`ReplyError`].
    pub async fn send_direct(&mut self, to: &str, data: Value) -> anyhow::Result<Value> {
        self.request_ok(json!({"op": "send", "to": to, "data": data}))
            .await
    }

    /// Application-level ping (`{"op":"ping"}`); returns the whole reply frame, or a
    /// [`ReplyError`].
    pub async fn ping(&mut self) -> anyhow::Result<Value> {
        self.request_ok(json!({"op": "ping"})).await
    }

    /// The next event: a queued one first, else the next one from the connection. Fails with
    /// a "timed out" error after `wait`, on a transport error, or when called again after
    /// [`Event::Closed`] was returned.
    pub async fn next_event(&mut self, wait: Duration) -> anyhow::Result<Event> {
        if let Some(ev) = self.queue.pop_front() {
            return Ok(ev);
        }
        match timeout(wait, self.read_event()).await {
            Ok(ev) => ev,
            Err(_) => bail!("timed out after {wait:?} waiting for an event"),
        }
    }

    /// The next JSON frame whose `"op"` is `op`; other events are skipped (dropped). Fails on
    /// timeout (`wait` in total) and when the connection closes.
    pub async fn next_op(&mut self, op: &str, wait: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.next_event(left).await {
                Ok(ev) => ev,
                Err(e) if e.to_string().starts_with("timed out") => {
                    bail!("timed out after {wait:?} waiting for an {op:?} frame")
                }
                Err(e) => return Err(e),
            };
            match ev {
                Event::Frame(v) if v["op"] == op => return Ok(v),
                Event::Closed { code, reason } => {
                    bail!("connection closed ({code} {reason}) while waiting for an {op:?} frame")
                }
                _ => {}
            }
        }
    }

    /// Keeps reading for `duration` (answering pings), queueing everything that arrives for
    /// [`Client::next_event`]. Returns early, without error, when the connection ends (the
    /// [`Event::Closed`] is queued).
    pub async fn pump(&mut self, duration: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        while !self.ended {
            match timeout_at(deadline, self.read_event()).await {
                Ok(ev) => self.queue.push_back(ev?),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Number of events queued for [`Client::next_event`].
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Sends a close frame (1000) and waits up to 2 s for the server to finish the close
    /// handshake. A connection the server already closed is not an error: whatever happens,
    /// the connection is gone afterwards.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ws.get_mut().set_tolerant(true);
        if self
            .ws
            .send(Message::close(Some(CloseCode::NORMAL_CLOSURE), ""))
            .await
            .is_err()
        {
            return Ok(());
        }
        let _ = timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }

    /// Reads the next event from the connection (not from the queue). Control frames are
    /// consumed here; the stream answers pings itself while being polled.
    async fn read_event(&mut self) -> anyhow::Result<Event> {
        if self.ended {
            bail!("connection closed");
        }
        self.ws.get_mut().set_tolerant(true);
        loop {
            let Some(msg) = self.ws.next().await else {
                self.ended = true;
                return Ok(Event::Closed {
                    code: 1006,
                    reason: "connection ended without a close frame".into(),
                });
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    self.ended = true;
                    return Err(ws_error(e).context("WebSocket read failed"));
                }
            };
            if let Some(text) = msg.as_text() {
                return Ok(match serde_json::from_str::<Value>(text) {
                    Ok(v) => Event::Frame(v),
                    Err(_) => Event::Text(text.to_string()),
                });
            }
            if let Some((code, reason)) = msg.as_close() {
                self.ended = true;
                let ev = Event::Closed {
                    code: code.into(),
                    reason: reason.to_string(),
                };
                // The stream queued the close acknowledgement; send it now.
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                return Ok(ev);
            }
            if msg.is_binary() {
                return Ok(Event::Text(
                    String::from_utf8_lossy(msg.as_payload()).into_owned(),
                ));
            }
            // ping / pong: nothing to report
        }
    }
}
