//! The WS-PushServer dialect (fifth seed, WIRE.md §5): JSON envelopes
//! `{"messageType","code","message","data"}` on a WebSocket (acks, pushes, errors) and on an
//! HTTP API (`/channel/create|ping|delete`, `/push`, `/sysadmin`). Strings are escaped as the
//! original's Gson did (`<`, `>`, `&`, `=` and `'` as `\u00XX`).
//!
//! A push carries the recipient's own uuid and subscription list, so the payload
//! (`"pushMessage":{...}`) is encoded once per publication and each recipient's envelope is
//! built around it ([`WireFormat::for_recipient`]).

use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientHandle, ClientId, Message, WireFormat};
use serde::Deserialize;

use crate::ws;

pub const DIALECT: &str = "wspush";

/// A JSON string as Gson writes it.
pub fn gson_str(out: &mut Vec<u8>, s: &str) {
    let mut plain = Vec::with_capacity(s.len() + 2);
    serde_json::to_writer(&mut plain, s).expect("string");
    for &b in &plain {
        match b {
            b'<' | b'>' | b'&' | b'=' | b'\'' => {
                let _ = write!(out, "\\u{:04x}", b);
            }
            _ => out.push(b),
        }
    }
}

/// `{"messageType":..,"code":..,"message":..,"data":<data>}` (data: raw JSON).
pub fn envelope(message_type: &str, code: u16, message: &str, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + data.len());
    let _ = write!(
        b,
        "{{\"messageType\":\"{message_type}\",\"code\":{code},\"message\":"
    );
    gson_str(&mut b, message);
    b.extend_from_slice(b",\"data\":");
    b.extend_from_slice(data);
    b.push(b'}');
    b
}

/// An `ERROR` envelope with `{"errorDetails": details}`.
pub fn error(code: u16, message: &str, details: &str) -> Vec<u8> {
    let mut data = b"{\"errorDetails\":".to_vec();
    gson_str(&mut data, details);
    data.push(b'}');
    envelope("ERROR", code, message, &data)
}

/// `{"uuid":..,"subscribedChannels":[..]}`
pub fn client_data(id: ClientId, channels: &[ChannelName]) -> Vec<u8> {
    let mut b = format!("{{\"uuid\":\"{id}\",\"subscribedChannels\":").into_bytes();
    b.extend_from_slice(&channel_list(channels));
    b.push(b'}');
    b
}

/// A JSON array of channel names (kept per client for push envelopes).
pub fn channel_list(channels: &[ChannelName]) -> Bytes {
    let mut b = vec![b'['];
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        gson_str(&mut b, c.as_str());
    }
    b.push(b']');
    Bytes::from(b)
}

pub fn ws_frame(json: &[u8]) -> Bytes {
    ws::frame(ws::OP_TEXT, json)
}

/// A client's WebSocket message.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction {
    Subscribe {
        uuid: Option<String>,
        channel: String,
    },
    Unsubscribe {
        uuid: Option<String>,
        channel: String,
    },
    /// Other message types (`ERROR`, `CLIENT_ACK`, ...) are ignored, as in the original.
    Ignored,
}

/// Why a WebSocket message was refused: `"Bad JSON"` or `"Invalid message"` (400).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    BadJson,
    Invalid,
}

pub fn parse_client(text: &str) -> Result<ClientAction, Refused> {
    #[derive(Deserialize)]
    struct Inbound<'a> {
        #[serde(rename = "messageType")]
        message_type: String,
        #[serde(default)]
        uuid: Option<String>,
        #[serde(default)]
        action: Option<String>,
        #[serde(default, borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    #[derive(Deserialize)]
    struct ChannelData {
        channel: String,
    }
    // serde reads a struct from a JSON array too; the original's schema wants objects.
    let object = |json: &str| {
        json.trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
    };
    if !object(text) {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Refused::Invalid,
            Err(_) => Refused::BadJson,
        });
    }
    // Read straight into the struct: serde refuses a repeated field, as every codec does.
    let msg: Inbound = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refused::Invalid,
        _ => Refused::BadJson,
    })?;
    if msg.message_type != "CLIENT_ACTION" {
        return Ok(ClientAction::Ignored);
    }
    // The schema required a uuid; a missing one is inferred from the connection (the
    // original's own JS client omitted it).
    if msg.uuid.as_deref().is_some_and(|u| uuid_like(u).is_none()) {
        return Err(Refused::Invalid);
    }
    let channel = msg
        .data
        .filter(|d| object(d.get()))
        .and_then(|d| serde_json::from_str::<ChannelData>(d.get()).ok())
        .ok_or(Refused::Invalid)?
        .channel;
    match msg.action.as_deref() {
        Some("SUBSCRIBE") => Ok(ClientAction::Subscribe {
            uuid: msg.uuid,
            channel,
        }),
        Some("UNSUBSCRIBE") => Ok(ClientAction::Unsubscribe {
            uuid: msg.uuid,
            channel,
        }),
        _ => Err(Refused::Invalid),
    }
}

fn uuid_like(s: &str) -> Option<ClientId> {
    ClientId::parse(s).ok()
}

/// Herald JSON data as a push message string: a JSON string's content, else the JSON.
fn data_to_text(data: &[u8]) -> String {
    crate::json::data_text(data).into_owned()
}

/// A push message as Herald JSON data.
pub fn text_to_data(text: &str) -> Bytes {
    Bytes::from(serde_json::to_string(text).expect("string"))
}

pub struct WsPushWs;

