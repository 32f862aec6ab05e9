//! The push-stream dialect over real sockets: URL channels, the HTTP publisher byte for byte,
//! client publishing, channel deletion, and the auth hook against a real backend started by
//! the test (admitting, refusing, timing out, down).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{RawPeer, TestServer, wait_for_subscribers};
use herald_client::Api;

async fn server_with(tweak: impl FnOnce(&mut herald_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.pushstream.enabled = true;
        c.dialects.pushstream.listen = "127.0.0.1:0".into();
        c.channels.client_publish = true;
        tweak(c);
    })
    .await
}

async fn pub_raw(
    srv: &TestServer,
    method: &str,
    query: &str,
    body: &str,
) -> (u16, HeaderMap, String) {
    let (status, headers, bytes) = srv
        .anonymous()
        .request_raw(
            method,
            &format!("/pushstream/pub{query}"),
            &[],
            body.to_string().into(),
        )
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_by_url_publish_over_http_and_delete() {
    let srv = server_with(|_| {}).await;
    let mut s1 = RawPeer::connect_to(
        srv.addr(),
        "/pushstream/subscribe/news/sports.b3?_=1&tag=&time=&eventid=",
        "",
    )
    .await;
    let mut s2 = RawPeer::connect_to(srv.addr(), "/pushstream/subscribe?channels=news", "").await;
    wait_for_subscribers(&srv, "news", 2).await;
    wait_for_subscribers(&srv, "sports", 1).await;

    let (status, _, body) = pub_raw(&srv, "POST", "?id=news", "hello \"quoted\" world").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"channel\": \"news\", \"published_messages\": \"1\", \"stored_messages\": \"0\", \"subscribers\": \"2\"}\r\n"
    );
    let expected = r#"{"id":1,"channel":"news","text":"hello \"quoted\" world"}"#;
    assert_eq!(s1.text().await, expected);
    assert_eq!(s2.text().await, expected);

    // Text a subscriber sends goes to all its channels (echoed to itself) and gets a ping.
    s1.send_text("from s1").await;
    let mut got = Vec::new();
    let mut pinged = false;
    while got.len() < 2 || !pinged {
        let (op, payload) = s1.frame().await.unwrap();
        match op {
            1 => got.push(String::from_utf8(payload).unwrap()),
            9 => pinged = true,
            _ => {}
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            r#"{"id":1,"channel":"sports","text":"from s1"}"#,
            r#"{"id":2,"channel":"news","text":"from s1"}"#
        ]
    );
    assert_eq!(
        s2.text().await,
        r#"{"id":2,"channel":"news","text":"from s1"}"#
    );

    let (status, _, body) = pub_raw(&srv, "GET", "?id=news", "").await;
    assert_eq!(
        (status, body.contains("\"published_messages\": \"2\"")),
        (200, true)
    );
    let (status, headers, _) = pub_raw(&srv, "POST", "?id=news", "").await;
    assert_eq!(status, 400);
    assert_eq!(
        headers["x-nginx-pushstream-explain"],
        "Empty post requests are not allowed."
    );
    assert_eq!(pub_raw(&srv, "POST", "", "x").await.0, 400);
    assert_eq!(pub_raw(&srv, "GET", "?id=nothing-here", "").await.0, 404);
    assert_eq!(pub_raw(&srv, "PATCH", "?id=news", "").await.0, 405);

    let (status, _, body) = pub_raw(&srv, "DELETE", "?id=news", "").await;
    assert_eq!((status, body.as_str()), (200, "Channel deleted."));
    assert_eq!(
        s2.text().await,
        r#"{"id":-2,"channel":"news","text":"Channel deleted."}"#
    );
    // "news" was s2's only channel: as the module does, the connection is closed after the
    // -2 frame, so pushstream.js reconnects instead of silently receiving nothing (issue 9,
    // item 12). s1 still has "sports" and stays.
    assert_eq!(s2.close_code().await, Some(1000));
    assert_eq!(
        s1.text().await,
        r#"{"id":-2,"channel":"news","text":"Channel deleted."}"#
    );
    let (status, _, _) = pub_raw(&srv, "POST", "?id=sports", "still here").await;
    assert_eq!(status, 200);
    let delivery: serde_json::Value = serde_json::from_str(&s1.text().await).unwrap();
    assert_eq!(
        (&delivery["channel"], &delivery["text"]),
        (&"sports".into(), &"still here".into())
    );
    assert_eq!(pub_raw(&srv, "DELETE", "?id=news", "").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_channels_are_refused_before_the_upgrade_and_own_listener_works() {
    let srv = server_with(|_| {}).await;
    for path in ["/pushstream/subscribe", "/pushstream/subscribe/"] {
        let status = RawPeer::handshake_status(srv.addr(), path, "").await;
        assert!(status.contains("400"), "{path}: {status}");
        let (status, headers, _) = srv
            .anonymous()
            .request_raw("GET", path, &[], Default::default())
            .await
            .unwrap();
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            headers["x-nginx-pushstream-explain"], "No channel id provided.",
            "{path}"
        );
    }
    let own = srv
        .server
        .dialect_addrs
        .iter()
        .find(|(d, _)| *d == "pushstream")
        .unwrap()
        .1;
    let mut s = RawPeer::connect_to(own, "/subscribe/1", "").await;
    wait_for_subscribers(&srv, "1", 1).await;
    let api = Api::new(&format!("http://{own}"), None);
    let (status, _, _) = api
        .request_raw("POST", "/pub?id=1", &[], "on the original paths".into())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        s.text().await,
        r#"{"id":1,"channel":"1","text":"on the original paths"}"#
    );
}

