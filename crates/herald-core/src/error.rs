//! Stable, machine-readable error codes shared by every protocol and the HTTP API.
//!
//! The code strings are part of Herald's public contract (docs/errors.md): clients switch on
//! them, so never rename one; add new ones instead.

use std::fmt;

/// Every error Herald reports to a client or API caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is well-formed JSON but its shape or a field's type is wrong.
    BadRequest,
    /// The frame or body is not valid JSON.
    InvalidJson,
    /// The `op` is not one Herald knows.
    UnknownOp,
    /// A required field is missing.
    MissingField,
    /// A channel name breaks the naming rules.
    InvalidChannel,
    /// A client id is not a valid UUID.
    InvalidClientId,
    /// A WebSocket message or HTTP body is larger than the configured limit.
    MessageTooLarge,
    /// The `data` of a publication or direct message is larger than the configured limit.
    PayloadTooLarge,
    /// A list (channels, recipients) is longer than allowed, or the connection has too many
    /// subscriptions.
    TooMany,
    /// No or an unknown credential.
    Unauthorized,
    /// The token has expired: get a fresh one and retry.
    TokenExpired,
    /// The credential is valid but does not allow this action.
    Forbidden,
    /// The channel does not exist.
    ChannelNotFound,
    /// No client with that id is connected.
    ClientNotFound,
    /// A channel with that name already exists.
    ChannelExists,
    /// The channel has reached its `max_subscribers`.
    ChannelFull,
    /// The channel does not track presence (its `presence` option is off).
    PresenceDisabled,
    /// The route does not exist.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The connection's address or user is banned.
    Banned,
    /// Too many requests or connection attempts in a short time; slow down and retry.
    RateLimited,
    /// An HTTP request's body did not arrive within the time limit.
    RequestTimeout,
    /// The durable store failed; the action was not done.
    StoreUnavailable,
    /// The cluster's broker (Redis) did not answer in time; the action was not done. Retry.
    BrokerUnavailable,
    /// The app backend's auth hook timed out, was unreachable or answered nonsense: the
    /// request was refused, not judged. Retry later.
    AuthUnavailable,
    /// The server is shutting down.
    ShuttingDown,
    /// An unexpected server-side failure.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidJson,
        ErrorCode::UnknownOp,
        ErrorCode::MissingField,
        ErrorCode::InvalidChannel,
        ErrorCode::InvalidClientId,
        ErrorCode::MessageTooLarge,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooMany,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::ChannelNotFound,
        ErrorCode::ClientNotFound,
        ErrorCode::ChannelExists,
        ErrorCode::ChannelFull,
        ErrorCode::PresenceDisabled,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Banned,
        ErrorCode::RateLimited,
        ErrorCode::RequestTimeout,
        ErrorCode::StoreUnavailable,
        ErrorCode::BrokerUnavailable,
        ErrorCode::AuthUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    /// The wire string, e.g. `"invalid_channel"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooMany => "too_many",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ChannelNotFound => "channel_not_found",
            ErrorCode::ClientNotFound => "client_not_found",
            ErrorCode::ChannelExists => "channel_exists",
            ErrorCode::ChannelFull => "channel_full",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Banned => "banned",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::AuthUnavailable => "auth_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the API answers with for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidJson
            | ErrorCode::UnknownOp
            | ErrorCode::MissingField
            | ErrorCode::InvalidChannel
            | ErrorCode::InvalidClientId
            | ErrorCode::TooMany => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden | ErrorCode::Banned => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::ChannelNotFound | ErrorCode::ClientNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::ChannelExists | ErrorCode::ChannelFull | ErrorCode::PresenceDisabled => 409,
            ErrorCode::MessageTooLarge | ErrorCode::PayloadTooLarge => 413,
            ErrorCode::StoreUnavailable
            | ErrorCode::BrokerUnavailable
            | ErrorCode::AuthUnavailable
            | ErrorCode::ShuttingDown => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its stable code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HeraldError {
    pub code: ErrorCode,
    pub message: String,
}

impl HeraldError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HeraldError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

pub type Result<T, E = HeraldError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
        }
    }
}
