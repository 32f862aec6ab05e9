//! The gogin / NGINX push-stream dialect (`herald_protocol::pushstream`): channel lists from
//! URLs, resume times, and publications as its WebSocket, JSON and iframe deliveries.
//!
//! Input: one byte choosing the mode, then the text. Asserts:
//! - a URL's channel list has valid names, no repeats, at most `MAX_URL_CHANNELS`, each with
//!   the largest backtrack asked for it, and printed back (`name.b<N>`) parses the same;
//! - a resume time is within its second (or just before it, without a tag) and `http_time`
//!   / `tag` of any publication time resume exactly after it;
//! - published text round-trips through Herald data (`text_to_data` / `data_to_text`);
//! - deliveries: the WebSocket frame and the JSON record are JSON carrying the channel, the
//!   offset and the text; the iframe's `<script>` keeps the text inside its JavaScript
//!   string (no quote, `<`, `>` or line break escapes it) and unescapes back to it.
#![no_main]

use herald_core::WireFormat;
use herald_fuzz::{Input, MAX_TIME_MS, json, message, ws_payload};
use herald_protocol::pushstream::{
    self, MAX_URL_CHANNELS, PUSHSTREAM_IFRAME, PUSHSTREAM_LINES, PUSHSTREAM_WS,
};
use herald_protocol::records::{self, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    match mode % 3 {
        0 => {
            if let Ok(list) = std::str::from_utf8(input.rest()) {
                channel_list(list);
            }
        }
        1 => resume(&mut input),
        _ => deliveries(&mut input),
    }
});

fn channel_list(list: &str) {
    let Ok(channels) = pushstream::channels_from_path(list) else {
        return;
    };
    assert!(channels.len() <= MAX_URL_CHANNELS);
    for (i, (c, _)) in channels.iter().enumerate() {
        assert!(!channels[..i].iter().any(|(d, _)| d == c), "{c} twice");
        assert!(list.contains(c.as_str()));
    }
    let printed: Vec<String> = channels.iter().map(|(c, b)| format!("{c}.b{b}")).collect();
    let again = pushstream::channels_from_path(&printed.join("/")).expect("printed list parses");
    assert_eq!(again, channels);
}

fn resume(input: &mut Input) {
    let ms = input.u64() % (MAX_TIME_MS + 1);
    let time = pushstream::http_time(ms);
    let tag = pushstream::tag(ms);
    assert!(tag < 1000);
    assert_eq!(pushstream::resume_after_ms(&time, Some(tag)).unwrap(), ms);
    let second = ms - ms % 1000;
    assert_eq!(
        pushstream::resume_after_ms(&time, None).unwrap(),
        second.saturating_sub(1)
    );

    let tag = input.bool().then(|| input.u64() % 2000);
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    if let Ok(after) = pushstream::resume_after_ms(text, tag) {
        match tag {
            Some(t) if t < 1000 => assert_eq!(after % 1000, t),
            _ => assert!(after % 1000 == 999 || after == 0),
        }
    }
}

fn deliveries(input: &mut Input) {
    let text = input.string();
    let data = pushstream::text_to_data(&text);
    assert_eq!(pushstream::data_to_text(&data), text);
    // Any Herald data (JSON from another protocol) as well as published text.
    let raw = input.rest();
    let data = if raw.is_empty() || std::str::from_utf8(raw).is_err() {
        data.to_vec()
    } else {
        raw.to_vec()
    };
    let m = message(&mut Input(&data), &data);
    let text = pushstream::data_to_text(&m.data);

    let ws = json(ws_payload(&PUSHSTREAM_WS.message(&m))).expect("a JSON object");
    assert_eq!(ws["id"].as_i64(), Some(m.offset as i64));
    assert_eq!(ws["channel"], m.channel.as_str());
    assert_eq!(ws["text"], text.as_str());

    let batch = PUSHSTREAM_LINES.message(&m);
    let mut read: Vec<Record> = records::parse(&batch).collect();
    assert_eq!(read.len(), 1);
    let Record::Message { position, payload } = read.pop().unwrap() else {
        panic!("not a publication's record");
    };
    assert_eq!(position.offset, m.offset);
    let line = json(payload).expect("a JSON object");
    assert_eq!(line["text"], text.as_str());
    assert_eq!(line["channel"], m.channel.as_str());
    assert_eq!(line["tag"].as_u64(), Some(m.time_ms % 1000));
    assert_eq!(line["time"], pushstream::http_time(m.time_ms).as_str());

    let batch = PUSHSTREAM_IFRAME.message(&m);
    let read: Vec<Record> = records::parse(&batch).collect();
    assert_eq!(read.len(), 1);
    let script = std::str::from_utf8(read[0].payload()).unwrap();
    let prefix = format!("<script>p({},'{}','", m.offset as i64, m.channel);
    let suffix = format!(
        "','','{}','{}');</script>",
        pushstream::http_time(m.time_ms),
        m.time_ms % 1000
    );
    let escaped = script
        .strip_prefix(&prefix)
        .and_then(|s| s.strip_suffix(&suffix))
        .unwrap_or_else(|| panic!("{script:?}"));
    assert!(
        !escaped.contains(['<', '>', '\n', '\r', '\u{2028}', '\u{2029}']),
        "{escaped:?}"
    );
    assert_eq!(js_unescape(escaped), text);
}

/// A single-quoted JavaScript string's content, unescaped; panics at a quote that would end
/// it.
fn js_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => panic!("an unescaped quote ends the string: {s:?}"),
            '\\' => match chars.next().expect("a complete escape") {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(char::from(u8::from_str_radix(&hex, 16).unwrap()));
                }
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    out
}
