//! The native WebSocket protocol over real sockets: subscribe, publish, deliveries, direct
//! messages, bad input, protocol violations, keep-alive and slow consumers.

mod common;

use std::time::Duration;

use common::{RawPeer, TestServer, WAIT};
use herald_client::Event;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_subscribe_and_http_publish() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let w = c.welcome().clone();
    assert_eq!(w["op"], "welcome");
    assert!(uuid_like(w["client"].as_str().unwrap()));
    assert_eq!(w["ping_interval_ms"], 25_000);

    let reply = c.subscribe(&["news"]).await.unwrap();
    assert_eq!(reply["result"]["channels"], json!(["news"]));
    let published = srv
        .admin()
        .publish(&["news"], json!({"hello": "world"}))
        .await
        .unwrap();
    assert_eq!(published["channels"][0]["offset"], 1);
    assert_eq!(published["channels"][0]["delivered"], 1);
    let m = c.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["channel"], "news");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["epoch"], published["channels"][0]["epoch"]);
    assert_eq!(m["from"], serde_json::Value::Null);
    assert_eq!(m["data"], json!({"hello": "world"}));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_arrive_in_order_to_every_subscriber() {
    let srv = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let mut c = srv.client().await;
        c.subscribe(&["ordered"]).await.unwrap();
        subs.push(c);
    }
    let api = srv.admin();
    for i in 0..100 {
        api.publish(&["ordered"], json!(i)).await.unwrap();
    }
    for c in &mut subs {
        for i in 0..100u64 {
            let m = c.next_op("message", WAIT).await.unwrap();
            assert_eq!(m["offset"], i + 1);
            assert_eq!(m["data"], json!(i));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_twice_is_harmless_and_unsubscribe_stops_delivery() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.subscribe(&["a"]).await.unwrap();
    c.request_ok(json!({"op": "subscribe", "channel": "a"}))
        .await
        .unwrap();
    srv.admin().publish(&["a"], json!(1)).await.unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], 1);
    c.unsubscribe(&["a"]).await.unwrap();
    srv.admin().publish(&["a"], json!(2)).await.unwrap();
    let pong = c.ping().await.unwrap();
    assert_eq!(pong["result"]["pong"], true);
    // Exactly one delivery happened: nothing else is queued.
    assert!(
        c.next_op("message", Duration::from_millis(300))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_follows_channel_policy() {
    let srv = TestServer::start().await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    b.subscribe(&["open", "closed"]).await.unwrap();
    let reply = a
        .request(json!({"op":"publish","channel":"closed","data":1}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "forbidden");

    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name": "inbox", "client_publish": true})),
        )
        .await
        .unwrap();
    b.subscribe(&["inbox"]).await.unwrap();
    let reply = a.publish(&["inbox"], json!({"from": "a"})).await.unwrap();
    assert_eq!(reply["result"]["channels"][0]["delivered"], 1);
    let m = b.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["channel"], "inbox");
    assert_eq!(m["from"], a.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_with_to_reaches_only_those_subscribers() {
    let srv = TestServer::start().await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    a.subscribe(&["t"]).await.unwrap();
    b.subscribe(&["t"]).await.unwrap();
    let r = srv
        .admin()
        .request_ok(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"t","data":"only b","to":[b.id()]})),
        )
        .await
        .unwrap();
    assert_eq!(r["channels"][0]["delivered"], 1);
    assert_eq!(b.next_op("message", WAIT).await.unwrap()["data"], "only b");
    assert!(
        a.next_op("message", Duration::from_millis(300))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_need_permission() {
    let srv = TestServer::start().await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    let reply = a
        .request(json!({"op":"send","to":b.id(),"data":"hi"}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "forbidden");
    let path = format!("/api/v1/clients/{}/send", b.id());
    srv.admin()
        .request_ok("POST", &path, Some(&json!({"data": {"n": 1}})))
        .await
        .unwrap();
    let d = b.next_op("direct", WAIT).await.unwrap();
    assert_eq!(d, json!({"op":"direct","from":null,"data":{"n":1}}));

    let srv = TestServer::start_with(|c| c.channels.client_direct_messages = true).await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    a.request_ok(json!({"op":"send","to":b.id(),"data":"hi"}))
        .await
        .unwrap();
    let d = b.next_op("direct", WAIT).await.unwrap();
    assert_eq!(d["from"], a.id());
    let reply = a
        .request(json!({"op":"send","to":"00000000-0000-0000-0000-000000000000","data":1}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "client_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_replies_and_the_connection_keeps_working() {
    let srv = TestServer::start_with(|c| c.websocket.max_message_bytes = 1024).await;
    let mut c = srv.client().await;
    let cases = [
        ("{not json", "invalid_json"),
        ("[1]", "bad_request"),
        (r#"{"op":"dance","id":7}"#, "unknown_op"),
        (r#"{"op":"subscribe","id":7}"#, "missing_field"),
        (
            r#"{"op":"subscribe","channels":["bad name"],"id":7}"#,
            "invalid_channel",
        ),
        (
            r#"{"op":"publish","channels":["x"],"id":7}"#,
            "missing_field",
        ),
        (
            r#"{"op":"send","to":"nope","data":1,"id":7}"#,
            "invalid_client_id",
        ),
    ];
    for (text, code) in cases {
        c.send_text(text).await.unwrap();
        let reply = c.next_op("reply", WAIT).await.unwrap();
        assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
        if text.contains("\"id\":7") {
            assert_eq!(reply["id"], 7, "{text}");
        }
    }
    c.send_text(&format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(5000)))
        .await
        .unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["error"]["code"], "message_too_large");
    c.send_binary(b"{\"op\":\"ping\"}").await.unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["error"]["code"], "bad_request");
    // Still serving.
    c.subscribe(&["still-here"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_list_limits_have_codes() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_payload_bytes = 100;
        c.limits.max_channels_per_connection = 2;
        c.channels.client_publish = true;
    })
    .await;
    let mut c = srv.client().await;
    let reply = c
        .request(json!({"op":"subscribe","channels":["a","b","c"]}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "too_many");
    let reply = c
        .request(json!({"op":"publish","channel":"a","data":"x".repeat(200)}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violation_closes_with_1002_and_others_carry_on() {
    let srv = TestServer::start().await;
    let mut good = srv.client().await;
    good.subscribe(&["c"]).await.unwrap();
    let mut raw = RawPeer::connect(srv.addr()).await;
    assert_eq!(raw.json().await["op"], "welcome");
    raw.send(1, br#"{"op":"ping"}"#, false).await; // unmasked: forbidden for clients
    assert_eq!(raw.close_code().await, Some(1002));
    srv.admin().publish(&["c"], json!("fine")).await.unwrap();
    assert_eq!(good.next_op("message", WAIT).await.unwrap()["data"], "fine");
}

/// Replies to requests that arrived before a protocol violation (in the same read) are
/// written before the 1002 close frame, not dropped with the connection (Autobahn 3.2, 4.1.3,
/// 5.15: the echo of the message before the bad frame was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_before_a_protocol_violation_go_out_before_the_close() {
    let srv = TestServer::start().await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    let mut wire = RawPeer::encode(1, br#"{"op":"ping","id":7}"#, true);
    let mut bad = RawPeer::encode(1, b"x", true);
    bad[0] |= 0x20; // RSV2: no extension was negotiated
    wire.extend_from_slice(&bad);
    wire.extend_from_slice(&RawPeer::encode(9, b"not answered", true));
    raw.send_raw(&wire).await;
    assert_eq!(raw.json().await["id"], 7);
    assert_eq!(raw.close_code().await, Some(1002));
}

/// The same for the client's own close: what it asked before closing is answered first
/// (Autobahn 7.1.6: the echo of a message sent just before the close frame was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_before_the_clients_close_go_out_before_the_close() {
    let srv = TestServer::start().await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    let mut wire = RawPeer::encode(1, br#"{"op":"ping","id":8}"#, true);
    wire.extend_from_slice(&RawPeer::encode(8, &1000u16.to_be_bytes(), true));
    wire.extend_from_slice(&RawPeer::encode(9, b"after the close", true));
    raw.send_raw(&wire).await;
    assert_eq!(raw.json().await["id"], 8);
    assert_eq!(raw.close_code().await, Some(1000));
    // Nothing after the close frame, and the server ends the connection.
    assert_eq!(raw.frame().await, None);
    wait_for(|| async { srv.server.state.hub.registry().client_count() == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007() {
    let srv = TestServer::start().await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    raw.send(1, &[0xff, 0xfe, 0xfd], true).await;
    assert_eq!(raw.close_code().await, Some(1007));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_echoed_and_cleans_up() {
    let srv = TestServer::start().await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    raw.send_json(json!({"op":"subscribe","channel":"bye","id":1}))
        .await;
    assert_eq!(raw.json().await["id"], 1);
    raw.send(8, &1000u16.to_be_bytes(), true).await;
    assert_eq!(raw.close_code().await, Some(1000));
    wait_for(|| async { srv.server.state.hub.registry().client_count() == 0 }).await;
    assert_eq!(srv.server.state.hub.registry().channel_count(), 0);
}

/// RFC 6455 section 7.4: codes that must never be sent, reserved and out-of-range codes fail
/// the connection with 1002; valid ones are echoed, and a close without a code gets 1000
/// (issue 9, item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_codes_are_validated() {
    let srv = TestServer::start().await;
    let cases: [(&[u8], u16); 9] = [
        (&1005u16.to_be_bytes(), 1002),
        (&1006u16.to_be_bytes(), 1002),
        (&1015u16.to_be_bytes(), 1002),
        (&1016u16.to_be_bytes(), 1002),
        (&2999u16.to_be_bytes(), 1002),
        (&5000u16.to_be_bytes(), 1002),
        (&3000u16.to_be_bytes(), 3000),
        (&4999u16.to_be_bytes(), 4999),
        (&[], 1000),
    ];
    for (payload, expected) in cases {
        let mut raw = RawPeer::connect(srv.addr()).await;
        raw.json().await;
        raw.send(8, payload, true).await;
        assert_eq!(raw.close_code().await, Some(expected), "{payload:?}");
    }
}

/// A slow consumer that reads again receives the documented 4100 close frame after the
/// frames that were already on their way, whole (issue 9, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_receives_its_4100_close_frame() {
    let srv = TestServer::start_with(|c| c.websocket.outbox_max_bytes = 128 * 1024).await;
    let mut slow = RawPeer::connect_with(srv.addr(), Some(4096)).await;
    slow.json().await;
    slow.send_json(json!({"op":"subscribe","channel":"big","id":1}))
        .await;
    assert_eq!(slow.json().await["id"], 1);
    let api = srv.admin();
    // Frames larger than the socket takes at once: the cut comes while one is half written.
    let payload = "z".repeat(60_000);
    let mut cut = false;
    for _ in 0..500 {
        api.publish(&["big"], json!(payload)).await.unwrap();
        if api.stats().await.unwrap()["slow_consumers"] == 1 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the peer that does not read is cut off");
    // Now it reads: every frame parses, and the last is the close frame.
    let mut messages = 0;
    let code = loop {
        match slow.frame().await {
            Some((1, text)) => {
                let m: serde_json::Value = serde_json::from_slice(&text).unwrap();
                assert_eq!(m["op"], "message");
                messages += 1;
            }
            Some((8, payload)) => break Some(u16::from_be_bytes([payload[0], payload[1]])),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(code, Some(4100), "after {messages} messages");
}

/// A slow consumer that takes nothing more is cut off within the close grace, and the kernel
/// lets go of its socket and the data queued for it at once (a reset), instead of retrying
/// for minutes (issue 9, item 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_slow_consumer_releases_its_socket_promptly() {
    let srv = TestServer::start_with(|c| c.websocket.outbox_max_bytes = 128 * 1024).await;
    let mut stalled = RawPeer::connect_with(srv.addr(), Some(4096)).await;
    stalled.json().await;
    stalled
        .send_json(json!({"op":"subscribe","channel":"big","id":1}))
        .await;
    assert_eq!(stalled.json().await["id"], 1);
    let peer = stalled.tcp.local_addr().unwrap();
    assert!(common::kernel_has_socket(srv.addr(), peer));
    let api = srv.admin();
    let payload = "z".repeat(60_000);
    for _ in 0..500 {
        api.publish(&["big"], json!(payload)).await.unwrap();
        if api.stats().await.unwrap()["slow_consumers"] == 1 {
            break;
        }
    }
    // It never reads again: gone from the kernel's table within the grace and a margin.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while common::kernel_has_socket(srv.addr(), peer) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server's socket to the stalled peer is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ping_gets_pong() {
    let srv = TestServer::start().await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    raw.send(9, b"abc", true).await;
    assert_eq!(raw.frame().await, Some((10, b"abc".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_pinged_then_closed_with_4101() {
    let srv = TestServer::start_with(|c| {
        c.websocket.ping_interval_secs = 1;
        c.websocket.ping_timeout_secs = 2;
    })
    .await;
    let mut raw = RawPeer::connect(srv.addr()).await;
    raw.json().await;
    let mut pinged = false;
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((op, payload)) = raw.frame().await {
            match op {
                9 => pinged = true,
                8 => return Some(u16::from_be_bytes([payload[0], payload[1]])),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("closed within the bound");
    assert!(pinged, "the server pinged before giving up");
    assert_eq!(code, Some(4101));
    // A client that answers pings stays connected meanwhile.
    let mut alive = srv.client().await;
    alive.pump(Duration::from_secs(3)).await.unwrap();
    alive.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_delaying_others() {
    let limit = 128 * 1024;
    let srv = TestServer::start_with(|c| c.websocket.outbox_max_bytes = limit).await;
    let mut fast = srv.client().await;
    fast.subscribe(&["flood"]).await.unwrap();
    let mut slow = RawPeer::connect_with(srv.addr(), Some(4096)).await;
    slow.json().await;
    slow.send_json(json!({"op":"subscribe","channel":"flood","id":1}))
        .await;
    assert_eq!(slow.json().await["id"], 1);
    let slow_id = {
        let clients = srv
            .admin()
            .request_ok("GET", "/api/v1/clients", None)
            .await
            .unwrap();
        let ids: Vec<String> = clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .filter(|id| id != fast.id())
            .collect();
        ids[0].clone()
    };
    // Publish in lockstep with the fast subscriber, so it is never behind by more than one
    // message while the slow one (which never reads) piles up past its outbox limit.
    let api = srv.admin();
    let payload = "y".repeat(8 * 1024);
    let mut max_pending = 0u64;
    let total = 1000u64;
    for i in 1..=total {
        api.publish(&["flood"], json!(payload)).await.unwrap();
        let m = fast.next_op("message", WAIT).await.unwrap();
        assert_eq!(
            m["offset"], i,
            "the fast subscriber gets every message in order"
        );
        if i % 25 == 0 {
            let path = format!("/api/v1/clients/{slow_id}");
            if let Ok((200, c)) = api.request("GET", &path, None).await {
                max_pending = max_pending.max(c["pending_bytes"].as_u64().unwrap());
            }
        }
    }
    assert!(
        max_pending <= limit as u64,
        "outbox stayed bounded: {max_pending}"
    );
    let stats = api.stats().await.unwrap();
    assert_eq!(stats["slow_consumers"], 1);
    // The close frame is best effort: the slow peer's socket may be too full to take it.
    assert_eq!(slow.close_code().await.unwrap_or(4100), 4100);
    let slow_id = herald_core::ClientId::parse(&slow_id).unwrap();
    wait_for(|| async { srv.server.state.hub.registry().client(slow_id).is_none() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_get_on_ws_gets_426() {
    let srv = TestServer::start().await;
    let (status, body) = srv.anonymous().request("GET", "/ws", None).await.unwrap();
    assert_eq!(status, 426);
    assert_eq!(body["error"]["code"], "bad_request");
}

/// A handshake RFC 6455 does not allow is refused with 400 before anything is admitted: a
/// key that is not 16 bytes of base64 (empty, not base64, too long), or HTTP/1.0 (it got a
/// 101 and an immediate close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_handshake_is_refused_with_400() {
    let srv = TestServer::start().await;
    let long = "A".repeat(8000);
    let cases = [
        ("HTTP/1.1", ""),
        ("HTTP/1.1", "not base64!!"),
        ("HTTP/1.1", "dGhlIHNhbXBsZQ=="),
        ("HTTP/1.1", long.as_str()),
        ("HTTP/1.0", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (version, key) in cases {
        let req = format!(
            "GET /ws {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let head = common::raw_http::status_of(&srv, &req).await;
        assert!(head.ends_with(" 400"), "{version} key {:.20}: {head}", key);
    }
    // The RFC's own example key is fine.
    let status = RawPeer::handshake_status(srv.addr(), "/ws", "").await;
    assert!(status.contains("101"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_503() {
    let srv = TestServer::start_with(|c| c.limits.max_connections = 1).await;
    let first = srv.client().await;
    let Err(err) = herald_client::Client::connect(&srv.ws_url()).await else {
        panic!("a second connection must be refused");
    };
    let rejected = err
        .downcast_ref::<herald_client::HandshakeRejected>()
        .expect("HTTP refusal");
    assert_eq!(rejected.status, 503);
    // The slot comes back when the connection ends.
    first.close().await.unwrap();
    let mut admitted = false;
    for _ in 0..100 {
        if herald_client::Client::connect(&srv.ws_url()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        admitted,
        "a new connection is admitted once the first has gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_closes_with_reason_and_code() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let path = format!(
        "/api/v1/clients/{}?reason=maintenance&reconnect=false",
        c.id()
    );
    let r = srv.admin().request_ok("DELETE", &path, None).await.unwrap();
    assert_eq!(r["code"], 4000);
    match c.next_event(WAIT).await.unwrap() {
        Event::Closed { code, reason } => {
            assert_eq!((code, reason.as_str()), (4000, "maintenance"))
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let mut c = srv.client().await;
    let path = format!("/api/v1/clients/{}", c.id());
    srv.admin().request_ok("DELETE", &path, None).await.unwrap();
    match c.next_event(WAIT).await.unwrap() {
        Event::Closed { code, .. } => assert_eq!(code, 4200),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(srv.admin().stats().await.unwrap()["kicked"], 2);
}

pub async fn wait_for<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within 5 s");
}
