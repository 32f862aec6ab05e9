//! The byte stream under a WebSocket connection: [`Transport`] is the handful of non-blocking
//! operations the connection task uses (readiness, `try_read`, `try_write`, the final
//! close). Plain TCP implements it with `TcpStream`'s own methods, but for a read that empties
//! the socket, which clears its readiness at once. [`TlsTransport`] drives a `rustls::ServerConnection` by
//! hand over the same `TcpStream`: TLS records are read with `read_tls` and decrypted with
//! `process_new_packets`, plaintext goes into `writer()` and out with `write_tls`, each with
//! the socket's `try_read` / `try_write` semantics.

use std::future::Future;
use std::io::{self, Read, Write};
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the connection task needs from its socket. All methods have `TcpStream`'s semantics:
/// the `try_` ones never wait and report `WouldBlock` when the socket is not ready.
pub trait Transport: Send + Sync {
    /// Ready when [`Transport::try_read_buf`] may make progress; else the task is woken then.
    /// The waker goes into the socket's one reader slot (tokio's `poll_read_ready`), not a
    /// list of waiters: a wait given up (the outbox woke the task first, as on every
    /// delivery) costs nothing to drop.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Waits until [`Transport::try_read_buf`] may make progress.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::poll_fn(move |cx| self.poll_read_ready(cx))
    }
    /// Appends received bytes to `buf`; `Ok(0)` is the end of the stream.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes some of `buf` (possibly empty, to push out bytes the transport holds).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Bytes accepted by `try_write` are still held by the transport, not yet on the socket.
    fn needs_flush(&self) -> bool;
    /// Waits until the socket can take more bytes.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes `last` (the close frame) completely and shuts the write side down.
    fn finish(&mut self, last: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes dropping the socket reset the connection (`SO_LINGER` 0): for a peer that takes
    /// nothing, so the kernel frees what it holds at once instead of retrying for minutes.
    fn abort(&mut self);
}

impl Transport for TcpStream {
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    /// A read that does not fill the room offered took everything the socket had, so the
    /// socket's readiness is cleared with it, as a read that would block clears it: the task
    /// does not make one more `recvfrom` only to be told EAGAIN. Without a race: tokio clears
    /// readiness only if the driver saw no new event since the read began (data or a FIN
    /// that comes later wakes the task as usual; a FIN already seen stays seen).
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = self.as_raw_fd();
        let spare = buf.spare_capacity_mut();
        let room = spare.len();
        if room == 0 {
            return TcpStream::try_read_buf(self, buf);
        }
        let mut drained = 0;
        let read = self.try_io(tokio::io::Interest::READABLE, || {
            loop {
                // SAFETY: `spare` is `room` bytes of writable memory owned by `buf`.
                let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), room, 0) };
                match usize::try_from(n) {
                    Ok(n) if n > 0 && n < room => {
                        drained = n;
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(n) => return Ok(n),
                    Err(_) => match io::Error::last_os_error() {
                        e if e.kind() == io::ErrorKind::Interrupted => continue,
                        e => return Err(e),
                    },
                }
            }
        });
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained > 0 => drained,
            Err(e) => return Err(e),
        };
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    #[inline]
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    #[inline]
    fn needs_flush(&self) -> bool {
        false
    }

    #[inline]
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }

    async fn finish(&mut self, last: &[u8]) -> io::Result<()> {
        self.write_all(last).await?;
        self.shutdown().await
    }

    fn abort(&mut self) {
        let _ = self.set_zero_linger();
    }
}

/// A WebSocket over TLS: the TCP stream and the rustls connection taken over from the
/// `tokio_rustls` stream hyper served the handshake on.
pub struct TlsTransport {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Decrypted bytes rustls holds that were not read yet.
    plaintext: usize,
}

impl TlsTransport {
    /// Takes over `tls`, which may already hold received records or decrypted bytes that
    /// nobody has read yet (they are read first).
    pub fn new(tcp: TcpStream, mut tls: ServerConnection) -> io::Result<TlsTransport> {
        let state = tls.process_new_packets().map_err(invalid_data)?;
        let mut transport = TlsTransport {
            tcp,
            plaintext: state.plaintext_bytes_to_read(),
            tls,
        };
        // Normally nothing is left: hyper flushed the 101 answer.
        match transport.flush_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        Ok(transport)
    }

    /// Moves decrypted bytes into `buf`.
    fn read_plaintext(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let start = buf.len();
        buf.resize(start + self.plaintext, 0);
        let result = self.tls.reader().read(&mut buf[start..]);
        let n = *result.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        self.plaintext -= n;
        result
    }

