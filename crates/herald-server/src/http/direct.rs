//! `POST /api/v1/publish` and `POST /api/v1/batch` served on the connection itself, without
//! hyper, axum or a task of their own: a backend's keep-alive connection that publishes is
//! the hottest HTTP path, and hyper's connection machinery, routing and body collection cost
//! more than the publication (docs/performance.md).
//!
//! A connection of the main listener whose first read is not a stream or an upgrade
//! (`crate::transport::direct`) comes here. Each request whose head is a plain publish or
//! batch request (HTTP/1.1, a `Content-Length` within `limits.max_http_body_bytes`, no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, at most one `Authorization`, no query) is
//! answered here, with the same
//! caller check, the same handler functions and the same JSON as the routed API
//! (`super::routes::publish_body`, `super::routes::batch_body`). At the first request that
//! is anything else, the connection, with every byte not yet served in front, goes to hyper
//! (`Hyper`), which sees an ordinary connection: nothing changes for any other request, and
//! whatever this module does not serve gets hyper's own answer.
//!
//! Time limits: a request must arrive, head and body, within the handshake timeout of the
//! wait for it (hyper limits the head alike, so an idle keep-alive connection closes then; a
//! publisher that stalls mid-body is answered 408 `request_timeout` and let go, as
//! `super::body` does on the routed path), and at shutdown a connection waiting for its next
//! request closes.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::auth::caller;
use super::routes::{batch_body, publish_body};
use crate::error::ApiError;
use crate::state::AppState;

/// Longest request head served here (longer ones go to hyper).
const MAX_HEAD: usize = 8 * 1024;
/// Most headers of a request served here.
const MAX_HEADERS: usize = 32;
/// Bytes asked of each read.
const READ_SIZE: usize = 4096;

/// What becomes of the connection when this module is done with it.
pub enum After<I> {
    /// Hyper serves the rest: the connection and the bytes read but not served.
    Hyper(I, Bytes),
    /// It is closed (the peer went, asked to close, timed out, or the server shuts down).
    Closed,
}

/// Which handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Publish,
    Batch,
}

/// A request head served here.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    route: Route,
    /// Bytes of the head, up to the blank line.
    len: usize,
    body_len: usize,
    /// Where the first `Authorization` header's value is in the head.
    authorization: Option<Range<usize>>,
    /// `Connection: close`: answer, then close.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Serve(Head),
    /// Not a whole head yet.
    Partial,
    /// For hyper.
    Other,
}

/// Whether a connection that opened with `first` is one to start here: its first request
/// is (the start of) a publish or batch request. Anything else goes straight to hyper.
pub fn wants(first: &[u8]) -> bool {
    first.starts_with(b"POST /api/v1/publish ") || first.starts_with(b"POST /api/v1/batch ")
}

