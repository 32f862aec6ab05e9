//! One publication reaches a native, a SubSocket, an Eventual, a push-stream, a SimplySocket
//! and a WS-PushServer subscriber of the same channel, each in its own format; and a message
//! published through a dialect reaches the others.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, RawPeer, TestServer, WAIT};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publication_every_dialect_its_own_format() {
    let srv = TestServer::start_with(|c| {
        let d = &mut c.dialects;
        d.subsocket.enabled = true;
        d.eventual.enabled = true;
        d.pushstream.enabled = true;
        d.simplysocket.enabled = true;
        d.wspush.enabled = true;
    })
    .await;
    let addr = srv.addr();
    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"all","client_publish":true})),
        )
        .await
        .unwrap();

    let mut native = srv.client().await;
    native.subscribe(&["all"]).await.unwrap();
    let mut subsocket = RawPeer::connect_to(addr, "/subsocket/socket", "").await;
    subsocket.send_text("sub all").await;
    let mut eventual = RawPeer::connect_to(addr, "/eventual", "").await;
    eventual
        .send_json(json!({"type":"subscribe","channels":["all"]}))
        .await;
    let mut pushstream = RawPeer::connect_to(addr, "/pushstream/subscribe/all", "").await;
    let mut simply = RawPeer::connect_to(addr, "/simplysocket/ws", "").await;
    let simply_id = simply.json().await["message_body"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    simply
        .send_json(json!({"action":"join-room","message_body":{"roomname":"all"}}))
        .await;
    assert_eq!(simply.json().await["action"], "client-joined-room");
    let mut wspush = RawPeer::connect_to(addr, "/wspush/ws", "").await;
    let wspush_id = wspush.json().await["data"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    wspush
        .send_json(
            json!({"messageType":"CLIENT_ACTION","action":"SUBSCRIBE","data":{"channel":"all"}}),
        )
        .await;
    assert_eq!(wspush.json().await["message"], "Subscribed");
    for _ in 0..250 {
        let info = srv
            .admin()
            .request_ok("GET", "/api/v1/channels/all", None)
            .await
            .unwrap();
        if info["subscribers"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = srv
        .admin()
        .publish(&["all"], json!("hello everyone"))
        .await
        .unwrap();
    assert_eq!(r["channels"][0]["delivered"], 6);
    let epoch = r["channels"][0]["epoch"].as_str().unwrap().to_string();

    let m = native.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("all"), Some("hello everyone"))
    );
    assert_eq!(
        subsocket.text().await,
        "all 00000000-0000-0000-0000-000000000000 hello everyone"
    );
    let ev: Value = serde_json::from_str(eventual.text().await.trim_end()).unwrap();
    assert_eq!(ev["id"], format!("all:{epoch}:1"));
    assert_eq!(ev["data"], "hello everyone");
    assert_eq!(
        pushstream.text().await,
        r#"{"id":1,"channel":"all","text":"hello everyone"}"#
    );
    assert_eq!(
        simply.text().await,
        r#"{"action":"push-message","message_body":"hello everyone","IsTargetClient":false,"target":"all","sender":"Gawd"}"#
    );
    assert_eq!(
        wspush.text().await,
        format!(
            r#"{{"messageType":"CLIENT_PUSH","code":200,"message":"Push Message","data":{{"uuid":"{wspush_id}","subscribedChannels":["all"],"pushMessage":{{"channel":"all","message":"hello everyone"}}}}}}"#
        )
    );

    // And back: a SubSocket admin publishes; the others receive it in their formats.
    subsocket
        .send_text(&format!("admin-token {ADMIN_KEY}"))
        .await;
    subsocket.send_text("pub all from subsocket").await;
    assert_eq!(
        native.next_op("message", WAIT).await.unwrap()["data"],
        "from subsocket"
    );
    assert_eq!(
        pushstream.text().await,
        r#"{"id":2,"channel":"all","text":"from subsocket"}"#
    );
    assert_eq!(simply.json().await["message_body"], "from subsocket");
    assert_eq!(
        wspush.json().await["data"]["pushMessage"]["message"],
        "from subsocket"
    );
    let ev: Value = serde_json::from_str(eventual.text().await.trim_end()).unwrap();
    assert_eq!(ev["data"], "from subsocket");
    assert!(subsocket.text().await.ends_with(" from subsocket"));
    let _ = simply_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frames_are_answered_and_every_dialect_keeps_serving() {
    let srv = TestServer::start_with(|c| {
        let d = &mut c.dialects;
        d.subsocket.enabled = true;
        d.eventual.enabled = true;
        d.pushstream.enabled = true;
        d.simplysocket.enabled = true;
        d.wspush.enabled = true;
    })
    .await;
    let addr = srv.addr();
    let huge = "x".repeat(100 * 1024);

    let mut subsocket = RawPeer::connect_to(addr, "/subsocket/socket", "").await;
    subsocket.send_text(&huge).await;
    assert!(
        subsocket
            .text()
            .await
            .starts_with("__error message_too_large ")
    );

    let mut eventual = RawPeer::connect_to(addr, "/eventual", "").await;
    eventual.send_text(&huge).await;
    assert_eq!(
        serde_json::from_str::<Value>(eventual.text().await.trim_end()).unwrap()["code"],
        "message_too_large"
    );

    let mut simply = RawPeer::connect_to(addr, "/simplysocket/x", "").await;
    simply.json().await; // know-yourself
    simply.send_text(&huge).await;
    assert_eq!(
        simply.json().await["message_body"]["code"],
        "message_too_large"
    );

    let mut wspush = RawPeer::connect_to(addr, "/wspush/ws", "").await;
    wspush.json().await; // Connected
    wspush.send_text(&huge).await;
    let e = wspush.json().await;
    assert_eq!(
        (e["messageType"].as_str(), e["code"].as_u64()),
        (Some("ERROR"), Some(400))
    );

    // push-stream had no error frame: the message is skipped and the subscriber keeps working.
    let mut pushstream = RawPeer::connect_to(addr, "/pushstream/subscribe/big", "").await;
    pushstream.send_text(&huge).await;
    for _ in 0..250 {
        let info = srv
            .admin()
            .request("GET", "/api/v1/channels/big", None)
            .await
            .unwrap();
        if info.0 == 200 && info.1["subscribers"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.admin()
        .publish(&["big"], json!("still here"))
        .await
        .unwrap();
    assert_eq!(
        pushstream.text().await,
        r#"{"id":1,"channel":"big","text":"still here"}"#
    );

    // The others still answer too.
    subsocket.send_text("dance").await;
    assert!(subsocket.text().await.starts_with("__error unknown_op "));
    simply.send_text("{").await;
    assert_eq!(simply.json().await["action"], "error");
}
