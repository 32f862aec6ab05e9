//! herald-client: a small Rust client for Herald, used by the integration tests, by
//! `herald pub` / `herald sub` and by `herald bench`.
//!
//! This file owns the crate layout and the re-exports; the pieces live in:
//! * [`ws`]: [`Client`], one native-protocol WebSocket connection (JSON text frames at `/ws`),
//!   and the [`Event`]s it yields;
//! * [`api`]: [`Api`], a keep-alive HTTP/1.1 client for the HTTP API (`/api/v1/...`);
//! * [`os`]: operating-system helpers for load generation (file-descriptor limit, TCP connects
//!   bound to a chosen source address, clock ticks for `/proc` CPU readings).
//!
//! Errors are [`anyhow::Error`]s; the ones a caller may want to inspect are typed and can be
//! recovered with `downcast_ref`: [`HandshakeRejected`] (the server answered the WebSocket
//! upgrade with a non-101 status), [`ReplyError`] (a request got an `error` reply) and
//! [`HttpError`] (an HTTP helper got a non-2xx answer).

pub mod api;
pub mod os;
pub mod ws;

pub use api::{Api, HttpError};
pub use ws::{Client, Event, HandshakeRejected, ReplyError};
