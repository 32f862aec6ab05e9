//! The SimplySocket dialect (fourth seed, WIRE.md §4): rooms over WebSocket, one JSON
//! `{"action","message_body","target","sender","IsTargetClient"}` object per frame.
//!
//! SimplySocket was a library whose wire content its application defined; this dialect is the
//! default room handler WIRE.md suggests: `join-room` / `leave-room` with
//! `message_body.roomname` (and `playerlimit`), `room-presence` (who is in a room), and every
//! other action delivered to the
//! `target` room, or only to the client `target` names when `IsTargetClient` is true, with
//! `sender` filled in by the server. Outbound objects keep the library's exact field order:
//! `{"action","message_body","IsTargetClient","target","sender"}`.

use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, ErrorCode, HeraldError, Message, WireFormat};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{json, ws};

pub const DIALECT: &str = "simplysocket";
/// The room every client joins on connect.
pub const GLOBAL_ROOM: &str = "mesh-global";
/// The sender of server-made actions (the library's name for `mesh-global`'s creator).
pub const SERVER_SENDER: &str = "Gawd";

#[derive(Debug)]
pub enum Action<'a> {
    JoinRoom {
        room: ChannelName,
        player_limit: Option<u32>,
    },
    LeaveRoom {
        room: ChannelName,
    },
    /// `room-presence`: who is in the room (rooms with the `presence` option).
    Presence {
        room: ChannelName,
    },
    /// Any other action: to a room, or to one client.
    Deliver {
        action: String,
        body: Option<&'a RawValue>,
        target: String,
        to_client: bool,
    },
}

#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(default)]
    action: Option<String>,
    #[serde(borrow, default)]
    message_body: Option<&'a RawValue>,
    #[serde(default)]
    target: Option<String>,
    // Go matched field names case-insensitively; accept the spellings clients use.
    #[serde(
        default,
        alias = "IsTargetClient",
        alias = "isTargetClient",
        alias = "istargetclient"
    )]
    is_target_client: Option<bool>,
}

fn bad(message: impl Into<String>) -> HeraldError {
    HeraldError::bad_request(message)
}

pub fn parse(text: &str) -> Result<Action<'_>, HeraldError> {
    if !text.trim_start().starts_with('{') {
        return Err(bad("a message must be a JSON object"));
    }
    let msg: Inbound = serde_json::from_str(text).map_err(|e| match json::repeated_in(&e) {
        Some(field) => bad(json::repeated_message(&field)),
        // Well-formed JSON of the wrong shape (`"action": 5`) is a bad request, as on the
        // native protocol; only text that is not JSON is `invalid_json`.
        None if e.classify() == serde_json::error::Category::Data => {
            bad(format!("invalid message: {e}"))
        }
        None => HeraldError::new(ErrorCode::InvalidJson, format!("invalid message: {e}")),
    })?;
    let action = msg
        .action
        .filter(|a| !a.is_empty())
        .ok_or_else(|| HeraldError::new(ErrorCode::MissingField, "missing \"action\""))?;
    Ok(match action.as_str() {
        "join-room" => {
            let (room, limit) = room_body(msg.message_body, true)?;
            Action::JoinRoom {
                room,
                player_limit: limit,
            }
        }
        "leave-room" => Action::LeaveRoom {
            room: room_body(msg.message_body, false)?.0,
        },
        "room-presence" => Action::Presence {
            room: room_body(msg.message_body, false)?.0,
        },
        _ => Action::Deliver {
            body: msg.message_body,
            target: msg
                .target
                .filter(|t| !t.is_empty())
                .ok_or_else(|| HeraldError::new(ErrorCode::MissingField, "missing \"target\""))?,
            to_client: msg.is_target_client.unwrap_or(false),
            action,
        },
    })
}

