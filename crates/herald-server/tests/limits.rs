//! Limits over real sockets (docs/errors.md, docs/protocol.md#limits): each one trips with its
//! documented status, code or close code, is counted in `/api/v1/stats`, and leaves every
//! other client (another address, another connection) working.
//!
//! All clients run on this host: per-IP tests bind client sockets to other loopback addresses
//! (127.0.0.2, ...) to stand for other IPs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{ADMIN_KEY, RawPeer, TestServer, WAIT, wait_for_subscribers};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A refused handshake: the status line and the JSON error body.
#[derive(Debug)]
struct Refusal {
    status: String,
    retry_after: Option<String>,
    body: Value,
}

impl Refusal {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A WebSocket handshake at `path` from the local address `from`, with extra header lines:
/// the connected peer (its native welcome read when `path` is `/ws`), or the refusal.
async fn open_from(
    addr: SocketAddr,
    from: &str,
    path: &str,
    extra_headers: &str,
) -> Result<RawPeer, Refusal> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind a loopback address");
    let mut tcp = socket.connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("handshake answer")
            .unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end..].to_vec();
    if head.starts_with("HTTP/1.1 101") {
        let mut peer = RawPeer { tcp, buf: rest };
        if path == "/ws" {
            assert_eq!(peer.json().await["op"], "welcome");
        }
        return Ok(peer);
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length").unwrap().parse().unwrap();
    let mut body = rest;
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("refusal body")
            .unwrap();
        assert!(n > 0, "closed before the body");
        body.extend_from_slice(&chunk[..n]);
    }
    Err(Refusal {
        status: head.lines().next().unwrap_or_default().to_string(),
        retry_after: header("retry-after"),
        body: serde_json::from_slice(&body[..len]).unwrap(),
    })
}

async fn open(srv: &TestServer, from: &str) -> RawPeer {
    match open_from(srv.addr(), from, "/ws", "").await {
        Ok(peer) => peer,
        Err(refusal) => panic!("refused from {from}: {refusal:?}"),
    }
}

async fn refused(srv: &TestServer, from: &str, headers: &str) -> Refusal {
    match open_from(srv.addr(), from, "/ws", headers).await {
        Ok(_) => panic!("handshake from {from} was accepted"),
        Err(refusal) => refusal,
    }
}

/// The next native reply (skipping anything else).
async fn reply(peer: &mut RawPeer) -> Value {
    loop {
        let v = peer.json().await;
        if v["op"] == "reply" {
            return v;
        }
    }
}

/// `peer` still works: it subscribes to `channel` and receives a publication made there.
async fn carries_on(srv: &TestServer, peer: &mut RawPeer, channel: &str) {
    peer.send_json(json!({"op": "subscribe", "channel": channel, "id": "s"}))
        .await;
    let r = reply(peer).await;
    assert_eq!(r["id"], "s");
    assert!(r["error"].is_null(), "{r}");
    wait_for_subscribers(srv, channel, 1).await;
    srv.admin()
        .publish(&[channel], json!({"still": "working"}))
        .await
        .unwrap();
    loop {
        let m = peer.json().await;
        if m["op"] == "message" {
            assert_eq!(m["channel"], channel);
            assert_eq!(m["data"], json!({"still": "working"}));
            return;
        }
    }
}

async fn stats(srv: &TestServer) -> Value {
    srv.admin().stats().await.unwrap()
}

