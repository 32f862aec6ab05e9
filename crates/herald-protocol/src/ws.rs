//! RFC 6455 server-side framing.
//!
//! Herald frames outgoing messages itself so that a publication is framed once and the
//! complete frame (header and payload) is shared by every subscriber's outbox; the writer then
//! copies many frames into one buffer and writes them with one system call. Incoming frames are
//! decoded incrementally from the connection's read buffer with a limit on message size: an
//! oversized message is skipped as its bytes arrive (never buffered) and reported once, so the
//! connection can answer with an error and keep working.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, Bytes, BytesMut};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest header a server frame can have.
pub const MAX_HEADER: usize = 10;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.digest().bytes())
}

/// Writes a server frame header (FIN set, unmasked) for `len` payload bytes into the end of
/// `prefix` and returns where it starts. Used to frame a payload built after a reserved
/// [`MAX_HEADER`]-byte prefix without copying it.
pub fn write_header_before(prefix: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    let first = 0x80 | opcode;
    if len < 126 {
        prefix[8] = first;
        prefix[9] = len as u8;
        8
    } else if len <= u16::MAX as usize {
        prefix[6] = first;
        prefix[7] = 126;
        prefix[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        6
    } else {
        prefix[0] = first;
        prefix[1] = 127;
        prefix[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        0
    }
}

/// Frames a payload that was written into `buf` after [`MAX_HEADER`] reserved bytes.
pub fn finish_frame(mut buf: Vec<u8>, opcode: u8) -> Bytes {
    let len = buf.len() - MAX_HEADER;
    let mut prefix = [0u8; MAX_HEADER];
    let start = write_header_before(&mut prefix, opcode, len);
    buf[..MAX_HEADER].copy_from_slice(&prefix);
    Bytes::from(buf).slice(start..)
}

/// A complete server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_HEADER + payload.len());
    buf.extend_from_slice(&[0u8; MAX_HEADER]);
    buf.extend_from_slice(payload);
    finish_frame(buf, opcode)
}

/// A close frame with a code and a reason (cut to fit the 125-byte control frame limit).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(125);
    payload.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

/// Whether a close frame may carry `code` (RFC 6455 section 7.4 and the IANA registry):
/// 1000-1003 and 1007-1014 are defined, 3000-4999 are for libraries and applications. 1004 is
/// reserved, 1005, 1006 and 1015 stand for "no code", "no close frame" and "TLS failure" and
/// must never be sent, and everything else below 3000 is unassigned.
pub fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A ping with no payload: the same bytes for every connection.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The peer's close frame: code (if any) and reason.
    Close(Option<u16>, String),
    /// A message over the size limit was skipped entirely; `len` is at least its size.
    TooLarge {
        len: u64,
    },
}

/// A violation of RFC 6455 that ends the connection, with the close code to send.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolViolation {
    pub close_code: u16,
    pub reason: &'static str,
}

fn violation(reason: &'static str) -> ProtocolViolation {
    ProtocolViolation {
        close_code: 1002,
        reason,
    }
}

/// Incremental decoder of client frames.
pub struct Decoder {
    max_message: usize,
    /// Opcode and payload of a fragmented message being assembled.
    fragments: Option<(u8, BytesMut)>,
    /// Skipping an oversized message: bytes left in the current frame, its mask and position,
    /// whether it is the message's last frame, and the message's size so far.
    skip: Option<Skip>,
    /// The rest of an oversized fragmented message is skipped too.
    skipping_message: Option<u64>,
    /// Bytes of the payload of the text frame at the head of the buffer already unmasked (in
    /// place) and checked as UTF-8 while the frame was still arriving.
    checked: usize,
    /// UTF-8 validation of the text message being received, piece by piece.
    utf8: Utf8Check,
}

