//! The auth hook (`[auth_hook]`, docs/auth-hook.md): Herald asks the app's backend by HTTP
//! POST whether a connection may connect, and optionally whether a client may subscribe or
//! publish. The backend sees the handshake's configured headers (cookies, `Authorization`)
//! and query string; its answer allows or denies and may name the user, the admin flag and
//! channels to subscribe. A backend that is slow, down or answers nonsense refuses with
//! `auth_unavailable` (503) within `timeout_ms`: Herald never waits longer and never admits
//! by default. Connect answers can be cached per credential for `cache_secs`.
//!
//! The same HTTP client ([`AuthHook::post`]) serves the push-stream dialect's own hook
//! (`dialects.pushstream.auth_url`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use bytes::Bytes;
use herald_core::{ChannelName, ClientHandle, ErrorCode, HeraldError};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Identity;
pub use crate::config::AuthHookConfig;

/// Most connect answers kept in the cache.
pub const CACHE_CAPACITY: usize = 10_000;
/// Most channel names the cached answers hold in all (each answer names at most
/// [`MAX_ANSWER_CHANNELS`]): with [`CACHE_CAPACITY`] answers of 100 long names, the cache
/// would hold a quarter of a gigabyte.
pub const CACHE_CHANNELS: usize = 100_000;
/// Most channels a connect answer may name, as for a JWT connection token.
pub const MAX_ANSWER_CHANNELS: usize = crate::jwt::MAX_TOKEN_CHANNELS;
/// Largest answer body read from the backend.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What Herald asks the backend about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    Subscribe,
    Publish,
}

impl HookEvent {
    fn as_str(self) -> &'static str {
        match self {
            HookEvent::Subscribe => "subscribe",
            HookEvent::Publish => "publish",
        }
    }
}

/// The handshake as the connect question shows it.
pub struct Handshake<'a> {
    pub remote: SocketAddr,
    pub dialect: &'static str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The backend's answer body (every field optional).
#[derive(Debug, Default, Deserialize)]
struct Answer {
    /// `None`: not given (allows); `Some(None)`: `null`, which says neither (unusable).
    #[serde(default, deserialize_with = "present")]
    allow: Option<Option<bool>>,
    user: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    channels: Vec<String>,
    reason: Option<String>,
}

/// A field that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<bool>>, D::Error> {
    Option::<bool>::deserialize(d).map(Some)
}

/// A connect answer and when it was got.
type Cached = (Instant, Result<Identity, HeraldError>);

/// The connect cache, bounded in answers and in the channel names they hold.
#[derive(Default)]
struct Cache {
    answers: HashMap<[u8; 32], Cached>,
    /// Channel names in `answers`, in all.
    channels: usize,
}

/// What an answer weighs in [`Cache::channels`].
fn weight((_, outcome): &Cached) -> usize {
    outcome
        .as_ref()
        .map_or(0, |identity| identity.channels.len())
}

impl Cache {
    fn full(&self, adding: usize) -> bool {
        self.answers.len() >= CACHE_CAPACITY || self.channels + adding > CACHE_CHANNELS
    }

    fn insert(&mut self, key: [u8; 32], answer: Cached, ttl: Duration) {
        let adding = weight(&answer);
        if let Some(old) = self.answers.remove(&key) {
            self.channels -= weight(&old);
        }
        if self.full(adding) {
            let mut kept = 0;
            self.answers.retain(|_, cached| {
                let fresh = cached.0.elapsed() < ttl;
                kept += if fresh { weight(cached) } else { 0 };
                fresh
            });
            self.channels = kept;
        }
        if self.full(adding) {
            // Still full of fresh answers: drop an arbitrary tenth, or more until there is
            // room for this one's channels.
            let mut victims = Vec::new();
            let mut freed = 0;
            for (key, cached) in &self.answers {
                let room = self.channels - freed + adding <= CACHE_CHANNELS;
                if victims.len() >= CACHE_CAPACITY / 10 && room {
                    break;
                }
                victims.push(*key);
                freed += weight(cached);
            }
            for key in victims {
                self.answers.remove(&key);
            }
            self.channels -= freed;
        }
        self.channels += adding;
        self.answers.insert(key, answer);
    }
}

/// The hook's HTTP client, its configuration and its connect cache. Always present in
/// [`crate::state::AppState`]; [`AuthHook::enabled`] says whether `[auth_hook]` is on.
pub struct AuthHook {
    config: AuthHookConfig,
    headers: Vec<HeaderName>,
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<Cache>,
    /// Where each answer's time goes (`herald_auth_hook_seconds`).
    timer: metrics::Histogram,
}

