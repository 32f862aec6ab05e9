//! The native protocol's request parser (`herald_protocol::native::parse_request`, and
//! `Fields::parse` for HTTP bodies) and the JSON reading under it (`herald_protocol::json`).
//!
//! Input: a text frame. Asserts:
//! - a parsed request is JSON by the grammar, an object, and says what serde_json reads in it:
//!   the same `op`, `id`, channel names (escapes decoded), `data`, recipients, tokens;
//! - replies are JSON and echo the id: `reply_ok` for a request, `reply_error` for a refusal
//!   (whose id, when kept, is a JSON number or string of at most 256 bytes);
//! - a publication's `data` encodes into a delivery (WebSocket frame and HTTP record) that is
//!   JSON and carries the data unchanged;
//! - `json::members` and `json::unique_object` agree with serde_json on every member, and
//!   text that is not JSON is refused by all of them.
#![no_main]

use herald_core::{ChannelName, ClientId, ErrorCode, WireFormat};
use herald_fuzz::{Input, is_json, json, message, ws_payload};
use herald_protocol::native::{self, NATIVE_LINES, NATIVE_WS, Op, Recipient};
use herald_protocol::{json as hjson, records};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;

/// The key serde_json's `Value` reads as "a raw value follows" (serde_json's private token).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the decoder refuses others).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let grammar = is_json(data);
    // What serde_json makes of it, when it can hold it.
    let value: Option<Value> = serde_json::from_str(text).ok();
    let object = value.as_ref().and_then(Value::as_object);
    check_json_module(text, grammar, object);

    match native::parse_request(text) {
        Ok(request) => {
            assert!(grammar, "a request that is not JSON: {text:?}");
            assert!(text.trim_start().starts_with('{'));
            if let Some(id) = request.id {
                check_id(id);
                let reply = native::reply_ok(id, &serde_json::json!({"ok": true}));
                let reply = json(ws_payload(&reply));
                if let (Some(reply), Ok(id)) = (reply, serde_json::from_str::<Value>(id.get())) {
                    assert_eq!(reply["id"], id);
                }
            }
            if let Some(object) = object {
                check_request(&request.op, object);
            }
            check_op(&request.op);
        }
        Err(bad) => {
            if let Some(id) = bad.id {
                check_id(id);
            }
            if !grammar {
                assert!(bad.id.is_none());
                assert!(matches!(
                    bad.error.code,
                    ErrorCode::InvalidJson | ErrorCode::BadRequest
                ));
            }
            let reply = native::reply_error(bad.id, &bad.error);
            if let Some(reply) = json(ws_payload(&reply)) {
                assert_eq!(reply["op"], "reply");
                assert_eq!(reply["error"]["code"], bad.error.code.as_str());
                assert_eq!(reply["error"]["message"], bad.error.message.as_str());
            }
        }
    }
    if native::Fields::parse(text).is_ok() {
        assert!(grammar && text.trim_start().starts_with('{'));
    }
});

/// A kept id: a JSON string or number of at most 256 bytes.
fn check_id(id: &RawValue) {
    let text = id.get();
    assert!(text.len() <= 256, "{text}");
    assert!(is_json(text.as_bytes()));
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        assert!(v.is_string() || v.is_number(), "{text}");
    }
}

fn names(channels: &[ChannelName]) -> Vec<&str> {
    channels.iter().map(ChannelName::as_str).collect()
}

/// serde_json's reading of the request's channel list (`channels` or `channel`).
fn channel_list(object: &serde_json::Map<String, Value>) -> Vec<&str> {
    match (object.get("channels"), object.get("channel")) {
        (Some(Value::Array(a)), None) => a.iter().map(|v| v.as_str().unwrap()).collect(),
        (None, Some(Value::String(s))) => vec![s.as_str()],
        other => panic!("accepted channels {other:?}"),
    }
}

fn same_json(raw: &RawValue, value: Option<&Value>) {
    let value = value.expect("present");
    if let Ok(raw) = serde_json::from_str::<Value>(raw.get()) {
        assert_eq!(&raw, value);
    }
}

