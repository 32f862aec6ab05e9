//! The SubSocket dialect (`herald_protocol::subsocket`): space-delimited text commands, and
//! its text deliveries.
//!
//! Input: one byte choosing the mode, then the frame. Asserts:
//! - a parsed command is the frame it came from: printed back (`sub <channel>`,
//!   `pub <channel> <message>`, ...) it is the same text, and its parts are pieces of it;
//! - refusals are the original's: only an unknown command word or a missing argument;
//! - published text round-trips through Herald data, and every delivery (publication,
//!   direct, broadcast, notice, error) is one text frame that ends with the text as sent.
#![no_main]

use herald_core::{ClientId, ErrorCode, HeraldError, WireFormat};
use herald_fuzz::{Input, message, ws_payload};
use herald_protocol::subsocket::{self, Command, NO_SENDER, SUBSOCKET_WS, Unparsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    if input.byte() % 2 == 0 {
        if let Ok(frame) = std::str::from_utf8(input.rest()) {
            command(frame);
        }
    } else {
        deliveries(&mut input);
    }
});

fn command(frame: &str) {
    match subsocket::parse(frame) {
        Ok(command) => {
            let printed = match &command {
                Command::Sub(c) => format!("sub {c}"),
                Command::Unsub(c) => format!("unsub {c}"),
                Command::AdminToken(t) => format!("admin-token {t}"),
                Command::Pub { channel, message } => format!("pub {channel} {message}"),
                Command::Broadcast(m) if frame == "broadcast" => {
                    assert!(m.is_empty());
                    "broadcast".to_string()
                }
                Command::Broadcast(m) => format!("broadcast {m}"),
                Command::Message { to, message } => format!("message {to} {message}"),
                Command::Kick(id) => format!("kick {id}"),
                Command::Ban { id, seconds } => {
                    assert!(!id.contains(' '));
                    match seconds {
                        None => format!("ban {id}"),
                        Some(s) => {
                            let given = &frame[5 + id.len()..];
                            assert_eq!(given.trim().parse::<u64>(), Ok(*s));
                            format!("ban {id} {given}")
                        }
                    }
                }
            };
            assert_eq!(printed, frame);
            match command {
                Command::Sub(a) | Command::Unsub(a) | Command::AdminToken(a) | Command::Kick(a) => {
                    assert!(!a.is_empty())
                }
                Command::Pub { channel, .. } => assert!(!channel.contains(' ')),
                Command::Message { to, .. } => assert!(!to.contains(' ')),
                _ => {}
            }
        }
        Err(Unparsed::Unknown(word)) => {
            assert!(!word.contains(' '));
            assert!(frame.starts_with(word));
        }
        Err(Unparsed::MissingArgument(_))
        | Err(Unparsed::BadArgument(_))
        | Err(Unparsed::Ignored) => {}
    }
}

fn deliveries(input: &mut Input) {
    let from = input
        .bool()
        .then(|| ClientId::from_bytes(input.u64().to_le_bytes().repeat(2).try_into().unwrap()));
    let sender = from.map_or(NO_SENDER.to_string(), |id| id.to_string());
    let text = input.string();
    let data = subsocket::text_to_data(&text);
    let m = message(input, &data);
    let payload = |frame: &[u8]| String::from_utf8(ws_payload(frame).to_vec()).expect("text");

    let got = payload(&SUBSOCKET_WS.message(&herald_core::Message { from, ..m.clone() }));
    assert_eq!(got, format!("{} {sender} {text}", m.channel));
    assert_eq!(
        payload(&SUBSOCKET_WS.direct(from, &data)),
        format!("__system {sender} {text}")
    );
    assert_eq!(
        payload(&SUBSOCKET_WS.broadcast(from, &data)),
        format!("__broadcast {sender} {text}")
    );
    // Data that is not a JSON string (from another protocol) is delivered as its JSON.
    let other = input.rest();
    if let Ok(other) = std::str::from_utf8(other)
        && !other.starts_with('"')
    {
        assert_eq!(
            payload(&SUBSOCKET_WS.direct(None, other.as_bytes())),
            format!("__system {NO_SENDER} {other}")
        );
    }
    let error = HeraldError::new(ErrorCode::BadRequest, text.clone());
    assert_eq!(
        payload(&subsocket::error_frame(&error)),
        format!("__error bad_request {text}")
    );
}
