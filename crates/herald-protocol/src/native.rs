//! Herald's native protocol: JSON text frames, documented field by field in docs/protocol.md.
//!
//! Requests are parsed without copying their `data` (it stays a slice of the received frame
//! until the fan-out encodes it into each wire format). Replies and deliveries are written
//! straight into a WebSocket frame buffer.

use std::borrow::Cow;
use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, ErrorCode, HeraldError, Message, WireFormat};
use serde_json::value::RawValue;

use crate::{json, records, ws};

/// Protocol name in listings and the welcome frame.
pub const DIALECT: &str = "native";

/// One parsed request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request's `id`, echoed verbatim in the reply (a JSON number or string).
    pub id: Option<&'a RawValue>,
    pub op: Op<'a>,
}

#[derive(Debug)]
pub enum Op<'a> {
    Subscribe {
        channels: Vec<ChannelName>,
        token: Option<String>,
        /// Admins: subscribe this other client.
        client: Option<ClientId>,
        /// Channels to recover, each from the position the client last saw.
        recover: Vec<(ChannelName, Position)>,
    },
    /// A channel's kept publications.
    History {
        channel: ChannelName,
        since: Option<Position>,
        limit: Option<usize>,
        reverse: bool,
    },
    /// Who is subscribed to a channel.
    Presence {
        channel: ChannelName,
    },
    /// How many are subscribed to a channel.
    PresenceStats {
        channel: ChannelName,
    },
    Unsubscribe {
        channels: Vec<ChannelName>,
        /// Admins: unsubscribe this other client.
        client: Option<ClientId>,
    },
    Publish {
        channels: Vec<ChannelName>,
        data: &'a RawValue,
        to: Option<Vec<ClientId>>,
    },
    Send {
        to: Recipient,
        data: &'a RawValue,
    },
    Ping,
    /// Present a credential: the admin key or a connection token.
    Auth {
        token: String,
    },
    /// One of the admin operations ([`ADMIN_OPS`]); the session parses the rest of the frame.
    Admin {
        op: &'static str,
    },
}

/// A position in a channel's stream, as a client last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Who a direct message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Client(ClientId),
    /// Every connection of a user (admins only).
    User(String),
}

/// Operations only admin connections may use, each mirroring an HTTP API route
/// (docs/protocol.md, "Admin connections").
pub const ADMIN_OPS: &[&str] = &[
    "events",
    "clients",
    "client",
    "user",
    "channels",
    "channel",
    "channel_create",
    "channel_delete",
    "history_delete",
    "kick",
    "ban",
    "unban",
    "bans",
    "stats",
];

/// The envelope every request shares; each field is kept raw until the op says what it means,
/// so a wrong type gets an error naming the field. Unknown fields are ignored (clients may be
/// newer than the server); a field given twice is refused (crate::json).
pub struct Fields<'a> {
    op: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
    channels: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    to: Option<&'a RawValue>,
    token: Option<&'a RawValue>,
    client: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    recover: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    limit: Option<&'a RawValue>,
    reverse: Option<&'a RawValue>,
    /// A field that appeared more than once.
    repeated: Option<&'static str>,
}

const FIELDS: [&str; 13] = [
    "op", "id", "channel", "channels", "data", "to", "token", "client", "user", "recover", "since",
    "limit", "reverse",
];

/// A request that could not be parsed: the error, and the request's id if it had a usable one.
#[derive(Debug)]
pub struct BadRequest<'a> {
    pub id: Option<&'a RawValue>,
    pub error: HeraldError,
}

/// Parses one text frame.
pub fn parse_request(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
    let env = Fields::read(text).map_err(|error| BadRequest { id: None, error })?;
    let id = match env.id {
        Some(raw) if raw.get() == "null" => None,
        Some(raw) if is_valid_id(raw) => Some(raw),
        Some(_) => {
            return Err(BadRequest {
                id: None,
                error: HeraldError::bad_request(
                    "\"id\" must be a number or a string, at most 256 characters of JSON",
                ),
            });
        }
        None => None,
    };
    if let Some(field) = env.repeated {
        return Err(BadRequest {
            id: id.filter(|_| field != "id"),
            error: HeraldError::bad_request(json::repeated_message(field)),
        });
    }
    parse_op(&env)
        .map(|op| Request { id, op })
        .map_err(|error| BadRequest { id, error })
}

