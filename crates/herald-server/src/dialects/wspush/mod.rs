//! The WS-PushServer dialect: its WebSocket ([`ws`]) and its HTTP API of `SERVER_ACTION`s
//! ([`http`]). On the main listener under `dialects.wspush.prefix` (the WebSocket at
//! `<prefix>/ws`); on listeners of its own, the WebSocket on every path of one and the API at
//! the root of the other, as the original's two ports.

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
    name: herald_protocol::wspush::DIALECT,
    mount,
    streams: super::no_streams,
    own,
    upgrades: super::no_upgrades,
};

/// The HTTP API's paths.
fn http_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/channel/create", any(http::create))
        .route("/channel/ping", any(http::ping))
        .route("/channel/delete", any(http::delete))
        .route("/push", any(http::push))
        .route("/sysadmin", any(http::sysadmin))
}

fn mount(router: Router<Arc<AppState>>, config: &Config) -> Router<Arc<AppState>> {
    let mount = config.dialects.wspush.mount();
    let Some(prefix) = super::mounted(&mount) else {
        return router;
    };
    router
        .nest(prefix, http_routes())
        .route(&format!("{prefix}/ws"), get(upgrade::<ws::WsPush>))
        .route(
            &format!("{prefix}/ws/{{*path}}"),
            get(upgrade::<ws::WsPush>),
        )
}

fn own(config: &Config) -> Vec<super::OwnListener> {
    vec![
        super::OwnListener {
            name: "wspush",
            mount: config.dialects.wspush.mount(),
            serve: super::serve_any_path::<ws::WsPush>,
        },
        super::OwnListener {
            name: "wspush-http",
            mount: config.dialects.wspush.http_mount(),
            serve: |state| Served::plain(crate::http::own_listener(http_routes(), state)),
        },
    ]
}
