//! Webhooks against a real HTTP receiver started by the test: signed CloudEvents in order and
//! filtered by type, retries after 500s, batch mode, a dead or stuck receiver that does not
//! slow clients down, and queue overflow counted in `/api/v1/stats`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{TestServer, WAIT, wait_for_subscribers};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec-test-0123456789abcdef";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    status: u16,
}

/// A webhook endpoint: answers 500 to the first `fail_first` requests, then 200. Each request
/// first takes a permit of `gate`: with none, requests hang until the test adds some.
struct Receiver {
    addr: SocketAddr,
    fail_first: AtomicUsize,
    gate: tokio::sync::Semaphore,
    got: Mutex<Vec<Received>>,
}

impl Receiver {
    async fn start(fail_first: usize, permits: usize) -> Arc<Receiver> {
        async fn hook(
            State(r): State<Arc<Receiver>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let _permit = r.gate.acquire().await.unwrap();
            let failing = r
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if failing {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            r.got.lock().push(Received {
                headers,
                body,
                status: status.as_u16(),
            });
            status
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Arc::new(Receiver {
            addr: listener.local_addr().unwrap(),
            fail_first: AtomicUsize::new(fail_first),
            gate: tokio::sync::Semaphore::new(permits),
            got: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().clone()
    }

    /// The CloudEvents of the requests answered 200, in arrival order (arrays flattened).
    fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for r in self.received().into_iter().filter(|r| r.status == 200) {
            match serde_json::from_slice::<Value>(&r.body).unwrap() {
                Value::Array(events) => out.extend(events),
                event => out.push(event),
            }
        }
        out
    }

    fn types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }
}

fn webhook(
    url: &str,
    tweak: impl FnOnce(&mut herald_server::config::WebhookConfig),
) -> herald_server::config::WebhookConfig {
    let mut w = herald_server::config::WebhookConfig {
        url: url.into(),
        secret: herald_server::config::Secret(SECRET.into()),
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        ..Default::default()
    };
    tweak(&mut w);
    w
}

/// Polls `check` every 20 ms until it holds, failing after 10 s.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/api/v1/stats` until `check` holds for it (10 s); returns that snapshot.
async fn wait_for_stats(srv: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = srv.admin().stats().await.unwrap();
        if check(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Recomputes `Herald-Signature` as a receiver would.
fn signature_valid(secret: &str, r: &Received) -> bool {
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("herald-timestamp"), header("herald-signature")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sig == format!("v1={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_arrive_signed_in_order_and_filtered_by_type() {
    let all = Receiver::start(0, 1000).await;
    let some = Receiver::start(0, 1000).await;
    let srv = TestServer::start_with(|c| {
        c.webhooks = vec![
            webhook(&all.url(), |_| {}),
            webhook(&some.url(), |w| {
                w.types = vec!["client.connected".into(), "client.disconnected".into()];
                w.source = "herald://test-node".into();
            }),
        ];
    })
    .await;

    let mut c = srv.client().await;
    let id = c.id().to_string();
    c.subscribe(&["room"]).await.unwrap();
    c.unsubscribe(&["room"]).await.unwrap();
    c.close().await.unwrap();

    let expected = [
        "client.connected",
        "client.subscribed",
        "channel.occupied",
        "client.unsubscribed",
        "channel.vacated",
        "client.disconnected",
    ];
    wait_until("all six events", || all.events().len() >= expected.len()).await;
    assert_eq!(all.types(), expected);
    wait_until("the filtered endpoint's two events", || {
        some.events().len() >= 2
    })
    .await;
    assert_eq!(some.types(), ["client.connected", "client.disconnected"]);

    let events = all.events();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["specversion"], "1.0", "{e}");
        assert_eq!(e["datacontenttype"], "application/json", "{e}");
        assert!(
            e["source"].as_str().unwrap().starts_with("herald://"),
            "{e}"
        );
        let time = e["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "{time}"
        );
        assert!(e["data"].is_object(), "{e}");
        let eid = e["id"].as_str().unwrap();
        assert!(
            events[..i].iter().all(|o| o["id"] != eid),
            "ids unique: {eid}"
        );
    }
    assert_eq!(events[0]["data"]["client"], id.as_str());
    assert_eq!(events[1]["data"]["channel"], "room");
    assert_eq!(events[5]["data"]["client"], id.as_str());
    assert_eq!(some.events()[0]["source"], "herald://test-node");

    for r in all.received().iter().chain(some.received().iter()) {
        assert!(signature_valid(SECRET, r), "signature verifies: {r:?}");
        assert!(!signature_valid("some-other-secret-xx", r));
        assert_eq!(r.headers["content-type"], "application/cloudevents+json");
        assert!(r.headers.contains_key("herald-webhook-id"));
        let ts: u64 = r.headers["herald-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ts.abs_diff(now) < 300, "timestamp is unix seconds: {ts}");
    }
    let stats = wait_for_stats(&srv, "delivered count", |s| s["webhook_delivered"] == 8).await;
    assert_eq!(stats["webhook_failed"], 0);
    assert_eq!(stats["webhook_dropped"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_gets_retries_and_eventually_the_events() {
    let flaky = Receiver::start(3, 1000).await;
    let srv = TestServer::start_with(|c| {
        c.webhooks = vec![webhook(&flaky.url(), |w| {
            w.types = vec!["client.connected".into()];
            w.max_attempts = 10;
        })];
    })
    .await;
    let c = srv.client().await;

    wait_until("a 200 after the 500s", || flaky.events().len() == 1).await;
    let got = flaky.received();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    // One delivery, retried: same id and body each time, signed afresh each time.
    for r in &got {
        assert_eq!(
            r.headers["herald-webhook-id"],
            got[0].headers["herald-webhook-id"]
        );
        assert_eq!(r.body, got[0].body);
        assert!(signature_valid(SECRET, r));
    }
    assert_eq!(flaky.events()[0]["data"]["client"], c.id());
    let stats = wait_for_stats(&srv, "one delivery", |s| s["webhook_delivered"] == 1).await;
    assert_eq!(stats["webhook_retries"], 3);
    assert_eq!(stats["webhook_failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_posts_json_arrays() {
    // The gate holds the first POST until the test has queued more events behind it.
    let receiver = Receiver::start(0, 0).await;
    let srv = TestServer::start_with(|c| {
        c.webhooks = vec![webhook(&receiver.url(), |w| {
            w.types = vec!["client.connected".into()];
            w.batch_max = 3;
            w.timeout_ms = 30_000;
        })];
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..7 {
        clients.push(srv.client().await);
    }
    receiver.gate.add_permits(1000);
    wait_until("seven events", || receiver.events().len() >= 7).await;

    let got = receiver.received();
    let sizes: Vec<usize> = got
        .iter()
        .map(|r| {
            assert_eq!(
                r.headers["content-type"],
                "application/cloudevents-batch+json"
            );
            assert!(signature_valid(SECRET, r));
            serde_json::from_slice::<Value>(&r.body)
                .unwrap()
                .as_array()
                .expect("a JSON array")
                .len()
        })
        .collect();
    // The first POST left with what was queued then (usually one event); the events queued
    // behind it while it was held came in full batches of 3, the last maybe fewer.
    assert_eq!(sizes.iter().sum::<usize>(), 7, "{sizes:?}");
    assert!(sizes.iter().all(|n| (1..=3).contains(n)), "{sizes:?}");
    assert_eq!(sizes[1], 3, "{sizes:?}");
    let mut ids: Vec<String> = receiver
        .events()
        .iter()
        .map(|e| e["data"]["client"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = clients.iter().map(|c| c.id().to_string()).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_stuck_receiver_does_not_slow_clients() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stuck = Receiver::start(0, 0).await; // never answers
    let srv = TestServer::start_with(|c| {
        c.channels.client_publish = true;
        c.webhooks = vec![
            webhook(&format!("http://{dead}/hook"), |w| w.max_attempts = 2),
            webhook(&stuck.url(), |w| {
                w.timeout_ms = 60_000;
                w.queue_capacity = 4;
            }),
        ];
    })
    .await;

    let mut sub = srv.client().await;
    sub.subscribe(&["news"]).await.unwrap();
    wait_for_subscribers(&srv, "news", 1).await;
    let mut publisher = srv.client().await;
    for i in 0..50 {
        // Lifecycle churn for the webhooks to choke on.
        let mut c = srv.client().await;
        c.subscribe(&["churn"]).await.unwrap();
        c.close().await.unwrap();
        publisher.publish(&["news"], json!(i)).await.unwrap();
        let m = sub.next_op("message", WAIT).await.unwrap();
        assert_eq!(m["data"], i);
    }
    // The HTTP API answers too, and the dead endpoint's events were given up, not stuck.
    let stats = wait_for_stats(&srv, "given-up deliveries", |s| {
        s["webhook_failed"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(stats["webhook_delivered"], 0);
    assert!(stats["webhook_dropped"].as_u64() > Some(0), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_counted() {
    let stuck = Receiver::start(0, 0).await;
    let srv = TestServer::start_with(|c| {
        c.webhooks = vec![webhook(&stuck.url(), |w| {
            w.types = vec!["client.connected".into()];
            w.queue_capacity = 2;
            w.timeout_ms = 60_000;
        })];
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(srv.client().await);
    }
    // One event in flight, two queued: the other seven were dropped (eight if the worker
    // had not yet taken the first when the queue filled).
    let stats = wait_for_stats(&srv, "drops", |s| s["webhook_dropped"].as_u64() >= Some(7)).await;
    assert!(stats["webhook_dropped"].as_u64() <= Some(8), "{stats}");
    assert_eq!(stats["webhook_delivered"], 0);
    assert_eq!(stats["connections"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_briefly_and_is_not_held_by_a_stuck_receiver() {
    let healthy = Receiver::start(0, 1000).await;
    let stuck = Receiver::start(0, 0).await;
    let srv = TestServer::start_with(|c| {
        c.webhooks = vec![
            webhook(&healthy.url(), |w| {
                w.types = vec!["client.disconnected".into()]
            }),
            webhook(&stuck.url(), |w| w.timeout_ms = 300_000),
        ];
    })
    .await;
    let c = srv.client().await;
    let id = c.id().to_string();
    let TestServer { server, dir: _dir } = srv;
    tokio::time::timeout(
        Duration::from_secs(30),
        server.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("shutdown finishes despite the stuck receiver");
    // The disconnection caused by the shutdown itself was flushed to the healthy endpoint.
    let events = healthy.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["client"], id.as_str());
    assert_eq!(events[0]["data"]["reason"], "server_shutdown");
}
