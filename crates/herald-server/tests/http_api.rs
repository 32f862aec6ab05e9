//! The HTTP API over real sockets: authentication, channels and their tokens, clients,
//! stats, errors, OpenAPI, and durability across a restart.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, TestServer, WAIT};
use herald_client::Api;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_credential_are_refused() {
    let srv = TestServer::start().await;
    for api in [srv.anonymous(), Api::new(&srv.http(), Some("wrong-key"))] {
        for (method, path) in [
            ("GET", "/api/v1/channels"),
            ("POST", "/api/v1/publish"),
            ("GET", "/api/v1/stats"),
        ] {
            let (status, body) = api
                .request(method, path, Some(&json!({"channel":"a","data":1})))
                .await
                .unwrap();
            assert_eq!(status, 401, "{method} {path}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let (status, _, _) = srv
        .anonymous()
        .request_raw(
            "GET",
            "/api/v1/stats",
            &[("authorization", "Basic abc")],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}

/// A channel token cannot tell which channels exist: another channel, an existing or a
/// missing one, is refused the same way on every route (issue 9, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_token_cannot_probe_which_channels_exist() {
    let srv = TestServer::start_with(|c| c.channels.auto_create = false).await;
    let admin = srv.admin();
    let created = admin
        .request_ok("POST", "/api/v1/channels", Some(&json!({"name":"mine"})))
        .await
        .unwrap();
    admin
        .request_ok("POST", "/api/v1/channels", Some(&json!({"name":"theirs"})))
        .await
        .unwrap();
    let tok = Api::new(&srv.http(), created["token"].as_str());
    let mut answers = Vec::new();
    for channel in ["theirs", "missing"] {
        let path = format!("/api/v1/channels/{channel}");
        let publish = json!({"channel": channel, "data": 1});
        for (method, path, body) in [
            ("GET", path.as_str(), None),
            ("DELETE", path.as_str(), None),
            ("POST", "/api/v1/publish", Some(&publish)),
        ] {
            let (status, body) = tok.request(method, path, body).await.unwrap();
            let message = body["error"]["message"]
                .as_str()
                .unwrap()
                .replace(channel, "X");
            answers.push((method, status, body["error"]["code"].clone(), message));
        }
    }
    let (theirs, missing) = answers.split_at(3);
    assert_eq!(theirs, missing, "the same refusal for both");
    assert!(theirs.iter().all(|a| a.1 == 403), "{theirs:?}");
    // The admin key still learns that a channel does not exist.
    let (status, body) = admin
        .request("GET", "/api/v1/channels/missing", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("channel_not_found"))
    );
}

/// Escaped JSON strings work everywhere a string does, and a repeated field is refused the
/// same way over WebSocket, in the HTTP API and in admin ops (issue 9, items 5 and 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_escapes_work_and_repeated_fields_are_refused_everywhere() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_text(r#"{"op":"subscribe","channel":"chat\/room","id":1}"#)
        .await
        .unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["result"]["channels"], json!(["chat/room"]), "{reply}");
    c.send_text(r#"{"\u006fp":"p\u0069ng","id":2}"#)
        .await
        .unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["id"], 2);
    assert!(reply.get("error").is_none(), "{reply}");
    // The HTTP API reads the same escapes.
    let body = r#"{"channel":"chat\/room","data":{"x":"\u00e9"}}"#;
    let (status, _, answer) = srv
        .admin()
        .request_raw("POST", "/api/v1/publish", &[], body.into())
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer:?}");
    let message = c.next_op("message", WAIT).await.unwrap();
    assert_eq!(message["channel"], "chat/room");
    assert_eq!(message["data"], json!({"x":"é"}));

    // Repeated fields: refused with the field's name, the id kept when it is not the one.
    c.send_text(r#"{"op":"ping","id":1,"id":2}"#).await.unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["id"], json!(null));
    assert_eq!(reply["error"]["code"], "bad_request");
    assert_eq!(
        reply["error"]["message"],
        "field \"id\" appears more than once"
    );
    c.send_text(r#"{"op":"publish","channel":"a","data":1,"channel":"b","id":7}"#)
        .await
        .unwrap();
    let reply = c.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["id"], 7);
    assert_eq!(
        reply["error"]["message"],
        "field \"channel\" appears more than once"
    );
    for (path, body) in [
        ("/api/v1/publish", r#"{"channel":"a","data":1,"data":2}"#),
        ("/api/v1/channels", r#"{"name":"x","name":"y"}"#),
        ("/api/v1/bans", r#"{"ip":"10.0.0.1","ip":"10.0.0.2"}"#),
    ] {
        let (status, _, answer) = srv
            .admin()
            .request_raw("POST", path, &[], body.into())
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{path}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("appears more than once"),
            "{path}: {answer}"
        );
    }
    // An admin op's own fields.
    let mut admin = herald_client::Client::connect(&format!("{}?token={ADMIN_KEY}", srv.ws_url()))
        .await
        .unwrap();
    admin
        .send_text(r#"{"op":"ban","ip":"10.0.0.1","ip":"10.0.0.2","id":9}"#)
        .await
        .unwrap();
    let reply = admin.next_op("reply", WAIT).await.unwrap();
    assert_eq!(reply["id"], 9);
    assert_eq!(
        reply["error"]["message"],
        "field \"ip\" appears more than once"
    );
}

/// The Bearer scheme is case-insensitive (RFC 7235), on the API and at the handshake
/// (issue 9, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let srv = TestServer::start().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let header = format!("{scheme} {ADMIN_KEY}");
        let (status, _, body) = srv
            .anonymous()
            .request_raw(
                "GET",
                "/api/v1/stats",
                &[("authorization", &header)],
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{scheme}: {body:?}");
        let client = herald_client::Client::connect_with_headers(
            &srv.ws_url(),
            &[("authorization", &header)],
        )
        .await
        .unwrap();
        let info = srv
            .admin()
            .request_ok("GET", &format!("/api/v1/clients/{}", client.id()), None)
            .await
            .unwrap();
        assert_eq!(info["admin"], true, "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_openapi_and_unknown_routes() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .anonymous()
        .request("GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, doc) = srv
        .anonymous()
        .request("GET", "/api/v1/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // docs/openapi.json is the served document (HERALD_UPDATE_OPENAPI=1 rewrites it).
    let committed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    if std::env::var_os("HERALD_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        std::fs::write(committed, text).unwrap();
    }
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
    assert!(
        on_disk == doc,
        "docs/openapi.json is not the served document: run HERALD_UPDATE_OPENAPI=1 cargo test -p herald-server --test http_api health_openapi"
    );
    for path in [
        "/api/v1/publish",
        "/api/v1/batch",
        "/api/v1/channels",
        "/api/v1/channels/{name}",
        "/api/v1/clients/{id}/send",
        "/api/v1/stats",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    // A real validator: every response described, path parameters in their template, tags
    // declared (issue 9, item 9).
    assert_eq!(doc["openapi"], "3.1.0");
    let spec: roas::v3_1::spec::Spec =
        serde_json::from_value(doc.clone()).expect("the document parses as OpenAPI 3.1");
    use roas::validation::Validate;
    if let Err(errors) = spec.validate(roas::validation::Options::new(), None) {
        panic!("the OpenAPI document is invalid: {errors}");
    }
    // The kick options are query parameters.
    let kick = &doc["paths"]["/api/v1/clients/{id}"]["delete"]["parameters"];
    let places: Vec<(&str, &str)> = kick
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
        .collect();
    assert_eq!(
        places,
        [("id", "path"), ("reason", "query"), ("reconnect", "query")]
    );
    let (status, body) = srv
        .admin()
        .request("GET", "/api/v1/nope", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = srv
        .admin()
        .request("PUT", "/api/v1/publish", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_validates_its_body() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_http_body_bytes = 4096;
        c.limits.max_payload_bytes = 4096;
    })
    .await;
    let api = srv.admin();
    let cases = [
        ("not json", 400, "invalid_json"),
        ("[]", 400, "bad_request"),
        (r#"{"data":1}"#, 400, "missing_field"),
        (r#"{"channel":"a"}"#, 400, "missing_field"),
        (r#"{"channel":"a b","data":1}"#, 400, "invalid_channel"),
        (r#"{"channels":"a","data":1}"#, 400, "bad_request"),
        (
            r#"{"channel":"a","data":1,"to":["x"]}"#,
            400,
            "invalid_client_id",
        ),
    ];
    for (body, status, code) in cases {
        let (got, _, bytes) = api
            .request_raw(
                "POST",
                "/api/v1/publish",
                &[("content-type", "application/json")],
                body.to_string().into(),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
    }
    let big = json!({"channel":"a","data":"x".repeat(10_000)}).to_string();
    let (status, _, bytes) = api
        .request_raw("POST", "/api/v1/publish", &[], big.into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str().unwrap()),
        (413, "message_too_large")
    );
    // Publishing to a channel nobody listens to is fine and records nothing.
    let r = api.publish(&["empty"], json!(1)).await.unwrap();
    assert_eq!(r["channels"][0]["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_lifecycle_and_tokens() {
    let srv = TestServer::start().await;
    let api = srv.admin();
    let created = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"orders","public":false,"max_subscribers":2})),
        )
        .await
        .unwrap();
    assert_eq!(created["name"], "orders");
    assert_eq!(created["persistent"], true);
    assert_eq!(
        created["options"],
        json!({"public": false, "client_publish": false, "max_subscribers": 2})
    );
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("hct_"));
    let (status, body) = api
        .request("POST", "/api/v1/channels", Some(&json!({"name":"orders"})))
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("channel_exists"))
    );
    let (status, body) = api
        .request(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"x","colour":"red"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // An array is not an object, though serde would fill the struct from it in order.
    let (status, body) = api
        .request(
            "POST",
            "/api/v1/channels",
            Some(&json!(["by-position", true, null, false, 0])),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, _) = api
        .request("GET", "/api/v1/channels/by-position", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "no channel was created");

    // Private: refused without the token, admitted with it.
    let mut c = srv.client().await;
    let reply = c
        .request(json!({"op":"subscribe","channel":"orders"}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "forbidden");
    c.request_ok(json!({"op":"subscribe","channel":"orders","token":token}))
        .await
        .unwrap();

    // The token publishes to and inspects its own channel only.
    let tok = Api::new(&srv.http(), Some(&token));
    let r = tok.publish(&["orders"], json!({"id": 1})).await.unwrap();
    assert_eq!(r["channels"][0]["delivered"], 1);
    assert_eq!(
        c.next_op("message", WAIT).await.unwrap()["data"],
        json!({"id": 1})
    );
    let info = tok
        .request_ok("GET", "/api/v1/channels/orders", None)
        .await
        .unwrap();
    assert_eq!(info["subscribers"], 1);
    assert_eq!(info["offset"], 1);
    api.request_ok("POST", "/api/v1/channels", Some(&json!({"name":"other"})))
        .await
        .unwrap();
    let (status, body) = tok
        .request(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"other","data":1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = tok.request("GET", "/api/v1/channels", None).await.unwrap();
    assert_eq!(status, 403);
    let (status, _) = tok
        .request("DELETE", "/api/v1/channels/other", None)
        .await
        .unwrap();
    assert_eq!(status, 403);

    // max_subscribers: 0 means unlimited, as in the configuration file.
    let unlimited = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"wide","max_subscribers":0})),
        )
        .await
        .unwrap();
    assert!(
        unlimited["options"].get("max_subscribers").is_none(),
        "{unlimited}"
    );
    let mut c2 = srv.client().await;
    let mut c3 = srv.client().await;
    c2.request_ok(json!({"op":"subscribe","channel":"orders","token":token}))
        .await
        .unwrap();
    let reply = c3
        .request(json!({"op":"subscribe","channel":"orders","token":token}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "channel_full");

    // Listing shows counts.
    let list = api
        .request_ok("GET", "/api/v1/channels", None)
        .await
        .unwrap();
    let orders = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "orders")
        .unwrap();
    assert_eq!(orders["subscribers"], 2);

    // Deleting tells the subscribers; the token can delete its own channel.
    let r = tok
        .request_ok("DELETE", "/api/v1/channels/orders", None)
        .await
        .unwrap();
    assert_eq!(r, json!({"deleted": "orders", "unsubscribed": 2}));
    let u = c.next_op("unsubscribed", WAIT).await.unwrap();
    assert_eq!(
        u,
        json!({"op":"unsubscribed","channel":"orders","reason":"channel_deleted"})
    );
    let (status, body) = api
        .request("GET", "/api/v1/channels/orders", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("channel_not_found"))
    );
    let (status, _) = api
        .request("GET", "/api/v1/channels/bad%20name", None)
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_off_requires_existing_channels() {
    let srv = TestServer::start_with(|c| c.channels.auto_create = false).await;
    let mut c = srv.client().await;
    let reply = c
        .request(json!({"op":"subscribe","channel":"nope"}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "channel_not_found");
    let (status, body) = srv
        .admin()
        .request(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"nope","data":1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("channel_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_be_inspected_subscribed_messaged_and_kicked() {
    let srv = TestServer::start().await;
    let api = srv.admin();
    let mut c = srv.client().await;
    c.subscribe(&["mine"]).await.unwrap();
    let list = api
        .request_ok("GET", "/api/v1/clients", None)
        .await
        .unwrap();
    let entry = &list["clients"][0];
    assert_eq!(entry["id"], c.id());
    assert_eq!(entry["dialect"], "native");
    assert_eq!(entry["subscriptions"], 1);

    let path = format!("/api/v1/clients/{}", c.id());
    let sub = api
        .request_ok(
            "POST",
            &format!("{path}/subscribe"),
            Some(&json!({"channels":["pushed","mine"]})),
        )
        .await
        .unwrap();
    assert_eq!(sub["changed"], json!(["pushed"]));
    let one = api.request_ok("GET", &path, None).await.unwrap();
    assert_eq!(one["channels"], json!(["mine", "pushed"]));
    api.publish(&["pushed"], json!("via admin subscription"))
        .await
        .unwrap();
    assert_eq!(
        c.next_op("message", WAIT).await.unwrap()["channel"],
        "pushed"
    );

    let unsub = api
        .request_ok(
            "POST",
            &format!("{path}/unsubscribe"),
            Some(&json!({"channel":"pushed"})),
        )
        .await
        .unwrap();
    assert_eq!(unsub["changed"], json!(["pushed"]));
    let u = c.next_op("unsubscribed", WAIT).await.unwrap();
    assert_eq!(u["reason"], "admin");

    let missing = "/api/v1/clients/00000000-0000-0000-0000-000000000000";
    let (status, body) = api.request("GET", missing, None).await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("client_not_found"))
    );
    let (status, body) = api
        .request("GET", "/api/v1/clients/xyz", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_client_id"))
    );
    let (status, _) = api
        .request(
            "DELETE",
            &format!("{path}?reason={}", "r".repeat(200)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 400);

    api.request_ok("DELETE", &path, None).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if api.request("GET", &path, None).await.unwrap().0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "kicked client is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_and_messages() {
    let srv = TestServer::start().await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    a.subscribe(&["s"]).await.unwrap();
    b.subscribe(&["s"]).await.unwrap();
    srv.admin().publish(&["s"], json!(1)).await.unwrap();
    a.next_op("message", WAIT).await.unwrap();
    let stats = srv.admin().stats().await.unwrap();
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["channels"], 1);
    assert_eq!(stats["subscriptions"], 2);
    assert_eq!(stats["publications"], 1);
    assert_eq!(stats["messages_out"], 2);
    assert_eq!(stats["messages_in"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let mut config = common::config(dir.path());
        config.admin_key = String::new(); // generated on first start, reused after
        herald_server::start(config).await.unwrap()
    };
    let first = start().await;
    assert!(first.generated_admin_key);
    let key = first.admin_key().to_string();
    let api = Api::new(&format!("http://{}", first.local_addr), Some(&key));
    let created = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"durable","public":false,"client_publish":true})),
        )
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    api.request_ok("POST", "/api/v1/channels", Some(&json!({"name":"deleted"})))
        .await
        .unwrap();
    api.request_ok("DELETE", "/api/v1/channels/deleted", None)
        .await
        .unwrap();
    first.shutdown(Duration::from_secs(2)).await;

    let second = start().await;
    assert!(!second.generated_admin_key);
    assert_eq!(second.admin_key(), key);
    assert_eq!(second.restored_channels, 1);
    let base = format!("http://{}", second.local_addr);
    let api = Api::new(&base, Some(&key));
    let list = api
        .request_ok("GET", "/api/v1/channels", None)
        .await
        .unwrap();
    assert_eq!(list["channels"].as_array().unwrap().len(), 1);
    let durable = &list["channels"][0];
    assert_eq!(durable["name"], "durable");
    assert_eq!(durable["options"]["public"], false);
    assert_eq!(durable["options"]["client_publish"], true);
    // Offsets restarted, so the epoch changed.
    assert_ne!(durable["epoch"], created["epoch"]);

    let mut c = herald_client::Client::connect(&format!("ws://{}/ws", second.local_addr))
        .await
        .unwrap();
    c.request_ok(json!({"op":"subscribe","channel":"durable","token":token}))
        .await
        .unwrap();
    let tok = Api::new(&base, Some(&token));
    tok.publish(&["durable"], json!("after restart"))
        .await
        .unwrap();
    assert_eq!(
        c.next_op("message", WAIT).await.unwrap()["data"],
        "after restart"
    );
    second.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_1001() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let TestServer { server, dir: _dir } = srv;
    let closer = tokio::spawn(server.shutdown(Duration::from_secs(2)));
    match c.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, .. } => assert_eq!(code, 1001),
        other => panic!("expected close, got {other:?}"),
    }
    closer.await.unwrap();
    let _ = ADMIN_KEY;
}

/// A connection that never sends a request does not hold the server at shutdown: its store
/// is released at once and a new server starts on the same data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_by_a_silent_connection() {
    let srv = TestServer::start().await;
    let silent = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    // A publisher's keep-alive connection, idle after its request (served without hyper).
    let publisher = srv.admin();
    publisher.publish(&["x"], json!(1)).await.unwrap();
    // Let the server accept it (its first read is what shutdown must not wait for).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let TestServer { server, dir } = srv;
    let dir = dir.unwrap();
    server.shutdown(Duration::from_secs(2)).await;
    let again = herald_server::start(common::config(dir.path())).await;
    assert!(again.is_ok(), "the store was released: {:?}", again.err());
    drop((silent, publisher));
    again.unwrap().shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_each_publication_in_order() {
    let srv = TestServer::start_with(|c| c.limits.max_batch_publications = 4).await;
    let api = srv.admin();
    let mut a = srv.client().await;
    a.request_ok(json!({"op":"subscribe","channels":["a","b"]}))
        .await
        .unwrap();
    let batch = json!({"publications": [
        {"channel": "a", "data": {"n": 1}},
        {"channel": "a b", "data": 2},
        {"channels": ["b", "c"], "data": 3},
        {"channel": "a"},
    ]});
    let r = api
        .request_ok("POST", "/api/v1/batch", Some(&batch))
        .await
        .unwrap();
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{r}");
    assert_eq!(results[0]["channels"][0]["channel"], "a");
    assert_eq!(results[0]["channels"][0]["offset"], 1);
    assert_eq!(results[0]["channels"][0]["delivered"], 1);
    assert_eq!(results[1]["error"]["code"], "invalid_channel");
    assert_eq!(results[2]["channels"][0]["channel"], "b");
    assert_eq!(results[2]["channels"][0]["delivered"], 1);
    assert_eq!(results[2]["channels"][1]["channel"], "c");
    assert_eq!(results[2]["channels"][1]["delivered"], 0);
    assert_eq!(results[3]["error"]["code"], "missing_field");
    // Delivered in the order of the batch, the refused ones nowhere.
    let first = a.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (&first["channel"], &first["data"]),
        (&json!("a"), &json!({"n": 1}))
    );
    let second = a.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (&second["channel"], &second["data"]),
        (&json!("b"), &json!(3))
    );

    // The batch itself refused: nothing of it is published.
    let five: Vec<_> = (0..5).map(|i| json!({"channel": "a", "data": i})).collect();
    let refusals = [
        (json!({"publications": five}), 400, "too_many"),
        (json!({"publications": []}), 400, "bad_request"),
        (
            json!({"publications": {"channel": "a"}}),
            400,
            "bad_request",
        ),
        (json!({}), 400, "bad_request"),
        (json!({"publications": [], "extra": 1}), 400, "bad_request"),
        (json!([{"channel": "a", "data": 1}]), 400, "bad_request"),
    ];
    for (body, status, code) in refusals {
        let (got, v) = api
            .request("POST", "/api/v1/batch", Some(&body))
            .await
            .unwrap();
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (got, _, bytes) = api
        .request_raw(
            "POST",
            "/api/v1/batch",
            &[("content-type", "application/json")],
            "{\"publications\":[".into(),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let big = json!({"publications": [{"channel": "a", "data": "x".repeat(2 << 20)}]});
    let (got, v) = api
        .request("POST", "/api/v1/batch", Some(&big))
        .await
        .unwrap();
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (413, Some("message_too_large"))
    );
    let (got, _) = srv
        .anonymous()
        .request("POST", "/api/v1/batch", Some(&batch))
        .await
        .unwrap();
    assert_eq!(got, 401);
    // Nothing of the refused batches reached "a": the next publication is its second.
    let r = api.publish(&["a"], json!("last")).await.unwrap();
    assert_eq!(r["channels"][0]["offset"], 2);
    let next = a.next_op("message", WAIT).await.unwrap();
    assert_eq!(next["data"], "last");
}

