//! `[[ingress]]` against real queue servers: entries of a Redis stream and messages of a NATS
//! subject are published, in order, in Herald's format and gogin's; bad ones are counted and
//! skipped; two nodes share one stream with each entry published once; what waited in the
//! stream before a start, or came while Redis was away, is delivered. The tests start
//! `redis-server` and `nats-server` themselves (skipped, loudly, when one is not installed
//! outside CI; `.ci/run` installs both).

mod common;

use std::time::{Duration, Instant};

use common::services::{Nats, Redis, free_port};
use common::{RawPeer, TestServer, WAIT, wait_for_subscribers};
use herald_client::{Api, Client};
use herald_server::Config;
use herald_server::config::{IngressConfig, Secret};
use serde_json::{Value, json};

/// XADDs one entry with `payload` (a string, or any JSON value as its text).
async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, payload: &Value) {
    let text = match payload {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    xadd_fields(conn, stream, &[("payload", &text)]).await;
}

async fn xadd_fields(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &str)],
) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}

/// Entries delivered to the group `herald` and not acknowledged.
async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("herald")
        .query_async(conn)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XPENDING: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

/// Waits until no entry of `stream` is pending.
async fn wait_all_acknowledged(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let deadline = Instant::now() + WAIT;
    while pending(conn, stream).await > 0 {
        assert!(
            Instant::now() < deadline,
            "entries of {stream} still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn redis_ingress(url: &str, stream: &str, format: &str) -> IngressConfig {
    IngressConfig {
        kind: "redis_stream".into(),
        url: Secret(url.into()),
        stream: Some(stream.into()),
        format: format.into(),
        ..Default::default()
    }
}

fn nats_ingress(url: &str, subject: &str, format: &str) -> IngressConfig {
    IngressConfig {
        kind: "nats".into(),
        url: Secret(url.into()),
        subject: Some(subject.into()),
        format: format.into(),
        ..Default::default()
    }
}

/// A node reading `ingress`, with `tweak` applied.
async fn node(ingress: Vec<IngressConfig>, tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.ingress = ingress;
        tweak(c);
    })
    .await
}

/// The node's own counters (not summed over a cluster).
fn counters(srv: &TestServer) -> (u64, u64) {
    let s = srv.server.state.hub.stats_snapshot();
    (s.ingress_published, s.ingress_rejected)
}

