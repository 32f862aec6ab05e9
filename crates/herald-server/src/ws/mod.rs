//! The WebSocket transport: the `/ws` upgrade (RFC 6455 handshake over hyper's upgrade
//! mechanism) and the per-connection task in [`connection`], which feeds the native codec and
//! drains the client's outbox, over plain TCP or TLS ([`transport`]).

mod admin;
mod connection;
mod dialect;
mod eventual;
mod native;
mod pushstream;
mod simplysocket;
mod subsocket;
mod transport;
mod wspush;

pub use dialect::Dialect;
pub use pushstream::upgrade_pushstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::client::{ClientInfo, ConnectExtras};
use herald_core::{Actor, ClientHandle, ErrorCode, EventMask, EventType, HeraldError};
use herald_protocol::ws::accept_key;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::auth::{self, Identity};
use crate::http::ApiError;
use crate::server::AppState;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Defines an axum handler that upgrades to `$dialect`.
macro_rules! upgrade_handler {
    ($(#[doc = $doc:expr] $name:ident => $dialect:expr;)*) => {$(
        #[doc = $doc]
        pub async fn $name(
            State(state): State<Arc<AppState>>,
            ConnectInfo(remote): ConnectInfo<SocketAddr>,
            req: Request,
        ) -> Response {
            upgrade_to($dialect, state, remote, req)
        }
    )*};
}

/// `GET /ws`: the native protocol. With `[auth_hook]` on, a handshake without a credential
/// Herald knows waits for the app backend's answer before it is upgraded or refused.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if !state.auth_hook.enabled() {
        return upgrade_to(native::Native, state, remote, req);
    }
    if let Err(refusal) = crate::limits::check_attempt(&state, remote.ip(), req.headers()) {
        return refusal;
    }
    let identity = crate::auth_hook::admit(
        &state,
        remote,
        req.headers(),
        req.uri(),
        native::Native.name(),
    )
    .await;
    match identity {
        Ok(identity) => upgrade_admitted(native::Native, state, remote, req, identity),
        Err(e) => ApiError(e).into_response(),
    }
}

upgrade_handler! {
    #[doc = "The SubSocket dialect's `/socket`."] upgrade_subsocket => subsocket::SubSocket;
    #[doc = "The Eventual Agent dialect: any path of its mount."] upgrade_eventual => eventual::Eventual;
    #[doc = "The SimplySocket dialect: any path of its mount."] upgrade_simplysocket => simplysocket::SimplySocket;
    #[doc = "The WS-PushServer dialect: any path of its mount."] upgrade_wspush => wspush::WsPush;
}

/// One of `limits.max_connections` WebSocket slots, taken at the handshake (so simultaneous
/// handshakes cannot overshoot the limit) and given back when the connection ends.
struct ConnectionSlot(Arc<AppState>);

