//! The auth hook (`[auth_hook]`) against a real app backend started by the test: admitting
//! (user and channels set), refusing with the backend's reason, timing out, being down,
//! answering nonsense, the forwarded headers/cookies/query, the subscribe and publish
//! questions, and the per-credential cache.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{ADMIN_KEY, TestServer, WAIT, wait_for_subscribers};
use herald_client::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One question the backend got: its real request headers and its JSON body.
#[derive(Clone, Debug)]
struct Asked {
    headers: HeaderMap,
    body: Value,
}

type Log = Arc<Mutex<Vec<Asked>>>;

/// The app backend. At connect it judges `Authorization: Bearer <who>` (or the `session`
/// cookie): `alice` is admitted to `room-1`, `mallory` gets 403 with a reason, `suspended`
/// gets 200 `allow: false`, `bob` is a user the test bans, `slow` never answers in time,
/// `garbage` answers non-JSON, `broken` answers 500, `undecided` answers `allow: null`,
/// `many` names 101 channels, `hidden` a user id with a bidi override, nothing at all is 401. At subscribe
/// and publish it refuses channels starting with `secret` / `readonly` and stalls on `slow`.
async fn start_backend() -> (SocketAddr, Log) {
    async fn auth(
        State(log): State<Log>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        log.lock().unwrap().push(Asked {
            headers: headers.clone(),
            body: body.clone(),
        });
        let answer = |status, v: Value| (status, v.to_string());
        if body["event"] != "connect" {
            let channels = body["channels"].as_array().cloned().unwrap_or_default();
            let first = channels.first().and_then(Value::as_str).unwrap_or_default();
            if first.starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if first.starts_with("secret") || first.starts_with("readonly") {
                return answer(
                    StatusCode::FORBIDDEN,
                    json!({"reason": format!("{first} is members only")}),
                );
            }
            return answer(StatusCode::OK, json!({"allow": true}));
        }
        let who = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| {
                let cookie = headers.get("cookie")?.to_str().ok()?;
                cookie
                    .split("; ")
                    .find_map(|c| c.strip_prefix("session="))
                    .map(|s| format!("cookie-{s}"))
            });
        match who.as_deref() {
            Some("alice") => answer(
                StatusCode::OK,
                json!({"user": "alice", "channels": ["room-1"]}),
            ),
            Some("cookie-c4r01") => answer(StatusCode::OK, json!({"user": "carol"})),
            Some("bob") => answer(StatusCode::OK, json!({"user": "bob"})),
            Some("mallory") => answer(
                StatusCode::FORBIDDEN,
                json!({"reason": "mallory is not welcome"}),
            ),
            Some("suspended") => answer(
                StatusCode::OK,
                json!({"allow": false, "reason": "account suspended"}),
            ),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                answer(StatusCode::OK, json!({}))
            }
            Some("garbage") => (StatusCode::OK, "<html>not json</html>".into()),
            Some("undecided") => answer(StatusCode::OK, json!({"allow": null, "user": "u"})),
            Some("many") => {
                let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
                answer(StatusCode::OK, json!({"user": "m", "channels": channels}))
            }
            Some("hidden") => answer(StatusCode::OK, json!({"user": "admin\u{202e}"})),
            Some("broken") => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
            Some(_) => answer(StatusCode::FORBIDDEN, json!({})),
            None => answer(StatusCode::UNAUTHORIZED, json!({"reason": "log in first"})),
        }
    }
    let log = Log::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/auth", post(auth))
        .with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, log)
}

async fn server(backend: SocketAddr, tweak: impl FnOnce(&mut herald_server::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth_hook.url = format!("http://{backend}/auth");
        c.auth_hook.timeout_ms = 200;
        tweak(c);
    })
    .await
}

