//! Several Herald nodes joined by a real Redis (`[broker] type = "redis"`): publications on any
//! node reach subscribers on every node in one offset order, a subscriber is answered once its
//! node follows the channel, and a broker that goes away gives `broker_unavailable` within the
//! timeout. The tests start `redis-server` themselves (skipped, loudly, when it is not
//! installed outside CI; `.ci/run` installs it).

mod common;

use std::time::Duration;

use common::services::{JWT_SECRET, Redis, free_port, until_nodes, user_token};
use common::{ADMIN_KEY, TestServer, WAIT};
use herald_client::{Api, Client};
use serde_json::json;

/// A node joined to `redis`, with `tweak` applied to its configuration.
async fn node_with(
    redis: &Redis,
    tweak: impl FnOnce(&mut herald_server::Config) + Send + 'static,
) -> TestServer {
    let url = redis.url();
    TestServer::start_with(move |c| {
        c.broker.kind = "redis".into();
        c.broker.url = herald_server::config::Secret(url);
        tweak(c);
    })
    .await
}

async fn node(redis: &Redis) -> TestServer {
    node_with(redis, |c| {
        c.broker.timeout_ms = 1000;
        c.channels.client_publish = true;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_on_any_node_reach_every_node_in_one_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["c"]).await.unwrap();
    on_b.subscribe(&["c"]).await.unwrap();
    // Publishers on both nodes: the HTTP API of each, and a client on b.
    let mut publisher = Client::connect(&format!("{}?token={ADMIN_KEY}", b.ws_url()))
        .await
        .unwrap();
    let total = 60u64;
    for i in 0..total {
        match i % 3 {
            0 => {
                a.admin().publish(&["c"], json!(i)).await.unwrap();
            }
            1 => {
                b.admin().publish(&["c"], json!(i)).await.unwrap();
            }
            _ => {
                publisher
                    .request_ok(json!({"op":"publish","channel":"c","data":i}))
                    .await
                    .unwrap();
            }
        }
    }
    for (name, client) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut offsets = Vec::new();
        let mut epochs = std::collections::HashSet::new();
        for _ in 0..total {
            let m = client.next_op("message", WAIT).await.unwrap();
            offsets.push(m["offset"].as_u64().unwrap());
            epochs.insert(m["epoch"].as_str().unwrap().to_string());
        }
        assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "node {name}");
        assert_eq!(epochs.len(), 1, "one epoch on node {name}");
    }
    // The HTTP answer reports the offset Redis assigned.
    let r = a.admin().publish(&["c"], json!("last")).await.unwrap();
    assert_eq!(r["channels"][0]["offset"], total + 1);
    assert_eq!(
        on_b.next_op("message", WAIT).await.unwrap()["offset"],
        total + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_only_channels_with_local_subscribers() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut on_b = b.client().await;
    on_b.subscribe(&["x"]).await.unwrap();
    a.admin().publish(&["x"], json!(1)).await.unwrap();
    assert_eq!(on_b.next_op("message", WAIT).await.unwrap()["data"], 1);
    // Node a has nobody on "x": it has no channel for it.
    assert!(
        a.server
            .state
            .hub
            .registry()
            .lookup(&herald_core::ChannelName::parse("x").unwrap())
            .is_none()
    );
    // Once b's subscriber leaves, b stops following: a later publication reaches no node.
    on_b.unsubscribe(&["x"]).await.unwrap();
    let mut delivered_to_nodes = 1;
    for _ in 0..50 {
        let r = a.admin().publish(&["x"], json!(2)).await.unwrap();
        delivered_to_nodes = r["channels"][0]["delivered"].as_u64().unwrap();
        if delivered_to_nodes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered_to_nodes, 0, "no node follows x any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_gives_broker_unavailable() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis).await;
    let mut c = a.client().await;
    c.subscribe(&["y"]).await.unwrap();
    drop(redis);
    let api = Api::new(&a.http(), Some(ADMIN_KEY));
    let started = std::time::Instant::now();
    let (status, body) = api
        .request(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"y","data":1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("broker_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the timeout"
    );
    // Clients not touching the broker keep working.
    c.ping().await.unwrap();
}

/// A subscribe the broker cannot confirm (the node's pub/sub connection is down) is refused
/// and leaves nothing behind, whichever way it came: the `subscribe` op, the URL's
/// `?channels=`, the HTTP API. (Before, the client was refused but stayed subscribed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_the_broker_cannot_confirm_leaves_no_subscription() {
    let Some(redis) = Redis::start() else { return };
    let a = node_with(&redis, |c| c.broker.timeout_ms = 500).await;
    let mut c = a.client().await;
    c.subscribe(&["kept"]).await.unwrap();
    drop(redis);
    let channels_of = |id: String| {
        let api = a.admin();
        async move {
            let body = api
                .request_ok("GET", &format!("/api/v1/clients/{id}"), None)
                .await
                .unwrap();
            body["channels"].clone()
        }
    };
    let reply = c
        .request(json!({"op":"subscribe","channels":["z1","z2"]}))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], "broker_unavailable", "{reply}");
    assert_eq!(channels_of(c.id().to_string()).await, json!(["kept"]));

    let u = Client::connect(&format!("{}?channels=z3", a.ws_url()))
        .await
        .unwrap();
    let welcome = u.welcome().clone();
    assert_eq!(
        (
            welcome["subscribed"].clone(),
            welcome["errors"]["z3"]["code"].clone()
        ),
        (json!([]), json!("broker_unavailable")),
        "{welcome}"
    );
    assert_eq!(channels_of(u.id().to_string()).await, json!([]));

    let (status, body) = a
        .admin()
        .request(
            "POST",
            &format!("/api/v1/clients/{}/subscribe", u.id()),
            Some(&json!({"channel":"z4"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{body}"
    );
    assert_eq!(channels_of(u.id().to_string()).await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_cannot_be_reached_fails_the_start_naming_the_key() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.broker.kind = "redis".into();
    config.broker.url =
        herald_server::config::Secret(format!("redis://user:s3cret@127.0.0.1:{port}/"));
    config.broker.timeout_ms = 500;
    config.validate().unwrap();
    let error = match herald_server::start(config).await {
        Ok(_) => panic!("started without Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("broker.url"), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the password is not shown: {error}"
    );
}

/// A client that drops from one node and comes back on another recovers every publication it
/// missed, in order, from the history kept in Redis; also while publications go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_node() {
    let Some(redis) = Redis::start() else { return };
    let with_history = |c: &mut herald_server::Config| {
        c.broker.timeout_ms = 1000;
        c.channels.history_size = 100;
    };
    let a = node_with(&redis, with_history).await;
    let b = node_with(&redis, with_history).await;
    let mut c = a.client().await;
    c.subscribe(&["r"]).await.unwrap();
    let first = a.admin().publish(&["r"], json!(1)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], 1);
    drop(c);
    // Published meanwhile through both nodes; b has nobody on "r".
    for i in 2..=6 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.admin().publish(&["r"], json!(i)).await.unwrap();
    }
    let mut c = b.client().await;
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":"r",
            "recover":{"r":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["r"],
        json!({"recovered":true,"epoch":epoch,"offset":6}),
        "{reply}"
    );
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = c.next_op("message", WAIT).await.unwrap();
        got.push((m["offset"].as_u64().unwrap(), m["data"].as_u64().unwrap()));
    }
    assert_eq!(got, [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]);
    // And live from there, through either node.
    a.admin().publish(&["r"], json!(7)).await.unwrap();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], 7);
    // Another epoch (or a position Redis no longer keeps): false, nothing replayed.
    let mut d = a.client().await;
    let reply = d
        .request_ok(json!({"op":"subscribe","channel":"r",
            "recover":{"r":{"epoch":"other","offset":1}}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"]["r"]["recovered"], false);
}

/// A recovery on a node reads the channel's position from Redis; a publication can be there
/// already while the node's pub/sub connection has not brought it yet. The subscribers the
/// node already has must still get it (found by `scripts/soak/cluster-faults.sh`: the node
/// took the publication for delivered and dropped it when it arrived). Each round publishes
/// through the other node while clients recover on this one, at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_racing_a_publication_costs_the_other_subscribers_nothing() {
    let Some(redis) = Redis::start() else { return };
    let with_history = |c: &mut herald_server::Config| {
        c.broker.timeout_ms = 2000;
        c.channels.history_size = 1000;
    };
    let a = node_with(&redis, with_history).await;
    let b = node_with(&redis, with_history).await;
    let mut steady = a.client().await;
    steady.subscribe(&["race"]).await.unwrap();
    let first = b.admin().publish(&["race"], json!(0)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    const ROUNDS: u64 = 150;
    const RECOVERING: usize = 4;
    let mut recovering = Vec::new();
    for _ in 0..RECOVERING {
        recovering.push(a.client().await);
    }
    let publisher = b.admin();
    for round in 1..=ROUNDS {
        let publish = publisher.publish(&["race"], json!(round));
        let recoveries = recovering.iter_mut().map(|c| {
            c.request_ok(json!({"op":"subscribe","channel":"race",
                "recover":{"race":{"epoch":epoch,"offset":round}}}))
        });
        let (published, replies) =
            tokio::join!(publish, futures_util::future::join_all(recoveries));
        published.unwrap();
        for reply in replies {
            let reply = reply.unwrap();
            assert_eq!(
                reply["result"]["recovered"]["race"]["recovered"], true,
                "{reply}"
            );
        }
        for c in &mut recovering {
            c.request_ok(json!({"op":"unsubscribe","channel":"race"}))
                .await
                .unwrap();
        }
    }
    // The steady subscriber got every publication, once, in order (read until the last or
    // until nothing more comes).
    let mut offsets = Vec::new();
    while offsets.last() != Some(&(ROUNDS + 1)) {
        match steady.next_op("message", WAIT).await {
            Ok(m) => offsets.push(m["offset"].as_u64().unwrap()),
            Err(_) => break,
        }
    }
    let missing: Vec<u64> = (1..=ROUNDS + 1).filter(|o| !offsets.contains(o)).collect();
    assert_eq!(
        missing,
        Vec::<u64>::new(),
        "publications the steady subscriber missed"
    );
    assert_eq!(offsets, (1..=ROUNDS + 1).collect::<Vec<_>>());
}

/// Every node lists the cluster and sums its counters; a node that stops reporting (killed)
/// is forgotten within `presence_ttl_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_summed_and_forgotten_when_they_stop_reporting() {
    let Some(redis) = Redis::start() else { return };
    let named = |name: &'static str| {
        move |c: &mut herald_server::Config| {
            c.broker.presence_ttl_secs = 3;
            c.node_name = name.into();
        }
    };
    let a = node_with(&redis, named("node-a")).await;
    let b = node_with(&redis, named("node-b")).await;
    let _c1 = a.client().await;
    let _c2 = b.client().await;
    let _c3 = b.client().await;
    // A node that reported once and then died (its report is never refreshed).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now = herald_core::client::now_ms();
    let ghost = serde_json::json!({"at_ms": now, "stats": a.admin().stats().await.unwrap()});
    let _: () = redis::cmd("HSET")
        .arg("herald:nodes")
        .arg("ghost")
        .arg(ghost.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let names = |body: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    // Reports are written at start: both real nodes appear at once.
    let mut listed = Vec::new();
    for _ in 0..100 {
        let body = a
            .admin()
            .request_ok("GET", "/api/v1/nodes", None)
            .await
            .unwrap();
        listed = names(&body);
        if listed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed, ["ghost", "node-a", "node-b"]);
    // Stats sum the cluster: the connections of a and b (and the ghost's copy of a's).
    let stats = b.admin().stats().await.unwrap();
    assert_eq!(stats["nodes"], 3);
    assert!(stats["connections"].as_u64().unwrap() >= 3, "{stats}");
    // The ghost stops reporting: gone after the time to live (3 s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let body = b
        .admin()
        .request_ok("GET", "/api/v1/nodes", None)
        .await
        .unwrap();
    assert_eq!(names(&body), ["node-a", "node-b"]);
    let stats = b.admin().stats().await.unwrap();
    assert_eq!(
        (stats["nodes"].as_u64(), stats["connections"].as_u64()),
        (Some(2), Some(3))
    );
}

/// Redis killed under traffic: publishers get `broker_unavailable` meanwhile; when it is back
/// the nodes reconnect, their subscribers are told (`broker_reconnected`), and one that
/// resubscribes with recovery has no gap (Redis kept its append-only file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_subscribers_are_told_and_recover_without_a_gap() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(redis) = Redis::start_on(port, Some(data.path())) else {
        return;
    };
    let a = node_with(&redis, |c| {
        c.broker.timeout_ms = 500;
        c.channels.history_size = 100;
    })
    .await;
    let mut c = a.client().await;
    c.subscribe(&["f"]).await.unwrap();
    let first = a.admin().publish(&["f"], json!(1)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], 1);

    drop(redis); // killed
    let (status, body) = a
        .admin()
        .request(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"f","data":2})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("broker_unavailable"))
    );

    let _redis = Redis::start_on(port, Some(data.path())).unwrap();
    // Publishing works again once the node's connection is back.
    let mut published = false;
    for _ in 0..100 {
        if let Ok((200, _)) = a
            .admin()
            .request(
                "POST",
                "/api/v1/publish",
                Some(&json!({"channel":"f","data":2})),
            )
            .await
        {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "publishing works again");
    a.admin().publish(&["f"], json!(3)).await.unwrap();
    // The subscriber is told it may have missed something...
    let notice = c
        .next_op("unsubscribed", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        notice,
        json!({"op":"unsubscribed","channel":"f","reason":"broker_reconnected"})
    );
    // ...and recovers from its last offset, without a gap.
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":"f",
            "recover":{"f":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["f"]["recovered"], true,
        "{reply}"
    );
    let mut offsets = Vec::new();
    while offsets.len() < 2 {
        let m = c.next_op("message", WAIT).await.unwrap();
        offsets.push(m["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, [2, 3]);
}

/// Presence lists subscribers of every node, join/leave notices cross nodes, and the entries
/// of a node that stops reporting (killed) are gone within `presence_ttl_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let setup = |name: &'static str| {
        move |c: &mut herald_server::Config| {
            c.broker.presence_ttl_secs = 3;
            c.node_name = name.into();
            c.channels.presence = true;
            c.channels.join_leave = true;
        }
    };
    let a = node_with(&redis, setup("node-a")).await;
    let b = node_with(&redis, setup("node-b")).await;
    let mut on_a = a.client().await;
    on_a.subscribe(&["p"]).await.unwrap();
    let mut on_b = b.client().await;
    on_b.subscribe(&["p"]).await.unwrap();
    // a hears b's join, through Redis.
    let join = on_a.next_op("join", WAIT).await.unwrap();
    assert_eq!(join["client"], on_b.id());
    // Both nodes list both subscribers.
    let ids = |body: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = body["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let mut expected = vec![on_a.id().to_string(), on_b.id().to_string()];
    expected.sort();
    let mut listed = Vec::new();
    for _ in 0..100 {
        let body = on_b
            .call(json!({"op":"presence","channel":"p"}))
            .await
            .unwrap();
        listed = ids(&body);
        if listed == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, expected);
    let stats = a
        .admin()
        .request_ok("GET", "/api/v1/channels/p/presence_stats", None)
        .await
        .unwrap();
    assert_eq!(stats["clients"], 2);
    // b's subscriber leaves: a hears it.
    on_b.unsubscribe(&["p"]).await.unwrap();
    let leave = on_a.next_op("leave", WAIT).await.unwrap();
    assert_eq!(leave["client"], on_b.id());
    // A node that dies leaves no ghost: a presence entry written by a node that never reports.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ghost = herald_core::ClientId::random().to_string();
    let entry = json!({"client": ghost, "user": null, "node": "node-dead"}).to_string();
    let _: () = redis::cmd("HSET")
        .arg("herald:presence:p")
        .arg(&ghost)
        .arg(entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let body = on_a
        .call(json!({"op":"presence","channel":"p"}))
        .await
        .unwrap();
    assert_eq!(
        ids(&body),
        [on_a.id().to_string()],
        "the dead node's entry is not shown"
    );
    let left: bool = redis::cmd("HEXISTS")
        .arg("herald:presence:p")
        .arg(&ghost)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!left, "and it is removed");
}

/// Admin operations that name a client or a user work from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_users_are_messaged_and_kicked_from_any_node() {
    let Some(redis) = Redis::start() else { return };
    const SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";
    let setup = |name: &'static str| {
        move |c: &mut herald_server::Config| {
            c.node_name = name.into();
            c.jwt.hmac_secret = herald_server::config::Secret(SECRET.into());
        }
    };
    let a = node_with(&redis, setup("node-a")).await;
    let b = node_with(&redis, setup("node-b")).await;
    // Both nodes must know each other as live before asking.
    for _ in 0..100 {
        let body = a
            .admin()
            .request_ok("GET", "/api/v1/nodes", None)
            .await
            .unwrap();
        if body["nodes"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut x = b.client().await;
    let api = a.admin();
    // A direct message to a client of node b, sent through node a.
    api.request_ok(
        "POST",
        &format!("/api/v1/clients/{}/send", x.id()),
        Some(&json!({"data":{"hi":1}})),
    )
    .await
    .unwrap();
    assert_eq!(
        x.next_op("direct", WAIT).await.unwrap()["data"],
        json!({"hi":1})
    );
    // A client no node has: 404.
    let nobody = herald_core::ClientId::random();
    let (status, _) = api
        .request(
            "POST",
            &format!("/api/v1/clients/{nobody}/send"),
            Some(&json!({"data":1})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    // Kicked through node a.
    api.request_ok(
        "DELETE",
        &format!("/api/v1/clients/{}?reason=bye", x.id()),
        None,
    )
    .await
    .unwrap();
    match x.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, reason } => {
            assert_eq!((code, reason.as_str()), (4200, "bye"))
        }
        other => panic!("{other:?}"),
    }
    // A user with a connection on each node: messaged and kicked everywhere from one.
    let token = herald_server::jwt::mint(
        &herald_server::jwt::Claims {
            sub: "ann".into(),
            exp: herald_server::jwt::now_secs() + 60,
            ..Default::default()
        },
        herald_server::jwt::JwtAlgorithm::HS256,
        SECRET.as_bytes(),
    )
    .unwrap();
    let mut on_a = Client::connect(&format!("{}?token={token}", a.ws_url()))
        .await
        .unwrap();
    let mut on_b = Client::connect(&format!("{}?token={token}", b.ws_url()))
        .await
        .unwrap();
    let sent = api
        .request_ok(
            "POST",
            "/api/v1/users/ann/send",
            Some(&json!({"data":"all"})),
        )
        .await
        .unwrap();
    assert_eq!(sent["connections"], 2);
    assert_eq!(on_a.next_op("direct", WAIT).await.unwrap()["data"], "all");
    assert_eq!(on_b.next_op("direct", WAIT).await.unwrap()["data"], "all");
    let kicked = b
        .admin()
        .request_ok("DELETE", "/api/v1/users/ann", None)
        .await
        .unwrap();
    assert_eq!(kicked["disconnected"], 2);
}

fn named(name: &'static str) -> impl FnOnce(&mut herald_server::Config) + Send + 'static {
    move |c: &mut herald_server::Config| {
        c.node_name = name.into();
        c.broker.timeout_ms = 1000;
        c.jwt.hmac_secret = herald_server::config::Secret(JWT_SECRET.into());
    }
}

/// A ban made on one node closes the user's connections on every node and refuses them on
/// every node, one started later too; lifted on another node, it is lifted everywhere. An API
/// channel created on one node is known, with its token, on every node; deleted on another,
/// its subscribers everywhere are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_and_api_channels_are_shared_by_every_node() {
    let Some(redis) = Redis::start() else { return };
    let a = node_with(&redis, named("node-a")).await;
    let b = node_with(&redis, named("node-b")).await;
    let token = user_token("eve");
    let mut on_b = Client::connect(&format!("{}?token={token}", b.ws_url()))
        .await
        .unwrap();
    let ban = a
        .admin()
        .request_ok(
            "POST",
            "/api/v1/bans",
            Some(&json!({"user":"eve","reason":"spam"})),
        )
        .await
        .unwrap();
    assert_eq!(ban["ban"]["id"], "user:eve", "{ban}");
    match on_b.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, .. } => assert_eq!(code, 4003),
        other => panic!("{other:?}"),
    }
    let refused = Client::connect(&format!("{}?token={token}", b.ws_url())).await;
    assert!(refused.is_err(), "banned on node b");
    let bans = b
        .admin()
        .request_ok("GET", "/api/v1/bans", None)
        .await
        .unwrap();
    assert_eq!(bans["bans"][0]["id"], "user:eve");
    // An API channel with its token, made on node a.
    let created = a
        .admin()
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"team","subscribe":"private"})),
        )
        .await
        .unwrap();
    let channel_token = created["token"].as_str().unwrap().to_string();
    // A node started later has both.
    let c = node_with(&redis, named("node-c")).await;
    assert!(
        Client::connect(&format!("{}?token={token}", c.ws_url()))
            .await
            .is_err(),
        "banned on a node started later"
    );
    for node in [&b, &c] {
        let mut x = node.client().await;
        let reply = x
            .request(json!({"op":"subscribe","channel":"team","token":channel_token}))
            .await
            .unwrap();
        assert_eq!(reply["result"]["changed"], json!(["team"]), "{reply}");
        let mut y = node.client().await;
        let refused = y
            .request(json!({"op":"subscribe","channel":"team"}))
            .await
            .unwrap();
        assert_eq!(
            refused["error"]["code"], "forbidden",
            "private without the token: {refused}"
        );
        let seen = Api::new(&node.http(), Some(&channel_token))
            .request_ok("GET", "/api/v1/channels/team", None)
            .await
            .unwrap();
        assert_eq!(seen["name"], "team", "{seen}");
    }
    // Deleted on node b: node a's subscriber is told.
    let mut on_a = a.client().await;
    on_a.request_ok(json!({"op":"subscribe","channel":"team","token":channel_token}))
        .await
        .unwrap();
    b.admin()
        .request_ok("DELETE", "/api/v1/channels/team", None)
        .await
        .unwrap();
    let notice = on_a.next_op("unsubscribed", WAIT).await.unwrap();
    assert_eq!(notice["reason"], "channel_deleted", "{notice}");
    // Lifted on node c: eve may connect to node a again.
    c.admin()
        .request_ok("DELETE", "/api/v1/bans/user:eve", None)
        .await
        .unwrap();
    let mut admitted = false;
    for _ in 0..100 {
        if Client::connect(&format!("{}?token={token}", a.ws_url()))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the ban was lifted on node a");
}