/// Serves publish and batch requests from `io` (`first`: what was read of it already) until
/// it closes or a request for hyper comes.
pub async fn serve<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    first: Bytes,
    state: &AppState,
    shutdown: &mut watch::Receiver<bool>,
    timeout: Duration,
) -> After<I> {
    let max_body = state.config.limits.max_http_body_bytes;
    let mut buf = BytesMut::from(&first[..]);
    let mut out = Vec::with_capacity(512);
    loop {
        // A whole head, within the timeout of starting to wait for it.
        let deadline = tokio::time::Instant::now() + timeout;
        let head = loop {
            match parse(&buf, max_body) {
                Parsed::Serve(head) => break head,
                Parsed::Other => return After::Hyper(io, buf.freeze()),
                Parsed::Partial if buf.len() >= MAX_HEAD => {
                    return After::Hyper(io, buf.freeze());
                }
                Parsed::Partial => {
                    if !read_more(&mut io, &mut buf, READ_SIZE, deadline, shutdown).await {
                        return After::Closed;
                    }
                }
            }
        };
        // Its body, under the same deadline: a peer that stalls mid-request is answered 408
        // and let go, as on the routed path (`super::body`).
        let total = head.len + head.body_len;
        while buf.len() < total {
            let want = total - buf.len();
            if !read_more(&mut io, &mut buf, want, deadline, shutdown).await {
                if tokio::time::Instant::now() >= deadline {
                    let late = herald_core::HeraldError::new(
                        herald_core::ErrorCode::RequestTimeout,
                        format!(
                            "the request body did not arrive within {} s",
                            timeout.as_secs()
                        ),
                    );
                    let (status, body) = json::<()>(Err(ApiError(late)));
                    out.clear();
                    response(&mut out, status, &body, true);
                    let _ = io.write_all(&out).await;
                    let _ = io.shutdown().await;
                }
                return After::Closed;
            }
        }
        let mut request = buf.split_to(total).freeze();
        let body = request.split_off(head.len);
        let authorization = head.authorization.clone().map(|r| &request[r]);
        let answer = match caller(authorization, state) {
            Ok(actor) => match head.route {
                Route::Publish => json(publish_body(state, &actor, &body).await),
                Route::Batch => json(batch_body(state, &actor, &body).await),
            },
            Err(e) => json::<()>(Err(e)),
        };
        drop((request, body));
        out.clear();
        // Every 413 closes, as on the routed path (`super::close_after_413`): one rule.
        let close = head.close || answer.0 == 413;
        response(&mut out, answer.0, &answer.1, close);
        if io.write_all(&out).await.is_err() {
            return After::Closed;
        }
        if close || *shutdown.borrow() {
            let _ = io.shutdown().await;
            return After::Closed;
        }
    }
}

/// Reads at least one more byte into `buf` (asking for up to `want`); false if the peer went,
/// the deadline passed or the server shuts down.
async fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    want: usize,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    buf.reserve(want.clamp(1, READ_SIZE.max(want.min(1 << 20))));
    tokio::select! {
        read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => {
            matches!(read, Ok(Ok(n)) if n > 0)
        }
        _ = shutdown.changed() => false,
    }
}

/// Sorts what `buf` starts with.
fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // Only a publish or batch request is waited for; anything else is hyper's.
            return match req.method.zip(req.path) {
                Some(_) if route(req.method, req.path).is_none() => Parsed::Other,
                _ if !buf.is_empty() && !wants_prefix(buf) => Parsed::Other,
                _ => Parsed::Partial,
            };
        }
        Err(_) => return Parsed::Other,
    };
    let Some(route) = route(req.method, req.path) else {
        return Parsed::Other;
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let mut body_len = None;
    let mut authorization = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
            else {
                return Parsed::Other;
            };
            if body_len.replace(n).is_some_and(|m| m != n) {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                // Two: hyper's path refuses them (`super::auth`).
                return Parsed::Other;
            }
            let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            authorization = Some(start..start + h.value.len());
        } else if name.eq_ignore_ascii_case("connection") {
            let value = std::str::from_utf8(h.value).unwrap_or("");
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return Parsed::Other;
                }
            }
        }
    }
    match body_len {
        Some(body_len) if body_len <= max_body => Parsed::Serve(Head {
            route,
            len,
            body_len,
            authorization,
            close,
        }),
        _ => Parsed::Other,
    }
}

/// Whether `buf` (a partial head) can still become a publish or batch request line.
fn wants_prefix(buf: &[u8]) -> bool {
    [&b"POST /api/v1/publish "[..], &b"POST /api/v1/batch "[..]]
        .iter()
        .any(|line| {
            let n = buf.len().min(line.len());
            buf[..n] == line[..n]
        })
}

fn route(method: Option<&str>, path: Option<&str>) -> Option<Route> {
    match (method?, path?) {
        ("POST", "/api/v1/publish") => Some(Route::Publish),
        ("POST", "/api/v1/batch") => Some(Route::Batch),
        _ => None,
    }
}

