//! The seed dialects, one folder each: its sessions, its HTTP routes and its mount. The
//! codecs live in herald-protocol; the transports (WebSocket in [`crate::ws`], HTTP in
//! [`crate::transport`]) know nothing of any dialect.

pub mod pushstream;