impl AuthHook {
    /// The hook of `config`; each answer's time is recorded in `timer`.
    pub fn new(config: &AuthHookConfig, timer: metrics::Histogram) -> AuthHook {
        AuthHook {
            timer,
            config: config.clone(),
            headers: config
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Whether `[auth_hook]` has a URL.
    pub fn enabled(&self) -> bool {
        !self.config.url.is_empty()
    }

    /// Whether a client's `event` request goes to the backend first (admins are not asked
    /// about).
    pub fn asks(&self, event: HookEvent, client: &ClientHandle) -> bool {
        let wanted = match event {
            HookEvent::Subscribe => self.config.on_subscribe,
            HookEvent::Publish => self.config.on_publish,
        };
        wanted && self.enabled() && !client.is_admin()
    }

    /// POSTs `body` (JSON) with `headers` to `url`; the answer's status and body, or why
    /// there is none ("timed out", "is unreachable", ...). Bounded by `timeout` in all.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), &'static str> {
        let mut request = http::Request::post(url).header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|_| "bad request")?;
        let started = std::time::Instant::now();
        let _timed = Timed(&self.timer, started);
        let answer = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|_| "is unreachable")?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| "sent an unreadable or oversized answer")?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, answer)
            .await
            .unwrap_or(Err("timed out"))
    }

    /// Asks the backend whether a handshake may connect, and as whom.
    pub async fn connect(&self, handshake: &Handshake<'_>) -> Result<Identity, HeraldError> {
        let query = handshake.query.filter(|_| self.config.forward_query);
        let mut forwarded = Vec::new();
        let mut shown = serde_json::Map::new();
        for name in &self.headers {
            let values: Vec<&str> = handshake
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                continue;
            }
            let joiner = if name == header::COOKIE { "; " } else { ", " };
            shown.insert(name.to_string(), Value::from(values.join(joiner)));
            if !matches!(
                *name,
                header::HOST
                    | header::CONTENT_TYPE
                    | header::CONTENT_LENGTH
                    | header::TRANSFER_ENCODING
                    | header::CONNECTION
                    | header::UPGRADE
            ) {
                for value in handshake.headers.get_all(name) {
                    forwarded.push((name.clone(), value.clone()));
                }
            }
        }
        let key = (self.config.cache_secs > 0).then(|| cache_key(&shown, query));
        if let Some(key) = &key
            && let Some(cached) = self.cached(key)
        {
            return cached;
        }
        let body = json!({
            "event": "connect",
            "remote": handshake.remote.to_string(),
            "dialect": handshake.dialect,
            "path": handshake.path,
            "query": query.unwrap_or_default(),
            "headers": shown,
        });
        let outcome = self.ask(&forwarded, &body).await.and_then(identity);
        if let Some(key) = key
            && outcome
                .as_ref()
                .err()
                .is_none_or(|e| e.code != ErrorCode::AuthUnavailable)
        {
            self.remember(key, outcome.clone());
        }
        outcome
    }

    /// Asks the backend whether `client` may subscribe or publish to `channels`; `Ok` allows.
    pub async fn authorize(
        &self,
        event: HookEvent,
        client: &ClientHandle,
        channels: &[ChannelName],
    ) -> Result<(), HeraldError> {
        let body = json!({
            "event": event.as_str(),
            "client": client.id.to_string(),
            "user": client.user().map(|u| u.to_string()),
            "remote": client.info.remote.map(|r| r.to_string()),
            "dialect": client.info.dialect,
            "channels": channels,
        });
        self.ask(&[], &body).await.map(|_| ())
    }

    /// One question: the backend's allowing answer, or the refusal it means.
    async fn ask(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: &Value,
    ) -> Result<Answer, HeraldError> {
        let event = body["event"].as_str().unwrap_or_default().to_string();
        let unavailable = |why: String| {
            tracing::warn!(event, reason = %why, "auth hook failed");
            HeraldError::new(
                ErrorCode::AuthUnavailable,
                format!("the auth backend {why}; try again later"),
            )
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let (status, bytes) = self
            .post(
                &self.config.url,
                headers,
                Bytes::from(body.to_string()),
                timeout,
            )
            .await
            .map_err(|why| {
                unavailable(why.replace(
                    "timed out",
                    &format!("timed out after {} ms", self.config.timeout_ms),
                ))
            })?;
        let parsed = if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(Answer::default())
        } else {
            serde_json::from_slice::<Answer>(&bytes)
        };
        let refused = |code: ErrorCode, reason: Option<String>| {
            let reason = reason.filter(|r| !r.is_empty());
            let message = match reason {
                Some(r) => format!("refused by the auth backend: {r}"),
                None => "refused by the auth backend".to_string(),
            };
            tracing::debug!(event, code = %code, message, "auth hook refused");
            HeraldError::new(code, message)
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let code = if status == StatusCode::UNAUTHORIZED {
                    ErrorCode::Unauthorized
                } else {
                    ErrorCode::Forbidden
                };
                Err(refused(code, parsed.ok().and_then(|a| a.reason)))
            }
            s if s.is_success() => {
                let answer = parsed.map_err(|e| {
                    unavailable(format!(
                        "answered {s} with a body that is not the expected JSON object ({e})"
                    ))
                })?;
                match answer.allow {
                    Some(Some(false)) => Err(refused(ErrorCode::Forbidden, answer.reason)),
                    Some(None) => Err(unavailable(format!(
                        "answered {s} with \"allow\": null (true or false, or leave it out to allow)"
                    ))),
                    _ => Ok(answer),
                }
            }
            s => Err(unavailable(format!("answered {s}"))),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Identity, HeraldError>> {
        let ttl = Duration::from_secs(self.config.cache_secs);
        let cache = self.cache.lock();
        let (at, outcome) = cache.answers.get(key)?;
        (at.elapsed() < ttl).then(|| outcome.clone())
    }

    fn remember(&self, key: [u8; 32], outcome: Result<Identity, HeraldError>) {
        let ttl = Duration::from_secs(self.config.cache_secs);
        self.cache
            .lock()
            .insert(key, (Instant::now(), outcome), ttl);
    }

    /// Entries in the connect cache (for tests).
    pub fn cached_entries(&self) -> usize {
        self.cache.lock().answers.len()
    }
}