/// The operations that name one client work from any node: inspect, subscribe, unsubscribe,
/// ban (its user), over HTTP and over an admin connection; a client messages a client of
/// another node directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_node_is_inspected_subscribed_banned_and_messaged() {
    let Some(redis) = Redis::start() else { return };
    let a = node_with(&redis, |c| {
        named("node-a")(c);
        c.channels.client_direct_messages = true;
    })
    .await;
    let b = node_with(&redis, named("node-b")).await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let token = user_token("bob");
    let mut x = Client::connect(&format!("{}?token={token}", b.ws_url()))
        .await
        .unwrap();
    let id = x.id().to_string();
    let api = a.admin();
    let seen = api
        .request_ok("GET", &format!("/api/v1/clients/{id}"), None)
        .await
        .unwrap();
    assert_eq!(
        (seen["id"].as_str(), seen["user"].as_str()),
        (Some(id.as_str()), Some("bob"))
    );
    let changed = api
        .request_ok(
            "POST",
            &format!("/api/v1/clients/{id}/subscribe"),
            Some(&json!({"channels":["news"]})),
        )
        .await
        .unwrap();
    assert_eq!(changed["changed"], json!(["news"]), "{changed}");
    api.publish(&["news"], json!("hello")).await.unwrap();
    assert_eq!(x.next_op("message", WAIT).await.unwrap()["data"], "hello");
    // Over an admin connection on node a.
    let mut admin = Client::connect(&format!("{}?token={ADMIN_KEY}", a.ws_url()))
        .await
        .unwrap();
    let inspected = admin
        .request_ok(json!({"op":"client","client":id}))
        .await
        .unwrap();
    assert_eq!(
        inspected["result"]["channels"],
        json!(["news"]),
        "{inspected}"
    );
    let left = admin
        .request_ok(json!({"op":"unsubscribe","client":id,"channels":["news"]}))
        .await
        .unwrap();
    assert_eq!(left["result"]["changed"], json!(["news"]), "{left}");
    assert_eq!(
        x.next_op("unsubscribed", WAIT).await.unwrap()["reason"],
        "admin"
    );
    // A client of node a messages x directly.
    let mut sender = a.client().await;
    sender
        .request_ok(json!({"op":"send","to":id,"data":{"psst":1}}))
        .await
        .unwrap();
    let direct = x.next_op("direct", WAIT).await.unwrap();
    assert_eq!(
        (direct["from"].as_str(), &direct["data"]),
        (Some(sender.id()), &json!({"psst":1}))
    );
    let nobody = herald_core::ClientId::random();
    let missing = sender
        .request(json!({"op":"send","to":nobody.to_string(),"data":1}))
        .await
        .unwrap();
    assert_eq!(missing["error"]["code"], "client_not_found", "{missing}");
    // Banned through node a: x (on b) is closed, its user banned everywhere.
    let banned = admin
        .request_ok(json!({"op":"ban","client":id,"reason":"no"}))
        .await
        .unwrap();
    assert_eq!(banned["result"]["ban"]["id"], "user:bob", "{banned}");
    assert_eq!(banned["result"]["disconnected"], 1);
    match x.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, .. } => assert_eq!(code, 4003),
        other => panic!("{other:?}"),
    }
}

/// An admin connection hears the lifecycle events of every node, each naming its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_hear_the_events_of_every_node() {
    let Some(redis) = Redis::start() else { return };
    let a = node_with(&redis, named("node-a")).await;
    let b = node_with(&redis, named("node-b")).await;
    until_nodes(&a, 2).await;
    let mut admin = Client::connect(&format!("{}?token={ADMIN_KEY}", a.ws_url()))
        .await
        .unwrap();
    admin
        .request_ok(json!({"op":"events","types":["client.connected","client.subscribed"]}))
        .await
        .unwrap();
    // The answer came once every live node relays: the next connect on b is heard.
    let mut x = b.client().await;
    let id = x.id().to_string();
    let event = admin.next_op("event", WAIT).await.unwrap();
    assert_eq!(event["client"], id.as_str(), "{event}");
    assert_eq!(event["type"], "client.connected", "{event}");
    assert_eq!(event["node"], "node-b", "{event}");
    x.subscribe(&["watched"]).await.unwrap();
    let subscribed = admin.next_op("event", WAIT).await.unwrap();
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["client"].as_str()),
        (Some("client.subscribed"), Some(id.as_str())),
        "{subscribed}"
    );
}
