//! The native protocol over plain HTTP, for clients that cannot hold a WebSocket:
//! Server-Sent Events (`GET /sse`), newline-delimited JSON streaming (`GET /stream`) and
//! long-polling (`GET /poll`).
//!
//! A request is admitted like a WebSocket handshake ([`crate::admission`]: credential from
//! `Authorization` or `?token=`, bans, limits), subscribes to `?channels=a,b` as its client,
//! and gets one long response whose body is the client's outbox: the same deliveries as over
//! the WebSocket, encoded once per publication as JSON lines ([`NATIVE_LINES`]), under the same
//! outbox limit (a reader that falls behind is cut off as a slow consumer) and keep-alives.
//!
//! - **SSE** frames each line as an event. A `message` carries an `id` that lists the
//!   connection's position in every channel it received from (`offset,epoch,channel`
//!   separated by spaces), so the browser's automatic reconnect (`Last-Event-ID`) recovers
//!   exactly what it missed, from channel history. The keep-alive is a comment.
//! - **Streaming** writes the lines as they are; a reconnecting client names its positions
//!   with `?recover=` in the same format as the SSE id.
//!
//! The connection ends when the client goes (the response body is dropped), when it is
//! closed (kick, ban, slow consumer, time-out: a last `{"op":"close",...}` line), or at
//! shutdown. A reader that takes nothing while closed is cut off after [`CUTOFF_GRACE`]
//! through the connection's [`Cutoff`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use herald_core::client::{DisconnectReason, now_ms};
use herald_core::history::Replay;
use herald_core::{Actor, ChannelName, ClientHandle, HeraldError};
use herald_protocol::native::{self, NATIVE_LINES};
use serde_json::json;

use crate::admission::{self, Seat};
use crate::http::ApiError;
use crate::server::AppState;

/// Most bytes handed to the HTTP layer at once.
const CHUNK: usize = 64 * 1024;
/// How long a closed connection's reader has to take its last bytes before it is cut off.
pub const CUTOFF_GRACE: Duration = Duration::from_secs(2);
/// Most channels named in `?channels=` or a position list.
const MAX_CHANNELS: usize = 100;

/// Ends the HTTP connection a request came on (inserted by the server for every request):
/// for a streaming response whose reader stopped reading, which the HTTP layer would
/// otherwise keep waiting to write to.
#[derive(Clone, Default)]
pub struct Cutoff(pub Arc<tokio::sync::Notify>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Lines,
}

/// `GET /sse`: the native protocol as Server-Sent Events.
pub async fn sse(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open(Kind::Sse, state, remote, req).await
}

/// `GET /stream`: the native protocol as newline-delimited JSON over one chunked response.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open(Kind::Lines, state, remote, req).await
}

/// Longest a long-poll waits for something to deliver (`?timeout=` seconds, default this).
const POLL_WAIT: Duration = Duration::from_secs(25);
/// The longest `?timeout=` accepted.
const MAX_POLL_WAIT_SECS: u64 = 120;