pub static WSPUSH_WS: WsPushWs = WsPushWs;

impl WireFormat for WsPushWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    /// The shared part: `{"channel":..,"message":..}`, framed per recipient.
    fn message(&self, m: &Message) -> Bytes {
        let mut b = b"{\"channel\":".to_vec();
        gson_str(&mut b, m.channel.as_str());
        b.extend_from_slice(b",\"message\":");
        gson_str(&mut b, &data_to_text(&m.data));
        b.push(b'}');
        Bytes::from(b)
    }

    fn for_recipient(&self, shared: &Bytes, client: &ClientHandle) -> Bytes {
        let channels = client.format_state.lock().clone();
        let mut data = format!("{{\"uuid\":\"{}\",\"subscribedChannels\":", client.id).into_bytes();
        data.extend_from_slice(if channels.is_empty() {
            b"[]"
        } else {
            &channels
        });
        data.extend_from_slice(b",\"pushMessage\":");
        data.extend_from_slice(shared);
        data.push(b'}');
        ws_frame(&envelope("CLIENT_PUSH", 200, "Push Message", &data))
    }

    /// Direct messages arrive as pushes without a channel.
    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        let mut b = b"{\"channel\":null,\"message\":".to_vec();
        gson_str(&mut b, &data_to_text(data));
        b.push(b'}');
        ws_frame(&envelope("CLIENT_PUSH", 200, "Push Message", &b))
    }

    /// Deletion and removal were silent in the original.
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

    /// Found by the `wspush` fuzz target (third long run): data that is a JSON string with an
    /// escaped lone surrogate (`"\udff0"`, JSON by the grammar, but no UTF-8 text holds it)
    /// cannot be decoded; its push message is the JSON text as sent, nothing lost.
    #[test]
    fn a_string_no_utf8_text_holds_is_pushed_as_sent() {
        assert_eq!(data_to_text(br#""\udFF02i4""#), r#""\udFF02i4""#);
        assert_eq!(data_to_text(br#""\ud83d\ude00!""#), "\u{1F600}!");
        assert_eq!(data_to_text(br#""plain""#), "plain");
        assert_eq!(data_to_text(br#"{"a":1}"#), r#"{"a":1}"#);
    }

    /// Found by the `wspush` fuzz target (long run): serde reads a struct from a JSON array
    /// too, so `["CLIENT_ACTION",null,"SUBSCRIBE",{"channel":"x"}]` subscribed. The original's
    /// schema wants an object: anything else that is JSON is an invalid message.
    #[test]
    fn only_an_object_is_a_message() {
        for text in [
            r#"["CLIENT_ACTION",null,"SUBSCRIBE",{"channel":"x"}]"#,
            r#"{"messageType":"CLIENT_ACTION","action":"SUBSCRIBE","data":["x"]}"#,
            "[\r\":+\"\r]",
            "[]",
            r#""CLIENT_ACTION""#,
            "1",
            "null",
        ] {
            assert_eq!(parse_client(text), Err(Refused::Invalid), "{text}");
        }
        for text in ["[", "", "nope", "{"] {
            assert_eq!(parse_client(text), Err(Refused::BadJson), "{text}");
        }
        assert_eq!(
            parse_client(
                " \r\n{\"messageType\":\"CLIENT_ACTION\",\"action\":\"SUBSCRIBE\",\"data\":{\"channel\":\"x\"}}"
            ),
            Ok(ClientAction::Subscribe {
                uuid: None,
                channel: "x".into()
            })
        );
    }

    #[test]
    fn gson_escaping() {
        let mut b = Vec::new();
        gson_str(&mut b, "a<b>&c='d'\"");
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#""a\u003cb\u003e\u0026c\u003d\u0027d\u0027\"""#
        );
    }

    #[test]
    fn envelopes_in_the_original_order() {
        let e = error(
            409,
            "Conflict",
            "A WebSocketChannel called \"x\" already exists",
        );
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            r#"{"messageType":"ERROR","code":409,"message":"Conflict","data":{"errorDetails":"A WebSocketChannel called \"x\" already exists"}}"#
        );
    }

    #[test]
    fn parses_client_actions() {
        let id = ClientId::random().to_string();
        let text = format!(
            r#"{{"messageType":"CLIENT_ACTION","uuid":"{id}","action":"SUBSCRIBE","data":{{"channel":"c"}}}}"#
        );
        assert_eq!(
            parse_client(&text),
            Ok(ClientAction::Subscribe {
                uuid: Some(id),
                channel: "c".into()
            })
        );
        assert_eq!(
            parse_client(
                r#"{"messageType":"CLIENT_ACTION","action":"UNSUBSCRIBE","data":{"channel":"c"}}"#
            ),
            Ok(ClientAction::Unsubscribe {
                uuid: None,
                channel: "c".into()
            })
        );
        assert_eq!(
            parse_client(r#"{"messageType":"CLIENT_ACK"}"#),
            Ok(ClientAction::Ignored)
        );
        assert_eq!(parse_client("{nope"), Err(Refused::BadJson));
        assert_eq!(
            parse_client(
                r#"{"messageType":"CLIENT_ACTION","action":"DANCE","data":{"channel":"c"}}"#
            ),
            Err(Refused::Invalid)
        );
        assert_eq!(
            parse_client(
                r#"{"messageType":"CLIENT_ACTION","uuid":"x","action":"SUBSCRIBE","data":{"channel":"c"}}"#
            ),
            Err(Refused::Invalid)
        );
    }
}