/// Waits until the node's ingress counters reach `published` and `rejected`.
async fn wait_counters(srv: &TestServer, published: u64, rejected: u64) {
    let deadline = Instant::now() + WAIT;
    while counters(srv) != (published, rejected) {
        assert!(
            Instant::now() < deadline,
            "ingress counters {:?}, expected {:?}",
            counters(srv),
            (published, rejected)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `n` messages' data.
async fn next_data(client: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(client.next_op("message", WAIT).await.unwrap()["data"].clone());
    }
    got
}

/// The data of the publications `channel` keeps, once it keeps `n`.
async fn wait_history(srv: &TestServer, channel: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/api/v1/channels/{channel}/history");
        let (status, page) = srv.admin().request("GET", &path, None).await.unwrap();
        let data: Vec<Value> = match status {
            200 => page["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["data"].clone())
                .collect(),
            _ => Vec::new(),
        };
        if data.len() >= n {
            return data;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} keeps {data:?}, expected {n} publications"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- Redis streams ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_entries_of_a_stream_reach_subscribers_in_order() {
    let Some(redis) = Redis::start() else { return };
    let srv = node(vec![redis_ingress(&redis.url(), "in", "herald")], |_| {}).await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    a.subscribe(&["news"]).await.unwrap();
    b.subscribe(&["news", "sports"]).await.unwrap();
    let mut conn = redis.conn().await;
    for i in 0..30 {
        xadd(&mut conn, "in", &json!({"channel":"news","data":{"n":i}})).await;
    }
    // `channels`, and `to` (only `a`), as POST /api/v1/publish takes them.
    xadd(
        &mut conn,
        "in",
        &json!({"channels":["news","sports"],"data":"both"}),
    )
    .await;
    xadd(
        &mut conn,
        "in",
        &json!({"channel":"news","data":"to a","to":[a.id()]}),
    )
    .await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":"last"})).await;

    let expected: Vec<Value> = (0..30).map(|i| json!({"n": i})).collect();
    assert_eq!(next_data(&mut a, 30).await, expected);
    assert_eq!(next_data(&mut a, 3).await, ["both", "to a", "last"]);
    assert_eq!(next_data(&mut b, 30).await, expected);
    // `b` has "both" once per channel, not "to a".
    assert_eq!(next_data(&mut b, 3).await, ["both", "both", "last"]);
    wait_counters(&srv, 33, 0).await;
    let stats = srv.admin().stats().await.unwrap();
    assert_eq!(
        (&stats["ingress_published"], &stats["ingress_rejected"]),
        (&json!(33), &json!(0)),
        "{stats}"
    );
    wait_all_acknowledged(&mut conn, "in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gogin_entries_arrive_as_push_stream_text() {
    let Some(redis) = Redis::start() else { return };
    let srv = node(vec![redis_ingress(&redis.url(), "notes", "gogin")], |c| {
        c.dialects.pushstream.enabled = true;
    })
    .await;
    let mut peer = RawPeer::connect_to(srv.addr(), "/pushstream/subscribe/1", "").await;
    let mut native = srv.client().await;
    native.subscribe(&["1", "news"]).await.unwrap();
    wait_for_subscribers(&srv, "1", 2).await;
    let mut conn = redis.conn().await;
    // gogin sent the channel as a number; a name works too.
    xadd(
        &mut conn,
        "notes",
        &json!({"channel":1,"message":"say \"hi\""}),
    )
    .await;
    xadd(
        &mut conn,
        "notes",
        &json!({"channel":"1","message":"second"}),
    )
    .await;
    xadd(
        &mut conn,
        "notes",
        &json!({"channel":"news","message":"{\"not\":\"json\"}"}),
    )
    .await;

    assert_eq!(
        peer.text().await,
        r#"{"id":1,"channel":"1","text":"say \"hi\""}"#
    );
    assert_eq!(
        peer.text().await,
        r#"{"id":2,"channel":"1","text":"second"}"#
    );
    // Native subscribers get the text as a JSON string, as from the /pub publisher.
    assert_eq!(
        next_data(&mut native, 3).await,
        ["say \"hi\"", "second", "{\"not\":\"json\"}"]
    );
    wait_counters(&srv, 3, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_counted_acknowledged_and_skipped() {
    let Some(redis) = Redis::start() else { return };
    let srv = node(
        vec![
            redis_ingress(&redis.url(), "in", "herald"),
            redis_ingress(&redis.url(), "notes", "gogin"),
        ],
        |c| c.limits.max_payload_bytes = 1024,
    )
    .await;
    let mut c = srv.client().await;
    c.subscribe(&["news"]).await.unwrap();
    let mut conn = redis.conn().await;
    let bad = [
        json!("not json"),
        json!("[1,2]"),
        json!({"data":1}),
        json!({"channel":"news"}),
        json!({"channel":"news","channels":["news"],"data":1}),
        json!({"channel":"no spaces","data":1}),
        json!({"channel":"news","data":"x".repeat(2000)}),
        json!({"channel":"news","data":1,"to":["not-a-client-id"]}),
    ];
    for payload in &bad {
        xadd(&mut conn, "in", payload).await;
    }
    xadd_fields(&mut conn, "in", &[("body", "{}")]).await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":"good 1"})).await;
    xadd(&mut conn, "notes", &json!({"channel":"news"})).await;
    xadd(&mut conn, "notes", &json!({"channel":"news","message":""})).await;
    xadd(
        &mut conn,
        "notes",
        &json!({"channel":"news","message":"good 2"}),
    )
    .await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":"good 3"})).await;

    let mut got = next_data(&mut c, 3).await;
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, ["good 1", "good 2", "good 3"]);
    let rejected = bad.len() as u64 + 3;
    wait_counters(&srv, 3, rejected).await;
    let stats = srv.admin().stats().await.unwrap();
    assert_eq!(stats["ingress_rejected"], rejected, "{stats}");
    // Refused entries are acknowledged too: nothing is read again.
    wait_all_acknowledged(&mut conn, "in").await;
    wait_all_acknowledged(&mut conn, "notes").await;
    c.pump(Duration::from_millis(200)).await.unwrap();
    assert_eq!(c.queued(), 0, "nothing else was published");
}

/// Two nodes of one cluster read the same stream in one group: each entry is published by
/// one of them, once, and reaches the subscribers of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_stream_each_entry_published_once() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let member = |name: &'static str| {
        let url = url.clone();
        move |c: &mut Config| {
            c.node_name = name.into();
            c.broker.kind = "redis".into();
            c.broker.url = Secret(url);
            // Reports (what the cluster's stats sum) every second.
            c.broker.presence_ttl_secs = 3;
        }
    };
    let ingress = vec![redis_ingress(&url, "shared", "herald")];
    let a = node(ingress.clone(), member("node-a")).await;
    let b = node(ingress, member("node-b")).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["c"]).await.unwrap();
    on_b.subscribe(&["c"]).await.unwrap();
    let mut conn = redis.conn().await;
    let total = 60u64;
    for i in 0..total {
        xadd(&mut conn, "shared", &json!({"channel":"c","data":i})).await;
    }
    for client in [&mut on_a, &mut on_b] {
        let mut got: Vec<u64> = next_data(client, total as usize)
            .await
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..total).collect::<Vec<_>>());
    }
    wait_all_acknowledged(&mut conn, "shared").await;
    let ((pa, ra), (pb, rb)) = (counters(&a), counters(&b));
    assert_eq!((pa + pb, ra + rb), (total, 0), "each entry published once");
    assert!(pa > 0 && pb > 0, "both nodes took a share: {pa} and {pb}");
    // No second copy arrives later.
    on_a.pump(Duration::from_millis(200)).await.unwrap();
    on_b.pump(Duration::from_millis(200)).await.unwrap();
    assert_eq!((on_a.queued(), on_b.queued()), (0, 0));
    // The cluster's stats sum both nodes (as each last reported).
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = a.admin().stats().await.unwrap();
        if stats["ingress_published"] == total {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries that waited in the stream before the node started are published (kept in history,
/// since nobody can be subscribed yet): on a new stream, and on one where this node's
/// consumer already had entries delivered but never acknowledged (handled first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_waiting_before_the_start_are_published_pending_first() {
    let Some(redis) = Redis::start() else { return };
    let mut conn = redis.conn().await;
    // A stream with no group yet.
    xadd(&mut conn, "fresh", &json!({"channel":"fresh","data":"f1"})).await;
    xadd(&mut conn, "fresh", &json!({"channel":"fresh","data":"f2"})).await;
    // A stream whose group delivered "old 1" to consumer n1, which stopped before its XACK.
    xadd(&mut conn, "in", &json!({"channel":"old","data":"old 1"})).await;
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "in", "herald", "0"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "herald", "n1", "COUNT", "1", "STREAMS", "in", ">"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending(&mut conn, "in").await, 1);
    xadd(&mut conn, "in", &json!({"channel":"old","data":"old 2"})).await;

    let ingress = vec![
        redis_ingress(&redis.url(), "in", "herald"),
        redis_ingress(&redis.url(), "fresh", "herald"),
    ];
    let srv = node(ingress, |c| {
        c.node_name = "n1".into();
        c.channels.history_size = 100;
    })
    .await;
    assert_eq!(wait_history(&srv, "old", 2).await, ["old 1", "old 2"]);
    assert_eq!(wait_history(&srv, "fresh", 2).await, ["f1", "f2"]);
    wait_all_acknowledged(&mut conn, "in").await;
    wait_all_acknowledged(&mut conn, "fresh").await;
    wait_counters(&srv, 4, 0).await;
}

/// Redis goes away and comes back (with its data): the node keeps serving meanwhile, then
/// publishes what was added since; and it shuts down promptly while Redis is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(redis) = Redis::start_on(port, Some(dir.path())) else {
        return;
    };
    let srv = node(vec![redis_ingress(&redis.url(), "in", "herald")], |_| {}).await;
    let mut c = srv.client().await;
    c.subscribe(&["news"]).await.unwrap();
    let mut conn = redis.conn().await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":1})).await;
    assert_eq!(next_data(&mut c, 1).await, [1]);

    drop(redis);
    // Everything else keeps working.
    srv.admin().publish(&["news"], json!("api")).await.unwrap();
    assert_eq!(next_data(&mut c, 1).await, ["api"]);

    let redis = Redis::start_on(port, Some(dir.path())).unwrap();
    let mut conn = redis.conn().await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":2})).await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":3})).await;
    assert_eq!(next_data(&mut c, 2).await, [2, 3]);
    wait_all_acknowledged(&mut conn, "in").await;
    wait_counters(&srv, 3, 0).await;

    drop(redis);
    let started = Instant::now();
    let TestServer { server, dir: _dir } = srv;
    server.shutdown(Duration::from_secs(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for the ingress",
        started.elapsed()
    );
}

