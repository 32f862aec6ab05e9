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

use crate::config::Config;
use crate::state::AppState;
use crate::transport::direct::Served;
use crate::transport::direct::StreamPaths;

pub const ENTRY: super::Entry = super::Entry {
    name: herald_protocol::pushstream::DIALECT,
    mount,
    streams: main_streams,
    own,
    upgrades: super::no_upgrades,
};

fn mount(router: Router<Arc<AppState>>, config: &Config) -> Router<Arc<AppState>> {
    match super::mounted(&config.dialects.pushstream.mount()) {
        Some(prefix) => router.nest(prefix, routes()),
        None => router,
    }
}

fn main_streams(config: &Config) -> Vec<String> {
    super::mounted(&config.dialects.pushstream.mount())
        .map(stream_paths)
        .unwrap_or_default()
}

fn own(config: &Config) -> Vec<super::OwnListener> {
    vec![super::OwnListener {
        name: "pushstream",
        mount: config.dialects.pushstream.mount(),
        serve: |state| Served {
            router: crate::http::own_listener(routes(), state),
            api: false,
            streams: Arc::new(StreamPaths::new(stream_paths(""))),
        },
    }]
}

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