/// A handler's answer as a status and JSON body, as the routed API would send it.
fn json<T: Serialize>(result: Result<T, ApiError>) -> (u16, Vec<u8>) {
    let encoded = match result {
        Ok(value) => serde_json::to_vec(&value).map(|body| (200, body)),
        Err(e) => {
            let (status, body) = e.into_parts();
            serde_json::to_vec(&body).map(|body| (status.as_u16(), body))
        }
    };
    encoded.unwrap_or_else(|_| {
        let body = br#"{"error":{"code":"internal","message":"the answer could not be encoded"}}"#;
        (500, body.to_vec())
    })
}

/// Writes an HTTP/1.1 response with a JSON body into `out`.
fn response(out: &mut Vec<u8>, status: u16, body: &[u8], close: bool) {
    use std::io::Write as _;
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}date: {}\r\n\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" },
        http_date(),
    );
    out.extend_from_slice(body);
}

/// Now as an HTTP date, formatted once a second per thread.
fn http_date() -> String {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, herald_protocol::pushstream::http_time(secs * 1000));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Parsed {
        parse(text.as_bytes(), 1000)
    }

    #[test]
    fn plain_publish_and_batch_requests_are_served_here() {
        let text = "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let Parsed::Serve(h) = head(text) else {
            panic!("{:?}", head(text))
        };
        assert_eq!(h.route, Route::Publish);
        assert_eq!(h.len, text.len() - 7);
        assert_eq!(h.body_len, 7);
        assert_eq!(&text[h.authorization.unwrap()], "Bearer k");
        assert!(!h.close);
        let text = "POST /api/v1/batch HTTP/1.1\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n";
        let Parsed::Serve(h) = head(text) else {
            panic!()
        };
        assert_eq!((h.route, h.body_len, h.close), (Route::Batch, 0, true));
        assert_eq!(h.authorization, None);
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for text in [
            // other routes, methods, versions, a query
            "POST /api/v1/channels HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            "GET /api/v1/publish HTTP/1.1\r\n\r\n",
            "POST /api/v1/publish HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}",
            "POST /api/v1/publish?x=1 HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            // bodies hyper frames or judges
            "POST /api/v1/publish HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST /api/v1/publish HTTP/1.1\r\n\r\n",
            "POST /api/v1/publish HTTP/1.1\r\ncontent-length: 1001\r\n\r\n",
            "POST /api/v1/publish HTTP/1.1\r\ncontent-length: +2\r\n\r\n{}",
            "POST /api/v1/publish HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            "POST /api/v1/publish HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
            "POST /api/v1/publish HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\ncontent-length: 2\r\n\r\n{}",
            // two credentials (the routed path refuses them)
            "POST /api/v1/publish HTTP/1.1\r\nauthorization: Bearer a\r\nauthorization: Bearer b\r\ncontent-length: 2\r\n\r\n{}",
            // not HTTP
            "POST /api/v1/publish HTTP/1.1\r\nbad header\r\n\r\n",
            "\x16\x03\x01\x02\x00",
        ] {
            assert_eq!(head(text), Parsed::Other, "{text:?}");
        }
        // Partial heads are waited for only while they can still be ours.
        assert_eq!(head("POST /api/v1/pub"), Parsed::Partial);
        assert_eq!(
            head("POST /api/v1/publish HTTP/1.1\r\nHost: x"),
            Parsed::Partial
        );
        assert_eq!(head("GET /api/v1/stats HTTP/1.1\r\nHost"), Parsed::Other);
        assert_eq!(head("POST /api/v2/pub"), Parsed::Other);
        assert_eq!(head(""), Parsed::Partial);
    }

    #[test]
    fn a_head_split_anywhere_is_waited_for_then_served() {
        let text = "POST /api/v1/publish HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n";
        for cut in 0..text.len() {
            assert_eq!(head(&text[..cut]), Parsed::Partial, "cut at {cut}");
        }
        assert!(matches!(head(text), Parsed::Serve(_)));
    }

    #[test]
    fn responses_are_http_1_1_with_a_json_body() {
        let mut out = Vec::new();
        response(&mut out, 413, b"{}", true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n{}"), "{text}");
    }
}
