//! push-stream's HTTP modes over real sockets, as `pushstream.js` uses them: EventSource
//! (`/ev`, resuming exactly through `Last-Event-ID`), long-polling (`/lp`, with `Etag` /
//! `If-None-Match`, `Last-Modified` / `If-Modified-Since`, the `time`/`tag` arguments, JSONP
//! and 304), streaming (`/sub`, the iframe document and plain lines), `/channels-stats`, and
//! clear refusals for bad input.

mod common;

use std::collections::HashMap;

use common::raw_http::{events, get, read_until};
use common::{TestServer, wait_for_subscribers};
use serde_json::Value;

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.pushstream.enabled = true;
        c.channels.history_size = 100;
    })
    .await
}

/// Publishes `text` to `channel` through push-stream's publisher.
async fn publish(srv: &TestServer, channel: &str, text: &str) {
    let (status, _, body) = srv
        .anonymous()
        .request_raw(
            "POST",
            &format!("/pushstream/pub?id={channel}"),
            &[],
            text.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// A whole HTTP/1.0 response: status, headers (lower-case names), body.
async fn request(
    srv: &TestServer,
    path: &str,
    headers: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut s = get(srv, path, headers).await;
    let text = read_until(&mut s, |_| false).await;
    parts(&text)
}

fn parts(text: &str) -> (u16, HashMap<String, String>, String) {
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An HTTP date's milliseconds since the epoch.
fn unix_ms(http_date: &str) -> u64 {
    let t = httpdate::parse_http_date(http_date).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_delivers_message_objects_and_resumes_through_last_event_id() {
    let srv = server().await;
    let path = "/pushstream/ev/news/chat?_=1&tag=&time=&eventid=";
    let mut s = get(&srv, path, "Origin: http://page.example\r\n").await;
    let head = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://page.example"),
        "{head}"
    );
    wait_for_subscribers(&srv, "chat", 1).await;
    publish(&srv, "news", "n1").await;
    publish(&srv, "chat", "say \"hi\"").await;
    let text = head + &read_until(&mut s, |t| t.matches("data: ").count() == 2).await;
    let evs = events(&text);
    assert_eq!(evs.len(), 2, "{text}");
    let (first_id, first) = &evs[0];
    assert_eq!(first["id"], 1);
    assert_eq!(first["channel"], "news");
    assert_eq!(first["text"], "n1");
    assert!(first["tag"].as_u64().unwrap() < 1000);
    assert!(first["time"].as_str().unwrap().ends_with(" GMT"), "{first}");
    assert!(first_id.as_deref().unwrap().ends_with(",news"));
    let (last_id, last) = evs.last().unwrap().clone();
    assert_eq!(last["text"], "say \"hi\"");
    let last_id = last_id.unwrap();
    assert!(
        last_id.contains(",news") && last_id.contains(",chat"),
        "{last_id}"
    );
    drop(s);

    // Missed while away: exactly those (in order within each channel), after the browser's
    // reconnect.
    publish(&srv, "chat", "c2").await;
    publish(&srv, "news", "n2").await;
    publish(&srv, "news", "n3").await;
    let mut s = get(&srv, path, &format!("Last-Event-ID: {last_id}\r\n")).await;
    let text = read_until(&mut s, |t| t.matches("data: ").count() == 3).await;
    let got: Vec<Value> = events(&text).into_iter().map(|(_, v)| v).collect();
    let mut got = texts(&got);
    got.sort();
    assert_eq!(got, ["c2", "n2", "n3"]);
    publish(&srv, "news", "n4").await;
    let text = read_until(&mut s, |t| t.contains("\"n4\"")).await;
    assert_eq!(events(&text).len(), 1, "nothing twice: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpolling_resumes_by_etag_or_by_time_and_tag_and_loses_nothing() {
    let srv = server().await;
    // The first poll, as pushstream.js sends it, waits for the next message.
    let first = {
        let srv_addr = srv.addr();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(srv_addr).await.unwrap();
            let req = "GET /pushstream/lp/news/chat?_=1 HTTP/1.0\r\nHost: x\r\nIf-None-Match: 0\r\nIf-Modified-Since: null\r\n\r\n";
            tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
                .await
                .unwrap();
            parts(&read_until(&mut s, |_| false).await)
        })
    };
    wait_for_subscribers(&srv, "chat", 1).await;
    publish(&srv, "news", "n1").await;
    let (status, headers, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let m1: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m1["text"], "n1");
    let etag = headers["etag"].clone();
    assert!(etag.contains(",news") && etag.contains(",chat"), "{etag}");
    assert_eq!(headers["last-modified"], m1["time"].as_str().unwrap());

    // Published between polls: the next poll gets them at once, joined by CRLF.
    publish(&srv, "chat", "c1").await;
    publish(&srv, "news", "n2").await;
    let (status, headers, body) = request(
        &srv,
        "/pushstream/lp/news/chat",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let got: Vec<Value> = body
        .split("\r\n")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut sorted = texts(&got);
    sorted.sort();
    assert_eq!(sorted, ["c1", "n2"]);
    let etag = headers["etag"].clone();

    // Nothing new: 304 with the same position, so the next poll still misses nothing.
    let (status, headers, body) = request(
        &srv,
        "/pushstream/lp/news/chat?timeout=0",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(headers["etag"], etag);

    // The module's time and tag (JSONP sends them as arguments): what was published after
    // the last message received (the newest: answers are in publication order), once the
    // clock has moved past it.
    let last = got.last().unwrap();
    let last_ms = unix_ms(last["time"].as_str().unwrap()) + last["tag"].as_u64().unwrap();
    while now_ms() <= last_ms {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    publish(&srv, "news", "n3").await;
    let query = format!(
        "?callback=PushStreamManager_0_onmessage_1&tag={}&time={}",
        last["tag"],
        last["time"]
            .as_str()
            .unwrap()
            .replace(' ', "%20")
            .replace(',', "%2C")
    );
    let (status, headers, body) =
        request(&srv, &format!("/pushstream/lp/news/chat{query}"), "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/javascript"));
    let array = body
        .strip_prefix("PushStreamManager_0_onmessage_1(")
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("{body}"));
    let got: Vec<Value> = serde_json::from_str(array).unwrap();
    assert_eq!(texts(&got), ["n3"]);

    // JSONP with nothing new answers an empty array at once when asked to.
    let (status, _, body) = request(&srv, "/pushstream/lp/news?callback=cb&timeout=0", "").await;
    assert_eq!((status, body.as_str()), (200, "cb([]);"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_serves_the_iframe_document_or_plain_lines() {
    let srv = server().await;
    let mut frame = get(
        &srv,
        "/pushstream/sub/news.b1?_=1&streamid=0&tag=&time=&eventid=",
        "",
    )
    .await;
    let mut lines = get(&srv, "/pushstream/sub/news", "").await;
    wait_for_subscribers(&srv, "news", 2).await;
    publish(&srv, "news", "it's </script>").await;
    let text = read_until(&mut frame, |t| t.contains("p(1,")).await;
    assert!(
        text.contains("content-type: text/html; charset=utf-8"),
        "{text}"
    );
    assert!(
        text.contains("parent.PushStream.register(this);</script></head><body>"),
        "{text}"
    );
    assert!(
        text.contains(r"<script>p(1,'news','it\'s \x3C/script\x3E','','"),
        "escaped for the script it sits in: {text}"
    );
    let text = read_until(&mut lines, |t| t.contains("\"id\":1")).await;
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    let m: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(m["text"], "it's </script>");

    // A backtrack gives the last kept message first.
    let mut again = get(&srv, "/pushstream/sub/news.b1?streamid=1", "").await;
    let text = read_until(&mut again, |t| t.contains("p(1,")).await;
    assert!(text.contains("p(1,'news'"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_stats_summary_all_prefix_and_one() {
    let srv = server().await;
    publish(&srv, "news", "a").await;
    publish(&srv, "news", "b").await;
    publish(&srv, "sport", "c").await;
    let (status, _, body) = request(&srv, "/pushstream/channels-stats", "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["channels"], "2");
    assert_eq!(v["published_messages"], "3");
    assert_eq!(v["stored_messages"], "3");
    let (_, _, body) = request(&srv, "/pushstream/channels-stats?id=ALL", "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["infos"].as_array().unwrap().len(), 2);
    let (_, _, body) = request(&srv, "/pushstream/channels-stats?id=spo*", "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["infos"][0]["channel"], "sport");
    assert_eq!(v["infos"][0]["published_messages"], "1");
    let (status, _, body) = request(&srv, "/pushstream/channels-stats?id=news", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"published_messages\": \"2\""), "{body}");
    let (status, headers, _) = request(&srv, "/pushstream/channels-stats?id=nope", "").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-nginx-pushstream-explain"], "Channel not found.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_refusals() {
    let srv = server().await;
    for (path, headers, why) in [
        ("/pushstream/ev/", "", "No channel id provided."),
        ("/pushstream/ev/bad%20name", "", "channel"),
        ("/pushstream/ev/news", "Last-Event-ID: 1,e\r\n", "position"),
        ("/pushstream/lp/news?time=yesterday", "", "HTTP date"),
        (
            "/pushstream/lp/news?time=Thu,%2001%20Jan%202026%2000:00:00%20GMT&tag=x",
            "",
            "tag",
        ),
        ("/pushstream/lp/news?callback=alert(1)", "", "callback"),
        ("/pushstream/lp/news?timeout=999", "", "timeout"),
    ] {
        let (status, got, body) = request(&srv, path, headers).await;
        assert_eq!(status, 400, "{path}: {body}");
        let explain = got
            .get("x-nginx-pushstream-explain")
            .cloned()
            .unwrap_or_default();
        assert!(
            explain.contains(why) || body.contains(why),
            "{path}: {explain} {body}"
        );
    }
    // Garbage in the conditional headers is ignored, as HTTP says of dates.
    let (status, _, _) = request(
        &srv,
        "/pushstream/lp/news?timeout=0",
        "If-Modified-Since: null\r\nIf-None-Match: 0\r\n",
    )
    .await;
    assert_eq!(status, 304);
}