/// `GET /poll?channels=a,b[&recover=positions][&timeout=25]`: long-polling, for clients that
/// can do nothing else. Each request subscribes (recovering after the positions given), waits
/// until something arrives or the time is up, and answers
/// `{"client","recovered","messages":[…],"recover":"positions"}`: the next request passes
/// `recover` back, so nothing published in between is lost while the channels' history
/// holds it.
pub async fn poll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let wait = match poll_wait(req.uri()) {
        Ok(wait) => wait,
        Err(e) => return ApiError(e).into_response(),
    };
    let Admitted {
        client,
        identity,
        seat: _seat,
        wanted,
    } = match admit(&state, remote, req.headers(), req.uri()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let answer = async {
        admission::apply_identity(&state, &client, &identity)?;
        let subscribed = Box::pin(subscribe(&state, &client, &wanted)).await?;
        // Wait for a delivery (what a recovery replayed is there already).
        let deadline = tokio::time::Instant::now() + wait;
        while !client.outbox.has_pending() && !client.outbox.is_closing() {
            if tokio::time::timeout_at(deadline, client.outbox.ready())
                .await
                .is_err()
            {
                break;
            }
        }
        let mut lines = Vec::new();
        client.outbox.drain(&mut lines, usize::MAX);
        let mut positions = wanted.positions.clone();
        let mut messages = Vec::new();
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if line == br#"{"op":"ping"}"# {
                continue;
            }
            if let Some((channel, epoch, offset)) = message_position(line) {
                positions.insert(channel, (epoch, offset));
            }
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) {
                messages.push(value);
            }
        }
        Ok::<_, HeraldError>(json!({
            "client": client.id,
            "recovered": subscribed["recovered"],
            "messages": messages,
            "recover": format_positions(&positions),
        }))
    };
    let answer = Box::pin(answer).await;
    state
        .hub
        .disconnect(&client, DisconnectReason::ClosedByClient);
    match answer {
        Ok(body) => {
            let mut resp = axum::Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            allow_origin(req.headers(), resp.headers_mut());
            resp
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// `?timeout=` seconds (0 answers at once).
fn poll_wait(uri: &Uri) -> Result<Duration, HeraldError> {
    let query = uri.query().unwrap_or("");
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "timeout") {
        None => Ok(POLL_WAIT),
        Some((_, v)) => match v.parse::<u64>() {
            Ok(secs) if secs <= MAX_POLL_WAIT_SECS => Ok(Duration::from_secs(secs)),
            _ => Err(HeraldError::bad_request(format!(
                "timeout is whole seconds, 0 to {MAX_POLL_WAIT_SECS}"
            ))),
        },
    }
}

/// Positions as the SSE id and `?recover=` carry them: `offset,epoch,channel` entries
/// separated by spaces (neither appears in channel names or epochs).
fn parse_positions(text: &str) -> Result<BTreeMap<ChannelName, (String, u64)>, HeraldError> {
    let bad = || {
        HeraldError::bad_request(
            "a position list is \"offset,epoch,channel\" entries separated by spaces",
        )
    };
    let mut out = BTreeMap::new();
    for entry in text.split(' ').filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ',');
        let (Some(offset), Some(epoch), Some(channel)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let offset = offset.parse::<u64>().map_err(|_| bad())?;
        if epoch.is_empty() || epoch.len() > 64 {
            return Err(bad());
        }
        out.insert(ChannelName::parse(channel)?, (epoch.to_string(), offset));
        if out.len() > MAX_CHANNELS {
            return Err(HeraldError::bad_request(format!(
                "at most {MAX_CHANNELS} positions"
            )));
        }
    }
    Ok(out)
}

fn format_positions(positions: &BTreeMap<ChannelName, (String, u64)>) -> String {
    let mut out = String::new();
    for (channel, (epoch, offset)) in positions {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{offset},{epoch},{channel}"));
    }
    out
}

/// The query's `channels` (comma-separated), `recover` and the `Last-Event-ID` header.
struct Wanted {
    channels: Vec<ChannelName>,
    positions: BTreeMap<ChannelName, (String, u64)>,
}

fn wanted(headers: &HeaderMap, uri: &Uri) -> Result<Wanted, HeraldError> {
    let query = uri.query().unwrap_or("");
    let mut channels = Vec::new();
    let mut recover = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "channels" | "channel" => {
                for name in v.split(',').filter(|n| !n.is_empty()) {
                    let name = ChannelName::parse(name)?;
                    if !channels.contains(&name) {
                        channels.push(name);
                    }
                }
            }
            "recover" => recover = Some(v.into_owned()),
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(HeraldError::bad_request(
            "name the channels to subscribe to: ?channels=a,b",
        ));
    }
    if channels.len() > MAX_CHANNELS {
        return Err(HeraldError::bad_request(format!(
            "at most {MAX_CHANNELS} channels"
        )));
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let positions = match recover.or(last_event_id) {
        Some(text) => parse_positions(&text)?,
        None => BTreeMap::new(),
    };
    Ok(Wanted {
        channels,
        positions,
    })
}

/// A client admitted and registered for an HTTP transport (its identity not yet applied).
struct Admitted {
    client: Arc<ClientHandle>,
    identity: crate::auth::Identity,
    seat: Seat,
    wanted: Wanted,
}

