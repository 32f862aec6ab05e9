//! push-stream's HTTP modes, as `pushstream.js` uses them, served by [`crate::transport`]:
//!
//! - `GET /ev/<channels>`: EventSource. Each event's data is the message object
//!   ([`PUSHSTREAM_LINES`]); its `id` is the connection's position in every channel, so the
//!   browser's reconnect (`Last-Event-ID`) resumes exactly.
//! - `GET /sub/<channels>`: streaming. With `?streamid=` (`pushstream.js` `stream` mode) the
//!   hidden-iframe document of `<script>p(...)</script>` messages ([`PUSHSTREAM_IFRAME`]),
//!   else one message object per line.
//! - `GET /lp/<channels>`: long-polling. One answer per request: the messages since the
//!   position given (else those that arrive within `?timeout=`, default [`POLL_WAIT`])
//!   joined by `\r\n`, with
//!   `Etag` (the exact position in every channel) and `Last-Modified` (the last message's
//!   time); nothing new is 304 with the same headers. With `?callback=`, JSONP:
//!   `callback([messages]);`.
//!
//! Where to start, in order: `Last-Event-ID` or `If-None-Match` holding a position list
//! (exact); `?time=` / `If-Modified-Since` with `?tag=` / a numeric `If-None-Match` (the
//! module's time and tag: publications after that millisecond); a `.b<N>` backtrack (the
//! last N kept); else only what is published from now on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::client::Disconnect;
use herald_core::history::Replay;
use herald_core::{ChannelName, HeraldError};
use herald_protocol::pushstream::{
    self, IFRAME_FOOTER, IFRAME_HEADER, PUSHSTREAM_IFRAME, PUSHSTREAM_LINES, PushStreamHttp,
};
use herald_protocol::records::{self, Position, Positions, Record};

use super::subscriber::{self, Subscriber, refuse};
use crate::admission::{self, Admitted};
use crate::state::AppState;
use crate::transport::{self, Cutoff, Framing};

/// Longest a long-poll waits for a message by default (`pushstream.js` gives up after its
/// `timeout`, 30 s by default); `?timeout=` seconds sets it, up to [`MAX_POLL_WAIT_SECS`].
pub const POLL_WAIT: Duration = Duration::from_secs(25);
/// The longest `?timeout=` accepted.
pub const MAX_POLL_WAIT_SECS: u64 = 120;
/// Longest JSONP callback name.
const MAX_CALLBACK: usize = 128;

/// Where a subscriber resumes.
#[derive(Default)]
struct Resume {
    /// Exact positions (`Last-Event-ID`, `If-None-Match`).
    positions: Positions,
    /// The module's time and tag, as a millisecond to resume after.
    after_ms: Option<u64>,
}

impl Resume {
    fn replay<'a>(&'a self, subscriber: &Subscriber, channel: &ChannelName) -> Replay<'a> {
        if let Some((epoch, offset)) = self.positions.get(channel) {
            return Replay::After { epoch, offset };
        }
        if let Some(after_ms) = self.after_ms {
            return Replay::Since {
                after_ms,
                newest: usize::MAX,
            };
        }
        match subscriber.backtrack(channel) {
            0 => Replay::Nothing,
            n => Replay::Last(n),
        }
    }
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Reads where to resume: `position_header` (`Last-Event-ID` or `If-None-Match`) when it
/// holds a position list, else the time and tag of the query (a bad one is refused) or of
/// the headers (a bad one is ignored, as HTTP says of dates).
fn resume(uri: &Uri, headers: &HeaderMap, position_header: &str) -> Result<Resume, HeraldError> {
    let position = header_str(headers, position_header);
    if let Some(text) = position.filter(|t| t.contains(',')) {
        return Ok(Resume {
            positions: Positions::parse(text)?,
            after_ms: None,
        });
    }
    let tag = |text: Option<String>| -> Result<Option<u64>, HeraldError> {
        text.map(|t| {
            t.parse::<u64>()
                .map_err(|_| HeraldError::bad_request("tag is a whole number"))
        })
        .transpose()
    };
    if let Some(time) = query_param(uri, "time") {
        let tag = tag(query_param(uri, "tag"))?;
        return Ok(Resume {
            positions: Positions::default(),
            after_ms: Some(pushstream::resume_after_ms(&time, tag)?),
        });
    }
    let after_ms = header_str(headers, "if-modified-since").and_then(|time| {
        let tag = position.and_then(|t| t.trim_matches('"').parse().ok());
        pushstream::resume_after_ms(time, tag).ok()
    });
    Ok(Resume {
        positions: Positions::default(),
        after_ms,
    })
}

