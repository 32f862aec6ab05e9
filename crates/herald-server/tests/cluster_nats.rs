//! Several Herald nodes joined by a real NATS server (`[broker] type = "nats"`): publications
//! on any node reach subscribers on every node in each publisher's order, presence and
//! join/leave span nodes, admin operations reach the node that has the client, bans made on
//! one node hold on every live node, recovery is honest (`recovered: false` on another node),
//! and a NATS that goes away gives `broker_unavailable`, then subscribers are told to recover.
//! The tests start `nats-server` themselves (skipped, loudly, when it is not installed outside
//! CI; `.ci/run` installs it).

mod common;

use std::time::Duration;

use common::services::{JWT_SECRET, Nats, free_port, until_nodes, user_token};
use common::{ADMIN_KEY, TestServer, WAIT};
use herald_client::{Api, Client};
use serde_json::json;

/// A node named `name` joined to `nats`, with `tweak` applied to its configuration.
async fn node_with(
    nats: &Nats,
    name: &'static str,
    tweak: impl FnOnce(&mut herald_server::Config) + Send + 'static,
) -> TestServer {
    let url = nats.url();
    TestServer::start_with(move |c| {
        c.broker.kind = "nats".into();
        c.broker.url = herald_server::config::Secret(url);
        c.broker.timeout_ms = 1000;
        c.broker.presence_ttl_secs = 3;
        c.node_name = name.into();
        c.channels.client_publish = true;
        c.jwt.hmac_secret = herald_server::config::Secret(JWT_SECRET.into());
        tweak(c);
    })
    .await
}

async fn node(nats: &Nats, name: &'static str) -> TestServer {
    node_with(nats, name, |_| {}).await
}

/// Every node gets every publication; each publisher's publications arrive in the order it
/// made them, and each node numbers what it receives in one sequence of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_on_any_node_reach_every_node_in_each_publishers_order() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "node-a").await, node(&nats, "node-b").await);
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["c"]).await.unwrap();
    on_b.subscribe(&["c"]).await.unwrap();
    let total = 60u64;
    for i in 0..total {
        let node = if i % 2 == 0 { &a } else { &b };
        node.admin().publish(&["c"], json!(i)).await.unwrap();
    }
    for (name, client) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut offsets = Vec::new();
        let (mut evens, mut odds) = (Vec::new(), Vec::new());
        for _ in 0..total {
            let m = client.next_op("message", WAIT).await.unwrap();
            offsets.push(m["offset"].as_u64().unwrap());
            let i = m["data"].as_u64().unwrap();
            if i % 2 == 0 {
                evens.push(i)
            } else {
                odds.push(i)
            }
        }
        assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "node {name}");
        let expected_evens: Vec<u64> = (0..total).filter(|i| i % 2 == 0).collect();
        let expected_odds: Vec<u64> = (0..total).filter(|i| i % 2 == 1).collect();
        assert_eq!(evens, expected_evens, "node a's order on node {name}");
        assert_eq!(odds, expected_odds, "node b's order on node {name}");
    }
    // A subscriber is answered once NATS has its node's subscription: what is published on
    // another node right after the reply arrives.
    for i in 0..20 {
        fresh_subscriber_gets_the_next_publication(&b, &a, &format!("fresh-{i}"), i).await;
    }
    // A node without subscribers of a channel does not follow it.
    assert!(
        a.server
            .state
            .hub
            .registry()
            .lookup(&herald_core::ChannelName::parse("fresh-3").unwrap())
            .is_none()
    );
}

