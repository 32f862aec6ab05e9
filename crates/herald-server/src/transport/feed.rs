//! The streaming HTTP response of a client on an HTTP transport, and the long-poll wait.
//!
//! A [`Stream`] is a client already admitted and subscribed by its dialect. [`respond`] turns
//! it into one long response whose body is the client's outbox, framed per [`Framing`]:
//!
//! - **SSE**: each publication record becomes an event whose `id` lists the connection's
//!   position in every channel it received from (`offset,epoch,channel` separated by
//!   spaces), so the browser's automatic reconnect (`Last-Event-ID`) lets the dialect recover
//!   exactly what was missed; keep-alives become comments; everything else a `data:` event.
//! - **Lines**: each record's payload as a line, as the dialect wrote it.
//!
//! The same outbox limit applies as on a WebSocket (a reader that falls behind is closed as a
//! slow consumer). The connection ends when the reader goes (the body is dropped), when the
//! client is closed (kick, ban, slow consumer, time-out: the dialect's last record, given
//! [`CUTOFF_GRACE`] to be taken, else the connection is cut off through its [`Cutoff`]), or
//! at shutdown. Whatever way it ends, the client leaves the hub.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use herald_core::ClientHandle;
use herald_core::client::{Disconnect, DisconnectReason, now_ms};
use herald_protocol::records::{self, Positions, Record};

use crate::admission::Seat;
use crate::state::AppState;

/// Most bytes handed to the HTTP layer at once.
const CHUNK: usize = 64 * 1024;
/// How long a closed connection's reader has to take its last bytes before it is cut off.
pub const CUTOFF_GRACE: Duration = Duration::from_secs(2);

/// Ends the HTTP connection a request came on (inserted by the server for every request):
/// for a streaming response whose reader stopped reading, which the HTTP layer would
/// otherwise keep waiting to write to.
#[derive(Clone, Default)]
pub struct Cutoff(pub Arc<tokio::sync::Notify>);

/// How records are written into the response body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// Server-Sent Events.
    Sse,
    /// Each record's payload and a `\n`.
    Lines,
}

/// A client admitted and subscribed by its dialect, to be served one long response.
pub struct Stream {
    pub client: Arc<ClientHandle>,
    /// Its place among the connection limits, held until the response ends.
    pub seat: Seat,
    pub framing: Framing,
    pub content_type: &'static str,
    /// Where the SSE ids start (the positions the client resumed from).
    pub positions: Positions,
    /// The dialect's last records for a closed client (e.g. a `close` line), if any.
    pub closing: fn(&Disconnect) -> Option<Bytes>,
}

/// The response that streams `stream`'s outbox, with the connection's `cutoff`.
pub fn respond(state: Arc<AppState>, stream: Stream, cutoff: Cutoff) -> Response {
    let Stream {
        client,
        seat,
        framing,
        content_type,
        positions,
        closing,
    } = stream;
    let feed = Feed {
        framing,
        state,
        client,
        positions,
        closing,
        cutoff,
        writes: 0,
        _seat: seat,
    };
    // The connection's writer takes the feed: `transport::direct` runs it on the socket
    // itself; hyper, by polling the body, which then starts it as a task of its own.
    let slot = Arc::new(parking_lot::Mutex::new(Some(feed)));
    let body_slot = slot.clone();
    let body = futures_util::stream::unfold(None, move |rx: Option<Receiver>| {
        let slot = body_slot.clone();
        async move {
            let mut rx = match rx {
                Some(rx) => rx,
                None => {
                    let feed = slot.lock().take()?;
                    // One chunk in flight: the feed waits while the HTTP layer cannot
                    // write, and notices a close meanwhile.
                    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
                    tokio::spawn(feed.run(tx));
                    rx
                }
            };
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), Some(rx)))
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(DirectFeed(slot));
    resp
}

type Receiver = tokio::sync::mpsc::Receiver<Bytes>;

/// A streaming response's feed, for a writer that serves it on the socket itself
/// ([`Feed::run_on`]) instead of polling the body.
#[derive(Clone)]
pub struct DirectFeed(Arc<parking_lot::Mutex<Option<Feed>>>);

impl DirectFeed {
    pub fn take(&self) -> Option<Feed> {
        self.0.lock().take()
    }
}

/// Lets a page of another origin read the response (`EventSource`, `fetch`), when its
/// `Origin` passed admission (`websocket.allowed_origins`, if set).
pub fn allow_origin(request: &HeaderMap, response: &mut HeaderMap) {
    if let Some(origin) = request.get(header::ORIGIN) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// An admitted client of an HTTP transport, which leaves the hub when this is dropped: once
/// a long-poll has its answer, or when the request's future is dropped because its reader
/// went away (code after an `.await` in the handler then never runs) at any point between
/// admission and the response. A stream hands its client on with [`Leaving::keep`] (its
/// [`Feed`] then disconnects it).
pub struct Leaving {
    state: Arc<AppState>,
    client: Option<Arc<ClientHandle>>,
}

impl Leaving {
    pub fn new(state: &Arc<AppState>, client: &Arc<ClientHandle>) -> Self {
        Leaving {
            state: state.clone(),
            client: Some(client.clone()),
        }
    }

    pub fn client(&self) -> &Arc<ClientHandle> {
        self.client
            .as_ref()
            .expect("a Leaving holds its client until kept")
    }

    /// The client, which from now on someone else disconnects.
    pub fn keep(mut self) -> Arc<ClientHandle> {
        self.client
            .take()
            .expect("a Leaving holds its client until kept")
    }
}

impl Drop for Leaving {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.state
                .hub
                .disconnect(&client, DisconnectReason::ClosedByClient);
        }
    }
}

