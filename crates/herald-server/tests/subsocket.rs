//! The SubSocket dialect over real sockets: the flow of the original's test pages, its REST
//! API byte for byte, bad input, its own listener, and messages crossing to the native protocol.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, RawPeer, TestServer, WAIT, wait_for_subscribers};
use herald_client::Api;
use serde_json::json;

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.subsocket.enabled = true;
        c.dialects.subsocket.listen = "127.0.0.1:0".into();
    })
    .await
}

/// GET on the SubSocket REST API with the Admin-Token header; (status, body text).
async fn rest(srv: &TestServer, path_and_query: &str, token: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = token.map(|t| vec![("admin-token", t)]).unwrap_or_default();
    let (status, _, body) = srv
        .anonymous()
        .request_raw(
            "GET",
            &format!("/subsocket/api.v1/{path_and_query}"),
            &headers,
            Default::default(),
        )
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn socket(srv: &TestServer) -> RawPeer {
    RawPeer::connect_to(srv.addr(), "/subsocket/socket", "").await
}

/// SubSocket acknowledges nothing: wait until the server lists an admin connection.
async fn wait_for_admin(srv: &TestServer) {
    for _ in 0..250 {
        let list = srv
            .admin()
            .request_ok("GET", "/api/v1/clients", None)
            .await
            .unwrap();
        if list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["admin"] == true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no admin connection within 5 s");
}

fn split3(frame: &str) -> (String, String, String) {
    let mut parts = frame.splitn(3, ' ');
    let a = parts.next().unwrap_or_default().to_string();
    let b = parts.next().unwrap_or_default().to_string();
    let c = parts.next().unwrap_or_default().to_string();
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_test_page_flow() {
    let srv = server().await;
    let (status, body) = rest(
        &srv,
        "channels/put?name=test-channel-global&is-public=yes&allow-broadcast=no",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "test-channel-global has been put\n")
    );
    let (_, body) = rest(
        &srv,
        "channels/put?name=test-channel-system&is-public=no&allow-broadcast=yes",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(body, "test-channel-system has been put\n");

    let mut admin = socket(&srv).await;
    admin.send_text(&format!("admin-token {ADMIN_KEY}")).await;
    admin.send_text("sub test-channel-system").await;
    wait_for_admin(&srv).await;

    let mut client = socket(&srv).await;
    let (kind, client_id, what) = split3(&admin.text().await);
    assert_eq!((kind.as_str(), what.as_str()), ("__notify", "CONNECTED"));
    assert_eq!(client_id.len(), 36);

    client.send_text("sub test-channel-global").await;
    client
        .send_text("pub test-channel-system Hey admin client!")
        .await;
    assert_eq!(
        admin.text().await,
        format!("test-channel-system {client_id} Hey admin client!")
    );

    admin.send_text("pub test-channel-global hello all").await;
    let (channel, admin_id, text) = split3(&client.text().await);
    assert_eq!(
        (channel.as_str(), text.as_str()),
        ("test-channel-global", "hello all")
    );
    assert_ne!(admin_id, client_id);

    admin.send_text("broadcast hi everyone").await;
    assert_eq!(
        client.text().await,
        format!("__broadcast {admin_id} hi everyone")
    );
    assert_eq!(
        admin.text().await,
        format!("__broadcast {admin_id} hi everyone")
    );

    admin
        .send_text(&format!("message {client_id} just for you"))
        .await;
    assert_eq!(
        client.text().await,
        format!("__system {admin_id} just for you")
    );

    // Not allowed for a plain client: each gets a clear error, the connection carries on.
    for (cmd, code) in [
        ("sub test-channel-system", "forbidden"),
        ("pub test-channel-global nope", "forbidden"),
        ("broadcast nope", "forbidden"),
        ("sub no-such-channel", "channel_not_found"),
        ("dance", "unknown_op"),
        ("sub", "missing_field"),
        ("admin-token wrong", "unauthorized"),
        (&format!("message {admin_id} hi"), "forbidden"),
        ("message not-a-uuid hi", "invalid_client_id"),
    ] {
        client.send_text(cmd).await;
        let frame = client.text().await;
        assert!(
            frame.starts_with(&format!("__error {code} ")),
            "{cmd}: {frame}"
        );
    }
    // `pub ch` without a message part is ignored, as in the original.
    client.send_text("pub test-channel-global").await;
    client.send_text("unsub test-channel-global").await;
    admin.send_text("pub test-channel-global after unsub").await;

    drop(client);
    let (kind, id, what) = split3(&admin.text().await);
    assert_eq!(
        (kind.as_str(), id.as_str(), what.as_str()),
        ("__notify", client_id.as_str(), "DISCONNECTED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_answers_like_the_original() {
    let srv = server().await;
    for path in [
        "channels/list",
        "channels/put?name=a&is-public=yes&allow-broadcast=yes",
        "clients/subscribe?channel=a&client-id=x",
    ] {
        assert_eq!(rest(&srv, path, None).await, (403, String::new()), "{path}");
        assert_eq!(
            rest(&srv, path, Some("123456")).await.0,
            403,
            "the old constant is not a key"
        );
    }
    let k = Some(ADMIN_KEY);
    assert_eq!(
        rest(&srv, "channels/put", k).await.1,
        "names are required input...\n"
    );
    assert_eq!(
        rest(
            &srv,
            "channels/put?name=a&name=b&is-public=yes&allow-broadcast=no",
            k
        )
        .await
        .1,
        "is-public fields are required for each name input...\n"
    );
    assert_eq!(
        rest(&srv, "channels/put?name=a&is-public=yes", k).await.1,
        "allow-broadcast fields are required for each name input...\n"
    );
    assert_eq!(
        rest(&srv, "channels/put?name=b&is-public=YES&allow-broadcast=no&name=a&is-public=no&allow-broadcast=yes", k).await.1,
        "b has been put\na has been put\n"
    );
    assert_eq!(rest(&srv, "channels/list", k).await, (200, "a\nb\n".into()));
    let info = srv
        .admin()
        .request_ok("GET", "/api/v1/channels/a", None)
        .await
        .unwrap();
    assert_eq!(
        info["options"],
        json!({"public": false, "client_publish": true})
    );
    // Putting again updates the options and keeps the channel.
    rest(
        &srv,
        "channels/put?name=a&is-public=yes&allow-broadcast=yes",
        k,
    )
    .await;
    let info = srv
        .admin()
        .request_ok("GET", "/api/v1/channels/a", None)
        .await
        .unwrap();
    assert_eq!(info["options"]["public"], true);

    assert_eq!(
        rest(&srv, "clients/subscribe?client-id=x", k).await.1,
        "channel are required input...\n"
    );
    assert_eq!(
        rest(&srv, "clients/subscribe?channel=a", k).await.1,
        "client-id are required input...\n"
    );
    let (status, body) = rest(
        &srv,
        "clients/subscribe?channel=a&id=00000000-0000-0000-0000-000000000001",
        k,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.starts_with("client_not_found: "), "{body}");

    // Subscribe a live client by id (`id` and `client-id` both work), then kick it.
    let mut admin = socket(&srv).await;
    admin.send_text(&format!("admin-token {ADMIN_KEY}")).await;
    wait_for_admin(&srv).await;
    let mut c = socket(&srv).await;
    let (_, id, _) = split3(&admin.text().await);
    assert_eq!(
        rest(&srv, &format!("clients/subscribe?channel=b&id={id}"), k).await,
        (200, String::new())
    );
    srv.admin()
        .publish(&["b"], json!("from the HTTP API"))
        .await
        .unwrap();
    assert_eq!(
        c.text().await,
        "b 00000000-0000-0000-0000-000000000000 from the HTTP API"
    );
    assert_eq!(
        rest(
            &srv,
            &format!("clients/unsubscribe?channel=b&client-id={id}"),
            k
        )
        .await
        .0,
        200
    );
    assert_eq!(
        rest(&srv, &format!("clients/kick?client-id={id}"), k)
            .await
            .0,
        200
    );
    assert_eq!(c.close_code().await, Some(4200));

    assert_eq!(
        rest(&srv, "channels/del?name=a&name=never", k).await.1,
        "a has been deleted\nnever has been deleted\n"
    );
    assert_eq!(rest(&srv, "channels/list", k).await.1, "b\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listener_serves_the_original_paths() {
    let srv = server().await;
    let own = srv
        .server
        .dialect_addrs
        .iter()
        .find(|(d, _)| *d == "subsocket")
        .unwrap()
        .1;
    let api = Api::new(&format!("http://{own}"), None);
    let (status, _, body) = api
        .request_raw(
            "GET",
            "/api.v1/channels/put?name=room&is-public=yes&allow-broadcast=yes",
            &[("admin-token", ADMIN_KEY)],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"room has been put\n"[..]));
    let mut a = RawPeer::connect_to(own, "/socket", "").await;
    let mut b = socket(&srv).await; // the same hub behind both listeners
    a.send_text("sub room").await;
    b.send_text("sub room").await;
    wait_for_subscribers(&srv, "room", 2).await;
    b.send_text("pub room across listeners").await;
    let (ch, _, text) = split3(&a.text().await);
    assert_eq!((ch.as_str(), text.as_str()), ("room", "across listeners"));
    // Herald's own API is not on the dialect's listener.
    assert_eq!(
        api.request("GET", "/api/v1/stats", None).await.unwrap().0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_between_subsocket_and_native_clients() {
    let srv = server().await;
    rest(
        &srv,
        "channels/put?name=mixed&is-public=yes&allow-broadcast=yes",
        Some(ADMIN_KEY),
    )
    .await;
    let mut native = srv.client().await;
    native.subscribe(&["mixed"]).await.unwrap();
    let mut sub = socket(&srv).await;
    sub.send_text("sub mixed").await;
    wait_for_subscribers(&srv, "mixed", 2).await;

    sub.send_text("pub mixed plain text").await;
    let m = native.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["data"], "plain text");
    assert_eq!(
        sub.text().await.splitn(3, ' ').nth(2).unwrap(),
        "plain text"
    );

    srv.admin()
        .publish(&["mixed"], json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(
        sub.text().await,
        "mixed 00000000-0000-0000-0000-000000000000 {\"n\":1}"
    );
    assert_eq!(
        native.next_op("message", WAIT).await.unwrap()["data"],
        json!({"n": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_handshakes_are_refused_and_disabled_dialect_is_absent() {
    let srv = server().await;
    let status = RawPeer::handshake_status(
        srv.addr(),
        "/subsocket/socket",
        "Origin: http://evil.example\r\n",
    )
    .await;
    assert!(status.contains("403"), "{status}");
    let same = format!("Origin: http://{}\r\n", srv.addr());
    let _ok = RawPeer::connect_to(srv.addr(), "/subsocket/socket", &same).await;

    let plain = TestServer::start().await;
    let status = RawPeer::handshake_status(plain.addr(), "/subsocket/socket", "").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_closes_refuses_reconnects_expires_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = common::config(dir.path());
        c.dialects.subsocket.enabled = true;
        c
    };
    let server = herald_server::start(config()).await.unwrap();
    let addr = server.local_addr;
    let mut admin = RawPeer::connect_to(addr, "/subsocket/socket", "").await;
    admin.send_text(&format!("admin-token {ADMIN_KEY}")).await;
    let api = Api::new(&format!("http://{addr}"), Some(ADMIN_KEY));
    let mut admin_ready = false;
    for _ in 0..250 {
        let list = api
            .request_ok("GET", "/api/v1/clients", None)
            .await
            .unwrap();
        if list["clients"][0]["admin"] == true {
            admin_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admin_ready);
    let mut victim = RawPeer::connect_to(addr, "/subsocket/socket", "").await;
    let (_, id, _) = split3(&admin.text().await);
    // A 1-second ban of the victim's address (127.0.0.1: every test client here).
    admin.send_text(&format!("ban {id} 1")).await;
    assert_eq!(victim.close_code().await, Some(4003));
    let status = RawPeer::handshake_status(addr, "/subsocket/socket", "").await;
    assert!(status.contains("403"), "refused while banned: {status}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _back = RawPeer::connect_to(addr, "/subsocket/socket", "").await;

    // An open-ended ban through the REST API survives a restart.
    let mut victim = RawPeer::connect_to(addr, "/subsocket/socket", "").await;
    let list = api
        .request_ok("GET", "/api/v1/clients", None)
        .await
        .unwrap();
    let newest = list["clients"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, body) = Api::new(&format!("http://{addr}"), None)
        .request_raw(
            "GET",
            &format!("/subsocket/api.v1/clients/ban?client-id={newest}"),
            &[("admin-token", ADMIN_KEY)],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(victim.close_code().await, Some(4003));
    server.shutdown(Duration::from_secs(2)).await;
    let server = herald_server::start(config()).await.unwrap();
    let status = RawPeer::handshake_status(server.local_addr, "/ws", "").await;
    assert!(
        status.contains("403"),
        "still banned after restart: {status}"
    );
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_folder_serves_test_pages_from_the_same_origin() {
    let pages = tempfile::tempdir().unwrap();
    std::fs::write(pages.path().join("index.html"), "<h1>SubSocket test</h1>").unwrap();
    std::fs::write(pages.path().join("admin-client.html"), "admin").unwrap();
    // Symbolic links: one to a file outside the folder, one to a folder outside it, and one
    // that stays inside (issue 9, item 4).
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        pages.path().join("leak.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), pages.path().join("out")).unwrap();
    std::os::unix::fs::symlink("admin-client.html", pages.path().join("alias.html")).unwrap();
    std::fs::create_dir(pages.path().join("sub")).unwrap();
    let dir = pages.path().to_string_lossy().to_string();
    let srv = TestServer::start_with(move |c| {
        c.dialects.subsocket.enabled = true;
        c.dialects.subsocket.static_dir = dir;
    })
    .await;
    let get = |path: &str| {
        let api = srv.anonymous();
        let path = path.to_string();
        async move {
            let (status, headers, body) = api
                .request_raw("GET", &path, &[], Default::default())
                .await
                .unwrap();
            (status, headers, String::from_utf8_lossy(&body).to_string())
        }
    };
    let (status, headers, body) = get("/subsocket/static/").await;
    assert_eq!((status, body.as_str()), (200, "<h1>SubSocket test</h1>"));
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(get("/subsocket/static/admin-client.html").await.2, "admin");
    let (status, headers, _) = get("/subsocket/static").await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (301, "/subsocket/static/")
    );
    assert_eq!(get("/subsocket/static/../Cargo.toml").await.0, 404);
    assert_eq!(get("/subsocket/static/%2e%2e/x").await.0, 404);
    assert_eq!(get("/subsocket/static/missing.html").await.0, 404);
    assert_eq!(get("/subsocket/static/leak.txt").await.0, 404);
    assert_eq!(get("/subsocket/static/out/secret.txt").await.0, 404);
    assert_eq!(get("/subsocket/static/alias.html").await.2, "admin");
    assert_eq!(
        get("/subsocket/static/sub").await.0,
        404,
        "a folder is not a file"
    );
}
