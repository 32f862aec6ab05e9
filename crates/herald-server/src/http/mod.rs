//! The HTTP side of the main listener: the API under `/api/v1`, `/healthz`, the OpenAPI
//! document, and the `/ws` upgrade route (handed to [`crate::ws`]).

mod auth;
mod error;
mod routes;
mod subsocket;
mod wspush;

pub use error::ApiError;
pub(crate) use routes::publish_request;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post};
use utoipa::OpenApi;

use crate::server::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald HTTP API", description = "Publish and manage channels and clients. Errors are {\"error\":{\"code\",\"message\"}} with the codes of docs/errors.md."),
    paths(
        routes::publish, routes::list_channels, routes::create_channel, routes::get_channel,
        routes::delete_channel, routes::get_history, routes::delete_history,
        routes::get_presence, routes::get_presence_stats, routes::list_clients, routes::get_client, routes::subscribe_client,
        routes::unsubscribe_client, routes::send_to_client, routes::kick_client, routes::get_user,
        routes::kick_user, routes::send_to_user, routes::create_ban, routes::list_bans,
        routes::delete_ban, routes::stats, routes::nodes, routes::healthz
    ),
    tags(
        (name = "publish", description = "Publish to channels"),
        (name = "channels", description = "Persistent channels and their tokens"),
        (name = "clients", description = "Connected clients: inspect, subscribe, message, kick"),
        (name = "users", description = "All connections of a user"),
        (name = "bans", description = "Bans by address, range or user"),
        (name = "server", description = "Health and counters"),
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The SubSocket dialect's original paths: `/socket` and `/api.v1/...`.
fn subsocket_routes() -> Router<Arc<AppState>> {
    use axum::routing::any;
    Router::new()
        .route("/socket", get(crate::ws::upgrade_subsocket))
        .route("/api.v1/channels/list", any(subsocket::channels_list))
        .route("/api.v1/channels/put", any(subsocket::channels_put))
        .route("/api.v1/channels/del", any(subsocket::channels_del))
        .route(
            "/api.v1/clients/subscribe",
            any(subsocket::clients_subscribe),
        )
        .route(
            "/api.v1/clients/unsubscribe",
            any(subsocket::clients_unsubscribe),
        )
        .route("/api.v1/clients/kick", any(subsocket::clients_kick))
        .route("/api.v1/clients/ban", any(subsocket::clients_ban))
        .route("/static", get(subsocket::static_file))
        .route("/static/", get(subsocket::static_file))
        .route("/static/{*path}", get(subsocket::static_file))
}

/// A listener of the SubSocket dialect's own: its original paths at the root.
pub fn subsocket_router(state: Arc<AppState>) -> Router {
    subsocket_routes()
        .route("/healthz", get(routes::healthz))
        .fallback(routes::not_found)
        .with_state(state)
}

/// The WS-PushServer dialect's HTTP API paths.
fn wspush_http_routes() -> Router<Arc<AppState>> {
    use axum::routing::any;
    Router::new()
        .route("/channel/create", any(wspush::create))
        .route("/channel/ping", any(wspush::ping))
        .route("/channel/delete", any(wspush::delete))
        .route("/push", any(wspush::push))
        .route("/sysadmin", any(wspush::sysadmin))
}

/// A listener of the WS-PushServer HTTP API's own (the original's HTTP port).
pub fn wspush_http_router(state: Arc<AppState>) -> Router {
    wspush_http_routes()
        .route("/healthz", get(routes::healthz))
        .fallback(routes::not_found)
        .with_state(state)
}

/// A listener of the WS-PushServer WebSocket's own: every path is its WebSocket.
pub fn wspush_ws_router(state: Arc<AppState>) -> Router {
    any_path_router(state, get(crate::ws::upgrade_wspush))
}

/// A listener of its own for a dialect whose WebSocket answers on every path.
fn any_path_router(state: Arc<AppState>, upgrade: MethodRouter<Arc<AppState>>) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .fallback(upgrade)
        .with_state(state)
}

/// A listener of the Eventual dialect's own: every path is its WebSocket.
pub fn eventual_router(state: Arc<AppState>) -> Router {
    any_path_router(state, get(crate::ws::upgrade_eventual))
}

