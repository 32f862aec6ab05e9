//! The Eventual Agent dialect (second seed, WIRE.md §2): JSON requests
//! `{"type":"subscribe"|"unsubscribe"|"publish","channels":string|string[],"event":{...}}` on
//! any path, where `event` is a CloudEvents 1.0 event in JSON structured mode. Subscribers
//! receive the CloudEvent itself, one JSON text per frame followed by `\n` (as the original's
//! `WriteJSON` did). The original acknowledged nothing and answered an unknown `type` with the
//! JSON string `"Invalid Request"`; Herald keeps that answer and adds error frames
//! `{"type":"error","code":"...","message":"..."}` for everything the original silently dropped.

use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, ErrorCode, HeraldError, Message, WireFormat};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{json, ws};

pub const DIALECT: &str = "eventual";

/// The channel whose subscribers get every publication (the firehose).
pub const GLOBAL_CHANNEL: &str = "global";

#[derive(Debug)]
pub enum Request<'a> {
    Subscribe(Vec<ChannelName>),
    Unsubscribe(Vec<ChannelName>),
    /// `event` has been validated as a CloudEvent.
    Publish {
        channels: Vec<ChannelName>,
        event: &'a RawValue,
    },
}

#[derive(Debug)]
pub enum BadRequest {
    /// `type` is not one of the three: the original's `"Invalid Request"` answer.
    UnknownType,
    Invalid(HeraldError),
}

impl From<HeraldError> for BadRequest {
    fn from(e: HeraldError) -> Self {
        BadRequest::Invalid(e)
    }
}

/// The members of a request the dialect reads.
const ENVELOPE: [&str; 3] = ["type", "channels", "event"];

fn bad(message: impl Into<String>) -> HeraldError {
    HeraldError::bad_request(message)
}

fn missing(field: &str) -> HeraldError {
    HeraldError::new(
        ErrorCode::MissingField,
        format!("missing field \"{field}\""),
    )
}

pub fn parse(text: &str) -> Result<Request<'_>, BadRequest> {
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => bad("a request must be a JSON object"),
            Err(e) => HeraldError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")),
        }
        .into());
    }
    let m = json::members(text, &ENVELOPE).map_err(|e| match e {
        json::ObjectError::NotObject => bad("a request must be a JSON object"),
        json::ObjectError::Syntax(e) => {
            HeraldError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
        }
    })?;
    if let Some(field) = m.repeated {
        return Err(bad(json::repeated_message(field)).into());
    }
    let [kind, channels, event] = m.values;
    let kind = json::string(kind.ok_or_else(|| missing("type"))?)
        .ok_or_else(|| bad("\"type\" must be a string"))?;
    let channels = || -> Result<Vec<ChannelName>, HeraldError> {
        let raw = channels.ok_or_else(|| missing("channels"))?;
        // The README allows a bare string as well as an array.
        let names = match json::string(raw) {
            Some(one) => vec![one],
            None => json::strings(raw)
                .ok_or_else(|| bad("\"channels\" must be a string or an array of strings"))?,
        };
        if names.is_empty() {
            return Err(bad("\"channels\" is empty"));
        }
        names.iter().map(|n| ChannelName::parse(n)).collect()
    };
    Ok(match &*kind {
        "subscribe" => Request::Subscribe(channels()?),
        "unsubscribe" => Request::Unsubscribe(channels()?),
        "publish" => {
            let event = event.ok_or_else(|| missing("event"))?;
            validate_event(event)?;
            Request::Publish {
                channels: channels()?,
                event,
            }
        }
        _ => return Err(BadRequest::UnknownType),
    })
}

