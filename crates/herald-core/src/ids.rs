//! Client ids: random (v4) UUIDs, printed in the usual hyphenated form. And what a user id
//! may be ([`check_user_id`]), whoever vouches for it (a JWT, the auth hook).

use std::fmt;
use std::str::FromStr;

use crate::error::{ErrorCode, HeraldError};

/// The id the server gives a connection in its welcome frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClientId(uuid::Uuid);

impl ClientId {
    /// A fresh random (v4) id, from the thread's CSPRNG (seeded from the OS once per
    /// thread, reseeded as it goes): no `getrandom` system call per connection.
    pub fn random() -> Self {
        let bytes: [u8; 16] = rand::random();
        ClientId(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Parses a client id as sent by a user, with an `invalid_client_id` error otherwise.
    pub fn parse(s: &str) -> Result<Self, HeraldError> {
        s.parse()
    }

    /// The id's 16 bytes (for compact storage).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ClientId(uuid::Uuid::from_bytes(bytes))
    }

    /// A stable 64-bit hash input for shard selection.
    pub fn shard_key(&self) -> u64 {
        let b = self.0.as_u64_pair();
        b.0 ^ b.1
    }
}

impl FromStr for ClientId {
    type Err = HeraldError;
    fn from_str(s: &str) -> Result<Self, HeraldError> {
        uuid::Uuid::try_parse(s).map(ClientId).map_err(|_| {
            HeraldError::new(
                ErrorCode::InvalidClientId,
                format!("client id {:?} is not a UUID", truncate(s, 64)),
            )
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Longest user id, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// Whether `c` is a control character, or an invisible one that reorders or hides text
/// (bidirectional overrides and isolates, line and paragraph separators, zero-width space,
/// word joiner, byte-order mark). None may be in a user id, and log lines escape them: a
/// value that holds them could start a forged line, move the terminal, or pass for another.
/// (Zero-width joiners stay: emoji and some scripts need them.)
pub fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A user id as a credential may give it: 1 to [`MAX_USER_LEN`] bytes, no character that
/// [`hides_text`]. The error says which rule failed.
pub fn check_user_id(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(format!("a user id is 1 to {MAX_USER_LEN} bytes"));
    }
    if let Some(c) = user.chars().find(|c| hides_text(*c)) {
        return Err(format!(
            "a user id may not hold control or invisible characters ({})",
            c.escape_unicode()
        ));
    }
    Ok(())
}

/// Cuts user input for inclusion in an error message, on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_refuse_what_hides_text() {
        for ok in [
            "alice",
            "42",
            "Zoë",
            "👩\u{200D}💻",
            &"a".repeat(MAX_USER_LEN),
        ] {
            assert_eq!(check_user_id(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "bob\r\nWARN forged",
            "\u{1b}[31mred",
            "nul\0",
            "admin\u{202E}",
            "ad\u{200B}min",
            "\u{FEFF}alice",
            "a\u{2028}b",
            &"a".repeat(MAX_USER_LEN + 1),
        ] {
            assert!(check_user_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id = ClientId::random();
        assert_eq!(ClientId::parse(&id.to_string()).unwrap(), id);
        let err = ClientId::parse("not-a-uuid").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClientId);
    }

    #[test]
    fn random_ids_are_version_4_and_distinct() {
        let ids: std::collections::HashSet<ClientId> =
            (0..1000).map(|_| ClientId::random()).collect();
        assert_eq!(ids.len(), 1000);
        let one = ids.iter().next().unwrap();
        assert_eq!(one.0.get_version_num(), 4);
        assert_eq!(one.0.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