    /// Writes the TLS records rustls holds; `WouldBlock` if the socket cannot take them all.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut SocketIo(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    async fn flush_tls_blocking(&mut self) -> io::Result<()> {
        loop {
            match self.flush_tls() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                other => return other,
            }
        }
    }
}

impl Transport for TlsTransport {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plaintext > 0 {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if self.plaintext > 0 {
                return self.read_plaintext(buf);
            }
            // Records may arrive in pieces: read until a whole one decrypts or the socket
            // has nothing more (WouldBlock, which also clears the socket's readiness).
            let eof = self.tls.read_tls(&mut SocketIo(&self.tcp))? == 0;
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Send the alert rustls queued, best effort.
                    let _ = self.flush_tls();
                    return Err(invalid_data(e));
                }
            };
            // Post-handshake messages (a TLS 1.3 key update) may need an answer; a full socket
            // leaves it queued for the next write.
            match self.flush_tls() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            self.plaintext = state.plaintext_bytes_to_read();
            if self.plaintext == 0 && (eof || state.peer_has_closed()) {
                return Ok(0);
            }
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bound what rustls holds: take new plaintext only once earlier records are out.
        self.flush_tls()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.tls.writer().write(buf)?;
        match self.flush_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn needs_flush(&self) -> bool {
        self.tls.wants_write()
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.tcp.writable()
    }

    async fn finish(&mut self, last: &[u8]) -> io::Result<()> {
        self.flush_tls_blocking().await?;
        // rustls takes a bounded amount of plaintext at a time (`last` may be the rest of a
        // 64 KiB batch and the close frame): write it out as it is taken.
        let mut written = 0;
        while written < last.len() {
            let n = self.tls.writer().write(&last[written..])?;
            if n == 0 {
                self.flush_tls_blocking().await?;
            }
            written += n;
        }
        self.tls.send_close_notify();
        self.flush_tls_blocking().await?;
        self.tcp.shutdown().await
    }

    fn abort(&mut self) {
        let _ = self.tcp.set_zero_linger();
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Blocking-style `Read`/`Write` over the non-blocking socket, for rustls's `read_tls` and
/// `write_tls`: `WouldBlock` passes through (and clears tokio's readiness).
struct SocketIo<'a>(&'a TcpStream);

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Waits for readiness and reads once, as the connection task does.
    async fn read_once(server: &mut TcpStream, buf: &mut BytesMut) -> usize {
        tokio::time::timeout(Duration::from_secs(10), Transport::readable(server))
            .await
            .expect("readable")
            .unwrap();
        buf.reserve(4096);
        Transport::try_read_buf(server, buf).unwrap()
    }

    /// A read that empties the socket clears its readiness, so nothing wakes the task for a
    /// read that would only be told EAGAIN; what comes after, data or the end, still does.
    #[tokio::test]
    async fn a_read_that_empties_the_socket_clears_its_readiness() {
        let (mut client, mut server) = pair().await;
        let mut buf = BytesMut::new();
        client.write_all(b"abc").await.unwrap();
        assert_eq!(read_once(&mut server, &mut buf).await, 3);
        // Nothing more: not readable (before, tokio kept the readiness until a read failed).
        let idle =
            tokio::time::timeout(Duration::from_millis(100), Transport::readable(&server)).await;
        assert!(idle.is_err(), "still readable after the socket was emptied");
        // More data wakes it.
        client.write_all(b"def").await.unwrap();
        assert_eq!(read_once(&mut server, &mut buf).await, 3);
        assert_eq!(&buf[..], b"abcdef");
        // Data and the end together: the data, then the end.
        client.write_all(b"xyz").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(read_once(&mut server, &mut buf).await, 3);
        assert_eq!(read_once(&mut server, &mut buf).await, 0);
        assert_eq!(&buf[..], b"abcdefxyz");
    }

    /// A read that fills the room offered leaves the socket readable: the rest is read next.
    #[tokio::test]
    async fn a_read_that_fills_the_buffer_keeps_the_readiness() {
        let (mut client, mut server) = pair().await;
        client.write_all(&[7u8; 10_000]).await.unwrap();
        let mut buf = BytesMut::with_capacity(16);
        tokio::time::timeout(Duration::from_secs(10), Transport::readable(&server))
            .await
            .unwrap()
            .unwrap();
        let first = Transport::try_read_buf(&mut server, &mut buf).unwrap();
        assert_eq!(first, buf.capacity());
        let mut total = first;
        while total < 10_000 {
            total += read_once(&mut server, &mut buf).await;
        }
        assert_eq!(total, 10_000);
    }
}
