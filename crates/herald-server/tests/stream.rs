//! The native protocol over plain HTTP (`GET /sse`, `GET /stream`), over real sockets: the
//! same deliveries as the WebSocket, exact recovery through `Last-Event-ID` (SSE) and
//! `?recover=` (streaming) across a dropped connection, clear refusals for bad input, the end
//! of a kicked connection, and a reader that stops reading cut off.

mod common;

use std::time::Duration;

use common::raw_http::{events, get, read_until};
use common::{ADMIN_KEY, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn count_messages(text: &str) -> usize {
    text.matches(r#""op":"message""#).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_and_recovers_exactly_through_last_event_id() {
    let srv = TestServer::start_with(|c| c.channels.history_size = 100).await;
    let origin = "Origin: https://app.example\r\n";
    let mut s = get(&srv, "/sse?channels=news,chat:a", origin).await;
    let head = read_until(&mut s, |t| t.contains(r#""op":"subscribed""#)).await;
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "a page of another origin may read it: {head}"
    );
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    srv.admin().publish(&["news"], json!(1)).await.unwrap();
    srv.admin().publish(&["chat:a"], json!("a1")).await.unwrap();
    let text = head + &read_until(&mut s, |t| count_messages(t) == 2).await;
    let evs = events(&text);
    assert_eq!(evs[0].1["op"], "welcome");
    assert_eq!(evs[1].1["op"], "subscribed");
    let (last_id, last) = evs.last().unwrap().clone();
    assert_eq!(last["data"], "a1");
    let last_id = last_id.expect("messages carry an id");
    assert!(
        last_id.contains(",news") && last_id.contains(",chat:a"),
        "{last_id}"
    );
    drop(s);
    // Missed while away, in both channels.
    srv.admin().publish(&["news"], json!(2)).await.unwrap();
    srv.admin().publish(&["chat:a"], json!("a2")).await.unwrap();
    srv.admin().publish(&["news"], json!(3)).await.unwrap();
    let mut s = get(
        &srv,
        "/sse?channels=news,chat:a",
        &format!("Last-Event-ID: {last_id}\r\n"),
    )
    .await;
    let text = read_until(&mut s, |t| count_messages(t) == 3).await;
    let evs = events(&text);
    // The replayed messages come first, then the subscription's result.
    let subscribed = &evs.iter().find(|(_, v)| v["op"] == "subscribed").unwrap().1;
    assert_eq!(
        subscribed["recovered"]["news"]["recovered"], true,
        "{subscribed}"
    );
    assert_eq!(
        subscribed["recovered"]["chat:a"]["recovered"], true,
        "{subscribed}"
    );
    let data: Vec<Value> = evs
        .iter()
        .filter(|(_, v)| v["op"] == "message")
        .map(|(_, v)| v["data"].clone())
        .collect();
    let mut sorted = data.clone();
    sorted.sort_by_key(|v| v.to_string());
    assert_eq!(
        sorted,
        [json!("a2"), json!(2), json!(3)],
        "exactly what was missed"
    );
    // Live from there.
    srv.admin().publish(&["news"], json!(4)).await.unwrap();
    let text = read_until(&mut s, |t| count_messages(t) == 1).await;
    assert!(text.contains(r#""data":4"#));
}

/// `data` is passed on as it was published, and JSON may hold line breaks between tokens:
/// each delivery is still one SSE event and one NDJSON line (found by fuzzing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_with_line_breaks_arrives_whole() {
    let srv = TestServer::start().await;
    let mut sse = get(&srv, "/sse?channels=news", "").await;
    let mut lines = get(&srv, "/stream?channels=news", "").await;
    read_until(&mut sse, |t| t.contains(r#""op":"subscribed""#)).await;
    read_until(&mut lines, |t| t.contains(r#""op":"subscribed""#)).await;
    let body = "{\"channel\":\"news\",\"data\":{\"a\":[1,\n2],\r\n\"b\":\"x\"}}";
    let (status, _, answer) = srv
        .admin()
        .request_raw("POST", "/api/v1/publish", &[], body.into())
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer:?}");
    let text = read_until(&mut sse, |t| t.contains("\"b\":\"x\"}}\n\n")).await;
    let message = events(&text)
        .into_iter()
        .find(|(_, v)| v["op"] == "message")
        .unwrap_or_else(|| panic!("no whole message event in {text:?}"));
    assert_eq!(message.1["data"], json!({"a": [1, 2], "b": "x"}));
    let text = read_until(&mut lines, |t| t.contains("\"b\":\"x\"}}\n")).await;
    let line = text
        .lines()
        .find(|l| l.contains(r#""op":"message""#))
        .unwrap();
    let message: Value = serde_json::from_str(line).unwrap();
    assert_eq!(message["data"], json!({"a": [1, 2], "b": "x"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_streaming_delivers_and_recovers_with_a_position() {
    let srv = TestServer::start_with(|c| c.channels.history_size = 100).await;
    let mut s = get(&srv, "/stream?channels=feed", "").await;
    let head = read_until(&mut s, |t| t.contains(r#""op":"subscribed""#)).await;
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    let first = srv.admin().publish(&["feed"], json!("one")).await.unwrap();
    let text = head + &read_until(&mut s, |t| count_messages(t) == 1).await;
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[2]["data"], "one");
    drop(s);
    srv.admin().publish(&["feed"], json!("two")).await.unwrap();
    let epoch = first["channels"][0]["epoch"].as_str().unwrap();
    let mut s = get(
        &srv,
        &format!("/stream?channels=feed&recover=1,{epoch},feed"),
        "",
    )
    .await;
    let text = read_until(&mut s, |t| count_messages(t) == 1).await;
    assert!(text.contains(r#""recovered":true"#), "{text}");
    assert!(text.contains(r#""data":"two""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_refusals() {
    let srv = TestServer::start_with(|c| c.channels.public = false).await;
    for (path, headers, status, code) in [
        ("/sse", "", "400", "bad_request"),
        ("/sse?channels=bad%20name", "", "400", "invalid_channel"),
        ("/stream?channels=a&recover=x,y", "", "400", "bad_request"),
        // An epoch that would forge lines of the SSE stream (found by fuzzing).
        (
            "/sse?channels=a&recover=1,e%0Adata:x,a",
            "",
            "400",
            "bad_request",
        ),
        (
            "/sse?channels=a",
            "Last-Event-ID: 1,e\r\n",
            "400",
            "bad_request",
        ),
        ("/sse?channels=private", "", "403", "forbidden"),
        ("/sse?channels=a&token=nonsense", "", "401", "unauthorized"),
    ] {
        let mut s = get(&srv, path, headers).await;
        let text = read_until(&mut s, |_| false).await;
        assert!(
            text.starts_with(&format!("HTTP/1.0 {status}")),
            "{path}: {text}"
        );
        assert!(text.contains(code), "{path}: {text}");
    }
    // The admin key opens a private channel.
    let mut s = get(
        &srv,
        &format!("/sse?channels=private&token={ADMIN_KEY}"),
        "",
    )
    .await;
    let text = read_until(&mut s, |t| t.contains(r#""op":"subscribed""#)).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_stream_ends_with_a_close_line() {
    let srv = TestServer::start().await;
    let mut s = get(&srv, "/stream?channels=k", "").await;
    let text = read_until(&mut s, |t| t.contains(r#""op":"welcome""#)).await;
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let welcome: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    let id = welcome["client"].as_str().unwrap();
    srv.admin()
        .request_ok("DELETE", &format!("/api/v1/clients/{id}?reason=bye"), None)
        .await
        .unwrap();
    // The close line, then the end of the response.
    let rest = read_until(&mut s, |_| false).await;
    let last: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["op"].as_str(), last["reason"].as_str()),
        (Some("close"), Some("bye"))
    );
}

/// A reader that never reads: its outbox fills, it is closed as a slow consumer and its
/// connection is cut off; everyone else keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_cut_off() {
    let srv = TestServer::start_with(|c| {
        c.websocket.outbox_max_bytes = 128 * 1024;
        c.limits.max_payload_bytes = 64 * 1024;
    })
    .await;
    let stuck = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(srv.addr()).await.unwrap();
        s.write_all(b"GET /sse?channels=flood HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let mut healthy = get(&srv, "/stream?channels=flood", "").await;
    read_until(&mut healthy, |t| t.contains(r#""op":"subscribed""#)).await;
    common::wait_for_subscribers(&srv, "flood", 2).await;
    let payload = "x".repeat(32 * 1024);
    let mut cut = false;
    for _ in 0..200 {
        srv.admin()
            .publish(&["flood"], json!(payload))
            .await
            .unwrap();
        let stats = srv.admin().stats().await.unwrap();
        if stats["slow_consumers"].as_u64() == Some(1) {
            cut = true;
            break;
        }
        // The healthy reader keeps up.
        let mut buf = vec![0u8; 1 << 20];
        let _ = tokio::time::timeout(Duration::from_millis(5), healthy.read(&mut buf)).await;
    }
    assert!(cut, "the stuck reader was closed as a slow consumer");
    // Without reading it: the server lets go of its socket within the grace (a reset, so the
    // kernel drops what is queued for it).
    let peer = stuck.local_addr().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while common::kernel_has_socket(srv.addr(), peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck reader's connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.admin().stats().await.unwrap()["connections"], 1);
    drop(stuck);
}

/// Long-polling: a poll waits for a delivery; the next one passes `recover` back and gets
/// what was published in between, at once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_lose_nothing_between_requests() {
    let srv = TestServer::start_with(|c| c.channels.history_size = 100).await;
    let api = herald_client::Api::new(&srv.http(), None);
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move {
            api.request_ok("GET", "/poll?channels=p&timeout=10", None)
                .await
        })
    };
    // Publish until the waiting poll is subscribed and answers.
    let mut first = None;
    for i in 0..100 {
        srv.admin().publish(&["p"], json!(i)).await.unwrap();
        if waiting.is_finished() {
            first = Some(waiting.await.unwrap().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.expect("the poll answered once something was published");
    let messages = first["messages"].as_array().unwrap();
    assert!(!messages.is_empty(), "{first}");
    let last_seen = messages.last().unwrap()["data"].as_i64().unwrap();
    let recover = first["recover"].as_str().unwrap().to_string();
    assert!(recover.ends_with(",p"), "{first}");
    // Published while no poll is open.
    for i in 1000..1003 {
        srv.admin().publish(&["p"], json!(i)).await.unwrap();
    }
    let path = format!(
        "/poll?channels=p&timeout=0&recover={}",
        recover.replace(' ', "%20").replace(',', "%2C")
    );
    let second = api.request_ok("GET", &path, None).await.unwrap();
    assert_eq!(second["recovered"]["p"]["recovered"], true, "{second}");
    let data: Vec<i64> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_i64().unwrap())
        .collect();
    let after_first: Vec<i64> = data.iter().copied().filter(|d| *d < 1000).collect();
    assert!(after_first.iter().all(|d| *d > last_seen), "{second}");
    assert_eq!(&data[data.len() - 3..], [1000, 1001, 1002], "{second}");
    // Bad input.
    let (status, body) = api
        .request("GET", "/poll?channels=p&timeout=9999", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

/// HTTP/1.1 streams are chunked and end with the connection, whichever way the request is
/// served: read in one go (on the socket itself) or with its head split over several reads
/// (then by the HTTP layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_streams_are_chunked_whether_the_head_arrives_whole_or_split() {
    let srv = TestServer::start().await;
    let head = "GET /stream?channels=chunks HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut whole = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    whole.write_all(head.as_bytes()).await.unwrap();
    let mut split = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    split.write_all(&head.as_bytes()[..20]).await.unwrap();
    // Most likely read apart (either way the stream must work).
    tokio::time::sleep(Duration::from_millis(50)).await;
    split.write_all(&head.as_bytes()[20..]).await.unwrap();
    common::wait_for_subscribers(&srv, "chunks", 2).await;
    srv.admin().publish(&["chunks"], json!("c1")).await.unwrap();
    for s in [&mut whole, &mut split] {
        let text = read_until(s, |t| t.contains(r#""data":"c1""#)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        // Each line arrives inside a chunk: `<hex length>\r\n<lines>\r\n`.
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let size = body.split("\r\n").next().unwrap();
        assert!(
            usize::from_str_radix(size, 16).is_ok(),
            "a chunk size: {body}"
        );
        // A kick ends it with its last line and the last chunk.
        let client = body
            .split(r#""client":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        let (status, _, _) = srv
            .admin()
            .request_raw(
                "DELETE",
                &format!("/api/v1/clients/{client}"),
                &[],
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        let rest = read_until(s, |t| t.ends_with("\r\n0\r\n\r\n")).await;
        assert!(rest.contains(r#""op":"close""#), "{rest}");
        assert!(rest.ends_with("\r\n0\r\n\r\n"), "the last chunk: {rest:?}");
    }
}

/// A long-poll whose client goes away before the answer leaves the hub at once (native
/// `/poll` and push-stream's `/lp`). It stayed for good before: in the channel (holding a
/// seat under `max_subscribers`), in presence and in `/api/v1/clients`, and a kick could not
/// remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_abandoned_by_its_client_leaves_the_hub() {
    let srv = TestServer::start_with(|c| c.dialects.pushstream.enabled = true).await;
    let clients = || async {
        let list = srv.admin().request_ok("GET", "/api/v1/clients", None).await;
        list.unwrap()["clients"].as_array().unwrap().len()
    };
    for path in ["/poll?channels=lp&timeout=60", "/pushstream/lp/lp"] {
        let s = get(&srv, path, "").await;
        common::wait_for_subscribers(&srv, "lp", 1).await;
        drop(s);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while clients().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: the abandoned poll's client is still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
