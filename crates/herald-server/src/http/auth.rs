//! Who is calling the HTTP API: `Authorization: Bearer <admin key | channel token>`.
//! The admin key is compared in constant time; a channel token is checked by the hub against
//! the channel the request touches. Requests without a credential are refused.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use herald_core::secret::{self, CHANNEL_TOKEN_PREFIX};
use herald_core::{Actor, ErrorCode};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of an API route.
pub struct Caller(pub Actor);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let mut headers = parts.headers.get_all(AUTHORIZATION).iter();
        let first = headers.next();
        if headers.next().is_some() {
            // A proxy in front may have taken the other one.
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "more than one Authorization header",
            ));
        }
        caller(first.map(|v| v.as_bytes()), state).map(Caller)
    }
}

/// The caller an `Authorization` header's value names.
pub fn caller(authorization: Option<&[u8]>, state: &AppState) -> Result<Actor, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(ErrorCode::Unauthorized, msg);
    let Some(value) = authorization else {
        return Err(unauthorized(
            "missing Authorization: Bearer <admin key or channel token>",
        ));
    };
    let token = crate::auth::bearer_value(value)
        .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <credential>\""))?;
    if secret::secrets_equal(token, &state.admin_key) {
        return Ok(Actor::Admin);
    }
    if token.starts_with(CHANNEL_TOKEN_PREFIX) {
        return Ok(Actor::ChannelToken(token.to_string()));
    }
    Err(unauthorized("unknown credential"))
}
