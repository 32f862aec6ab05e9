//! The push-stream dialect (gogin's NGINX push-stream module, WIRE.md §3), every mode its
//! `pushstream.js` client has:
//!
//! - `/subscribe/<ch1>/<ch2>`: WebSocket ([`ws`]);
//! - `/ev/<channels>`: EventSource, `/lp/<channels>`: long-polling (with JSONP), `/sub/<channels>`:
//!   streaming (the iframe form `pushstream.js` loads, or JSON lines) ([`http`]);
//! - `/pub?id=<channel>`: the publisher, and `/channels-stats` ([`publisher`]).
//!
//! Subscribers name their channels in the URL, or the app backend names them
//! ([`subscriber`]). Mounted under `dialects.pushstream.prefix` on the main listener, and at
//! the root of its own listener when `dialects.pushstream.listen` is set.

pub mod http;
pub mod publisher;
pub mod subscriber;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};

use crate::server::AppState;

/// The dialect's paths, relative to its mount.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/subscribe", get(ws::upgrade))
        .route("/subscribe/", get(ws::upgrade))
        .route("/subscribe/{*channels}", get(ws::upgrade))
        .route("/ev", get(http::eventsource))
        .route("/ev/", get(http::eventsource))
        .route("/ev/{*channels}", get(http::eventsource))
        .route("/lp", get(http::longpolling))
        .route("/lp/", get(http::longpolling))
        .route("/lp/{*channels}", get(http::longpolling))
        .route("/sub", get(http::stream))
        .route("/sub/", get(http::stream))
        .route("/sub/{*channels}", get(http::stream))
        .route("/pub", any(publisher::publisher))
        .route("/channels-stats", get(publisher::channels_stats))
}

/// The paths under `prefix` whose responses are streams (served without hyper:
/// [`crate::transport::direct`]).
pub fn stream_paths(prefix: &str) -> Vec<String> {
    vec![format!("{prefix}/ev/"), format!("{prefix}/sub/")]
}

/// A listener of the dialect's own: its paths at the root.
pub fn router(state: Arc<AppState>) -> Router {
    crate::http::own_listener(routes(), state)
}
