//! The WebSocket transport, for any [`Dialect`]: the upgrade (RFC 6455 handshake over
//! hyper's upgrade mechanism, after [`crate::admission`] admitted the connection:
//! [`upgrade_to`]) and the per-connection task in `connection`, which feeds the dialect's
//! codec and drains the client's outbox, over plain TCP or TLS (`transport`).

mod connection;
mod dialect;
mod transport;

pub use dialect::{Dialect, DialectSession};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::ErrorCode;
use herald_protocol::ws::accept_key;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::admission::{self, Admission};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::state::AppState;
use crate::transport::Lingering;
use crate::transport::direct::Prefixed;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// An axum handler upgrading to the dialect `D` (a unit type).
pub async fn upgrade<D: Dialect + Default>(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    upgrade_to(D::default(), state, remote, req)
}

/// What was read past the handshake: hyper's buffer, then what it had not yet taken of the
/// bytes read before it ([`Prefixed`]; nearly always nothing).
fn leftover(read_buf: bytes::Bytes, unread: bytes::Bytes) -> bytes::Bytes {
    if unread.is_empty() {
        return read_buf;
    }
    let mut all = bytes::BytesMut::from(&read_buf[..]);
    all.extend_from_slice(&unread);
    all.freeze()
}

/// The connection task of a WebSocket upgraded on a TLS connection.
async fn run_tls<D: Dialect>(
    dialect: D,
    state: Arc<AppState>,
    upgraded: hyper::upgrade::Upgraded,
    admission: Box<Admission>,
    seat: admission::Seat,
) {
    let remote = admission.info.remote;
    match upgraded.downcast::<TokioIo<Lingering<Prefixed<TlsStream<TcpStream>>>>>() {
        Ok(parts) => {
            let (io, unread) = parts.io.into_inner().into_inner().into_parts();
            let (tcp, tls) = io.into_inner();
            match transport::TlsTransport::new(tcp, tls) {
                Ok(stream) => {
                    let leftover = leftover(parts.read_buf, unread);
                    connection::run(dialect, state, stream, leftover, *admission, None, seat).await
                }
                Err(e) => tracing::debug!(?remote, error = %e, "TLS error at the upgrade"),
            }
        }
        Err(_) => tracing::error!("upgraded connection is neither TCP nor TLS"),
    }
}

/// Validates the handshake, answers 101 and hands the upgraded socket to a connection task
/// speaking `dialect`.
pub fn upgrade_to<D: Dialect>(
    dialect: D,
    state: Arc<AppState>,
    remote: SocketAddr,
    req: Request,
) -> Response {
    if let Err(refusal) = crate::limits::check_attempt(state.guard(), remote.ip(), req.headers()) {
        return refusal.into_response();
    }
    let identity = match admission::credential(
        dialect.takes_credentials(),
        &state,
        req.headers(),
        req.uri(),
    ) {
        Ok(identity) => identity,
        Err(e) => return ApiError(e).into_response(),
    };
    upgrade_admitted(dialect, state, remote, req, identity)
}

/// [`upgrade_to`] once the credential has been judged: bans, origin, the handshake itself,
/// connection limits, then 101.
pub fn upgrade_admitted<D: Dialect>(
    dialect: D,
    state: Arc<AppState>,
    remote: SocketAddr,
    mut req: Request,
    identity: Identity,
) -> Response {
    let headers = req.headers();
    let same_origin_only = dialect.same_origin_only();
    let bans_seen = match admission::screen(&state, remote, headers, &identity, same_origin_only) {
        Ok(seen) => seen,
        Err(refusal) => return refusal.into_response(),
    };
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
    if req.version() < axum::http::Version::HTTP_11 {
        return ApiError::new(
            ErrorCode::BadRequest,
            "a WebSocket handshake needs HTTP/1.1",
        )
        .into_response();
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return ApiError::new(ErrorCode::BadRequest, "missing Sec-WebSocket-Key").into_response();
    };
    if !valid_key(key) {
        return ApiError::new(
            ErrorCode::BadRequest,
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)",
        )
        .into_response();
    }
    let accept = accept_key(key);
    let seated = admission::seat(&state, remote, headers, dialect.name(), identity, bans_seen);
    let (admission, seat) = match seated {
        Ok(seated) => seated,
        Err(refusal) => return refusal.into_response(),
    };
    let direct = req
        .extensions()
        .get::<crate::transport::direct::DirectUpgrade>()
        .cloned();
    if let Some(direct) = direct {
        // The connection's own task writes the 101 with the greeting, and serves it.
        direct.hand_over(Box::new(move |stream, leftover, head| {
            let head = Some(head);
            tokio::spawn(connection::run(
                dialect, state, stream, leftover, *admission, head, seat,
            ));
        }));
        return switching(accept);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(%remote, error = %e, "WebSocket upgrade failed"),
        };
        match upgraded.downcast::<TokioIo<Lingering<Prefixed<TcpStream>>>>() {
            Ok(parts) => {
                let (stream, unread) = parts.io.into_inner().into_inner().into_parts();
                let leftover = leftover(parts.read_buf, unread);
                connection::run(dialect, state, stream, leftover, *admission, None, seat).await
            }
            // Boxed: this task stays as small as it was before TLS for plain connections.
            Err(upgraded) => Box::pin(run_tls(dialect, state, upgraded, admission, seat)).await,
        }
    });
    switching(accept)
}

/// A `Sec-WebSocket-Key` as RFC 6455 has it: 16 random bytes in base64 (24 characters).
fn valid_key(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// The 101 answer with its accept key.
fn switching(accept: String) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts are valid")
}