/// What a request asks: its subscriber and where it resumes.
struct Wanted {
    subscriber: Subscriber,
    resume: Resume,
}

/// A client admitted and subscribed.
struct Opened {
    /// The client, leaving the hub if the request goes before it is kept.
    client: transport::Leaving,
    admitted_seat: admission::Seat,
    /// The outcome of each exact resume.
    recovered: Vec<(ChannelName, herald_core::history::Recovered)>,
}

/// Admits the request's subscriber as `format`'s client and subscribes it, resuming per
/// `resume`. Refusals are the module's (status and `X-Nginx-PushStream-Explain`).
async fn open(
    state: &Arc<AppState>,
    remote: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
    wanted: &Wanted,
    format: &'static PushStreamHttp,
    first: Option<Bytes>,
) -> Result<Opened, Response> {
    let Admitted {
        client,
        identity,
        seat,
    } = admission::admit_http(
        state,
        remote,
        headers,
        uri,
        pushstream::DIALECT,
        false,
        format,
    )
    .await?;
    // From here the client leaves the hub however the request ends, also while the
    // subscription below waits (on the broker, in a cluster).
    let leaving = transport::Leaving::new(state, &client);
    if let Some(first) = first {
        state.hub.registry().push_or_close(&client, first);
    }
    let Wanted { subscriber, resume } = wanted;
    let actor = subscriber.actor(&client);
    let names = subscriber.names();
    let done = match admission::apply_identity(state, &client, &identity) {
        Ok(()) => {
            transport::subscribe(&state.hub, &actor, &client, &names, |c| {
                resume.replay(subscriber, c)
            })
            .await
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(done) => Ok(Opened {
            client: leaving,
            admitted_seat: seat,
            recovered: done.recovered,
        }),
        Err(e) => {
            drop(leaving);
            let status =
                StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            Err(refuse(status, e.code, &e.message))
        }
    }
}

/// `GET /ev/<channels>`: EventSource.
pub async fn eventsource(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    streaming(state, remote, req, Framing::Sse).await
}

/// `GET /sub/<channels>`: streaming (the iframe document with `?streamid=`, else lines).
pub async fn stream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    streaming(state, remote, req, Framing::Lines).await
}

