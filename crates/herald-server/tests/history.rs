//! History, recovery and presence over real sockets: recovering what a dropped client missed
//! (also while others publish at full speed, and after a restart with durable history),
//! windows that no longer hold it, the history op and API with their permissions, presence and
//! join/leave notices, and presence cleaned up on every kind of disconnect.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, RawPeer, TestServer, WAIT, wait_for_subscribers};
use herald_client::{Api, Client};
use serde_json::{Value, json};

/// A server whose `[channels]` keep `size` publications for `ttl` seconds, with presence and
/// join/leave notices on.
async fn server(size: u32, ttl: u32) -> TestServer {
    TestServer::start_with(|c| {
        c.channels.history_size = size;
        c.channels.history_ttl_secs = ttl;
        c.channels.presence = true;
        c.channels.join_leave = true;
        c.channels.client_publish = true;
    })
    .await
}

/// The offsets of the next `n` messages of `channel`.
async fn offsets(c: &mut Client, channel: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.next_op("message", WAIT).await.unwrap();
        if m["channel"] == channel {
            out.push(m["offset"].as_u64().unwrap());
        }
    }
    out
}

fn position(reply: &Value, channel: &str) -> (String, u64) {
    let r = &reply["result"]["recovered"][channel];
    (
        r["epoch"].as_str().unwrap().to_string(),
        r["offset"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_recovers_what_it_missed_exactly_once_in_order() {
    let srv = server(100, 300).await;
    let api = srv.admin();
    let mut c = srv.client().await;
    c.subscribe(&["news"]).await.unwrap();
    let first = api.publish(&["news"], json!("m1")).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(offsets(&mut c, "news", 1).await, [1]);
    // The client drops; three publications go by; it was the channel's only subscriber.
    drop(c);
    wait_for_subscribers(&srv, "news", 0).await;
    for i in 2..=4 {
        api.publish(&["news"], json!(format!("m{i}")))
            .await
            .unwrap();
    }
    let mut c = srv.client().await;
    let reply = c
        .request_ok(json!({"op":"subscribe","channels":["news"],
            "recover":{"news":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["news"],
        json!({"recovered":true,"epoch":epoch,"offset":4})
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = c.next_op("message", WAIT).await.unwrap();
        assert_eq!(m["epoch"], epoch.as_str());
        got.push((m["offset"].as_u64().unwrap(), m["data"].clone()));
    }
    assert_eq!(got, [(2, json!("m2")), (3, json!("m3")), (4, json!("m4"))]);
    // Then live, with no duplicate.
    api.publish(&["news"], json!("m5")).await.unwrap();
    assert_eq!(offsets(&mut c, "news", 1).await, [5]);
    // Already up to date: recovered, nothing replayed.
    let mut d = srv.client().await;
    let reply = d
        .request_ok(json!({"op":"subscribe","channel":"news",
            "recover":{"news":{"epoch":epoch,"offset":5}}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"]["news"]["recovered"], true);
    api.publish(&["news"], json!("m6")).await.unwrap();
    assert_eq!(offsets(&mut d, "news", 1).await, [6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_during_a_full_speed_publisher_has_no_gap_and_no_duplicate() {
    let srv = server(10_000, 300).await;
    let mut c = srv.client().await;
    c.subscribe(&["fast"]).await.unwrap();
    let api = srv.admin();
    let first = api.publish(&["fast"], json!(0)).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(offsets(&mut c, "fast", 1).await, [1]);
    drop(c);
    // A publisher over its own WebSocket, as fast as it can, while the client comes back.
    let total: u64 = 3000;
    let mut publisher = Client::connect(&format!("{}?token={ADMIN_KEY}", srv.ws_url()))
        .await
        .unwrap();
    let publishing = tokio::spawn(async move {
        for i in 0..total {
            publisher
                .send_json(&json!({"op":"publish","channel":"fast","data":i}))
                .await
                .unwrap();
        }
        publisher.ping().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut c = srv.client().await;
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":"fast",
            "recover":{"fast":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["fast"]["recovered"], true,
        "{reply}"
    );
    publishing.await.unwrap();
    // Every offset from 2 to the last, once each, in order.
    let last = 1 + total;
    let got = offsets(&mut c, "fast", (last - 1) as usize).await;
    let expected: Vec<u64> = (2..=last).collect();
    assert_eq!(got.len(), expected.len());
    if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("offset {} arrived where {} was due", got[i], expected[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_no_longer_holds_the_gap_or_another_epoch_does_not_recover() {
    let srv = server(3, 1).await;
    let api = srv.admin();
    let mut epoch = String::new();
    for i in 1..=5 {
        let r = api.publish(&["w"], json!(i)).await.unwrap();
        epoch = r["channels"][0]["epoch"].as_str().unwrap().to_string();
    }
    // Only 3, 4, 5 are kept: offset 1 was seen, 2 is gone.
    let mut c = srv.client().await;
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":"w",
            "recover":{"w":{"epoch":epoch,"offset":1}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["w"],
        json!({"recovered":false,"epoch":epoch,"offset":5})
    );
    // 2 was seen: 3, 4, 5 are all held.
    let mut d = srv.client().await;
    let reply = d
        .request_ok(json!({"op":"subscribe","channel":"w",
            "recover":{"w":{"epoch":epoch,"offset":2}}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"]["w"]["recovered"], true);
    assert_eq!(offsets(&mut d, "w", 3).await, [3, 4, 5]);
    // Another epoch: nothing replayed.
    let mut e = srv.client().await;
    let reply = e
        .request_ok(json!({"op":"subscribe","channel":"w",
            "recover":{"w":{"epoch":"other","offset":2}}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"]["w"]["recovered"], false);
    // A position ahead of the channel: not one this epoch reached, so nothing can be said of
    // what was missed (it answered recovered and skipped the next publications).
    let mut g = srv.client().await;
    let reply = g
        .request_ok(json!({"op":"subscribe","channel":"w",
            "recover":{"w":{"epoch":epoch,"offset":1000}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["w"],
        json!({"recovered":false,"epoch":epoch,"offset":5})
    );
    // A history page since a position ahead is empty, not the oldest kept.
    let page = g
        .request_ok(json!({"op":"history","channel":"w","since":{"epoch":epoch,"offset":9}}))
        .await
        .unwrap();
    assert_eq!(page["result"]["publications"], json!([]), "{page}");
    drop(g);
    // After the time to live (1 s), the window is empty.
    drop((c, d, e));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut f = srv.client().await;
    let reply = f
        .request_ok(json!({"op":"subscribe","channel":"w",
            "recover":{"w":{"epoch":epoch,"offset":4}}}))
        .await
        .unwrap();
    let r = &reply["result"]["recovered"]["w"];
    assert_eq!(r["recovered"], false, "{reply}");
    // The channel outlived its history: a new one, with a new epoch.
    assert_ne!(r["epoch"], epoch.as_str());
    let stats = api.stats().await.unwrap();
    assert!(stats["recover_failed"].as_u64().unwrap() >= 3, "{stats}");
    // A bad recover field is refused clearly.
    let bad = f
        .request(json!({"op":"subscribe","channel":"w","recover":{"x":{"epoch":"e","offset":1}}}))
        .await
        .unwrap();
    assert_eq!(bad["error"]["code"], "bad_request");
    let bad = f
        .request(json!({"op":"subscribe","channel":"w","recover":{"w":{"offset":"1"}}}))
        .await
        .unwrap();
    assert_eq!(bad["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_history_survives_a_restart_with_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let mut config = common::config(dir.path());
        config.channels.history_size = 50;
        config.validate().unwrap();
        herald_server::start(config).await.unwrap()
    };
    let first = start().await;
    let api = Api::new(&format!("http://{}", first.local_addr), Some(ADMIN_KEY));
    let mut epoch = String::new();
    for i in 1..=10 {
        let r = api.publish(&["keep"], json!({"n": i})).await.unwrap();
        epoch = r["channels"][0]["epoch"].as_str().unwrap().to_string();
    }
    first.shutdown(Duration::from_secs(2)).await;

    let second = start().await;
    let url = format!("ws://{}/ws", second.local_addr);
    let mut c = Client::connect(&url).await.unwrap();
    let reply = c
        .request_ok(json!({"op":"subscribe","channel":"keep",
            "recover":{"keep":{"epoch":epoch,"offset":7}}}))
        .await
        .unwrap();
    assert_eq!(position(&reply, "keep"), (epoch.clone(), 10));
    assert_eq!(reply["result"]["recovered"]["keep"]["recovered"], true);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = c.next_op("message", WAIT).await.unwrap();
        got.push((
            m["offset"].as_u64().unwrap(),
            m["data"]["n"].as_u64().unwrap(),
        ));
    }
    assert_eq!(got, [(8, 8), (9, 9), (10, 10)]);
    // Numbering goes on in the same epoch.
    let api = Api::new(&format!("http://{}", second.local_addr), Some(ADMIN_KEY));
    let r = api.publish(&["keep"], json!({"n": 11})).await.unwrap();
    assert_eq!(r["channels"][0]["offset"], 11);
    assert_eq!(r["channels"][0]["epoch"], epoch.as_str());
    second.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_op_and_api_read_pages_with_permissions() {
    let srv = server(5, 300).await;
    let api = srv.admin();
    for i in 1..=8 {
        api.publish(&["h"], json!(i)).await.unwrap();
    }
    let mut c = srv.client().await;
    let page = c.call(json!({"op":"history","channel":"h"})).await.unwrap();
    let epoch = page["epoch"].as_str().unwrap().to_string();
    assert_eq!(page["offset"], 8);
    let offs = |page: &Value| -> Vec<u64> {
        page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(offs(&page), [4, 5, 6, 7, 8]);
    assert_eq!(page["publications"][0]["data"], 4);
    assert!(page["publications"][0]["time_ms"].as_u64().unwrap() > 0);
    let page = c
        .call(json!({"op":"history","channel":"h","limit":2,"reverse":true}))
        .await
        .unwrap();
    assert_eq!(offs(&page), [8, 7]);
    let page = c
        .call(json!({"op":"history","channel":"h","since":{"epoch":epoch,"offset":6}}))
        .await
        .unwrap();
    assert_eq!(offs(&page), [7, 8]);
    let bad = c
        .request(json!({"op":"history","channel":"h","limit":100000}))
        .await
        .unwrap();
    assert_eq!(bad["error"]["code"], "bad_request");
    // A channel without history answers its position.
    api.request_ok(
        "POST",
        "/api/v1/channels",
        Some(&json!({"name":"plain","history_size":0})),
    )
    .await
    .unwrap();
    api.publish(&["plain"], json!(1)).await.unwrap();
    let page = c
        .call(json!({"op":"history","channel":"plain"}))
        .await
        .unwrap();
    assert_eq!((page["offset"].as_u64(), offs(&page).len()), (Some(1), 0));
    // A private channel: refused without subscribing rights, as subscribing is.
    let created = api
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"secret","public":false,"history_size":5})),
        )
        .await
        .unwrap();
    api.publish(&["secret"], json!("s")).await.unwrap();
    let refused = c
        .request(json!({"op":"history","channel":"secret"}))
        .await
        .unwrap();
    assert_eq!(refused["error"]["code"], "forbidden");
    // Over HTTP: the channel's token or the admin key; another token is refused.
    let token = created["token"].as_str().unwrap();
    let tok = Api::new(&srv.http(), Some(token));
    let page = tok
        .request_ok("GET", "/api/v1/channels/secret/history", None)
        .await
        .unwrap();
    assert_eq!(page["publications"][0]["data"], "s");
    let (status, _) = tok
        .request("GET", "/api/v1/channels/h/history", None)
        .await
        .unwrap();
    assert_eq!(status, 403);
    let page = api
        .request_ok(
            "GET",
            &format!("/api/v1/channels/h/history?since_offset=7&epoch={epoch}&limit=10"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(offs(&page), [8]);
    let (status, body) = api
        .request("GET", "/api/v1/channels/h/history?since_offset=7", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // Someone is subscribed: the channel stays when its history is cleared.
    c.subscribe(&["h"]).await.unwrap();
    let cleared = api
        .request_ok("DELETE", "/api/v1/channels/h/history", None)
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 5);
    let page = c.call(json!({"op":"history","channel":"h"})).await.unwrap();
    assert_eq!((page["offset"].as_u64(), offs(&page).len()), (Some(8), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_notices() {
    let srv = server(0, 300).await;
    let mut a = srv.client().await;
    a.subscribe(&["room"]).await.unwrap();
    let mut b = Client::connect(&format!("{}?token={ADMIN_KEY}", srv.ws_url()))
        .await
        .unwrap();
    b.subscribe(&["room"]).await.unwrap();
    let join = a.next_op("join", WAIT).await.unwrap();
    assert_eq!(
        join,
        json!({"op":"join","channel":"room","client":b.id(),"user":null})
    );
    let list = a
        .call(json!({"op":"presence","channel":"room"}))
        .await
        .unwrap();
    let mut ids: Vec<_> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = vec![a.id().to_string(), b.id().to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    let stats = a
        .call(json!({"op":"presence_stats","channel":"room"}))
        .await
        .unwrap();
    assert_eq!(stats, json!({"clients":2,"users":0}));
    // Not a subscriber: refused.
    let mut outsider = srv.client().await;
    let refused = outsider
        .request(json!({"op":"presence","channel":"room"}))
        .await
        .unwrap();
    assert_eq!(refused["error"]["code"], "forbidden");
    // A channel without presence.
    let admin = srv.admin();
    admin
        .request_ok(
            "POST",
            "/api/v1/channels",
            Some(&json!({"name":"quiet","presence":false})),
        )
        .await
        .unwrap();
    a.subscribe(&["quiet"]).await.unwrap();
    let off = a
        .request(json!({"op":"presence","channel":"quiet"}))
        .await
        .unwrap();
    assert_eq!(off["error"]["code"], "presence_disabled");
    // Over HTTP.
    let over_http = admin
        .request_ok("GET", "/api/v1/channels/room/presence_stats", None)
        .await
        .unwrap();
    assert_eq!(over_http["clients"], 2);
    // Leave, in order after what came before it.
    b.unsubscribe(&["room"]).await.unwrap();
    let leave = a.next_op("leave", WAIT).await.unwrap();
    assert_eq!(leave["client"], b.id());
}

const JWT_SECRET: &str = "history-test-jwt-secret-0123456789abcdef";

/// Waits for the `leave` notice of client `id`.
async fn leaves(watcher: &mut Client, id: &str) {
    leaves_or_joins(watcher, "leave", id).await
}

/// Waits for the `op` (`join` or `leave`) notice of client `id`.
async fn leaves_or_joins(watcher: &mut Client, op: &str, id: &str) {
    loop {
        let ev = watcher.next_op(op, WAIT).await.unwrap();
        if ev["client"] == id {
            return;
        }
    }
}

/// Presence forgets a subscriber however its connection ends: it closes, is kicked, banned,
/// cut off as a slow consumer, or times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cleaned_up_on_every_kind_of_disconnect() {
    let srv = TestServer::start_with(|c| {
        c.channels.presence = true;
        c.channels.join_leave = true;
        c.websocket.outbox_max_bytes = 128 * 1024;
        c.websocket.ping_interval_secs = 1;
        c.websocket.ping_timeout_secs = 2;
        c.jwt.hmac_secret = herald_server::config::Secret(JWT_SECRET.into());
    })
    .await;
    let admin = srv.admin();
    let mut watcher = srv.client().await;
    watcher.subscribe(&["p"]).await.unwrap();
    let count = || async {
        admin
            .request_ok("GET", "/api/v1/channels/p/presence_stats", None)
            .await
            .unwrap()["clients"]
            .as_u64()
            .unwrap()
    };
    // Closed by the client.
    let mut c = srv.client().await;
    c.subscribe(&["p"]).await.unwrap();
    let id = c.id().to_string();
    c.close().await.unwrap();
    leaves(&mut watcher, &id).await;
    // Kicked.
    let mut c = srv.client().await;
    c.subscribe(&["p"]).await.unwrap();
    let id = c.id().to_string();
    admin
        .request_ok("DELETE", &format!("/api/v1/clients/{id}"), None)
        .await
        .unwrap();
    leaves(&mut watcher, &id).await;
    // Banned: a client with a user id, so the ban covers its user (not the address every
    // client here shares).
    let token = herald_server::jwt::mint(
        &herald_server::jwt::Claims {
            sub: "eve".into(),
            exp: herald_server::jwt::now_secs() + 60,
            ..Default::default()
        },
        herald_server::jwt::JwtAlgorithm::HS256,
        JWT_SECRET.as_bytes(),
    )
    .unwrap();
    let mut c = Client::connect(&format!("{}?token={token}", srv.ws_url()))
        .await
        .unwrap();
    c.subscribe(&["p"]).await.unwrap();
    let id = c.id().to_string();
    admin
        .request_ok(
            "POST",
            "/api/v1/bans",
            Some(&json!({"client": id, "duration_secs": 60})),
        )
        .await
        .unwrap();
    leaves(&mut watcher, &id).await;
    // Slow consumer: a raw peer that never reads, sent direct messages until it is cut off
    // (the watcher gets none of them).
    let mut slow = RawPeer::connect_with(srv.addr(), Some(4096)).await;
    let slow_id = slow.json().await["client"].as_str().unwrap().to_string();
    slow.send_json(json!({"op":"subscribe","channel":"p","id":1}))
        .await;
    assert_eq!(slow.json().await["id"], 1);
    leaves_or_joins(&mut watcher, "join", &slow_id).await;
    let payload = json!({ "data": "z".repeat(60_000) });
    for _ in 0..200 {
        let path = format!("/api/v1/clients/{slow_id}/send");
        if admin
            .request("POST", &path, Some(&payload))
            .await
            .unwrap()
            .0
            != 200
        {
            break;
        }
    }
    leaves(&mut watcher, &slow_id).await;
    assert_eq!(admin.stats().await.unwrap()["slow_consumers"], 1);
    // Timed out: a raw peer that never answers pings.
    let mut silent = RawPeer::connect(srv.addr()).await;
    let silent_id = silent.json().await["client"].as_str().unwrap().to_string();
    silent
        .send_json(json!({"op":"subscribe","channel":"p","id":1}))
        .await;
    assert_eq!(silent.json().await["id"], 1);
    // The watcher reads meanwhile, which answers the server's pings.
    leaves(&mut watcher, &silent_id).await;
    let left = admin
        .request_ok("GET", "/api/v1/channels/p/presence", None)
        .await
        .unwrap();
    assert_eq!(
        count().await,
        1,
        "only the watcher is left: {left} (watcher {})",
        watcher.id()
    );
}

/// A publication for some subscribers only (`to`) is kept, but only they get it back from
/// history: a recovery, the history op, a backtrack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_for_some_subscribers_come_back_to_them_alone() {
    let srv = server(100, 300).await;
    let mut alice = srv.client().await;
    let mut bob = srv.client().await;
    alice.subscribe(&["t"]).await.unwrap();
    bob.subscribe(&["t"]).await.unwrap();
    let api = srv.admin();
    let first = api.publish(&["t"], json!("all")).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap().to_string();
    api.request_ok(
        "POST",
        "/api/v1/publish",
        Some(&json!({"channel":"t","data":"for alice","to":[alice.id()]})),
    )
    .await
    .unwrap();
    api.publish(&["t"], json!("all again")).await.unwrap();
    let (alice_id, bob_id) = (alice.id().to_string(), bob.id().to_string());
    // Both come back (new connections) and recover from offset 0... as new clients, whose
    // ids differ: the targeted publication goes to neither of them.
    drop((alice, bob));
    let mut again = srv.client().await;
    let reply = again
        .request_ok(json!({"op":"subscribe","channel":"t",
            "recover":{"t":{"epoch":epoch,"offset":0}}}))
        .await
        .unwrap();
    assert_eq!(
        reply["result"]["recovered"]["t"]["recovered"], true,
        "{reply}"
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(again.next_op("message", WAIT).await.unwrap()["data"].clone());
    }
    assert_eq!(got, [json!("all"), json!("all again")]);
    // The history op: a client sees what it would have received; the admin key sees all.
    let page = again
        .call(json!({"op":"history","channel":"t"}))
        .await
        .unwrap();
    assert_eq!(page["publications"].as_array().unwrap().len(), 2, "{page}");
    let all = api
        .request_ok("GET", "/api/v1/channels/t/history", None)
        .await
        .unwrap();
    assert_eq!(all["publications"].as_array().unwrap().len(), 3);
    assert_ne!(alice_id, bob_id);
}
