//! Streaming responses and WebSocket upgrades served on the connection itself, without hyper.
//!
//! A connection that opens with a streaming request (SSE, NDJSON, push-stream's `/ev` and
//! `/sub`: the paths a listener lists in its [`StreamPaths`]) is one long response, and
//! hyper would keep its read and write buffers (about 16 KB) for all of it. Such a request is
//! recognised from the connection's first read ([`open`]): it goes through the same router,
//! and its response is written here: a client's stream by its feed itself, on the socket
//! ([`super::feed::Feed::run_on`], in a task holding only the feed: no channel or buffer of
//! its own), anything else (a refusal) chunk by chunk until the body ends, the reader goes
//! or the response's [`Cutoff`] fires; then the connection closes.
//!
//! A plain-TCP WebSocket upgrade of one of the listener's upgrade paths (`/ws`) goes through
//! the same router and handler ([`upgrade`]); the handler hands over a [`Starter`] instead of
//! waiting for hyper's upgrade, and the connection's task (spawned: this one ends) writes
//! the 101 and the greeting in its first write.
//!
//! Anything else (another path, TLS for upgrades, a request whose head did not arrive in one
//! read, a body) is handed to hyper with the bytes already read in front ([`Prefixed`]), so
//! nothing changes for it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Version, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

use super::feed::{Cutoff, reset_on_close};

/// Most bytes of the first read.
const FIRST_READ: usize = 4096;
/// Most headers a streaming request may carry.
const MAX_HEADERS: usize = 48;

/// The paths of a listener served here: those whose requests are streams (an entry ending in
/// `/` matches every path under it, any other exactly), and the WebSocket upgrade paths
/// (exact) whose 101 this module writes with the greeting.
#[derive(Clone, Debug, Default)]
pub struct StreamPaths {
    streams: Vec<String>,
    upgrades: Vec<String>,
}

impl StreamPaths {
    pub fn new(paths: impl IntoIterator<Item = String>) -> StreamPaths {
        StreamPaths {
            streams: paths.into_iter().collect(),
            upgrades: Vec::new(),
        }
    }

    /// With these WebSocket upgrade paths too.
    pub fn with_upgrades(mut self, paths: impl IntoIterator<Item = String>) -> StreamPaths {
        self.upgrades = paths.into_iter().collect();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.upgrades.is_empty()
    }

    /// Whether `path` is an upgrade path served here.
    pub fn upgrades(&self, path: &str) -> bool {
        self.upgrades.iter().any(|p| p == path)
    }

    pub fn matches(&self, path: &str) -> bool {
        self.streams.iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    }
}

/// What a connection opened with.
pub enum Opening {
    /// A streaming request, to [`serve`].
    Stream(Box<Request<Body>>),
    /// A WebSocket upgrade of one of the listener's upgrade paths (and what the client sent
    /// after the request, already read), to [`upgrade`].
    Upgrade(Box<Request<Body>>, Bytes),
    /// Anything else: the bytes read so far, for hyper.
    Other(Bytes),
    /// Nothing within the time allowed, or the peer went.
    Closed,
}