/// The parsed op says what serde_json reads in the same object (which has no repeated
/// member: the parser refuses them).
fn check_request(op: &Op, object: &serde_json::Map<String, Value>) {
    let name = object["op"].as_str().expect("op is a string");
    match op {
        Op::Subscribe {
            channels,
            token,
            client,
            recover,
        } => {
            assert_eq!(name, "subscribe");
            assert_eq!(names(channels), channel_list(object));
            assert_eq!(
                token.as_deref(),
                object.get("token").and_then(Value::as_str)
            );
            if let Some(client) = client {
                assert_eq!(
                    ClientId::parse(object["client"].as_str().unwrap()).ok(),
                    Some(*client)
                );
            }
            for (channel, position) in recover {
                assert!(channels.contains(channel));
                let p = &object["recover"][channel.as_str()];
                assert_eq!(p["epoch"], position.epoch.as_str());
                assert_eq!(p["offset"].as_u64(), Some(position.offset));
            }
        }
        Op::Unsubscribe { channels, .. } => {
            assert_eq!(name, "unsubscribe");
            assert_eq!(names(channels), channel_list(object));
        }
        Op::Publish { channels, data, to } => {
            assert_eq!(name, "publish");
            assert_eq!(names(channels), channel_list(object));
            same_json(data, object.get("data"));
            if let Some(to) = to {
                // Any spelling a UUID may have, each in its place.
                let given: Vec<ClientId> = object["to"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| ClientId::parse(v.as_str().unwrap()).unwrap())
                    .collect();
                assert_eq!(to, &given);
            }
        }
        Op::Send { to, data } => {
            assert_eq!(name, "send");
            same_json(data, object.get("data"));
            match to {
                Recipient::User(u) => assert_eq!(object["user"], u.as_str()),
                Recipient::Client(id) => assert_eq!(
                    ClientId::parse(object["to"].as_str().unwrap()).ok(),
                    Some(*id)
                ),
            }
        }
        Op::History {
            channel,
            limit,
            reverse,
            ..
        } => {
            assert_eq!(name, "history");
            assert_eq!(object["channel"], channel.as_str());
            if let Some(limit) = limit {
                assert_eq!(object["limit"].as_u64(), Some(*limit as u64));
            }
            assert_eq!(*reverse, object.get("reverse").is_some_and(|r| r == true));
        }
        Op::Presence { channel } => {
            assert_eq!(name, "presence");
            assert_eq!(object["channel"], channel.as_str());
        }
        Op::PresenceStats { channel } => {
            assert_eq!(name, "presence_stats");
            assert_eq!(object["channel"], channel.as_str());
        }
        Op::Ping => assert_eq!(name, "ping"),
        Op::Auth { token } => {
            assert_eq!(name, "auth");
            assert_eq!(object["token"], token.as_str());
        }
        Op::Admin { op } => {
            assert_eq!(name, *op);
            assert!(native::ADMIN_OPS.contains(op));
        }
    }
}

