//! JWT authentication over real sockets: connection tokens (user, channels, admin), expiry
//! with leeway, wrong signatures and scopes, subscription tokens for private channels, RSA and
//! ECDSA keys, and what a user id enables: user bans, kicking and messaging all of a user's
//! connections, the per-user connection limit.

mod common;

use std::time::Duration;

use common::{RawPeer, TestServer, WAIT};
use herald_client::{Client, Event};
use herald_server::config::Secret;
use herald_server::jwt::{self, Claims, JwtAlgorithm};
use serde_json::json;

const SECRET: &str = "test-jwt-secret-0123456789abcdef-xyz";

fn claims(sub: &str, ttl: i64) -> Claims {
    let now = jwt::now_secs() as i64;
    Claims {
        sub: sub.into(),
        exp: (now + ttl) as u64,
        ..Claims::default()
    }
}

fn hs256(claims: &Claims) -> String {
    jwt::mint(claims, JwtAlgorithm::HS256, SECRET.as_bytes()).unwrap()
}

async fn jwt_server() -> TestServer {
    TestServer::start_with(|c| c.jwt.hmac_secret = Secret(SECRET.into())).await
}

async fn connect_as(srv: &TestServer, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", srv.ws_url()))
        .await
        .unwrap()
}

/// The JSON error of a refused handshake: (status line, error code).
async fn refused(srv: &TestServer, token: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read the head, then the body its Content-Length announces (the connection stays open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(body)
        .map(|v| v["error"]["code"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_carry_user_channels_and_admin() {
    let srv = jwt_server().await;
    let mut token = claims("alice", 60);
    token.channels = vec!["news".into(), "alerts".into()];
    let mut alice = connect_as(&srv, &hs256(&token)).await;
    let info = srv
        .admin()
        .request_ok("GET", &format!("/api/v1/clients/{}", alice.id()), None)
        .await
        .unwrap();
    assert_eq!(info["user"], "alice");
    assert_eq!(info["admin"], false);
    assert_eq!(info["channels"], json!(["alerts", "news"]));
    srv.admin().publish(&["news"], json!("hi")).await.unwrap();
    assert_eq!(alice.next_op("message", WAIT).await.unwrap()["data"], "hi");
    let refused = alice.request(json!({"op":"clients"})).await.unwrap();
    assert_eq!(refused["error"]["code"], "forbidden");

    let mut boss = claims("boss", 60);
    boss.admin = true;
    let mut admin = connect_as(&srv, &hs256(&boss)).await;
    let clients = admin.request_ok(json!({"op":"clients"})).await.unwrap();
    assert_eq!(clients["result"]["clients"].as_array().unwrap().len(), 2);

    // The same token in the Authorization header, and in op auth after connecting.
    let header = format!("Bearer {}", hs256(&claims("carol", 60)));
    let carol = Client::connect_with_headers(&srv.ws_url(), &[("authorization", &header)])
        .await
        .unwrap();
    let users = srv
        .admin()
        .request_ok("GET", "/api/v1/users/carol", None)
        .await
        .unwrap();
    assert_eq!(users["clients"][0]["id"], carol.id());
    let mut late = srv.client().await;
    let reply = late
        .request_ok(json!({"op":"auth","token":hs256(&claims("dave", 60))}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["user"], "dave");
    let other = late
        .request(json!({"op":"auth","token":hs256(&claims("eve", 60))}))
        .await
        .unwrap();
    assert_eq!(
        other["error"]["code"], "forbidden",
        "one user per connection"
    );
    // The admin ops for users: list one user's connections, kick them all.
    let listed = admin
        .request_ok(json!({"op":"user","user":"dave"}))
        .await
        .unwrap();
    assert_eq!(listed["result"]["clients"][0]["id"], late.id());
    let kicked = admin
        .request_ok(json!({"op":"kick","user":"dave"}))
        .await
        .unwrap();
    assert_eq!(kicked["result"], json!({"user":"dave","disconnected":1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrongly_signed_and_wrongly_scoped_tokens_are_refused() {
    let srv = jwt_server().await;
    // Two seconds past expiry is within the default 5 s leeway; a minute is not.
    connect_as(&srv, &hs256(&claims("skew", -2))).await;
    assert_eq!(
        refused(&srv, &hs256(&claims("late", -60))).await,
        ("HTTP/1.1 401 Unauthorized".into(), "token_expired".into())
    );
    let forged = jwt::mint(
        &claims("mallory", 60),
        JwtAlgorithm::HS256,
        b"some-other-secret-0123456789abcdef",
    )
    .unwrap();
    assert_eq!(refused(&srv, &forged).await.1, "unauthorized");
    // An algorithm with no key configured.
    let hs512 = jwt::mint(&claims("x", 60), JwtAlgorithm::HS384, SECRET.as_bytes()).unwrap();
    connect_as(&srv, &hs512).await;
    assert_eq!(
        refused(&srv, "eyJhbGciOi.garbage.token").await.1,
        "unauthorized"
    );
    // An array `aud` (as many identity providers mint) is accepted.
    let mut multi_aud = claims("aud-user", 60);
    multi_aud.aud = Some(json!(["herald", "other-service"]));
    connect_as(&srv, &hs256(&multi_aud)).await;
    // A subscription token is not a connection token.
    let mut sub_token = claims("alice", 60);
    sub_token.channel = Some("vip".into());
    assert_eq!(refused(&srv, &hs256(&sub_token)).await.1, "unauthorized");
    // Without sub.
    let no_sub = Claims {
        exp: jwt::now_secs() + 60,
        ..Claims::default()
    };
    assert_eq!(refused(&srv, &hs256(&no_sub)).await.1, "unauthorized");
    // A bad channel name in the token: the token is unusable, as for any bad claim.
    let mut bad_channel = claims("alice", 60);
    bad_channel.channels = vec!["no spaces".into()];
    assert_eq!(
        refused(&srv, &hs256(&bad_channel)).await,
        ("HTTP/1.1 401 Unauthorized".into(), "unauthorized".into())
    );
    // A sub that could forge a log line or pass for another user (as the auth hook's user).
    for sub in ["bob\r\nWARN forged", "\u{1b}[31mred", "admin\u{202e}"] {
        assert_eq!(
            refused(&srv, &hs256(&claims(sub, 60))).await.1,
            "unauthorized",
            "{sub:?}"
        );
    }
}

/// A configured issuer or audience must be in the token, not only right when present: a token
/// minted for another service that shares the key carries neither (issue 9, item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_issuer_and_audience_are_required_claims() {
    let srv = TestServer::start_with(|c| {
        c.jwt.hmac_secret = Secret(SECRET.into());
        c.jwt.issuer = "https://auth.example".into();
        c.jwt.audience = "herald".into();
    })
    .await;
    let scoped = |iss: Option<&str>, aud: Option<serde_json::Value>| {
        let mut c = claims("svc", 60);
        c.iss = iss.map(Into::into);
        c.aud = aud;
        hs256(&c)
    };
    connect_as(
        &srv,
        &scoped(Some("https://auth.example"), Some(json!("herald"))),
    )
    .await;
    connect_as(
        &srv,
        &scoped(Some("https://auth.example"), Some(json!(["x", "herald"]))),
    )
    .await;
    for (what, token) in [
        ("no iss", scoped(None, Some(json!("herald")))),
        ("no aud", scoped(Some("https://auth.example"), None)),
        ("neither", scoped(None, None)),
        ("wrong iss", scoped(Some("other"), Some(json!("herald")))),
        (
            "wrong aud",
            scoped(Some("https://auth.example"), Some(json!("x"))),
        ),
    ] {
        assert_eq!(
            refused(&srv, &token).await,
            ("HTTP/1.1 401 Unauthorized".into(), "unauthorized".into()),
            "{what}"
        );
    }
    // The same rule for subscription tokens (private channels).
    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"vip","public":false})),
        )
        .await
        .unwrap();
    let mut member = connect_as(
        &srv,
        &scoped(Some("https://auth.example"), Some(json!("herald"))),
    )
    .await;
    let mut sub = claims("svc", 60);
    sub.channel = Some("vip".into());
    let bare = hs256(&sub);
    let reply = member
        .request(json!({"op":"subscribe","channel":"vip","token":bare}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    sub.iss = Some("https://auth.example".into());
    sub.aud = Some(json!("herald"));
    member
        .request_ok(json!({"op":"subscribe","channel":"vip","token":hs256(&sub)}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_need_a_subscription_token_for_this_user_and_channel() {
    let srv = jwt_server().await;
    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"vip","public":false})),
        )
        .await
        .unwrap();
    let mut alice = connect_as(&srv, &hs256(&claims("alice", 60))).await;
    let bare = alice
        .request(json!({"op":"subscribe","channel":"vip"}))
        .await
        .unwrap();
    assert_eq!(bare["error"]["code"], "forbidden");
    let mut for_bob = claims("bob", 60);
    for_bob.channel = Some("vip".into());
    let wrong_user = alice
        .request(json!({"op":"subscribe","channel":"vip","token":hs256(&for_bob)}))
        .await
        .unwrap();
    assert_eq!(wrong_user["error"]["code"], "forbidden", "{wrong_user}");
    let mut other_channel = claims("alice", 60);
    other_channel.channel = Some("elsewhere".into());
    let wrong_channel = alice
        .request(json!({"op":"subscribe","channel":"vip","token":hs256(&other_channel)}))
        .await
        .unwrap();
    assert_eq!(wrong_channel["error"]["code"], "forbidden");
    let connection_token = alice
        .request(json!({"op":"subscribe","channel":"vip","token":hs256(&claims("alice", 60))}))
        .await
        .unwrap();
    assert_eq!(connection_token["error"]["code"], "forbidden");
    let mut expired = claims("alice", -60);
    expired.channel = Some("vip".into());
    let old = alice
        .request(json!({"op":"subscribe","channel":"vip","token":hs256(&expired)}))
        .await
        .unwrap();
    assert_eq!(old["error"]["code"], "token_expired");
    let mut good = claims("alice", 60);
    good.channel = Some("vip".into());
    let ok = alice
        .request_ok(json!({"op":"subscribe","channel":"vip","token":hs256(&good)}))
        .await
        .unwrap();
    assert_eq!(ok["result"]["changed"], json!(["vip"]));
    srv.admin().publish(&["vip"], json!(1)).await.unwrap();
    assert_eq!(
        alice.next_op("message", WAIT).await.unwrap()["channel"],
        "vip"
    );
    // Admin-only channels stay admin-only: a subscription token does not open them.
    srv.admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"staff","subscribe":"admin"})),
        )
        .await
        .unwrap();
    let mut staff = claims("alice", 60);
    staff.channel = Some("staff".into());
    let r = alice
        .request(json!({"op":"subscribe","channel":"staff","token":hs256(&staff)}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    // An anonymous connection has no user to bind the token to.
    let mut anon = srv.client().await;
    let r = anon
        .request(json!({"op":"subscribe","channel":"vip","token":hs256(&good)}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "forbidden");
}

/// `openssl` output as text, for RSA keys (rcgen cannot generate them with ring).
fn openssl(args: &[&str], dir: &std::path::Path) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_public_keys_verify_their_tokens() {
    let keys = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(keys.path().join("ec.pub.pem"), ec.public_key_pem()).unwrap();
    let rsa_ok = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
        keys.path(),
    ) && openssl(
        &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"],
        keys.path(),
    );
    assert!(rsa_ok, "openssl generates the RSA test key");
    let dir = keys.path().to_path_buf();
    let srv = TestServer::start_with(|c| {
        c.jwt.ecdsa_public_key_file = dir.join("ec.pub.pem");
        c.jwt.rsa_public_key_file = dir.join("rsa.pub.pem");
    })
    .await;
    let es = jwt::mint(
        &claims("ec-user", 60),
        JwtAlgorithm::ES256,
        ec.serialize_pem().as_bytes(),
    )
    .unwrap();
    connect_as(&srv, &es).await;
    let rsa_key = std::fs::read(keys.path().join("rsa.pem")).unwrap();
    let rs = jwt::mint(&claims("rsa-user", 60), JwtAlgorithm::RS256, &rsa_key).unwrap();
    let _rsa_client = connect_as(&srv, &rs).await;
    let users = srv
        .admin()
        .request_ok("GET", "/api/v1/users/rsa-user", None)
        .await
        .unwrap();
    assert_eq!(users["clients"].as_array().unwrap().len(), 1);
    // HMAC is not configured on this server.
    assert_eq!(
        refused(&srv, &hs256(&claims("h", 60))).await.1,
        "unauthorized"
    );
    // A bad key file fails the start, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.jwt.rsa_public_key_file = dir.path().join("missing.pem");
    let err = herald_server::start(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("jwt.rsa_public_key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_banned_kicked_and_messaged_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = common::config(dir.path());
        c.jwt.hmac_secret = Secret(SECRET.into());
        c
    };
    let server = herald_server::start(config()).await.unwrap();
    let srv = TestServer { server, dir: None };
    let token = hs256(&claims("mallory", 600));
    let mut m1 = connect_as(&srv, &token).await;
    let mut m2 = connect_as(&srv, &token).await;
    let mut bystander = connect_as(&srv, &hs256(&claims("alice", 600))).await;

    let sent = srv
        .admin()
        .request_ok(
            "POST",
            "/api/v1/users/mallory/send",
            Some(&json!({"data":"to both"})),
        )
        .await
        .unwrap();
    assert_eq!(sent["connections"], 2);
    for c in [&mut m1, &mut m2] {
        assert_eq!(c.next_op("direct", WAIT).await.unwrap()["data"], "to both");
    }

    // Kick every connection of the user.
    let kicked = srv
        .admin()
        .request_ok("DELETE", "/api/v1/users/mallory?reason=later", None)
        .await
        .unwrap();
    assert_eq!(kicked["disconnected"], 2);
    for c in [&mut m1, &mut m2] {
        match c.next_event(WAIT).await.unwrap() {
            Event::Closed { code, reason } => assert_eq!((code, reason.as_str()), (4200, "later")),
            other => panic!("{other:?}"),
        }
    }

    // Ban the user: its connections close with 4003, reconnects are refused, others carry on.
    let mut m3 = connect_as(&srv, &token).await;
    let (status, ban) = srv
        .admin()
        .request(
            "POST",
            "/api/v1/bans",
            Some(&json!({"user":"mallory","reason":"abuse"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{ban}");
    assert_eq!(ban["ban"]["id"], "user:mallory");
    assert_eq!(ban["disconnected"], 1);
    match m3.next_event(WAIT).await.unwrap() {
        Event::Closed { code, .. } => assert_eq!(code, 4003),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        refused(&srv, &token).await,
        ("HTTP/1.1 403 Forbidden".into(), "banned".into())
    );
    let mut late = srv.client().await;
    let r = late
        .request(json!({"op":"auth","token":token}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "banned");
    bystander.ping().await.unwrap();

    // The user ban survives a restart.
    let TestServer { server, .. } = srv;
    server.shutdown(Duration::from_secs(2)).await;
    let server = herald_server::start(config()).await.unwrap();
    let srv = TestServer { server, dir: None };
    assert_eq!(refused(&srv, &token).await.1, "banned");
    // Others, anonymous connections from the same address included, are not affected.
    connect_as(&srv, &hs256(&claims("alice", 600))).await;
    let status = RawPeer::handshake_status(srv.addr(), "/ws", "").await;
    assert!(status.contains("101"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_connection_limit_counts_token_users() {
    let srv = TestServer::start_with(|c| {
        c.jwt.hmac_secret = Secret(SECRET.into());
        c.limits.max_connections_per_user = 1;
    })
    .await;
    let token = hs256(&claims("solo", 60));
    let first = connect_as(&srv, &token).await;
    assert_eq!(refused(&srv, &token).await.1, "too_many");
    // Another user is not affected.
    connect_as(&srv, &hs256(&claims("other", 60))).await;
    first.close().await.unwrap();
    // The slot comes back when the connection ends.
    let mut back = None;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(&format!("{}?token={token}", srv.ws_url())).await {
            back = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back.is_some());
}