async fn streaming(
    state: Arc<AppState>,
    remote: SocketAddr,
    req: Request,
    framing: Framing,
) -> Response {
    let (uri, headers) = (req.uri(), req.headers());
    let subscriber = match subscriber::subscriber(&state, uri, headers).await {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let resume = match resume(uri, headers, "last-event-id") {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.code, &e.message),
    };
    let iframe = framing == Framing::Lines && query_param(uri, "streamid").is_some();
    let (format, first, content_type, closing): (_, _, _, fn(&Disconnect) -> Option<Bytes>) =
        match (framing, iframe) {
            (Framing::Sse, _) => (&PUSHSTREAM_LINES, None, "text/event-stream", |_| None),
            (Framing::Lines, true) => (
                &PUSHSTREAM_IFRAME,
                Some(records::other(IFRAME_HEADER.len(), |b| {
                    b.extend_from_slice(IFRAME_HEADER.as_bytes())
                })),
                "text/html; charset=utf-8",
                |_| {
                    Some(records::other(IFRAME_FOOTER.len(), |b| {
                        b.extend_from_slice(IFRAME_FOOTER.as_bytes())
                    }))
                },
            ),
            (Framing::Lines, false) => {
                (&PUSHSTREAM_LINES, None, "text/plain; charset=utf-8", |_| {
                    None
                })
            }
        };
    let cutoff = req
        .extensions()
        .get::<Cutoff>()
        .cloned()
        .unwrap_or_default();
    let wanted = Wanted { subscriber, resume };
    let opened = open(&state, remote, uri, headers, &wanted, format, first).await;
    let Opened {
        client,
        admitted_seat,
        ..
    } = match opened {
        Ok(o) => o,
        Err(refusal) => return refusal,
    };
    let stream = transport::Stream {
        client: client.keep(),
        seat: admitted_seat,
        framing,
        content_type,
        positions: wanted.resume.positions,
        closing,
    };
    let mut resp = transport::respond(state, stream, cutoff);
    transport::allow_origin(headers, resp.headers_mut());
    resp
}

/// `?timeout=` seconds (0 answers at once).
fn poll_wait(uri: &Uri) -> Result<Duration, HeraldError> {
    match query_param(uri, "timeout") {
        None => Ok(POLL_WAIT),
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if secs <= MAX_POLL_WAIT_SECS => Ok(Duration::from_secs(secs)),
            _ => Err(HeraldError::bad_request(format!(
                "timeout is whole seconds, 0 to {MAX_POLL_WAIT_SECS}"
            ))),
        },
    }
}

/// A JSONP callback name: letters, digits, `_`, `$` and `.` only.
fn callback(uri: &Uri) -> Result<Option<String>, HeraldError> {
    match query_param(uri, "callback") {
        None => Ok(None),
        Some(name)
            if name.len() <= MAX_CALLBACK
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.')) =>
        {
            Ok(Some(name))
        }
        Some(_) => Err(HeraldError::bad_request(format!(
            "callback is a JavaScript name of at most {MAX_CALLBACK} letters, digits, _, $ and ."
        ))),
    }
}