/// Whatever serde_json says: a publication's data encodes into deliveries that are JSON and
/// carry it unchanged; channel names are valid.
fn check_op(op: &Op) {
    let channels: &[ChannelName] = match op {
        Op::Subscribe { channels, .. }
        | Op::Unsubscribe { channels, .. }
        | Op::Publish { channels, .. } => channels,
        _ => &[],
    };
    for c in channels {
        assert!(ChannelName::parse(c.as_str()).is_ok());
    }
    let data = match op {
        Op::Publish { data, .. } | Op::Send { data, .. } => *data,
        _ => return,
    };
    let expected: Option<Value> = serde_json::from_str(data.get()).ok();
    let mut fields = Input(data.get().as_bytes());
    let mut m = message(&mut fields, data.get().as_bytes());
    if let Some(c) = channels.first() {
        m.channel = c.clone();
    }
    let frame = NATIVE_WS.message(&m);
    let delivered = json(ws_payload(&frame));
    if let (Some(delivered), Some(expected)) = (&delivered, &expected) {
        assert_eq!(delivered["op"], "message");
        assert_eq!(delivered["channel"], m.channel.as_str());
        assert_eq!(delivered["offset"].as_u64(), Some(m.offset));
        assert_eq!(&delivered["data"], expected);
    }
    let batch = NATIVE_LINES.message(&m);
    let mut records: Vec<records::Record> = records::parse(&batch).collect();
    assert_eq!(records.len(), 1, "one record, whatever the data holds");
    match records.pop().unwrap() {
        records::Record::Message { position, payload } => {
            assert_eq!(position.channel, m.channel.as_str());
            assert_eq!(position.epoch, &*m.epoch);
            assert_eq!(position.offset, m.offset);
            assert_eq!(position.time_ms, m.time_ms);
            assert_eq!(json(payload), delivered);
        }
        other => panic!("{other:?}"),
    }
    let direct = NATIVE_WS.direct(m.from, data.get().as_bytes());
    if let (Some(direct), Some(expected)) = (json(ws_payload(&direct)), &expected) {
        assert_eq!(&direct["data"], expected);
    }
}

/// `json::members` and `json::unique_object` against serde_json.
fn check_json_module(text: &str, grammar: bool, object: Option<&serde_json::Map<String, Value>>) {
    const NAMES: [&str; 3] = ["op", "id", "data"];
    match hjson::members(text, &NAMES) {
        Ok(m) => {
            assert!(grammar);
            for (name, raw) in NAMES.iter().zip(m.values) {
                if let Some(raw) = raw {
                    assert!(is_json(raw.get().as_bytes()));
                    // With a repeat, serde_json keeps the last, members the first.
                    if m.repeated.is_none()
                        && let Some(object) = object
                    {
                        same_json(raw, object.get(*name));
                    }
                    if let Some(s) = hjson::string(raw) {
                        assert_eq!(
                            serde_json::from_str::<String>(raw.get()).ok().as_deref(),
                            Some(&*s)
                        );
                    }
                } else if m.repeated.is_none()
                    && let Some(object) = object
                {
                    assert!(!object.contains_key(*name), "{name} missed");
                }
            }
        }
        // Told as soon as the text does not open an object, JSON or not.
        Err(hjson::ObjectError::NotObject) => assert!(
            !text
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .starts_with('{')
        ),
        // JSON's grammar lets a string escape a lone surrogate (`"\udddd"`), which no UTF-8
        // text can hold: Herald refuses it as serde_json's `Value` does (its `IgnoredAny`,
        // which `grammar` uses, does not look).
        Err(hjson::ObjectError::Syntax(_)) => assert!(
            !grammar || !text.trim_start().starts_with('{') || lone_surrogate(text),
            "{text:?}"
        ),
    }
    match hjson::unique_object(text) {
        Ok(map) => {
            assert!(grammar);
            match object {
                Some(object) => assert_eq!(&map, object, "unique_object and serde_json"),
                // serde_json's Value takes an object whose key is its RawValue marker for a raw
                // value and refuses it; to Herald it is an ordinary key.
                None => assert!(map.contains_key(RAW_VALUE_TOKEN), "{text:?}"),
            }
        }
        Err(hjson::UniqueError::Repeated(key)) => {
            assert!(grammar);
            assert!(object.is_some_and(|o| o.contains_key(&key)));
        }
        Err(hjson::UniqueError::Object(_)) => {
            // Not an object, not JSON, or a number serde_json cannot hold.
            assert!(object.is_none());
        }
    }
}

/// Whether serde_json refuses `text` for an escaped surrogate that has no pair.
fn lone_surrogate(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_err_and(|e| {
        let e = e.to_string();
        // A trailing one alone, a leading one alone, a leading one not followed by `\u`.
        e.contains("surrogate") || e.contains("unicode code point") || e.contains("hex escape")
    })
}