struct Skip {
    remaining: u64,
    fin: bool,
    total: u64,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    header_len: usize,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragments: None,
            skip: None,
            skipping_message: None,
            checked: 0,
            utf8: Utf8Check::default(),
        }
    }

    /// The largest message accepted; larger ones are skipped ([`Incoming::TooLarge`]).
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Decodes the next event from `buf`, consuming what it used. `Ok(None)`: more bytes are
    /// needed (whatever is left in `buf` is an incomplete frame).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolViolation> {
        loop {
            if let Some(skip) = &mut self.skip {
                let n = (buf.len() as u64).min(skip.remaining);
                buf.advance(n as usize);
                skip.remaining -= n;
                if skip.remaining > 0 {
                    return Ok(None);
                }
                let (fin, total) = (skip.fin, skip.total);
                self.skip = None;
                if fin {
                    self.skipping_message = None;
                    return Ok(Some(Incoming::TooLarge { len: total }));
                }
                self.skipping_message = Some(total);
                continue;
            }
            let Some(h) = parse_header(buf)? else {
                return Ok(None);
            };
            if h.opcode >= 0x8 {
                // Control frames: may arrive between fragments; always small and complete.
                if buf.len() < h.header_len + h.len as usize {
                    return Ok(None);
                }
                buf.advance(h.header_len);
                let mut payload = buf.split_to(h.len as usize);
                unmask(&mut payload, h.mask);
                return Ok(Some(control(h.opcode, payload.freeze())?));
            }
            let continuing = self.fragments.is_some() || self.skipping_message.is_some();
            match (h.opcode, continuing) {
                (OP_CONTINUATION, false) => {
                    return Err(violation("continuation without a message"));
                }
                (OP_TEXT | OP_BINARY, true) => {
                    return Err(violation("new message inside a fragmented one"));
                }
                _ => {}
            }
            let so_far = self.fragments.as_ref().map_or(0, |(_, b)| b.len() as u64)
                + self.skipping_message.unwrap_or(0);
            if so_far + h.len > self.max_message as u64 || self.skipping_message.is_some() {
                buf.advance(h.header_len);
                self.fragments = None;
                self.skip = Some(Skip {
                    remaining: h.len,
                    fin: h.fin,
                    total: so_far + h.len,
                });
                continue;
            }
            // Text is checked as it arrives, so invalid UTF-8 fails the connection at the
            // byte that makes it invalid, not when the message ends (Autobahn 6.4).
            let text = h.opcode == OP_TEXT
                || (h.opcode == OP_CONTINUATION && matches!(self.fragments, Some((OP_TEXT, _))));
            if h.opcode == OP_TEXT && self.checked == 0 {
                self.utf8 = Utf8Check::default();
            }
            let len = h.len as usize;
            let available = (buf.len() - h.header_len).min(len);
            if text && available > self.checked {
                let new = &mut buf[h.header_len + self.checked..h.header_len + available];
                unmask_from(new, h.mask, self.checked);
                if !self.utf8.feed(new) {
                    return Err(invalid_utf8());
                }
                self.checked = available;
            }
            if available < len {
                buf.reserve(h.header_len + len - buf.len());
                return Ok(None);
            }
            buf.advance(h.header_len);
            let mut payload = buf.split_to(len);
            if text {
                self.checked = 0; // Unmasked and checked above.
            } else {
                unmask(&mut payload, h.mask);
            }
            let (opcode, data) = match self.fragments.take() {
                Some((op, mut acc)) => {
                    acc.extend_from_slice(&payload);
                    (op, acc)
                }
                None => (h.opcode, payload),
            };
            if !h.fin {
                self.fragments = Some((opcode, data));
                continue;
            }
            return Ok(Some(match opcode {
                OP_TEXT => {
                    // Every byte was checked; a code point cut off by the end is not.
                    if !self.utf8.is_complete() {
                        return Err(invalid_utf8());
                    }
                    Incoming::Text(data.freeze())
                }
                _ => Incoming::Binary(data.freeze()),
            }));
        }
    }
}

fn invalid_utf8() -> ProtocolViolation {
    ProtocolViolation {
        close_code: 1007,
        reason: "invalid UTF-8 in a text message",
    }
}