impl ConnectionSlot {
    fn take(state: &Arc<AppState>) -> Option<ConnectionSlot> {
        let max = state.config.limits.max_connections;
        state
            .ws_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(state.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.ws_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the `Origin` header, if any, names the same host as `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://").map(|(_, rest)| rest))
        .map(|rest| rest.split('/').next().unwrap_or(rest));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// What the handshake established about a connection, handed to its task.
pub(crate) struct Admission {
    pub info: ClientInfo,
    pub extras: ConnectExtras,
    pub identity: Identity,
    /// [`Hub::ban_generation`](herald_core::Hub::ban_generation) before the handshake's ban
    /// checks.
    pub bans_seen: u64,
}

/// Checks the handshake's credential (dialects that take one).
fn admit<D: Dialect>(
    dialect: &D,
    state: &AppState,
    req: &Request,
) -> Result<Identity, HeraldError> {
    if !dialect.takes_credentials() {
        return Ok(Identity::default());
    }
    let Some(credential) = auth::handshake_credential(req.headers(), req.uri().query()) else {
        return Ok(Identity::default());
    };
    auth::verify(state, &credential).inspect_err(|e| {
        tracing::info!(error = %e.message, "connection refused: bad credential");
    })
}

/// The ban that covers `client` now, if any: its address (unless `admin`), or its user.
pub(crate) fn ban_covering(
    state: &AppState,
    client: &ClientHandle,
    admin: bool,
) -> Option<herald_core::bans::BanRecord> {
    let by_ip = client
        .info
        .remote
        .filter(|_| !admin)
        .and_then(|r| state.hub.banned(r.ip()));
    by_ip.or_else(|| client.user().and_then(|u| state.hub.banned_user(u)))
}

/// Applies a verified identity to a connection: admin rights (native admins hear connects
/// and disconnects until they choose otherwise with `{"op":"events"}`), and the channels its
/// token grants, subscribed on the server's authority.
pub(crate) fn apply_identity(
    state: &AppState,
    client: &Arc<ClientHandle>,
    identity: &Identity,
) -> Result<(), HeraldError> {
    if identity.admin && !client.is_admin() {
        state.hub.make_admin(client);
        if client.format.name() == herald_protocol::native::DIALECT {
            let mask = EventMask::of([EventType::ClientConnected, EventType::ClientDisconnected]);
            state.hub.listen_events(&Actor::Admin, client, mask)?;
        }
    }
    if !identity.channels.is_empty() {
        state
            .hub
            .subscribe(&granting(identity), client, &identity.channels, None)?;
    }
    Ok(())
}

/// On whose authority a credential's channels are subscribed: an admin credential's as an
/// admin's, any other's as the issuer's (public and private channels, not admin-only ones).
fn granting(identity: &Identity) -> Actor {
    if identity.admin {
        Actor::Admin
    } else {
        Actor::Issuer
    }
}

/// The request headers `events.headers` names, for `client.connected` events.
fn event_headers(state: &AppState, headers: &HeaderMap) -> Vec<(String, String)> {
    let names = &state.config.events.headers;
    if names.is_empty() || !state.hub.events().wanted(EventType::ClientConnected) {
        return Vec::new();
    }
    names
        .iter()
        .filter_map(|name| {
            let value = headers.get(name.as_str())?.to_str().ok()?;
            let value = herald_core::ids::truncate(value, MAX_EVENT_HEADER_BYTES);
            Some((name.to_ascii_lowercase(), value.to_string()))
        })
        .collect()
}

/// Longest header value copied into an event.
const MAX_EVENT_HEADER_BYTES: usize = 1024;

/// The connection task of a WebSocket upgraded on a TLS connection.
async fn run_tls<D: Dialect>(
    dialect: &D,
    state: Arc<AppState>,
    upgraded: hyper::upgrade::Upgraded,
    admission: Box<Admission>,
) {
    let remote = admission.info.remote;
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            let (tcp, tls) = parts.io.into_inner().into_inner();
            match transport::TlsTransport::new(tcp, tls) {
                Ok(stream) => {
                    connection::run(dialect, state, stream, parts.read_buf, admission).await
                }
                Err(e) => tracing::debug!(?remote, error = %e, "TLS error at the upgrade"),
            }
        }
        Err(_) => tracing::error!("upgraded connection is neither TCP nor TLS"),
    }
}

/// Validates the handshake, answers 101 and hands the upgraded socket to a connection task
/// speaking `dialect`.
fn upgrade_to<D: Dialect>(
    dialect: D,
    state: Arc<AppState>,
    remote: SocketAddr,
    req: Request,
) -> Response {
    if let Err(refusal) = crate::limits::check_attempt(&state, remote.ip(), req.headers()) {
        return refusal;
    }
    let identity = match admit(&dialect, &state, &req) {
        Ok(identity) => identity,
        Err(e) => return ApiError(e).into_response(),
    };
    upgrade_admitted(dialect, state, remote, req, identity)
}

/// [`upgrade_to`] once the credential has been judged: bans, origin, the handshake itself,
/// connection limits, then 101.
fn upgrade_admitted<D: Dialect>(
    dialect: D,
    state: Arc<AppState>,
    remote: SocketAddr,
    mut req: Request,
    identity: Identity,
) -> Response {
    // Read before the checks: a ban added after this is caught once the client is listed.
    let bans_seen = state.hub.ban_generation();
    // Admin credentials pass address bans, so an operator cannot lock themselves out.
    let ip_ban = state.hub.banned(remote.ip()).filter(|_| !identity.admin);
    let user_ban = || {
        identity
            .user
            .as_ref()
            .and_then(|u| state.hub.banned_user(u))
    };
    if let Some(ban) = ip_ban.or_else(user_ban) {
        tracing::info!(%remote, user = ?identity.user, "banned connection refused");
        return ApiError::new(ErrorCode::Banned, ban.message()).into_response();
    }
    let headers = req.headers();
    if dialect.same_origin_only() && !same_origin(headers) {
        let mut resp =
            ApiError::new(ErrorCode::Forbidden, "cross-origin WebSocket refused").into_response();
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        let mut resp = ApiError::new(
            ErrorCode::BadRequest,
            "this endpoint speaks WebSocket: send an Upgrade: websocket request",
        )
        .into_response();
        *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut resp = ApiError::new(
            ErrorCode::BadRequest,
            "unsupported Sec-WebSocket-Version (need 13)",
        )
        .into_response();
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return ApiError::new(ErrorCode::BadRequest, "missing Sec-WebSocket-Key").into_response();
    };
    let accept = accept_key(key);
    let info = ClientInfo::new(Some(remote), dialect.name());
    let extras = ConnectExtras {
        user: identity.user.clone(),
        headers: event_headers(&state, headers),
    };
    // Boxed: the task keeps what it captures for the connection's whole life.
    let admission = Box::new(Admission {
        info,
        extras,
        identity,
        bans_seen,
    });
    let Some(slot) = ConnectionSlot::take(&state) else {
        let kind = crate::limits::Refused::MaxConnections;
        crate::limits::count_refusal(&state, kind, remote.ip(), "limits.max_connections");
        let mut resp = ApiError::new(ErrorCode::TooMany, "the server is at its connection limit")
            .into_response();
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return resp;
    };
    let slots = match crate::limits::take_slots(&state, remote.ip(), &admission.identity) {
        Ok(slots) => slots,
        Err(refusal) => return refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slots = (slot, slots);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(%remote, error = %e, "WebSocket upgrade failed"),
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                connection::run(&dialect, state, stream, parts.read_buf, admission).await
            }
            // Boxed: this task stays as small as it was before TLS for plain connections.
            Err(upgraded) => Box::pin(run_tls(&dialect, state, upgraded, admission)).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts are valid")
}
