//! What Herald's fuzz targets (`fuzz_targets/*.rs`) share: reading choices from the fuzz
//! input, arbitrary publications, JSON checks, WebSocket frame helpers and an allocator that
//! measures. docs/conformance.md, "Fuzzing", lists the targets and what each asserts.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ChannelName, ClientId, Message};

pub mod alloc;

/// Takes choices from the front of a fuzz input; past its end every choice is 0.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A length-prefixed string (lossy UTF-8), at most 255 bytes of input.
    pub fn string(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Splits `data` at the (sorted, clamped) `cuts`: the pieces, in order, that make `data` up.
pub fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        out.push(&data[start..cut]);
        start = cut;
    }
    out.push(&data[start..]);
    out
}

/// A valid channel name made from `seed` (its allowed characters, else a fallback).
pub fn channel(seed: &str) -> ChannelName {
    let name: String = seed
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || herald_core::channel::CHANNEL_NAME_PUNCTUATION.contains(*c)
        })
        .take(herald_core::channel::MAX_CHANNEL_NAME_BYTES)
        .collect();
    ChannelName::parse(&name).unwrap_or_else(|_| ChannelName::parse("c").expect("a valid name"))
}

/// Latest publication time the encoders are fuzzed with: the end of year 9999, the last
/// second an HTTP date can show (publication times come from the server's clock).
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// A publication with fields from `input` and `data` as its payload. Epochs are what the
/// server makes (letters, digits, `-` and `_`).
pub fn message(input: &mut Input, data: &[u8]) -> Message {
    let channel = channel(&input.string());
    let epoch: String = input
        .string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let from = input
        .bool()
        .then(|| ClientId::from_bytes(input.u64().to_le_bytes().repeat(2).try_into().unwrap()));
    Message {
        channel,
        offset: input.u64(),
        epoch: Arc::from(if epoch.is_empty() { "e" } else { &epoch }),
        from,
        data: Bytes::copy_from_slice(data),
        time_ms: input.u64() % (MAX_TIME_MS + 1),
    }
}

/// Whether `text` is JSON by the grammar (numbers of any size, as Herald passes them on).
pub fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

/// `text` as a JSON value; panics (a finding) when it is not JSON by the grammar.
/// `None` when it is, but serde_json cannot hold it as a value (a number out of range).
pub fn json(text: &[u8]) -> Option<serde_json::Value> {
    assert!(
        is_json(text),
        "not JSON: {:?}",
        String::from_utf8_lossy(text)
    );
    serde_json::from_slice(text).ok()
}

/// The payload of a server frame (FIN set, unmasked, as [`herald_protocol::ws::frame`]
/// writes them), after checking its header says its length.
pub fn ws_payload(frame: &[u8]) -> &[u8] {
    assert!(frame.len() >= 2 && frame[0] & 0x80 != 0, "{frame:?}");
    let (len, start) = match frame[1] {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    assert_eq!(frame.len(), start + len, "frame length");
    &frame[start..]
}

/// A server frame as a client would send it: the mask bit set and the payload masked.
pub fn masked(frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let payload = ws_payload(frame);
    let header = &frame[..frame.len() - payload.len()];
    let mut out = header.to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
