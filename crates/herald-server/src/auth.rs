//! Who a connection is: the credential it presents at the handshake (`Authorization: Bearer`
//! or `?token=`) or later in `{"op":"auth"}`, turned into an [`Identity`]. Today a credential
//! is the admin key (compared in constant time); connection tokens extend this.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use herald_core::secret;
use herald_core::{ChannelName, ErrorCode, HeraldError};

use crate::server::AppState;

/// What a verified credential says about a connection.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// It may do what the admin key allows and hears lifecycle events.
    pub admin: bool,
    /// The user it acts for.
    pub user: Option<Arc<str>>,
    /// Channels to subscribe it to right away.
    pub channels: Vec<ChannelName>,
}

/// The credential a handshake carries: `Authorization: Bearer <credential>`, else the
/// `token` query parameter (for browsers, which cannot set headers on a WebSocket).
pub fn handshake_credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    from_header.or_else(|| {
        form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .filter(|t| !t.is_empty())
    })
}

/// Verifies a connection credential.
pub fn verify(state: &AppState, credential: &str) -> Result<Identity, HeraldError> {
    if secret::secrets_equal(credential, &state.admin_key) {
        return Ok(Identity {
            admin: true,
            ..Identity::default()
        });
    }
    Err(HeraldError::new(
        ErrorCode::Unauthorized,
        "unknown credential: expected the admin key",
    ))
}
