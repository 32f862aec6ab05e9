//! `GET /metrics` over real sockets: refused without the admin key on the main listener,
//! open on `metrics_listen`'s own listener, and its figures follow what happens (connections
//! by dialect and transport, publications, bytes written, the publish-to-write histogram).

mod common;

use common::raw_http::{get, read_until};
use common::{TestServer, WAIT, wait_for_subscribers};
use serde_json::json;

/// The value of the sample `line_start` (a metric name with its labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_key_and_follow_connections_publications_and_writes() {
    let srv = TestServer::start_with(|c| c.metrics_listen = "127.0.0.1:0".into()).await;
    let (status, _, _) = srv
        .anonymous()
        .request_raw("GET", "/metrics", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(
        status, 401,
        "the main listener's metrics need the admin key"
    );

    let mut ws = srv.client().await;
    ws.subscribe(&["news"]).await.unwrap();
    let mut sse = get(&srv, "/sse?channels=news", "").await;
    read_until(&mut sse, |t| t.contains(r#""op":"subscribed""#)).await;
    wait_for_subscribers(&srv, "news", 2).await;
    srv.admin()
        .publish(&["news"], json!("hello"))
        .await
        .unwrap();
    read_until(&mut sse, |t| t.contains(r#""data":"hello""#)).await;
    ws.next_event(WAIT).await.unwrap();

    let (status, headers, body) = srv
        .admin()
        .request_raw("GET", "/metrics", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let by = |transport: &str| {
        sample(
            &text,
            &format!(
                "herald_connections_by_transport{{dialect=\"native\",transport=\"{transport}\"}}"
            ),
        )
    };
    assert_eq!(by("websocket"), Some(1.0), "{text}");
    assert_eq!(by("http"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "herald_publications_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "herald_messages_out_total"),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, "herald_bytes_written_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    let timed = sample(&text, "herald_publish_to_write_seconds_count").unwrap_or(0.0);
    assert!(
        timed >= 1.0,
        "the writes carrying the publication were timed: {text}"
    );
    assert!(text.contains("# HELP herald_connections "), "{text}");

    // The listener of its own answers without a key.
    let addr = srv
        .server
        .dialect_addrs
        .iter()
        .find(|(name, _)| *name == "metrics")
        .map(|(_, a)| *a)
        .expect("the metrics listener");
    let open = herald_client::Api::new(&format!("http://{addr}"), None);
    let (status, _, body) = open
        .request_raw("GET", "/metrics", &[], Default::default())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("herald_publications_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_listen_address_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.metrics_listen = "not an address".into();
    let err = herald_server::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("metrics_listen"), "{err:#}");
}