/// The cluster's broker (another Redis) goes away: the hub says `broker_unavailable`, "not
/// now", so the entry is neither dropped nor acknowledged, and is published once the broker
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_refused_for_now_waits_for_the_broker() {
    let Some(queue) = Redis::start() else { return };
    let broker_port = free_port();
    let broker = Redis::start_on(broker_port, None).unwrap();
    let broker_url = broker.url();
    let srv = node(vec![redis_ingress(&queue.url(), "in", "herald")], |c| {
        c.broker.kind = "redis".into();
        c.broker.url = Secret(broker_url);
        c.broker.timeout_ms = 500;
    })
    .await;
    let mut c = srv.client().await;
    c.subscribe(&["news"]).await.unwrap();
    let mut conn = queue.conn().await;
    xadd(&mut conn, "in", &json!({"channel":"news","data":1})).await;
    assert_eq!(next_data(&mut c, 1).await, [1]);

    drop(broker);
    xadd(&mut conn, "in", &json!({"channel":"news","data":2})).await;
    let deadline = Instant::now() + WAIT;
    while pending(&mut conn, "in").await == 0 {
        assert!(Instant::now() < deadline, "the entry was not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read, held: neither published nor refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&mut conn, "in").await, 1);
    assert_eq!(counters(&srv), (1, 0));

    // Published once the broker answers again (subscribers of a node that was not following
    // the channel yet recover it: docs/scaling.md).
    let _broker = Redis::start_on(broker_port, None).unwrap();
    wait_counters(&srv, 2, 0).await;
    wait_all_acknowledged(&mut conn, "in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_redis_cannot_use_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.ingress = vec![redis_ingress(
        "redis://user:s3cret@127.0.0.1:notaport/",
        "in",
        "herald",
    )];
    config.validate().unwrap();
    let error = match herald_server::start(config).await {
        Ok(_) => panic!("started with a bad URL"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("ingress[0].url"), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the password is not shown: {error}"
    );
}

// ---- NATS ---------------------------------------------------------------------------------

/// Waits until `n` subscriptions in the queue group `herald` exist on `nats` (publications
/// reach them only then).
async fn wait_subscriptions(nats: &Nats, n: usize) {
    let monitor = nats.monitor.expect("started with a monitoring port");
    let api = Api::new(&format!("http://127.0.0.1:{monitor}"), None);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((200, subs)) = api.request("GET", "/subsz?subs=1", None).await {
            let ours = subs["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["qgroup"] == "herald")
                .count();
            if ours >= n {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{n} NATS subscriptions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both formats from NATS subjects, a bad message counted; the node starts while NATS is not
/// there yet, and NATS may go away and come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subjects_are_published_in_both_formats() {
    let (port, monitor) = (free_port(), free_port());
    let url = format!("nats://127.0.0.1:{port}");
    let srv = node(
        vec![
            nats_ingress(&url, "herald.in", "herald"),
            nats_ingress(&url, "notification", "gogin"),
        ],
        |_| {},
    )
    .await;
    let mut c = srv.client().await;
    c.subscribe(&["news", "1"]).await.unwrap();
    let Some(nats) = Nats::start_on(port, Some(monitor)) else {
        return;
    };
    wait_subscriptions(&nats, 2).await;
    let publisher = async_nats::connect(nats.url()).await.unwrap();
    let send = |subject: &'static str, payload: String| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(subject, payload.into())
                .await
                .expect("published");
            publisher.flush().await.expect("flushed");
        }
    };
    send(
        "herald.in",
        json!({"channel":"news","data":{"n":1}}).to_string(),
    )
    .await;
    send("herald.in", "not json".into()).await;
    send(
        "notification",
        json!({"channel":1,"message":"gogin says hi"}).to_string(),
    )
    .await;
    send(
        "herald.in",
        json!({"channel":"news","data":{"n":2}}).to_string(),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = c.next_op("message", WAIT).await.unwrap();
        got.push((m["channel"].clone(), m["data"].clone()));
    }
    got.sort_by_key(|(channel, data)| (channel.to_string(), data.to_string()));
    assert_eq!(
        got,
        [
            (json!("1"), json!("gogin says hi")),
            (json!("news"), json!({"n":1})),
            (json!("news"), json!({"n":2})),
        ]
    );
    wait_counters(&srv, 3, 1).await;

    // NATS restarts: the node subscribes again by itself.
    drop(publisher);
    drop(nats);
    let nats = Nats::start_on(port, Some(monitor)).unwrap();
    wait_subscriptions(&nats, 2).await;
    let publisher = async_nats::connect(nats.url()).await.unwrap();
    publisher
        .publish(
            "herald.in",
            json!({"channel":"news","data":"back"}).to_string().into(),
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    assert_eq!(next_data(&mut c, 1).await, ["back"]);
    wait_counters(&srv, 4, 1).await;
}