/// A listener of the SimplySocket dialect's own: every path is its WebSocket.
pub fn simplysocket_router(state: Arc<AppState>) -> Router {
    any_path_router(state, get(crate::ws::upgrade_simplysocket))
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_http_body_bytes;
    let api = Router::new()
        .route("/publish", post(routes::publish))
        .route(
            "/channels",
            get(routes::list_channels).post(routes::create_channel),
        )
        .route(
            "/channels/{name}",
            get(routes::get_channel).delete(routes::delete_channel),
        )
        .route(
            "/channels/{name}/history",
            get(routes::get_history).delete(routes::delete_history),
        )
        .route("/channels/{name}/presence", get(routes::get_presence))
        .route(
            "/channels/{name}/presence_stats",
            get(routes::get_presence_stats),
        )
        .route("/clients", get(routes::list_clients))
        .route(
            "/clients/{id}",
            get(routes::get_client).delete(routes::kick_client),
        )
        .route("/clients/{id}/subscribe", post(routes::subscribe_client))
        .route(
            "/clients/{id}/unsubscribe",
            post(routes::unsubscribe_client),
        )
        .route("/clients/{id}/send", post(routes::send_to_client))
        .route(
            "/users/{user}",
            get(routes::get_user).delete(routes::kick_user),
        )
        .route("/users/{user}/send", post(routes::send_to_user))
        .route("/bans", get(routes::list_bans).post(routes::create_ban))
        .route("/bans/{id}", delete(routes::delete_ban))
        .route("/stats", get(routes::stats))
        .route("/nodes", get(routes::nodes))
        .route("/openapi.json", get(openapi_json));
    let subsocket = &state.config.dialects.subsocket;
    let mut router = Router::new();
    if subsocket.enabled && !subsocket.prefix.is_empty() {
        router = router.nest(&subsocket.prefix, subsocket_routes());
    }
    let dialects = &state.config.dialects;
    if dialects.pushstream.enabled && !dialects.pushstream.prefix.is_empty() {
        router = router.nest(
            &dialects.pushstream.prefix,
            crate::dialects::pushstream::routes(),
        );
    }
    if dialects.wspush.enabled && !dialects.wspush.prefix.is_empty() {
        let prefix = &dialects.wspush.prefix;
        router = router
            .nest(prefix, wspush_http_routes())
            .route(&format!("{prefix}/ws"), get(crate::ws::upgrade_wspush))
            .route(
                &format!("{prefix}/ws/{{*path}}"),
                get(crate::ws::upgrade_wspush),
            );
    }
    for (mount, upgrade) in [
        (&dialects.eventual, get(crate::ws::upgrade_eventual)),
        (&dialects.simplysocket, get(crate::ws::upgrade_simplysocket)),
    ] {
        if mount.enabled && !mount.prefix.is_empty() {
            let prefix = &mount.prefix;
            router = router
                .route(prefix, upgrade.clone())
                .route(&format!("{prefix}/{{*path}}"), upgrade);
        }
    }
    router
        .nest("/api/v1", api)
        .route("/healthz", get(routes::healthz))
        .route("/ws", get(crate::ws::upgrade))
        .route("/sse", get(crate::stream::sse))
        .route("/stream", get(crate::stream::stream))
        .route("/poll", get(crate::stream::poll))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A dialect's own listener: its `routes` at the root, with `/healthz` and the JSON 404.
pub fn own_listener(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .route("/healthz", get(routes::healthz))
        .fallback(routes::not_found)
        .with_state(state)
}

/// The main listener's streaming paths ([`crate::transport::direct`]): the native
/// protocol's SSE and streaming, and push-stream's when it is mounted there.
pub fn stream_paths(config: &crate::config::Config) -> Vec<String> {
    let mut paths: Vec<String> = crate::stream::STREAM_PATHS
        .iter()
        .map(|p| p.to_string())
        .collect();
    let pushstream = &config.dialects.pushstream;
    if pushstream.enabled && !pushstream.prefix.is_empty() {
        paths.extend(crate::dialects::pushstream::stream_paths(
            &pushstream.prefix,
        ));
    }
    paths
}
