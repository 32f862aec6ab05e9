//! The gogin / NGINX push-stream dialect (third seed, WIRE.md §3): subscribers name their
//! channels in the URL (`/subscribe/<ch1>/<ch2>` or `?channels=a/b`, each optionally with a
//! `.b<N>` backtrack suffix) and receive one JSON frame per message,
//! `{"id":<offset>,"channel":"<channel>","text":"<text>"}` (the last N kept publications of a
//! channel first, for a `.b<N>` suffix); `id` -2 with the text
//! `Channel deleted.` tells them a channel was deleted. Unlike the original, `text` is always
//! correctly JSON-escaped.

use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, HeraldError, Message, WireFormat};

use crate::ws;

pub const DIALECT: &str = "pushstream";

/// Most channels one subscriber may name in its URL.
pub const MAX_URL_CHANNELS: usize = 100;

/// Channel names from a `/`-separated list, each with its `.b<N>` backtrack (0 when none:
/// deliver the last N kept publications first), dropping empty segments and repeats.
pub fn channels_from_path(list: &str) -> Result<Vec<(ChannelName, usize)>, HeraldError> {
    let mut out: Vec<(ChannelName, usize)> = Vec::new();
    for segment in list.split('/').filter(|s| !s.is_empty()) {
        let (name, backtrack) = match segment.rsplit_once(".b") {
            Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                // Larger than any history: as many as are kept.
                (base, n.parse().unwrap_or(usize::MAX))
            }
            _ => (segment, 0),
        };
        let channel = ChannelName::parse(name)?;
        match out.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, b)) => *b = (*b).max(backtrack),
            None => out.push((channel, backtrack)),
        }
        if out.len() > MAX_URL_CHANNELS {
            return Err(HeraldError::new(
                herald_core::ErrorCode::TooMany,
                format!("at most {MAX_URL_CHANNELS} channels per subscriber"),
            ));
        }
    }
    Ok(out)
}

/// Publication text from Herald JSON data: a JSON string's content, else the JSON itself.
pub fn data_to_text(data: &[u8]) -> String {
    if data.first() == Some(&b'"')
        && let Ok(s) = serde_json::from_slice::<String>(data)
    {
        return s;
    }
    String::from_utf8_lossy(data).into_owned()
}

/// Published text as Herald JSON data (a JSON string).
pub fn text_to_data(text: &str) -> Bytes {
    Bytes::from(serde_json::to_string(text).expect("a string serializes"))
}

fn frame(id: i64, channel: &str, text: &str) -> Bytes {
    let mut b = Vec::with_capacity(ws::MAX_HEADER + 48 + channel.len() + text.len());
    b.extend_from_slice(&[0u8; ws::MAX_HEADER]);
    let _ = write!(b, "{{\"id\":{id},\"channel\":\"{channel}\",\"text\":");
    serde_json::to_writer(&mut b, text).expect("string");
    b.push(b'}');
    ws::finish_frame(b, ws::OP_TEXT)
}

pub struct PushStreamWs;

pub static PUSHSTREAM_WS: PushStreamWs = PushStreamWs;

impl WireFormat for PushStreamWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    fn message(&self, m: &Message) -> Bytes {
        frame(m.offset as i64, m.channel.as_str(), &data_to_text(&m.data))
    }

    /// push-stream has no direct messages; they arrive as id 0 on an empty channel name.
    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        frame(0, "", &data_to_text(data))
    }

    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes> {
        (reason == "channel_deleted").then(|| frame(-2, channel.as_str(), "Channel deleted."))
    }

    /// The module closes a subscriber whose last channel was deleted, after the `-2` frame:
    /// `pushstream.js` then reconnects (and learns whether the channel exists again).
    fn closes_without_channels(&self) -> bool {
        true
    }

    fn keepalive(&self) -> Bytes {
        ws::ping_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_from_urls() {
        let names = |s: &str| {
            channels_from_path(s)
                .unwrap()
                .iter()
                .map(|(c, b)| format!("{c}:{b}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("1"), ["1:0"]);
        assert_eq!(names("/a/b.b5//c.bx/a.b2"), ["a:2", "b:5", "c.bx:0"]);
        assert!(channels_from_path("a b").is_err());
    }

    #[test]
    fn frames_escape_text() {
        let m = Message {
            channel: ChannelName::parse("1").unwrap(),
            offset: 3,
            epoch: "e".into(),
            from: None,
            data: text_to_data("say \"hi\"\n"),
            time_ms: 0,
        };
        let f = PUSHSTREAM_WS.message(&m);
        assert_eq!(&f[2..], br#"{"id":3,"channel":"1","text":"say \"hi\"\n"}"#);
        let d = PUSHSTREAM_WS
            .unsubscribed(&m.channel, "channel_deleted")
            .unwrap();
        assert_eq!(
            &d[2..],
            br#"{"id":-2,"channel":"1","text":"Channel deleted."}"#
        );
        assert!(PUSHSTREAM_WS.unsubscribed(&m.channel, "admin").is_none());
    }
}