/// UTF-8 validation of a message arriving in pieces: a piece is invalid as soon as a byte in
/// it cannot continue valid UTF-8 (`std`'s validator tells an invalid sequence from one cut
/// off by the end of its input); a code point cut between pieces is kept until the next.
#[derive(Default)]
struct Utf8Check {
    /// The start of a code point the last piece ended inside.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Check {
    /// Checks the next piece of the message; `false`: it is not valid UTF-8.
    fn feed(&mut self, mut piece: &[u8]) -> bool {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = match self.pending[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (need - have).min(piece.len());
            self.pending[have..have + take].copy_from_slice(&piece[..take]);
            match std::str::from_utf8(&self.pending[..have + take]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return false,
                // Still cut off: the piece was too short to finish it.
                Err(_) => {
                    self.pending_len = (have + take) as u8;
                    return true;
                }
            }
            piece = &piece[take..];
        }
        match std::str::from_utf8(piece) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &piece[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                true
            }
        }
    }

    /// No code point is cut off.
    fn is_complete(&self) -> bool {
        self.pending_len == 0
    }
}

fn control(opcode: u8, payload: Bytes) -> Result<Incoming, ProtocolViolation> {
    Ok(match opcode {
        OP_PING => Incoming::Ping(payload),
        OP_PONG => Incoming::Pong,
        OP_CLOSE => {
            if payload.is_empty() {
                Incoming::Close(None, String::new())
            } else if payload.len() == 1 {
                return Err(violation("close frame with a 1-byte payload"));
            } else {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !close_code_may_be_sent(code) {
                    return Err(violation("invalid close code"));
                }
                let reason = std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolViolation {
                    close_code: 1007,
                    reason: "invalid UTF-8 in close reason",
                })?;
                Incoming::Close(Some(code), reason.to_string())
            }
        }
        _ => return Err(violation("unknown control opcode")),
    })
}

fn parse_header(buf: &[u8]) -> Result<Option<Header>, ProtocolViolation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(violation("reserved bits set (no extension was negotiated)"));
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(violation("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(violation("client frames must be masked"));
    }
    let fin = b0 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(violation("frame length has the top bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && (len > 125 || !fin) {
        return Err(violation("control frames must be short and unfragmented"));
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        header_len: pos,
    }))
}

/// [`unmask`] for the part of a payload that starts `offset` bytes into it.
fn unmask_from(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut rotated = mask;
    rotated.rotate_left(offset % 4);
    unmask(data, rotated);
}

