//! The push-stream dialect's HTTP publisher at `/pub?id=<channel>`: `POST`/`PUT` publish the
//! body as text and answer the channel's stats, `GET` answers them, `DELETE` deletes the
//! channel (its subscribers get id -2 "Channel deleted."); and `/channels-stats`. As in the
//! original, requests from the loopback interface need no credential; others need
//! `Authorization: Bearer` with the admin key (or, for one channel, its token).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::hub::PublishRequest;
use herald_core::secret;
use herald_core::{Actor, ChannelName, ErrorCode};
use herald_protocol::pushstream;

use crate::state::AppState;

fn explain(status: StatusCode, why: &str) -> Response {
    let mut resp = (status, why.to_string()).into_response();
    if let Ok(v) = HeaderValue::from_str(why) {
        resp.headers_mut().insert("x-nginx-pushstream-explain", v);
    }
    resp
}

/// The original's stats body (numbers as JSON strings, CRLF-terminated).
fn stats(state: &AppState, channel: &ChannelName, published: u64, subscribers: u64) -> Response {
    let stored = state
        .hub
        .registry()
        .lookup(channel)
        .map_or(0, |c| c.read_history(|h, _, _| h.len()));
    let body = format!(
        "{{\"channel\": \"{channel}\", \"published_messages\": \"{published}\", \"stored_messages\": \"{stored}\", \"subscribers\": \"{subscribers}\"}}\r\n"
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn caller(state: &AppState, remote: SocketAddr, headers: &HeaderMap) -> Option<Actor> {
    match crate::auth::bearer(headers) {
        Some(t) if secret::secrets_equal(t, &state.admin_key) => Some(Actor::Admin),
        Some(t) if t.starts_with(secret::CHANNEL_TOKEN_PREFIX) => {
            Some(Actor::ChannelToken(t.to_string()))
        }
        _ if remote.ip().is_loopback() => Some(Actor::Admin),
        _ => None,
    }
}

pub async fn publisher(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(actor) = caller(&state, remote, &headers) else {
        return explain(
            StatusCode::FORBIDDEN,
            "Publishing needs a credential from outside this host.",
        );
    };
    let id = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.into_owned())
    });
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return explain(StatusCode::BAD_REQUEST, "No channel id provided.");
    };
    let channel = match ChannelName::parse(&id) {
        Ok(c) => c,
        Err(e) => return explain(StatusCode::BAD_REQUEST, &e.message),
    };
    let hub = &state.hub;
    let current = |channel: &ChannelName| hub.registry().lookup(channel).map(|c| c.summary());
    match method {
        Method::POST | Method::PUT => {
            if body.is_empty() {
                return explain(
                    StatusCode::BAD_REQUEST,
                    "Empty post requests are not allowed.",
                );
            }
            let Ok(text) = std::str::from_utf8(&body) else {
                return explain(StatusCode::BAD_REQUEST, "The message must be UTF-8 text.");
            };
            let req = PublishRequest {
                channels: vec![channel.clone()],
                data: pushstream::text_to_data(text),
                to: None,
                once_per_client: false,
            };
            match hub.publish(&actor, req).await {
                Ok(_) => {
                    let (published, subscribers) =
                        current(&channel).map_or((0, 0), |s| (s.offset, s.subscribers));
                    stats(&state, &channel, published, subscribers)
                }
                Err(e) => explain(
                    StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
                    &e.message,
                ),
            }
        }
        Method::GET => match hub.channel(&actor, &channel) {
            Ok(s) => stats(&state, &channel, s.offset, s.subscribers),
            Err(e) if e.code == ErrorCode::ChannelNotFound => {
                explain(StatusCode::NOT_FOUND, "Channel not found.")
            }
            Err(e) => explain(StatusCode::FORBIDDEN, &e.message),
        },
        Method::DELETE => match hub.delete_channel(&actor, &channel).await {
            Ok(_) => (StatusCode::OK, "Channel deleted.").into_response(),
            Err(e) if e.code == ErrorCode::ChannelNotFound => {
                explain(StatusCode::NOT_FOUND, "Channel not found.")
            }
            Err(e) => explain(StatusCode::FORBIDDEN, &e.message),
        },
        Method::OPTIONS => StatusCode::OK.into_response(),
        _ => explain(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

/// `GET /channels-stats[?id=…]`: without `id`, the summary of every channel; `id=ALL` (or
/// a prefix ending in `*`), each channel's stats under `infos`; `id=<channel>`, that
/// channel's (as `GET /pub`). Numbers are JSON strings, as in the original.
pub async fn channels_stats(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(actor) = caller(&state, remote, &headers) else {
        return explain(
            StatusCode::FORBIDDEN,
            "Channel statistics need a credential from outside this host.",
        );
    };
    let id = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.into_owned())
    });
    let hub = &state.hub;
    let prefix = match id.as_deref() {
        None | Some("") => None,
        Some("ALL") => Some(""),
        Some(p) if p.ends_with('*') => Some(&p[..p.len() - 1]),
        Some(one) => {
            let channel = match ChannelName::parse(one) {
                Ok(c) => c,
                Err(e) => return explain(StatusCode::BAD_REQUEST, &e.message),
            };
            return match hub.channel(&actor, &channel) {
                Ok(s) => stats(&state, &channel, s.offset, s.subscribers),
                Err(e) if e.code == ErrorCode::ChannelNotFound => {
                    explain(StatusCode::NOT_FOUND, "Channel not found.")
                }
                Err(e) => explain(StatusCode::FORBIDDEN, &e.message),
            };
        }
    };
    let channels = match hub.channels(&actor) {
        Ok(c) => c,
        Err(e) => return explain(StatusCode::FORBIDDEN, &e.message),
    };
    let stored = |name: &ChannelName| {
        hub.registry()
            .lookup(name)
            .map_or(0, |c| c.read_history(|h, _, _| h.len()))
    };
    let time = herald_protocol::pushstream::http_time(herald_core::client::now_ms());
    let body = match prefix {
        None => {
            let published: u64 = channels.iter().map(|c| c.offset).sum();
            let kept: usize = channels.iter().map(|c| stored(&c.name)).sum();
            let subscribers: u64 = channels.iter().map(|c| c.subscribers).sum();
            serde_json::json!({
                "hostname": state.node_name,
                "time": time,
                "channels": channels.len().to_string(),
                "wildcard_channels": "0",
                "published_messages": published.to_string(),
                "stored_messages": kept.to_string(),
                "messages_in_trash": "0",
                "channels_in_delete": "0",
                "channels_in_trash": "0",
                "subscribers": subscribers.to_string(),
            })
        }
        Some(prefix) => {
            let infos: Vec<serde_json::Value> = channels
                .iter()
                .filter(|c| c.name.as_str().starts_with(prefix))
                .map(|c| {
                    serde_json::json!({
                        "channel": c.name,
                        "published_messages": c.offset.to_string(),
                        "stored_messages": stored(&c.name).to_string(),
                        "subscribers": c.subscribers.to_string(),
                    })
                })
                .collect();
            serde_json::json!({
                "hostname": state.node_name,
                "time": time,
                "channels": infos.len().to_string(),
                "wildcard_channels": "0",
                "infos": infos,
            })
        }
    };
    let mut text = body.to_string();
    text.push_str("\r\n");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}
