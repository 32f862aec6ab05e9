//! The SubSocket dialect's REST API (`/api.v1/...`, WIRE.md §1), answering in its plain-text
//! format. Every route needs the `Admin-Token` header, whose value is Herald's admin key
//! (compared in constant time; the original's constant `123456` is gone). Parameters come from
//! the query string and any HTTP method is accepted, as in the original. Added in Herald:
//! `clients/kick`, and errors for unknown clients and channels instead of silence.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::client::{DisconnectReason, close_code};
use herald_core::secret;
use herald_core::{Actor, ChannelName, ChannelOptions, ClientId, Disconnect, HeraldError};

use crate::state::AppState;

type St = State<Arc<AppState>>;

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn ok(body: String) -> Response {
    text(StatusCode::OK, body)
}

fn error(e: &HeraldError) -> Response {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, format!("{}: {}\n", e.code, e.message))
}

/// Whether `Admin-Token` is the admin key (routes answer 403 with an empty body if not).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get("admin-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|token| secret::secrets_equal(token, &state.admin_key))
}

fn forbidden() -> Response {
    StatusCode::FORBIDDEN.into_response()
}

/// All values of `key` in the query string.
fn values(query: &Option<String>, key: &str) -> Vec<String> {
    let q = query.as_deref().unwrap_or_default();
    form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn first(query: &Option<String>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| values(query, k).into_iter().next())
}

pub async fn channels_list(State(state): St, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    let mut names: Vec<String> = state
        .hub
        .registry()
        .all_channels()
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    names.sort();
    ok(names.into_iter().map(|n| n + "\n").collect())
}

pub async fn channels_put(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    let names = values(&q, "name");
    let public = values(&q, "is-public");
    let broadcast = values(&q, "allow-broadcast");
    if names.is_empty() {
        return ok("names are required input...\n".into());
    }
    if public.len() != names.len() {
        return ok("is-public fields are required for each name input...\n".into());
    }
    if broadcast.len() != names.len() {
        return ok("allow-broadcast fields are required for each name input...\n".into());
    }
    let mut body = String::new();
    for ((name, public), broadcast) in names.iter().zip(&public).zip(&broadcast) {
        let channel = match ChannelName::parse(name) {
            Ok(c) => c,
            Err(e) => return error(&e),
        };
        // Its namespace's options for what SubSocket does not set.
        let options = ChannelOptions {
            public: public.eq_ignore_ascii_case("yes"),
            client_publish: broadcast.eq_ignore_ascii_case("yes"),
            max_subscribers: None,
            admin_only_subscribe: false,
            ..state.hub.config().defaults_for(&channel).clone()
        };
        if let Err(e) = state.hub.put_channel(&Actor::Admin, channel, options).await {
            return error(&e);
        }
        body.push_str(&format!("{name} has been put\n"));
    }
    ok(body)
}

pub async fn channels_del(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    let names = values(&q, "name");
    if names.is_empty() {
        return ok("names are required input...\n".into());
    }
    let mut body = String::new();
    for name in &names {
        let channel = match ChannelName::parse(name) {
            Ok(c) => c,
            Err(e) => return error(&e),
        };
        // Deleting a channel that does not exist succeeds, as in the original.
        match state.hub.delete_channel(&Actor::Admin, &channel).await {
            Ok(_) => {}
            Err(e) if e.code == herald_core::ErrorCode::ChannelNotFound => {}
            Err(e) => return error(&e),
        }
        body.push_str(&format!("{name} has been deleted\n"));
    }
    ok(body)
}

/// `clients/subscribe` and `clients/unsubscribe`: `channel` and `client-id` (or `id`).
async fn change_subscription(state: &AppState, q: &Option<String>, subscribe: bool) -> Response {
    let Some(channel) = first(q, &["channel"]) else {
        return ok("channel are required input...\n".into());
    };
    let Some(id) = first(q, &["client-id", "id"]) else {
        return ok("client-id are required input...\n".into());
    };
    let result = (|| {
        let channel = ChannelName::parse(&channel)?;
        let client = state.hub.client(&Actor::Admin, ClientId::parse(&id)?)?;
        if subscribe {
            state
                .hub
                .subscribe(&Actor::Admin, &client, &[channel], None)?;
        } else {
            state.hub.force_unsubscribe(&client, &[channel], "admin")?;
        }
        Ok::<_, HeraldError>(())
    })();
    match result {
        Ok(()) => ok(String::new()),
        Err(e) => error(&e),
    }
}

pub async fn clients_subscribe(
    State(state): St,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    change_subscription(&state, &q, true).await
}

pub async fn clients_unsubscribe(
    State(state): St,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    change_subscription(&state, &q, false).await
}

/// `clients/ban?client-id=<uuid>[&seconds=N]`: bans the address the client came from and
/// closes its connections with 4000.
pub async fn clients_ban(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    let Some(id) = first(&q, &["client-id", "id"]) else {
        return ok("client-id are required input...\n".into());
    };
    let seconds = match first(&q, &["seconds"]).map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return error(&HeraldError::bad_request("seconds must be a whole number")),
    };
    let result = match ClientId::parse(&id) {
        Ok(id) => {
            state
                .hub
                .ban_client(&Actor::Admin, id, seconds, "banned by an admin")
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => ok(String::new()),
        Err(e) => error(&e),
    }
}

pub async fn clients_kick(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if !authorized(&state, &headers) {
        return forbidden();
    }
    let Some(id) = first(&q, &["client-id", "id"]) else {
        return ok("client-id are required input...\n".into());
    };
    let disconnect = Disconnect::new(
        DisconnectReason::Kicked,
        close_code::KICKED,
        "kicked by an admin",
    );
    match ClientId::parse(&id).and_then(|id| state.hub.kick(&Actor::Admin, id, disconnect)) {
        Ok(()) => ok(String::new()),
        Err(e) => error(&e),
    }
}

/// `GET /static/<path>`: files from `dialects.subsocket.static_dir` (the original served its
/// test pages this way, from the same origin as `/socket`). `/static` redirects to `/static/`,
/// which serves `index.html`. Paths are confined to the folder, symbolic links included.
pub async fn static_file(
    State(state): St,
    uri: axum::http::Uri,
    axum::extract::OriginalUri(original): axum::extract::OriginalUri,
) -> Response {
    let dir = &state.config.dialects.subsocket.static_dir;
    if dir.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = uri.path();
    let Some(rest) = path.split_once("/static").map(|(_, r)| r) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if rest.is_empty() {
        return (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, format!("{}/", original.path()))],
        )
            .into_response();
    }
    let relative = rest.trim_start_matches('/');
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let safe = std::path::Path::new(relative)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !safe {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(file) = confined(std::path::Path::new(dir), relative).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let kind = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("json") => "application/json",
                Some("png") => "image/png",
                Some("svg") => "image/svg+xml",
                _ => "application/octet-stream",
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `relative` inside `dir` if, with every symbolic link resolved, it is a regular file that
/// is still inside `dir`: a link pointing out of the folder is not followed.
async fn confined(dir: &std::path::Path, relative: &str) -> Option<std::path::PathBuf> {
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let file = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    let meta = tokio::fs::metadata(&file).await.ok()?;
    (file.starts_with(&root) && meta.is_file()).then_some(file)
}
