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

use crate::{records, ws};

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
    crate::json::data_text(data).into_owned()
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

/// push-stream over its HTTP modes (`/ev`, `/lp`, `/sub`): each publication as the message
/// object the module's documented template gives `pushstream.js`,
/// `{"id":<offset>,"channel":"…","text":"…","tag":<n>,"time":"<HTTP date>"}`, where `time`
/// and `tag` say when it was published (the second, and the millisecond within it) so a
/// client can resume after it; as [`records`] for the HTTP transports.
pub struct PushStreamHttp {
    /// The `/sub` stream for `pushstream.js`'s hidden iframe: each message a `<script>` that
    /// calls `p(id, channel, text, eventid, time, tag)`, instead of the JSON object.
    iframe: bool,
    name: &'static str,
}

/// push-stream's JSON message objects (EventSource, long-polling, plain streaming).
pub static PUSHSTREAM_LINES: PushStreamHttp = PushStreamHttp {
    iframe: false,
    name: "pushstream-lines",
};

/// push-stream's iframe stream (`pushstream.js` `stream` mode).
pub static PUSHSTREAM_IFRAME: PushStreamHttp = PushStreamHttp {
    iframe: true,
    name: "pushstream-iframe",
};

/// The start of the iframe stream's document: it registers the frame with the page's
/// `PushStream` (the header template of the module's documentation).
pub const IFRAME_HEADER: &str = "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"><meta http-equiv=\"Cache-Control\" content=\"no-store\"><meta http-equiv=\"Cache-Control\" content=\"no-cache\"><meta http-equiv=\"Pragma\" content=\"no-cache\"><meta http-equiv=\"Expires\" content=\"Thu, 1 Jan 1970 00:00:00 GMT\"><script type=\"text/javascript\">window.onError = null;try{ document.domain = (window.location.hostname.match(/^(\\d{1,3}\\.){3}\\d{1,3}$/)) ? window.location.hostname : window.location.hostname.split('.').slice(-1 * Math.max(window.location.hostname.split('.').length - 1, (window.location.hostname.match(/(\\w{4,}\\.\\w{2}|\\.\\w{3,})$/) ? 2 : 3))).join('.');}catch(e){}parent.PushStream.register(this);</script></head><body>";

/// The end of the iframe stream's document.
pub const IFRAME_FOOTER: &str = "</body></html>";

/// A publication time as push-stream's `time`: the HTTP date of its second.
pub fn http_time(time_ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(time_ms / 1000))
}

/// A publication time as push-stream's `tag`: the millisecond within its second.
pub fn tag(time_ms: u64) -> u64 {
    time_ms % 1000
}

/// The position a client resumes after, from push-stream's `time` (an HTTP date:
/// `If-Modified-Since` or `?time=`) and `tag` (`If-None-Match` or `?tag=`): publications
/// after that millisecond, or, without a tag, from the start of that second.
pub fn resume_after_ms(time: &str, tag: Option<u64>) -> Result<u64, HeraldError> {
    let when = httpdate::parse_http_date(time.trim()).map_err(|_| {
        HeraldError::bad_request("time is an HTTP date, e.g. \"Thu, 01 Jan 2026 00:00:00 GMT\"")
    })?;
    let secs = when
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(match tag {
        Some(tag) if tag < 1000 => secs * 1000 + tag,
        _ => (secs * 1000).saturating_sub(1),
    })
}

