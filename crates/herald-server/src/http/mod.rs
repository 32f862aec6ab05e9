//! The HTTP side of the main listener: the API under `/api/v1`, `/healthz`, the OpenAPI
//! document, the admin console (`crate::console`), around the dialects' routes; and what every dialect's own listener has
//! (`/healthz`, the JSON 404). A publisher's keep-alive connection is served by [`direct`]
//! (the same handlers, without hyper) until it sends another kind of request. Request bodies
//! on the routed path are bounded in size and time by [`body`] before any handler runs; one
//! refused for its size leaves its connection by a lingering close
//! ([`crate::transport::Linger`]).

mod auth;
mod body;
pub mod direct;
pub mod metrics;
mod routes;

pub use crate::error::ApiError;
pub(crate) use routes::publish_request;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post};
use utoipa::OpenApi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald HTTP API", description = "Publish and manage channels and clients. Errors are {\"error\":{\"code\",\"message\"}} with the codes of docs/errors.md."),
    paths(
        routes::publish, routes::batch, routes::list_channels, routes::create_channel, routes::get_channel,
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
    modifiers(&BearerAuth, &ServerErrors)
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

/// Gives every operation that documents its refusals (`4XX`) the server-side failures too:
/// the same error body, with the codes that a store, broker or hook outage answers.
struct ServerErrors;

impl utoipa::Modify for ServerErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                let Some(RefOr::T(refused)) = responses.get("4XX") else {
                    continue;
                };
                let mut failed = refused.clone();
                failed.description = "The server could not carry it out: 503 `store_unavailable`, \
                    `broker_unavailable` or `auth_unavailable`, 500 `internal` (docs/errors.md)"
                    .into();
                responses
                    .entry("5XX".to_string())
                    .or_insert(RefOr::T(failed));
            }
        }
    }
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// A listener of its own for a dialect whose WebSocket answers on every path.
pub fn any_path_listener(upgrade: MethodRouter<Arc<AppState>>, state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .fallback(upgrade)
        .with_state(state)
}

/// The main listener: the API, `/healthz`, the console, and `dialects` (the dialects' routes, mounted
/// where their configuration says).
pub fn router(dialects: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_http_body_bytes;
    let api = Router::new()
        .route("/publish", post(routes::publish))
        .route("/batch", post(routes::batch))
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
        .route("/openapi.json", get(openapi_json))
        .layer(axum::middleware::map_response(json_errors));
    dialects
        .nest("/api/v1", api)
        .merge(crate::console::routes())
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(metrics::with_key))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::bounded,
        ))
        .layer(axum::middleware::map_response(close_after_413))
        .with_state(state)
}

/// A 413 (a body over `limits.max_http_body_bytes`, or a payload over its limit) closes the
/// connection after the answer, and says so: a body refused for its size was left unread and
/// cannot be skipped, and a client that took the connection for reusable would send its next
/// request into one being closed. (A payload refused after its body was read closes too: one
/// reconnection after a rare client error, for one rule everywhere, the dialects' own HTTP
/// endpoints included.)
async fn close_after_413(mut resp: axum::response::Response) -> axum::response::Response {
    if resp.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// An API error answer that is not our JSON (an extractor's own rejection, e.g. a path
/// parameter that is not UTF-8) becomes `{"error":{"code","message"}}` with the code of its
/// status, so every API answer has the documented shape.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header::CONTENT_TYPE;
    use axum::response::IntoResponse;
    use herald_core::{ErrorCode, HeraldError};
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::MessageTooLarge,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut answer = ApiError(HeraldError::new(
        code,
        String::from_utf8_lossy(&text).trim(),
    ))
    .into_response();
    *answer.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// A dialect's own listener: its `routes` at the root, with `/healthz` and the JSON 404.
pub fn own_listener(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .route("/healthz", get(routes::healthz))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::bounded,
        ))
        .layer(axum::middleware::map_response(close_after_413))
        .with_state(state)
}