/// The cache key: a hash of everything forwarded about the credential.
fn cache_key(headers: &serde_json::Map<String, Value>, query: Option<&str>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (name, value) in headers {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(value.as_str().unwrap_or_default().as_bytes());
        hash.update([0]);
    }
    hash.update([1]);
    hash.update(query.unwrap_or_default().as_bytes());
    hash.finalize().into()
}

/// The identity an allowing connect answer gives.
fn identity(answer: Answer) -> Result<Identity, HeraldError> {
    let bad = |why: String| {
        tracing::warn!(reason = %why, "auth hook answer refused");
        HeraldError::new(
            ErrorCode::AuthUnavailable,
            format!("the auth backend's answer is unusable: {why}"),
        )
    };
    let user = match answer.user.filter(|u| !u.is_empty()) {
        Some(u) => match herald_core::ids::check_user_id(&u) {
            Ok(()) => Some(Arc::from(u.as_str())),
            Err(why) => return Err(bad(format!("\"user\": {why}"))),
        },
        None => None,
    };
    if answer.channels.len() > MAX_ANSWER_CHANNELS {
        return Err(bad(format!(
            "\"channels\" names more than {MAX_ANSWER_CHANNELS}"
        )));
    }
    let channels = answer
        .channels
        .iter()
        .map(|c| ChannelName::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("\"channels\": {}", e.message)))?;
    Ok(Identity {
        admin: answer.admin,
        user,
        channels,
    })
}

/// Records the time since its start when dropped (however the question ended).
struct Timed<'a>(&'a metrics::Histogram, std::time::Instant);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.record(self.1.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(channels: usize) -> Cached {
        let channels = (0..channels)
            .map(|i| ChannelName::parse(&format!("c{i}")).unwrap())
            .collect();
        let identity = Identity {
            channels,
            ..Identity::default()
        };
        (Instant::now(), Ok(identity))
    }

    fn key(i: usize) -> [u8; 32] {
        let mut key = [0; 32];
        key[..8].copy_from_slice(&(i as u64).to_le_bytes());
        key
    }

    /// Answers that name many channels fill the cache by their channels, not their count:
    /// the total stays within [`CACHE_CHANNELS`], and the count it keeps is right.
    #[test]
    fn the_cache_is_bounded_by_the_channels_it_holds() {
        let ttl = Duration::from_secs(600);
        let mut cache = Cache::default();
        for i in 0..3_000 {
            cache.insert(key(i), answer(MAX_ANSWER_CHANNELS), ttl);
            assert!(cache.channels <= CACHE_CHANNELS, "{}", cache.channels);
            let held: usize = cache.answers.values().map(weight).sum();
            assert_eq!(held, cache.channels);
        }
        assert!(cache.answers.len() <= CACHE_CHANNELS / MAX_ANSWER_CHANNELS);
        // Answers without channels are bounded by their count.
        for i in 0..(CACHE_CAPACITY + 10) {
            cache.insert(key(10_000 + i), answer(0), ttl);
        }
        assert!(cache.answers.len() <= CACHE_CAPACITY);
        let held: usize = cache.answers.values().map(weight).sum();
        assert_eq!(held, cache.channels);
        // The same key again replaces, and its weight with it.
        let before = cache.channels;
        let kept = *cache.answers.keys().next().unwrap();
        let old = weight(&cache.answers[&kept]);
        cache.insert(kept, answer(7), ttl);
        assert_eq!(cache.channels, before - old + 7);
    }

    /// `"allow": null` is told apart from no `allow` at all.
    #[test]
    fn allow_null_is_not_allow_missing() {
        let missing: Answer = serde_json::from_str("{}").unwrap();
        let null: Answer = serde_json::from_str(r#"{"allow":null}"#).unwrap();
        let yes: Answer = serde_json::from_str(r#"{"allow":true}"#).unwrap();
        assert_eq!(missing.allow, None);
        assert_eq!(null.allow, Some(None));
        assert_eq!(yes.allow, Some(Some(true)));
    }
}