/// A WebSocket handshake that is expected to be refused: its status and JSON body.
async fn refused(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let addr = srv.addr();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // WAIT only guards against a hang; the hook's own timeout is far shorter.
    let read = async {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-answer: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    let body = serde_json::from_str(body).unwrap_or(Value::Null);
                    return (status, body);
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the handshake was answered (the hook never hangs it)")
}

fn connects(log: &Log) -> usize {
    let log = log.lock().unwrap();
    log.iter().filter(|a| a.body["event"] == "connect").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_with_the_backends_user_and_channels_and_forwards_the_credential() {
    let (backend, log) = start_backend().await;
    let srv = server(backend, |_| {}).await;
    let url = format!("{}?room=lobby&v=2", srv.ws_url());
    let mut alice = Client::connect_with_headers(
        &url,
        &[
            ("authorization", "Bearer alice"),
            ("cookie", "theme=dark; session=xyz"),
            ("x-not-forwarded", "1"),
        ],
    )
    .await
    .expect("the backend admits alice");

    // Subscribed to the channels the backend named, and known as its user.
    wait_for_subscribers(&srv, "room-1", 1).await;
    srv.admin()
        .publish(&["room-1"], json!("hello alice"))
        .await
        .unwrap();
    assert_eq!(
        alice.next_op("message", WAIT).await.unwrap()["data"],
        "hello alice"
    );
    let (status, sent) = srv
        .admin()
        .request(
            "POST",
            "/api/v1/users/alice/send",
            Some(&json!({"data": "dm"})),
        )
        .await
        .unwrap();
    assert_eq!((status, sent["connections"].clone()), (200, json!(1)));
    assert_eq!(alice.next_op("direct", WAIT).await.unwrap()["data"], "dm");
    let (status, me) = srv
        .admin()
        .request("GET", &format!("/api/v1/clients/{}", alice.id()), None)
        .await
        .unwrap();
    assert_eq!((status, me["channels"].clone()), (200, json!(["room-1"])));

    // What the backend saw: the configured headers (as real headers and in the body), the
    // query string, the path, the dialect and the remote address; nothing else.
    let asked = log.lock().unwrap()[0].clone();
    assert_eq!(asked.headers["authorization"], "Bearer alice");
    assert_eq!(asked.headers["cookie"], "theme=dark; session=xyz");
    assert!(asked.headers.get("x-not-forwarded").is_none());
    assert_eq!(asked.body["event"], "connect");
    assert_eq!(asked.body["query"], "room=lobby&v=2");
    assert_eq!(asked.body["path"], "/ws");
    assert_eq!(asked.body["dialect"], "native");
    assert_eq!(
        asked.body["headers"],
        json!({"authorization": "Bearer alice", "cookie": "theme=dark; session=xyz"})
    );
    assert!(
        asked.body["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // A cookie alone is a credential for the backend too.
    let mut carol = Client::connect_with_headers(&srv.ws_url(), &[("cookie", "session=c4r01")])
        .await
        .expect("the backend admits carol by her cookie");
    let (_, sent) = srv
        .admin()
        .request(
            "POST",
            "/api/v1/users/carol/send",
            Some(&json!({"data": 1})),
        )
        .await
        .unwrap();
    assert_eq!(sent["connections"], 1);
    assert_eq!(carol.next_op("direct", WAIT).await.unwrap()["data"], 1);

    // The admin key is Herald's own credential: the backend is not asked.
    let before = connects(&log);
    let bearer = format!("Bearer {ADMIN_KEY}");
    let admin = Client::connect_with_headers(&srv.ws_url(), &[("authorization", &bearer)])
        .await
        .unwrap();
    let (_, info) = srv
        .admin()
        .request("GET", &format!("/api/v1/clients/{}", admin.id()), None)
        .await
        .unwrap();
    assert_eq!(info["admin"], true);
    assert_eq!(connects(&log), before);

    // With forward_query off, the query stays home.
    let srv = server(backend, |c| c.auth_hook.forward_query = false).await;
    let _ = Client::connect_with_headers(
        &format!("{}?token=abc", srv.ws_url()),
        &[("authorization", "Bearer alice")],
    )
    .await
    .unwrap();
    let last = log.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.body["query"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_with_the_backends_reason_and_bans_its_users() {
    let (backend, _log) = start_backend().await;
    let srv = server(backend, |_| {}).await;
    for (header, status, code, reason) in [
        (None, 401, "unauthorized", "log in first"),
        (
            Some("Bearer mallory"),
            403,
            "forbidden",
            "mallory is not welcome",
        ),
        (
            Some("Bearer suspended"),
            403,
            "forbidden",
            "account suspended",
        ),
        (
            Some("Bearer stranger"),
            403,
            "forbidden",
            "refused by the auth backend",
        ),
    ] {
        let headers: Vec<_> = header.map(|h| ("authorization", h)).into_iter().collect();
        let (got, body) = refused(&srv, "/ws", &headers).await;
        assert_eq!(got, status, "{header:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{header:?}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{header:?}: {message}");
    }
    // The user the backend names is subject to user bans.
    let (status, _) = srv
        .admin()
        .request(
            "POST",
            "/api/v1/bans",
            Some(&json!({"user": "bob", "reason": "spam"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (status, body) = refused(&srv, "/ws", &[("authorization", "Bearer bob")]).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("banned"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broken_or_garbled_backend_refuses_with_auth_unavailable() {
    let (backend, _log) = start_backend().await;
    let srv = server(backend, |_| {}).await;
    for (who, why) in [
        ("slow", "timed out after 200 ms"),
        ("garbage", "not the expected JSON"),
        ("broken", "answered 500"),
        // Neither yes nor no: refused, not taken for a missing `allow` (which admits).
        ("undecided", "\"allow\": null"),
        // As many channels as a JWT may carry, no more (each answer may be cached).
        ("many", "more than 100"),
        // A user id must not hide text: it shows in listings and logs.
        ("hidden", "invisible characters"),
    ] {
        let bearer = format!("Bearer {who}");
        let (status, body) = refused(&srv, "/ws", &[("authorization", &bearer)]).await;
        assert_eq!(status, 503, "{who}: {body}");
        assert_eq!(body["error"]["code"], "auth_unavailable", "{who}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{who}: {message}");
    }
    // The server itself is fine: an admitted client still gets in.
    Client::connect_with_headers(&srv.ws_url(), &[("authorization", "Bearer alice")])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_refuses_with_auth_unavailable() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let srv = server(dead, |c| c.auth_hook.timeout_ms = 5000).await;
    let (status, body) = refused(&srv, "/ws", &[("authorization", "Bearer alice")]).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("auth_unavailable"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("is unreachable"), "{message}");
    // Herald's own credentials still work while the backend is down.
    let bearer = format!("Bearer {ADMIN_KEY}");
    Client::connect_with_headers(&srv.ws_url(), &[("authorization", &bearer)])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_publish_ask_the_backend_per_request() {
    let (backend, log) = start_backend().await;
    let srv = server(backend, |c| {
        c.auth_hook.on_subscribe = true;
        c.auth_hook.on_publish = true;
        c.channels.client_publish = true;
    })
    .await;
    let mut alice =
        Client::connect_with_headers(&srv.ws_url(), &[("authorization", "Bearer alice")])
            .await
            .unwrap();
    wait_for_subscribers(&srv, "room-1", 1).await;

    let reply = alice
        .request(json!({"op": "subscribe", "id": 1, "channels": ["open-talk"]}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["changed"], json!(["open-talk"]), "{reply}");
    let reply = alice
        .request(json!({"op": "subscribe", "id": 2, "channels": ["secret-plans"]}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret-plans is members only")
    );
    let reply = alice
        .request(json!({"op": "subscribe", "id": 3, "channels": ["slow-lane"]}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "auth_unavailable", "{reply}");

    let reply = alice
        .request(json!({"op": "publish", "id": 4, "channels": ["open-talk"], "data": "hi"}))
        .await
        .unwrap();
    assert!(reply["error"].is_null(), "{reply}");
    assert_eq!(alice.next_op("message", WAIT).await.unwrap()["data"], "hi");
    let reply = alice
        .request(json!({"op": "publish", "id": 5, "channels": ["readonly-news"], "data": "x"}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    // The connection carries on after refusals.
    assert_eq!(alice.ping().await.unwrap()["result"]["pong"], true);

    let asked: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.body.clone())
        .filter(|b| b["event"] != "connect")
        .collect();
    assert_eq!(asked.len(), 5, "{asked:?}");
    assert_eq!(asked[0]["event"], "subscribe");
    assert_eq!(asked[0]["client"], alice.id());
    assert_eq!(asked[0]["user"], "alice");
    assert_eq!(asked[0]["channels"], json!(["open-talk"]));
    assert_eq!(asked[3]["event"], "publish");
    assert!(asked[3].get("data").is_none(), "the data is not sent");

    // Admins are not asked about.
    let bearer = format!("Bearer {ADMIN_KEY}");
    let mut admin = Client::connect_with_headers(&srv.ws_url(), &[("authorization", &bearer)])
        .await
        .unwrap();
    let before = log.lock().unwrap().len();
    admin.subscribe(&["secret-admins"]).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_answers_are_cached_per_credential() {
    let (backend, log) = start_backend().await;
    let srv = server(backend, |c| c.auth_hook.cache_secs = 60).await;
    let alice = [("authorization", "Bearer alice")];
    let _a1 = Client::connect_with_headers(&srv.ws_url(), &alice)
        .await
        .unwrap();
    let _a2 = Client::connect_with_headers(&srv.ws_url(), &alice)
        .await
        .unwrap();
    assert_eq!(
        connects(&log),
        1,
        "the second connect used the cached answer"
    );
    wait_for_subscribers(&srv, "room-1", 2).await;

    // Another credential is another entry; a refusal is cached too.
    let (status, _) = refused(&srv, "/ws", &[("authorization", "Bearer mallory")]).await;
    assert_eq!(status, 403);
    let (status, body) = refused(&srv, "/ws", &[("authorization", "Bearer mallory")]).await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mallory is not welcome")
    );
    assert_eq!(connects(&log), 2);
    // The query is part of the credential.
    let url = format!("{}?room=2", srv.ws_url());
    let _a3 = Client::connect_with_headers(&url, &alice).await.unwrap();
    assert_eq!(connects(&log), 3);
    // Failures are not cached: each is asked again.
    let slow = [("authorization", "Bearer slow")];
    assert_eq!(refused(&srv, "/ws", &slow).await.0, 503);
    assert_eq!(refused(&srv, "/ws", &slow).await.0, 503);
    assert_eq!(connects(&log), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_user_counts_against_limits_and_its_allow_opens_private_channels() {
    let (backend, _log) = start_backend().await;
    let srv = server(backend, |c| {
        c.limits.max_connections_per_user = 1;
        c.auth_hook.on_subscribe = true;
        c.channels.public = false;
    })
    .await;
    let alice = [("authorization", "Bearer alice")];
    let mut first = Client::connect_with_headers(&srv.ws_url(), &alice)
        .await
        .unwrap();
    let (status, body) = refused(&srv, "/ws", &alice).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (429, json!("too_many"))
    );
    // Channels are private here; the backend's allow subscribes on its authority.
    let reply = first
        .request(json!({"op": "subscribe", "id": 1, "channels": ["members"]}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["changed"], json!(["members"]), "{reply}");
}
