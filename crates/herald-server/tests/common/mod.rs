//! Test support: a real server on 127.0.0.1:0 with its own data directory, and a raw
//! WebSocket peer for the cases a well-behaved client library will not produce (unmasked
//! frames, never reading, never answering pings).

#![allow(dead_code)]

pub mod browser;
pub mod raw_http;
pub mod services;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald_client::{Api, Client};
use herald_server::{Config, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub server: RunningServer,
    pub dir: Option<tempfile::TempDir>,
}

pub fn config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        admin_key: ADMIN_KEY.into(),
        ..Default::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let server = herald_server::start(config).await.expect("server starts");
        TestServer {
            server,
            dir: Some(dir),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn admin(&self) -> Api {
        Api::new(&self.http(), Some(ADMIN_KEY))
    }

    pub fn anonymous(&self) -> Api {
        Api::new(&self.http(), None)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url())
            .await
            .expect("client connects")
    }
}

/// Waits (up to 5 s) until `channel` has `n` subscribers, as the HTTP API reports it.
pub async fn wait_for_subscribers(srv: &TestServer, channel: &str, n: u64) {
    for _ in 0..250 {
        let path = format!("/api/v1/channels/{channel}");
        if let Ok((200, info)) = srv.admin().request("GET", &path, None).await
            && info["subscribers"] == n
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{channel} did not reach {n} subscribers within 5 s");
}

/// A WebSocket peer speaking raw frames over TCP.
pub struct RawPeer {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        Self::connect_with(addr, None).await
    }

    /// `recv_buffer`: a small receive buffer makes a non-reading peer fill up quickly.
    pub async fn connect_with(addr: SocketAddr, recv_buffer: Option<u32>) -> RawPeer {
        Self::open(addr, "/ws", "", recv_buffer).await
    }

    /// A WebSocket at `path`, with extra header lines (each ending in `\r\n`).
    pub async fn connect_to(addr: SocketAddr, path: &str, extra_headers: &str) -> RawPeer {
        Self::open(addr, path, extra_headers, None).await
    }

    /// A WebSocket at `path` whose handshake is sent in two writes, a pause apart: its head
    /// does not arrive in one read, so hyper serves the upgrade instead of the socket's own
    /// code (`transport::direct`).
    pub async fn connect_via_hyper(addr: SocketAddr, path: &str) -> RawPeer {
        Self::open_with(addr, path, "", None, true).await
    }

    /// The raw 101-or-not answer to an upgrade request at `path`.
    pub async fn handshake_status(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(Self::upgrade_request(addr, path, extra_headers).as_bytes())
            .await
            .unwrap();
        let mut peer = RawPeer {
            tcp,
            buf: Vec::new(),
        };
        let head = peer.read_until(b"\r\n").await;
        String::from_utf8_lossy(&head).trim().to_string()
    }

    fn upgrade_request(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        )
    }

    async fn open(
        addr: SocketAddr,
        path: &str,
        extra_headers: &str,
        recv_buffer: Option<u32>,
    ) -> RawPeer {
        Self::open_with(addr, path, extra_headers, recv_buffer, false).await
    }

    async fn open_with(
        addr: SocketAddr,
        path: &str,
        extra_headers: &str,
        recv_buffer: Option<u32>,
        split: bool,
    ) -> RawPeer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(addr).await.unwrap();
        let req = Self::upgrade_request(addr, path, extra_headers);
        if split {
            let (first, rest) = req.as_bytes().split_at(20);
            tcp.write_all(first).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tcp.write_all(rest).await.unwrap();
        } else {
            tcp.write_all(req.as_bytes()).await.unwrap();
        }
        let mut peer = RawPeer {
            tcp,
            buf: Vec::new(),
        };
        let head = peer.read_until(b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key: {head}"
        );
        peer
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn read_until(&mut self, marker: &[u8]) -> Vec<u8> {
        loop {
            if let Some(pos) = self.buf.windows(marker.len()).position(|w| w == marker) {
                let out = self.buf[..pos + marker.len()].to_vec();
                self.buf.drain(..pos + marker.len());
                return out;
            }
            assert!(self.fill().await > 0, "connection closed before {marker:?}");
        }
    }

    /// Next server frame as (opcode, payload); `None` when the connection closed.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (op, len7) = (self.buf[0] & 0x0F, (self.buf[1] & 0x7F) as usize);
                let (len, hdr) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return Some((op, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Next text frame as a string, skipping pings.
    pub async fn text(&mut self) -> String {
        loop {
            let (op, payload) = self.frame().await.expect("connection open");
            if op == 1 {
                return String::from_utf8(payload).unwrap();
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(1, text.as_bytes(), true).await;
    }

    /// Next text frame as JSON, skipping pings.
    pub async fn json(&mut self) -> serde_json::Value {
        loop {
            let (op, payload) = self.frame().await.expect("connection open");
            if op == 1 {
                return serde_json::from_slice(&payload).unwrap();
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.frame().await {
            if op == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }

    /// Sends a frame; `masked` false breaks the protocol on purpose.
    pub async fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let out = Self::encode(opcode, payload, masked);
        self.tcp.write_all(&out).await.unwrap();
    }

    /// Sends bytes as they are, in one write (several frames arrive together).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// A final frame as a client sends it (masked unless `masked` is false).
    pub fn encode(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 65535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [9u8, 8, 7, 6];
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    pub async fn send_json(&mut self, v: serde_json::Value) {
        self.send(1, v.to_string().as_bytes(), true).await;
    }
}

/// Whether the kernel holds a TCP socket from `local` to `remote` (Linux: /proc/net/tcp).
pub fn kernel_has_socket(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        port(fields[1]) == local.port() && port(fields[2]) == remote.port()
    })
}
