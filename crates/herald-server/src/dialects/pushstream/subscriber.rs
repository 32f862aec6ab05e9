//! Who a push-stream subscriber is and what it subscribes to, whatever its mode: the
//! channels named in its URL (`/<mode>/<ch1>/<ch2>` or `?channels=a/b`, each with an optional
//! `.b<N>` backtrack), or, when `dialects.pushstream.auth_url` is set, the channels the app
//! backend names in its answer to the auth hook. Refusals carry the module's
//! `X-Nginx-PushStream-Explain` header.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{Actor, ChannelName, ClientHandle, ErrorCode, HeraldError};
use herald_protocol::pushstream;
use std::sync::Arc;

use crate::config::PushStreamConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// A subscriber's channels, each with the number of kept publications to deliver first.
pub struct Subscriber {
    pub channels: Vec<(ChannelName, usize)>,
    /// Admitted by the auth hook: subscribed on the server's authority, private channels too.
    pub by_hook: bool,
}

impl Subscriber {
    /// Who subscribes `client`: the server for channels the backend named, else the client.
    pub fn actor(&self, client: &Arc<ClientHandle>) -> Actor {
        if self.by_hook {
            Actor::Admin
        } else {
            Actor::Client(client.clone())
        }
    }

    pub fn names(&self) -> Vec<ChannelName> {
        self.channels.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The `.b<N>` backtrack asked for `channel` (0: none).
    pub fn backtrack(&self, channel: &ChannelName) -> usize {
        self.channels
            .iter()
            .find(|(c, _)| c == channel)
            .map_or(0, |(_, b)| *b)
    }
}

/// The subscriber a request names (its URL, or the auth hook's answer).
pub async fn subscriber(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Subscriber, Response> {
    let config = &state.config.dialects.pushstream;
    let channels = if config.auth_url.is_empty() {
        match url_channels(uri) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MissingField,
                    "No channel id provided.",
                ));
            }
            Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.code, &e.message)),
        }
    } else {
        // The backend names the channels; a backtrack in the URL still applies to them.
        let asked = url_channels(uri).unwrap_or_default();
        ask_backend(state, config, headers)
            .await?
            .into_iter()
            .map(|c| {
                let b = asked.iter().find(|(a, _)| *a == c).map_or(0, |(_, b)| *b);
                (c, b)
            })
            .collect()
    };
    Ok(Subscriber {
        channels,
        by_hook: !config.auth_url.is_empty(),
    })
}

/// A refusal before the upgrade, with push-stream's explanation header.
pub fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let mut resp = ApiError::new(code, message).into_response();
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(message) {
        resp.headers_mut().insert("x-nginx-pushstream-explain", v);
    }
    resp
}

/// The channels of the URL: the path after its first segment (the mode: `/subscribe`,
/// `/ev`, `/lp`, `/sub`; the dialect's prefix is already stripped), then `?channels=`.
fn url_channels(uri: &Uri) -> Result<Vec<(ChannelName, usize)>, HeraldError> {
    let from_path = uri
        .path()
        .trim_start_matches('/')
        .split_once('/')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let from_query = uri
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