/// CloudEvents 1.0 JSON format: required context attributes, the types of the optional ones,
/// extension attribute names and values.
pub fn validate_event(raw: &RawValue) -> Result<(), HeraldError> {
    let event: Map<String, Value> = json::unique_object(raw.get()).map_err(|e| match e {
        json::UniqueError::Repeated(key) => bad(format!("event: {}", json::repeated_message(&key))),
        json::UniqueError::Object(json::ObjectError::NotObject) => {
            bad("\"event\" must be a JSON object (a CloudEvent)")
        }
        // Valid JSON already (the request parsed), so: nested past serde's depth limit.
        json::UniqueError::Object(json::ObjectError::Syntax(e)) => {
            bad(format!("\"event\" could not be read: {e}"))
        }
    })?;
    for attr in ["specversion", "id", "source", "type"] {
        match event.get(attr) {
            None => return Err(missing(&format!("event.{attr}"))),
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(bad(format!("event.{attr} must be a non-empty string"))),
        }
    }
    if event["specversion"] != "1.0" {
        return Err(bad("event.specversion must be \"1.0\""));
    }
    for (name, value) in &event {
        match name.as_str() {
            "specversion" | "id" | "source" | "type" | "data" => {}
            "datacontenttype" | "dataschema" | "subject" | "time" | "data_base64" => {
                if !value.is_string() {
                    return Err(bad(format!("event.{name} must be a string")));
                }
            }
            // The original's envelope carried a `meta` object.
            "meta" => {
                if !value.is_object() {
                    return Err(bad("event.meta must be an object"));
                }
            }
            ext => {
                let valid_name = (1..=20).contains(&ext.len())
                    && ext
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !valid_name {
                    return Err(bad(format!(
                        "event attribute {:?}: extension names are 1-20 lowercase letters or digits",
                        herald_core::ids::truncate(ext, 40)
                    )));
                }
                if !(value.is_string() || value.is_number() || value.is_boolean()) {
                    return Err(bad(format!(
                        "event.{ext} must be a string, number or boolean"
                    )));
                }
            }
        }
    }
    if event.contains_key("data") && event.contains_key("data_base64") {
        return Err(bad("event has both data and data_base64"));
    }
    Ok(())
}

/// Whether published data already is a CloudEvent (then it is delivered as it is).
fn is_cloudevent(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Required<'a> {
        #[serde(borrow)]
        specversion: json::Str<'a>,
        #[serde(borrow)]
        id: json::Str<'a>,
        #[serde(borrow)]
        source: json::Str<'a>,
        #[serde(borrow, rename = "type")]
        kind: json::Str<'a>,
    }
    data.first() == Some(&b'{')
        && serde_json::from_slice::<Required>(data).is_ok_and(|r| {
            !r.specversion.0.is_empty()
                && !r.id.0.is_empty()
                && !r.source.0.is_empty()
                && !r.kind.0.is_empty()
        })
}

fn line_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(ws::MAX_HEADER + 256);
    buf.extend_from_slice(&[0u8; ws::MAX_HEADER]);
    f(&mut buf);
    buf.push(b'\n');
    ws::finish_frame(buf, ws::OP_TEXT)
}

/// Wraps data that is not a CloudEvent into one.
fn wrap(b: &mut Vec<u8>, id: &str, kind: &str, subject: Option<&str>, data: &[u8]) {
    let _ = write!(b, "{{\"specversion\":\"1.0\",\"id\":");
    serde_json::to_writer(&mut *b, id).expect("string");
    let _ = write!(b, ",\"source\":\"herald\",\"type\":\"{kind}\"");
    if let Some(subject) = subject {
        let _ = write!(b, ",\"subject\":\"{subject}\"");
    }
    b.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
    b.extend_from_slice(data);
    b.push(b'}');
}

/// `"Invalid Request"\n`: the original's answer to an unknown `type`.
pub fn invalid_request_frame() -> Bytes {
    line_frame(|b| b.extend_from_slice(b"\"Invalid Request\""))
}

/// `{"type":"error","code":"...","message":"..."}\n`
pub fn error_frame(error: &HeraldError) -> Bytes {
    line_frame(|b| {
        let _ = write!(
            b,
            "{{\"type\":\"error\",\"code\":\"{}\",\"message\":",
            error.code
        );
        serde_json::to_writer(&mut *b, &error.message).expect("string");
        b.push(b'}');
    })
}

pub struct EventualWs;

pub static EVENTUAL_WS: EventualWs = EventualWs;

