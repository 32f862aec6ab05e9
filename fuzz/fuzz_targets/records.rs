//! Records (`herald_protocol::records`): how deliveries travel to the HTTP transports, and
//! the position lists clients hand back to resume (`Last-Event-ID`, `?recover=`, `Etag`).
//!
//! Input: one byte choosing the mode, then the text. Asserts:
//! - any batch reads without loss: every record's payload is a piece of one line of the
//!   batch, never holding a line break;
//! - records round-trip: a publication's record (any channel, epoch, offset, time and
//!   payload), a keep-alive and any other record read back as written, but for the line
//!   breaks of their payload, which are spaces (a record is one line);
//! - a parsed position list has at most `MAX_POSITIONS` valid channels, prints back to a
//!   list that parses to the same positions, and prints without control characters (it is
//!   written into an SSE `id:` line and an `Etag` header);
//! - `advance` moves only the position of the channel it names.
#![no_main]

use herald_core::ChannelName;
use herald_fuzz::{Input, message};
use herald_protocol::records::{self, MAX_POSITIONS, Position, Positions, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    match mode % 3 {
        0 => batch(input.rest()),
        1 => round_trip(&mut input),
        _ => positions(&mut input),
    }
});

/// Any bytes as an outbox batch.
fn batch(bytes: &[u8]) {
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let records: Vec<Record> = records::parse(bytes).collect();
    assert_eq!(records.len(), lines.len());
    for (record, line) in records.iter().zip(&lines) {
        let payload = record.payload();
        assert!(!payload.contains(&b'\n'));
        assert!(line.ends_with(payload));
        if let Record::Message { position, .. } = record {
            assert!(line.starts_with(b"m"));
            let head = format!(
                "m{},{},{},{} ",
                position.offset, position.epoch, position.time_ms, position.channel
            );
            assert!(head.len() + payload.len() <= line.len());
        }
    }
}

/// What the writers write, read back.
fn round_trip(input: &mut Input) {
    let kind = input.byte();
    let written_payload = input.rest();
    // What a record carries: the payload as one line, its line breaks as spaces.
    let payload: Vec<u8> = written_payload
        .iter()
        .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
        .collect();
    let mut fields = Input(written_payload);
    let m = message(&mut fields, written_payload);
    let (written, expected) = match kind % 3 {
        0 => (
            records::message(&m, payload.len(), |b| b.extend_from_slice(written_payload)),
            Record::Message {
                position: Position {
                    channel: m.channel.as_str(),
                    epoch: &m.epoch,
                    offset: m.offset,
                    time_ms: m.time_ms,
                },
                payload: &payload,
            },
        ),
        1 => (
            records::keepalive(written_payload),
            Record::Keepalive(&payload),
        ),
        _ => (
            records::other(payload.len(), |b| b.extend_from_slice(written_payload)),
            Record::Other(&payload),
        ),
    };
    let mut twice = written.to_vec();
    twice.extend_from_slice(&written);
    let read: Vec<Record> = records::parse(&twice).collect();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0], expected);
    assert_eq!(read[1], expected);
}

/// A position list from the network.
fn positions(input: &mut Input) {
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let Ok(parsed) = Positions::parse(text) else {
        return;
    };
    assert!(parsed.0.len() <= MAX_POSITIONS);
    let printed = parsed.to_string();
    assert!(
        !printed.chars().any(|c| c.is_control()),
        "a position list prints with a control character: {printed:?}"
    );
    assert_eq!(Positions::parse(&printed).expect("reparses"), parsed);
    for (channel, (epoch, offset)) in &parsed.0 {
        assert!(ChannelName::parse(channel.as_str()).is_ok());
        assert!(!epoch.is_empty() && epoch.len() <= 64);
        assert_eq!(parsed.get(channel), Some((epoch.as_str(), *offset)));
    }
    // Advancing one channel leaves the others where they were.
    if let Some(channel) = parsed.0.keys().next().cloned() {
        let mut moved = parsed.clone();
        let at = Position {
            channel: channel.as_str(),
            epoch: "next",
            offset: 7,
            time_ms: 0,
        };
        moved.advance(&at);
        assert_eq!(moved.get(&channel), Some(("next", 7)));
        assert_eq!(moved.0.len(), parsed.0.len());
        for (other, value) in &parsed.0 {
            if *other != channel {
                assert_eq!(moved.0.get(other), Some(value));
            }
        }
    }
}
