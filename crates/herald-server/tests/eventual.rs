//! The Eventual Agent dialect over real sockets: CloudEvents in and out, the `global`
//! firehose, exactly one delivery per subscriber, bad input, any path, its own listener.

mod common;

use std::time::Duration;

use common::{RawPeer, TestServer, WAIT, wait_for_subscribers};
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.eventual.enabled = true;
        c.dialects.eventual.listen = "127.0.0.1:0".into();
        // Eventual clients publish to channels created on first use.
        c.channels.client_publish = true;
        c.websocket.max_message_bytes = 4096;
    })
    .await
}

fn event(id: &str) -> Value {
    json!({"specversion":"1.0","id":id,"source":"/sensors/7","type":"com.example.temp","data":{"celsius":21.5}})
}

/// The next frame must be exactly one JSON value followed by "\n".
async fn next_event(peer: &mut RawPeer) -> Value {
    let text = peer.text().await;
    assert!(text.ends_with('\n'), "{text:?}");
    serde_json::from_str(text.trim_end()).unwrap()
}

/// No frame within a short wait (used to prove "exactly once").
async fn nothing_more(peer: &mut RawPeer) {
    let got = tokio::time::timeout(Duration::from_millis(300), peer.frame()).await;
    assert!(got.is_err(), "unexpected frame {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_flow_with_global_and_exactly_one_delivery() {
    let srv = server().await;
    let mut publisher = RawPeer::connect_to(srv.addr(), "/eventual", "").await;
    let mut both = RawPeer::connect_to(srv.addr(), "/eventual/any/path", "").await;
    let mut firehose = RawPeer::connect_to(srv.addr(), "/eventual/x", "").await;
    // A bare string is accepted as well as an array.
    both.send_json(json!({"type":"subscribe","channels":["temps","alerts"]}))
        .await;
    firehose
        .send_json(json!({"type":"subscribe","channels":"global"}))
        .await;
    wait_for_subscribers(&srv, "temps", 1).await;
    wait_for_subscribers(&srv, "global", 1).await;

    publisher
        .send_json(json!({"type":"publish","channels":["temps","alerts"],"event":event("e1")}))
        .await;
    assert_eq!(next_event(&mut both).await, event("e1"));
    assert_eq!(next_event(&mut firehose).await, event("e1"));
    nothing_more(&mut both).await;
    nothing_more(&mut firehose).await;

    // The firehose also gets channels nobody else listens to.
    publisher
        .send_json(json!({"type":"publish","channels":"lonely","event":event("e2")}))
        .await;
    assert_eq!(next_event(&mut firehose).await, event("e2"));

    both.send_json(json!({"type":"unsubscribe","channels":["temps"]}))
        .await;
    wait_for_subscribers(&srv, "alerts", 1).await;
    for _ in 0..50 {
        if srv
            .admin()
            .request("GET", "/api/v1/channels/temps", None)
            .await
            .unwrap()
            .0
            == 404
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher
        .send_json(json!({"type":"publish","channels":["temps"],"event":event("e3")}))
        .await;
    assert_eq!(next_event(&mut firehose).await, event("e3"));
    nothing_more(&mut both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_frames_and_the_connection_keeps_working() {
    let srv = server().await;
    let mut c = RawPeer::connect_to(srv.addr(), "/eventual", "").await;
    c.send_text(r#"{"type":"dance","channels":["a"]}"#).await;
    assert_eq!(
        c.text().await,
        "\"Invalid Request\"\n",
        "the original's answer"
    );
    let cases = [
        ("{not json".to_string(), "invalid_json"),
        (r#"{"channels":["a"]}"#.to_string(), "missing_field"),
        (r#"{"type":"subscribe","channels":["bad name"]}"#.to_string(), "invalid_channel"),
        (json!({"type":"publish","channels":["a"],"event":{"id":"1","source":"s","type":"t"}}).to_string(), "missing_field"),
        (json!({"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","time":3}}).to_string(), "bad_request"),
        (json!({"type":"publish","channels":["a"],"event":"not an object"}).to_string(), "bad_request"),
        (format!(r#"{{"type":"subscribe","channels":["{}"]}}"#, "x".repeat(5000)), "message_too_large"),
    ];
    for (text, code) in cases {
        c.send_text(&text).await;
        let frame = next_event(&mut c).await;
        assert_eq!(frame["type"], "error", "{text}");
        assert_eq!(frame["code"], code, "{text}: {frame}");
    }
    c.send_json(json!({"type":"subscribe","channels":["ok"]}))
        .await;
    wait_for_subscribers(&srv, "ok", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocols_see_the_event_and_eventual_sees_theirs_as_cloudevents() {
    let srv = server().await;
    let mut native = srv.client().await;
    native.subscribe(&["mixed"]).await.unwrap();
    let own = srv
        .server
        .dialect_addrs
        .iter()
        .find(|(d, _)| *d == "eventual")
        .unwrap()
        .1;
    let mut ev = RawPeer::connect_to(own, "/whatever/path", "").await;
    ev.send_json(json!({"type":"subscribe","channels":["mixed"]}))
        .await;
    wait_for_subscribers(&srv, "mixed", 2).await;

    ev.send_json(json!({"type":"publish","channels":["mixed"],"event":event("x1")}))
        .await;
    assert_eq!(
        next_event(&mut ev).await,
        event("x1"),
        "the publisher gets its own event"
    );
    let m = native.next_op("message", WAIT).await.unwrap();
    assert_eq!(m["data"], event("x1"));

    let r = srv
        .admin()
        .publish(&["mixed"], json!({"n": 2}))
        .await
        .unwrap();
    let wrapped = next_event(&mut ev).await;
    let epoch = r["channels"][0]["epoch"].as_str().unwrap();
    assert_eq!(
        wrapped,
        json!({"specversion":"1.0","id":format!("mixed:{epoch}:2"),"source":"herald","type":"herald.message","subject":"mixed","datacontenttype":"application/json","data":{"n":2}})
    );
}