impl WireFormat for EventualWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    fn message(&self, m: &Message) -> Bytes {
        line_frame(|b| {
            if is_cloudevent(&m.data) {
                b.extend_from_slice(&m.data);
            } else {
                let id = format!("{}:{}:{}", m.channel, m.epoch, m.offset);
                wrap(b, &id, "herald.message", Some(m.channel.as_str()), &m.data);
            }
        })
    }

    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        line_frame(|b| {
            if is_cloudevent(data) {
                b.extend_from_slice(data);
            } else {
                wrap(
                    b,
                    &ClientId::random().to_string(),
                    "herald.direct",
                    None,
                    data,
                );
            }
        })
    }

    /// The original had no such notice.
    fn unsubscribed(&self, _channel: &ChannelName, _reason: &str) -> Option<Bytes> {
        None
    }

    fn keepalive(&self) -> Bytes {
        ws::ping_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Bytes) -> &str {
        let start = if frame[1] == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..]).unwrap()
    }

    const EVENT: &str =
        r#"{"specversion":"1.0","id":"1","source":"/sensors/1","type":"temp","data":{"c":21.5}}"#;

    #[test]
    fn parses_requests_with_string_or_array_channels() {
        assert!(
            matches!(parse(r#"{"type":"subscribe","channels":["a","b"]}"#), Ok(Request::Subscribe(c)) if c.len() == 2)
        );
        assert!(
            matches!(parse(r#"{"type":"subscribe","channels":"tempUpdates"}"#), Ok(Request::Subscribe(c)) if c.len() == 1)
        );
        let publish = format!(r#"{{"type":"publish","channels":["a"],"event":{EVENT}}}"#);
        assert!(matches!(parse(&publish), Ok(Request::Publish { .. })));
        assert!(matches!(
            parse(r#"{"type":"dance","channels":["a"]}"#),
            Err(BadRequest::UnknownType)
        ));
    }

    #[test]
    fn bad_input_gets_precise_errors() {
        let cases = [
            ("nope", ErrorCode::InvalidJson),
            ("[1]", ErrorCode::BadRequest),
            (r#"{"channels":["a"]}"#, ErrorCode::MissingField),
            (r#"{"type":"subscribe"}"#, ErrorCode::MissingField),
            (
                r#"{"type":"subscribe","channels":[1]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"subscribe","channels":["a b"]}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"type":"publish","channels":["a"]}"#,
                ErrorCode::MissingField,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"id":"1","source":"s","type":"t"}}"#,
                ErrorCode::MissingField,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"0.3","id":"1","source":"s","type":"t"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":7,"source":"s","type":"t"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","time":5}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","ext":{"o":1}}}"#,
                ErrorCode::BadRequest,
            ),
            // An empty extension name (found by fuzzing: it passed as "at most 20
            // lowercase letters or digits").
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","":"1"}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"publish","channels":["a"],"event":{"specversion":"1.0","id":"1","source":"s","type":"t","abcdefghij0123456789x":"1"}}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (text, code) in cases {
            match parse(text) {
                Err(BadRequest::Invalid(e)) => assert_eq!(e.code, code, "{text}: {}", e.message),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// An extension attribute's name has 1 to 20 lowercase letters or digits: an empty one
    /// is refused like any other bad name (found by fuzzing, `fuzz/fuzz_targets/eventual.rs`).
    #[test]
    fn an_empty_extension_name_is_refused() {
        let text = r#"{"type":"publish","channels":"a","event":{"specversion":"1.0","id":"x","source":"s","type":"t","":"1"}}"#;
        match parse(text) {
            Err(BadRequest::Invalid(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("extension names"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_nested_too_deep_says_so() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let text = format!(
            r#"{{"type":"publish","channels":"a","event":{{"specversion":"1.0","id":"x","source":"s","type":"t","data":{deep}}}}}"#
        );
        match parse(&text) {
            Err(BadRequest::Invalid(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("could not be read"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deliveries_are_the_cloudevent_itself() {
        let m = Message {
            channel: ChannelName::parse("a").unwrap(),
            offset: 3,
            epoch: "ep".into(),
            from: None,
            data: Bytes::from_static(EVENT.as_bytes()),
            time_ms: 0,
        };
        assert_eq!(text(&EVENTUAL_WS.message(&m)), format!("{EVENT}\n"));
        let m = Message {
            data: Bytes::from_static(b"{\"n\":1}"),
            time_ms: 0,
            ..m
        };
        let v: Value = serde_json::from_str(text(&EVENTUAL_WS.message(&m))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"specversion":"1.0","id":"a:ep:3","source":"herald","type":"herald.message","subject":"a","datacontenttype":"application/json","data":{"n":1}})
        );
        assert_eq!(text(&invalid_request_frame()), "\"Invalid Request\"\n");
    }
}
