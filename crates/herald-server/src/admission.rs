//! Admitting a connection, whatever its transport: the credential it presents, bans, the
//! origin rule, and the connection slots it holds while it lives (`limits.max_connections`,
//! per address and per user). A transport calls [`credential`] (or the auth hook), then
//! [`screen`], checks its own handshake, then [`seat`], and hands the [`Admission`] to its
//! connection task, which applies the identity once the client is registered
//! ([`apply_identity`], [`ban_covering`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode, header};
use herald_core::client::{ClientInfo, ConnectExtras};
use herald_core::{Actor, ClientHandle, ErrorCode, EventMask, EventType, HeraldError};

use crate::auth::{self, Identity};
use crate::error::Refusal;
use crate::state::AppState;

/// Checks the handshake's credential (dialects that take one).
pub fn credential(
    takes_credentials: bool,
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Identity, HeraldError> {
    if !takes_credentials {
        return Ok(Identity::default());
    }
    let credential = auth::handshake_credential_strict(headers, uri.query()).inspect_err(|e| {
        tracing::info!(error = %e.message, "connection refused: bad credential");
    })?;
    let Some(credential) = credential else {
        return Ok(Identity::default());
    };
    auth::verify(state.keys(), &credential).inspect_err(|e| {
        tracing::info!(error = %e.message, "connection refused: bad credential");
    })
}

/// What admission established about a connection, handed to its task.
pub struct Admission {
    pub info: ClientInfo,
    pub extras: ConnectExtras,
    pub identity: Identity,
    /// [`Hub::ban_generation`](herald_core::Hub::ban_generation) before the handshake's ban
    /// checks.
    pub bans_seen: u64,
}

/// What a connection holds while it lives: its place under `limits.max_connections` and its
/// per-address and per-user slots.
pub struct Seat {
    _connection: ConnectionSlot,
    _limits: crate::limits::ConnectionSlots,
}

/// Bans (of the address, unless the credential is the admin's, and of the user) and, for
/// transports that ask it, the same-origin rule. Returns the ban generation read before the
/// checks, for [`Admission::bans_seen`].
pub fn screen(
    state: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
    identity: &Identity,
    same_origin_only: bool,
) -> Result<u64, Refusal> {
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
        return Err(HeraldError::new(ErrorCode::Banned, ban.message()).into());
    }
    if same_origin_only && !same_origin(headers) {
        let why = "cross-origin WebSocket refused";
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            why,
        ));
    }
    Ok(bans_seen)
}

/// Takes the connection's slots and builds its [`Admission`]; refused (503, 429) at a limit.
pub fn seat(
    state: &Arc<AppState>,
    remote: SocketAddr,
    headers: &HeaderMap,
    dialect: &'static str,
    identity: Identity,
    bans_seen: u64,
) -> Result<(Box<Admission>, Seat), Refusal> {
    let info = ClientInfo::new(Some(remote), dialect);
    let extras = ConnectExtras {
        user: identity.user.clone(),
        headers: event_headers(state, headers),
    };
    // Boxed: the task keeps what it captures for the connection's whole life.
    let admission = Box::new(Admission {
        info,
        extras,
        identity,
        bans_seen,
    });
    let Some(connection) = ConnectionSlot::take(state) else {
        let kind = crate::limits::Refused::MaxConnections;
        crate::limits::count_refusal(state.guard(), kind, remote.ip(), "limits.max_connections");
        let why = "the server is at its connection limit";
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooMany,
            why,
        ));
    };
    let limits = crate::limits::take_slots(state.guard(), remote.ip(), &admission.identity)?;
    Ok((
        admission,
        Seat {
            _connection: connection,
            _limits: limits,
        },
    ))
}

/// One of `limits.max_connections` connection slots, taken at the handshake (so simultaneous
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
pub fn same_origin(headers: &HeaderMap) -> bool {
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

/// The ban that covers `client` now, if any: its address (unless `admin`), or its user.
pub fn ban_covering(
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
pub fn apply_identity(
    state: &AppState,
    client: &Arc<ClientHandle>,
    identity: &Identity,
) -> Result<(), HeraldError> {
    if identity.admin && !client.is_admin() {
        state.hub.make_admin(client);
        if herald_protocol::native::is_native(client.format) {
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

/// A client admitted over an HTTP transport and registered in the hub, its identity not yet
/// applied ([`apply_identity`]).
pub struct Admitted {
    pub client: Arc<ClientHandle>,
    pub identity: Identity,
    pub seat: Seat,
}

/// Admits an HTTP transport's request as a handshake of `dialect` would be (the auth hook
/// when on and the dialect takes credentials, else [`credential`]; [`screen`], [`seat`]) and
/// registers its client, encoded by `format`.
pub async fn admit_http(
    state: &Arc<AppState>,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    dialect: &'static str,
    takes_credentials: bool,
    format: &'static dyn herald_core::WireFormat,
) -> Result<Admitted, Refusal> {
    crate::limits::check_attempt(state.guard(), remote.ip(), headers)?;
    let identity = if takes_credentials && state.auth_hook.enabled() {
        Box::pin(hook_admit(state, remote, headers, uri, dialect)).await
    } else {
        credential(takes_credentials, state, headers, uri)
    };
    let identity = identity?;
    let bans_seen = screen(state, remote, headers, &identity, false)?;
    let (admission, seat) = seat(state, remote, headers, dialect, identity, bans_seen)?;
    let Admission {
        info,
        extras,
        identity,
        bans_seen,
    } = *admission;
    let client = state.hub.connect_as(format, info, extras);
    // A ban put in force since the check may have missed this client in its sweep.
    if state.hub.ban_generation() != bans_seen
        && let Some(ban) = ban_covering(state, &client, identity.admin)
    {
        state
            .hub
            .disconnect(&client, herald_core::client::DisconnectReason::Banned);
        return Err(HeraldError::new(ErrorCode::Banned, ban.message()).into());
    }
    Ok(Admitted {
        client,
        identity,
        seat,
    })
}

/// Judges a handshake when the hook is on: the admin key or a JWT connection token that
/// verifies is used as is (and an expired Herald JWT is refused with `token_expired`, so the
/// client knows to refresh it); anything else, no credential included, is the backend's to
/// judge.
pub async fn hook_admit(
    state: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &http::Uri,
    dialect: &'static str,
) -> Result<Identity, HeraldError> {
    let query = uri.query();
    if let Some(credential) = crate::auth::handshake_credential(headers, query) {
        match crate::auth::verify(state.keys(), &credential) {
            Ok(identity) => return Ok(identity),
            Err(e) if e.code == ErrorCode::TokenExpired => return Err(e),
            Err(_) => {}
        }
    }
    state
        .auth_hook
        .connect(&crate::auth_hook::Handshake {
            remote,
            dialect,
            path: uri.path(),
            query,
            headers,
        })
        .await
        .inspect_err(|e| tracing::info!(%remote, code = %e.code, error = %e.message, "connection refused by the auth hook"))
}
