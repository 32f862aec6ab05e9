//! Herald's core: the hub and everything it owns, with no network code.
//!
//! A connection (whatever its transport or dialect) is a [`ClientHandle`] in the hub's
//! [`Registry`]: an id, an [`Outbox`] of ready-to-write frames and the [`WireFormat`] that turns
//! hub events into those frames. The [`Hub`] checks every command against policy, updates the
//! registry, asks the [`Broker`] to publish and fans publications out, encoding each one once per
//! wire format. Durable state (channels created through the API and their tokens) goes through
//! the [`Store`] trait. The HTTP API, WebSocket sessions and (later) admin clients all drive the
//! same hub operations, so they behave identically.

pub mod bans;
pub mod broker;
pub mod channel;
pub mod client;
pub mod disconnect;
pub mod error;
pub mod events;
pub mod format;
pub mod history;
pub mod hub;
pub mod ids;
pub mod lifecycle;
pub mod outbox;
pub mod publication;
pub mod secret;
pub mod stats;
pub mod store;

pub use broker::{Broker, MemoryBroker};
pub use channel::{ChannelName, ChannelOptions, SubscribePolicy};
pub use client::{ClientHandle, ClientInfo};
pub use disconnect::{Disconnect, DisconnectReason};
pub use error::{ErrorCode, HeraldError};
pub use events::EventSink;
pub use format::{Message, RawJson, WireFormat};
pub use hub::{Actor, Hub, HubConfig};
pub use ids::ClientId;
pub use lifecycle::{Event, EventMask, EventType};
pub use outbox::Outbox;
pub use store::{ChannelRecord, MemoryStore, Store};
