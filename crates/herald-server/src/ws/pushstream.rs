//! The push-stream dialect's WebSocket side. Channels come from the URL
//! (`/subscribe/<ch1>/<ch2>` or `?channels=a/b`), or, when `dialects.pushstream.auth_url` is
//! set, from the app backend's answer to the auth hook. Text a subscriber sends is published to
//! all its channels (where policy allows) and answered with a WebSocket ping, as the original.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::client::{DisconnectReason, close_code};
use herald_core::history::Replay;
use herald_core::hub::PublishRequest;
use herald_core::{
    Actor, ChannelName, ClientHandle, Disconnect, ErrorCode, HeraldError, WireFormat,
};
use herald_protocol::pushstream::{self, PUSHSTREAM_WS};
use herald_protocol::ws;

use super::dialect::{Dialect, DialectSession};
use crate::config::PushStreamConfig;
use crate::http::ApiError;
use crate::server::AppState;

/// One subscriber's connection: the channels it was admitted to, each with the number of
/// kept publications to deliver first (`.b<N>`).
pub struct PushStream {
    channels: Vec<(ChannelName, usize)>,
    /// Admitted by the auth hook: subscribed on the server's authority, private channels too.
    by_hook: bool,
}

/// A refusal before the upgrade, with push-stream's explanation header.
fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let mut resp = ApiError::new(code, message).into_response();
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(message) {
        resp.headers_mut().insert("x-nginx-pushstream-explain", v);
    }
    resp
}

/// `GET <prefix>/subscribe/<channels>` (or `?channels=`): the subscriber's WebSocket.
pub async fn upgrade_pushstream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let config = &state.config.dialects.pushstream;
    let channels = if config.auth_url.is_empty() {
        match url_channels(&req) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MissingField,
                    "No channel id provided.",
                );
            }
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e.code, &e.message),
        }
    } else {
        // The backend names the channels; a backtrack in the URL still applies to them.
        let asked = url_channels(&req).unwrap_or_default();
        match ask_backend(&state, config, req.headers()).await {
            Ok(c) => c
                .into_iter()
                .map(|c| {
                    let b = asked.iter().find(|(a, _)| *a == c).map_or(0, |(_, b)| *b);
                    (c, b)
                })
                .collect(),
            Err(resp) => return resp,
        }
    };
    let by_hook = !config.auth_url.is_empty();
    super::upgrade_to(PushStream { channels, by_hook }, state, remote, req)
}

fn url_channels(req: &Request) -> Result<Vec<(ChannelName, usize)>, HeraldError> {
    let path = req.uri().path();
    let from_path = path
        .split_once("/subscribe")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let from_query = req
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "channels")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let mut channels = pushstream::channels_from_path(from_path)?;
    for (c, b) in pushstream::channels_from_path(&from_query)? {
        match channels.iter_mut().find(|(known, _)| *known == c) {
            Some((_, backtrack)) => *backtrack = (*backtrack).max(b),
            None => channels.push((c, b)),
        }
    }
    Ok(channels)
}

/// The auth hook: POST the configured headers to the backend; a 2xx `{"channels":[...]}`
/// admits, 401/403 (or any other answer) refuse, and a backend that is down or slow refuses
/// with 503 `auth_unavailable` within `auth_timeout_ms`. The HTTP client is the one of
/// `[auth_hook]` (crate::auth_hook).
async fn ask_backend(
    state: &AppState,
    config: &PushStreamConfig,
    headers: &HeaderMap,
) -> Result<Vec<ChannelName>, Response> {
    let mut forwarded = Vec::new();
    for name in &config.auth_headers {
        let Ok(name) = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            continue;
        };
        for value in headers.get_all(&name) {
            forwarded.push((name.clone(), value.clone()));
        }
    }
    let timeout = Duration::from_millis(config.auth_timeout_ms);
    let unavailable = |why: &str| {
        tracing::warn!(reason = why, "push-stream auth hook failed");
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AuthUnavailable,
            &format!("auth backend {why}"),
        )
    };
    let answer = state
        .auth_hook
        .post(
            &config.auth_url,
            &forwarded,
            Bytes::from_static(b"{}"),
            timeout,
        )
        .await;
    let (status, body) = answer.map_err(unavailable)?;
    if !status.is_success() {
        let code = if status == StatusCode::UNAUTHORIZED {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        let error = if code == StatusCode::UNAUTHORIZED {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::Forbidden
        };
        return Err(refuse(code, error, "refused by the auth backend"));
    }
    #[derive(serde::Deserialize)]
    struct Admitted {
        channels: Vec<String>,
    }
    let admitted: Admitted = serde_json::from_slice(&body).map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AuthUnavailable,
            "auth backend answer is not {\"channels\":[...]}",
        )
    })?;
    admitted
        .channels
        .iter()
        .map(|c| ChannelName::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e.code, &e.message))
}

impl Dialect for PushStream {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        pushstream::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &PUSHSTREAM_WS
    }

    fn greeting(&self, _state: &AppState, _client: &ClientHandle) -> Option<Bytes> {
        None
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
        let actor = Actor::Client(client.clone());
        let subscriber = if self.by_hook {
            Actor::Admin
        } else {
            actor.clone()
        };
        let names: Vec<ChannelName> = self.channels.iter().map(|(c, _)| c.clone()).collect();
        if let Err(e) = state
            .hub
            .subscribe_replaying(&subscriber, client, &names, None, |name| {
                match self.channels.iter().find(|(c, _)| c == name) {
                    Some((_, n)) if *n > 0 => Replay::Last(*n),
                    _ => Replay::Nothing,
                }
            })
        {
            // The original closed with the status and reason after the upgrade.
            let reason = format!("{}: {}", e.code, e.message);
            client.outbox.close(Disconnect::new(
                DisconnectReason::ProtocolError,
                close_code::POLICY,
                reason,
            ));
        }
        Session {
            state,
            client,
            actor,
        }
    }
}

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    actor: Actor,
}

impl DialectSession for Session<'_> {
    /// Published to every channel of the subscriber; answered with a ping.
    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        let text = std::str::from_utf8(&text).ok()?;
        let channels = self.client.subscriptions();
        if channels.is_empty() {
            return Some(ws::ping_frame());
        }
        let req = PublishRequest {
            channels,
            data: pushstream::text_to_data(text),
            to: None,
            once_per_client: false,
        };
        match self.state.hub.publish(&self.actor, req).await {
            Ok(_) => Some(ws::ping_frame()),
            Err(e) => {
                tracing::debug!(client = %self.client.id, error = %e, "push-stream publish refused");
                Some(ws::ping_frame())
            }
        }
    }

    async fn on_binary(&mut self, _data: Bytes) -> Option<Bytes> {
        None
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        tracing::debug!(client = %self.client.id, len, limit, "push-stream message too large, skipped");
        None
    }
}
