//! The WS-PushServer dialect (`herald_protocol::wspush`): client actions, Gson's string
//! escaping, and its envelopes.
//!
//! Input: one byte choosing the mode, then the text. Asserts:
//! - a client action is what serde_json reads in the same text (`messageType`, `action`,
//!   `uuid` a client id, `data.channel`), and text that is not JSON is refused as bad JSON;
//! - `gson_str` writes a JSON string holding exactly the text, with none of `<>&='` left
//!   bare (as Gson writes them);
//! - envelopes, errors and pushes are JSON, with the message and data as given.
#![no_main]

use herald_core::{ChannelName, ClientId, WireFormat};
use herald_fuzz::{Input, channel, is_json, json, message, ws_payload};
use herald_protocol::wspush::{self, ClientAction, Refused, WSPUSH_WS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    if input.byte() % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(input.rest()) {
            client_action(text);
        }
    } else {
        envelopes(&mut input);
    }
});

fn client_action(text: &str) {
    let value: Option<Value> = serde_json::from_str(text).ok();
    match wspush::parse_client(text) {
        Ok(action) => {
            assert!(is_json(text.as_bytes()));
            let Some(v) = value else { return };
            // The original's schema wants an object (serde would read a struct from an array).
            assert!(v.is_object(), "{v}");
            let uuid = v.get("uuid").and_then(Value::as_str).map(str::to_string);
            match action {
                ClientAction::Subscribe { uuid: u, channel } => {
                    assert_eq!(v["messageType"], "CLIENT_ACTION");
                    assert_eq!(v["action"], "SUBSCRIBE");
                    assert_eq!(v["data"]["channel"], channel.as_str());
                    assert!(u.as_deref().is_none_or(|u| ClientId::parse(u).is_ok()));
                    assert_eq!(u, uuid);
                }
                ClientAction::Unsubscribe { uuid: u, channel } => {
                    assert_eq!(v["messageType"], "CLIENT_ACTION");
                    assert_eq!(v["action"], "UNSUBSCRIBE");
                    assert_eq!(v["data"]["channel"], channel.as_str());
                    assert!(u.as_deref().is_none_or(|u| ClientId::parse(u).is_ok()));
                    assert_eq!(u, uuid);
                }
                ClientAction::Ignored => {
                    assert_ne!(v["messageType"], "CLIENT_ACTION");
                    assert!(v["messageType"].is_string());
                }
            }
        }
        Err(Refused::BadJson) => assert!(value.is_none()),
        Err(Refused::Invalid) => {}
    }
}

fn gson(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    wspush::gson_str(&mut out, s);
    out
}

fn envelopes(input: &mut Input) {
    let text = input.string();
    let written = gson(&text);
    assert!(!written.iter().any(|b| b"<>&='".contains(b)), "{written:?}");
    assert_eq!(
        serde_json::from_slice::<String>(&written).ok(),
        Some(text.clone())
    );

    let details = input.string();
    let error = json(&wspush::error(400, &text, &details)).expect("an object");
    assert_eq!(error["messageType"], "ERROR");
    assert_eq!(error["code"], 400);
    assert_eq!(error["message"], text.as_str());
    assert_eq!(error["data"]["errorDetails"], details.as_str());

    let channels: Vec<ChannelName> = (0..input.byte() % 4)
        .map(|_| channel(&input.string()))
        .collect();
    let id = ClientId::from_bytes(input.u64().to_le_bytes().repeat(2).try_into().unwrap());
    let client = json(&wspush::client_data(id, &channels)).expect("an object");
    assert_eq!(client["uuid"], id.to_string().as_str());
    let listed: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
    assert_eq!(client["subscribedChannels"], serde_json::json!(listed));

    // A publication: Herald data (any JSON, or published text) as the push message.
    let data = input.rest();
    // Herald data is JSON text: UTF-8 (WebSocket text frames, HTTP bodies read as text).
    let data = if is_json(data) && std::str::from_utf8(data).is_ok() {
        data.to_vec()
    } else {
        wspush::text_to_data(&text).to_vec()
    };
    let m = message(&mut Input(&data), &data);
    let shared = json(&WSPUSH_WS.message(&m)).expect("an object");
    assert_eq!(shared["channel"], m.channel.as_str());
    assert!(shared["message"].is_string());
    let direct = json(ws_payload(&WSPUSH_WS.direct(None, &data))).expect("an object");
    assert_eq!(direct["messageType"], "CLIENT_PUSH");
    assert_eq!(direct["data"]["message"], shared["message"]);
    if data.first() == Some(&b'"') {
        match json(&data) {
            // A JSON string: its content is the message.
            Some(content) => assert_eq!(shared["message"], content),
            // One serde_json cannot hold (an escaped lone surrogate, which no UTF-8 text
            // has): the message is the JSON text as it was sent.
            None => assert_eq!(shared["message"], String::from_utf8_lossy(&data).as_ref()),
        }
    }
}