impl<'a> Fields<'a> {
    /// Parses a JSON object's fields (also used for HTTP API bodies, so both name channels,
    /// data and recipients the same way and fail with the same errors). A field given twice
    /// is refused.
    pub fn parse(text: &'a str) -> Result<Fields<'a>, HeraldError> {
        let fields = Self::read(text)?;
        match fields.repeated {
            Some(field) => Err(HeraldError::bad_request(json::repeated_message(field))),
            None => Ok(fields),
        }
    }

    /// The fields, with a repeated one noted rather than refused.
    fn read(text: &'a str) -> Result<Fields<'a>, HeraldError> {
        let m = json::members(text, &FIELDS).map_err(|e| match e {
            json::ObjectError::NotObject => {
                HeraldError::bad_request("the body must be a JSON object")
            }
            json::ObjectError::Syntax(e) => {
                HeraldError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
            }
        })?;
        let [
            op,
            id,
            channel,
            channels,
            data,
            to,
            token,
            client,
            user,
            recover,
            since,
            limit,
            reverse,
        ] = m.values;
        Ok(Fields {
            op,
            id,
            channel,
            channels,
            data,
            to,
            token,
            client,
            user,
            recover,
            since,
            limit,
            reverse,
            repeated: m.repeated,
        })
    }

    /// `channels` (array of strings) or `channel` (one string); exactly one must be present.
    pub fn channels(&self) -> Result<Vec<ChannelName>, HeraldError> {
        channel_list(self)
    }

    /// `data`, required.
    pub fn data(&self) -> Result<&'a RawValue, HeraldError> {
        self.data.ok_or_else(|| missing("data"))
    }

    /// `to` as a list of client ids, if present.
    pub fn recipients(&self) -> Result<Option<Vec<ClientId>>, HeraldError> {
        self.to.map(client_list).transpose()
    }
}

fn is_valid_id(raw: &RawValue) -> bool {
    let s = raw.get();
    (s.starts_with('"') || s.starts_with('-') || s.starts_with(|c: char| c.is_ascii_digit()))
        && s.len() <= 256
}

fn parse_op<'a>(env: &Fields<'a>) -> Result<Op<'a>, HeraldError> {
    let op_raw = env.op.ok_or_else(|| missing("op"))?;
    let op =
        json::string(op_raw).ok_or_else(|| HeraldError::bad_request("\"op\" must be a string"))?;
    Ok(match &*op {
        "subscribe" => {
            let channels = channel_list(env)?;
            let recover = match env.recover {
                Some(raw) => recover_field(raw, &channels)?,
                None => Vec::new(),
            };
            Op::Subscribe {
                channels,
                token: env
                    .token
                    .map(|raw| string_field("token", raw))
                    .transpose()?,
                client: env.client.map(client_field).transpose()?,
                recover,
            }
        }
        "history" => Op::History {
            channel: one_channel(env)?,
            since: env.since.map(|raw| position(raw, "since")).transpose()?,
            limit: env
                .limit
                .map(|raw| {
                    serde_json::from_str::<usize>(raw.get()).map_err(|_| {
                        HeraldError::bad_request("\"limit\" must be a positive whole number")
                    })
                })
                .transpose()?,
            reverse: env
                .reverse
                .map(|raw| {
                    serde_json::from_str::<bool>(raw.get())
                        .map_err(|_| HeraldError::bad_request("\"reverse\" must be true or false"))
                })
                .transpose()?
                .unwrap_or(false),
        },
        "presence" => Op::Presence {
            channel: one_channel(env)?,
        },
        "presence_stats" => Op::PresenceStats {
            channel: one_channel(env)?,
        },
        "unsubscribe" => Op::Unsubscribe {
            channels: channel_list(env)?,
            client: env.client.map(client_field).transpose()?,
        },
        "publish" => Op::Publish {
            channels: env.channels()?,
            data: env.data()?,
            to: env.recipients()?,
        },
        "send" => Op::Send {
            to: match (env.to, env.user) {
                (Some(raw), None) => {
                    let s = json::string(raw).ok_or_else(|| {
                        HeraldError::bad_request("\"to\" must be a client id string")
                    })?;
                    Recipient::Client(ClientId::parse(&s)?)
                }
                (None, Some(raw)) => Recipient::User(string_field("user", raw)?),
                (Some(_), Some(_)) => {
                    return Err(HeraldError::bad_request(
                        "give either \"to\" (a client) or \"user\", not both",
                    ));
                }
                (None, None) => return Err(missing("to")),
            },
            data: env.data()?,
        },
        "ping" => Op::Ping,
        "auth" => Op::Auth {
            token: string_field("token", env.token.ok_or_else(|| missing("token"))?)?,
        },
        admin if ADMIN_OPS.contains(&admin) => Op::Admin {
            op: ADMIN_OPS
                .iter()
                .find(|o| **o == admin)
                .copied()
                .unwrap_or_default(),
        },
        other => {
            return Err(HeraldError::new(
                ErrorCode::UnknownOp,
                format!("unknown op {:?}", herald_core::ids::truncate(other, 64)),
            ));
        }
    })
}