/// A publisher's keep-alive connection: publish requests are answered without hyper (split,
/// pipelined, refused), then another kind of request hands the connection to hyper, which
/// answers it and the publish requests after it alike; `Connection: close` closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_connection_serves_every_request_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await;
    let mut sub = srv.client().await;
    sub.request_ok(json!({"op":"subscribe","channel":"k"}))
        .await
        .unwrap();
    let publish = |n: u32, auth: &str, extra: &str| {
        let body = format!(r#"{{"channel":"k","data":{n}}}"#);
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let mut got = String::new();
    // Reads until `n` whole responses (by content-length) arrived; returns their bodies.
    async fn responses(
        s: &mut tokio::net::TcpStream,
        got: &mut String,
        n: usize,
    ) -> Vec<(u16, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            while let Some(end) = got.find("\r\n\r\n") {
                let head = &got[..end];
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .expect("content-length")
                    .parse()
                    .unwrap();
                if got.len() < end + 4 + len {
                    break;
                }
                let status = head[9..12].parse().unwrap();
                let body = serde_json::from_str(&got[end + 4..end + 4 + len]).unwrap();
                out.push((status, body));
                got.drain(..end + 4 + len);
            }
            if out.len() >= n {
                return out;
            }
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("closed after {out:?}"),
                Ok(Ok(k)) => got.push_str(std::str::from_utf8(&buf[..k]).unwrap()),
                other => panic!("{other:?} after {out:?}"),
            }
        }
    }
    // One request written a byte at a time.
    for b in publish(1, ADMIN_KEY, "").bytes() {
        s.write_all(&[b]).await.unwrap();
    }
    let r = responses(&mut s, &mut got, 1).await;
    assert_eq!(r[0].0, 200);
    assert_eq!(r[0].1["channels"][0]["offset"], 1);
    // Three pipelined in one write: a good one, a refused credential, a good one.
    let three =
        publish(2, ADMIN_KEY, "") + &publish(99, "wrong-key", "") + &publish(3, ADMIN_KEY, "");
    s.write_all(three.as_bytes()).await.unwrap();
    let r = responses(&mut s, &mut got, 3).await;
    assert_eq!(r[0].1["channels"][0]["offset"], 2);
    assert_eq!(
        (r[1].0, r[1].1["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(r[2].1["channels"][0]["offset"], 3);
    // Another kind of request: hyper takes the connection (and what follows it).
    let stats = format!(
        "GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n"
    );
    let rest = stats + &publish(4, ADMIN_KEY, "") + &publish(5, ADMIN_KEY, "Connection: close\r\n");
    s.write_all(rest.as_bytes()).await.unwrap();
    let r = responses(&mut s, &mut got, 3).await;
    assert_eq!(r[0].0, 200);
    assert!(r[0].1["publications"].as_u64().unwrap() >= 3, "{}", r[0].1);
    assert_eq!(r[1].1["channels"][0]["offset"], 4);
    assert_eq!(r[2].1["channels"][0]["offset"], 5);
    let mut tail = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, s.read(&mut tail)).await.unwrap();
    assert!(matches!(closed, Ok(0)), "closed after Connection: close");
    for n in [1, 2, 3, 4, 5] {
        assert_eq!(sub.next_op("message", WAIT).await.unwrap()["data"], n);
    }

    // Connection: close on the direct path itself, and a batch there.
    let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let body = r#"{"publications":[{"channel":"k","data":6},{"channel":"","data":7}]}"#;
    let req = format!(
        "POST /api/v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = String::new();
    let r = responses(&mut s, &mut got, 1).await;
    assert_eq!(r[0].1["results"][0]["channels"][0]["offset"], 6);
    assert_eq!(r[0].1["results"][1]["error"]["code"], "invalid_channel");
    let closed = tokio::time::timeout(WAIT, s.read(&mut tail)).await.unwrap();
    assert!(matches!(closed, Ok(0)));
    assert_eq!(sub.next_op("message", WAIT).await.unwrap()["data"], 6);
}

/// A request refused before its body was read (413: larger than `max_http_body_bytes`) is
/// answered with `Connection: close`, and the connection closes: the unread body cannot be
/// skipped, and a client that took the connection for reusable would send its next request
/// into one the server is closing (seen as a failed publication after a 413, in this file).
/// The same for every endpoint that takes a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_oversized_body_closes_the_connection_and_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start_with(|c| {
        c.limits.max_http_body_bytes = 64 * 1024;
        c.dialects.pushstream.enabled = true;
    })
    .await;
    // The API's endpoints, and a dialect's own (push-stream's publisher takes the raw body).
    for path in [
        "/api/v1/batch",
        "/api/v1/publish",
        "/api/v1/channels",
        "/pushstream/pub?id=a",
    ] {
        let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // More than the limit, not all of it: the answer must not wait for the rest.
        s.write_all(&vec![b' '; 128 * 1024]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 413"), "{path}: {text}");
        assert!(text.contains("connection: close\r\n"), "{path}: {text}");
        assert!(closed.is_ok(), "{path}: the connection stayed open: {text}");
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it (or `WAIT`):
/// what came back, and whether it closed.
async fn exchange(srv: &TestServer, request: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).to_ascii_lowercase(), closed)
}

