//! What travels between nodes on any backplane: a publication's envelope and a presence
//! record (join/leave notices and Redis's presence entries).

use bytes::Bytes;
use herald_core::ClientId;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What follows the offset and epoch in a published message.
#[derive(Serialize, Deserialize)]
pub struct Envelope<'a> {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<Vec<String>>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// A publication's publisher, recipients and data, read back from an envelope.
pub type Parsed = (Option<ClientId>, Option<Vec<ClientId>>, Bytes);

impl Envelope<'_> {
    /// `None` for anything malformed (nothing read from Redis is taken for well-formed; what
    /// is well-formed is believed: docs/scaling.md, the broker is trusted like the admin key).
    pub fn parse(text: &str) -> Option<Parsed> {
        let envelope: Envelope = serde_json::from_str(text).ok()?;
        let from = match &envelope.from {
            Some(id) => Some(ClientId::parse(id).ok()?),
            None => None,
        };
        let to = match &envelope.to {
            Some(ids) => Some(
                ids.iter()
                    .map(|id| ClientId::parse(id).ok())
                    .collect::<Option<Vec<_>>>()?,
            ),
            None => None,
        };
        Some((
            from,
            to,
            Bytes::copy_from_slice(envelope.data.get().as_bytes()),
        ))
    }
}

/// What a presence entry and a join/leave notice carry.
#[derive(Serialize, Deserialize)]
pub struct PresenceRecord {
    pub client: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub node: String,
}
