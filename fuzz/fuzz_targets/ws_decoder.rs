//! The WebSocket frame decoder (`herald_protocol::ws::Decoder`), fed client bytes whole and
//! in arbitrary pieces.
//!
//! Input: one byte choosing the message size limit and how many cuts, two bytes per cut,
//! then the wire bytes. Asserts:
//! - the events, the closing violation and the number of bytes left over are the same whole, cut at
//!   the chosen points, and (for short inputs) one byte at a time;
//! - they are what a plain whole-buffer reading of RFC 6455 with Herald's rules gives (the
//!   `reference` below: size limit skipping, interleaved control frames, close codes, UTF-8
//!   judged as text arrives, before its frame or message is whole);
//! - events keep their limits (text is UTF-8, messages fit the limit, pings and close reasons
//!   fit a control frame) and `Ok(None)` asked again changes nothing;
//! - no single allocation is larger than the buffered bytes and the message limit allow,
//!   whatever lengths the frames declare;
//! - the server's encoder round-trips: `ws::frame` and `ws::close_frame`, masked as a client
//!   would, decode back to their payload (or `TooLarge`, or the close code's refusal).
#![no_main]

use bytes::{Bytes, BytesMut};
use herald_fuzz::{Input, alloc, masked, pieces};
use herald_protocol::ws::{self, Decoder, Incoming, ProtocolViolation};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Message size limits: none, around the 7- and 16-bit length encodings, the server's
/// smallest (128), default (64 KiB) and largest (64 MiB).
const LIMITS: [usize; 8] = [0, 1, 125, 126, 128, 1000, 64 * 1024, 64 * 1024 * 1024];

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Incoming>,
    /// The violation that ended the connection, if any.
    end: Option<ProtocolViolation>,
    /// How many bytes are still buffered (without a violation). Only their number: the
    /// decoder unmasks a frame's payload in place as it arrives (to check text as UTF-8
    /// before the frame is whole), so what is buffered is its own state.
    left: usize,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let config = input.byte();
    let max = LIMITS[usize::from(config & 7)];
    let cuts: Vec<usize> = (0..(config >> 3) % 8)
        .map(|_| usize::from(input.u16()))
        .collect();
    let wire = input.rest();

    let whole = decode(max, &[wire]);
    check_events(max, &whole);
    assert_eq!(whole, reference(max, wire), "the reference reading");
    assert_eq!(whole, decode(max, &pieces(wire, &cuts)), "cut at {cuts:?}");
    if wire.len() <= 512 {
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(whole, decode(max, &bytes), "one byte at a time");
    }

    round_trip(max, config & 0x40 != 0, wire, &cuts);
});

/// Decodes `pieces` in order as a connection reads them, every event after each read.
fn decode(max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let bound = 2 * (buf.capacity() + max + 16) + 256;
            alloc::reset();
            let got = decoder.decode(&mut buf);
            let largest = alloc::largest();
            assert!(
                largest <= bound,
                "allocated {largest} bytes with {} buffered and a limit of {max}",
                buf.len()
            );
            match got {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {
                    let before = buf.clone();
                    assert_eq!(decoder.decode(&mut buf), Ok(None), "asked again");
                    assert_eq!(buf, before, "asked again");
                    break;
                }
                Err(violation) => {
                    return Outcome {
                        events,
                        end: Some(violation),
                        left: 0,
                    };
                }
            }
        }
    }
    Outcome {
        events,
        end: None,
        left: buf.len(),
    }
}

fn check_events(max: usize, outcome: &Outcome) {
    for event in &outcome.events {
        match event {
            Incoming::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok());
                assert!(t.len() <= max);
            }
            Incoming::Binary(b) => assert!(b.len() <= max),
            Incoming::Ping(p) => assert!(p.len() <= 125),
            Incoming::Pong => {}
            Incoming::Close(None, reason) => assert!(reason.is_empty()),
            Incoming::Close(Some(code), reason) => {
                assert!(ws::close_code_may_be_sent(*code), "{code}");
                assert!(reason.len() <= 123);
            }
            Incoming::TooLarge { len } => assert!(*len > max as u64),
        }
    }
    if let Some(end) = &outcome.end {
        assert!(matches!(end.close_code, 1002 | 1007), "{end:?}");
    }
}