fn string_field(name: &str, raw: &RawValue) -> Result<String, HeraldError> {
    json::string(raw)
        .map(Cow::into_owned)
        .ok_or_else(|| HeraldError::bad_request(format!("\"{name}\" must be a string")))
}

fn client_field(raw: &RawValue) -> Result<ClientId, HeraldError> {
    let s = json::string(raw)
        .ok_or_else(|| HeraldError::bad_request("\"client\" must be a client id string"))?;
    ClientId::parse(&s)
}

fn missing(field: &str) -> HeraldError {
    HeraldError::new(
        ErrorCode::MissingField,
        format!("missing field \"{field}\""),
    )
}

/// `channels` (array of strings) or `channel` (one string); exactly one must be present.
fn channel_list(env: &Fields) -> Result<Vec<ChannelName>, HeraldError> {
    let names = match (env.channels, env.channel) {
        (Some(raw), None) => json::strings(raw)
            .ok_or_else(|| HeraldError::bad_request("\"channels\" must be an array of strings"))?,
        (None, Some(raw)) => vec![
            json::string(raw)
                .ok_or_else(|| HeraldError::bad_request("\"channel\" must be a string"))?,
        ],
        (Some(_), Some(_)) => {
            return Err(HeraldError::bad_request(
                "give either \"channel\" or \"channels\", not both",
            ));
        }
        (None, None) => return Err(missing("channels")),
    };
    if names.is_empty() {
        return Err(HeraldError::bad_request("\"channels\" is empty"));
    }
    names.iter().map(|n| ChannelName::parse(n)).collect()
}

/// The one channel an op is about (`channel`).
fn one_channel(env: &Fields) -> Result<ChannelName, HeraldError> {
    let raw = env.channel.ok_or_else(|| missing("channel"))?;
    let name = json::string(raw)
        .ok_or_else(|| HeraldError::bad_request("\"channel\" must be a string"))?;
    ChannelName::parse(&name)
}

/// `{"epoch":"…","offset":N}`.
fn position(raw: &RawValue, field: &str) -> Result<Position, HeraldError> {
    let bad = || {
        HeraldError::bad_request(format!(
            "\"{field}\" must be {{\"epoch\": string, \"offset\": whole number}}"
        ))
    };
    let m = json::members(raw.get(), &["epoch", "offset"]).map_err(|_| bad())?;
    if let Some(repeated) = m.repeated {
        return Err(HeraldError::bad_request(format!(
            "{field}: {}",
            json::repeated_message(repeated)
        )));
    }
    let [epoch, offset] = m.values;
    Ok(Position {
        epoch: json::string(epoch.ok_or_else(bad)?)
            .ok_or_else(bad)?
            .into_owned(),
        offset: serde_json::from_str(offset.ok_or_else(bad)?.get()).map_err(|_| bad())?,
    })
}