/// A body is bounded before it is read: a declared length over the limit is refused at
/// once (no `100 Continue` first), a body that stops arriving is answered 408 within the
/// handshake timeout, and broken chunked framing is a 400, on the API and a dialect's
/// endpoint alike. Before, such requests held their connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_in_size_and_time() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_http_body_bytes = 64 * 1024;
        c.websocket.handshake_timeout_secs = 1;
        c.dialects.pushstream.enabled = true;
    })
    .await;
    let head = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\n{extra}\r\n"
        )
    };
    for path in [
        "/api/v1/publish",
        "/api/v1/batch",
        "/api/v1/channels",
        "/api/v1/bans",
        "/pushstream/pub?id=a",
    ] {
        // Declared over the limit, waiting to go ahead: refused at once, no 100 Continue.
        let req = head(path, "Expect: 100-continue\r\nContent-Length: 5000000\r\n");
        let (text, closed) = exchange(&srv, req.as_bytes()).await;
        assert!(text.starts_with("http/1.1 413"), "{path}: {text}");
        assert!(!text.contains("100 continue"), "{path}: {text}");
        assert!(closed, "{path}: {text}");
        // Declared over the limit and never sent: let go when the time is up.
        let req = head(path, "Content-Length: 5000000\r\n");
        let (text, closed) = exchange(&srv, req.as_bytes()).await;
        assert!(text.starts_with("http/1.1 408"), "{path}: {text}");
        assert!(closed, "{path}: {text}");
        // A body that stops arriving.
        let req = head(path, "Content-Length: 100\r\n") + "{\"na";
        let (text, closed) = exchange(&srv, req.as_bytes()).await;
        assert!(text.starts_with("http/1.1 408"), "{path}: {text}");
        assert!(
            text.contains(r#""code":"request_timeout""#),
            "{path}: {text}"
        );
        assert!(closed, "{path}: {text}");
        // Chunked framing that is not chunked framing.
        let req = head(path, "Transfer-Encoding: chunked\r\n") + "zz\r\n{}\r\n0\r\n\r\n";
        let (text, _) = exchange(&srv, req.as_bytes()).await;
        assert!(text.starts_with("http/1.1 400"), "{path}: {text}");
        // A chunk that announces more than the limit and stops: refused when what arrived
        // passes the limit, else when the time is up; either way the connection is freed.
        let req = head(path, "Transfer-Encoding: chunked\r\n") + "ffffffffffffffff\r\n{";
        let (text, closed) = exchange(&srv, req.as_bytes()).await;
        assert!(
            text.starts_with("http/1.1 408") || text.starts_with("http/1.1 413"),
            "{path}: {text}"
        );
        assert!(closed, "{path}: {text}");
    }
}

