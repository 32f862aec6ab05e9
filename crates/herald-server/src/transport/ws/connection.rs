//! One WebSocket connection: a single task that reads frames and drains the client's outbox.
//!
//! Reading uses `readable()` + `try_read` into a buffer that is released whenever it is
//! empty, so an idle connection holds no read buffer. Writing drains everything queued (up to
//! a batch) into one contiguous buffer and writes it with as few system calls as the socket
//! allows. While a write is blocked on a full socket the task still notices a close request
//! (slow consumer, kick, ping timeout, shutdown) and drops the connection instead of waiting.
//!
//! The task is generic over its [`Transport`]: a plain `TcpStream`, or a TLS connection over
//! one ([`super::transport::TlsTransport`]).
//!
//! Closing, whoever starts it, is bounded by [`CLOSE_GRACE`]: the rest of a batch a close
//! interrupted (so the framing stays whole) and the close frame are written, the write side is
//! shut, and after the client is gone from the hub the task keeps reading, and discarding,
//! until the client's own close frame (or its end of the stream) arrives, so the client reads
//! everything sent before the socket closes (closing with unread input would reset the
//! connection and lose it). A peer that does neither in that time is cut off with a reset,
//! which frees what the kernel holds for it at once.
//!
//! A protocol violation and the client's own close frame end reading at once, but the close
//! is queued behind what is already in the outbox: the replies to everything that arrived
//! before it are written first (RFC 6455 lets an endpoint send its pending data before its
//! close frame; Autobahn's cases 3.2, 4.1.3, 5.15 and 7.1.6 expect it).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::client::{DisconnectReason, close_code, now_ms};
use herald_core::{ClientHandle, Disconnect};
use herald_protocol::ws::{self, Decoder, Incoming};
use tokio::time::Instant;

use super::dialect::{Dialect, DialectSession};
use super::transport::Transport;
use crate::admission::{Admission, Seat};
use crate::state::AppState;

/// How long a close may take: writing the last bytes and the close frame, then waiting for
/// the client's close frame.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most bytes moved from the outbox per write.
const WRITE_BATCH: usize = 64 * 1024;
/// Read-buffer growth step.
const READ_CHUNK: usize = 4096;

/// Serves one WebSocket connection: the future to spawn as its task. `head`, when the
/// transport writes the handshake's answer itself ([`crate::transport::direct`]), leaves in
/// the same write as the greeting; `seat` is held until the connection is gone.
///
/// The client is registered here, synchronously, and the future captures only what the
/// connection keeps (not the admission, nor what hyper read): every idle connection's task
/// is this future, sized for its largest state (`the_connection_task_stays_small`). An
/// `async fn` would keep each argument twice, as it was passed and where it was moved to.
pub fn run<D: Dialect, T: Transport>(
    dialect: D,
    state: Arc<AppState>,
    stream: T,
    leftover: Bytes,
    admission: Admission,
    head: Option<Bytes>,
    seat: Seat,
) -> impl Future<Output = ()> + Send {
    let client = open(&dialect, &state, admission);
    // Copy what hyper read past the handshake and let go of hyper's (much larger) buffer.
    let read_buf = BytesMut::from(&leftover[..]);
    drop(leftover);
    let head = match head {
        // Ahead of the greeting: the first write carries both.
        Some(head) if !dialect.greets_late() => {
            push_greeting(&client, head);
            None
        }
        head => head,
    };
    async move {
        let mut conn = Connection {
            writes: 0,
            session: dialect.session(&state, &client),
            state: &state,
            client: &client,
            stream,
            read_buf,
            decoder: Decoder::new(dialect.max_message_bytes(&state.config.websocket)),
            rate: Default::default(),
            linger_until: None,
        };
        if dialect.greets_late() {
            // Boxed: a rare path, which would otherwise size every connection's task.
            if let Some(greeting) = Box::pin(conn.session.on_open()).await {
                push_greeting(&client, greeting);
            }
            if let Some(head) = head {
                push_greeting(&client, head);
            }
        }
        let reason = conn.serve().await;
        conn.session.on_close().await;
        state.hub.disconnect(&client, reason);
        // Boxed: once-per-connection state that would otherwise size every idle task.
        Box::pin(conn.linger()).await;
        drop(seat);
    }
}