/// `message_body` of `join-room` (`roomname`, optional `playerlimit`) or `leave-room`
/// (`roomname`), each error naming what is missing or wrong.
fn room_body(
    body: Option<&RawValue>,
    with_limit: bool,
) -> Result<(ChannelName, Option<u32>), HeraldError> {
    let missing = || HeraldError::new(ErrorCode::MissingField, "missing \"message_body.roomname\"");
    let m = json::members(
        body.ok_or_else(missing)?.get(),
        &["roomname", "playerlimit"],
    )
    .map_err(|_| bad("message_body must be a JSON object with \"roomname\""))?;
    if let Some(field) = m.repeated {
        return Err(bad(format!(
            "message_body: {}",
            json::repeated_message(field)
        )));
    }
    let [roomname, playerlimit] = m.values;
    let room = json::string(roomname.ok_or_else(missing)?)
        .ok_or_else(|| bad("message_body.roomname must be a string"))?;
    let limit = match playerlimit.filter(|_| with_limit) {
        None => None,
        Some(raw) => match serde_json::from_str::<u32>(raw.get()) {
            Ok(n) if n > 0 => Some(n),
            _ if raw.get() == "null" => None,
            _ => {
                return Err(bad(
                    "message_body.playerlimit must be a whole number of at least 1",
                ));
            }
        },
    };
    Ok((ChannelName::parse(&room)?, limit))
}

/// One outbound object in the library's field order.
pub fn encode(
    action: &str,
    body: Option<&[u8]>,
    to_client: bool,
    target: &str,
    sender: &str,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(96 + body.map_or(4, <[u8]>::len));
    b.extend_from_slice(b"{\"action\":");
    serde_json::to_writer(&mut b, action).expect("string");
    b.extend_from_slice(b",\"message_body\":");
    b.extend_from_slice(body.unwrap_or(b"null"));
    let _ = write!(b, ",\"IsTargetClient\":{to_client},\"target\":");
    serde_json::to_writer(&mut b, target).expect("string");
    b.extend_from_slice(b",\"sender\":");
    serde_json::to_writer(&mut b, sender).expect("string");
    b.push(b'}');
    b
}

/// An `error` action for the sender of a refused message.
pub fn error_frame(to: ClientId, error: &HeraldError) -> Bytes {
    let body =
        serde_json::json!({"code": error.code.as_str(), "message": error.message}).to_string();
    frame(&encode(
        "error",
        Some(body.as_bytes()),
        true,
        &to.to_string(),
        SERVER_SENDER,
    ))
}

/// `know-yourself`: tells a client its id.
pub fn know_yourself(client: ClientId) -> Bytes {
    let id = client.to_string();
    let body = format!("{{\"id\":\"{id}\"}}");
    frame(&encode(
        "know-yourself",
        Some(body.as_bytes()),
        true,
        &id,
        SERVER_SENDER,
    ))
}

fn frame(json: &[u8]) -> Bytes {
    ws::frame(ws::OP_TEXT, json)
}

/// Whether `data` is a SimplySocket action object (then it is delivered as it is).
fn is_action(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct HasAction<'a> {
        #[serde(borrow)]
        #[allow(dead_code)]
        action: &'a str,
    }
    data.first() == Some(&b'{') && serde_json::from_slice::<HasAction>(data).is_ok()
}

pub struct SimplySocketWs;

pub static SIMPLYSOCKET_WS: SimplySocketWs = SimplySocketWs;

