//! Herald nodes joined through Redis Sentinel and through a Redis Cluster (sharded Pub/Sub),
//! against real servers the tests start themselves on free ports: a master, a replica and a
//! sentinel (`redis-server --sentinel`); three cluster masters joined with
//! `redis-cli --cluster create`. Skipped, loudly, when redis-server is not installed outside
//! CI (`.ci/run` installs it).

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::services::{
    JWT_SECRET, Service as Proc, free_port, spawn, until_nodes, user_token, wait_for_port,
};
use common::{TestServer, WAIT};
use herald_client::{Api, Client};
use herald_server::config::Secret;
use serde_json::json;

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts `redis-server` with `args`; `None` (after saying so) when it is missing outside CI.
fn redis_server(args: &[&str], port: u16) -> Option<Proc> {
    let mut command = Command::new("redis-server");
    command.args(args);
    let process = Proc(spawn(command, "redis-server")?);
    wait_for_port(port, "redis-server");
    Some(process)
}

/// `redis-cli -p <port> <args>`'s output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (at most `within`) until `ok` holds.
fn until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn plain(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A master, its replica and one sentinel watching them as `mymaster`.
struct Sentinel {
    master: Option<Proc>,
    _replica: Proc,
    _sentinel: Proc,
    master_port: u16,
    replica_port: u16,
    sentinel_port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start() -> Option<Sentinel> {
        let dir = tempfile::tempdir().unwrap();
        let (master_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
        // Replication writes RDB files: in the temporary directory, not the working one.
        let in_dir = |port: u16, name: &str| {
            let dir = dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut args = plain(port);
            args.extend(["--dir".into(), dir.display().to_string()]);
            args
        };
        let master = redis_server(&strs(&in_dir(master_port, "master")), master_port)?;
        let mut replica_args = in_dir(replica_port, "replica");
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        let replica = redis_server(&strs(&replica_args), replica_port)?;
        until(Duration::from_secs(10), "the replica to sync", || {
            cli(replica_port, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 3000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let sentinel = redis_server(&[conf.to_str().unwrap(), "--sentinel"], sentinel_port)?;
        // The sentinel learns the replica from the master's INFO.
        until(
            Duration::from_secs(15),
            "the sentinel to see the replica",
            || {
                cli(sentinel_port, &["SENTINEL", "REPLICAS", "mymaster"])
                    .contains(&replica_port.to_string())
            },
        );
        Some(Sentinel {
            master: Some(master),
            _replica: replica,
            _sentinel: sentinel,
            master_port,
            replica_port,
            sentinel_port,
            _dir: dir,
        })
    }

    /// The master's port as the sentinel names it.
    fn named_master(&self) -> Option<u16> {
        let out = cli(
            self.sentinel_port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

async fn sentinel_node(sentinel: &Sentinel, name: &'static str) -> TestServer {
    let url = format!("redis://127.0.0.1:{}/", sentinel.sentinel_port);
    TestServer::start_with(move |c| {
        c.node_name = name.into();
        c.broker.kind = "redis".into();
        c.broker.sentinel_master = "mymaster".into();
        c.broker.sentinel_nodes = vec![Secret(url)];
        c.broker.timeout_ms = 1000;
        c.channels.client_publish = true;
        c.channels.history_size = 100;
    })
    .await
}

/// Two nodes through one sentinel: delivery across nodes; the master is killed, the sentinel
/// promotes the replica, and the nodes follow: publishing works again on the new master,
/// subscribers are told `broker_reconnected`, resubscribe with recovery (the history was
/// replicated) and get publications from either node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_master_through_a_sentinel_failover() {
    let Some(mut sentinel) = Sentinel::start() else {
        return;
    };
    let a = sentinel_node(&sentinel, "node-a").await;
    let b = sentinel_node(&sentinel, "node-b").await;
    until_nodes(&a, 2).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["s"]).await.unwrap();
    on_b.subscribe(&["s"]).await.unwrap();
    let first = a.admin().publish(&["s"], json!(1)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    b.admin().publish(&["s"], json!(2)).await.unwrap();
    for c in [&mut on_a, &mut on_b] {
        for offset in [1, 2] {
            assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], offset);
        }
    }
    // What the master acknowledged reached the replica before the master dies.
    assert!(
        cli(sentinel.master_port, &["WAIT", "1", "2000"]).trim() == "1",
        "the replica has every write"
    );
    assert_eq!(sentinel.named_master(), Some(sentinel.master_port));

    drop(sentinel.master.take()); // killed
    let killed = Instant::now();
    // Publishing fails (503) until the sentinel promoted the replica, then works through it.
    let mut published = None;
    while published.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "publishing never worked again"
        );
        match a
            .admin()
            .request(
                "POST",
                "/api/v1/publish",
                Some(&json!({"channel":"s","data":3})),
            )
            .await
        {
            Ok((200, body)) => published = Some(body),
            Ok((503, body)) => {
                assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let failover = killed.elapsed();
    assert_eq!(sentinel.named_master(), Some(sentinel.replica_port));
    let published = published.unwrap();
    assert_eq!(published["channels"][0]["epoch"], epoch.as_str());
    assert_eq!(published["channels"][0]["offset"], 3);
    eprintln!("publishing worked again {failover:?} after the master was killed");
    // Every subscriber is told, on both nodes, and recovers what it missed.
    for (name, c) in [("a", &mut on_a), ("b", &mut on_b)] {
        let notice = c
            .next_op("unsubscribed", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(
            notice,
            json!({"op":"unsubscribed","channel":"s","reason":"broker_reconnected"}),
            "node {name}"
        );
        let reply = c
            .request_ok(json!({"op":"subscribe","channel":"s",
                "recover":{"s":{"epoch":epoch,"offset":2}}}))
            .await
            .unwrap();
        assert_eq!(
            reply["result"]["recovered"]["s"]["recovered"], true,
            "node {name}: {reply}"
        );
        assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], 3);
    }
    // Live across nodes again, both ways, in one order.
    b.admin().publish(&["s"], json!(4)).await.unwrap();
    a.admin().publish(&["s"], json!(5)).await.unwrap();
    for c in [&mut on_a, &mut on_b] {
        for offset in [4, 5] {
            assert_eq!(c.next_op("message", WAIT).await.unwrap()["offset"], offset);
        }
    }
    // Shared state goes to the new master too.
    a.admin()
        .request_ok(
            "POST",
            "/api/v1/bans",
            Some(&json!({"user":"mallory","reason":"spam"})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let bans = b
            .admin()
            .request_ok("GET", "/api/v1/bans", None)
            .await
            .unwrap();
        if bans["bans"][0]["id"] == "user:mallory" {
            break;
        }
        assert!(Instant::now() < deadline, "the ban never reached node b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failover asked of the sentinel (`SENTINEL FAILOVER`): the old master is demoted to a
/// replica (it refuses writes with READONLY and the sentinel closes its clients); the nodes
/// move to the new master and their subscribers recover there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_sentinel_failover_is_followed() {
    let Some(sentinel) = Sentinel::start() else {
        return;
    };
    let a = sentinel_node(&sentinel, "node-a").await;
    let b = sentinel_node(&sentinel, "node-b").await;
    until_nodes(&a, 2).await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["m"]).await.unwrap();
    let first = a.admin().publish(&["m"], json!(1)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(on_b.next_op("message", WAIT).await.unwrap()["offset"], 1);
    assert_eq!(
        cli(sentinel.master_port, &["WAIT", "1", "2000"]).trim(),
        "1"
    );
    // Refused (NOGOODSLAVE) until the sentinel has heard from the replica itself.
    until(
        Duration::from_secs(15),
        "the sentinel to start a failover",
        || {
            cli(
                sentinel.sentinel_port,
                &["SENTINEL", "FAILOVER", "mymaster"],
            )
            .trim()
                == "OK"
        },
    );
    until(
        Duration::from_secs(30),
        "the old master to be a replica",
        || {
            sentinel.named_master() == Some(sentinel.replica_port)
                && cli(sentinel.master_port, &["ROLE"]).starts_with("slave")
        },
    );
    // The first publication may find a's connection closed (503); then it goes through.
    let deadline = Instant::now() + Duration::from_secs(10);
    let published = loop {
        match a
            .admin()
            .request(
                "POST",
                "/api/v1/publish",
                Some(&json!({"channel":"m","data":2})),
            )
            .await
            .unwrap()
        {
            (200, body) => break body,
            (status, body) => {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (503, &json!("broker_unavailable"))
                );
                assert!(Instant::now() < deadline, "publishing never worked again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(published["channels"][0]["offset"], 2, "{published}");
    let notice = on_b
        .next_op("unsubscribed", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(notice["reason"], "broker_reconnected");
    let reply = on_b
        .request_ok(json!({"op":"subscribe","channel":"m",
            "recover":{"m":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["m"]["recovered"], true,
        "{reply}"
    );
    assert_eq!(on_b.next_op("message", WAIT).await.unwrap()["offset"], 2);
    a.admin().publish(&["m"], json!(3)).await.unwrap();
    assert_eq!(on_b.next_op("message", WAIT).await.unwrap()["offset"], 3);
}

/// A node asked for a master the sentinels do not know fails its start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sentinel_master_fails_the_start_naming_the_key() {
    let port = free_port();
    let Some(_sentinel_less) = redis_server(&strs(&plain(port)), port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.broker.kind = "redis".into();
    config.broker.sentinel_master = "nobody".into();
    // Not a sentinel at all: SENTINEL is an unknown command there.
    config.broker.sentinel_nodes = vec![Secret(format!("redis://:s3cret@127.0.0.1:{port}/"))];
    config.broker.timeout_ms = 500;
    config.validate().unwrap();
    let error = match herald_server::start(config).await {
        Ok(_) => panic!("started without a master"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("broker.sentinel_nodes"), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the password is not shown: {error}"
    );
}

/// Three cluster masters (no replicas) in one Redis Cluster.
struct RedisCluster {
    _nodes: Vec<Proc>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    fn start() -> Option<RedisCluster> {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let mut args = plain(port);
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--dir".into(),
                dir.path().display().to_string(),
            ]);
            nodes.push(redis_server(&strs(&args), port)?);
            ports.push(port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        for &port in &ports {
            until(Duration::from_secs(20), "the cluster to be ok", || {
                cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        Some(RedisCluster {
            _nodes: nodes,
            ports,
            _dir: dir,
        })
    }

    /// How many of Herald's channel positions each shard holds.
    fn positions_per_shard(&self) -> Vec<usize> {
        self.ports
            .iter()
            .map(|&p| {
                cli(p, &["--scan", "--pattern", "herald:{*}:ch"])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .collect()
    }
}

async fn cluster_node_with(
    cluster: &RedisCluster,
    name: &'static str,
    tweak: impl FnOnce(&mut herald_server::Config) + Send + 'static,
) -> TestServer {
    // Only one seed for node b: the rest of the cluster is discovered.
    let seeds: Vec<Secret> = if name == "node-b" {
        vec![Secret(format!("redis://127.0.0.1:{}/", cluster.ports[1]))]
    } else {
        cluster
            .ports
            .iter()
            .map(|p| Secret(format!("redis://127.0.0.1:{p}/")))
            .collect()
    };
    TestServer::start_with(move |c| {
        c.node_name = name.into();
        c.broker.kind = "redis".into();
        c.broker.cluster_nodes = seeds;
        c.broker.timeout_ms = 2000;
        c.broker.presence_ttl_secs = 3;
        c.channels.client_publish = true;
        c.channels.history_size = 100;
        c.channels.presence = true;
        c.channels.join_leave = true;
        c.jwt.hmac_secret = Secret(JWT_SECRET.into());
        tweak(c);
    })
    .await
}

async fn cluster_node(cluster: &RedisCluster, name: &'static str) -> TestServer {
    cluster_node_with(cluster, name, |_| {}).await
}

/// Publications on many channels (spread over the shards) reach subscribers on the other node
/// in each channel's offset order; a client recovers on another node from the history kept in
/// the cluster; presence and join/leave cross nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_channels_history_and_presence_across_nodes() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let a = cluster_node(&cluster, "node-a").await;
    let b = cluster_node(&cluster, "node-b").await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let channels: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut on_b = b.client().await;
    on_b.subscribe(&names).await.unwrap();
    let mut on_a = a.client().await;
    on_a.subscribe(&names).await.unwrap();
    // Five publications per channel, from both nodes, interleaved over the channels.
    let rounds = 5u64;
    for round in 0..rounds {
        for (i, channel) in names.iter().enumerate() {
            let node = if (i as u64 + round).is_multiple_of(2) {
                &a
            } else {
                &b
            };
            node.admin()
                .publish(&[channel], json!({"round": round}))
                .await
                .unwrap();
        }
    }
    let shards = cluster.positions_per_shard();
    assert!(
        shards.iter().filter(|&&n| n > 0).count() >= 2,
        "channels spread over the shards: {shards:?}"
    );
    assert_eq!(shards.iter().sum::<usize>(), names.len(), "{shards:?}");
    for (node, client) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
        for _ in 0..rounds as usize * names.len() {
            let m = client.next_op("message", WAIT).await.unwrap();
            let offset = m["offset"].as_u64().unwrap();
            assert_eq!(m["data"]["round"].as_u64().unwrap() + 1, offset, "{m}");
            seen.entry(m["channel"].as_str().unwrap().to_string())
                .or_default()
                .push(offset);
        }
        assert_eq!(seen.len(), names.len(), "node {node}");
        for (channel, offsets) in seen {
            assert_eq!(
                offsets,
                (1..=rounds).collect::<Vec<_>>(),
                "node {node}: {channel}"
            );
        }
    }

    // Recovery on the other node, from the history in the cluster.
    let r = "room-7";
    let first = a.admin().publish(&[r], json!("x")).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    let from = first["channels"][0]["offset"].as_u64().unwrap();
    drop(on_a);
    let mut c = a.client().await;
    c.subscribe(&[r]).await.unwrap();
    drop(c);
    for i in 1..=4 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.admin().publish(&[r], json!(i)).await.unwrap();
    }
    let mut c = b.client().await;
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":r,
            "recover":{r:{"epoch":epoch,"offset":from}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"][r],
        json!({"recovered":true,"epoch":epoch,"offset":from + 4}),
        "{reply}"
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = c.next_op("message", WAIT).await.unwrap();
        got.push((m["offset"].as_u64().unwrap(), m["data"].as_u64().unwrap()));
    }
    assert_eq!(
        got,
        (1..=4).map(|i| (from + i, i)).collect::<Vec<_>>(),
        "replayed in order"
    );

    // Presence and join/leave across nodes.
    let mut p_a = a.client().await;
    p_a.subscribe(&["lobby"]).await.unwrap();
    let mut p_b = b.client().await;
    p_b.subscribe(&["lobby"]).await.unwrap();
    let join = p_a.next_op("join", WAIT).await.unwrap();
    assert_eq!(join["client"], p_b.id());
    let mut expected = vec![p_a.id().to_string(), p_b.id().to_string()];
    expected.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let body = p_b
            .call(json!({"op":"presence","channel":"lobby"}))
            .await
            .unwrap();
        let mut listed: Vec<String> = body["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client"].as_str().unwrap().to_string())
            .collect();
        listed.sort();
        if listed == expected {
            break;
        }
        assert!(Instant::now() < deadline, "presence lists {listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p_b.unsubscribe(&["lobby"]).await.unwrap();
    let leave = p_a.next_op("leave", WAIT).await.unwrap();
    assert_eq!(leave["client"], p_b.id());
}

/// Admin operations on another node's clients, and shared bans and API channels, with the
/// nodes joined by a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shares_admin_operations_bans_and_channels() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let a = cluster_node(&cluster, "node-a").await;
    let b = cluster_node(&cluster, "node-b").await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let api = a.admin();
    // A direct message to, and a kick of, a client of node b, through node a.
    let mut x = b.client().await;
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
    // A ban made on node a closes the user's connection on node b and refuses it there.
    let token = user_token("eve");
    let mut eve = Client::connect(&format!("{}?token={token}", b.ws_url()))
        .await
        .unwrap();
    let ban = api
        .request_ok(
            "POST",
            "/api/v1/bans",
            Some(&json!({"user":"eve","reason":"spam"})),
        )
        .await
        .unwrap();
    assert_eq!(ban["ban"]["id"], "user:eve", "{ban}");
    match eve.next_event(WAIT).await.unwrap() {
        herald_client::Event::Closed { code, .. } => assert_eq!(code, 4003),
        other => panic!("{other:?}"),
    }
    assert!(
        Client::connect(&format!("{}?token={token}", b.ws_url()))
            .await
            .is_err(),
        "banned on node b"
    );
    // An API channel with its token, made on node a, known to a node started later.
    let created = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"team","subscribe":"private"})),
        )
        .await
        .unwrap();
    let channel_token = created["token"].as_str().unwrap().to_string();
    let c = cluster_node(&cluster, "node-c").await;
    assert!(
        Client::connect(&format!("{}?token={token}", c.ws_url()))
            .await
            .is_err(),
        "banned on a node started later"
    );
    let seen = Api::new(&c.http(), Some(&channel_token))
        .request_ok("GET", "/api/v1/channels/team", None)
        .await
        .unwrap();
    assert_eq!(seen["name"], "team", "{seen}");
    // Lifted on node b: eve may connect to node a again.
    b.admin()
        .request_ok("DELETE", "/api/v1/bans/user:eve", None)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while Client::connect(&format!("{}?token={token}", a.ws_url()))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the ban was never lifted on node a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A user with a connection on each node, messaged from one.
    let ann = user_token("ann");
    let mut ann_a = Client::connect(&format!("{}?token={ann}", a.ws_url()))
        .await
        .unwrap();
    let mut ann_c = Client::connect(&format!("{}?token={ann}", c.ws_url()))
        .await
        .unwrap();
    until_nodes(&b, 3).await;
    let sent = b
        .admin()
        .request_ok(
            "POST",
            "/api/v1/users/ann/send",
            Some(&json!({"data":"all"})),
        )
        .await
        .unwrap();
    assert_eq!(sent["connections"], 2);
    assert_eq!(ann_a.next_op("direct", WAIT).await.unwrap()["data"], "all");
    assert_eq!(ann_c.next_op("direct", WAIT).await.unwrap()["data"], "all");
    // The whole cluster goes away: publishing answers 503 within the timeout (2 s).
    drop(cluster);
    let started = Instant::now();
    let (status, body) = api
        .request(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel":"gone","data":1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the timeout: {:?}",
        started.elapsed()
    );
    ann_a.ping().await.unwrap();
}
