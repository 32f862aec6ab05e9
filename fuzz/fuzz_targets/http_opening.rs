//! The first read of a connection, sorted by `herald_server::transport::direct::sort` (the
//! pure part of `direct::open`): a streaming request served on the socket, a plain-TCP
//! WebSocket upgrade, or anything else for hyper.
//!
//! Input: one byte of choices (plain TCP or TLS), then the bytes read (at most the 4096 of
//! one first read). The paths are the main listener's with the default configuration and
//! push-stream mounted.
//! Asserts:
//! - nothing is lost: anything not served here goes to hyper as the very bytes read, and an
//!   upgrade's head and the bytes after it make up the read exactly;
//! - a stream is one whole bodiless GET head for a stream path, an upgrade one whole bodiless
//!   HTTP/1.1 GET with `Upgrade: websocket` for an upgrade path, and only on plain TCP;
//! - the request handed to the router says what the bytes say: its URI is the request
//!   target (less a fragment), its path the one the sorting matched (the router routes by
//!   it), every header
//!   (name and value) as sent, in order;
//! - the `?channels=` of a request served here parses as its handler parses it.
#![no_main]

use std::sync::LazyLock;

use bytes::BytesMut;
use herald_fuzz::Input;
use herald_server::config::Config;
use herald_server::transport::direct::{self, Opening, StreamPaths};
use libfuzzer_sys::fuzz_target;

/// Most bytes of a connection's first read (`direct::open`).
const FIRST_READ: usize = 4096;

static PATHS: LazyLock<StreamPaths> = LazyLock::new(|| {
    let mut paths = herald_server::dialects::main_stream_paths(&Config::default());
    // push-stream's, as when it is mounted on the main listener.
    paths.extend(herald_server::dialects::pushstream::stream_paths(
        "/pushstream",
    ));
    StreamPaths::new(paths).with_upgrades(["/ws".to_string()])
});

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let plain = input.bool();
    let bytes = input.rest();
    let bytes = &bytes[..bytes.len().min(FIRST_READ)];

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let head = parsed.parse(bytes);

    match direct::sort(BytesMut::from(bytes), &PATHS, plain) {
        Opening::Other(read) => assert_eq!(&read[..], bytes, "hyper gets the bytes read"),
        Opening::Closed => panic!("a read is never Closed"),
        Opening::Stream(req) => {
            let Ok(httparse::Status::Complete(len)) = head else {
                panic!("a stream from a partial head: {head:?}");
            };
            assert_eq!(len, bytes.len(), "a stream is the head alone");
            assert_eq!(parsed.method, Some("GET"));
            assert!(
                PATHS.matches(req.uri().path()),
                "routed elsewhere: {}",
                req.uri()
            );
            same_request(&req, &parsed);
            channels(&req);
        }
        Opening::Upgrade(req, rest) => {
            assert!(plain, "an upgrade served here on TLS");
            let Ok(httparse::Status::Complete(len)) = head else {
                panic!("an upgrade from a partial head: {head:?}");
            };
            assert_eq!(&bytes[len..], &rest[..], "what follows the head is kept");
            assert_eq!(parsed.method, Some("GET"));
            assert_eq!(parsed.version, Some(1));
            assert!(
                PATHS.upgrades(req.uri().path()),
                "routed elsewhere: {}",
                req.uri()
            );
            assert!(req.headers().get_all("upgrade").iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
            }));
            same_request(&req, &parsed);
            channels(&req);
        }
    }
});

/// The request made for the router says what the head says.
fn same_request(req: &axum::http::Request<axum::body::Body>, parsed: &httparse::Request) {
    assert_eq!(req.method(), "GET");
    // The target as sent, but a fragment (which the URI drops, as hyper's does).
    let uri = req.uri();
    let kept = match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    let target = parsed.path.unwrap();
    let rest = target
        .strip_prefix(&kept)
        .unwrap_or_else(|| panic!("{target} as {uri}"));
    assert!(
        rest.is_empty() || rest.starts_with('#'),
        "{target} as {uri}"
    );
    assert!(!req.headers().contains_key("content-length"));
    assert!(!req.headers().contains_key("transfer-encoding"));
    let sent: Vec<(String, &[u8])> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect();
    let kept: Vec<(String, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes()))
        .collect();
    // HeaderMap groups a name's values together; compare per name, in order.
    for (name, _) in &sent {
        let a: Vec<&[u8]> = sent
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect();
        let b: Vec<&[u8]> = kept
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(a, b, "header {name}");
    }
    assert_eq!(sent.len(), kept.len());
}

/// `?channels=` as the WebSocket and HTTP handlers read it: valid, no repeats, bounded.
fn channels(req: &axum::http::Request<axum::body::Body>) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let mut channels = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "channels"
            && herald_server::transport::channel_list(&value, &mut channels, 100).is_err()
        {
            return;
        }
    }
    assert!(channels.len() <= 100);
}