/// Registers the client, re-checks bans, queues the greeting and applies the credential.
fn open<D: Dialect>(dialect: &D, state: &AppState, admission: Admission) -> Arc<ClientHandle> {
    let Admission {
        info,
        extras,
        identity,
        bans_seen,
    } = admission;
    let client = state.hub.connect_as(dialect.format(), info, extras);
    // A ban put in force since the handshake's check may have missed this connection in its
    // sweep: look again, now that the client is listed (only then: usually nothing changed).
    let moved = state.hub.ban_generation() != bans_seen;
    if let Some(ban) = moved
        .then(|| crate::admission::ban_covering(state, &client, identity.admin))
        .flatten()
    {
        client.outbox.close(Disconnect::new(
            DisconnectReason::Banned,
            close_code::BANNED,
            ban.message(),
        ));
    }
    let applied = crate::admission::apply_identity(state, &client, &identity);
    if let Some(greeting) = dialect.greeting(state, &client) {
        push_greeting(&client, greeting);
    }
    if let Err(e) = applied {
        // The greeting is out: tell the client why its token's channels were refused.
        tracing::debug!(client = %client.id, error = %e.message, "connect-time subscription refused");
        if let Some(frame) = dialect.error_frame(&e) {
            state.hub.registry().push_or_close(&client, frame);
        }
    }
    client
}

/// Queues the greeting ahead of anything the subscriptions made before it already queued
/// (dropped if the connection is already closing).
fn push_greeting(client: &ClientHandle, greeting: Bytes) {
    let _ = client.outbox.push_front(greeting);
}

struct Connection<'a, S, T> {
    /// Writes led by a publication so far (to time one in `metrics::SAMPLE_EVERY`).
    writes: u32,
    session: S,
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    stream: T,
    read_buf: BytesMut,
    decoder: Decoder,
    rate: crate::limits::MessageRate,
    /// Set once our close frame is out: until when to wait for the client's.
    linger_until: Option<Instant>,
}

/// Control flow out of a step: keep serving, or the connection ended for this reason.
type Step = Result<(), DisconnectReason>;

/// Why a write stopped before its end.
enum Stopped {
    /// A close was requested while the socket was full; this many bytes were written.
    Closing(Disconnect, usize),
    /// The connection is gone.
    Gone,
}