/// Reads the connection's first bytes (within `timeout`) and sorts the request.
pub async fn open<I: AsyncRead + Unpin + 'static>(
    io: &mut I,
    paths: &StreamPaths,
    timeout: Duration,
) -> Opening {
    // Upgrades are served here on plain TCP only (a TLS connection's go through hyper).
    let plain = std::any::TypeId::of::<I>() == std::any::TypeId::of::<tokio::net::TcpStream>();
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    match tokio::time::timeout(timeout, io.read_buf(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Opening::Closed,
    }
    sort(buf, paths, plain)
}

/// Sorts a connection's first read (`plain`: on plain TCP, where upgrades are served here).
/// Pure, so that it can be fuzzed (`fuzz/fuzz_targets/http_opening.rs`).
#[doc(hidden)]
pub fn sort(mut buf: BytesMut, paths: &StreamPaths, plain: bool) -> Opening {
    if let Some(req) = stream_request(&buf, paths) {
        return Opening::Stream(Box::new(req));
    }
    match upgrade_request(&buf, paths).filter(|_| plain) {
        Some((req, len)) => {
            let rest = buf.split_off(len).freeze();
            Opening::Upgrade(Box::new(req), rest)
        }
        None => Opening::Other(buf.freeze()),
    }
}

/// The WebSocket upgrade in `bytes` (a whole bodiless GET with `Upgrade: websocket` for one
/// of `paths`' upgrade paths), and the length of its head.
fn upgrade_request(bytes: &[u8], paths: &StreamPaths) -> Option<(Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(bytes).ok()? else {
        return None;
    };
    let path = parsed.path?;
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    if !paths.upgrades(path.split('?').next().unwrap_or(path)) {
        return None;
    }
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .version(Version::HTTP_11);
    let mut websocket = false;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
        if h.name.eq_ignore_ascii_case("upgrade") {
            websocket |= std::str::from_utf8(h.value)
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        }
        req = req.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    if !websocket {
        return None;
    }
    Some((req.body(Body::empty()).ok()?, len))
}

/// Spawns a WebSocket connection's task on a plain TCP socket: the socket, what the client
/// sent after its request, and the 101 answer to write first.
pub type Starter = Box<dyn FnOnce(tokio::net::TcpStream, Bytes, Bytes) + Send>;

/// Put in an upgrade request served here: the upgrade handler hands over how to start the
/// connection instead of waiting for hyper's upgrade.
#[derive(Clone, Default)]
pub struct DirectUpgrade(Arc<parking_lot::Mutex<Option<Starter>>>);

impl DirectUpgrade {
    pub fn hand_over(&self, starter: Starter) {
        *self.0.lock() = Some(starter);
    }

    fn take(&self) -> Option<Starter> {
        self.0.lock().take()
    }
}

/// Serves a WebSocket upgrade on a plain TCP connection itself: the router judges it as
/// any handshake; a 101 starts the connection's task here, whose first write carries the
/// 101 and the greeting together; a refusal is written and the connection closed.
pub async fn upgrade(
    stream: tokio::net::TcpStream,
    fd: std::os::fd::RawFd,
    mut req: Request<Body>,
    rest: Bytes,
    router: axum::Router,
    remote: SocketAddr,
) {
    let slot = DirectUpgrade::default();
    req.extensions_mut().insert(ConnectInfo(remote));
    req.extensions_mut().insert(Cutoff::default());
    req.extensions_mut().insert(slot.clone());
    let Ok(resp) = router.oneshot(req).await;
    match slot.take() {
        Some(start) if resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS => {
            let head = response_head(&resp, Version::HTTP_11, false, None);
            drop(resp);
            // A task of its own, so this (larger) one ends and holds nothing for the
            // connection's life.
            start(stream, rest, Bytes::from(head));
        }
        _ => write_response(stream, fd, resp, Version::HTTP_11, Cutoff::default()).await,
    }
}

/// The request in `bytes` if it is a whole GET head, without a body, for one of `paths`.
fn stream_request(bytes: &[u8], paths: &StreamPaths) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(bytes).ok()? else {
        return None;
    };
    let path = parsed.path?;
    if len != bytes.len() || parsed.method? != "GET" {
        return None;
    }
    if !paths.matches(path.split('?').next().unwrap_or(path)) {
        return None;
    }
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .version(match parsed.version? {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None; // A body: hyper's.
        }
        req = req.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    req.body(Body::empty()).ok()
}

/// Serves a streaming request on the connection: the router's response, written as it
/// comes (chunked for HTTP/1.1), until the body ends, the reader goes or `cutoff` fires
/// (then the connection is reset, through `fd`). The connection closes after it.
pub async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    fd: std::os::fd::RawFd,
    mut req: Request<Body>,
    router: axum::Router,
    remote: SocketAddr,
    cutoff: Cutoff,
) {
    let version = req.version();
    req.extensions_mut().insert(ConnectInfo(remote));
    req.extensions_mut().insert(cutoff.clone());
    let Ok(resp) = router.oneshot(req).await;
    write_response(io, fd, resp, version, cutoff).await;
}