fn violation(close_code: u16, reason: &'static str) -> Option<ProtocolViolation> {
    Some(ProtocolViolation { close_code, reason })
}

/// RFC 6455 read from a whole buffer, frame by frame, with Herald's rules: a message over
/// `max` is skipped (reported once, with its size, when its last frame has passed); control
/// frames may come between fragments. Written apart from the decoder, as a second opinion.
fn reference(max: usize, wire: &[u8]) -> Outcome {
    let mut events = Vec::new();
    let mut at = 0;
    // The message being assembled (opcode, bytes), or the size of the one being skipped.
    let mut assembling: Option<(u8, Vec<u8>)> = None;
    let mut skipping: Option<u64> = None;
    let fail = |events, close_code, reason| Outcome {
        events,
        end: violation(close_code, reason),
        left: 0,
    };
    loop {
        let rest = &wire[at..];
        let incomplete = |events, left: &[u8]| Outcome {
            events,
            end: None,
            left: left.len(),
        };
        // The header.
        if rest.len() < 2 {
            return incomplete(events, rest);
        }
        let (fin, rsv, opcode) = (rest[0] >> 7 == 1, (rest[0] >> 4) & 7, rest[0] & 15);
        if rsv != 0 {
            return fail(
                events,
                1002,
                "reserved bits set (no extension was negotiated)",
            );
        }
        if ![0, 1, 2, 8, 9, 10].contains(&opcode) {
            return fail(events, 1002, "unknown opcode");
        }
        if rest[1] >> 7 != 1 {
            return fail(events, 1002, "client frames must be masked");
        }
        let (len, mut header) = match rest[1] & 127 {
            126 if rest.len() < 4 => return incomplete(events, rest),
            126 => (u64::from(rest[2]) << 8 | u64::from(rest[3]), 4),
            127 if rest.len() < 10 => return incomplete(events, rest),
            127 => {
                let len = rest[2..10].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
                if len > i64::MAX as u64 {
                    return fail(events, 1002, "frame length has the top bit set");
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode >= 8;
        if control && (len > 125 || !fin) {
            return fail(
                events,
                1002,
                "control frames must be short and unfragmented",
            );
        }
        if rest.len() < header + 4 {
            return incomplete(events, rest);
        }
        let mask = &rest[header..header + 4];
        header += 4;
        let available = (rest.len() - header) as u64;
        let unmask = |n: usize| -> Vec<u8> {
            let payload = &rest[header..header + n];
            (0..n).map(|i| payload[i] ^ mask[i % 4]).collect()
        };

        if control {
            if available < len {
                return incomplete(events, rest);
            }
            let payload = unmask(len as usize);
            at += header + len as usize;
            events.push(match opcode {
                9 => Incoming::Ping(Bytes::from(payload)),
                10 => Incoming::Pong,
                _ if payload.is_empty() => Incoming::Close(None, String::new()),
                _ if payload.len() == 1 => {
                    return fail(events, 1002, "close frame with a 1-byte payload");
                }
                _ => {
                    let code = u16::from(payload[0]) << 8 | u16::from(payload[1]);
                    if !ws::close_code_may_be_sent(code) {
                        return fail(events, 1002, "invalid close code");
                    }
                    match String::from_utf8(payload[2..].to_vec()) {
                        Ok(reason) => Incoming::Close(Some(code), reason),
                        Err(_) => return fail(events, 1007, "invalid UTF-8 in close reason"),
                    }
                }
            });
            continue;
        }

        let in_message = assembling.is_some() || skipping.is_some();
        if opcode == 0 && !in_message {
            return fail(events, 1002, "continuation without a message");
        }
        if opcode != 0 && in_message {
            return fail(events, 1002, "new message inside a fragmented one");
        }
        let so_far = assembling.as_ref().map_or(0, |(_, b)| b.len() as u64) + skipping.unwrap_or(0);
        if skipping.is_some() || so_far + len > max as u64 {
            // Skipped as it arrives: all of what is there is consumed.
            assembling = None;
            if available < len {
                return incomplete(events, &[]);
            }
            at += header + len as usize;
            if fin {
                skipping = None;
                events.push(Incoming::TooLarge { len: so_far + len });
            } else {
                skipping = Some(so_far + len);
            }
            continue;
        }
        // Text is judged as it arrives: bytes that cannot begin valid UTF-8 end the
        // connection even before the frame or the message is whole.
        let message_opcode = assembling.as_ref().map_or(opcode, |(op, _)| *op);
        if available < len {
            if message_opcode == 1 {
                let mut so_far = assembling
                    .as_ref()
                    .map_or_else(Vec::new, |(_, b)| b.clone());
                so_far.extend_from_slice(&unmask(available as usize));
                if utf8_broken(&so_far) {
                    return fail(events, 1007, "invalid UTF-8 in a text message");
                }
            }
            return incomplete(events, rest);
        }
        let payload = unmask(len as usize);
        at += header + len as usize;
        let (opcode, mut bytes) = assembling.take().unwrap_or((opcode, Vec::new()));
        bytes.extend_from_slice(&payload);
        if !fin {
            if opcode == 1 && utf8_broken(&bytes) {
                return fail(events, 1007, "invalid UTF-8 in a text message");
            }
            assembling = Some((opcode, bytes));
            continue;
        }
        events.push(if opcode == 1 {
            match String::from_utf8(bytes) {
                Ok(text) => Incoming::Text(Bytes::from(text)),
                Err(_) => return fail(events, 1007, "invalid UTF-8 in a text message"),
            }
        } else {
            Incoming::Binary(Bytes::from(bytes))
        });
    }
}

/// Whether `bytes` hold a sequence no continuation can make valid UTF-8 (a cut-off sequence
/// at the end is not broken: its next bytes may complete it).
fn utf8_broken(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_err_and(|e| e.error_len().is_some())
}

/// Server frames, masked as a client would send them, decode to what was framed.
fn round_trip(max: usize, long: bool, wire: &[u8], cuts: &[usize]) {
    let mask = [0x5a, 0x01, 0xc3, 0x7e];
    // Past 65535 bytes for the 64-bit length encoding, now and then.
    let payload: Vec<u8> = if long && !wire.is_empty() {
        wire.iter()
            .copied()
            .cycle()
            .take(65_536 + wire.len())
            .collect()
    } else {
        wire.to_vec()
    };
    for opcode in [ws::OP_TEXT, ws::OP_BINARY] {
        let frame = masked(&ws::frame(opcode, &payload), mask);
        let got = decode(max, &pieces(&frame, cuts));
        let expected = if payload.len() > max {
            Ok(Incoming::TooLarge {
                len: payload.len() as u64,
            })
        } else if opcode == ws::OP_BINARY {
            Ok(Incoming::Binary(Bytes::from(payload.clone())))
        } else {
            match std::str::from_utf8(&payload) {
                Ok(_) => Ok(Incoming::Text(Bytes::from(payload.clone()))),
                Err(_) => Err(1007),
            }
        };
        match expected {
            Ok(event) => assert_eq!(got.events, [event]),
            Err(code) => assert_eq!(got.end.map(|e| e.close_code), Some(code)),
        }
        assert_eq!(got.left, 0);
    }
    let code = u16::from_be_bytes([
        wire.first().copied().unwrap_or(3),
        wire.get(1).copied().unwrap_or(232),
    ]);
    let reason = String::from_utf8_lossy(wire.get(2..).unwrap_or_default());
    let close = ws::close_frame(code, &reason);
    assert!(
        close.len() <= 2 + 125,
        "a control frame's payload fits 125 bytes"
    );
    let got = decode(max, &[&masked(&close, mask)]);
    if ws::close_code_may_be_sent(code) {
        let kept = herald_core::ids::truncate(&reason, 123);
        assert_eq!(got.events, [Incoming::Close(Some(code), kept.to_string())]);
    } else {
        assert_eq!(got.end, violation(1002, "invalid close code"));
    }
}