/// `text` inside a single-quoted JavaScript string in an HTML `<script>`: quotes,
/// backslashes, line breaks and `<` escaped, so no text ends the string or the script.
fn write_js_str(b: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => b.extend_from_slice(b"\\\\"),
            '\'' => b.extend_from_slice(b"\\'"),
            '<' => b.extend_from_slice(b"\\x3C"),
            '>' => b.extend_from_slice(b"\\x3E"),
            '\n' => b.extend_from_slice(b"\\n"),
            '\r' => b.extend_from_slice(b"\\r"),
            '\u{2028}' => b.extend_from_slice(b"\\u2028"),
            '\u{2029}' => b.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 => {
                let _ = write!(b, "\\x{:02X}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                b.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

impl PushStreamHttp {
    /// One message in this format; `time_ms` for publications.
    fn write(&self, b: &mut Vec<u8>, id: i64, channel: &str, text: &str, time_ms: Option<u64>) {
        let (time, tag) = match time_ms {
            Some(ms) => (http_time(ms), tag(ms).to_string()),
            None => (String::new(), String::new()),
        };
        if self.iframe {
            let _ = write!(b, "<script>p({id},'{channel}','");
            write_js_str(b, text);
            let _ = write!(b, "','','{time}','{tag}');</script>");
        } else {
            let _ = write!(b, "{{\"id\":{id},\"channel\":\"{channel}\",\"text\":");
            serde_json::to_writer(&mut *b, text).expect("string");
            if time_ms.is_some() {
                let _ = write!(b, ",\"tag\":{tag},\"time\":\"{time}\"");
            }
            b.push(b'}');
        }
    }

    fn record(&self, id: i64, channel: &str, text: &str) -> Bytes {
        records::other(48 + channel.len() + text.len(), |b| {
            self.write(b, id, channel, text, None)
        })
    }
}

impl WireFormat for PushStreamHttp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn transport(&self) -> &'static str {
        "http"
    }

    fn message(&self, m: &Message) -> Bytes {
        let text = data_to_text(&m.data);
        records::message(m, 96 + m.channel.as_str().len() + text.len(), |b| {
            self.write(
                b,
                m.offset as i64,
                m.channel.as_str(),
                &text,
                Some(m.time_ms),
            )
        })
    }

    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        self.record(0, "", &data_to_text(data))
    }

    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes> {
        (reason == "channel_deleted").then(|| self.record(-2, channel.as_str(), "Channel deleted."))
    }

    fn closes_without_channels(&self) -> bool {
        true
    }

    /// The module's ping: a message with id -1, which `pushstream.js` ignores (it resets
    /// the stream mode's ping timer).
    fn keepalive(&self) -> Bytes {
        let mut b = Vec::new();
        self.write(&mut b, -1, "", "", None);
        records::keepalive(&b)
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

    #[test]
    fn http_messages_carry_time_and_tag_and_resume_after_them() {
        let m = Message {
            channel: ChannelName::parse("1").unwrap(),
            offset: 7,
            epoch: "e".into(),
            from: None,
            data: text_to_data("it's </script>\n"),
            time_ms: 1_767_225_600_042, // Thu, 01 Jan 2026 00:00:00.042 GMT
        };
        let batch = PUSHSTREAM_LINES.message(&m);
        let record = records::parse(&batch).next().unwrap();
        assert_eq!(
            record.payload(),
            br#"{"id":7,"channel":"1","text":"it's </script>\n","tag":42,"time":"Thu, 01 Jan 2026 00:00:00 GMT"}"#
        );
        let batch = PUSHSTREAM_IFRAME.message(&m);
        let record = records::parse(&batch).next().unwrap();
        assert_eq!(
            std::str::from_utf8(record.payload()).unwrap(),
            r#"<script>p(7,'1','it\'s \x3C/script\x3E\n','','Thu, 01 Jan 2026 00:00:00 GMT','42');</script>"#
        );
        // Resuming after the message: exactly its millisecond; without a tag, its second.
        let time = http_time(m.time_ms);
        assert_eq!(resume_after_ms(&time, Some(42)).unwrap(), m.time_ms);
        assert_eq!(resume_after_ms(&time, None).unwrap(), 1_767_225_599_999);
        assert!(resume_after_ms("yesterday", None).is_err());
        // The keep-alive is the module's id -1 message.
        let ping = PUSHSTREAM_LINES.keepalive();
        assert!(matches!(
            records::parse(&ping).next().unwrap(),
            records::Record::Keepalive(p) if p == br#"{"id":-1,"channel":"","text":""}"#
        ));
    }
}
