//! Channel names and the options a channel carries.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, HeraldError};
use crate::ids::truncate;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 200;

/// Characters allowed besides ASCII letters and digits. `:` separates a namespace (issue 5)
/// from the rest; `/` and `.` allow path- and subject-like names.
pub const CHANNEL_NAME_PUNCTUATION: &str = "_-.:@/=+";

/// A validated channel name: 1 to 200 bytes of ASCII letters, digits and `_-.:@/=+`.
/// Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn parse(name: &str) -> Result<Self, HeraldError> {
        validate_name(name)?;
        Ok(ChannelName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:` (`chat` in `chat:room-1`), if any. Its
    /// options come from `[namespaces.<ns>]`; names without one (or with an unconfigured
    /// one) use the `[channels]` defaults.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }

    /// A stable hash for shard selection (FNV-1a; channel names are short).
    pub fn shard_key(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }
}

fn validate_name(name: &str) -> Result<(), HeraldError> {
    let invalid = |why: &str| {
        Err(HeraldError::new(
            ErrorCode::InvalidChannel,
            format!("invalid channel name {:?}: {why}", truncate(name, 64)),
        ))
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_CHANNEL_NAME_BYTES {
        return invalid("longer than 200 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !CHANNEL_NAME_PUNCTUATION.contains(*c))
    {
        return invalid(&format!(
            "character {c:?} not allowed (use letters, digits and {CHANNEL_NAME_PUNCTUATION})"
        ));
    }
    Ok(())
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelName::parse(&name).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// Who may subscribe to a channel (`subscribe` in a namespace or an API request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// Any client.
    Public,
    /// Holders of the channel's token, and admins (who may subscribe anybody).
    Private,
    /// Admins only (an admin connection, or the admin key subscribing a client).
    Admin,
}

impl SubscribePolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(SubscribePolicy::Public),
            "private" => Some(SubscribePolicy::Private),
            "admin" => Some(SubscribePolicy::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubscribePolicy::Public => "public",
            SubscribePolicy::Private => "private",
            SubscribePolicy::Admin => "admin",
        }
    }
}

/// Who may do what on a channel. Channels created on first use take their namespace's
/// options (`[namespaces.<ns>]`, else `[channels]`); channels created through the API take
/// what the request says, and their namespace's options for what it leaves out.
///
/// The fields added with namespaces (`admin_only_subscribe`, `echo`, `max_payload_bytes`)
/// have serde defaults, so records stored before them read as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelOptions {
    /// Any client may subscribe. When false, only admins, holders of the channel's token and
    /// the HTTP API can add subscribers.
    pub public: bool,
    /// Clients may publish to it over their connection (not only the HTTP API and admins).
    pub client_publish: bool,
    /// Most subscribers at once; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<u32>,
    /// Only admins may subscribe (`subscribe = "admin"`): the channel's token does not admit.
    /// Takes precedence over `public`. Left out of JSON when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin_only_subscribe: bool,
    /// A publishing client receives its own publication (when it is subscribed). Left out of
    /// JSON when true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub echo: bool,
    /// Largest `data` of a publication to this channel, in bytes; `None` = the global
    /// `limits.max_payload_bytes` (which a channel cannot raise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
    /// Publications kept for recovery and the history op (0: none). Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub history_size: u32,
    /// How long each kept publication lives, in seconds. Left out at the default (300).
    #[serde(
        default = "default_history_ttl",
        skip_serializing_if = "is_default_history_ttl"
    )]
    pub history_ttl_secs: u32,
    /// Subscribers may ask who is subscribed. Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub presence: bool,
    /// Subscribers are told when others join and leave. Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub join_leave: bool,
}

/// Most publications a channel may keep (`history_size`).
pub const MAX_HISTORY_SIZE: u32 = 10_000;
/// Longest time a publication may be kept (`history_ttl_secs`): a week.
pub const MAX_HISTORY_TTL_SECS: u32 = 7 * 24 * 3600;
/// The default `history_ttl_secs`.
pub const DEFAULT_HISTORY_TTL_SECS: u32 = 300;

fn default_history_ttl() -> u32 {
    DEFAULT_HISTORY_TTL_SECS
}

fn is_default_history_ttl(n: &u32) -> bool {
    *n == DEFAULT_HISTORY_TTL_SECS
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ChannelOptions {
    /// Who may subscribe, from `public` and `admin_only_subscribe`.
    pub fn subscribe(&self) -> SubscribePolicy {
        if self.admin_only_subscribe {
            SubscribePolicy::Admin
        } else if self.public {
            SubscribePolicy::Public
        } else {
            SubscribePolicy::Private
        }
    }

    /// Checks the history options' ranges; the message names the option.
    pub fn validate_history(&self) -> Result<(), String> {
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(format!("history_size must be at most {MAX_HISTORY_SIZE}"));
        }
        if self.history_ttl_secs == 0 || self.history_ttl_secs > MAX_HISTORY_TTL_SECS {
            return Err(format!(
                "history_ttl_secs must be between 1 and {MAX_HISTORY_TTL_SECS}"
            ));
        }
        Ok(())
    }

    /// Sets `public` and `admin_only_subscribe` for `policy`.
    pub fn set_subscribe(&mut self, policy: SubscribePolicy) {
        self.public = policy == SubscribePolicy::Public;
        self.admin_only_subscribe = policy == SubscribePolicy::Admin;
    }
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            public: true,
            client_publish: false,
            max_subscribers: None,
            admin_only_subscribe: false,
            echo: true,
            max_payload_bytes: None,
            history_size: 0,
            history_ttl_secs: DEFAULT_HISTORY_TTL_SECS,
            presence: false,
            join_leave: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_characters() {
        for ok in [
            "a",
            "chat:room-1",
            "user@example.com",
            "a/b.c_d=e+f",
            &"x".repeat(200),
        ] {
            ChannelName::parse(ok).unwrap();
        }
    }

    #[test]
    fn namespace_is_the_prefix_before_the_first_colon() {
        assert_eq!(
            ChannelName::parse("chat:a:b").unwrap().namespace(),
            Some("chat")
        );
        assert_eq!(ChannelName::parse(":a").unwrap().namespace(), Some(""));
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), None);
    }

    #[test]
    fn options_stored_before_namespaces_still_read() {
        let old: ChannelOptions =
            serde_json::from_str(r#"{"public":false,"client_publish":true,"max_subscribers":3}"#)
                .unwrap();
        assert_eq!(
            old,
            ChannelOptions {
                public: false,
                client_publish: true,
                max_subscribers: Some(3),
                ..Default::default()
            }
        );
        assert!(old.echo && !old.admin_only_subscribe && old.max_payload_bytes.is_none());
        // Options at their defaults serialize as before; others appear.
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"public":false,"client_publish":true,"max_subscribers":3}"#
        );
        let new = ChannelOptions {
            admin_only_subscribe: true,
            echo: false,
            max_payload_bytes: Some(10),
            ..old
        };
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(
            json,
            r#"{"public":false,"client_publish":true,"max_subscribers":3,"admin_only_subscribe":true,"echo":false,"max_payload_bytes":10}"#
        );
        assert_eq!(serde_json::from_str::<ChannelOptions>(&json).unwrap(), new);
        let mut o = ChannelOptions::default();
        for p in [
            SubscribePolicy::Admin,
            SubscribePolicy::Private,
            SubscribePolicy::Public,
        ] {
            o.set_subscribe(p);
            assert_eq!(o.subscribe(), p);
            assert_eq!(SubscribePolicy::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn rejects_bad_names_with_code() {
        for bad in ["", " ", "a b", "ü", "a\"b", &"x".repeat(201), "a*"] {
            let err = ChannelName::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidChannel, "{bad:?}");
        }
    }
}
