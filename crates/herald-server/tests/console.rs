//! The admin console (`/console`, docs/console.md) in a real headless browser (Debian's
//! chromium, see `common::browser`) against a real server:
//!
//! - the page, its script and its style are served without a credential, with a strict
//!   `Content-Security-Policy` and `Cache-Control`;
//! - signed in with the admin key, it lists a real client that connects and shows its
//!   `client.connected` event, publishes through its form to that client, and kicks it (the
//!   client sees the close);
//! - with a wrong key it refuses, shows a refusal and no data, and keeps no key.

mod common;

use common::browser::Browser;
use common::{ADMIN_KEY, TestServer, WAIT};
use herald_client::Event;
use serde_json::json;

/// JavaScript that signs in with `key` through the login form, as a person would.
fn sign_in(key: &str) -> String {
    format!(
        "document.getElementById('admin-key').value = {};
         document.getElementById('login-button').click();
         return true;",
        json!(key)
    )
}

/// Opens the console and waits until its script has wired the page.
async fn open(browser: &Browser, srv: &TestServer) {
    browser.goto(&format!("{}/console", srv.http())).await;
    browser
        .wait_for(
            "the console's script",
            "return window.log.includes('ready')",
        )
        .await;
}

#[tokio::test]
async fn the_console_is_served_without_a_credential_with_a_strict_policy() {
    let srv = TestServer::start().await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = srv
            .anonymous()
            .request_raw("GET", path, &[], Default::default())
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(!body.is_empty());
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(ADMIN_KEY), "{path} holds no secret");
    }
    // The page itself carries no inline script or style.
    let (_, _, page) = srv
        .anonymous()
        .request_raw("GET", "/console", &[], Default::default())
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));
}