/// NATS keeps no history: a client recovers on the node it left, and another node answers
/// `recovered: false` (not a silent gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_per_node_and_honest_elsewhere() {
    let Some(nats) = Nats::start() else { return };
    let with_history = |c: &mut herald_server::Config| c.channels.history_size = 100;
    let a = node_with(&nats, "node-a", with_history).await;
    let b = node_with(&nats, "node-b", with_history).await;
    // Node a keeps the channel while its first subscriber is away.
    let mut keeper = a.client().await;
    keeper.subscribe(&["r"]).await.unwrap();
    let mut c = a.client().await;
    c.subscribe(&["r"]).await.unwrap();
    let first = b.admin().publish(&["r"], json!(1)).await.unwrap();
    let m = c.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["data"], 1, "{first}");
    let (epoch, offset) = (
        m["epoch"].as_str().unwrap().to_string(),
        m["offset"].clone(),
    );
    drop(c);
    for i in 2..=4 {
        b.admin().publish(&["r"], json!(i)).await.unwrap();
    }
    for _ in 2..=4 {
        keeper.next_op("message", WAIT).await.unwrap();
    }
    let mut back = a.client().await;
    let reply = back
        .request_ok(json!({"op":"subscribe","channel":"r",
            "recover":{"r":{"epoch":epoch,"offset":offset}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["r"]["recovered"], true,
        "{reply}"
    );
    let got: Vec<_> = [0; 3].iter().map(|_| ()).collect();
    let mut data = Vec::new();
    for _ in got {
        data.push(back.next_op("message", WAIT).await.unwrap()["data"].clone());
    }
    assert_eq!(data, [json!(2), json!(3), json!(4)]);
    let mut elsewhere = b.client().await;
    let reply = elsewhere
        .request_ok(json!({"op":"subscribe","channel":"r",
            "recover":{"r":{"epoch":epoch,"offset":offset}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["r"]["recovered"], false,
        "{reply}"
    );
}

/// A node follows a channel's subject only while it has subscribers there; a channel it
/// keeps for its history meanwhile does not hear the other nodes' publications. A recovery
/// across such a time must not claim to be complete: it answers `recovered: false`. (Before,
/// the node answered `recovered: true` and the publications made meanwhile were silently
/// missing.) The same holds across a lost connection to NATS.
/// Node a with history, node b, and a client of node a that got publication 1 on "u" and
/// left, node a having seen it go: (a, b, the epoch and offset of 1).
async fn a_subscriber_came_and_went(
    nats: &Nats,
    linger_secs: u64,
) -> (TestServer, TestServer, serde_json::Value, serde_json::Value) {
    let with_history = move |c: &mut herald_server::Config| {
        c.channels.history_size = 100;
        c.broker.follow_linger_secs = linger_secs;
    };
    let a = node_with(nats, "node-a", with_history).await;
    let b = node_with(nats, "node-b", with_history).await;
    let mut c = a.client().await;
    c.subscribe(&["u"]).await.unwrap();
    b.admin().publish(&["u"], json!(1)).await.unwrap();
    let m = c.next_op("message", WAIT).await.unwrap();
    let (epoch, offset) = (m["epoch"].clone(), m["offset"].clone());
    drop(c);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let channel = a
            .admin()
            .request_ok("GET", "/api/v1/channels/u", None)
            .await
            .unwrap();
        if channel["subscribers"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (a, b, epoch, offset)
}

/// A new client of `node` subscribing to "u" with recovery from `epoch` and `offset`, and the
/// subscribe's reply.
async fn comes_back(
    node: &TestServer,
    epoch: &serde_json::Value,
    offset: &serde_json::Value,
) -> (Client, serde_json::Value) {
    let mut back = node.client().await;
    let reply = back
        .request_ok(json!({"op":"subscribe","channel":"u",
            "recover":{"u":{"epoch":epoch,"offset":offset}}}))
        .await
        .unwrap();
    (back, reply)
}

/// Core NATS keeps nothing, so a node keeps following a channel a while after its last
/// subscriber left (`follow_linger_secs`): a subscriber back within that time recovers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_back_soon_recovers_on_a_node_it_was_alone_on() {
    let Some(nats) = Nats::start() else { return };
    let (a, b, epoch, offset) = a_subscriber_came_and_went(&nats, 60).await;
    for i in 2..=4 {
        b.admin().publish(&["u"], json!(i)).await.unwrap();
    }
    let (mut back, reply) = comes_back(&a, &epoch, &offset).await;
    assert_eq!(
        reply["result"]["recovered"]["u"]["recovered"], true,
        "{reply}"
    );
    // Each of 2..=4 once, in order: replayed, or live if node a heard it after the reply.
    for i in 2..=4 {
        assert_eq!(back.next_op("message", WAIT).await.unwrap()["data"], i);
    }
}

/// Once the linger time is up the node stops following, and a recovery across the time it
/// did not is not claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_linger_time_the_node_stops_following() {
    let Some(nats) = Nats::start() else { return };
    let (a, b, epoch, offset) = a_subscriber_came_and_went(&nats, 1).await;
    // The rule under test is a time: wait it out (with a wide margin for a loaded machine).
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.admin().publish(&["u"], json!(2)).await.unwrap();
    let (_back, reply) = comes_back(&a, &epoch, &offset).await;
    assert_eq!(
        reply["result"]["recovered"]["u"]["recovered"], false,
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_a_time_the_node_did_not_follow_the_channel_is_not_claimed() {
    let Some(nats) = Nats::start() else { return };
    // Node a stops following "u" at once (no linger; its history stays); node b publishes
    // meanwhile, which node a cannot hear (and, whether or not it did, cannot know it heard
    // everything).
    let (a, b, epoch, offset) = a_subscriber_came_and_went(&nats, 0).await;
    for i in 2..=4 {
        b.admin().publish(&["u"], json!(i)).await.unwrap();
    }
    let (mut back, reply) = comes_back(&a, &epoch, &offset).await;
    assert_eq!(
        reply["result"]["recovered"]["u"]["recovered"], false,
        "{reply}"
    );
    // From the position it answered, recovery works again (while the node follows the
    // channel), and live publications arrive.
    let now = reply["result"]["recovered"]["u"].clone();
    b.admin().publish(&["u"], json!("live")).await.unwrap();
    // What node a still heard of 2..=4 on its way out of the channel (NATS applies its
    // unsubscription a moment later) may arrive first, in order; then the live one.
    let mut live = back.next_op("message", WAIT).await.unwrap();
    while live["data"] != "live" {
        assert!(
            [2, 3, 4].contains(&live["data"].as_i64().unwrap_or(0)),
            "{live}"
        );
        live = back.next_op("message", WAIT).await.unwrap();
    }
    let mut again = a.client().await;
    let reply = again
        .request_ok(json!({"op":"subscribe","channel":"u",
            "recover":{"u":{"epoch":now["epoch"],"offset":now["offset"]}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["u"]["recovered"], true,
        "{reply}"
    );
    assert_eq!(
        again.next_op("message", WAIT).await.unwrap()["data"],
        "live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let setup = |c: &mut herald_server::Config| {
        c.channels.presence = true;
        c.channels.join_leave = true;
    };
    let a = node_with(&nats, "node-a", setup).await;
    let b = node_with(&nats, "node-b", setup).await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let mut on_a = a.client().await;
    on_a.subscribe(&["p"]).await.unwrap();
    let mut on_b = b.client().await;
    on_b.subscribe(&["p"]).await.unwrap();
    let join = on_a.next_op("join", WAIT).await.unwrap();
    assert_eq!(join["client"], on_b.id());
    let mut expected = vec![on_a.id().to_string(), on_b.id().to_string()];
    expected.sort();
    let body = on_b
        .call(json!({"op":"presence","channel":"p"}))
        .await
        .unwrap();
    let mut listed: Vec<String> = body["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    on_b.unsubscribe(&["p"]).await.unwrap();
    let leave = on_a.next_op("leave", WAIT).await.unwrap();
    assert_eq!(leave["client"], on_b.id());
    // A node that goes away takes its subscribers with it: presence is asked of live nodes.
    let mut on_b2 = b.client().await;
    on_b2.subscribe(&["p"]).await.unwrap();
    on_a.next_op("join", WAIT).await.unwrap();
    drop(on_b2);
    drop(b);
    let stats = a
        .admin()
        .request_ok("GET", "/api/v1/channels/p/presence_stats", None)
        .await
        .unwrap();
    assert_eq!(stats["clients"], 1, "{stats}");
}

/// Kick, send, inspect, subscribe and ban a client of another node; a ban made on one node
/// holds on the other; events of every node reach an admin connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_and_events_span_nodes() {
    let Some(nats) = Nats::start() else { return };
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let mut admin = Client::connect(&format!("{}?token={ADMIN_KEY}", a.ws_url()))
        .await
        .unwrap();
    admin
        .request_ok(json!({"op":"events","types":["client.connected"]}))
        .await
        .unwrap();
    let token = user_token("bob");
    let mut x = Client::connect(&format!("{}?token={token}", b.ws_url()))
        .await
        .unwrap();
    let id = x.id().to_string();
    let mut heard = false;
    for _ in 0..5 {
        let e = admin.next_op("event", WAIT).await.unwrap();
        if e["client"] == id.as_str() {
            assert_eq!(e["node"], "node-b", "{e}");
            heard = true;
            break;
        }
    }
    assert!(heard, "node b's connect reached node a's admin connection");
    let api = a.admin();
    let seen = api
        .request_ok("GET", &format!("/api/v1/clients/{id}"), None)
        .await
        .unwrap();
    assert_eq!(seen["user"], "bob", "{seen}");
    api.request_ok(
        "POST",
        &format!("/api/v1/clients/{id}/subscribe"),
        Some(&json!({"channel":"news"})),
    )
    .await
    .unwrap();
    api.publish(&["news"], json!("hi")).await.unwrap();
    assert_eq!(x.next_op("message", WAIT).await.unwrap()["data"], "hi");
    api.request_ok(
        "POST",
        &format!("/api/v1/clients/{id}/send"),
        Some(&json!({"data":"direct"})),
    )
    .await
    .unwrap();
    assert_eq!(x.next_op("direct", WAIT).await.unwrap()["data"], "direct");
    // A ban of the user made on node a closes x on node b and refuses it there.
    let ban = api
        .request_ok("POST", "/api/v1/bans", Some(&json!({"user":"bob"})))
        .await
        .unwrap();
    assert_eq!(ban["ban"]["id"], "user:bob");
    match x.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, .. } => assert_eq!(code, 4003),
        other => panic!("{other:?}"),
    }
    assert!(
        Client::connect(&format!("{}?token={token}", b.ws_url()))
            .await
            .is_err()
    );
    // A client no node has: 404.
    let nobody = herald_core::ClientId::random();
    let (status, _) = api
        .request("DELETE", &format!("/api/v1/clients/{nobody}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    // A node started later has the ban and the API channels, from the JetStream bucket.
    let created = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"team","subscribe":"private"})),
        )
        .await
        .unwrap();
    let channel_token = created["token"].as_str().unwrap().to_string();
    let c = node(&nats, "node-c").await;
    assert!(
        Client::connect(&format!("{}?token={token}", c.ws_url()))
            .await
            .is_err(),
        "banned on a node started later"
    );
    let mut y = c.client().await;
    let reply = y
        .request(json!({"op":"subscribe","channel":"team","token":channel_token}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["changed"], json!(["team"]), "{reply}");
    // Lifted there, lifted on node b.
    c.admin()
        .request_ok("DELETE", "/api/v1/bans/user:bob", None)
        .await
        .unwrap();
    let mut admitted = false;
    for _ in 0..100 {
        if Client::connect(&format!("{}?token={token}", b.ws_url()))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the ban was lifted on node b");
}

/// NATS going away: publishing answers 503 `broker_unavailable` at once; once it is back,
/// subscribers are told to recover (a recovery across the outage answers `recovered: false`:
/// core NATS keeps nothing for the node) and publications flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_goes_away_gives_broker_unavailable_then_subscribers_recover() {
    let port = free_port();
    let Some(nats) = Nats::start_on(port, None) else {
        return;
    };
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["y"]).await.unwrap();
    a.admin().publish(&["y"], json!(0)).await.unwrap();
    let seen = on_b.next_op("message", WAIT).await.unwrap();
    drop(nats);
    let api = Api::new(&a.http(), Some(ADMIN_KEY));
    let mut refused = false;
    for _ in 0..100 {
        let (status, body) = api
            .request(
                "POST",
                "/api/v1/publish",
                Some(&json!({"channel":"y","data":1})),
            )
            .await
            .unwrap();
        if status == 503 {
            assert_eq!(body["error"]["code"], "broker_unavailable");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "publishing is refused while NATS is away");
    on_b.ping().await.unwrap();
    let _nats = Nats::start_on(port, None).unwrap();
    let notice = on_b
        .next_op("unsubscribed", Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(notice["reason"], "broker_reconnected", "{notice}");
    // Node b cannot know what it missed: a recovery across the outage is not claimed.
    let reply = on_b
        .request_ok(json!({"op":"subscribe","channel":"y",
            "recover":{"y":{"epoch":seen["epoch"],"offset":seen["offset"]}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["y"]["recovered"], false,
        "{reply}"
    );
    let mut delivered = false;
    for _ in 0..100 {
        if a.admin().publish(&["y"], json!("again")).await.is_ok() {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "publishing works again");
    assert_eq!(
        on_b.next_op("message", WAIT).await.unwrap()["data"],
        "again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_cannot_be_reached_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.broker.kind = "nats".into();
    config.broker.url =
        herald_server::config::Secret(format!("nats://user:s3cret@127.0.0.1:{}", free_port()));
    config.broker.timeout_ms = 500;
    config.validate().unwrap();
    let error = match herald_server::start(config).await {
        Ok(_) => panic!("started without NATS"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("broker.url"), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the password is not shown: {error}"
    );
}

/// A TCP proxy to `upstream` on a port of its own that hands on what its client sends
/// `delay` late (in order) and what the server answers at once: a NATS that reads one node's
/// operations late.
async fn slow_uplink(upstream: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let (held, mut due) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    let at = tokio::time::Instant::now() + delay;
                    if held.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((at, bytes)) = due.recv().await {
                    tokio::time::sleep_until(at).await;
                    if to_server.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A subscriber is answered only once NATS has its node's subscription, even when NATS reads
/// that node's operations late (300 ms here): what another node publishes right after the
/// answer arrives. A client flush only writes the subscription to the socket, so NATS could
/// take the other node's publication first (seen on a loaded machine: the message was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_answered_once_nats_has_the_subscription_even_when_it_reads_late() {
    let Some(nats) = Nats::start() else { return };
    let slow = slow_uplink(nats.port, Duration::from_millis(300)).await;
    let a = node(&nats, "node-a").await;
    let b = node_with(&nats, "node-b", move |c| {
        c.broker.url = herald_server::config::Secret(format!("nats://127.0.0.1:{slow}"));
        c.broker.timeout_ms = 3000;
    })
    .await;
    for i in 0..3 {
        fresh_subscriber_gets_the_next_publication(&b, &a, &format!("late-{i}"), i).await;
    }
}

/// A new client on `on` subscribes to `channel`; as soon as it is answered, `value` is
/// published on `from`; the client gets it.
async fn fresh_subscriber_gets_the_next_publication(
    on: &TestServer,
    from: &TestServer,
    channel: &str,
    value: u64,
) {
    let mut x = on.client().await;
    x.subscribe(&[channel]).await.unwrap();
    from.admin()
        .publish(&[channel], json!(value))
        .await
        .unwrap();
    assert_eq!(
        x.next_op("message", WAIT).await.unwrap()["data"],
        value,
        "{channel}"
    );
}