/// A client that sends its whole body before it reads (Python's `requests`, most simple
/// clients) gets the 413, not a reset: the server answers, then reads and drops the rest of
/// the body for a while before it closes. Before, the unread rest made the close a reset,
/// which failed the client's write and threw the answer away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_sent_whole_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start_with(|c| {
        c.limits.max_http_body_bytes = 64 * 1024;
        c.dialects.pushstream.enabled = true;
    })
    .await;
    let body = vec![b'x'; 4 * 1024 * 1024];
    for path in [
        "/api/v1/publish",
        "/api/v1/channels",
        "/pushstream/pub?id=a",
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let sent = tokio::time::timeout(WAIT, async {
            s.write_all(head.as_bytes()).await?;
            s.write_all(&body).await
        })
        .await
        .expect("the server stopped reading the body");
        let mut got = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(sent.is_ok(), "{path}: sending the body failed: {sent:?}");
        assert!(
            matches!(read, Ok(Ok(_))),
            "{path}: reading failed: {read:?}"
        );
        assert!(text.starts_with("http/1.1 413"), "{path}: {text}");
        assert!(text.contains("message_too_large"), "{path}: {text}");
    }
}

/// Every API error is our JSON, an extractor's own refusal included (a path parameter that is
/// not UTF-8 got a plain-text 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractor_refusal_is_a_json_error() {
    let srv = TestServer::start().await;
    for path in [
        "/api/v1/channels/%ff",
        "/api/v1/clients/%ff",
        "/api/v1/users/%ff",
    ] {
        let (status, body) = srv.admin().request("GET", path, None).await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("UTF-8"),
            "{path}: {body}"
        );
    }
}