/// A response's head as HTTP/1 writes it (with `transfer-encoding: chunked` when `chunked`,
/// else the body's `length` if known).
fn response_head(
    resp: &axum::response::Response,
    version: Version,
    chunked: bool,
    length: Option<u64>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let status = resp.status();
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length.filter(|_| !resp.headers().contains_key(header::CONTENT_LENGTH))
    {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    if status != axum::http::StatusCode::SWITCHING_PROTOCOLS {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes `resp` on the connection (a client's stream by its feed, anything else chunk by
/// chunk), then closes it. A client's stream is served by a task of its own, holding only the
/// feed's future: this one (routing, the response's body) would otherwise size the task of
/// every open stream for its whole life (`tests/idle_memory.rs`).
async fn write_response<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    fd: std::os::fd::RawFd,
    resp: axum::response::Response,
    version: Version,
    cutoff: Cutoff,
) {
    let chunked =
        version == Version::HTTP_11 && !resp.headers().contains_key(header::CONTENT_LENGTH);
    let length = (!chunked)
        .then(|| http_body::Body::size_hint(resp.body()).exact())
        .flatten();
    let head = response_head(&resp, version, chunked, length);
    let (parts, mut body) = resp.into_parts();
    let feed = parts
        .extensions
        .get::<super::feed::DirectFeed>()
        .and_then(|f| f.take());
    drop(parts);
    let (mut rd, mut wr) = tokio::io::split(io);
    if let Some(feed) = feed {
        // A client's stream: its feed writes to the socket itself.
        drop(body);
        tokio::spawn(feed.run_on(rd, wr, fd, head, chunked));
        return;
    }
    let mut out = head;
    // The first chunk (the welcome, the subscription) leaves with the head when it is ready.
    let mut ended = false;
    match futures_util::FutureExt::now_or_never(body.frame()) {
        Some(Some(Ok(frame))) => {
            if let Ok(data) = frame.into_data() {
                encode(&mut out, &data, chunked);
            }
        }
        Some(_) => ended = true,
        None => {}
    }
    let mut scratch = [0u8; 64];
    loop {
        if ended && chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            let written = tokio::select! {
                r = wr.write_all(&out) => r.is_ok(),
                _ = cutoff.0.notified() => {
                    reset_on_close(fd);
                    return;
                }
            };
            if !written {
                return;
            }
            out.clear();
        }
        if ended {
            let _ = wr.shutdown().await;
            return;
        }
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        encode(&mut out, &data, chunked);
                    }
                }
                _ => ended = true,
            },
            read = rd.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return, // The reader went.
                Ok(_) => {} // Anything it sends on a stream is ignored.
            },
            _ = cutoff.0.notified() => {
                reset_on_close(fd);
                return;
            }
        }
    }
}

/// Appends `data` to `out`, as a chunk when `chunked`.
fn encode(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// What a listener serves: its router, and which of its paths are streams
/// ([`crate::transport::direct`]).
#[derive(Clone)]
pub struct Served {
    pub router: axum::Router,
    pub streams: Arc<StreamPaths>,
    /// The router has the HTTP API, whose publish requests are served without hyper
    /// (`crate::http::direct`).
    pub api: bool,
}

impl Served {
    /// A router without streaming paths.
    pub fn plain(router: axum::Router) -> Served {
        Served {
            router,
            streams: Default::default(),
            api: false,
        }
    }
}

/// A connection with bytes already read from it in front: reads take those first. Writes go
/// straight through.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(io: I, prefix: Bytes) -> Prefixed<I> {
        Prefixed { prefix, io }
    }

    /// The connection and what of the prefix was not read yet.
    pub fn into_parts(self) -> (I, Bytes) {
        (self.io, self.prefix)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_match_exactly_or_under_a_prefix() {
        let paths = StreamPaths::new(["/sse".to_string(), "/ps/ev/".to_string()]);
        assert!(paths.matches("/sse"));
        assert!(!paths.matches("/sse2"));
        assert!(paths.matches("/ps/ev/a/b"));
        assert!(!paths.matches("/ps/ev"));
        assert!(!paths.matches("/ws"));
    }

    #[test]
    fn only_whole_bodiless_gets_of_stream_paths_are_streams() {
        let paths = StreamPaths::new(["/sse".to_string()]);
        let get = b"GET /sse?channels=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1,e,a\r\n\r\n";
        let req = stream_request(get, &paths).expect("a stream");
        assert_eq!(req.uri(), "/sse?channels=a");
        assert_eq!(req.headers()["last-event-id"], "1,e,a");
        assert_eq!(req.version(), Version::HTTP_11);
        // Not whole, another path, another method, a body, more than the head: hyper's.
        for other in [
            &b"GET /sse?channels=a HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /sse HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\nGET /sse HTTP/1.1\r\n\r\n",
        ] {
            assert!(stream_request(other, &paths).is_none());
        }
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first_then_the_connection() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b, Bytes::from_static(b"hello"));
        let mut all = String::new();
        p.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
