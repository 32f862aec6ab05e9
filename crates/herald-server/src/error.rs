//! API errors: the hub's [`HeraldError`] as an HTTP response with the code's status and the
//! body `{"error":{"code":"...","message":"..."}}` (the same codes as the WebSocket).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::{ErrorCode, HeraldError};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError(pub HeraldError);

impl From<HeraldError> for ApiError {
    fn from(e: HeraldError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(HeraldError::new(code, message))
    }
}

/// The error body, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `invalid_channel` (docs/errors.md).
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// The response's status and body.
    pub fn into_parts(self) -> (StatusCode, ErrorBody) {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.code.as_str().to_string(),
                message: self.0.message,
            },
        };
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.into_parts();
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A request refused before it is served (a limit, a ban, the origin rule): the status,
/// the error, and when to try again. Only the HTTP layer turns it into a response.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: HeraldError,
    /// `Retry-After` seconds.
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error: HeraldError::new(code, message),
            retry_after_secs: None,
        }
    }
}

impl From<HeraldError> for Refusal {
    /// The error with its code's status.
    fn from(error: HeraldError) -> Refusal {
        Refusal {
            status: StatusCode::from_u16(error.code.http_status())
                .unwrap_or(StatusCode::BAD_REQUEST),
            error,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = ApiError(self.error).into_response();
        *resp.status_mut() = self.status;
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<Refusal> for Response {
    fn from(refusal: Refusal) -> Response {
        refusal.into_response()
    }
}