/// Two `Authorization` headers are refused (401), on the publisher's direct path as on the
/// routed one: before, the first one counted and the second was ignored, and a proxy in
/// front that reads the other one would have judged another credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let srv = TestServer::start().await;
    for (method, path, body) in [
        ("POST", "/api/v1/publish", r#"{"channel":"a","data":1}"#),
        ("GET", "/api/v1/stats", ""),
    ] {
        for (first, second) in [(ADMIN_KEY, "garbage"), ("garbage", ADMIN_KEY)] {
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n\
                 Authorization: Bearer {second}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (text, _) = exchange(&srv, req.as_bytes()).await;
            assert!(text.starts_with("http/1.1 401"), "{path}: {text}");
            assert!(
                text.contains("more than one authorization header"),
                "{text}"
            );
        }
    }
}

/// A publication refused for its payload (the body was read) closes the connection too, on
/// the publisher's direct path as on the routed one: every 413 closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_413_closes_the_connection() {
    let srv = TestServer::start_with(|c| c.limits.max_payload_bytes = 1024).await;
    let body = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(2000));
    for path in ["/api/v1/publish", "/api/v1/publish?routed=1"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (text, closed) = exchange(&srv, req.as_bytes()).await;
        assert!(text.starts_with("http/1.1 413"), "{path}: {text}");
        assert!(text.contains("payload_too_large"), "{path}: {text}");
        assert!(text.contains("connection: close\r\n"), "{path}: {text}");
        assert!(closed, "{path}: {text}");
    }
}
