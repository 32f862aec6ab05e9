//! The SimplySocket dialect (`herald_protocol::simplysocket`): room actions, and its
//! outbound objects.
//!
//! Input: one byte choosing the mode, then the text. Asserts:
//! - a parsed action is what serde_json reads in the same text: `join-room` / `leave-room` /
//!   `room-presence` name `message_body.roomname` (a valid channel) and a player limit of at
//!   least 1; any other action keeps its body (unchanged JSON), its non-empty `target` and
//!   `IsTargetClient` (any of its spellings);
//! - a delivered action, encoded back (`encode`), is JSON in the library's field order with
//!   the same action, body and target;
//! - deliveries are JSON: an action object is passed through as it is, other data wrapped.
#![no_main]

use herald_core::{ClientId, ErrorCode, HeraldError, WireFormat};
use herald_fuzz::{Input, is_json, json, message, ws_payload};
use herald_protocol::simplysocket::{self, Action, SIMPLYSOCKET_WS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    if mode % 2 == 0 {
        action(text);
    } else {
        delivery(text);
    }
});

fn action(text: &str) {
    let parsed = simplysocket::parse(text);
    let Ok(action) = parsed else { return };
    assert!(is_json(text.as_bytes()));
    let Some(v) = serde_json::from_str::<Value>(text).ok() else {
        return;
    };
    let room = |v: &Value| v["message_body"]["roomname"].as_str().map(str::to_string);
    match action {
        Action::JoinRoom {
            room: r,
            player_limit,
        } => {
            assert_eq!(v["action"], "join-room");
            assert_eq!(room(&v).as_deref(), Some(r.as_str()));
            if let Some(limit) = player_limit {
                assert!(limit >= 1);
                assert_eq!(
                    v["message_body"]["playerlimit"].as_u64(),
                    Some(u64::from(limit))
                );
            }
        }
        Action::LeaveRoom { room: r } => {
            assert_eq!(v["action"], "leave-room");
            assert_eq!(room(&v).as_deref(), Some(r.as_str()));
        }
        Action::Presence { room: r } => {
            assert_eq!(v["action"], "room-presence");
            assert_eq!(room(&v).as_deref(), Some(r.as_str()));
        }
        Action::Deliver {
            action,
            body,
            target,
            to_client,
        } => {
            assert!(!action.is_empty() && !target.is_empty());
            assert_eq!(v["action"], action.as_str());
            assert_eq!(v["target"], target.as_str());
            let flag = [
                "is_target_client",
                "IsTargetClient",
                "isTargetClient",
                "istargetclient",
            ]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_bool));
            assert_eq!(to_client, flag.unwrap_or(false));
            if let Some(body) = body
                && let Ok(b) = serde_json::from_str::<Value>(body.get())
            {
                assert_eq!(v["message_body"], b);
            }
            let sender = ClientId::from_bytes([7; 16]).to_string();
            let out = simplysocket::encode(
                &action,
                body.map(|b| b.get().as_bytes()),
                to_client,
                &target,
                &sender,
            );
            let keys = [
                "action",
                "message_body",
                "IsTargetClient",
                "target",
                "sender",
            ];
            if let Some(o) = json(&out) {
                let o = o.as_object().expect("an object");
                assert_eq!(o.keys().map(String::as_str).collect::<Vec<_>>(), keys);
                assert_eq!(o["action"], action.as_str());
                assert_eq!(o["target"], target.as_str());
                assert_eq!(o["IsTargetClient"], to_client);
                assert_eq!(o["sender"], sender.as_str());
                assert_eq!(
                    o["message_body"],
                    v.get("message_body").cloned().unwrap_or_default()
                );
            }
        }
    }
}

fn delivery(text: &str) {
    if !is_json(text.as_bytes()) {
        return;
    }
    let m = message(&mut Input(text.as_bytes()), text.as_bytes());
    let frame = SIMPLYSOCKET_WS.message(&m);
    let out = ws_payload(&frame);
    if out != text.as_bytes()
        && let Some(o) = json(out)
    {
        assert_eq!(o["action"], "push-message");
        assert_eq!(o["target"], m.channel.as_str());
        if let Ok(data) = serde_json::from_str::<Value>(text) {
            assert_eq!(o["message_body"], data);
        }
    }
    json(ws_payload(&SIMPLYSOCKET_WS.direct(m.from, text.as_bytes())));
    let error = HeraldError::new(ErrorCode::BadRequest, text);
    let e = json(ws_payload(&simplysocket::error_frame(
        ClientId::from_bytes([1; 16]),
        &error,
    )))
    .expect("an object");
    assert_eq!(e["action"], "error");
    assert_eq!(e["message_body"]["message"], text);
    let removed = SIMPLYSOCKET_WS
        .unsubscribed(&m.channel, text)
        .expect("a notice");
    let r = json(ws_payload(&removed)).expect("an object");
    assert_eq!(r["message_body"]["reason"], text);
}