impl<S: DialectSession + Send, T: Transport> Connection<'_, S, T> {
    async fn serve(&mut self) -> DisconnectReason {
        // Frames that arrived with the handshake.
        if let Err(reason) = self.process_read_buf().await {
            return reason;
        }
        loop {
            if let Err(reason) = self.flush().await {
                return reason;
            }
            tokio::select! {
                biased;
                _ = self.client.outbox.ready() => {}
                readable = self.stream.readable() => {
                    if readable.is_err() {
                        return DisconnectReason::ClosedByClient;
                    }
                    if let Err(reason) = self.read().await {
                        return reason;
                    }
                }
            }
        }
    }

    /// Counts a write of `bytes`, and the publish-to-write time of its first publication.
    fn written(&mut self, bytes: usize, since: Option<std::time::Instant>) {
        self.state.metrics.written(&mut self.writes, bytes, since);
    }

    /// Writes everything queued; performs a requested close once the queue is empty.
    async fn flush(&mut self) -> Step {
        loop {
            let mut batch = Vec::new();
            let drained = self.client.outbox.drain(&mut batch, WRITE_BATCH);
            if !batch.is_empty() {
                match self.write_all(&batch).await {
                    Ok(()) => self.written(batch.len(), drained.since),
                    Err(Stopped::Closing(disconnect, written)) => {
                        self.close(&disconnect, &batch[written..]).await;
                        return Err(disconnect.reason);
                    }
                    Err(Stopped::Gone) => return Err(DisconnectReason::ClosedByClient),
                }
            }
            if let Some(disconnect) = drained.closing {
                self.close(&disconnect, &[]).await;
                return Err(disconnect.reason);
            }
            if drained.frames == 0 || !self.client.outbox.has_pending() {
                return Ok(());
            }
        }
    }

    /// Writes `buf`, stopping if the connection is asked to close while the socket is full.
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), Stopped> {
        let mut written = 0;
        // (TLS: until the records holding `buf` are on the socket too.)
        while written < buf.len() || self.stream.needs_flush() {
            match self.stream.try_write(&buf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        ready = self.stream.writable() => {
                            ready.map_err(|_| Stopped::Gone)?;
                        }
                        _ = self.client.outbox.ready() => {
                            if let Some(d) = self.client.outbox.closing() {
                                return Err(Stopped::Closing(d, written));
                            }
                        }
                    }
                }
                Err(_) => return Err(Stopped::Gone),
            }
        }
        Ok(())
    }

    /// Writes `unsent` (the rest of a batch the close interrupted, so the client can still
    /// parse its frames) and the close frame, and shuts the write side down, within
    /// [`CLOSE_GRACE`]. Then [`Connection::linger`] waits for the client's close frame. A
    /// client that does not take it in time is cut off at once (a reset, which releases the
    /// socket's kernel buffers instead of keeping them while the kernel retries).
    async fn close(&mut self, disconnect: &Disconnect, unsent: &[u8]) {
        let deadline = Instant::now() + CLOSE_GRACE;
        let frame = ws::close_frame(disconnect.code, &disconnect.message);
        let last = if unsent.is_empty() {
            frame
        } else {
            Bytes::from([unsent, &frame[..]].concat())
        };
        match tokio::time::timeout_at(deadline, self.stream.finish(&last)).await {
            // Then wait for the client's close frame, unless this answers it.
            Ok(Ok(())) if disconnect.reason != DisconnectReason::ClosedByClient => {
                self.linger_until = Some(deadline)
            }
            Ok(Ok(())) => {}
            _ => self.stream.abort(),
        }
    }

    /// After our close frame: reads and discards until the client's close frame, the end of
    /// the stream or the deadline, then lets the socket go; at the deadline with a reset, as
    /// the peer may not be reading at all and the kernel would keep what is queued for it.
    async fn linger(&mut self) {
        let Some(deadline) = self.linger_until.take() else {
            return;
        };
        let answered = tokio::time::timeout_at(deadline, async {
            let mut decoding = true;
            loop {
                while decoding {
                    match self.decoder.decode(&mut self.read_buf) {
                        Ok(Some(Incoming::Close(..))) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        // Past a violation, frames cannot be told apart: wait for the end.
                        Err(_) => decoding = false,
                    }
                }
                if !decoding {
                    self.read_buf.clear();
                }
                if self.stream.readable().await.is_err() {
                    return;
                }
                if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                    self.read_buf.reserve(READ_CHUNK);
                }
                match self.stream.try_read_buf(&mut self.read_buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
        if answered.is_err() {
            self.stream.abort();
        }
    }

    async fn read(&mut self) -> Step {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => return Err(DisconnectReason::ClosedByClient),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Spurious readiness: don't keep the buffer we just reserved.
                self.release_empty_read_buf();
                return Ok(());
            }
            Err(_) => return Err(DisconnectReason::ClosedByClient),
        }
        self.client.touch(now_ms());
        self.process_read_buf().await
    }

    async fn process_read_buf(&mut self) -> Step {
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(event)) => {
                    self.handle(event).await?;
                    // Closing (a flood, a kick): read no further; the next flush writes what
                    // is queued and performs the close.
                    if self.client.outbox.closing().is_some() {
                        return Ok(());
                    }
                    // A client sending a burst of requests must not starve the tasks that
                    // deliver what it publishes: yield once the task's budget is spent.
                    tokio::task::consume_budget().await;
                }
                Ok(None) => break,
                Err(violation) => {
                    tracing::debug!(client = %self.client.id, reason = violation.reason, "protocol violation");
                    // Read no further; the next flush writes the replies to what came before
                    // the violation, then the close frame.
                    self.client.outbox.close(Disconnect::new(
                        DisconnectReason::ProtocolError,
                        violation.close_code,
                        violation.reason,
                    ));
                    return Ok(());
                }
            }
        }
        self.release_empty_read_buf();
        Ok(())
    }

    /// Idle connections keep no read buffer.
    fn release_empty_read_buf(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }

    async fn handle(&mut self, event: Incoming) -> Step {
        let data = matches!(
            event,
            Incoming::Text(_) | Incoming::Binary(_) | Incoming::TooLarge { .. }
        );
        // The rate check is synchronous and this awaits `handle_frame` directly: this future
        // lives in every connection's task, so no extra layer of state.
        if data && !self.admit_by_rate(&event) {
            return Ok(());
        }
        self.handle_frame(event).await
    }

    /// `limits.messages_per_second` for a data message: whether to handle it. Over the rate it
    /// is dropped and answered `rate_limited`; a flood closes the connection (4102) once the
    /// replies already queued are out (the next flush performs the close).
    fn admit_by_rate(&mut self, event: &Incoming) -> bool {
        use crate::limits::Verdict;
        match self.rate.check(self.state.guard(), self.client) {
            Verdict::Allow => true,
            Verdict::Drop => {
                let message = match event {
                    Incoming::Text(b) | Incoming::Binary(b) => &b[..],
                    _ => &[],
                };
                let error = crate::limits::rate_limited_error();
                if let Some(frame) = self.session.on_dropped(message, &error) {
                    self.state.hub.registry().push_or_close(self.client, frame);
                }
                false
            }
            Verdict::Close(disconnect) => {
                self.client.outbox.close(disconnect);
                false
            }
        }
    }

    async fn handle_frame(&mut self, event: Incoming) -> Step {
        // A dialect's handling of a message is boxed: awaited inline, its largest case (a
        // native publish or subscribe: about 1 KB) would size every idle connection's task
        // for the whole life of the connection; boxed it costs one short-lived allocation
        // per message received (`the_connection_task_stays_small`).
        let reply = match event {
            Incoming::Text(text) => Box::pin(self.session.on_text(text)).await,
            Incoming::Binary(data) => Box::pin(self.session.on_binary(data)).await,
            Incoming::TooLarge { len } => {
                let limit = self.decoder.max_message();
                self.session.on_too_large(len, limit)
            }
            Incoming::Ping(payload) => Some(ws::frame(ws::OP_PONG, &payload)),
            Incoming::Pong => None,
            Incoming::Close(code, _) => {
                // The decoder let only codes that may be sent through: echo it, or 1000 for a
                // close without a code (1005 is never sent). Read no further; the next flush
                // writes the replies to what came before the close, then the close frame.
                let echo = code.unwrap_or(close_code::NORMAL);
                let closed = Disconnect::new(DisconnectReason::ClosedByClient, echo, "");
                self.client.outbox.close(closed);
                return Ok(());
            }
        };
        if let Some(frame) = reply {
            // A client that never reads its replies ends up a slow consumer like any other.
            self.state.hub.registry().push_or_close(self.client, frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects;

    /// The size of the future `f` returns, without calling it.
    fn returned_size<A, B, C, D, E, F, G, R>(_: &impl FnOnce(A, B, C, D, E, F, G) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle connection is one task holding this future: what an await inside it holds
    /// is paid per connection, all the time (docs/performance.md, idle memory).
    #[test]
    fn the_connection_task_stays_small() {
        use tokio::net::TcpStream;
        let sizes = [
            (
                "native",
                returned_size(&run::<dialects::native::ws::Native, TcpStream>),
            ),
            (
                "simplysocket",
                returned_size(&run::<dialects::simplysocket::SimplySocket, TcpStream>),
            ),
            (
                "eventual",
                returned_size(&run::<dialects::eventual::Eventual, TcpStream>),
            ),
            (
                "subsocket",
                returned_size(&run::<dialects::subsocket::ws::SubSocket, TcpStream>),
            ),
            (
                "wspush",
                returned_size(&run::<dialects::wspush::ws::WsPush, TcpStream>),
            ),
            (
                "pushstream",
                returned_size(&run::<dialects::pushstream::ws::PushStream, TcpStream>),
            ),
        ];
        eprintln!("{sizes:?}");
        for (dialect, size) in sizes {
            assert!(
                size <= 1152,
                "{dialect}: the connection's future is {size} bytes"
            );
        }
    }
}
