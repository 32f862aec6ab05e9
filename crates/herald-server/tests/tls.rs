//! HTTPS and WSS over real sockets with a self-signed certificate made at test time (rcgen):
//! the API and `/healthz` over TLS, WebSocket round trips over TLS (small and multi-record
//! messages in both directions, a dialect, closing from either side), the plain listener
//! working alongside, and certificate problems failing the start with the key named.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{ADMIN_KEY, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
struct TestCert {
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn new() -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        TestCert {
            der: certified.cert.der().clone(),
            dir,
        }
    }

    fn cert_file(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_file(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

struct TlsServer {
    srv: TestServer,
    cert: TestCert,
}

impl TlsServer {
    async fn start() -> TlsServer {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut herald_server::Config)) -> TlsServer {
        let cert = TestCert::new();
        let srv = TestServer::start_with(|c| {
            c.tls.listen = "127.0.0.1:0".into();
            c.tls.cert_file = cert.cert_file();
            c.tls.key_file = cert.key_file();
            tweak(c);
        })
        .await;
        TlsServer { srv, cert }
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to the TLS listener, the certificate verified for `localhost`.
    async fn connect(&self) -> TlsStream<TcpStream> {
        self.connect_with(None).await
    }

    /// `recv_buffer`: a small receive buffer makes a non-reading peer fill up quickly.
    async fn connect_with(&self, recv_buffer: Option<u32>) -> TlsStream<TcpStream> {
        let addr = self.srv.server.tls_addr.expect("TLS listener bound");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(WAIT, self.connector().connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake")
    }

    /// One HTTPS request on a fresh connection: (status, JSON body or Null).
    async fn https(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let io = TokioIo::new(self.connect().await);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let resp = tokio::time::timeout(
            WAIT,
            sender.send_request(req.body(Full::new(body)).unwrap()),
        )
        .await
        .expect("HTTPS request timed out")
        .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn publish(&self, channel: &str, data: Value) -> Value {
        let body = json!({"channels": [channel], "data": data});
        let (status, answer) = self
            .https("POST", "/api/v1/publish", Some(ADMIN_KEY), Some(body))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// A WebSocket over TLS at `path`.
    async fn wss(&self, path: &str) -> Wss {
        self.wss_with(path, None).await
    }

    async fn wss_with(&self, path: &str, recv_buffer: Option<u32>) -> Wss {
        let stream = self.connect_with(recv_buffer).await;
        let port = self.srv.server.tls_addr.unwrap().port();
        let uri = format!("wss://localhost:{port}{path}");
        let builder = ClientBuilder::from_uri(uri.parse().unwrap());
        let (ws, _) = tokio::time::timeout(WAIT, builder.connect_on(stream))
            .await
            .expect("WebSocket handshake timed out")
            .expect("WebSocket handshake");
        ws
    }

    /// A native-protocol WebSocket over TLS, past its welcome frame.
    async fn native(&self) -> (Wss, Value) {
        self.native_with(None).await
    }

    async fn native_with(&self, recv_buffer: Option<u32>) -> (Wss, Value) {
        let mut ws = self.wss_with("/ws", recv_buffer).await;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        (ws, welcome)
    }
}

/// The next message, skipping pings.
async fn next_message(ws: &mut Wss) -> Message {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
            .expect("connection open")
            .expect("valid frame");
        if !msg.is_ping() && !msg.is_pong() {
            return msg;
        }
    }
}

async fn next_json(ws: &mut Wss) -> Value {
    let msg = next_message(ws).await;
    let text = msg.as_text().expect("a text frame");
    serde_json::from_str(text).unwrap()
}

/// The next frame with this `op`, skipping others.
async fn next_op(ws: &mut Wss, op: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["op"] == op {
            return v;
        }
    }
}

async fn send(ws: &mut Wss, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_healthz_and_authenticated_api() {
    let srv = TlsServer::start().await;
    let stream = srv.connect().await;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    drop(stream);
    let (status, _) = srv.https("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let (status, stats) = srv
        .https("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert!(stats.is_object(), "{stats}");
    let (status, _) = srv.https("GET", "/api/v1/stats", None, None).await;
    assert_eq!(status, 401, "the API needs its key over TLS too");
    let (status, created) = srv
        .https(
            "POST",
            "/api/v1/channels",
            Some(ADMIN_KEY),
            Some(json!({"name": "secure"})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_round_trip_with_a_test_certificate() {
    let srv = TlsServer::start().await;
    let (mut ws, welcome) = srv.native().await;
    assert!(welcome["client"].is_string());
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "channel": "news"}),
    )
    .await;
    let reply = next_op(&mut ws, "reply").await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["channels"], json!(["news"]), "{reply}");

    let published = srv.publish("news", json!({"hello": "tls"})).await;
    assert_eq!(published["channels"][0]["delivered"], 1);
    let m = next_op(&mut ws, "message").await;
    assert_eq!(m["channel"], "news");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["data"], json!({"hello": "tls"}));

    // 60 KB: several TLS records (at most 16 KiB each) for one WebSocket frame.
    let big: String = (0..60_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    srv.publish("news", json!(big)).await;
    let m = next_op(&mut ws, "message").await;
    assert_eq!(m["offset"], 2);
    assert_eq!(m["data"], json!(big));

    // Many deliveries back to back, in order.
    for i in 0..50 {
        srv.publish("news", json!(i)).await;
    }
    for i in 0..50u64 {
        let m = next_op(&mut ws, "message").await;
        assert_eq!(m["offset"], i + 3);
    }

    // The client closes: the server answers with its close frame, then close_notify.
    ws.send(Message::close(None, "")).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(msg)) if msg.is_close() => continue,
            Some(Ok(_)) => continue,
            None => break,
            Some(Err(e)) => panic!("unclean end of a TLS WebSocket: {e}"),
        }
    }
    wait_for_no_connections(&srv.srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_from_a_wss_client_cross_record_boundaries() {
    let srv = TlsServer::start_with(|c| c.channels.client_publish = true).await;
    let (mut sub, _) = srv.native().await;
    send(
        &mut sub,
        json!({"op": "subscribe", "id": 1, "channel": "big"}),
    )
    .await;
    next_op(&mut sub, "reply").await;
    let (mut publisher, _) = srv.native().await;
    for round in 0..3u64 {
        let big: String = (0..60_000)
            .map(|i| (b'A' + ((i + round as usize) % 26) as u8) as char)
            .collect();
        send(
            &mut publisher,
            json!({"op": "publish", "id": round, "channel": "big", "data": big}),
        )
        .await;
        let reply = next_op(&mut publisher, "reply").await;
        assert_eq!(reply["id"], round);
        assert_eq!(reply["result"]["channels"][0]["delivered"], 1, "{reply}");
        let m = next_op(&mut sub, "message").await;
        assert_eq!(m["offset"], round + 1);
        assert_eq!(m["data"], json!(big));
    }
    // Several requests in one write: many frames inside the same TLS records.
    let mut burst = Vec::new();
    for id in 10..20 {
        burst.push(Message::text(json!({"op": "ping", "id": id}).to_string()));
    }
    publisher
        .send_all(&mut futures_util::stream::iter(burst.into_iter().map(Ok)))
        .await
        .unwrap();
    for id in 10..20 {
        let reply = next_op(&mut publisher, "reply").await;
        assert_eq!(reply["id"], id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_reading_late_gets_everything_in_order() {
    let srv = TlsServer::start_with(|c| c.websocket.outbox_max_bytes = 32 * 1024 * 1024).await;
    let (mut ws, _) = srv.native_with(Some(4096)).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "channel": "later"}),
    )
    .await;
    next_op(&mut ws, "reply").await;
    // ~12 MB while the client reads nothing: more than the sockets' buffers hold, so the
    // server's TLS writes wait for room with records still held by rustls.
    let api = srv.srv.admin();
    let total = 200u64;
    for i in 0..total {
        let payload: String = (0..60_000)
            .map(|j| (b'a' + ((i as usize + j) % 26) as u8) as char)
            .collect();
        api.publish(&["later"], json!(payload)).await.unwrap();
    }
    for i in 0..total {
        let m = next_op(&mut ws, "message").await;
        assert_eq!(m["offset"], i + 1);
        let data = m["data"].as_str().unwrap();
        assert_eq!(data.len(), 60_000);
        assert!(data.starts_with((b'a' + (i % 26) as u8) as char));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_never_reads_is_a_slow_consumer() {
    let srv = TlsServer::start_with(|c| c.websocket.outbox_max_bytes = 128 * 1024).await;
    let (mut slow, _) = srv.native_with(Some(4096)).await;
    send(
        &mut slow,
        json!({"op": "subscribe", "id": 1, "channel": "flood"}),
    )
    .await;
    next_op(&mut slow, "reply").await;
    let api = srv.srv.admin();
    let payload = "z".repeat(8 * 1024);
    let mut cut_off = false;
    for _ in 0..2000 {
        let answer = api.publish(&["flood"], json!(payload)).await.unwrap();
        if answer["channels"][0]["delivered"] == 0 {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the non-reading client was never cut off");
    let stats = api.stats().await.unwrap();
    assert_eq!(stats["slow_consumers"], 1);
    wait_for_no_connections(&srv.srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_keeps_working_alongside_tls() {
    let srv = TlsServer::start().await;
    assert_ne!(srv.srv.server.tls_addr, Some(srv.srv.addr()));
    let mut plain = srv.srv.client().await;
    plain.subscribe(&["both"]).await.unwrap();
    let (mut secure, _) = srv.native().await;
    send(
        &mut secure,
        json!({"op": "subscribe", "id": 1, "channel": "both"}),
    )
    .await;
    next_op(&mut secure, "reply").await;

    // Published over plain HTTP, heard on both.
    let answer = srv
        .srv
        .admin()
        .publish(&["both"], json!("plain"))
        .await
        .unwrap();
    assert_eq!(answer["channels"][0]["delivered"], 2);
    assert_eq!(next_op(&mut secure, "message").await["data"], "plain");
    let m = plain.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["data"], "plain");

    // Published over HTTPS, heard on both.
    let answer = srv.publish("both", json!("tls")).await;
    assert_eq!(answer["channels"][0]["delivered"], 2);
    assert_eq!(next_op(&mut secure, "message").await["data"], "tls");
    let m = plain.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["data"], "tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialects_work_over_tls() {
    let srv = TlsServer::start_with(|c| {
        c.dialects.simplysocket.enabled = true;
    })
    .await;
    let mut ws = srv.wss("/simplysocket/wsmesh").await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["action"], "know-yourself", "{hello}");
}

/// The debug echo (`[debug] ws_echo`, Autobahn's target) over TLS: messages come back whole,
/// small ones and ones spanning many TLS records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_echo_works_over_tls() {
    let srv = TlsServer::start_with(|c| c.debug.ws_echo = true).await;
    let mut ws = srv.wss("/debug/echo").await;
    ws.send(Message::text("héllo")).await.unwrap();
    let echo = next_message(&mut ws).await;
    assert_eq!(echo.as_text(), Some("héllo"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = next_message(&mut ws).await;
    assert!(echo.is_binary());
    assert_eq!(&echo.as_payload()[..], &big[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_wss_connections_with_1001() {
    let srv = TlsServer::start().await;
    let (mut ws, _) = srv.native().await;
    let TlsServer { srv, cert: _cert } = srv;
    let TestServer { server, dir: _dir } = srv;
    let shutdown = tokio::spawn(server.shutdown(WAIT));
    let msg = next_message(&mut ws).await;
    assert!(msg.is_close(), "{msg:?}");
    let (code, _) = msg.as_close().unwrap();
    assert_eq!(u16::from(code), 1001);
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_refused_and_tls_goes_on() {
    let srv = TlsServer::start().await;
    let mut tcp = TcpStream::connect(srv.srv.server.tls_addr.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server hangs up");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "no plain HTTP here");
    let (status, _) = srv.https("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_problems_fail_the_start_naming_the_key() {
    let cert = TestCert::new();
    let other = TestCert::new();
    let data = tempfile::tempdir().unwrap();
    let start = |cert_file: std::path::PathBuf, key_file: std::path::PathBuf| {
        let mut config = common::config(data.path());
        config.tls.listen = "127.0.0.1:0".into();
        config.tls.cert_file = cert_file;
        config.tls.key_file = key_file;
        config
            .validate()
            .expect("valid: the files are read at start");
        async move {
            match herald_server::start(config).await {
                Ok(_) => panic!("the server started"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let missing = cert.dir.path().join("missing.pem");
    let err = start(missing.clone(), cert.key_file()).await;
    assert!(err.contains("tls.cert_file"), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");

    let err = start(cert.cert_file(), missing).await;
    assert!(err.contains("tls.key_file"), "{err}");

    let empty = cert.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = start(empty.clone(), cert.key_file()).await;
    assert!(err.contains("tls.cert_file"), "{err}");
    assert!(err.contains("no certificate"), "{err}");

    // A certificate where the key should be.
    let err = start(cert.cert_file(), cert.cert_file()).await;
    assert!(err.contains("tls.key_file"), "{err}");
    assert!(err.contains("no private key"), "{err}");

    let err = start(cert.cert_file(), other.key_file()).await;
    assert!(err.contains("tls.key_file"), "{err}");
    assert!(err.contains("does not match"), "{err}");

    // Presence is checked by validation already.
    let mut config = common::config(data.path());
    config.tls.listen = "127.0.0.1:0".into();
    config.tls.key_file = cert.key_file();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
}

/// Waits (up to 5 s) until the server counts no WebSocket connection.
async fn wait_for_no_connections(srv: &TestServer) {
    for _ in 0..250 {
        let n = srv
            .server
            .state
            .ws_connections
            .load(std::sync::atomic::Ordering::Acquire);
        if n == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("WebSocket connections did not end within 5 s");
}