/// The app backend the auth hook asks: `Bearer good` admits to `private-feed`, `Bearer slow`
/// answers after 2 s, anything else is 401 or 403.
async fn start_backend() -> SocketAddr {
    async fn auth(headers: HeaderMap) -> (StatusCode, String) {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer good") => (StatusCode::OK, r#"{"channels":["private-feed"]}"#.into()),
            Some("Bearer slow") => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                (StatusCode::OK, r#"{"channels":["private-feed"]}"#.into())
            }
            Some("Bearer garbage") => (StatusCode::OK, "not json".into()),
            Some(_) => (StatusCode::FORBIDDEN, String::new()),
            None => (StatusCode::UNAUTHORIZED, String::new()),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/auth", post(auth));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hook_admits_refuses_times_out_and_survives_a_dead_backend() {
    let backend = start_backend().await;
    let srv = server_with(|c| {
        c.dialects.pushstream.auth_url = format!("http://{backend}/auth");
        c.dialects.pushstream.auth_timeout_ms = 300;
        c.channels.public = false; // only the hook can admit to channels
    })
    .await;
    // Admitted: subscribed to the channels the backend named, not the URL's.
    let mut ok = RawPeer::connect_to(
        srv.addr(),
        "/pushstream/subscribe/ignored",
        "Authorization: Bearer good\r\n",
    )
    .await;
    wait_for_subscribers(&srv, "private-feed", 1).await;
    pub_raw(&srv, "POST", "?id=private-feed", "secret news").await;
    assert_eq!(
        ok.text().await,
        r#"{"id":1,"channel":"private-feed","text":"secret news"}"#
    );

    for (header, status) in [
        ("", "401"),
        ("Authorization: Bearer bad\r\n", "403"),
        ("Authorization: Bearer slow\r\n", "503"),
        ("Authorization: Bearer garbage\r\n", "503"),
    ] {
        let started = std::time::Instant::now();
        let line = RawPeer::handshake_status(srv.addr(), "/pushstream/subscribe/x", header).await;
        assert!(line.contains(status), "{header:?}: {line}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "refused within the timeout"
        );
    }

    // A backend that is down refuses quickly with 503.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let srv = server_with(|c| c.dialects.pushstream.auth_url = format!("http://{dead}/auth")).await;
    let line = RawPeer::handshake_status(
        srv.addr(),
        "/pushstream/subscribe/x",
        "Authorization: Bearer good\r\n",
    )
    .await;
    assert!(line.contains("503"), "{line}");
}

/// A `.b<N>` suffix delivers the channel's last N kept publications first, and `/pub`
/// reports how many are kept (channels with `history_size`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtrack_delivers_kept_messages_first() {
    let srv = server_with(|c| c.channels.history_size = 10).await;
    for i in 1..=5 {
        let (status, _, body) = pub_raw(&srv, "POST", "?id=feed", &format!("old {i}")).await;
        assert_eq!(status, 200);
        if i == 5 {
            assert!(body.contains("\"stored_messages\": \"5\""), "{body}");
        }
    }
    let mut s = RawPeer::connect_to(srv.addr(), "/pushstream/subscribe/feed.b2", "").await;
    assert_eq!(
        s.text().await,
        r#"{"id":4,"channel":"feed","text":"old 4"}"#
    );
    assert_eq!(
        s.text().await,
        r#"{"id":5,"channel":"feed","text":"old 5"}"#
    );
    let (status, _, _) = pub_raw(&srv, "POST", "?id=feed", "new").await;
    assert_eq!(status, 200);
    assert_eq!(s.text().await, r#"{"id":6,"channel":"feed","text":"new"}"#);
    // Without a suffix: live only.
    let mut live = RawPeer::connect_to(srv.addr(), "/pushstream/subscribe/feed", "").await;
    wait_for_subscribers(&srv, "feed", 2).await;
    pub_raw(&srv, "POST", "?id=feed", "next").await;
    assert_eq!(
        live.text().await,
        r#"{"id":7,"channel":"feed","text":"next"}"#
    );
}
