//! Lingering close: when an answer leaves part of a request body unread (a 413 from
//! `crate::http`'s body limit), the connection is not simply closed. Closing a socket with unread input
//! makes the kernel send a reset, which fails the write of a client still sending its body
//! and throws away the answer it has not read yet: a client that sends its whole body before
//! it reads (Python's `requests`, most simple clients) saw "connection reset", never the 413.
//! So, as nginx does, the server sends its answer, ends its side (FIN), and reads and drops
//! what still comes, for at most [`LINGER_BYTES`] and the handshake timeout, before it lets
//! the connection go.
//!
//! The pieces: [`Linger`], a per-connection switch a handler turns on (found in the
//! request's extensions, as [`super::Cutoff`] is), and [`Lingering`], the
//! connection's I/O as hyper holds it, which drains on its own task when hyper drops it with
//! the switch on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Most bytes read and dropped after the answer; a client sending more is reset then.
pub const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Asks for a lingering close of the connection a request came on (inserted by the server
/// for every request it serves with hyper).
#[derive(Clone, Default)]
pub struct Linger(Arc<AtomicBool>);

impl Linger {
    /// The connection drains the rest of its input before it closes.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A connection's I/O that lingers when dropped after [`Linger::request`].
pub struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always `Some` until dropped.
    io: Option<I>,
    linger: Linger,
    /// How long it lingers at most.
    within: Duration,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub fn new(io: I, linger: Linger, within: Duration) -> Lingering<I> {
        Lingering {
            io: Some(io),
            linger,
            within,
        }
    }

    /// The I/O itself, without the linger (a WebSocket upgrade takes its socket out).
    pub fn into_inner(mut self) -> I {
        self.io.take().expect("present until dropped")
    }

    fn io(&mut self) -> Pin<&mut I> {
        Pin::new(self.io.as_mut().expect("present until dropped"))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        if !self.linger.0.load(Ordering::Relaxed) {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(drain(io, self.within));
    }
}

/// Ends the server's side of `io`, then reads and drops its input until the peer closes, or
/// [`LINGER_BYTES`] or `within` pass.
pub async fn drain<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        // (hyper may have ended it already; a socket that is gone fails the read below.)
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// Dropped with the switch on, the server's side ends (the client reads EOF after the
    /// answer) and whatever the client still sends is taken, not reset.
    #[tokio::test]
    async fn a_requested_linger_drains_after_the_answer() {
        let (server, mut client) = pair().await;
        let linger = Linger::default();
        let mut io = Lingering::new(server, linger.clone(), Duration::from_secs(10));
        io.write_all(b"answer").await.unwrap();
        linger.request();
        drop(io);
        // Far more than the socket buffers hold: without the drain this write fails.
        let sent = client.write_all(&vec![0u8; 4 << 20]).await;
        assert!(sent.is_ok(), "{sent:?}");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer");
    }

    /// Without the switch a drop closes at once: nothing lingers.
    #[tokio::test]
    async fn without_the_switch_a_drop_just_closes() {
        let (server, mut client) = pair().await;
        let io = Lingering::new(server, Linger::default(), Duration::from_secs(10));
        drop(io);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        // The server's socket is gone: a large write is refused (reset or broken pipe).
        let sent = client.write_all(&vec![0u8; 4 << 20]).await;
        assert!(sent.is_err());
    }

    /// The drain stops at `within` even if the peer keeps the connection open and idle.
    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded_in_time() {
        let (server, _client) = pair().await;
        let started = tokio::time::Instant::now();
        drain(server, Duration::from_secs(3)).await;
        assert_eq!(started.elapsed().as_secs(), 3);
    }
}
