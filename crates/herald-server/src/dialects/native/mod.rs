//! Herald's native protocol: the WebSocket at `/ws` ([`ws`], with admin connections'
//! operations in [`admin`]), and the same protocol over plain HTTP: `/sse`, `/stream` and
//! `/poll` ([`http`]).

pub mod admin;
pub mod http;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::config::Config;
use crate::state::AppState;

pub const ENTRY: super::Entry = super::Entry {
    name: herald_protocol::native::DIALECT,
    mount,
    streams,
    own: super::no_listeners,
    upgrades,
};

/// Always on the main listener, at the root.
fn mount(router: Router<Arc<AppState>>, _: &Config) -> Router<Arc<AppState>> {
    router
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(http::sse))
        .route("/stream", get(http::stream))
        .route("/poll", get(http::poll))
}

/// `/ws`'s plain-TCP upgrades are served on the socket.
fn upgrades(_: &Config) -> Vec<String> {
    vec!["/ws".to_string()]
}

fn streams(_: &Config) -> Vec<String> {
    http::STREAM_PATHS.iter().map(|p| p.to_string()).collect()
}