impl WireFormat for SimplySocketWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    fn message(&self, m: &Message) -> Bytes {
        if is_action(&m.data) {
            return frame(&m.data);
        }
        let sender = m
            .from
            .map_or_else(|| SERVER_SENDER.to_string(), |id| id.to_string());
        frame(&encode(
            "push-message",
            Some(&m.data),
            false,
            m.channel.as_str(),
            &sender,
        ))
    }

    fn direct(&self, from: Option<ClientId>, data: &[u8]) -> Bytes {
        if is_action(data) {
            return frame(data);
        }
        let sender = from.map_or_else(|| SERVER_SENDER.to_string(), |id| id.to_string());
        frame(&encode("push-message", Some(data), true, "", &sender))
    }

    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes> {
        let body = serde_json::json!({"roomname": channel.as_str(), "reason": reason}).to_string();
        Some(frame(&encode(
            "removed-from-room",
            Some(body.as_bytes()),
            false,
            channel.as_str(),
            SERVER_SENDER,
        )))
    }

    fn keepalive(&self) -> Bytes {
        ws::ping_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_in_the_library_field_order() {
        let out = encode(
            "send-message",
            Some(br#"{"message":"hi"}"#),
            false,
            "room1",
            "abc",
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"action":"send-message","message_body":{"message":"hi"},"IsTargetClient":false,"target":"room1","sender":"abc"}"#
        );
    }

    #[test]
    fn parses_actions() {
        let a = parse(r#"{"action":"join-room","message_body":{"roomname":"r1","playerlimit":2},"target":"mesh-global"}"#).unwrap();
        assert!(matches!(
            a,
            Action::JoinRoom {
                player_limit: Some(2),
                ..
            }
        ));
        let a = parse(r#"{"action":"leave-room","message_body":{"roomname":"r1"}}"#).unwrap();
        assert!(matches!(a, Action::LeaveRoom { .. }));
        let a = parse(r#"{"action":"send-message","message_body":{"message":"x"},"target":"r1","IsTargetClient":false}"#).unwrap();
        assert!(matches!(
            a,
            Action::Deliver {
                to_client: false,
                ..
            }
        ));
        let a = parse(r#"{"action":"poke","target":"u","istargetclient":true}"#).unwrap();
        assert!(matches!(
            a,
            Action::Deliver {
                to_client: true,
                ..
            }
        ));
        for bad in [
            "{",
            "[]",
            "{}",
            r#"{"action":"x"}"#,
            r#"{"action":"join-room"}"#,
            r#"{"action":"join-room","message_body":{"roomname":"a b"}}"#,
            r#"{"action":"join-room","message_body":{"roomname":"a","playerlimit":0}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let code = |text: &str| parse(text).err().map(|e| e.code);
        assert_eq!(code(r#"{"action":5}"#), Some(ErrorCode::BadRequest));
        assert_eq!(code(r#"{"action":"#), Some(ErrorCode::InvalidJson));
    }

    /// Each refusal says what is wrong with the message (issue 9, items 5, 6 and 14).
    #[test]
    fn room_errors_name_what_is_missing_or_wrong() {
        let message = |text: &str| parse(text).unwrap_err().message;
        for text in [
            r#"{"action":"leave-room"}"#,
            r#"{"action":"leave-room","message_body":{}}"#,
            r#"{"action":"leave-room","message_body":{"room":"r1"}}"#,
            r#"{"action":"join-room","message_body":{"playerlimit":2}}"#,
        ] {
            assert_eq!(message(text), "missing \"message_body.roomname\"", "{text}");
        }
        assert!(!message(r#"{"action":"leave-room","message_body":{}}"#).contains("playerlimit"));
        assert_eq!(
            message(r#"{"action":"leave-room","message_body":{"roomname":7}}"#),
            "message_body.roomname must be a string"
        );
        assert_eq!(
            message(r#"{"action":"join-room","message_body":{"roomname":"a","playerlimit":"x"}}"#),
            "message_body.playerlimit must be a whole number of at least 1"
        );
        assert_eq!(
            message(r#"{"action":"join-room","action":"leave-room"}"#),
            "field \"action\" appears more than once"
        );
        // Escapes are ordinary JSON.
        let a =
            parse(r#"{"action":"leave-room","message_body":{"room\u006eame":"r\/1"}}"#).unwrap();
        assert!(matches!(a, Action::LeaveRoom { room } if room.as_str() == "r/1"));
        let a = parse(r#"{"action":"leave-room","message_body":{"roomname":"r\u0031"}}"#).unwrap();
        assert!(matches!(a, Action::LeaveRoom { room } if room.as_str() == "r1"));
    }
}
