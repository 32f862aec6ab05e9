//! Channel namespaces over real sockets: `[namespaces.<ns>]` options for channels named
//! `<ns>:...` (who may subscribe and publish, subscriber caps, echo, payload limits), the
//! `[channels]` defaults for other names, and options set through the API winning.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, TestServer, WAIT};
use herald_client::Client;
use herald_server::config::NamespaceConfig;
use serde_json::{Value, json};

fn ns(f: impl FnOnce(&mut NamespaceConfig)) -> NamespaceConfig {
    let mut n = NamespaceConfig::default();
    f(&mut n);
    n
}

/// `pub:` public, `priv:` private, `adm:` admins only, `chat:` clients publish without echo,
/// `small:` 8-byte payloads, `two:` at most 2 subscribers; `[channels]` lets clients publish.
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.channels.client_publish = true;
        let namespaces = [
            ("pub", ns(|n| n.subscribe = Some("public".into()))),
            ("priv", ns(|n| n.subscribe = Some("private".into()))),
            ("adm", ns(|n| n.subscribe = Some("admin".into()))),
            ("backend", ns(|n| n.publish = Some("admin".into()))),
            ("chat", ns(|n| n.echo = Some(false))),
            ("small", ns(|n| n.max_payload_bytes = Some(8))),
            ("two", ns(|n| n.max_subscribers = Some(2))),
        ];
        c.namespaces = namespaces
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    })
    .await
}

async fn subscribe(c: &mut Client, channel: &str, token: Option<&str>) -> Value {
    let mut req = json!({"op":"subscribe","channel":channel});
    if let Some(t) = token {
        req["token"] = json!(t);
    }
    c.request(req).await.unwrap()
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("ok")
}

