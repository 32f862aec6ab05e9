//! The WS-PushServer dialect over real sockets: its HTTP envelopes byte for byte (create,
//! ping, push, delete, sysadmin, bad input), WebSocket acks, pushes with recipients, uuid
//! checks, and its two listeners of its own.

mod common;

use std::net::SocketAddr;

use common::{ADMIN_KEY, RawPeer, TestServer};
use herald_client::Api;
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.wspush.enabled = true;
        c.dialects.wspush.listen = "127.0.0.1:0".into();
        c.dialects.wspush.http_listen = "127.0.0.1:0".into();
    })
    .await
}

async fn call(base: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, bytes) = Api::new(base, None)
        .request_raw("POST", path, &[], body.to_string().into())
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn action(action: &str, data: Value) -> String {
    json!({"messageType":"SERVER_ACTION","action":action,"data":data}).to_string()
}

async fn connect(addr: SocketAddr, path: &str) -> (RawPeer, String) {
    let mut peer = RawPeer::connect_to(addr, path, "").await;
    let ack: Value = peer.json().await;
    assert_eq!(ack["messageType"], "CLIENT_ACK");
    assert_eq!(ack["message"], "Connected");
    assert_eq!(ack["data"]["subscribedChannels"], json!([]));
    let id = ack["data"]["uuid"].as_str().unwrap().to_string();
    (peer, id)
}