/// `recover`: an object from channel names (among those subscribed) to positions.
fn recover_field(
    raw: &RawValue,
    channels: &[ChannelName],
) -> Result<Vec<(ChannelName, Position)>, HeraldError> {
    let map = json::unique_object(raw.get()).map_err(|e| match e {
        json::UniqueError::Repeated(key) => {
            HeraldError::bad_request(format!("recover: {}", json::repeated_message(&key)))
        }
        json::UniqueError::Object(_) => HeraldError::bad_request(
            "\"recover\" must be an object: {\"<channel>\": {\"epoch\": …, \"offset\": …}}",
        ),
    })?;
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let channel = ChannelName::parse(&name)?;
        if !channels.contains(&channel) {
            return Err(HeraldError::bad_request(format!(
                "recover names {:?}, which this request does not subscribe to",
                herald_core::ids::truncate(&name, 64)
            )));
        }
        let text = value.to_string();
        let raw = RawValue::from_string(text)
            .map_err(|_| HeraldError::bad_request("\"recover\" holds invalid JSON"))?;
        out.push((channel, position(&raw, "recover")?));
    }
    Ok(out)
}

fn client_list(raw: &RawValue) -> Result<Vec<ClientId>, HeraldError> {
    let ids = json::strings(raw)
        .ok_or_else(|| HeraldError::bad_request("\"to\" must be an array of client ids"))?;
    ids.iter().map(|id| ClientId::parse(id)).collect()
}

// ---- encoding ---------------------------------------------------------------------------------

/// A text frame whose JSON payload is written by `f`.
fn text_frame(capacity: usize, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(ws::MAX_HEADER + capacity);
    buf.extend_from_slice(&[0u8; ws::MAX_HEADER]);
    f(&mut buf);
    ws::finish_frame(buf, ws::OP_TEXT)
}

/// One JSON object written by `f` as a [`records`] record (the HTTP transports).
fn json_line(capacity: usize, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    records::other(capacity, f)
}

fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing to a Vec cannot fail");
}