#[test]
fn a_dialect_cannot_take_the_console_s_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.dialects.subsocket.prefix = "/console".into();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("dialects.subsocket.prefix"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_sees_a_client_publishes_to_it_and_kicks_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let srv = TestServer::start().await;
    open(&browser, &srv).await;
    let hidden = browser
        .eval("return document.getElementById('console').hidden")
        .await;
    assert_eq!(hidden, true, "nothing is shown before signing in");

    browser.eval(&sign_in(ADMIN_KEY)).await;
    browser
        .wait_for(
            "the live event feed",
            "return !document.getElementById('console').hidden
                && document.getElementById('events-status').textContent === 'live'",
        )
        .await;
    let stored = browser
        .eval("return sessionStorage.getItem('herald.console.key')")
        .await;
    assert_eq!(stored, ADMIN_KEY, "the key is kept for the session");

    // A real client connects and subscribes: the console lists it and shows its event.
    let mut client = srv.client().await;
    client.subscribe(&["news"]).await.unwrap();
    let id = client.id().to_string();
    let row = format!("#clients tr[data-client-id='{id}']");
    browser
        .wait_for(
            "the client in the list",
            &format!("return !!document.querySelector(\"{row}\")"),
        )
        .await;
    browser
        .wait_for(
            "the client's connected event",
            &format!(
                "return !!document.querySelector(\"#events li[data-type='client.connected'][data-client='{id}']\")"
            ),
        )
        .await;
    browser
        .wait_for(
            "news with one subscriber",
            "const row = document.querySelector(\"#channels tr[data-channel='news']\");
             return row && row.cells[1].textContent === '1'",
        )
        .await;
    browser
        .wait_for(
            "the connection figure",
            "return Number(document.getElementById('stat-connections').textContent) >= 1",
        )
        .await;

    // Published through the form, delivered to the real client.
    browser
        .eval(
            "document.getElementById('publish-channel').value = 'news';
             document.getElementById('publish-data').value = '{\"hello\":\"from the console\"}';
             document.getElementById('publish-button').click();
             return true;",
        )
        .await;
    let message = client.next_op("message", WAIT).await.unwrap();
    assert_eq!(message["channel"], "news", "{message}");
    assert_eq!(
        message["data"],
        json!({"hello": "from the console"}),
        "{message}"
    );
    let result = browser
        .wait_for(
            "the publish result",
            "const t = document.getElementById('publish-result').textContent;
             return t.includes('\"delivered\":1') && t",
        )
        .await;
    assert!(
        result.as_str().unwrap().starts_with("published to news"),
        "{result}"
    );
    // The rate figure counts it, and the chart is drawn.
    browser
        .wait_for(
            "a publication in the rate figure",
            "return Number(document.getElementById('stat-publish-rate').textContent) > 0",
        )
        .await;
    let drawn = browser
        .eval(
            "const c = document.getElementById('rate-chart');
             return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v) => v > 0)",
        )
        .await;
    assert_eq!(drawn, true, "the chart has something drawn");

    // Kicked from the console: the client is closed, and leaves the list.
    browser
        .eval(&format!(
            "document.querySelector(\"{row} button[aria-label^='Kick']\").click(); return true;"
        ))
        .await;
    let closed = loop {
        match client.next_event(WAIT).await.expect("the client is closed") {
            Event::Closed { code, reason } => break (code, reason),
            Event::Frame(_) | Event::Text(_) => {}
        }
    };
    assert_eq!(closed, (4200, "kicked from the console".to_string()));
    browser
        .wait_for(
            "the client's disconnected event",
            &format!(
                "return !!document.querySelector(\"#events li[data-type='client.disconnected'][data-client='{id}']\")"
            ),
        )
        .await;
    browser
        .wait_for(
            "the client gone from the list",
            &format!("return !document.querySelector(\"{row}\")"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_key_the_console_refuses_and_shows_nothing() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let srv = TestServer::start().await;
    let mut client = srv.client().await;
    client.subscribe(&["news"]).await.unwrap();
    open(&browser, &srv).await;

    browser.eval(&sign_in("not-the-admin-key")).await;
    let refusal = browser
        .wait_for(
            "the refusal",
            "const r = document.getElementById('refusal');
             return !r.hidden && r.textContent",
        )
        .await;
    assert!(
        refusal
            .as_str()
            .unwrap()
            .starts_with("Refused (unauthorized)"),
        "{refusal}"
    );
    let shown = browser
        .eval(
            "return {
               console_hidden: document.getElementById('console').hidden,
               clients: document.querySelectorAll('#clients tbody tr').length,
               channels: document.querySelectorAll('#channels tbody tr').length,
               events: document.querySelectorAll('#events li').length,
               connections: document.getElementById('stat-connections').textContent,
               key: sessionStorage.getItem('herald.console.key'),
             }",
        )
        .await;
    assert_eq!(
        shown,
        json!({"console_hidden": true, "clients": 0, "channels": 0, "events": 0,
               "connections": "–", "key": null}),
    );

    // The right key then opens it.
    browser.eval(&sign_in(ADMIN_KEY)).await;
    browser
        .wait_for(
            "the client listed",
            &format!(
                "return !!document.querySelector(\"#clients tr[data-client-id='{}']\")",
                client.id()
            ),
        )
        .await;
    let refusal_hidden = browser
        .eval("return document.getElementById('refusal').hidden")
        .await;
    assert_eq!(refusal_hidden, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_inspects_a_channel_and_a_client_bans_and_lifts() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let srv = TestServer::start_with(|c| {
        c.channels.history_size = 10;
        c.channels.presence = true;
    })
    .await;
    open(&browser, &srv).await;
    browser.eval(&sign_in(ADMIN_KEY)).await;
    browser
        .wait_for(
            "the live event feed",
            "return document.getElementById('events-status').textContent === 'live'",
        )
        .await;
    let mut client = srv.client().await;
    client.subscribe(&["room"]).await.unwrap();
    let id = client.id().to_string();
    for n in [1, 2] {
        srv.admin()
            .publish(&["room"], json!({ "n": n }))
            .await
            .unwrap();
    }

    // A channel's history and presence.
    browser
        .wait_for(
            "room in the list",
            "const b = document.querySelector(\"#channels tr[data-channel='room'] button\");
             if (b) b.click();
             return !!b",
        )
        .await;
    let history = browser
        .wait_for(
            "room's history",
            "const t = document.getElementById('channel-history').textContent;
             return t.includes('{\"n\":2}') && t",
        )
        .await;
    assert_eq!(history, "#2 {\"n\":2}\n#1 {\"n\":1}");
    let presence = browser
        .wait_for(
            "room's presence",
            "return document.getElementById('channel-presence').textContent",
        )
        .await;
    assert_eq!(presence, id.as_str());

    // A client's details.
    let row = format!("#clients tr[data-client-id='{id}']");
    browser
        .wait_for(
            "the client's details",
            &format!(
                "const b = document.querySelector(\"{row} button[aria-label^='Details']\");
                 if (b) b.click();
                 return !!b"
            ),
        )
        .await;
    let details = browser
        .wait_for(
            "the details shown",
            "const t = document.getElementById('client-detail-body').textContent;
             return t && JSON.parse(t)",
        )
        .await;
    assert_eq!(details["id"], id.as_str());
    assert_eq!(details["channels"], json!(["room"]));

    // Banned from the console: closed with 4003, the ban listed, new connections refused.
    browser
        .eval(&format!(
            "document.querySelector(\"{row} button[aria-label^='Ban']\").click(); return true;"
        ))
        .await;
    let closed = loop {
        match client.next_event(WAIT).await.expect("the client is closed") {
            Event::Closed { code, .. } => break code,
            Event::Frame(_) | Event::Text(_) => {}
        }
    };
    assert_eq!(closed, 4003);
    browser
        .wait_for(
            "the ban listed and its event",
            "return !!document.querySelector(\"#bans tr[data-ban='ip:127.0.0.1']\")
                && !!document.querySelector(\"#events li[data-type='client.banned']\")",
        )
        .await;
    assert!(herald_client::Client::connect(&srv.ws_url()).await.is_err());

    // Lifted from the console: connections are let in again.
    browser
        .eval(
            "document.querySelector(\"#bans tr[data-ban='ip:127.0.0.1'] button\").click();
             return true;",
        )
        .await;
    browser
        .wait_for(
            "the ban gone",
            "return document.getElementById('ban-result').textContent.startsWith('lifted')
                && !document.querySelector('#bans tbody tr')",
        )
        .await;
    srv.client().await;

    // The key stays for the tab's session: a reload is still signed in.
    browser.goto(&format!("{}/console", srv.http())).await;
    browser
        .wait_for(
            "the feed after a reload",
            "return document.getElementById('events-status').textContent === 'live'",
        )
        .await;
    let log = browser.eval("return window.log").await;
    assert!(
        !log.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("csp")),
        "nothing blocked by the Content-Security-Policy: {log}"
    );
}