/// Admits the request like a WebSocket handshake and registers its client.
#[allow(clippy::result_large_err)] // a refusal is the response itself, made once per refusal
async fn admit(
    state: &Arc<AppState>,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Admitted, Response> {
    crate::limits::check_attempt(state, remote.ip(), headers)?;
    let wanted = wanted(headers, uri).map_err(|e| ApiError(e).into_response())?;
    let identity = if state.auth_hook.enabled() {
        Box::pin(crate::auth_hook::admit(
            state,
            remote,
            headers,
            uri,
            native::DIALECT,
        ))
        .await
    } else {
        admission::credential(true, state, headers, uri)
    };
    let identity = identity.map_err(|e| ApiError(e).into_response())?;
    let bans_seen = admission::screen(state, remote, headers, &identity, false)?;
    let (admission, seat) =
        admission::seat(state, remote, headers, native::DIALECT, identity, bans_seen)?;
    let admission::Admission {
        info,
        extras,
        identity,
        bans_seen,
    } = *admission;
    let client = state.hub.connect_as(&NATIVE_LINES, info, extras);
    // A ban put in force since the check may have missed this client in its sweep.
    if state.hub.ban_generation() != bans_seen
        && let Some(ban) = admission::ban_covering(state, &client, identity.admin)
    {
        state.hub.disconnect(&client, DisconnectReason::Banned);
        let e = HeraldError::new(herald_core::ErrorCode::Banned, ban.message());
        return Err(ApiError(e).into_response());
    }
    Ok(Admitted {
        client,
        identity,
        seat,
        wanted,
    })
}

async fn open(kind: Kind, state: Arc<AppState>, remote: SocketAddr, req: Request) -> Response {
    let Admitted {
        client,
        identity,
        seat,
        wanted,
    } = match admit(&state, remote, req.headers(), req.uri()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let cutoff = req
        .extensions()
        .get::<Cutoff>()
        .cloned()
        .unwrap_or_default();
    let ws = &state.config.websocket;
    let welcome = native::welcome_line(
        client.id,
        ws.ping_interval_secs * 1000,
        state.config.limits.max_payload_bytes,
    );
    state.hub.registry().push_or_close(&client, welcome);
    if let Err(e) = admission::apply_identity(&state, &client, &identity) {
        state
            .hub
            .disconnect(&client, DisconnectReason::ClosedByClient);
        return ApiError(e).into_response();
    }
    let subscribed = Box::pin(subscribe(&state, &client, &wanted)).await;
    match subscribed {
        Ok(result) => {
            state
                .hub
                .registry()
                .push_or_close(&client, native::line(&result));
        }
        Err(e) => {
            state
                .hub
                .disconnect(&client, DisconnectReason::ClosedByClient);
            return ApiError(e).into_response();
        }
    }
    let feed = Feed {
        kind,
        state: state.clone(),
        client,
        positions: wanted.positions,
        cutoff,
        _seat: seat,
    };
    // One chunk in flight: the feed waits while the HTTP layer cannot write, and notices a
    // close meanwhile.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(feed.run(tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let content_type = match kind {
        Kind::Sse => "text/event-stream",
        Kind::Lines => "application/x-ndjson",
    };
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    allow_origin(req.headers(), headers);
    resp
}

/// Lets a page of another origin read the response (`EventSource`, `fetch`), when its
/// `Origin` passed admission (`websocket.allowed_origins`, if set).
fn allow_origin(request: &HeaderMap, response: &mut HeaderMap) {
    if let Some(origin) = request.get(header::ORIGIN) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Subscribes the client to the channels, recovering where positions were given; the
/// result line's `recovered` says, per channel, whether nothing was missed.
async fn subscribe(
    state: &AppState,
    client: &Arc<ClientHandle>,
    wanted: &Wanted,
) -> Result<serde_json::Value, HeraldError> {
    let hub = &state.hub;
    let actor = Actor::Client(client.clone());
    let recovering: Vec<ChannelName> = wanted
        .channels
        .iter()
        .filter(|c| wanted.positions.contains_key(*c))
        .cloned()
        .collect();
    if !recovering.is_empty()
        && let Err(e) = hub.prepare_recovery(&actor, &recovering, None).await
    {
        hub.end_recovery(&recovering);
        return Err(e);
    }
    let replay = |name: &ChannelName| match wanted.positions.get(name) {
        Some((epoch, offset)) => Replay::After {
            epoch,
            offset: *offset,
        },
        None => Replay::Nothing,
    };
    let done = hub.subscribe_replaying(&actor, client, &wanted.channels, None, replay);
    hub.end_recovery(&recovering);
    let done = done?;
    hub.broker_ready(&done.added).await?;
    let recovered: serde_json::Map<String, serde_json::Value> = done
        .recovered
        .into_iter()
        .map(|(c, r)| (c.to_string(), json!(r)))
        .collect();
    Ok(json!({"op": "subscribed", "channels": wanted.channels, "recovered": recovered}))
}

/// Feeds the response body from the client's outbox, framed for the transport.
struct Feed {
    kind: Kind,
    state: Arc<AppState>,
    client: Arc<ClientHandle>,
    /// SSE: the last position received in each channel (the events' `id`).
    positions: BTreeMap<ChannelName, (String, u64)>,
    cutoff: Cutoff,
    _seat: Seat,
}

impl Feed {
    /// Until the connection is over: the reader went away (the body was dropped), or the
    /// client was closed (a last `close` line, given [`CUTOFF_GRACE`] to be taken, else the
    /// HTTP connection is cut off).
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Bytes>) {
        let mut pending: Option<Bytes> = None;
        loop {
            if pending.is_none() {
                let mut batch = Vec::new();
                let drained = self.client.outbox.drain(&mut batch, CHUNK);
                if drained.closing.is_some() {
                    self.close(&tx, None, batch).await;
                    return;
                }
                if !batch.is_empty() {
                    pending = Some(self.frame(&batch));
                }
            }
            tokio::select! {
                permit = tx.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        permit.send(pending.take().expect("pending"));
                        // The HTTP layer took the previous chunk: the reader is alive.
                        self.client.touch(now_ms());
                    }
                    Err(_) => return, // The reader went away.
                },
                _ = self.client.outbox.ready() => {
                    if pending.is_some() && self.client.outbox.is_closing() {
                        // Closed while the reader was not taking what it had.
                        self.close(&tx, pending.take(), Vec::new()).await;
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }

    /// The end of a closed client: what was not yet handed over (`unsent`, then the lines of
    /// `batch` and whatever the outbox still holds: a kick flushes, a slow consumer's queue was
    /// dropped), then a `close` line, handed over within [`CUTOFF_GRACE`], else the
    /// connection is cut off. The client leaves the hub.
    async fn close(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        unsent: Option<Bytes>,
        mut batch: Vec<u8>,
    ) {
        let disconnect = loop {
            let drained = self.client.outbox.drain(&mut batch, usize::MAX);
            if let Some(d) = drained.closing {
                break d;
            }
            if drained.frames == 0 {
                // Not closing after all (cannot happen: a close is never withdrawn).
                break herald_core::client::Disconnect::timed_out();
            }
        };
        batch.extend_from_slice(&native::line(&json!({
            "op": "close",
            "code": disconnect.code,
            "reason": disconnect.message,
        })));
        let mut last = BytesMut::new();
        if let Some(unsent) = unsent {
            last.extend_from_slice(&unsent);
        }
        last.extend_from_slice(&self.frame(&batch));
        self.state.hub.disconnect(&self.client, disconnect.reason);
        if tokio::time::timeout(CUTOFF_GRACE, tx.send(last.freeze()))
            .await
            .is_err()
        {
            self.cutoff.0.notify_one();
        }
    }

    /// Lines as the transport frames them.
    fn frame(&mut self, lines: &[u8]) -> Bytes {
        match self.kind {
            Kind::Lines => Bytes::copy_from_slice(lines),
            Kind::Sse => {
                let mut out = BytesMut::with_capacity(lines.len() + lines.len() / 4 + 16);
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if line == br#"{"op":"ping"}"# {
                        out.extend_from_slice(b": ping\n\n");
                        continue;
                    }
                    if let Some((channel, epoch, offset)) = message_position(line) {
                        self.positions.insert(channel, (epoch, offset));
                        out.extend_from_slice(b"id: ");
                        out.extend_from_slice(format_positions(&self.positions).as_bytes());
                        out.extend_from_slice(b"\n");
                    }
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\n\n");
                }
                out.freeze()
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The reader went away (or the connection ended): the client leaves the hub (a
        // second disconnect of a client already gone does nothing).
        self.state
            .hub
            .disconnect(&self.client, DisconnectReason::ClosedByClient);
    }
}

/// A `message` line's channel and position, read from the fixed start the native encoder
/// writes (`{"op":"message","channel":"…","offset":N,"epoch":"…",`).
fn message_position(line: &[u8]) -> Option<(ChannelName, String, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix(r#"{"op":"message","channel":""#)?;
    let (channel, rest) = rest.split_once(r#"","offset":"#)?;
    let (offset, rest) = rest.split_once(r#","epoch":""#)?;
    let (epoch, _) = rest.split_once('"')?;
    Some((
        ChannelName::parse(channel).ok()?,
        epoch.to_string(),
        offset.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        let text = "3,AbC-_9,chat:room-1 7,xyz,news";
        let parsed = parse_positions(text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[&ChannelName::parse("news").unwrap()],
            ("xyz".to_string(), 7)
        );
        assert_eq!(format_positions(&parsed), "3,AbC-_9,chat:room-1 7,xyz,news");
        for bad in ["x,e,c", "1,e", "1,,c", "1,e,bad channel"] {
            assert!(parse_positions(bad).is_err(), "{bad}");
        }
        assert!(parse_positions("").unwrap().is_empty());
    }

    #[test]
    fn the_position_of_a_message_line_is_read_from_its_start() {
        let msg = herald_core::Message {
            channel: ChannelName::parse("chat:a").unwrap(),
            offset: 42,
            epoch: Arc::from("Ep0ch"),
            from: None,
            data: Bytes::from_static(b"{\"x\":1}"),
        };
        let line = herald_core::WireFormat::message(&NATIVE_LINES, &msg);
        let (c, e, o) = message_position(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!((c.as_str(), e.as_str(), o), ("chat:a", "Ep0ch", 42));
        assert!(message_position(br#"{"op":"direct","data":1}"#).is_none());
    }
}