fn write_from(buf: &mut Vec<u8>, from: Option<ClientId>) {
    match from {
        Some(id) => {
            let _ = write!(buf, "\"{id}\"");
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// `{"op":"welcome",...}`: the first frame of every connection.
pub fn welcome(
    client: ClientId,
    ping_interval_ms: u64,
    max_message_bytes: usize,
    max_payload_bytes: usize,
) -> Bytes {
    text_frame(160, |b| {
        let _ = write!(
            b,
            "{{\"op\":\"welcome\",\"client\":\"{client}\",\"server\":\"herald\",\"version\":\"{}\",\"protocol\":1,\"ping_interval_ms\":{ping_interval_ms},\"max_message_bytes\":{max_message_bytes},\"max_payload_bytes\":{max_payload_bytes}}}",
            env!("CARGO_PKG_VERSION")
        );
    })
}

/// The welcome of a connection that named channels in its URL (`/ws?channels=a,b`): the
/// channels it was subscribed to, and why each other one was refused (`errors`, present only
/// when some were; each channel at most once in all). Written directly, as [`welcome`]: one
/// is sent per connection.
pub fn welcome_subscribed(
    client: ClientId,
    ping_interval_ms: u64,
    max_message_bytes: usize,
    max_payload_bytes: usize,
    subscribed: &[ChannelName],
    errors: &[(ChannelName, HeraldError)],
) -> Bytes {
    let names: usize = subscribed.iter().map(|c| c.as_str().len() + 3).sum();
    text_frame(224 + names + errors.len() * 96, |b| {
        let _ = write!(
            b,
            "{{\"op\":\"welcome\",\"client\":\"{client}\",\"server\":\"herald\",\"version\":\"{}\",\"protocol\":1,\"ping_interval_ms\":{ping_interval_ms},\"max_message_bytes\":{max_message_bytes},\"max_payload_bytes\":{max_payload_bytes},\"subscribed\":[",
            env!("CARGO_PKG_VERSION")
        );
        for (i, channel) in subscribed.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            write_json_str(b, channel.as_str());
        }
        b.push(b']');
        if !errors.is_empty() {
            b.extend_from_slice(b",\"errors\":{");
            for (i, (channel, e)) in errors.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                write_json_str(b, channel.as_str());
                b.extend_from_slice(b":{\"code\":");
                write_json_str(b, e.code.as_str());
                b.extend_from_slice(b",\"message\":");
                write_json_str(b, &e.message);
                b.push(b'}');
            }
            b.push(b'}');
        }
        b.push(b'}');
    })
}

/// A success reply, only for requests that carried an `id`.
pub fn reply_ok(id: &RawValue, result: &impl serde::Serialize) -> Bytes {
    text_frame(64, |b| {
        b.extend_from_slice(b"{\"op\":\"reply\",\"id\":");
        b.extend_from_slice(id.get().as_bytes());
        b.extend_from_slice(b",\"result\":");
        serde_json::to_writer(&mut *b, result).expect("result serializes");
        b.push(b'}');
    })
}

/// An error reply; `id` is `null` when the request had none (or was unparseable).
pub fn reply_error(id: Option<&RawValue>, error: &HeraldError) -> Bytes {
    text_frame(96 + error.message.len(), |b| {
        b.extend_from_slice(b"{\"op\":\"reply\",\"id\":");
        b.extend_from_slice(id.map_or("null", |r| r.get()).as_bytes());
        b.extend_from_slice(b",\"error\":{\"code\":\"");
        b.extend_from_slice(error.code.as_str().as_bytes());
        b.extend_from_slice(b"\",\"message\":");
        write_json_str(b, &error.message);
        b.extend_from_slice(b"}}");
    })
}

/// The native protocol's encodings: one JSON object per WebSocket text frame, or per
/// [`records`] record for the HTTP transports (which frame each for SSE, NDJSON streaming or
/// a long-poll answer).
pub struct NativeFormat {
    lines: bool,
    name: &'static str,
}

/// The native protocol over WebSocket: the one instance every native connection points to.
pub static NATIVE_WS: NativeFormat = NativeFormat {
    lines: false,
    name: DIALECT,
};

/// The native protocol as JSON lines, for the HTTP streaming transports.
pub static NATIVE_LINES: NativeFormat = NativeFormat {
    lines: true,
    name: LINES_FORMAT,
};

/// [`NATIVE_LINES`]' name.
pub const LINES_FORMAT: &str = "native-lines";

/// Whether `format` is one of the native protocol's encodings.
pub fn is_native(format: &dyn WireFormat) -> bool {
    matches!(format.name(), DIALECT | LINES_FORMAT)
}

impl NativeFormat {
    fn frame(&self, capacity: usize, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        if self.lines {
            json_line(capacity, f)
        } else {
            text_frame(capacity, f)
        }
    }
}

/// The welcome, as a JSON line (HTTP streaming transports).
pub fn welcome_line(client: ClientId, ping_interval_ms: u64, max_payload_bytes: usize) -> Bytes {
    json_line(160, |b| {
        let _ = write!(
            b,
            "{{\"op\":\"welcome\",\"client\":\"{client}\",\"server\":\"herald\",\"version\":\"{}\",\"protocol\":1,\"ping_interval_ms\":{ping_interval_ms},\"max_payload_bytes\":{max_payload_bytes}}}",
            env!("CARGO_PKG_VERSION")
        );
    })
}

/// Any value as one JSON line (`{"op":...}` objects of the HTTP streaming transports).
pub fn line(value: &impl serde::Serialize) -> Bytes {
    json_line(64, |b| {
        serde_json::to_writer(&mut *b, value).expect("a JSON value serializes");
    })
}

impl WireFormat for NativeFormat {
    fn name(&self) -> &'static str {
        self.name
    }

    fn transport(&self) -> &'static str {
        if self.lines { "http" } else { "websocket" }
    }

    fn message(&self, m: &Message) -> Bytes {
        let capacity = 120 + m.channel.as_str().len() + m.data.len();
        let write = |b: &mut Vec<u8>| {
            // Channel names and epochs are restricted to characters JSON needs no escapes for.
            let _ = write!(
                b,
                "{{\"op\":\"message\",\"channel\":\"{}\",\"offset\":{},\"epoch\":\"{}\",\"from\":",
                m.channel, m.offset, m.epoch
            );
            write_from(b, m.from);
            b.extend_from_slice(b",\"data\":");
            b.extend_from_slice(&m.data);
            b.push(b'}');
        };
        if self.lines {
            records::message(m, capacity, write)
        } else {
            text_frame(capacity, write)
        }
    }

    fn direct(&self, from: Option<ClientId>, data: &[u8]) -> Bytes {
        self.frame(80 + data.len(), |b| {
            b.extend_from_slice(b"{\"op\":\"direct\",\"from\":");
            write_from(b, from);
            b.extend_from_slice(b",\"data\":");
            b.extend_from_slice(data);
            b.push(b'}');
        })
    }

    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes> {
        Some(self.frame(64 + channel.as_str().len() + reason.len(), |b| {
            let _ = write!(
                b,
                "{{\"op\":\"unsubscribed\",\"channel\":\"{channel}\",\"reason\":"
            );
            write_json_str(b, reason);
            b.push(b'}');
        }))
    }

    fn presence_change(
        &self,
        channel: &ChannelName,
        client: ClientId,
        user: Option<&str>,
        joined: bool,
    ) -> Option<Bytes> {
        let op = if joined { "join" } else { "leave" };
        Some(self.frame(96 + channel.as_str().len(), |b| {
            let _ = write!(
                b,
                "{{\"op\":\"{op}\",\"channel\":\"{channel}\",\"client\":\"{client}\",\"user\":"
            );
            match user {
                Some(u) => write_json_str(b, u),
                None => b.extend_from_slice(b"null"),
            }
            b.push(b'}');
        }))
    }

    fn event(&self, event: &herald_core::Event) -> Option<Bytes> {
        Some(self.frame(128, |b| {
            let _ = write!(
                b,
                "{{\"op\":\"event\",\"type\":\"{}\",\"seq\":{},\"time\":{}",
                event.kind.as_str(),
                event.seq,
                event.time_ms
            );
            for (key, value) in &event.data {
                b.push(b',');
                write_json_str(b, key);
                b.push(b':');
                serde_json::to_writer(&mut *b, value).expect("JSON values serialize");
            }
            b.push(b'}');
        }))
    }

    fn keepalive(&self) -> Bytes {
        if self.lines {
            records::keepalive(b"{\"op\":\"ping\"}")
        } else {
            ws::ping_frame()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> serde_json::Value {
        let start = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn the_welcome_with_url_channels_is_the_welcome_plus_what_they_gave() {
        let id = ClientId::random();
        let c = |s: &str| ChannelName::parse(s).unwrap();
        let plain = payload(&welcome(id, 25_000, 65_536, 32_768));
        let w = payload(&welcome_subscribed(id, 25_000, 65_536, 32_768, &[], &[]));
        let mut expected = plain.clone();
        expected["subscribed"] = serde_json::json!([]);
        assert_eq!(w, expected, "no errors key when none");
        // Names and messages that need escaping, several of each, and a frame over 125 bytes.
        let refused = HeraldError::new(ErrorCode::Forbidden, "no \"quotes\" \\ here\n");
        let w = payload(&welcome_subscribed(
            id,
            25_000,
            65_536,
            32_768,
            &[c("a"), c("news:sport")],
            &[
                (c("b"), refused),
                (c("private-x"), HeraldError::bad_request("later")),
            ],
        ));
        let mut expected = plain;
        expected["subscribed"] = serde_json::json!(["a", "news:sport"]);
        expected["errors"] = serde_json::json!({
            "b": {"code": "forbidden", "message": "no \"quotes\" \\ here\n"},
            "private-x": {"code": "bad_request", "message": "later"},
        });
        assert_eq!(w, expected);
    }

    #[test]
    fn parses_every_op() {
        let r = parse_request(r#"{"op":"subscribe","channels":["a","b"],"id":1}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "1");
        assert!(
            matches!(r.op, Op::Subscribe { ref channels, token: None, client: None, ref recover } if recover.is_empty() && channels.len() == 2)
        );
        let r = parse_request(r#"{"op":"unsubscribe","channel":"a"}"#).unwrap();
        assert!(matches!(r.op, Op::Unsubscribe { ref channels, .. } if channels.len() == 1));
        let id = ClientId::random();
        let text = format!(
            r#"{{"op":"publish","channels":["a"],"data":{{"x":[1,2]}},"to":["{id}"],"id":"r1"}}"#
        );
        let r = parse_request(&text).unwrap();
        match r.op {
            Op::Publish { data, to, .. } => {
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert_eq!(to.unwrap(), vec![id]);
            }
            other => panic!("{other:?}"),
        }
        let text = format!(r#"{{"op":"send","to":"{id}","data":"hi"}}"#);
        assert!(matches!(parse_request(&text).unwrap().op, Op::Send { .. }));
        assert!(matches!(
            parse_request(r#"{"op":"ping"}"#).unwrap().op,
            Op::Ping
        ));
    }

    #[test]
    fn bad_requests_get_precise_codes_and_keep_the_id() {
        let cases = [
            ("not json", ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::BadRequest),
            ("[]", ErrorCode::BadRequest),
            ("\"op\"", ErrorCode::BadRequest),
            (r#"{"id":1}"#, ErrorCode::MissingField),
            (r#"{"op":"dance","id":1}"#, ErrorCode::UnknownOp),
            (r#"{"op":7,"id":1}"#, ErrorCode::BadRequest),
            (r#"{"op":"subscribe","id":1}"#, ErrorCode::MissingField),
            (
                r#"{"op":"subscribe","channels":"a","id":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"op":"subscribe","channels":[],"id":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"op":"subscribe","channels":["a b"],"id":1}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"op":"publish","channels":["a"],"id":1}"#,
                ErrorCode::MissingField,
            ),
            (
                r#"{"op":"publish","channels":["a"],"data":1,"to":["x"],"id":1}"#,
                ErrorCode::InvalidClientId,
            ),
            (
                r#"{"op":"send","to":"nope","data":1,"id":1}"#,
                ErrorCode::InvalidClientId,
            ),
        ];
        for (text, code) in cases {
            let err = parse_request(text).unwrap_err();
            assert_eq!(err.error.code, code, "{text}");
            if text.contains("\"id\":1") {
                assert_eq!(err.id.map(|r| r.get()), Some("1"), "{text}");
            }
        }
        let err = parse_request(r#"{"op":"ping","id":{"a":1}}"#).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_null_id_counts_as_no_id() {
        // As protocol.md says: clients that serialize a missing id as null are not refused.
        let req = parse_request(r#"{"op":"subscribe","channel":"q","id":null}"#).unwrap();
        assert!(req.id.is_none());
        assert!(matches!(req.op, Op::Subscribe { .. }));
        let err = parse_request(r#"{"op":"dance","id": null }"#).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::UnknownOp);
        assert!(err.id.is_none());
    }

    /// Any valid JSON string works, escapes included, in values and keys (issue 9, item 5).
    #[test]
    fn escaped_strings_are_ordinary_strings() {
        let r = parse_request(r#"{"op":"subscribe","channel":"chat\/room","id":1}"#).unwrap();
        assert!(
            matches!(r.op, Op::Subscribe { ref channels, .. } if channels[0].as_str() == "chat/room")
        );
        let r = parse_request(r#"{"op":"subscribe","channels":["\u0061","b\/c"]}"#).unwrap();
        assert!(
            matches!(r.op, Op::Subscribe { ref channels, .. } if channels.iter().map(|c| c.as_str()).collect::<Vec<_>>() == ["a", "b/c"])
        );
        assert!(matches!(
            parse_request(r#"{"op":"p\u0069ng"}"#).unwrap().op,
            Op::Ping
        ));
        assert!(matches!(
            parse_request(r#"{"\u006fp":"ping"}"#).unwrap().op,
            Op::Ping
        ));
        let id = ClientId::random();
        let text = format!(
            r#"{{"op":"publish","channel":"a","data":"x","to":["{}"]}}"#,
            id.to_string().replace('-', "\\u002d")
        );
        match parse_request(&text).unwrap().op {
            Op::Publish { to, .. } => assert_eq!(to.unwrap(), vec![id]),
            other => panic!("{other:?}"),
        }
        let r = parse_request(r#"{"op":"auth","token":"k\"1"}"#).unwrap();
        assert!(matches!(r.op, Op::Auth { ref token } if token == "k\"1"));
        // A string with an escape that is still not a valid name is refused for its name.
        let err = parse_request(r#"{"op":"subscribe","channel":"a\u0020b"}"#).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::InvalidChannel);
    }

    /// A field given twice is refused, naming it; the request's id is kept unless it is the
    /// repeated field (issue 9, item 6).
    #[test]
    fn repeated_fields_are_refused_by_name() {
        let err = parse_request(r#"{"op":"ping","id":1,"id":2}"#).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::BadRequest);
        assert_eq!(err.error.message, "field \"id\" appears more than once");
        assert!(err.id.is_none());
        let err =
            parse_request(r#"{"op":"publish","channel":"a","channel":"b","data":1,"id":"r"}"#)
                .unwrap_err();
        assert_eq!(
            err.error.message,
            "field \"channel\" appears more than once"
        );
        assert_eq!(err.id.map(|r| r.get()), Some(r#""r""#));
        let err = parse_request(r#"{"op":"ping","\u006fp":"ping","id":3}"#).unwrap_err();
        assert_eq!(err.error.message, "field \"op\" appears more than once");
        // Unknown fields are ignored, repeated or not; so is the inside of `data`.
        parse_request(r#"{"op":"ping","x":1,"x":2}"#).unwrap();
        parse_request(r#"{"op":"publish","channel":"a","data":{"k":1,"k":2}}"#).unwrap();
        assert!(Fields::parse(r#"{"channel":"a","data":1,"data":2}"#).is_err());
    }

    #[test]
    fn encodes_deliveries_as_documented() {
        let m = Message {
            channel: ChannelName::parse("news").unwrap(),
            offset: 7,
            epoch: "abc".into(),
            from: None,
            data: Bytes::from_static(br#"{"t":"hi \"x\""}"#),
            time_ms: 0,
        };
        let v = payload(&NATIVE_WS.message(&m));
        assert_eq!(
            v,
            serde_json::json!({"op":"message","channel":"news","offset":7,"epoch":"abc","from":null,"data":{"t":"hi \"x\""}})
        );
        let from = ClientId::random();
        let v = payload(&NATIVE_WS.direct(Some(from), b"[1]"));
        assert_eq!(
            v,
            serde_json::json!({"op":"direct","from":from.to_string(),"data":[1]})
        );
        let v = payload(
            &NATIVE_WS
                .unsubscribed(&m.channel, "channel_deleted")
                .unwrap(),
        );
        assert_eq!(
            v,
            serde_json::json!({"op":"unsubscribed","channel":"news","reason":"channel_deleted"})
        );
    }

    /// `data` is passed on verbatim, and JSON may hold line breaks between its tokens: over
    /// the HTTP transports (one record per line, SSE `data:` lines) a delivery must stay one
    /// record, holding the same JSON (found by fuzzing, `fuzz/fuzz_targets/native.rs`).
    #[test]
    fn line_breaks_in_data_stay_inside_one_record() {
        let r =
            parse_request("{\"op\":\"publish\",\"channel\":\"a\",\"data\":[1,\n2,\r\n3],\"id\":7}")
                .unwrap();
        let Op::Publish { data, .. } = r.op else {
            panic!("{:?}", r.op)
        };
        let m = Message {
            channel: ChannelName::parse("a").unwrap(),
            offset: 1,
            epoch: "e".into(),
            from: None,
            data: Bytes::copy_from_slice(data.get().as_bytes()),
            time_ms: 0,
        };
        for batch in [NATIVE_LINES.message(&m), NATIVE_LINES.direct(None, &m.data)] {
            let read: Vec<records::Record> = records::parse(&batch).collect();
            assert_eq!(read.len(), 1, "{batch:?}");
            let payload = read[0].payload();
            assert!(!payload.contains(&b'\r'), "SSE ends a line at a CR too");
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["data"], serde_json::json!([1, 2, 3]));
        }
    }

    #[test]
    fn replies_echo_ids() {
        let id = RawValue::from_string("\"abc\"".into()).unwrap();
        let v = payload(&reply_ok(&id, &serde_json::json!({"subscribed":["a"]})));
        assert_eq!(
            v,
            serde_json::json!({"op":"reply","id":"abc","result":{"subscribed":["a"]}})
        );
        let err = HeraldError::new(ErrorCode::Forbidden, "no \"way\"");
        let v = payload(&reply_error(None, &err));
        assert_eq!(
            v,
            serde_json::json!({"op":"reply","id":null,"error":{"code":"forbidden","message":"no \"way\""}})
        );
    }
}
