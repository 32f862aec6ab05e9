//! The Eventual Agent dialect (`herald_protocol::eventual`): requests carrying CloudEvents,
//! and its deliveries.
//!
//! Input: one byte choosing the mode, then the text. Asserts:
//! - a parsed request is what serde_json reads in the same text (`type`, channel names from a
//!   string or an array, escapes decoded);
//! - a published event is a CloudEvents 1.0 object: the four required attributes non-empty
//!   strings, `specversion` "1.0", extension names and values as the spec allows, not both
//!   `data` and `data_base64`;
//! - a validated event is delivered exactly as published (one frame, followed by `\n`), and
//!   any other data is wrapped into a CloudEvent that is JSON and carries it;
//! - error frames are JSON lines.
#![no_main]

use herald_core::{ChannelName, ErrorCode, HeraldError, WireFormat};
use herald_fuzz::{Input, is_json, json, message, ws_payload};
use herald_protocol::eventual::{self, BadRequest, EVENTUAL_WS, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    if mode % 2 == 0 {
        request(text);
    } else {
        delivery(text);
    }
});

fn names(channels: &[ChannelName]) -> Vec<&str> {
    channels.iter().map(ChannelName::as_str).collect()
}

fn request(text: &str) {
    let value: Option<Value> = serde_json::from_str(text).ok();
    let parsed = eventual::parse(text);
    if !is_json(text.as_bytes()) {
        assert!(matches!(&parsed, Err(BadRequest::Invalid(e)) if e.code == ErrorCode::InvalidJson));
        return;
    }
    let Ok(request) = parsed else { return };
    let Some(v) = value else { return };
    let listed: Vec<&str> = match &v["channels"] {
        Value::String(s) => vec![s],
        Value::Array(a) => a.iter().map(|c| c.as_str().unwrap()).collect(),
        other => panic!("accepted channels {other:?}"),
    };
    match request {
        Request::Subscribe(c) => {
            assert_eq!(v["type"], "subscribe");
            assert_eq!(names(&c), listed);
        }
        Request::Unsubscribe(c) => {
            assert_eq!(v["type"], "unsubscribe");
            assert_eq!(names(&c), listed);
        }
        Request::Publish { channels, event } => {
            assert_eq!(v["type"], "publish");
            assert_eq!(names(&channels), listed);
            check_event(&v["event"]);
            // Delivered exactly as published.
            let m = message(&mut Input(event.get().as_bytes()), event.get().as_bytes());
            let frame = EVENTUAL_WS.message(&m);
            let mut expected = event.get().as_bytes().to_vec();
            expected.push(b'\n');
            assert_eq!(ws_payload(&frame), &expected[..]);
        }
    }
}

/// What CloudEvents 1.0 (JSON format) requires of an event Herald accepted.
fn check_event(event: &Value) {
    let event = event.as_object().expect("an object");
    for attr in ["specversion", "id", "source", "type"] {
        assert!(
            event[attr].as_str().is_some_and(|s| !s.is_empty()),
            "{attr}"
        );
    }
    assert_eq!(event["specversion"], "1.0");
    assert!(!(event.contains_key("data") && event.contains_key("data_base64")));
    for (name, value) in event {
        match name.as_str() {
            "specversion" | "id" | "source" | "type" | "data" => {}
            "datacontenttype" | "dataschema" | "subject" | "time" | "data_base64" => {
                assert!(value.is_string())
            }
            "meta" => assert!(value.is_object()),
            ext => {
                assert!(!ext.is_empty() && ext.len() <= 20, "{ext:?}");
                assert!(
                    ext.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                );
                assert!(value.is_string() || value.is_number() || value.is_boolean());
            }
        }
    }
}

fn delivery(text: &str) {
    if !is_json(text.as_bytes()) {
        return;
    }
    let m = message(&mut Input(text.as_bytes()), text.as_bytes());
    let frame = EVENTUAL_WS.message(&m);
    let line = ws_payload(&frame);
    assert_eq!(line.last(), Some(&b'\n'));
    let line = &line[..line.len() - 1];
    if line == text.as_bytes() {
        // Passed through: it has the four attributes a CloudEvent needs.
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        if v.is_object() {
            for attr in ["specversion", "id", "source", "type"] {
                assert!(v[attr].as_str().is_some_and(|s| !s.is_empty()));
            }
        }
    } else if let Some(wrapped) = json(line) {
        assert_eq!(wrapped["specversion"], "1.0");
        assert_eq!(wrapped["source"], "herald");
        assert_eq!(wrapped["type"], "herald.message");
        assert_eq!(wrapped["subject"], m.channel.as_str());
        if let Ok(data) = serde_json::from_str::<Value>(text) {
            assert_eq!(wrapped["data"], data);
        }
    }
    let direct = EVENTUAL_WS.direct(m.from, text.as_bytes());
    json(&ws_payload(&direct)[..ws_payload(&direct).len() - 1]);
    let error = HeraldError::new(ErrorCode::BadRequest, text);
    let e = json(
        ws_payload(&eventual::error_frame(&error))
            .strip_suffix(b"\n")
            .unwrap(),
    )
    .expect("an object");
    assert_eq!(e["type"], "error");
    assert_eq!(e["message"], text);
}