fn client_action(kind: &str, uuid: Option<&str>, channel: &str) -> Value {
    let mut v = json!({"messageType":"CLIENT_ACTION","action":kind,"data":{"channel":channel}});
    if let Some(u) = uuid {
        v["uuid"] = json!(u);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_api_flow() {
    let srv = server().await;
    let base = format!("{}/wspush", srv.http());
    let (status, body) = call(
        &base,
        "/channel/create",
        &action("CREATE_CHANNEL", json!({"channel":"news"})),
    )
    .await;
    assert_eq!(status, 200);
    let created: Value = serde_json::from_str(&body).unwrap();
    let token = created["data"]["channelToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        body,
        format!(
            r#"{{"messageType":"SERVER_ACK","code":200,"message":"Created","data":{{"channel":"news","channelToken":"{token}"}}}}"#
        )
    );
    let (status, body) = call(
        &base,
        "/channel/create",
        &action("CREATE_CHANNEL", json!({"channel":"news"})),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (
            409,
            r#"{"messageType":"ERROR","code":409,"message":"Conflict","data":{"errorDetails":"A WebSocketChannel called \"news\" already exists"}}"#
        )
    );

    let (mut a, a_id) = connect(srv.addr(), "/wspush/ws").await;
    let (mut b, b_id) = connect(srv.addr(), "/wspush/ws/anything").await;
    a.send_json(client_action("SUBSCRIBE", Some(&a_id), "news"))
        .await;
    assert_eq!(
        a.text().await,
        format!(
            r#"{{"messageType":"CLIENT_ACK","code":200,"message":"Subscribed","data":{{"uuid":"{a_id}","subscribedChannels":["news"]}}}}"#
        )
    );
    // A missing uuid is inferred (the original's own JS client omitted it); subscribing twice
    // does not duplicate.
    b.send_json(client_action("SUBSCRIBE", None, "news")).await;
    assert_eq!(b.json().await["message"], "Subscribed");
    b.send_json(client_action("SUBSCRIBE", None, "news")).await;
    assert_eq!(
        b.json().await["data"]["subscribedChannels"],
        json!(["news"])
    );
    // Somebody else's uuid: refused, nothing done.
    b.send_json(client_action("UNSUBSCRIBE", Some(&a_id), "news"))
        .await;
    assert_eq!(
        b.text().await,
        r#"{"messageType":"ERROR","code":403,"message":"Forbidden","data":{"errorDetails":"The given UUID does not belong to this WebSocket connection"}}"#
    );
    // A uuid that belongs to no connection is told apart from another connection's.
    b.send_json(client_action(
        "SUBSCRIBE",
        Some("00000000-0000-4000-8000-000000000000"),
        "news",
    ))
    .await;
    assert_eq!(
        b.text().await,
        r#"{"messageType":"ERROR","code":403,"message":"Forbidden","data":{"errorDetails":"The given UUID does not belong to any WebSocket connection"}}"#
    );
    b.send_json(client_action("SUBSCRIBE", None, "nope")).await;
    assert_eq!(b.json().await["code"], 404);
    b.send_text("{not json").await;
    assert_eq!(
        b.text().await,
        r#"{"messageType":"ERROR","code":400,"message":"Bad JSON","data":{"errorDetails":"{not json"}}"#
    );
    b.send_text(r#"{"messageType":"CLIENT_ACK"}"#).await; // ignored, as in the original

    let push = |recipients: Value, message: &str| {
        action(
            "PUSH_MESSAGE",
            json!({"channel":"news","channelToken":token,"recipients":recipients,"message":message}),
        )
    };
    let (status, body) = call(&base, "/push", &push(json!([]), "hello <b>&'")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            r#"{"messageType":"SERVER_ACK","code":200,"message":"Sent","data":{"channel":"news","channelToken":null}}"#
        )
    );
    let expected = |id: &str| {
        format!(
            r#"{{"messageType":"CLIENT_PUSH","code":200,"message":"Push Message","data":{{"uuid":"{id}","subscribedChannels":["news"],"pushMessage":{{"channel":"news","message":"hello \u003cb\u003e\u0026\u0027"}}}}}}"#
        )
    };
    assert_eq!(a.text().await, expected(&a_id));
    assert_eq!(b.text().await, expected(&b_id));
    let (status, _) = call(
        &base,
        "/push",
        &push(
            json!([b_id, "00000000-0000-0000-0000-000000000000"]),
            "only b",
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(b.json().await["data"]["pushMessage"]["message"], "only b");

    // ping
    let ping = |t: Value| action("PING_CHANNEL", json!({"channel":"news","channelToken":t}));
    assert_eq!(call(&base, "/channel/ping", &ping(json!(token))).await, (200, r#"{"messageType":"SERVER_ACK","code":200,"message":"OK","data":{"channel":"news","channelToken":null}}"#.into()));
    assert_eq!(call(&base, "/channel/ping", &ping(Value::Null)).await, (401, r#"{"messageType":"ERROR","code":401,"message":"Unauthorized","data":{"errorDetails":"No channel token provided"}}"#.into()));
    assert_eq!(
        call(&base, "/channel/ping", &ping(json!("hct_wrong")))
            .await
            .0,
        403
    );
    assert_eq!(
        call(
            &base,
            "/channel/ping",
            &action("PING_CHANNEL", json!({"channel":"nope","channelToken":"x"}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            &base,
            "/channel/ping",
            &action("PING_CHANNEL", json!({"channel":"news"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(call(&base, "/channel/ping", "{oops").await, (400, r#"{"messageType":"ERROR","code":400,"message":"Bad Request","data":{"errorDetails":"{oops"}}"#.into()));
    assert_eq!(call(&base, "/push", &action("CREATE_CHANNEL", json!({"channel":"x"}))).await, (400, r#"{"messageType":"ERROR","code":400,"message":"Bad Request","data":{"errorDetails":"Invalid message"}}"#.into()));
    // Objects only (serde would read the envelope, or its data, from an array).
    let invalid = r#"{"messageType":"ERROR","code":400,"message":"Bad Request","data":{"errorDetails":"Invalid message"}}"#;
    for body in [
        r#"["SERVER_ACTION","CREATE_CHANNEL",{"channel":"arr"}]"#,
        r#"{"messageType":"SERVER_ACTION","action":"CREATE_CHANNEL","data":["arr"]}"#,
    ] {
        assert_eq!(
            call(&base, "/channel/create", body).await,
            (400, invalid.into()),
            "{body}"
        );
    }

    // sysadmin needs the admin key.
    assert_eq!(call(&base, "/sysadmin", "").await.0, 401);
    let (status, _, bytes) = Api::new(&base, Some(ADMIN_KEY))
        .request_raw("GET", "/sysadmin", &[], Default::default())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            status,
            v["messageType"].as_str(),
            v["data"]["channelsAmount"].as_u64()
        ),
        (200, Some("SERVER_SYSADMIN"), Some(1))
    );

    // delete: subscribers are dropped silently.
    let del = action(
        "DELETE_CHANNEL",
        json!({"channel":"news","channelToken":token}),
    );
    assert_eq!(
        call(&base, "/channel/delete", &del).await,
        (
            200,
            r#"{"messageType":"SERVER_ACK","code":200,"message":"Deleted","data":{"channel":"news","channelToken":null}}"#.into()
        )
    );
    assert_eq!(call(&base, "/channel/delete", &del).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listeners_for_websocket_and_http() {
    let srv = server().await;
    let find = |name: &str| {
        srv.server
            .dialect_addrs
            .iter()
            .find(|(d, _)| *d == name)
            .unwrap()
            .1
    };
    let (ws_addr, http_addr) = (find("wspush"), find("wspush-http"));
    let base = format!("http://{http_addr}");
    let (_, body) = call(
        &base,
        "/channel/create",
        &action("CREATE_CHANNEL", json!({"channel":"c1"})),
    )
    .await;
    let token = serde_json::from_str::<Value>(&body).unwrap()["data"]["channelToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut peer, id) = connect(ws_addr, "/").await;
    peer.send_json(client_action("SUBSCRIBE", Some(&id), "c1"))
        .await;
    assert_eq!(peer.json().await["message"], "Subscribed");
    call(
        &base,
        "/push",
        &action(
            "PUSH_MESSAGE",
            json!({"channel":"c1","channelToken":token,"recipients":[],"message":"m"}),
        ),
    )
    .await;
    assert_eq!(peer.json().await["data"]["pushMessage"]["message"], "m");
}

fn created_token(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body).ok()?["data"]["channelToken"]
        .as_str()
        .map(str::to_string)
}

/// Creating never hands out the token of a channel in use, respects namespace policy, is
/// bounded per address and in total, and can be closed to all but the admin key (issue 9,
/// item 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_never_takes_over_a_channel_and_is_bounded() {
    let srv = TestServer::start_with(|c| {
        c.dialects.wspush.enabled = true;
        c.dialects.wspush.create_burst_per_ip = 4;
        c.dialects.wspush.create_max_channels = 5;
        let ns = |subscribe: &str, publish: &str| herald_server::config::NamespaceConfig {
            subscribe: Some(subscribe.into()),
            publish: Some(publish.into()),
            ..Default::default()
        };
        c.namespaces.insert("ops".into(), ns("public", "admin"));
        c.namespaces.insert("open".into(), ns("public", "clients"));
    })
    .await;
    let base = format!("{}/wspush", srv.http());
    let create = |name: &str| action("CREATE_CHANNEL", json!({ "channel": name }));

    // An ephemeral channel that a native client is using.
    let mut user = srv.client().await;
    user.request_ok(json!({"op":"subscribe","channel":"live"}))
        .await
        .unwrap();
    let (status, body) = call(&base, "/channel/create", &create("live")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(created_token(&body), None);
    // It stayed ephemeral: no token exists that could publish to or delete it.
    let info = srv
        .admin()
        .request_ok("GET", "/api/v1/channels/live", None)
        .await
        .unwrap();
    assert_eq!(info["persistent"], false);

    // A namespace that only admins publish to: no anonymous token for it.
    let (status, body) = call(&base, "/channel/create", &create("ops:deploys")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs the admin key"), "{body}");
    let (status, _, body) = Api::new(&base, Some(ADMIN_KEY))
        .request_raw("POST", "/channel/create", &[], create("ops:deploys").into())
        .await
        .unwrap();
    assert_eq!(status, 200, "{body:?}");
    // An open namespace, like channels outside any namespace: anyone may create.
    assert_eq!(
        call(&base, "/channel/create", &create("open:a")).await.0,
        200
    );

    // Per address: a burst of 4 attempts ("live" and open:a were two), then 429.
    assert_eq!(call(&base, "/channel/create", &create("c1")).await.0, 200);
    assert_eq!(call(&base, "/channel/create", &create("c2")).await.0, 200);
    let (status, body) = call(&base, "/channel/create", &create("c3")).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too Many Requests"), "{body}");
    // The admin key is not rate-limited.
    let (status, _, _) = Api::new(&base, Some(ADMIN_KEY))
        .request_raw("POST", "/channel/create", &[], create("c3").into())
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_creation_stops_at_a_number_of_channels() {
    let srv = TestServer::start_with(|c| {
        c.dialects.wspush.enabled = true;
        c.dialects.wspush.create_rate_per_ip = 0;
        c.dialects.wspush.create_max_channels = 3;
    })
    .await;
    let base = format!("{}/wspush", srv.http());
    let create = |name: &str| action("CREATE_CHANNEL", json!({ "channel": name }));
    for name in ["a", "b", "c"] {
        assert_eq!(call(&base, "/channel/create", &create(name)).await.0, 200);
    }
    let (status, body) = call(&base, "/channel/create", &create("d")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            r#"{"messageType":"ERROR","code":403,"message":"Forbidden","data":{"errorDetails":"The server holds too many channels; creating more needs the admin key"}}"#
        )
    );
    let (status, _, _) = Api::new(&base, Some(ADMIN_KEY))
        .request_raw("POST", "/channel/create", &[], create("d").into())
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_can_require_the_admin_key() {
    let srv = TestServer::start_with(|c| {
        c.dialects.wspush.enabled = true;
        c.dialects.wspush.create = "admin".into();
        c.dialects.wspush.create_max_channels = 0;
    })
    .await;
    let base = format!("{}/wspush", srv.http());
    let body = action("CREATE_CHANNEL", json!({"channel":"news"}));
    let (status, text) = call(&base, "/channel/create", &body).await;
    assert_eq!(
        (status, text.as_str()),
        (
            401,
            r#"{"messageType":"ERROR","code":401,"message":"Unauthorized","data":{"errorDetails":"Creating channels needs the admin key (Authorization: Bearer)"}}"#
        )
    );
    let (status, _, bytes) = Api::new(&base, None)
        .request_raw(
            "POST",
            "/channel/create",
            &[("authorization", &format!("bearer {ADMIN_KEY}"))],
            body.into(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{bytes:?}");
}
