//! Records: how a dialect's deliveries travel through the outbox of a client on an HTTP
//! transport (Server-Sent Events, streaming, long-polling). A dialect's line format writes
//! one record per delivery; the transports read the records back and frame each for their
//! wire, knowing nothing of what the payload says. One record per line:
//!
//! - `m<offset>,<epoch>,<time_ms>,<channel> <payload>\n`: a publication and its position,
//!   which the transports turn into resumable positions (an SSE `id`, a long-poll `Etag`);
//! - `k<payload>\n`: a keep-alive (SSE sends a comment instead, long-polling drops it);
//! - `d<payload>\n`: anything else (greetings, replies, notices, direct messages).
//!
//! Payloads never hold a line break: the writers below turn any `\n` or `\r` a payload holds
//! into a space. Dialects write JSON or escaped text, where a raw line break can only be
//! whitespace between tokens (in `data` passed on verbatim), so nothing changes meaning; and
//! SSE ends a `data:` line at a CR as well as at a LF. Channel names and epochs hold neither
//! spaces nor commas.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use herald_core::{ChannelName, HeraldError, Message};

/// Where a publication stands in its channel, as its record says (borrowed from it: read
/// per delivery and per subscriber, so nothing is allocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    /// Wall-clock milliseconds of publication.
    pub time_ms: u64,
}

/// One record read back from an outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Message {
        position: Position<'a>,
        payload: &'a [u8],
    },
    Keepalive(&'a [u8]),
    Other(&'a [u8]),
}

impl Record<'_> {
    pub fn payload(&self) -> &[u8] {
        match self {
            Record::Message { payload, .. } => payload,
            Record::Keepalive(p) | Record::Other(p) => p,
        }
    }
}

/// A publication's record: its position, then what `payload` writes.
pub fn message(msg: &Message, capacity: usize, payload: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut b = Vec::with_capacity(capacity + 48 + msg.channel.as_str().len());
    let _ = write!(
        b,
        "m{},{},{},{} ",
        msg.offset, msg.epoch, msg.time_ms, msg.channel
    );
    let start = b.len();
    payload(&mut b);
    one_line(&mut b[start..]);
    b.push(b'\n');
    Bytes::from(b)
}

/// A keep-alive record.
pub fn keepalive(payload: &[u8]) -> Bytes {
    tagged(b'k', payload.len(), |b| b.extend_from_slice(payload))
}

/// Any other record, written by `payload`.
pub fn other(capacity: usize, payload: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    tagged(b'd', capacity, payload)
}

fn tagged(tag: u8, capacity: usize, payload: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut b = Vec::with_capacity(capacity + 2);
    b.push(tag);
    payload(&mut b);
    one_line(&mut b[1..]);
    b.push(b'\n');
    Bytes::from(b)
}

/// A payload as one line: its line breaks (JSON whitespace) as spaces.
fn one_line(payload: &mut [u8]) {
    for b in payload.iter_mut().filter(|b| matches!(**b, b'\n' | b'\r')) {
        *b = b' ';
    }
}

/// The records in `batch` (whole records, as an outbox drains them). Anything unreadable is
/// passed on as `Other`, never dropped.
pub fn parse(batch: &[u8]) -> impl Iterator<Item = Record<'_>> {
    batch
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| match line[0] {
            b'k' => Record::Keepalive(&line[1..]),
            b'm' => parse_message(&line[1..]).unwrap_or(Record::Other(&line[1..])),
            b'd' => Record::Other(&line[1..]),
            _ => Record::Other(line),
        })
}

fn parse_message(line: &[u8]) -> Option<Record<'_>> {
    let space = line.iter().position(|b| *b == b' ')?;
    let head = std::str::from_utf8(&line[..space]).ok()?;
    let mut parts = head.splitn(4, ',');
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let time_ms = parts.next()?.parse().ok()?;
    let channel = parts.next()?;
    Some(Record::Message {
        position: Position {
            channel,
            epoch,
            offset,
            time_ms,
        },
        payload: &line[space + 1..],
    })
}

/// Most channels a position list names.
pub const MAX_POSITIONS: usize = 100;

/// A connection's position in each channel, as clients hand it back to resume (an SSE
/// `Last-Event-ID`, a long-poll's `Etag`, `?recover=`): `offset,epoch,channel` entries
/// separated by spaces; epochs are visible ASCII without commas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(pub BTreeMap<ChannelName, (String, u64)>);

