//! Subscribing in the WebSocket URL (`GET /ws?channels=a,b`), over real sockets: the welcome
//! lists what was subscribed and why anything else was refused, with exactly the checks of a
//! `subscribe` request; a malformed list is a 400 before the upgrade; JWT channels and URL
//! channels together; a banned user refused as before.

mod common;

use common::services::{JWT_SECRET, user_token};
use common::{RawPeer, TestServer, wait_for_subscribers};
use serde_json::{Value, json};

/// The next JSON text frame that is not a ping.
async fn next_json(peer: &mut RawPeer) -> Value {
    peer.json().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_lists_the_url_channels_subscribed_and_refused() {
    let srv = TestServer::start().await;
    let created = srv
        .admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name": "private", "public": false})),
        )
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_string();

    let mut peer =
        RawPeer::connect_to(srv.addr(), "/ws?channels=news,chat%3Aroom,private", "").await;
    let welcome = next_json(&mut peer).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    assert_eq!(
        welcome["subscribed"],
        json!(["news", "chat:room"]),
        "{welcome}"
    );
    assert_eq!(
        welcome["errors"]["private"]["code"], "forbidden",
        "{welcome}"
    );
    assert!(welcome["errors"].get("news").is_none());

    // Subscribed before the welcome: what is published now arrives after it.
    wait_for_subscribers(&srv, "chat:room", 1).await;
    srv.admin().publish(&["chat:room"], json!(1)).await.unwrap();
    let message = next_json(&mut peer).await;
    assert_eq!(
        (message["op"].clone(), message["channel"].clone()),
        (json!("message"), json!("chat:room"))
    );

    // The private channel can still be subscribed with its token.
    peer.send_json(json!({"op": "subscribe", "channels": ["private"], "token": token, "id": 1}))
        .await;
    let reply = next_json(&mut peer).await;
    assert_eq!(reply["result"]["changed"], json!(["private"]), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_channels_is_greeted_as_before() {
    let srv = TestServer::start().await;
    let mut peer = RawPeer::connect_to(srv.addr(), "/ws", "").await;
    let welcome = next_json(&mut peer).await;
    assert_eq!(welcome["op"], "welcome");
    assert!(welcome.get("subscribed").is_none(), "{welcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_list_is_refused_before_the_upgrade() {
    let srv = TestServer::start().await;
    let many: Vec<String> = (0..=100).map(|i| format!("c{i}")).collect();
    for (query, why) in [
        ("channels=a,,b".to_string(), "400"),
        ("channels=".to_string(), "400"),
        ("channels=bad%20name".to_string(), "400"),
        (format!("channels={}", many.join(",")), "400"),
    ] {
        let status = RawPeer::handshake_status(srv.addr(), &format!("/ws?{query}"), "").await;
        assert!(status.contains(why), "{query}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_channels_and_url_channels_together_and_a_banned_user_refused() {
    let srv = TestServer::start_with(|c| {
        c.jwt.hmac_secret = herald_server::config::Secret(JWT_SECRET.into());
    })
    .await;
    let token = herald_server::jwt::mint(
        &herald_server::jwt::Claims {
            sub: "ann".into(),
            exp: herald_server::jwt::now_secs() + 60,
            channels: vec!["from-token".into()],
            ..Default::default()
        },
        herald_server::jwt::JwtAlgorithm::HS256,
        JWT_SECRET.as_bytes(),
    )
    .unwrap();
    let path = format!("/ws?channels=from-url&token={token}");
    let mut peer = RawPeer::connect_to(srv.addr(), &path, "").await;
    let welcome = next_json(&mut peer).await;
    assert_eq!(welcome["subscribed"], json!(["from-url"]), "{welcome}");
    wait_for_subscribers(&srv, "from-token", 1).await;
    wait_for_subscribers(&srv, "from-url", 1).await;
    srv.admin()
        .publish(&["from-token"], json!("t"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut peer).await["channel"], "from-token");

    // A banned user is refused at the handshake, URL channels or not.
    srv.admin()
        .request_ok("POST", "/api/v1/bans", Some(&json!({"user": "bob"})))
        .await
        .unwrap();
    let bob = user_token("bob");
    let status =
        RawPeer::handshake_status(srv.addr(), &format!("/ws?channels=news&token={bob}"), "").await;
    assert!(status.contains("403"), "{status}");
}

/// The Rust client subscribes in the URL when it is given channels up front, and says which
/// channel was refused and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_connects_subscribed() {
    let srv = TestServer::start().await;
    let mut client = herald_client::Client::connect_subscribed(&srv.ws_url(), &["news", "chat:a"])
        .await
        .unwrap();
    assert_eq!(client.welcome()["subscribed"], json!(["news", "chat:a"]));
    srv.admin().publish(&["chat:a"], json!("hi")).await.unwrap();
    let message = client.next_op("message", common::WAIT).await.unwrap();
    assert_eq!(message["data"], "hi");

    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name": "locked", "public": false})),
        )
        .await
        .unwrap();
    let refused =
        match herald_client::Client::connect_subscribed(&srv.ws_url(), &["news", "locked"]).await {
            Ok(_) => panic!("a refused channel fails the connect"),
            Err(e) => e,
        };
    assert!(refused.to_string().contains("locked"), "{refused}");
    assert!(refused.to_string().contains("forbidden"), "{refused}");
}

/// On plain TCP the 101 answer and the welcome leave in one write: the client's first read
/// holds both (and, in the URL form, the subscription too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101_and_the_welcome_arrive_together() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await;
    let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let req = "GET /ws?channels=news HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(common::WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]);
    assert!(first.starts_with("HTTP/1.1 101"), "{first}");
    assert!(
        first.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the accept key: {first}"
    );
    assert!(
        first.contains(r#""op":"welcome""#),
        "one read, both: {first}"
    );
    assert!(first.contains(r#""subscribed":["news"]"#), "{first}");
}
