//! herald-server: everything between the network and the hub.
//!
//! - [`server`]: builds the hub from the [`config::Config`], binds the listeners, runs the
//!   accept loop (hyper HTTP/1.1 with upgrades), the keep-alive pinger and graceful shutdown.
//! - [`http`]: the HTTP API under `/api/v1` (axum), `/healthz`, the OpenAPI document.
//! - [`console`]: the embedded web admin console at `/console`.
//! - [`transport`]: the WebSocket transport (handshake, per-connection task) and the HTTP
//!   ones (SSE, streaming, long-polling), for any dialect.
//! - [`dialects`]: each protocol in one home (sessions, routes, mount), and their table.
//! - [`admission`]: admitting a connection (credential, bans, origin, connection slots).
//! - [`store`]: the embedded redb store.
//! - [`admin_key`]: loading or generating the admin key.
//! - [`admin`]: management request bodies shared by the HTTP API and admin connections.
//! - [`auth`]: connection credentials (admin key, connection tokens).
//! - [`auth_hook`]: asking the app's backend by HTTP POST at connect, subscribe and publish.
//! - [`jwt`]: verifying and minting JSON Web Tokens.
//! - [`tls`]: loading `[tls]`'s certificate and key into a rustls configuration.
//! - [`webhooks`]: lifecycle events POSTed to the configured endpoints as CloudEvents.
//! - [`limits`]: per-IP, per-user, connection-rate, origin and message-rate limits.
//! - [`history_store`]: writing channel history to the store in batches, and its sweep.
//! - [`cluster`]: several nodes as one: the Redis broker and the control plane between nodes.
//! - [`ingress`]: publishing what arrives on a queue (a Redis stream, a NATS subject).

pub mod admin;
pub mod admin_key;
pub mod admission;
pub mod auth;
pub mod auth_hook;
pub mod cluster;
pub mod config;
pub mod console;
pub mod dialects;
pub mod drop_log;
pub mod error;
pub mod history_store;
pub mod http;
pub mod ingress;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod state;
pub mod store;

pub mod tls;
pub mod transport;
pub mod webhooks;

pub use config::Config;
pub use server::{RunningServer, start};