impl Positions {
    pub fn parse(text: &str) -> Result<Positions, HeraldError> {
        let bad = || {
            HeraldError::bad_request(
                "a position list is \"offset,epoch,channel\" entries separated by spaces",
            )
        };
        let mut out = BTreeMap::new();
        for entry in text.split(' ').filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ',');
            let (Some(offset), Some(epoch), Some(channel)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let offset = offset.parse::<u64>().map_err(|_| bad())?;
            // Visible ASCII, as the server makes them: the list is printed back into an SSE
            // `id:` line and an `Etag`, where a line break or a NUL would break the framing.
            if epoch.is_empty()
                || epoch.len() > 64
                || !epoch.bytes().all(|b| b.is_ascii_graphic() && b != b',')
            {
                return Err(bad());
            }
            out.insert(ChannelName::parse(channel)?, (epoch.to_string(), offset));
            if out.len() > MAX_POSITIONS {
                return Err(HeraldError::bad_request(format!(
                    "at most {MAX_POSITIONS} positions"
                )));
            }
        }
        Ok(Positions(out))
    }

    /// Moves to `position` in its channel (allocating only for a new channel or epoch).
    pub fn advance(&mut self, position: &Position) {
        match self.0.get_mut(position.channel) {
            Some((epoch, offset)) => {
                if epoch != position.epoch {
                    *epoch = position.epoch.to_string();
                }
                *offset = position.offset;
            }
            None => {
                if let Ok(channel) = ChannelName::parse(position.channel) {
                    let entry = (position.epoch.to_string(), position.offset);
                    self.0.insert(channel, entry);
                }
            }
        }
    }

    pub fn get(&self, channel: &ChannelName) -> Option<(&str, u64)> {
        self.0.get(channel).map(|(e, o)| (e.as_str(), *o))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (channel, (epoch, offset))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{offset},{epoch},{channel}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn msg() -> Message {
        Message {
            channel: ChannelName::parse("chat:a").unwrap(),
            offset: 42,
            epoch: Arc::from("Ep0ch"),
            from: None,
            data: Bytes::from_static(b"1"),
            time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut batch = Vec::new();
        batch.extend_from_slice(&message(&msg(), 8, |b| b.extend_from_slice(b"{\"x\":1}")));
        batch.extend_from_slice(&keepalive(b"ping"));
        batch.extend_from_slice(&other(4, |b| b.extend_from_slice(b"hello world")));
        let records: Vec<Record> = parse(&batch).collect();
        assert_eq!(
            records,
            [
                Record::Message {
                    position: Position {
                        channel: "chat:a",
                        epoch: "Ep0ch",
                        offset: 42,
                        time_ms: 1_700_000_000_123,
                    },
                    payload: b"{\"x\":1}",
                },
                Record::Keepalive(b"ping"),
                Record::Other(b"hello world"),
            ]
        );
    }

    /// A record is one line, whatever its payload holds (found by fuzzing).
    #[test]
    fn a_line_break_in_a_payload_never_splits_a_record() {
        let mut batch = Vec::new();
        batch.extend_from_slice(&message(&msg(), 8, |b| {
            b.extend_from_slice(b"[1,\n2,\r\n3]")
        }));
        batch.extend_from_slice(&other(4, |b| b.extend_from_slice(b"{\"a\":\r1}")));
        batch.extend_from_slice(&keepalive(b"\n"));
        let records: Vec<Record> = parse(&batch).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].payload(), b"[1, 2,  3]");
        assert_eq!(records[1], Record::Other(b"{\"a\": 1}"));
        assert_eq!(records[2], Record::Keepalive(b" "));
    }

    #[test]
    fn positions_advance_per_channel() {
        let mut p = Positions::default();
        let at = |channel, epoch, offset| Position {
            channel,
            epoch,
            offset,
            time_ms: 0,
        };
        p.advance(&at("a", "e1", 1));
        p.advance(&at("b", "e2", 5));
        p.advance(&at("a", "e1", 2));
        assert_eq!(p.to_string(), "2,e1,a 5,e2,b");
        p.advance(&at("a", "e3", 1));
        assert_eq!(p.to_string(), "1,e3,a 5,e2,b");
    }

    #[test]
    fn an_unreadable_record_is_passed_on_not_dropped() {
        let records: Vec<Record> = parse(b"mgarbage\nxyz\n").collect();
        assert_eq!(records, [Record::Other(b"garbage"), Record::Other(b"xyz")]);
    }

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        let text = "3,AbC-_9,chat:room-1 7,xyz,news";
        let parsed = Positions::parse(text).unwrap();
        assert_eq!(parsed.0.len(), 2);
        assert_eq!(
            parsed.get(&ChannelName::parse("news").unwrap()),
            Some(("xyz", 7))
        );
        assert_eq!(parsed.to_string(), text);
        for bad in ["x,e,c", "1,e", "1,,c", "1,e,bad channel"] {
            assert!(Positions::parse(bad).is_err(), "{bad}");
        }
        assert!(Positions::parse("").unwrap().is_empty());
        let many: Vec<String> = (0..=MAX_POSITIONS).map(|i| format!("1,e,c{i}")).collect();
        assert!(Positions::parse(&many.join(" ")).is_err());
    }

    /// A position list comes from the network (`?recover=` is percent-decoded) and is
    /// printed back into an SSE `id:` line and an `Etag`: an epoch with a line break would
    /// forge lines of the stream, a NUL makes browsers drop the id. Epochs are visible
    /// ASCII, as the server makes them (found by fuzzing, `fuzz/fuzz_targets/records.rs`).
    #[test]
    fn position_epochs_with_control_characters_are_refused() {
        for bad in [
            "7,\0\0\0,c",
            "1,e\ndata: forged,c",
            "1,e\r,c",
            "1,e\t,c",
            "1,\u{7f},c",
            "1,é,c",
        ] {
            assert!(Positions::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Positions::parse("1,AbC-_9~!,c").is_ok());
    }
}