/// `GET /lp/<channels>`: long-polling (JSONP with `?callback=`).
pub async fn longpolling(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (uri, headers) = (req.uri(), req.headers());
    let subscriber = match subscriber::subscriber(&state, uri, headers).await {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let parsed = resume(uri, headers, "if-none-match")
        .and_then(|r| Ok((r, callback(uri)?, poll_wait(uri)?)));
    let (resume, callback, wait) = match parsed {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.code, &e.message),
    };
    // Where each channel stands before subscribing: the position a poll that receives
    // nothing answers with, so the next one resumes from here and misses nothing.
    let mut positions = resume.positions.clone();
    for name in subscriber.names() {
        if positions.get(&name).is_none()
            && let Some(channel) = state.hub.registry().lookup(&name)
        {
            let summary = channel.summary();
            positions.0.insert(name, (summary.epoch, summary.offset));
        }
    }
    let wanted = Wanted { subscriber, resume };
    let opened = open(
        &state,
        remote,
        uri,
        headers,
        &wanted,
        &PUSHSTREAM_LINES,
        None,
    )
    .await;
    let Opened {
        client: leaving,
        recovered,
        admitted_seat: _seat,
    } = match opened {
        Ok(o) => o,
        Err(refusal) => return refusal,
    };
    let client = leaving.client().clone();
    // A position that could not be recovered from (history no longer holds what follows
    // it) moves to where the channel is now.
    for (name, r) in recovered {
        if !r.recovered {
            positions.0.insert(name, (r.epoch, r.offset));
        }
    }
    // A channel created by this subscribe starts at its first publication.
    for name in wanted.subscriber.names() {
        if positions.get(&name).is_none()
            && let Some(channel) = state.hub.registry().lookup(&name)
        {
            positions.0.insert(name, (channel.summary().epoch, 0));
        }
    }
    let batch = transport::wait(&client, wait).await;
    drop(leaving);
    let mut published = Vec::new();
    let mut notices = Vec::new();
    for record in records::parse(&batch) {
        match record {
            Record::Message { position, payload } => published.push((position, payload)),
            // A channel deleted: the module's id -2 message.
            Record::Other(payload) => notices.push(payload),
            Record::Keepalive(_) => {}
        }
    }
    // In publication order across channels (a recovery replays channel by channel), so the
    // last message is the newest: `pushstream.js` resumes after the last one's time and tag.
    let published = in_time_order(published);
    let last_ms = published.last().map(|(p, _)| p.time_ms);
    for (position, _) in &published {
        positions.advance(position);
    }
    let mut messages: Vec<&[u8]> = published.into_iter().map(|(_, p)| p).collect();
    messages.extend(notices);
    let last_modified = match last_ms {
        Some(ms) => Some(pushstream::http_time(ms)),
        None => header_str(headers, "if-modified-since")
            .filter(|t| pushstream::resume_after_ms(t, None).is_ok())
            .map(str::to_string),
    };
    let mut resp = match (&callback, messages.is_empty()) {
        (Some(callback), _) => {
            let mut body = Vec::new();
            body.extend_from_slice(callback.as_bytes());
            body.extend_from_slice(b"([");
            body.extend_from_slice(&messages.join(&b","[..]));
            body.extend_from_slice(b"]);");
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            );
            resp
        }
        (None, true) => StatusCode::NOT_MODIFIED.into_response(),
        (None, false) => {
            let mut resp = (StatusCode::OK, messages.join(&b"\r\n"[..])).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
    };
    let out = resp.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&positions.to_string()) {
        out.insert(header::ETAG, etag);
    }
    if let Some(v) = last_modified.and_then(|t| HeaderValue::from_str(&t).ok()) {
        out.insert(header::LAST_MODIFIED, v);
    }
    if headers.contains_key(header::ORIGIN) {
        out.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Etag, Last-Modified"),
        );
    }
    transport::allow_origin(headers, out);
    resp
}

/// Publications merged by time, each channel's kept in its own order.
fn in_time_order<'a>(published: Vec<(Position<'a>, &'a [u8])>) -> Vec<(Position<'a>, &'a [u8])> {
    let mut by_channel: Vec<std::collections::VecDeque<(Position, &[u8])>> = Vec::new();
    for (position, payload) in published {
        match by_channel.iter_mut().find(|q| {
            q.front()
                .is_some_and(|(p, _)| p.channel == position.channel)
        }) {
            Some(queue) => queue.push_back((position, payload)),
            None => by_channel.push([(position, payload)].into()),
        }
    }
    let mut out = Vec::new();
    while let Some(next) = by_channel
        .iter_mut()
        .filter(|q| !q.is_empty())
        .min_by_key(|q| q.front().map(|(p, _)| p.time_ms))
    {
        out.extend(next.pop_front());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(channel: &'static str, offset: u64, time_ms: u64) -> (Position<'static>, &'static [u8]) {
        let position = Position {
            channel,
            epoch: "e",
            offset,
            time_ms,
        };
        (position, b"")
    }

    #[test]
    fn publications_merge_by_time_keeping_each_channels_order() {
        let merged = in_time_order(vec![
            at("a", 1, 10),
            at("a", 2, 30),
            at("a", 3, 20), // A clock that stepped back: still after a:2.
            at("b", 1, 15),
            at("b", 2, 40),
        ]);
        let order: Vec<String> = merged
            .iter()
            .map(|(p, _)| format!("{}{}", p.channel, p.offset))
            .collect();
        assert_eq!(order, ["a1", "b1", "a2", "a3", "b2"]);
    }
}
