//! Transports, knowing nothing of any dialect: the WebSocket ([`ws`]: a dialect's session
//! speaks through it), and plain HTTP responses: a dialect admits and subscribes its client
//! (whose outbox holds [`herald_protocol::records`]) and hands it here with the [`Framing`]
//! to use.
//!
//! - [`feed`]: one long response (Server-Sent Events, or lines as the dialect wrote them),
//!   fed from the client's outbox until the client or the reader goes.
//! - [`feed::wait`]: one long-poll: the records that arrive within a time, for the dialect to
//!   answer with; its client leaves the hub when the [`feed::Leaving`] guard goes, even if the
//!   request is dropped midway.
//! - [`direct`]: a connection that opens with a streaming request is served on the socket
//!   itself, without hyper's buffers.
//! - [`linger`]: a connection hyper serves, closed after draining what the client still
//!   sends when an answer left its request body unread.

pub mod direct;
pub mod feed;
pub mod linger;
pub mod subscribe;
pub mod ws;

pub use feed::{Cutoff, Framing, Leaving, Stream, allow_origin, respond, wait};
pub use linger::{Linger, Lingering};
pub use subscribe::{channel_list, subscribe};
