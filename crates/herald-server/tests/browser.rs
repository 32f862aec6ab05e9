//! Herald's HTTP transports in a real headless browser (Debian's chromium, see
//! `common::browser`), from a page of another origin as a real app's would be:
//!
//! - a page using `EventSource` on `/sse` receives deliveries, and after the server drops it
//!   (a kick), the browser's own reconnect with `Last-Event-ID` recovers what was published
//!   meanwhile, each message once;
//! - the original `pushstream.js` (unchanged, `tests/browser/pushstream.js`) in `eventsource`
//!   and in `longpolling` mode (JSONP, as across origins) receives messages published over
//!   HTTP, the latter also those published between its polls.

mod common;

use common::browser::{Browser, PageServer};
use common::{TestServer, wait_for_subscribers};
use serde_json::{Value, json};

const PUSHSTREAM_JS: &str = include_str!("browser/pushstream.js");

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.dialects.pushstream.enabled = true;
        c.channels.history_size = 100;
    })
    .await
}

/// Publishes `text` through push-stream's publisher.
async fn pushstream_publish(srv: &TestServer, channel: &str, text: &str) {
    let (status, _, _) = srv
        .anonymous()
        .request_raw(
            "POST",
            &format!("/pushstream/pub?id={channel}"),
            &[],
            text.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
}

const EVENTSOURCE_PAGE: &str = r#"<!doctype html><html><body><script>
window.log = [];
window.messages = [];
window.subscribed = [];
const source = new EventSource(HERALD + "/sse?channels=news");
source.onmessage = (e) => {
  const m = JSON.parse(e.data);
  window.log.push(m.op);
  if (m.op === "welcome") window.client = m.client;
  if (m.op === "subscribed") window.subscribed.push(m.recovered);
  if (m.op === "message") window.messages.push(m.data);
};
source.onerror = () => window.log.push("error, state " + source.readyState);
</script></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventsource_page_receives_and_recovers_after_the_server_drops_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let srv = server().await;
    let page = EVENTSOURCE_PAGE.replace("HERALD", &format!("\"{}\"", srv.http()));
    let pages = PageServer::start(vec![("/", "text/html", page)]).await;
    browser.goto(&pages.url("/")).await;
    let client = browser
        .wait_for("the welcome", "return window.client || null")
        .await;
    wait_for_subscribers(&srv, "news", 1).await;
    srv.admin().publish(&["news"], json!(1)).await.unwrap();
    srv.admin().publish(&["news"], json!(2)).await.unwrap();
    browser
        .wait_for("two messages", "return window.messages.length === 2")
        .await;

    // The server drops the connection; what is published before the browser is back is
    // recovered through Last-Event-ID, and nothing arrives twice.
    let (status, _, _) = srv
        .admin()
        .request_raw(
            "DELETE",
            &format!("/api/v1/clients/{}", client.as_str().unwrap()),
            &[],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    srv.admin().publish(&["news"], json!(3)).await.unwrap();
    srv.admin().publish(&["news"], json!(4)).await.unwrap();
    let recovered = browser
        .wait_for(
            "the reconnect's subscribe",
            "return window.subscribed.length === 2 && window.subscribed[1]",
        )
        .await;
    assert_eq!(recovered["news"]["recovered"], true, "{recovered}");
    srv.admin().publish(&["news"], json!(5)).await.unwrap();
    browser
        .wait_for("five messages", "return window.messages.length >= 5")
        .await;
    let messages = browser.eval("return window.messages").await;
    assert_eq!(messages, json!([1, 2, 3, 4, 5]));
}

/// A page that connects the original `pushstream.js` to Herald in `mode`.
fn pushstream_page(srv: &TestServer, mode: &str) -> String {
    let port = srv.addr().port();
    format!(
        r#"<!doctype html><html><head><script src="/pushstream.js"></script></head><body><script>
window.log = [];
window.got = [];
PushStream.LOG_LEVEL = "info";
PushStream.LOG_OUTPUT_ELEMENT_ID = "none";
const ps = new PushStream({{
  host: "127.0.0.1", port: {port}, modes: "{mode}",
  urlPrefixEventsource: "/pushstream/ev", urlPrefixLongpolling: "/pushstream/lp",
  urlPrefixPublisher: "/pushstream/pub", timeout: 5000,
  onmessage: (text, id, channel) => window.got.push([id, channel, text]),
  onstatuschange: (state) => window.log.push("state " + state),
  onerror: (e) => window.log.push("error " + e.type),
}});
ps.addChannel("news");
ps.connect();
</script></body></html>"#
    )
}

async fn pushstream_receives(mode: &str) {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let srv = server().await;
    let pages = PageServer::start(vec![
        ("/", "text/html", pushstream_page(&srv, mode)),
        (
            "/pushstream.js",
            "application/javascript",
            PUSHSTREAM_JS.to_string(),
        ),
    ])
    .await;
    browser.goto(&pages.url("/")).await;
    browser
        .wait_for("the connection", "return window.log.includes('state 2')")
        .await;
    wait_for_subscribers(&srv, "news", 1).await;
    pushstream_publish(&srv, "news", "first message").await;
    browser
        .wait_for("the first message", "return window.got.length === 1")
        .await;
    // Long-polling: published while the client is between its polls, then during one.
    for text in ["second", "third", "fourth"] {
        pushstream_publish(&srv, "news", text).await;
    }
    browser
        .wait_for("four messages", "return window.got.length >= 4")
        .await;
    let got = browser.eval("return window.got").await;
    let expected: Vec<Value> = ["first message", "second", "third", "fourth"]
        .iter()
        .enumerate()
        .map(|(i, t)| json!([i + 1, "news", t]))
        .collect();
    assert_eq!(got, Value::Array(expected), "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pushstream_js_receives_in_eventsource_mode() {
    pushstream_receives("eventsource").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pushstream_js_receives_in_longpolling_mode() {
    pushstream_receives("longpolling").await;
}
