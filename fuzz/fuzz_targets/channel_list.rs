//! `?channels=` lists (`herald_server::transport::channel_list`), as the WebSocket and HTTP
//! transports read them from a URL's query.
//!
//! Input: one byte choosing the bound and whether the list is a raw value or a whole query
//! string (percent-decoded by `form_urlencoded` as the handlers do), then the text.
//! Asserts:
//! - the outcome is the rule's, computed here plainly: names are taken in order, each valid
//!   and non-empty, repeats dropped; an empty or invalid name, or one more distinct name than
//!   the bound, is refused when it comes (the list is bounded as names come, not after
//!   reading them all);
//! - what was added before a refusal is kept as it was (the caller discards it), never more
//!   than the bound.
#![no_main]

use herald_core::{ChannelName, ErrorCode};
use herald_fuzz::Input;
use herald_server::transport::channel_list;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let choice = input.byte();
    let max = usize::from(choice & 0x3f) + 1;
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    if choice & 0x40 == 0 {
        check(text, max);
    } else {
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            if key == "channels" {
                check(&value, max);
            }
        }
    }
});

fn check(value: &str, max: usize) {
    let mut got = Vec::new();
    let result = channel_list(value, &mut got, max);
    let (expected, refusal) = reference(value, max);
    assert!(got.len() <= max);
    assert_eq!(got, expected);
    match (result, refusal) {
        (Ok(()), None) => {}
        (Err(e), Some(code)) => assert_eq!(e.code, code, "{}", e.message),
        (result, refusal) => panic!("{value:?}: {result:?}, expected {refusal:?}"),
    }
}

/// The rule, plainly: the names kept and the refusal, if any.
fn reference(value: &str, max: usize) -> (Vec<ChannelName>, Option<ErrorCode>) {
    let mut kept: Vec<ChannelName> = Vec::new();
    for name in value.split(',') {
        let valid = !name.is_empty()
            && name.len() <= 200
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=+".contains(&b));
        if !valid {
            let code = if name.is_empty() {
                ErrorCode::BadRequest
            } else {
                ErrorCode::InvalidChannel
            };
            return (kept, Some(code));
        }
        if kept.iter().any(|c| c.as_str() == name) {
            continue;
        }
        if kept.len() == max {
            return (kept, Some(ErrorCode::TooMany));
        }
        kept.push(ChannelName::parse(name).unwrap());
    }
    (kept, None)
}
