//! Request bodies on the routed (hyper) path, bounded before any handler sees them: read up
//! to `limits.max_http_body_bytes` (with `Expect: 100-continue`, a declared length over it is
//! refused before hyper would answer `100 Continue`), and the whole body must arrive within
//! the handshake timeout, as `super::direct` asks of the publish path. hyper sets no time
//! bound itself, so a client that declared a body and sent part of it held its connection
//! for good.
//!
//! Answers: 413 `message_too_large` (declared or sent over the limit), 408 `request_timeout`
//! (the body stopped arriving), 400 `bad_request` (broken chunked framing); every one closes
//! the connection, as the rest of the body is unread. A 413's connection closes lingering
//! (`crate::transport::Linger`): a client still sending gets the answer, not a reset. Requests without a
//! body pass untouched.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::{ErrorCode, HeraldError};

use super::ApiError;
use crate::state::AppState;
use crate::transport::Linger;

/// Reads the body of a request that has one, within the size and time limits, then hands the
/// request on with its body in memory (the handlers buffer it anyway).
pub async fn bounded(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let max = state.config.limits.max_http_body_bytes;
    let headers = req.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if !chunked && declared.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    // A client that asked to go ahead (`Expect: 100-continue`) has not sent the body: refuse
    // at once. Any other is read up to the limit first: answering and closing while it is
    // still sending would reset the connection under it, and it would see an error, not the
    // 413.
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // A client that sends the body anyway (curl does after a second without an answer) is
    // drained like any other.
    let linger = req
        .extensions()
        .get::<Linger>()
        .cloned()
        .unwrap_or_default();
    if expects_continue && declared.is_some_and(|len| len > max as u64) {
        linger.request();
        return refused(ErrorCode::MessageTooLarge, too_large(max));
    }
    let limit = Duration::from_secs(state.config.websocket.handshake_timeout_secs);
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) if is_over_limit(&e) => {
            linger.request();
            refused(ErrorCode::MessageTooLarge, too_large(max))
        }
        Ok(Err(e)) => refused(
            ErrorCode::BadRequest,
            format!("malformed request body: {e}"),
        ),
        Err(_) => refused(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs()
            ),
        ),
    }
}

fn too_large(max: usize) -> String {
    format!("request body too large (limit {max} bytes)")
}

/// Whether reading stopped at the size limit (hyper's own errors are malformed framing).
fn is_over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The error answer, closing the connection: the unread rest of the body cannot be skipped.
fn refused(code: ErrorCode, message: String) -> Response {
    let mut resp = ApiError(HeraldError::new(code, message)).into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
