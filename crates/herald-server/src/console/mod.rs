//! The embedded web admin console (`docs/console.md`): `GET /console` serves one page, its
//! script at `/console/console.js` and its style at `/console/console.css`, all compiled into
//! the binary. This module owns only their serving: the routes, content types,
//! `Cache-Control` and the hardening headers (a strict `Content-Security-Policy`: the page
//! runs no inline script or style and talks only to its own origin).
//!
//! The page holds no secret, so these routes need no credential: the operator types the
//! admin key into the page, which keeps it in `sessionStorage` and sends it with every call
//! to the HTTP API (`Authorization: Bearer`) and to its admin WebSocket (`/ws?token=`). The
//! API and the WebSocket check it as for any other caller.

use std::sync::Arc;

use axum::Router;
use axum::http::header::{self, HeaderName};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const PAGE: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Only the console's own files; API calls and the WebSocket to this origin only
/// (CSP 3 `'self'` covers `ws:`/`wss:` to the same host and port); no frames, no forms
/// posted elsewhere, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The console's routes, merged into the main listener's router (`http::router`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
}

async fn page() -> impl IntoResponse {
    serve("text/html; charset=utf-8", PAGE)
}

async fn script() -> impl IntoResponse {
    serve("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    serve("text/css; charset=utf-8", STYLE)
}

/// One embedded file with its headers. `no-cache`: a browser revalidates, so an upgraded
/// server's console is never mixed with an older cached script.
fn serve(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    (headers, body)
}
