//! Herald's wire formats as pure codecs: bytes in, commands out; hub events in, bytes out.
//! Nothing here touches a socket, so every codec can be unit-tested and fuzzed alone.
//!
//! - [`ws`]: RFC 6455 server-side framing (handshake key, frame encoder, incremental decoder
//!   with size limits).
//! - [`json`]: JSON reading shared by every codec (escaped strings, repeated members).
//! - [`native`]: Herald's native JSON protocol (requests, replies, deliveries) and its
//!   [`herald_core::WireFormat`] over WebSocket.

pub mod eventual;
pub mod json;
pub mod native;
pub mod pushstream;
pub mod records;
pub mod simplysocket;
pub mod subsocket;
pub mod ws;
pub mod wspush;