async fn nothing_more(c: &mut Client) {
    let next = c.next_op("message", Duration::from_millis(300)).await;
    assert!(next.is_err(), "unexpected message: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_namespace_admits_anyone() {
    let srv = server().await;
    let mut c = srv.client().await;
    assert_eq!(code(&subscribe(&mut c, "pub:news", None).await), "ok");
    srv.admin().publish(&["pub:news"], json!(1)).await.unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channel_refused_without_a_subscription_token_and_admitted_with_one() {
    let srv = server().await;
    let admin = srv.admin();
    // Created through the API with no options: private by its namespace.
    let created = admin
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"priv:orders"})),
        )
        .await
        .unwrap();
    assert_eq!(created["options"]["public"], false);
    let token = created["token"].as_str().unwrap();

    let mut c = srv.client().await;
    let reply = subscribe(&mut c, "priv:orders", None).await;
    assert_eq!(code(&reply), "forbidden", "{reply}");
    assert_eq!(
        code(&subscribe(&mut c, "priv:orders", Some("hct_wrong")).await),
        "forbidden"
    );
    assert_eq!(
        code(&subscribe(&mut c, "priv:orders", Some(token)).await),
        "ok"
    );
    // Ephemeral channels of the namespace have no token: clients are refused.
    assert_eq!(
        code(&subscribe(&mut c, "priv:other", None).await),
        "forbidden"
    );

    // An admin subscribes a client through the HTTP API.
    let mut d = srv.client().await;
    let id = d.id().to_string();
    admin
        .request_ok(
            "POST",
            &format!("/api/v1/clients/{id}/subscribe"),
            Some(&json!({"channels":["priv:orders","priv:other"]})),
        )
        .await
        .unwrap();
    // And an admin connection subscribes itself.
    let mut a = srv.client().await;
    a.request_ok(json!({"op":"auth","token":ADMIN_KEY}))
        .await
        .unwrap();
    assert_eq!(code(&subscribe(&mut a, "priv:other", None).await), "ok");

    admin.publish(&["priv:orders"], json!("o")).await.unwrap();
    admin.publish(&["priv:other"], json!("x")).await.unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], "o");
    assert_eq!(d.next_op("message", WAIT).await.unwrap()["data"], "o");
    assert_eq!(d.next_op("message", WAIT).await.unwrap()["data"], "x");
    assert_eq!(a.next_op("message", WAIT).await.unwrap()["data"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_namespace_refuses_token_holders_and_admits_admins() {
    let srv = server().await;
    let admin = srv.admin();
    let created = admin
        .request_ok("POST", "/api/v1/channels", Some(&json!({"name":"adm:ops"})))
        .await
        .unwrap();
    assert_eq!(created["options"]["admin_only_subscribe"], true);
    let token = created["token"].as_str().unwrap();
    let mut c = srv.client().await;
    for t in [None, Some(token)] {
        let reply = subscribe(&mut c, "adm:ops", t).await;
        assert_eq!(code(&reply), "forbidden", "{reply}");
    }
    let id = c.id().to_string();
    admin
        .request_ok(
            "POST",
            &format!("/api/v1/clients/{id}/subscribe"),
            Some(&json!({"channel":"adm:ops"})),
        )
        .await
        .unwrap();
    admin.publish(&["adm:ops"], json!(1)).await.unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_admin_namespace_refuses_clients_and_allows_the_api() {
    let srv = server().await;
    let mut c = srv.client().await;
    subscribe(&mut c, "backend:feed", None).await;
    let reply = c
        .request(json!({"op":"publish","channel":"backend:feed","data":1}))
        .await
        .unwrap();
    assert_eq!(code(&reply), "forbidden", "{reply}");
    // [channels] lets clients publish to names without a namespace.
    let reply = c
        .request(json!({"op":"publish","channel":"plain","data":1}))
        .await
        .unwrap();
    assert_eq!(code(&reply), "ok", "{reply}");
    srv.admin()
        .publish(&["backend:feed"], json!(2))
        .await
        .unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], 2);
    // The channel's token (the backend) may publish too.
    let created = srv
        .admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"backend:orders"})),
        )
        .await
        .unwrap();
    let tok = herald_client::Api::new(&srv.http(), created["token"].as_str());
    tok.publish(&["backend:orders"], json!(3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscribers_from_the_namespace() {
    let srv = server().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(srv.client().await);
    }
    for c in &mut clients[..2] {
        assert_eq!(code(&subscribe(c, "two:room", None).await), "ok");
    }
    let reply = subscribe(&mut clients[2], "two:room", None).await;
    assert_eq!(code(&reply), "channel_full", "{reply}");
    // Without a namespace: unlimited.
    for c in &mut clients {
        assert_eq!(code(&subscribe(c, "room", None).await), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_off_the_publisher_does_not_get_its_own_message() {
    let srv = server().await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    for c in [&mut a, &mut b] {
        subscribe(c, "chat:lobby", None).await;
        subscribe(c, "lobby", None).await;
    }
    let r = a
        .call(json!({"op":"publish","channel":"chat:lobby","data":"hi"}))
        .await
        .unwrap();
    assert_eq!(r["channels"][0]["delivered"], 1, "{r}");
    let m = b.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (m["data"].as_str(), m["from"].as_str()),
        (Some("hi"), Some(a.id()))
    );
    // Echo is on for names without a namespace: both get it.
    a.call(json!({"op":"publish","channel":"lobby","data":"both"}))
        .await
        .unwrap();
    let m = a.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("lobby"), Some("both"))
    );
    assert_eq!(b.next_op("message", WAIT).await.unwrap()["data"], "both");
    nothing_more(&mut a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_bytes_from_the_namespace() {
    let srv = server().await;
    let mut c = srv.client().await;
    subscribe(&mut c, "small:x", None).await;
    let reply = c
        .request(json!({"op":"publish","channel":"small:x","data":"123456789"}))
        .await
        .unwrap();
    assert_eq!(code(&reply), "payload_too_large", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("small:x") && message.contains("8"),
        "{message}"
    );
    let err = srv
        .admin()
        .publish(&["small:x"], json!("123456789"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("payload_too_large"), "{err}");
    c.call(json!({"op":"publish","channel":"small:x","data":"123456"}))
        .await
        .unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["data"], "123456");
    // Names without a namespace have the global limit.
    c.call(json!({"op":"publish","channel":"plain","data":"123456789"}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_set_through_the_api_override_the_namespace() {
    let srv = server().await;
    let admin = srv.admin();
    let created = admin
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"priv:open","subscribe":"public","echo":false,"max_payload_bytes":0})),
        )
        .await
        .unwrap();
    let options = &created["options"];
    assert_eq!(options["public"], true);
    assert_eq!(options["echo"], false);
    assert_eq!(
        options["client_publish"], true,
        "from [channels] via the namespace"
    );
    let mut c = srv.client().await;
    assert_eq!(code(&subscribe(&mut c, "priv:open", None).await), "ok");
    c.call(json!({"op":"publish","channel":"priv:open","data":1}))
        .await
        .unwrap();
    nothing_more(&mut c).await;

    // small: limits payloads to 8 bytes; this channel lifts that back to the global limit.
    admin
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"small:big","max_payload_bytes":0})),
        )
        .await
        .unwrap();
    admin
        .publish(&["small:big"], json!("a longer payload"))
        .await
        .unwrap();

    // Contradicting `public` and `subscribe` is refused.
    let (status, body) = admin
        .request(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"x","public":true,"subscribe":"admin"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_without_a_prefix_or_with_an_unknown_one_use_channels_defaults() {
    let srv = TestServer::start_with(|c| {
        c.channels.public = false;
        c.namespaces
            .insert("pub".into(), ns(|n| n.subscribe = Some("public".into())));
    })
    .await;
    let mut c = srv.client().await;
    for name in ["lobby", "unknown:lobby"] {
        assert_eq!(
            code(&subscribe(&mut c, name, None).await),
            "forbidden",
            "{name}"
        );
    }
    assert_eq!(code(&subscribe(&mut c, "pub:lobby", None).await), "ok");
    let info = srv
        .admin()
        .request_ok("POST", "/api/v1/channels", Some(&json!({"name":"plain"})))
        .await
        .unwrap();
    assert_eq!(info["options"]["public"], false);
}