/// Retries `f` every 20 ms until it returns `Some`, for at most 5 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    for _ in 0..250 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_with_429_too_many_while_other_addresses_carry_on() {
    let srv = TestServer::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let first = open(&srv, "127.0.0.1").await;
    let _second = open(&srv, "127.0.0.1").await;

    let r = refused(&srv, "127.0.0.1", "").await;
    assert!(r.status.starts_with("HTTP/1.1 429"), "{r:?}");
    assert_eq!(r.code(), "too_many");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_connections_per_ip"),
        "{r:?}"
    );

    // Another address is not affected; the admin key is exempt.
    let mut other = open(&srv, "127.0.0.2").await;
    carries_on(&srv, &mut other, "per-ip").await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    assert!(
        open_from(srv.addr(), "127.0.0.1", "/ws", &auth)
            .await
            .is_ok()
    );

    // A closed connection gives its slot back.
    drop(first);
    let addr = srv.addr();
    let _again = eventually("a slot freed", || async move {
        open_from(addr, "127.0.0.1", "/ws", "").await.ok()
    })
    .await;

    let s = stats(&srv).await;
    assert!(s["refused_per_ip"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["refused_connections"], s["refused_per_ip"]);
    // Addresses are forgotten when their last connection ends.
    assert_eq!(srv.server.state.limits.tracked().0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_refuses_with_503_too_many_and_is_counted() {
    let srv = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let mut a = open(&srv, "127.0.0.1").await;
    let _b = open(&srv, "127.0.0.2").await;
    let r = refused(&srv, "127.0.0.3", "").await;
    assert!(r.status.starts_with("HTTP/1.1 503"), "{r:?}");
    assert_eq!(r.code(), "too_many");
    carries_on(&srv, &mut a, "global").await;
    let s = stats(&srv).await;
    assert_eq!(s["refused_max_connections"], 1);
    assert_eq!(s["refused_connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_refuses_with_429_rate_limited_while_other_addresses_carry_on() {
    let srv = TestServer::start_with(|c| {
        c.limits.connect_rate_per_ip = 1;
        c.limits.connect_burst_per_ip = 3;
    })
    .await;
    let mut kept = open(&srv, "127.0.0.1").await;
    // Handshakes from one address until the bucket is empty (the burst, give or take what
    // refills meanwhile; bounded).
    let mut refusal = None;
    for _ in 0..50 {
        if let Err(r) = open_from(srv.addr(), "127.0.0.1", "/ws", "").await {
            refusal = Some(r);
            break;
        }
    }
    let r = refusal.expect("the connection rate tripped");
    assert!(r.status.starts_with("HTTP/1.1 429"), "{r:?}");
    assert_eq!(r.code(), "rate_limited");
    assert!(r.retry_after.is_some(), "{r:?}");

    // The open connection of the same address, and another address, are unaffected.
    carries_on(&srv, &mut kept, "rate-same-ip").await;
    let mut other = open(&srv, "127.0.0.2").await;
    carries_on(&srv, &mut other, "rate-other-ip").await;
    assert!(stats(&srv).await["refused_connect_rate"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allowlist_refuses_other_origins_with_403_forbidden() {
    let srv = TestServer::start_with(|c| {
        c.websocket.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    })
    .await;
    let r = refused(&srv, "127.0.0.1", "Origin: https://evil.example.net\r\n").await;
    assert!(r.status.starts_with("HTTP/1.1 403"), "{r:?}");
    assert_eq!(r.code(), "forbidden");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("https://evil.example.net"), "{message}");
    assert!(message.contains("not allowed"), "{message}");
    let r = refused(&srv, "127.0.0.1", "Origin: https://example.org\r\n").await;
    assert_eq!(r.code(), "forbidden");

    for origin in [
        "https://app.example.com",
        "https://APP.example.com",
        "https://a.example.org",
    ] {
        let headers = format!("Origin: {origin}\r\n");
        let mut peer = match open_from(srv.addr(), "127.0.0.1", "/ws", &headers).await {
            Ok(peer) => peer,
            Err(r) => panic!("{origin} refused: {r:?}"),
        };
        carries_on(&srv, &mut peer, &format!("origin-{}", origin.len())).await;
    }
    // Not a browser: no Origin, no check.
    let mut plain = open(&srv, "127.0.0.1").await;
    carries_on(&srv, &mut plain, "origin-none").await;
    assert_eq!(stats(&srv).await["refused_origin"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_drops_with_rate_limited_while_other_clients_carry_on() {
    let srv = TestServer::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 3;
    })
    .await;
    let mut fast = open(&srv, "127.0.0.1").await;
    for id in 1..=10 {
        fast.send_json(json!({"op": "ping", "id": id})).await;
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 1..=10 {
        let r = reply(&mut fast).await;
        assert!((1..=10).contains(&r["id"].as_u64().unwrap()), "{r}");
        if r["error"].is_null() {
            ok += 1;
        } else {
            assert_eq!(r["error"]["code"], "rate_limited", "{r}");
            limited += 1;
        }
    }
    assert!(ok >= 3, "the burst passes: {ok}");
    assert!(limited >= 1, "some were dropped");

    // Another connection is not affected...
    let mut other = open(&srv, "127.0.0.1").await;
    carries_on(&srv, &mut other, "msg-rate").await;
    // ...and the limited one works again once it slows down.
    let mut passed = false;
    for id in 100..150 {
        fast.send_json(json!({"op": "ping", "id": id})).await;
        if reply(&mut fast).await["error"].is_null() {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed, "a ping passes again within 5 s");
    let s = stats(&srv).await;
    assert!(s["rate_limited"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["rate_limited_disconnects"], 0);
}

/// A flood much larger than one read, from a client with a small receive window and
/// deliveries still on their way to it: the server stops reading with input unread, and a
/// plain close would reset the connection, discarding what the kernel had not sent yet: the
/// last deliveries, the replies and the 4102 frame. They all arrive (issue 9, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_receives_its_replies_and_the_4102_frame() {
    let srv = TestServer::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 2;
    })
    .await;
    let mut flood = common::RawPeer::connect_with(srv.addr(), Some(4096)).await;
    assert_eq!(flood.json().await["op"], "welcome");
    flood
        .send_json(json!({"op":"subscribe","channel":"backlog"}))
        .await;
    common::wait_for_subscribers(&srv, "backlog", 1).await;
    let api = srv.admin();
    for _ in 0..4 {
        api.publish(&["backlog"], json!("b".repeat(40_000)))
            .await
            .unwrap();
    }
    let frames: Vec<u8> = (0..1500)
        .flat_map(|i| {
            let text = json!({"op": "ping", "id": i}).to_string();
            let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
            f.extend_from_slice(text.as_bytes());
            f
        })
        .collect();
    let _ = flood.tcp.write_all(&frames).await;
    // The burst's replies, then one rate_limited reply per dropped message until the flood
    // limit (10 x burst in a row), then the close frame.
    let (mut replies, mut deliveries) = (0, 0);
    let code = loop {
        match flood.frame().await {
            Some((1, text)) => {
                let frame: serde_json::Value = serde_json::from_slice(&text).unwrap();
                match frame["op"].as_str() {
                    Some("reply") => replies += 1,
                    Some("message") => deliveries += 1,
                    other => panic!("{other:?}"),
                }
            }
            Some((8, payload)) => break Some(u16::from_be_bytes([payload[0], payload[1]])),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(code, Some(herald_core::client::close_code::RATE_LIMITED));
    // The burst of 2 (the subscribe took one), then 19 refused: the 20th drop in a row
    // closes instead of answering.
    assert!(replies >= 20, "{replies} replies");
    assert_eq!(deliveries, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_past_the_rate_closes_with_4102_while_other_clients_carry_on() {
    let srv = TestServer::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 2;
    })
    .await;
    let mut other = open(&srv, "127.0.0.1").await;
    let mut flood = open(&srv, "127.0.0.1").await;
    // 10 x burst drops in a row close it.
    let frames: Vec<u8> = (0..100)
        .flat_map(|i| {
            let text = json!({"op": "ping", "id": i}).to_string();
            let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
            f.extend_from_slice(text.as_bytes());
            f
        })
        .collect();
    let _ = flood.tcp.write_all(&frames).await;
    assert_eq!(
        flood.close_code().await,
        Some(herald_core::client::close_code::RATE_LIMITED)
    );
    carries_on(&srv, &mut other, "flood").await;
    let s = stats(&srv).await;
    assert_eq!(s["rate_limited_disconnects"], 1);
    assert!(s["rate_limited"].as_u64().unwrap() >= 20, "{s}");
    let api = srv.admin();
    eventually("the flooder is gone", || {
        let api = &api;
        async move {
            let s = api.stats().await.ok()?;
            (s["connections"] == 1).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_answers_in_the_dialects_format() {
    let srv = TestServer::start_with(|c| {
        c.dialects.subsocket.enabled = true;
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 2;
    })
    .await;
    let mut sub = open_from(srv.addr(), "127.0.0.1", "/subsocket/socket", "")
        .await
        .expect("subsocket connects");
    for _ in 0..6 {
        sub.send_text("dance").await;
    }
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let frame = sub.text().await;
        if frame.starts_with("__error ") {
            seen.push(frame);
        }
    }
    assert!(
        seen.iter().any(|f| f.starts_with("__error rate_limited ")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|f| f.starts_with("__error unknown_op ")),
        "{seen:?}"
    );
    let mut native = open(&srv, "127.0.0.1").await;
    carries_on(&srv, &mut native, "dialect-rate").await;
}

#[test]
fn new_limit_keys_are_validated_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    for (toml, key) in [
        (
            "[limits]\nconnect_rate_per_ip = 5\nconnect_burst_per_ip = 0\n",
            "limits.connect_burst_per_ip",
        ),
        ("[limits]\nmessage_burst = 0\n", "limits.message_burst"),
        (
            "[limits]\nmessages_per_second = 2000000\n",
            "limits.messages_per_second",
        ),
        (
            "[websocket]\nallowed_origins = [\"example.com\"]\n",
            "websocket.allowed_origins",
        ),
        (
            "[websocket]\nallowed_origins = [\"https://a.com/app\"]\n",
            "websocket.allowed_origins",
        ),
    ] {
        std::fs::write(&path, toml).unwrap();
        let err = herald_server::Config::load(Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
    std::fs::write(
        &path,
        "[websocket]\nallowed_origins = [\"https://*.example.com:8443\", \"null\", \"*\"]\n",
    )
    .unwrap();
    herald_server::Config::load(Some(&path)).unwrap();
}
