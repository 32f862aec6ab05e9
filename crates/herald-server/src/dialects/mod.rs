//! The dialects, one home each: its sessions, its HTTP routes and how it is mounted. The
//! codecs live in herald-protocol; the transports (WebSocket in [`crate::transport::ws`],
//! SSE, streaming and long-polling in [`crate::transport`]) know nothing of any dialect.
//!
//! [`TABLE`] lists them: the main listener's router mounts each ([`Entry::mount`]), the
//! server binds each one's listeners of its own ([`Entry::own`]), and streaming paths are
//! served without hyper ([`Entry::streams`]).

pub mod echo;
pub mod eventual;
pub mod native;
pub mod pushstream;
pub mod simplysocket;
pub mod subsocket;
pub mod wspush;

use std::sync::Arc;

use axum::Router;

use crate::config::{Config, DialectMount};
use crate::state::AppState;
use crate::transport::direct::Served;

/// A router of the main listener, before its state is given.
pub type Routes = Router<Arc<AppState>>;

/// A dialect, as the server and the router see it.
pub struct Entry {
    pub name: &'static str,
    /// Adds its routes to the main listener's router, where its configuration says.
    pub mount: fn(Routes, &Config) -> Routes,
    /// Its streaming paths on the main listener.
    pub streams: fn(&Config) -> Vec<String>,
    /// The listeners of its own it has (bound only when enabled with a `listen` address).
    pub own: fn(&Config) -> Vec<OwnListener>,
    /// Its WebSocket paths on the main listener whose plain-TCP upgrades are served on the
    /// socket ([`crate::transport::direct`]: the 101 leaves with the greeting).
    pub upgrades: fn(&Config) -> Vec<String>,
}

/// A listener of a dialect's own.
pub struct OwnListener {
    /// Its name in logs and `RunningServer::dialect_addrs`.
    pub name: &'static str,
    pub mount: DialectMount,
    pub serve: fn(Arc<AppState>) -> Served,
}

/// Every dialect.
pub const TABLE: &[Entry] = &[
    native::ENTRY,
    subsocket::ENTRY,
    eventual::ENTRY,
    simplysocket::ENTRY,
    pushstream::ENTRY,
    wspush::ENTRY,
    echo::ENTRY,
];

/// No streaming paths.
fn no_streams(_: &Config) -> Vec<String> {
    Vec::new()
}

/// No upgrade paths served on the socket.
fn no_upgrades(_: &Config) -> Vec<String> {
    Vec::new()
}

/// No listener of its own.
fn no_listeners(_: &Config) -> Vec<OwnListener> {
    Vec::new()
}

/// Mounts the WebSocket of `D` on every path under `mount`'s prefix (if mounted).
fn mount_any_path<D: crate::transport::ws::Dialect + Default>(
    router: Routes,
    mount: &DialectMount,
) -> Routes {
    let Some(prefix) = mounted(mount) else {
        return router;
    };
    let upgrade = axum::routing::get(crate::transport::ws::upgrade::<D>);
    router
        .route(prefix, upgrade.clone())
        .route(&format!("{prefix}/{{*path}}"), upgrade)
}

/// A listener of its own where every path is the WebSocket of `D`.
fn serve_any_path<D: crate::transport::ws::Dialect + Default>(state: Arc<AppState>) -> Served {
    let upgrade = axum::routing::get(crate::transport::ws::upgrade::<D>);
    Served::plain(crate::http::any_path_listener(upgrade, state))
}

/// `mount`'s prefix when the dialect is mounted on the main listener.
fn mounted(mount: &DialectMount) -> Option<&str> {
    (mount.enabled && !mount.prefix.is_empty()).then_some(mount.prefix.as_str())
}

/// Every dialect's routes on the main listener, where their configuration says.
pub fn main_routes(config: &Config) -> Routes {
    TABLE
        .iter()
        .fold(Router::new(), |router, d| (d.mount)(router, config))
}

/// The main listener's upgrade paths served on the socket ([`crate::transport::direct`]).
pub fn main_upgrade_paths(config: &Config) -> Vec<String> {
    TABLE.iter().flat_map(|d| (d.upgrades)(config)).collect()
}

/// The main listener's streaming paths ([`crate::transport::direct`]), as the dialects
/// mounted there list them.
pub fn main_stream_paths(config: &Config) -> Vec<String> {
    TABLE.iter().flat_map(|d| (d.streams)(config)).collect()
}
