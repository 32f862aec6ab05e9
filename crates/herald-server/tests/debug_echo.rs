//! The debug echo (`[debug] ws_echo`, `/debug/echo`, for Autobahn|Testsuite) over real
//! sockets: absent by default; when on, it sends text and binary messages back as they came
//! (whole, fragmented, with a ping between fragments), answers pings, takes messages over
//! `websocket.max_message_bytes` while `/ws` keeps that limit, and fails the connection on
//! invalid UTF-8 like any WebSocket of Herald's: through the upgrade served on the socket
//! and through hyper's. (Over TLS: tests/tls.rs.)

mod common;

use common::{RawPeer, TestServer};
use serde_json::json;

const PATH: &str = "/debug/echo";

async fn echo_server() -> TestServer {
    TestServer::start_with(|c| c.debug.ws_echo = true).await
}

/// A frame without FIN (a fragment that more follow).
fn fragment(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut wire = RawPeer::encode(opcode, payload, true);
    wire[0] &= 0x7F;
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_absent_by_default() {
    let srv = TestServer::start().await;
    let status = RawPeer::handshake_status(srv.addr(), PATH, "").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (code, _) = srv.anonymous().request("GET", PATH, None).await.unwrap();
    assert_eq!(code, 404);
}

/// Everything a client sends comes back; `peer` was opened on `srv`'s echo.
async fn check_echo(srv: &TestServer, mut peer: RawPeer) {
    peer.send(1, "héllo".as_bytes(), true).await;
    assert_eq!(peer.frame().await, Some((1, "héllo".as_bytes().to_vec())));
    peer.send(2, &[0, 255, 1], true).await;
    assert_eq!(peer.frame().await, Some((2, vec![0, 255, 1])));
    peer.send(1, b"", true).await;
    assert_eq!(peer.frame().await, Some((1, Vec::new())));
    // Fragments with a ping between them, all in one write: the pong first, then the message.
    let mut wire = fragment(1, "κό".as_bytes());
    wire.extend_from_slice(&RawPeer::encode(9, b"between", true));
    wire.extend_from_slice(&RawPeer::encode(0, "σμε".as_bytes(), true));
    peer.send_raw(&wire).await;
    assert_eq!(peer.frame().await, Some((10, b"between".to_vec())));
    assert_eq!(peer.frame().await, Some((1, "κόσμε".as_bytes().to_vec())));
    // Over websocket.max_message_bytes (64 KiB here): the echo has a limit of its own.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    peer.send(2, &big, true).await;
    assert_eq!(peer.frame().await, Some((2, big)));
    assert_eq!(
        srv.server.state.config.websocket.max_message_bytes,
        64 * 1024
    );
    peer.send(8, &1000u16.to_be_bytes(), true).await;
    assert_eq!(peer.close_code().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sends_everything_back() {
    let srv = echo_server().await;
    check_echo(&srv, RawPeer::connect_to(srv.addr(), PATH, "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_upgraded_by_hyper_sends_everything_back() {
    let srv = echo_server().await;
    check_echo(&srv, RawPeer::connect_via_hyper(srv.addr(), PATH).await).await;
}

/// Real clients keep `websocket.max_message_bytes` when the echo is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_raises_no_limit_of_real_clients() {
    let srv = echo_server().await;
    let mut native = RawPeer::connect(srv.addr()).await;
    assert_eq!(native.json().await["op"], "welcome");
    let big = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(100_000));
    native.send(1, big.as_bytes(), true).await;
    let reply = native.json().await;
    assert_eq!(reply["error"]["code"], "message_too_large", "{reply}");
    native.send_json(json!({"op": "ping", "id": 1})).await;
    assert_eq!(native.json().await["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_fails_invalid_utf8_with_1007_and_bad_frames_with_1002() {
    let srv = echo_server().await;
    let mut peer = RawPeer::connect_to(srv.addr(), PATH, "").await;
    peer.send(1, &[b'a', 0xf4, 0x90, 0x80, 0x80], true).await;
    assert_eq!(peer.close_code().await, Some(1007));
    let mut peer = RawPeer::connect_to(srv.addr(), PATH, "").await;
    let mut wire = RawPeer::encode(1, b"first", true);
    wire.extend_from_slice(&RawPeer::encode(3, b"", true)); // a reserved opcode
    peer.send_raw(&wire).await;
    assert_eq!(peer.frame().await, Some((1, b"first".to_vec())));
    assert_eq!(peer.close_code().await, Some(1002));
}