/// One long-poll: waits up to `wait` for something to deliver (what a recovery replayed is
/// there already) and takes the client's records.
pub async fn wait(client: &ClientHandle, wait: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + wait;
    while !client.outbox.has_pending() && !client.outbox.is_closing() {
        if tokio::time::timeout_at(deadline, client.outbox.ready())
            .await
            .is_err()
        {
            break;
        }
    }
    let mut batch = Vec::new();
    client.outbox.drain(&mut batch, usize::MAX);
    batch
}

/// Feeds the response body from the client's outbox, framed for the transport.
pub struct Feed {
    framing: Framing,
    state: Arc<AppState>,
    client: Arc<ClientHandle>,
    /// SSE: the last position received in each channel (the events' `id`).
    positions: Positions,
    closing: fn(&Disconnect) -> Option<Bytes>,
    cutoff: Cutoff,
    /// Writes led by a publication so far (to time one in `metrics::SAMPLE_EVERY`).
    writes: u32,
    _seat: Seat,
}

impl Feed {
    /// Until the connection is over: the reader went away (the body was dropped), or the
    /// client was closed.
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Bytes>) {
        let mut pending: Option<Bytes> = None;
        let mut since = None;
        loop {
            if pending.is_none() {
                let mut batch = Vec::new();
                let drained = self.client.outbox.drain(&mut batch, CHUNK);
                if drained.closing.is_some() {
                    self.close(&tx, None, batch).await;
                    return;
                }
                if !batch.is_empty() {
                    pending = Some(self.frame(&batch));
                    since = drained.since;
                }
            }
            tokio::select! {
                permit = tx.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        let chunk = pending.take().expect("pending");
                        self.written(chunk.len(), since.take());
                        permit.send(chunk);
                        // The HTTP layer took the previous chunk: the reader is alive.
                        self.client.touch(now_ms());
                    }
                    Err(_) => return, // The reader went away.
                },
                _ = self.client.outbox.ready() => {
                    if pending.is_some() && self.client.outbox.is_closing() {
                        // Closed while the reader was not taking what it had.
                        self.close(&tx, pending.take(), Vec::new()).await;
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }

    /// Writes the feed straight to a connection, after `head` (the response head, which
    /// leaves with the first records), each batch passed through `wrap` (the connection's
    /// chunk framing), until the reader goes (`reader` ends) or the client is closed: then
    /// its last records, which the reader has [`CUTOFF_GRACE`] to take before the connection
    /// is reset (through `fd`), and `end` (the last chunk).
    pub async fn run_on<R, W>(
        mut self,
        mut reader: R,
        mut writer: W,
        fd: std::os::fd::RawFd,
        head: Vec<u8>,
        chunked: bool,
    ) where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut pending = BytesMut::from(&head[..]);
        drop(head);
        let mut since = None;
        if !self.client.outbox.is_closing() {
            // The first records (a greeting, the subscription) leave with the head.
            let mut batch = Vec::new();
            since = self.client.outbox.drain(&mut batch, CHUNK).since;
            self.frame_chunk(&mut pending, &batch, chunked);
        }
        let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
        let mut written = 0;
        let mut cut_at: Option<tokio::time::Instant> = None;
        let mut scratch = [0u8; 64];
        loop {
            if written == pending.len() {
                if cut_at.is_some() {
                    let _ = writer.shutdown().await;
                    return; // Everything, the last records too, was written.
                }
                if written > 0 {
                    // The reader took what it had: it is alive.
                    self.client.touch(now_ms());
                    self.written(written, since.take());
                }
                pending.clear();
                written = 0;
                let mut batch = Vec::new();
                let drained = self.client.outbox.drain(&mut batch, CHUNK);
                since = drained.since;
                if drained.closing.is_some() {
                    let last = self.last_records(batch);
                    self.frame_chunk(&mut pending, &last, chunked);
                    pending.extend_from_slice(end);
                    cut_at = Some(tokio::time::Instant::now() + CUTOFF_GRACE);
                } else {
                    self.frame_chunk(&mut pending, &batch, chunked);
                }
                if pending.is_empty() && pending.capacity() > 0 {
                    pending = BytesMut::new(); // An idle connection keeps no buffer.
                }
            }
            let idle = written == pending.len();
            tokio::select! {
                n = writer.write(&pending[written..]), if !idle => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => written += n,
                },
                _ = self.client.outbox.ready(), if cut_at.is_none() => {
                    if !idle && self.client.outbox.is_closing() {
                        // Closed while the reader was not taking what it had: its last
                        // records go after what is left, within the grace.
                        let mut rest = BytesMut::from(&pending[written..]);
                        let last = self.last_records(Vec::new());
                        self.frame_chunk(&mut rest, &last, chunked);
                        rest.extend_from_slice(end);
                        (pending, written) = (rest, 0);
                        cut_at = Some(tokio::time::Instant::now() + CUTOFF_GRACE);
                    }
                }
                read = reader.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return, // The reader went.
                    Ok(_) => {} // Anything sent on a stream is ignored.
                },
                _ = tokio::time::sleep_until(cut_at.unwrap_or_else(tokio::time::Instant::now)), if cut_at.is_some() => {
                    reset_on_close(fd);
                    return;
                }
            }
        }
    }

    /// Counts a write of `bytes`, and the publish-to-write time of its first publication.
    fn written(&mut self, bytes: usize, since: Option<std::time::Instant>) {
        self.state.metrics.written(&mut self.writes, bytes, since);
    }

    /// A closed client's last records (to frame): `batch`, what the outbox still holds (a
    /// kick flushes, a slow consumer's queue was dropped) and the dialect's closing records.
    /// The client leaves the hub.
    fn last_records(&mut self, mut batch: Vec<u8>) -> Vec<u8> {
        let disconnect = loop {
            let drained = self.client.outbox.drain(&mut batch, usize::MAX);
            if let Some(d) = drained.closing {
                break d;
            }
            if drained.frames == 0 {
                break Disconnect::timed_out();
            }
        };
        if let Some(last) = (self.closing)(&disconnect) {
            batch.extend_from_slice(&last);
        }
        self.state.hub.disconnect(&self.client, disconnect.reason);
        batch
    }

    /// The end of a closed client: what was not yet handed over (`unsent`, then the records
    /// of `batch` and whatever the outbox still holds: a kick flushes, a slow consumer's
    /// queue was dropped), then the dialect's closing records, handed over within
    /// [`CUTOFF_GRACE`], else the connection is cut off. The client leaves the hub.
    async fn close(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        unsent: Option<Bytes>,
        batch: Vec<u8>,
    ) {
        let mut last = BytesMut::new();
        if let Some(unsent) = unsent {
            last.extend_from_slice(&unsent);
        }
        let records = self.last_records(batch);
        last.extend_from_slice(&self.frame(&records));
        if tokio::time::timeout(CUTOFF_GRACE, tx.send(last.freeze()))
            .await
            .is_err()
        {
            self.cutoff.0.notify_one();
        }
    }

    /// Records as the transport frames them.
    fn frame(&mut self, batch: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(batch.len() + batch.len() / 4 + 16);
        self.frame_into(&mut out, batch);
        out.freeze()
    }

    /// Records as the transport frames them, appended to `out`.
    fn frame_into(&mut self, out: &mut BytesMut, batch: &[u8]) {
        use std::fmt::Write as _;
        out.reserve(batch.len() + batch.len() / 4 + 16);
        for record in records::parse(batch) {
            match (self.framing, &record) {
                (Framing::Lines, _) => {
                    out.extend_from_slice(record.payload());
                    out.extend_from_slice(b"\n");
                }
                (Framing::Sse, Record::Keepalive(_)) => out.extend_from_slice(b": ping\n\n"),
                (Framing::Sse, Record::Message { position, payload }) => {
                    self.positions.advance(position);
                    out.extend_from_slice(b"id: ");
                    let _ = write!(out, "{}", self.positions);
                    out.extend_from_slice(b"\ndata: ");
                    out.extend_from_slice(payload);
                    out.extend_from_slice(b"\n\n");
                }
                (Framing::Sse, Record::Other(payload)) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(payload);
                    out.extend_from_slice(b"\n\n");
                }
            }
        }
    }

    /// `batch` framed onto `out`, as one HTTP/1.1 chunk when `chunked` (the size written in
    /// fixed width, zero-padded as the grammar allows, so nothing is copied twice).
    fn frame_chunk(&mut self, out: &mut BytesMut, batch: &[u8], chunked: bool) {
        if !chunked {
            return self.frame_into(out, batch);
        }
        let start = out.len();
        out.extend_from_slice(b"00000000\r\n");
        self.frame_into(out, batch);
        let len = out.len() - start - 10;
        if len == 0 {
            out.truncate(start); // An empty chunk would end the body.
            return;
        }
        let hex = format!("{len:08x}");
        out[start..start + 8].copy_from_slice(hex.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The reader went away (or the connection ended): the client leaves the hub (a
        // second disconnect of a client already gone does nothing).
        self.state
            .hub
            .disconnect(&self.client, DisconnectReason::ClosedByClient);
    }
}

/// Makes closing the socket `fd` reset the connection (`SO_LINGER` 0).
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, still open (its owner is dropped after this
    // call); SO_LINGER takes a `linger` of the given size.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
