//! The SubSocket dialect: its WebSocket at `/socket` ([`ws`]) and its REST API under
//! `/api.v1/` with the `/static/` pages ([`http`]), under `dialects.subsocket.prefix` on the
//! main listener and at the root of its own listener.

pub mod http;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};

use crate::config::Config;
use crate::state::AppState;
use crate::transport::direct::Served;
use crate::transport::ws::upgrade;

pub const ENTRY: super::Entry = super::Entry {
    name: herald_protocol::subsocket::DIALECT,
    mount,
    streams: super::no_streams,
    own,
    upgrades: super::no_upgrades,
};

/// The original paths: `/socket`, `/api.v1/...` and `/static/`.
fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/socket", get(upgrade::<ws::SubSocket>))
        .route("/api.v1/channels/list", any(http::channels_list))
        .route("/api.v1/channels/put", any(http::channels_put))
        .route("/api.v1/channels/del", any(http::channels_del))
        .route("/api.v1/clients/subscribe", any(http::clients_subscribe))
        .route(
            "/api.v1/clients/unsubscribe",
            any(http::clients_unsubscribe),
        )
        .route("/api.v1/clients/kick", any(http::clients_kick))
        .route("/api.v1/clients/ban", any(http::clients_ban))
        .route("/static", get(http::static_file))
        .route("/static/", get(http::static_file))
        .route("/static/{*path}", get(http::static_file))
}

fn mount(router: Router<Arc<AppState>>, config: &Config) -> Router<Arc<AppState>> {
    match super::mounted(&config.dialects.subsocket) {
        Some(prefix) => router.nest(prefix, routes()),
        None => router,
    }
}

fn own(config: &Config) -> Vec<super::OwnListener> {
    vec![super::OwnListener {
        name: "subsocket",
        mount: config.dialects.subsocket.clone(),
        serve: |state| Served::plain(crate::http::own_listener(routes(), state)),
    }]
}
