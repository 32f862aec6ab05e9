//! Admin connections over the native protocol: authentication, lifecycle events in order with
//! their reasons, admin operations over the WebSocket (the HTTP API's twins), kick and bans.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, RawPeer, TestServer, WAIT};
use herald_client::Client;
use serde_json::{Value, json};

/// An admin connection that receives every event type.
async fn admin(srv: &TestServer) -> Client {
    let mut admin = Client::connect_with_headers(
        &srv.ws_url(),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
    )
    .await
    .unwrap();
    let reply = admin
        .request_ok(json!({"op":"events","types":["*"]}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["types"].as_array().unwrap().len(), 7);
    admin
}

/// The next event frame about `client` (events of other clients are skipped).
async fn event_of(admin: &mut Client, client: &str) -> Value {
    loop {
        let ev = admin.next_op("event", WAIT).await.unwrap();
        if ev["client"] == client {
            return ev;
        }
    }
}

async fn expect_events(admin: &mut Client, client: &str, expected: &[(&str, Option<&str>)]) {
    for (kind, reason) in expected {
        let ev = event_of(admin, client).await;
        assert_eq!(ev["type"], *kind, "{ev}");
        if let Some(reason) = reason {
            assert_eq!(ev["reason"], *reason, "{ev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sees_a_clients_life_in_order() {
    let srv = TestServer::start().await;
    let mut admin = admin(&srv).await;

    let mut c = Client::connect_with_headers(&srv.ws_url(), &[("user-agent", "test-agent/1")])
        .await
        .unwrap();
    let id = c.id().to_string();
    c.subscribe(&["room"]).await.unwrap();
    c.unsubscribe(&["room"]).await.unwrap();
    c.subscribe(&["room", "other"]).await.unwrap();
    c.close().await.unwrap();

    let connected = event_of(&mut admin, &id).await;
    assert_eq!(connected["type"], "client.connected");
    assert_eq!(connected["dialect"], "native");
    assert_eq!(connected["headers"]["user-agent"], "test-agent/1");
    assert!(
        connected["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(connected["seq"].as_u64().unwrap() > 0);
    assert!(connected["time"].as_u64().unwrap() > 0);
    let expected = [
        ("client.subscribed", None),
        ("client.unsubscribed", Some("unsubscribed")),
        ("client.subscribed", None),
        ("client.subscribed", None),
        ("client.unsubscribed", Some("disconnected")),
        ("client.unsubscribed", Some("disconnected")),
        ("client.disconnected", Some("closed_by_client")),
    ];
    expect_events(&mut admin, &id, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reasons_kick_ban_and_slow_consumer() {
    let srv = TestServer::start_with(|c| c.websocket.outbox_max_bytes = 128 * 1024).await;
    let mut admin = admin(&srv).await;
    admin
        .request_ok(json!({"op":"events","types":["client.disconnected"]}))
        .await
        .unwrap();

    // Kicked over the admin connection: the client sees the code and reason.
    let mut kicked = srv.client().await;
    let id = kicked.id().to_string();
    let reply = admin
        .request_ok(json!({"op":"kick","client":id,"reason":"bye now","reconnect":false}))
        .await
        .unwrap();
    assert_eq!(reply["result"], json!({"disconnected": id, "code": 4000}));
    match kicked.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, reason } => {
            assert_eq!((code, reason.as_str()), (4000, "bye now"))
        }
        other => panic!("{other:?}"),
    }
    expect_events(&mut admin, &id, &[("client.disconnected", Some("kicked"))]).await;

    // A slow consumer: never reads while a channel floods it.
    let mut slow = RawPeer::connect_with(srv.addr(), Some(4096)).await;
    let welcome = slow.json().await;
    let slow_id = welcome["client"].as_str().unwrap().to_string();
    slow.send_json(json!({"op":"subscribe","channel":"flood","id":1}))
        .await;
    assert_eq!(slow.json().await["id"], 1);
    let api = srv.admin();
    let payload = "z".repeat(16 * 1024);
    for _ in 0..200 {
        api.publish(&["flood"], json!(payload)).await.unwrap();
    }
    expect_events(
        &mut admin,
        &slow_id,
        &[("client.disconnected", Some("slow_consumer"))],
    )
    .await;

    // Banned by address: this client (127.0.0.1) is closed with 4003; the admin is exempt.
    let mut banned = srv.client().await;
    let banned_id = banned.id().to_string();
    let reply = admin
        .request_ok(json!({"op":"ban","client":banned_id,"duration_secs":60,"reason":"spam"}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["ban"]["id"], "ip:127.0.0.1");
    assert_eq!(reply["result"]["disconnected"], 1);
    match banned.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, reason } => {
            assert_eq!((code, reason.as_str()), (4003, "banned: spam"))
        }
        other => panic!("{other:?}"),
    }
    expect_events(
        &mut admin,
        &banned_id,
        &[("client.disconnected", Some("banned"))],
    )
    .await;
    admin.ping().await.expect("the admin connection survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_subscribes_a_client_and_messages_it() {
    let srv = TestServer::start().await;
    // Authenticating after connecting, with op auth.
    let mut admin = srv.client().await;
    let refused = admin.request(json!({"op":"clients"})).await.unwrap();
    assert_eq!(refused["error"]["code"], "forbidden");
    let wrong = admin
        .request(json!({"op":"auth","token":"not-the-key"}))
        .await
        .unwrap();
    assert_eq!(wrong["error"]["code"], "unauthorized");
    let ok = admin
        .request_ok(json!({"op":"auth","token":ADMIN_KEY}))
        .await
        .unwrap();
    assert_eq!(ok["result"]["admin"], true);

    let mut c = srv.client().await;
    let id = c.id().to_string();
    // A private channel the client could not join by itself.
    let created = admin
        .request_ok(json!({"op":"channel_create","name":"vip","public":false}))
        .await
        .unwrap();
    assert!(
        created["result"]["token"]
            .as_str()
            .unwrap()
            .starts_with("hct_")
    );
    let own = c
        .request(json!({"op":"subscribe","channel":"vip"}))
        .await
        .unwrap();
    assert_eq!(own["error"]["code"], "forbidden", "{own}");
    let reply = admin
        .request_ok(json!({"op":"subscribe","client":id,"channels":["vip"]}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["changed"], json!(["vip"]));
    let listed = admin
        .request_ok(json!({"op":"client","client":id}))
        .await
        .unwrap();
    assert_eq!(listed["result"]["channels"], json!(["vip"]));
    admin
        .request_ok(json!({"op":"publish","channel":"vip","data":{"n":1}}))
        .await
        .unwrap();
    let m = c.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("vip"), json!({"n":1}))
    );
    admin
        .request_ok(json!({"op":"send","to":id,"data":"psst"}))
        .await
        .unwrap();
    let d = c.next_op("direct", WAIT).await.unwrap();
    assert_eq!(d["data"], "psst");
    let reply = admin
        .request_ok(json!({"op":"unsubscribe","client":id,"channel":"vip"}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["changed"], json!(["vip"]));
    let notice = c.next_op("unsubscribed", WAIT).await.unwrap();
    assert_eq!(notice["reason"], "admin");

    // The listings and the same errors as the HTTP API.
    let clients = admin.request_ok(json!({"op":"clients"})).await.unwrap();
    assert_eq!(clients["result"]["clients"].as_array().unwrap().len(), 2);
    let channels = admin.request_ok(json!({"op":"channels"})).await.unwrap();
    assert_eq!(channels["result"]["channels"][0]["name"], "vip");
    let stats = admin.request_ok(json!({"op":"stats"})).await.unwrap();
    assert_eq!(stats["result"]["connections"], 2);
    let missing = admin
        .request(json!({"op":"kick","client":"7f1c7b5e-1111-4d5e-9c1a-000000000000"}))
        .await
        .unwrap();
    assert_eq!(missing["error"]["code"], "client_not_found");
    let bad = admin
        .request(json!({"op":"events","types":["client.exploded"]}))
        .await
        .unwrap();
    assert_eq!(bad["error"]["code"], "bad_request");
    let extra = admin
        .request(json!({"op":"channel","channel":"vip","colour":"red"}))
        .await
        .unwrap();
    assert_eq!(extra["error"]["code"], "bad_request");
    let missing_field = admin.request(json!({"op":"client"})).await.unwrap();
    assert_eq!(missing_field["error"]["code"], "missing_field");
    let deleted = admin
        .request_ok(json!({"op":"channel_delete","channel":"vip"}))
        .await
        .unwrap();
    assert_eq!(deleted["result"]["deleted"], "vip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_handshake_credential_is_refused() {
    let srv = TestServer::start().await;
    let status =
        RawPeer::handshake_status(srv.addr(), "/ws", "Authorization: Bearer wrong-key\r\n").await;
    assert!(status.contains("401"), "{status}");
    let status = RawPeer::handshake_status(srv.addr(), "/ws?token=wrong", "").await;
    assert!(status.contains("401"), "{status}");
    let mut admin = Client::connect(&format!("{}?token={ADMIN_KEY}", srv.ws_url()))
        .await
        .unwrap();
    admin.request_ok(json!({"op":"clients"})).await.unwrap();
}

/// A Bearer credential that is there but malformed, or two different credentials (or two
/// headers, or two `token` parameters), is
/// refused on every streaming handshake, not taken for no credential (the client meant to
/// authenticate); another scheme is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_doubled_handshake_credential_is_refused() {
    let srv = TestServer::start().await;
    let refused = [
        ("", "Authorization: Bearer\r\n"),
        ("", "Authorization: Bearer \r\n"),
        ("", "Authorization: Bearer \u{e9}\r\n"),
        (
            "token=garbage",
            &format!("Authorization: Bearer {ADMIN_KEY}\r\n"),
        ),
        // Two of a kind: a proxy in front may take the other one.
        (
            "",
            &format!("Authorization: Bearer {ADMIN_KEY}\r\nAuthorization: Bearer garbage\r\n"),
        ),
        (&format!("token={ADMIN_KEY}&token=garbage"), ""),
    ];
    for (query, header) in refused {
        let status = RawPeer::handshake_status(srv.addr(), &format!("/ws?{query}"), header).await;
        assert!(status.contains("401"), "/ws {header:?}: {status}");
        for path in ["/sse", "/stream", "/poll"] {
            let req = format!(
                "GET {path}?channels=a&timeout=0&{query} HTTP/1.0\r\nHost: x\r\n{header}\r\n"
            );
            let head = common::raw_http::status_of(&srv, &req).await;
            assert!(head.ends_with("401"), "{path} {header:?}: {head}");
        }
    }
    // Another scheme is not ours (a browser sends Basic to a site behind HTTP Basic auth):
    // passed over, and a `?token=` still counts.
    let basic = "Authorization: Basic Zm9vOmJhcg==\r\n";
    let status = RawPeer::handshake_status(srv.addr(), "/ws", basic).await;
    assert!(status.contains("101"), "{status}");
    let status =
        RawPeer::handshake_status(srv.addr(), &format!("/ws?token={ADMIN_KEY}"), basic).await;
    assert!(status.contains("101"), "{status}");
    let status = RawPeer::handshake_status(srv.addr(), "/ws?token=wrong", basic).await;
    assert!(status.contains("401"), "{status}");
    // The same credential twice is one credential.
    let both = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    let status =
        RawPeer::handshake_status(srv.addr(), &format!("/ws?token={ADMIN_KEY}"), &both).await;
    assert!(status.contains("101"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupied_and_vacated_fire_once_per_transition_under_concurrency() {
    let srv = TestServer::start().await;
    let mut admin = admin(&srv).await;
    admin
        .request_ok(json!({"op":"events","types":["channel.occupied","channel.vacated"]}))
        .await
        .unwrap();
    // Eight clients join and leave the same channel concurrently, 25 times each.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = srv.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await.unwrap();
            for _ in 0..25 {
                c.subscribe(&["busy"]).await.unwrap();
                c.unsubscribe(&["busy"]).await.unwrap();
            }
            c.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The channel ends vacant: events must alternate occupied, vacated, ... ending vacated.
    let mut last = String::new();
    let mut transitions = 0;
    loop {
        let ev = admin.next_op("event", WAIT).await.unwrap();
        assert_eq!(ev["channel"], "busy");
        let kind = ev["type"].as_str().unwrap().to_string();
        let expected = if last == "channel.occupied" {
            "channel.vacated"
        } else {
            "channel.occupied"
        };
        assert_eq!(kind, expected, "after {transitions} transitions");
        transitions += 1;
        last = kind;
        if last == "channel.vacated" {
            // Done once nothing more arrives shortly and the channel is gone.
            admin.pump(Duration::from_millis(300)).await.unwrap();
            if admin.queued() == 0 {
                break;
            }
        }
    }
    assert!(transitions >= 2);
    let gone = srv
        .admin()
        .request("GET", "/api/v1/channels/busy", None)
        .await
        .unwrap();
    assert_eq!(gone.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bans_by_address_and_range_expire_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = herald_server::start(common::config(dir.path()))
        .await
        .unwrap();
    let http = format!("http://{}", server.local_addr);
    let api = herald_client::Api::new(&http, Some(ADMIN_KEY));

    // Bad input gets clear errors.
    for (body, code) in [
        (json!({}), "bad_request"),
        (json!({"ip":"1.2.3.4","user":"x"}), "bad_request"),
        (json!({"ip":"nope"}), "bad_request"),
        (json!({"cidr":"10.0.0.0/99"}), "bad_request"),
        (json!({"ip":"1.2.3.4","duration_secs":0}), "bad_request"),
        (json!({"ip":"1.2.3.4","colour":"red"}), "bad_request"),
    ] {
        let (status, reply) = api
            .request("POST", "/api/v1/bans", Some(&body))
            .await
            .unwrap();
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, _) = herald_client::Api::new(&http, None)
        .request("GET", "/api/v1/bans", None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // A range ban covering 127.0.0.0/8, for one second: refused, then admitted again.
    let (status, reply) = api
        .request(
            "POST",
            "/api/v1/bans",
            Some(&json!({"cidr":"127.0.0.0/8","duration_secs":1,"reason":"cool off"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["ban"]["id"], "cidr:127.0.0.0/8");
    let refused = RawPeer::handshake_status(server.local_addr, "/ws", "").await;
    assert!(refused.contains("403"), "{refused}");
    let mut admitted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if RawPeer::handshake_status(server.local_addr, "/ws", "")
            .await
            .contains("101")
        {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the ban expired");

    // An open-ended address ban is listed, survives a restart, and can be lifted.
    let (status, _) = api
        .request("POST", "/api/v1/bans", Some(&json!({"ip":"127.0.0.1"})))
        .await
        .unwrap();
    assert_eq!(status, 201);
    server.shutdown(Duration::from_secs(2)).await;
    let server = herald_server::start(common::config(dir.path()))
        .await
        .unwrap();
    let http = format!("http://{}", server.local_addr);
    let api = herald_client::Api::new(&http, Some(ADMIN_KEY));
    let refused = RawPeer::handshake_status(server.local_addr, "/ws", "").await;
    assert!(
        refused.contains("403"),
        "still banned after restart: {refused}"
    );
    let list = api.request_ok("GET", "/api/v1/bans", None).await.unwrap();
    assert_eq!(list["bans"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["bans"][0]["id"], "ip:127.0.0.1");
    // The admin key still gets in (operators cannot lock themselves out).
    let status = RawPeer::handshake_status(
        server.local_addr,
        "/ws",
        &format!("Authorization: Bearer {ADMIN_KEY}\r\n"),
    )
    .await;
    assert!(status.contains("101"), "{status}");
    let lifted = api
        .request_ok("DELETE", "/api/v1/bans/ip:127.0.0.1", None)
        .await
        .unwrap();
    assert_eq!(lifted["unbanned"]["id"], "ip:127.0.0.1");
    let (status, reply) = api
        .request("DELETE", "/api/v1/bans/ip:127.0.0.1", None)
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let ok = RawPeer::handshake_status(server.local_addr, "/ws", "").await;
    assert!(ok.contains("101"), "{ok}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// An admin op whose reply could never fit in the connection's outbox answers `too_many`
/// and the connection stays; it was closed as a slow consumer (4100) with no reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_for_the_outbox_is_an_error_not_a_close() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_payload_bytes = 1024;
        c.websocket.outbox_max_bytes = 4096;
    })
    .await;
    let mut admin = Client::connect(&format!("{}?token={ADMIN_KEY}", srv.ws_url()))
        .await
        .unwrap();
    // About 100 bytes of listing each: 100 channels need more than 4 KiB.
    for i in 0..100 {
        let name = format!("listed-{i:03}-{}", "x".repeat(40));
        srv.admin()
            .request_ok("POST", "/api/v1/channels", Some(&json!({ "name": name })))
            .await
            .unwrap();
    }
    let reply = admin.request(json!({"op":"channels"})).await.unwrap();
    assert_eq!(reply["error"]["code"], "too_many", "{reply}");
    // Still connected, and a reply that fits still comes.
    let one = admin
        .request_ok(json!({"op":"channel","channel":"listed-000-".to_string() + &"x".repeat(40)}))
        .await
        .unwrap();
    assert_eq!(one["result"]["subscribers"], 0, "{one}");
}