/// XORs the payload with the 4-byte mask, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frames_have_minimal_headers() {
        assert_eq!(&frame(OP_TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(OP_TEXT, &[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = frame(OP_BINARY, &vec![0u8; 70_000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert_eq!(f.len(), 70_010);
        let c = close_frame(4100, &"é".repeat(100));
        assert!(c.len() <= 127);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    #[test]
    fn decodes_text_split_at_every_byte() {
        let wire = client_frame(true, OP_TEXT, "hello, wörld".as_bytes());
        let mut dec = Decoder::new(1024);
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(Incoming::Text(Bytes::from("hello, wörld"))));
            }
        }
    }

    #[test]
    fn assembles_fragments_with_interleaved_ping() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(false, OP_TEXT, b"ab"));
        buf.extend_from_slice(&client_frame(true, OP_PING, b"p"));
        buf.extend_from_slice(&client_frame(true, OP_CONTINUATION, b"cd"));
        let mut dec = Decoder::new(1024);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Incoming::Ping(Bytes::from("p")))
        );
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from("abcd")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn skips_oversized_message_without_buffering_then_continues() {
        let big = vec![b'a'; 10_000];
        let mut wire = client_frame(true, OP_TEXT, &big);
        wire.extend_from_slice(&client_frame(true, OP_TEXT, b"ok"));
        let mut dec = Decoder::new(100);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in wire.chunks(512) {
            buf.extend_from_slice(chunk);
            while let Some(ev) = dec.decode(&mut buf).unwrap() {
                events.push(ev);
            }
            assert!(buf.len() <= 512 + 14, "buffered {}", buf.len());
        }
        assert_eq!(
            events,
            vec![
                Incoming::TooLarge { len: 10_000 },
                Incoming::Text(Bytes::from("ok"))
            ]
        );
    }

    #[test]
    fn oversized_fragmented_message_is_skipped_whole() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(false, OP_TEXT, &[b'a'; 60]));
        buf.extend_from_slice(&client_frame(false, OP_CONTINUATION, &[b'a'; 60]));
        buf.extend_from_slice(&client_frame(true, OP_CONTINUATION, &[b'a'; 10]));
        buf.extend_from_slice(&client_frame(true, OP_TEXT, b"next"));
        let mut dec = Decoder::new(100);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Incoming::TooLarge { len: 130 })
        );
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Incoming::Text(Bytes::from("next")))
        );
    }

    #[test]
    fn protocol_violations_are_reported() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], 1002),               // unmasked
            (client_frame(true, 0x3, b""), 1002),               // unknown opcode
            (client_frame(true, OP_CONTINUATION, b"x"), 1002),  // stray continuation
            (client_frame(false, OP_PING, b""), 1002),          // fragmented control
            (client_frame(true, OP_TEXT, &[0xff, 0xfe]), 1007), // bad UTF-8
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ), // RSV1
        ];
        for (wire, code) in cases {
            let mut buf = BytesMut::from(&wire[..]);
            let err = Decoder::new(100).decode(&mut buf).unwrap_err();
            assert_eq!(err.close_code, code, "{wire:?}");
        }
    }

    /// Feeds `wire` one byte at a time; returns the index of the byte at which decoding
    /// failed (and the violation), or the events decoded if it never did.
    fn feed_bytewise(
        dec: &mut Decoder,
        wire: &[u8],
    ) -> Result<Vec<Incoming>, (usize, ProtocolViolation)> {
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(ev)) => events.push(ev),
                    Ok(None) => break,
                    Err(v) => return Err((i, v)),
                }
            }
        }
        Ok(events)
    }

    /// Autobahn 6.4.1: a text message whose second fragment holds a code point past U+10FFFF
    /// (F4 90 80 80) fails as soon as the byte making it invalid (0x90) arrives, not when
    /// the message ends.
    #[test]
    fn invalid_utf8_fails_fast_in_the_fragment_that_breaks_it() {
        let part1 = "κόσμε".as_bytes();
        let part2 = [0xf4, 0x90, 0x80, 0x80];
        let mut wire = client_frame(false, OP_TEXT, part1);
        let bad_at = wire.len() + 6 + 1; // the second frame's header, then F4, then 0x90
        wire.extend_from_slice(&client_frame(false, OP_CONTINUATION, &part2));
        wire.extend_from_slice(&client_frame(true, OP_CONTINUATION, b"edited"));
        let (at, v) = feed_bytewise(&mut Decoder::new(1024), &wire).unwrap_err();
        assert_eq!((at, v.close_code), (bad_at, 1007));
    }

    /// Autobahn 6.4.3 and 6.4.4: the same inside one frame that arrives in pieces: it fails
    /// at the invalid byte, before the frame is complete.
    #[test]
    fn invalid_utf8_fails_fast_inside_a_frame_still_arriving() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        let bad_at = 6 + payload.len() + 1; // header and mask, part 1, F4, then 0x90
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"edited");
        let wire = client_frame(true, OP_TEXT, &payload);
        let (at, v) = feed_bytewise(&mut Decoder::new(1024), &wire).unwrap_err();
        assert_eq!((at, v.close_code), (bad_at, 1007));
        // A longer frame (16-bit length), invalid far from its start.
        let mut payload = vec![b'a'; 300];
        payload.extend_from_slice(&[0xed, 0xa0, 0x80]); // a surrogate: invalid at 0xA0
        payload.extend_from_slice(&[b'b'; 100]);
        let wire = client_frame(true, OP_TEXT, &payload);
        let (at, v) = feed_bytewise(&mut Decoder::new(1024), &wire).unwrap_err();
        assert_eq!((at, v.close_code), (8 + 300 + 1, 1007));
    }

    /// Autobahn 6.2.x: valid text cut into fragments at every byte (inside code points too),
    /// each fragment arriving byte by byte, is one message.
    #[test]
    fn utf8_cut_between_fragments_at_every_byte_is_accepted() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 😀";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut wire = client_frame(false, OP_TEXT, &bytes[..cut]);
            wire.extend_from_slice(&client_frame(true, OP_PING, b"p"));
            wire.extend_from_slice(&client_frame(true, OP_CONTINUATION, &bytes[cut..]));
            let events = feed_bytewise(&mut Decoder::new(1024), &wire).unwrap();
            assert_eq!(
                events,
                vec![
                    Incoming::Ping(Bytes::from("p")),
                    Incoming::Text(Bytes::from(text))
                ],
                "cut at {cut}"
            );
        }
    }

    /// A message ending inside a code point is invalid, at its last byte.
    #[test]
    fn text_ending_inside_a_code_point_is_invalid() {
        let snowman = "☃".as_bytes();
        let mut wire = client_frame(false, OP_TEXT, b"a");
        wire.extend_from_slice(&client_frame(true, OP_CONTINUATION, &snowman[..2]));
        let (at, v) = feed_bytewise(&mut Decoder::new(1024), &wire).unwrap_err();
        assert_eq!((at, v.close_code), (wire.len() - 1, 1007));
        // The next message starts clean after a valid one.
        let mut dec = Decoder::new(1024);
        let mut wire = client_frame(true, OP_TEXT, snowman);
        wire.extend_from_slice(&client_frame(true, OP_BINARY, &[0xff]));
        wire.extend_from_slice(&client_frame(true, OP_TEXT, b"ok"));
        assert_eq!(
            feed_bytewise(&mut dec, &wire).unwrap(),
            vec![
                Incoming::Text(Bytes::from("☃")),
                Incoming::Binary(Bytes::from_static(&[0xff])),
                Incoming::Text(Bytes::from("ok"))
            ]
        );
    }

    /// A close code that must never be sent, is reserved or out of range fails the connection
    /// with 1002; valid ones are handed on (issue 9, item 7).
    #[test]
    fn close_codes_are_validated() {
        let close = |code: u16| {
            let mut buf = BytesMut::from(&client_frame(true, OP_CLOSE, &code.to_be_bytes())[..]);
            Decoder::new(100).decode(&mut buf)
        };
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close(code).unwrap_err(),
                violation("invalid close code"),
                "{code}"
            );
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 3999, 4000, 4999,
        ] {
            assert_eq!(
                close(code).unwrap(),
                Some(Incoming::Close(Some(code), String::new())),
                "{code}"
            );
        }
    }

    #[test]
    fn close_frame_is_parsed() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut buf = BytesMut::from(&client_frame(true, OP_CLOSE, &payload)[..]);
        assert_eq!(
            Decoder::new(100).decode(&mut buf).unwrap(),
            Some(Incoming::Close(Some(1000), "bye".into()))
        );
    }

    #[test]
    fn unmask_handles_all_lengths() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut masked: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            unmask(&mut masked, mask);
            assert_eq!(masked, data);
        }
    }

    /// Unmasking a payload in two parts, the second from its offset, at every cut.
    #[test]
    fn unmask_from_an_offset_matches_unmasking_whole() {
        let data: Vec<u8> = (0..37u8).collect();
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let masked: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        for cut in 0..=data.len() {
            let mut parts = masked.clone();
            let (head, tail) = parts.split_at_mut(cut);
            unmask_from(head, mask, 0);
            unmask_from(tail, mask, cut);
            assert_eq!(parts, data, "cut at {cut}");
        }
    }
}
