//! The SimplySocket dialect over real sockets: know-yourself and mesh-global, rooms with
//! player limits, join/leave notices, room and client targets, and error actions.

mod common;

use std::time::Duration;

use common::{RawPeer, TestServer};
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.simplysocket.enabled = true;
        c.channels.client_direct_messages = true;
    })
    .await
}

/// Connects and returns the peer with its id (from `know-yourself`).
async fn join(srv: &TestServer) -> (RawPeer, String) {
    let mut peer = RawPeer::connect_to(srv.addr(), "/simplysocket/wsmesh", "").await;
    let hello: Value = serde_json::from_str(&peer.text().await).unwrap();
    assert_eq!(hello["action"], "know-yourself");
    let id = hello["message_body"]["id"].as_str().unwrap().to_string();
    assert_eq!(hello["target"], id.as_str());
    (peer, id)
}

async fn next(peer: &mut RawPeer) -> Value {
    serde_json::from_str(&peer.text().await).unwrap()
}

async fn nothing_more(peer: &mut RawPeer) {
    let got = tokio::time::timeout(Duration::from_millis(300), peer.frame()).await;
    assert!(got.is_err(), "unexpected frame {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_notices_targets_and_errors() {
    let srv = server().await;
    let (mut a, a_id) = join(&srv).await;
    let (mut b, b_id) = join(&srv).await;
    let (mut c, _c_id) = join(&srv).await;
    let info = srv
        .admin()
        .request_ok("GET", "/api/v1/channels/mesh-global", None)
        .await
        .unwrap();
    assert_eq!(info["subscribers"], 3, "everyone is in mesh-global");

    a.send_json(json!({"action":"join-room","message_body":{"roomname":"r1","playerlimit":2},"target":"mesh-global"})).await;
    let joined = next(&mut a).await;
    assert_eq!(joined["action"], "client-joined-room");
    assert_eq!(
        joined["message_body"],
        json!({"roomname":"r1","client":a_id})
    );
    b.send_json(
        json!({"action":"join-room","message_body":{"roomname":"r1"},"target":"mesh-global"}),
    )
    .await;
    assert_eq!(next(&mut a).await["message_body"]["client"], b_id.as_str());
    assert_eq!(next(&mut b).await["message_body"]["client"], b_id.as_str());
    c.send_json(json!({"action":"join-room","message_body":{"roomname":"r1"}}))
        .await;
    let refused = next(&mut c).await;
    assert_eq!(refused["action"], "error");
    assert_eq!(refused["message_body"]["code"], "channel_full");

    // A room action reaches every member, sender included, with the sender set by the server.
    a.send_text(r#"{"action":"send-message","message_body":{"message":"hi"},"target":"r1","sender":"spoofed"}"#).await;
    let expected = format!(
        r#"{{"action":"send-message","message_body":{{"message":"hi"}},"IsTargetClient":false,"target":"r1","sender":"{a_id}"}}"#
    );
    assert_eq!(b.text().await, expected);
    assert_eq!(a.text().await, expected);
    nothing_more(&mut c).await;

    // To one client.
    a.send_json(json!({"action":"poke","message_body":null,"target":b_id,"IsTargetClient":true}))
        .await;
    let poke = next(&mut b).await;
    assert_eq!(
        (poke["action"].as_str(), poke["IsTargetClient"].as_bool()),
        (Some("poke"), Some(true))
    );
    assert_eq!(poke["sender"], a_id.as_str());
    nothing_more(&mut a).await;

    // Errors instead of the original's crash.
    for (msg, code) in [
        (r#"{"action":"x","target":"no-room"}"#, "channel_not_found"),
        (
            r#"{"action":"x","target":"00000000-0000-0000-0000-000000000000","IsTargetClient":true}"#,
            "client_not_found",
        ),
        (r#"{"action":"x"}"#, "missing_field"),
        ("{oops", "invalid_json"),
        (
            r#"{"action":"leave-room","message_body":{"roomname":"mesh-global"}}"#,
            "forbidden",
        ),
    ] {
        c.send_text(msg).await;
        let e = next(&mut c).await;
        assert_eq!(
            (e["action"].as_str(), e["message_body"]["code"].as_str()),
            (Some("error"), Some(code)),
            "{msg}"
        );
    }

    // Leaving and disconnecting are announced to the room.
    b.send_json(json!({"action":"leave-room","message_body":{"roomname":"r1"}}))
        .await;
    let left = next(&mut a).await;
    assert_eq!(
        (
            left["action"].as_str(),
            left["message_body"]["client"].as_str()
        ),
        (Some("client-left-room"), Some(b_id.as_str()))
    );
    b.send_json(json!({"action":"join-room","message_body":{"roomname":"r1"}}))
        .await;
    assert_eq!(next(&mut a).await["action"], "client-joined-room");
    drop(b);
    let gone = next(&mut a).await;
    assert_eq!(
        (
            gone["action"].as_str(),
            gone["message_body"]["client"].as_str()
        ),
        (Some("client-left-room"), Some(b_id.as_str()))
    );

    // mesh-global reaches everyone.
    c.send_json(json!({"action":"shout","message_body":{"x":1},"target":"mesh-global"}))
        .await;
    assert_eq!(next(&mut a).await["action"], "shout");
    assert_eq!(next(&mut c).await["action"], "shout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_from_elsewhere_arrive_as_push_message_actions() {
    let srv = server().await;
    let (mut a, _) = join(&srv).await;
    a.send_json(json!({"action":"join-room","message_body":{"roomname":"news"}}))
        .await;
    next(&mut a).await; // own join notice
    srv.admin()
        .publish(&["news"], json!({"headline": "x"}))
        .await
        .unwrap();
    assert_eq!(
        a.text().await,
        r#"{"action":"push-message","message_body":{"headline":"x"},"IsTargetClient":false,"target":"news","sender":"Gawd"}"#
    );
}

/// Rooms with `presence` (from `[namespaces.<ns>]` or `[channels]`) answer `room-presence`
/// with who is in them; rooms without it answer an error action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_with_presence_answer_who_is_in_them() {
    let srv = TestServer::start_with(|c| {
        c.dialects.simplysocket.enabled = true;
        c.namespaces.insert(
            "game".into(),
            herald_server::config::NamespaceConfig {
                presence: Some(true),
                ..Default::default()
            },
        );
    })
    .await;
    let (mut a, a_id) = join(&srv).await;
    let (mut b, b_id) = join(&srv).await;
    // One after the other: a hears both joins, b its own.
    a.send_json(json!({"action":"join-room","message_body":{"roomname":"game:1"}}))
        .await;
    assert_eq!(next(&mut a).await["action"], "client-joined-room");
    b.send_json(json!({"action":"join-room","message_body":{"roomname":"game:1"}}))
        .await;
    assert_eq!(next(&mut a).await["action"], "client-joined-room");
    assert_eq!(next(&mut b).await["action"], "client-joined-room");
    a.send_json(json!({"action":"room-presence","message_body":{"roomname":"game:1"}}))
        .await;
    let answer = next(&mut a).await;
    assert_eq!(answer["action"], "room-presence");
    assert_eq!(answer["IsTargetClient"], true);
    assert_eq!(answer["target"], a_id.as_str());
    let mut ids: Vec<&str> = answer["message_body"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![a_id.as_str(), b_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    // A room without presence.
    a.send_json(json!({"action":"join-room","message_body":{"roomname":"plain"}}))
        .await;
    assert_eq!(next(&mut a).await["action"], "client-joined-room");
    a.send_json(json!({"action":"room-presence","message_body":{"roomname":"plain"}}))
        .await;
    let refused = next(&mut a).await;
    assert!(
        refused.to_string().contains("presence_disabled"),
        "{refused}"
    );
}
