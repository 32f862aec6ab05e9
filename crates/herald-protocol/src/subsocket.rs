//! The SubSocket dialect (first seed, `../shared/seeds/WIRE.md` §1): plain-text,
//! space-delimited WebSocket commands and frames.
//!
//! Client → server: `sub <channel>`, `unsub <channel>`, `admin-token <secret>`,
//! `pub <channel> <message>`, `broadcast <message>`, `message <uuid> <message>`, and (new in
//! Herald) `kick <uuid>`. Server → client: `<channel> <sender> <message>`,
//! `__broadcast <sender> <message>`, `__system <sender> <message>`,
//! `__notify <uuid> CONNECTED|DISCONNECTED` (admins only), and (new) `__error <code> <message>`
//! for bad input, which the original silently ignored.
//!
//! Payloads: SubSocket messages are text; Herald's are JSON. Text published here becomes a JSON
//! string; a JSON string delivered here is sent as its text, any other JSON value as its JSON.

use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, HeraldError, Message, WireFormat};

use crate::ws;

pub const DIALECT: &str = "subsocket";

/// The sender shown for messages that no client sent (HTTP API, server).
pub const NO_SENDER: &str = "00000000-0000-0000-0000-000000000000";

/// One parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Sub(&'a str),
    Unsub(&'a str),
    AdminToken(&'a str),
    Pub {
        channel: &'a str,
        message: &'a str,
    },
    Broadcast(&'a str),
    Message {
        to: &'a str,
        message: &'a str,
    },
    Kick(&'a str),
    /// `ban <uuid> [seconds]`: ban the address that client came from.
    Ban {
        id: &'a str,
        seconds: Option<u64>,
    },
}

/// Why a frame is not a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Unparsed<'a> {
    /// The original ignored it (e.g. `pub ch` without a message part): stay silent.
    Ignored,
    Unknown(&'a str),
    MissingArgument(&'static str),
    /// An argument is there but not what the command takes: the message says what is.
    BadArgument(&'static str),
}

/// Splits a frame at its first space into a command and its argument, as the original did.
pub fn parse(frame: &str) -> Result<Command<'_>, Unparsed<'_>> {
    let (cmd, rest) = match frame.split_once(' ') {
        Some((c, r)) => (c, Some(r)),
        None => (frame, None),
    };
    let arg = |what: &'static str| {
        rest.filter(|r| !r.is_empty())
            .ok_or(Unparsed::MissingArgument(what))
    };
    Ok(match cmd {
        "sub" => Command::Sub(arg("channel")?),
        "unsub" => Command::Unsub(arg("channel")?),
        "admin-token" => Command::AdminToken(arg("token")?),
        "broadcast" => Command::Broadcast(rest.unwrap_or_default()),
        "kick" => Command::Kick(arg("client id")?),
        "ban" => {
            let args = arg("client id")?;
            let (id, seconds) = match args.split_once(' ') {
                Some((id, s)) => (
                    id,
                    Some(s.trim().parse().map_err(|_| {
                        Unparsed::BadArgument(
                            "seconds must be a whole number from 0 to 18446744073709551615",
                        )
                    })?),
                ),
                None => (args, None),
            };
            Command::Ban { id, seconds }
        }
        "pub" => {
            // `pub ch` (no message part) was ignored; `pub ch ` sends an empty message.
            let (channel, message) = arg("channel")?.split_once(' ').ok_or(Unparsed::Ignored)?;
            Command::Pub { channel, message }
        }
        "message" => {
            let (to, message) = arg("client id")?.split_once(' ').ok_or(Unparsed::Ignored)?;
            Command::Message { to, message }
        }
        other => return Err(Unparsed::Unknown(other)),
    })
}

/// A SubSocket message as Herald JSON data (a JSON string).
pub fn text_to_data(text: &str) -> Bytes {
    Bytes::from(serde_json::to_string(text).expect("a string serializes"))
}

/// Herald JSON data as SubSocket text: a JSON string's content, else the JSON itself.
fn data_to_text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    crate::json::data_text(data)
}

fn text_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(ws::MAX_HEADER + 128);
    buf.extend_from_slice(&[0u8; ws::MAX_HEADER]);
    f(&mut buf);
    ws::finish_frame(buf, ws::OP_TEXT)
}

fn sender(from: Option<ClientId>) -> String {
    from.map_or_else(|| NO_SENDER.to_string(), |id| id.to_string())
}

/// `__error <code> <message>`: Herald's answer to a bad command.
pub fn error_frame(error: &HeraldError) -> Bytes {
    text_frame(|b| {
        let _ = write!(b, "__error {} {}", error.code, error.message);
    })
}

/// SubSocket over WebSocket.
pub struct SubSocketWs;

pub static SUBSOCKET_WS: SubSocketWs = SubSocketWs;

impl WireFormat for SubSocketWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    fn message(&self, m: &Message) -> Bytes {
        text_frame(|b| {
            let _ = write!(
                b,
                "{} {} {}",
                m.channel,
                sender(m.from),
                data_to_text(&m.data)
            );
        })
    }

    fn direct(&self, from: Option<ClientId>, data: &[u8]) -> Bytes {
        text_frame(|b| {
            let _ = write!(b, "__system {} {}", sender(from), data_to_text(data));
        })
    }

    fn broadcast(&self, from: Option<ClientId>, data: &[u8]) -> Bytes {
        text_frame(|b| {
            let _ = write!(b, "__broadcast {} {}", sender(from), data_to_text(data));
        })
    }

    /// The original never told a client it lost a subscription.
    fn unsubscribed(&self, _channel: &ChannelName, _reason: &str) -> Option<Bytes> {
        None
    }

    fn connection_notice(&self, client: ClientId, connected: bool) -> Option<Bytes> {
        let what = if connected {
            "CONNECTED"
        } else {
            "DISCONNECTED"
        };
        Some(text_frame(|b| {
            let _ = write!(b, "__notify {client} {what}");
        }))
    }

    fn keepalive(&self) -> Bytes {
        ws::ping_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Bytes) -> &str {
        std::str::from_utf8(&frame[2..]).unwrap()
    }

    #[test]
    fn parses_commands_like_the_original() {
        assert_eq!(parse("sub news"), Ok(Command::Sub("news")));
        assert_eq!(
            parse("pub news hello there"),
            Ok(Command::Pub {
                channel: "news",
                message: "hello there"
            })
        );
        assert_eq!(
            parse("pub news "),
            Ok(Command::Pub {
                channel: "news",
                message: ""
            })
        );
        assert_eq!(parse("pub news"), Err(Unparsed::Ignored));
        assert_eq!(
            parse("admin-token s3cret"),
            Ok(Command::AdminToken("s3cret"))
        );
        assert_eq!(parse("broadcast hi all"), Ok(Command::Broadcast("hi all")));
        assert_eq!(
            parse("message 9a1b x y"),
            Ok(Command::Message {
                to: "9a1b",
                message: "x y"
            })
        );
        assert_eq!(parse("sub"), Err(Unparsed::MissingArgument("channel")));
        assert!(matches!(
            parse("ban 1bfacd57-3bd7-4ac4-bb61-1f67ca21c641 99999999999999999999"),
            Err(Unparsed::BadArgument(_))
        ));
        assert!(matches!(
            parse("ban 1bfacd57-3bd7-4ac4-bb61-1f67ca21c641 soon"),
            Err(Unparsed::BadArgument(_))
        ));
        assert_eq!(parse("dance now"), Err(Unparsed::Unknown("dance")));
    }

    #[test]
    fn frames_are_byte_exact() {
        let from = ClientId::parse("0b1c2d3e-0000-4000-8000-000000000001").unwrap();
        let m = Message {
            channel: ChannelName::parse("news").unwrap(),
            offset: 1,
            epoch: "e".into(),
            from: Some(from),
            data: text_to_data("hello world"),
            time_ms: 0,
        };
        assert_eq!(
            text(&SUBSOCKET_WS.message(&m)),
            "news 0b1c2d3e-0000-4000-8000-000000000001 hello world"
        );
        let m = Message {
            from: None,
            data: Bytes::from_static(b"{\"a\":1}"),
            time_ms: 0,
            ..m
        };
        assert_eq!(
            text(&SUBSOCKET_WS.message(&m)),
            format!("news {NO_SENDER} {{\"a\":1}}")
        );
        assert_eq!(
            text(&SUBSOCKET_WS.direct(Some(from), b"\"hi\"")),
            format!("__system {from} hi")
        );
        assert_eq!(
            text(&SUBSOCKET_WS.broadcast(None, b"\"hi\"")),
            format!("__broadcast {NO_SENDER} hi")
        );
        assert_eq!(
            text(&SUBSOCKET_WS.connection_notice(from, false).unwrap()),
            format!("__notify {from} DISCONNECTED")
        );
    }
}
