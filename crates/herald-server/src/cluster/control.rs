//! Control messages between nodes: requests one node asks the others to carry out, and
//! notices every node applies (how this node carries each out: [`super::carry`]).
//!
//! A request names an operation on a client or user the asking node does not have (or not
//! only it): every live node answers, the ones without that client with a count of 0. A
//! notice (request id 0) tells of a change every node applies to its own state and is not
//! answered. Policy was checked on the asking node; the receiving node acts as the admin.

use herald_core::HeraldError;
use herald_core::bans::BanRecord;
use herald_core::store::ChannelRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An operation for the other nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Close a client's connection (answer: 1 where it was).
    Kick {
        client: String,
        code: u16,
        reason: String,
    },
    /// Close every connection of a user (answer: how many).
    KickUser {
        user: String,
        code: u16,
        reason: String,
    },
    /// A direct message to a client (answer: 1 where it was queued).
    Send {
        client: String,
        #[serde(default)]
        from: Option<String>,
        data: Box<RawValue>,
    },
    /// A direct message to every connection of a user (answer: how many).
    SendUser { user: String, data: Box<RawValue> },
    /// A client's summary, as `GET /api/v1/clients/{id}` shows it.
    Inspect { client: String },
    /// Subscribe a client to channels as the admin (answer: the channels that changed).
    Subscribe {
        client: String,
        channels: Vec<String>,
    },
    /// Unsubscribe a client (answer: the channels that changed).
    Unsubscribe {
        client: String,
        channels: Vec<String>,
    },
    /// Ban a client's user or address (answer: the ban and how many it closed there).
    BanClient {
        client: String,
        duration_secs: Option<u64>,
        reason: String,
    },
    /// Who is subscribed to a channel here (answer: `[[client, user], ...]`), for presence
    /// over a backplane that keeps none (NATS).
    Presence { channel: String },
    /// Notice: a ban was put in force (kept in the shared store).
    Banned { ban: BanRecord },
    /// Notice: a ban was lifted.
    Unbanned { id: String },
    /// Notice: an API channel was created or its options replaced.
    ChannelPut { channel: ChannelRecord },
    /// Notice: a channel was deleted.
    ChannelDeleted { name: String },
    /// The lifecycle events the sending node's admin connections listen to (answered, so the
    /// listener is told it listens once every live node relays).
    Listening { mask: u32 },
    /// Notice: lifecycle events of the sending node, for admin connections elsewhere.
    Events { events: Vec<RelayedEvent> },
}

/// A lifecycle event as it travels to other nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayedEvent {
    pub event: String,
    pub seq: u64,
    pub time_ms: u64,
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// A control message on the wire: the operation, its id (0: a notice) and who sends it.
#[derive(Serialize, Deserialize)]
pub struct ControlRequest {
    pub id: u64,
    pub from: String,
    pub control: Control,
}

/// One node's answer: what it did (`count`), and for operations on one client the result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub id: u64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The error (code and message) where the node had the client but refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(String, String)>,
}

impl Answer {
    pub(super) fn of(id: u64, result: Option<Result<serde_json::Value, HeraldError>>) -> Answer {
        match result {
            None => Answer {
                id,
                ..Answer::default()
            },
            Some(Ok(value)) => Answer {
                id,
                count: 1,
                value: Some(value),
                error: None,
            },
            Some(Err(e)) => Answer {
                id,
                count: 1,
                value: None,
                error: Some((e.code.as_str().to_string(), e.message)),
            },
        }
    }

    pub fn into_result(self) -> Result<serde_json::Value, HeraldError> {
        match self.error {
            Some((code, message)) => {
                let code = herald_core::ErrorCode::ALL
                    .into_iter()
                    .find(|c| c.as_str() == code)
                    .unwrap_or(herald_core::ErrorCode::Internal);
                Err(HeraldError::new(code, message))
            }
            None => Ok(self.value.unwrap_or_default()),
        }
    }
}
