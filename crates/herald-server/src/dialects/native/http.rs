//! The native protocol over plain HTTP, for clients that cannot hold a WebSocket:
//! Server-Sent Events (`GET /sse`), newline-delimited JSON streaming (`GET /stream`) and
//! long-polling (`GET /poll`).
//!
//! A request is admitted like a WebSocket handshake ([`crate::admission::admit_http`]:
//! credential from `Authorization` or `?token=`, bans, limits), subscribes to
//! `?channels=a,b` as its client, recovering after the positions it names (`Last-Event-ID`
//! or `?recover=`), and is served by [`crate::transport`]: the same deliveries as over the
//! WebSocket, encoded once per publication as JSON lines ([`NATIVE_LINES`]), under the same
//! outbox limit and keep-alives. A closed client's last line is `{"op":"close",...}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::client::Disconnect;
use herald_core::history::Replay;
use herald_core::{Actor, ChannelName, ClientHandle, HeraldError};
use herald_protocol::native::{self, NATIVE_LINES};
use herald_protocol::records::{self, Positions, Record};
use serde_json::json;

use crate::admission::{self, Admitted};
use crate::error::{ApiError, Refusal};
use crate::state::AppState;
use crate::transport::{self, Cutoff, Framing};

/// The paths whose responses are streams (served without hyper: [`crate::transport::direct`]).
pub const STREAM_PATHS: [&str; 2] = ["/sse", "/stream"];

/// Most channels named in `?channels=`.
const MAX_CHANNELS: usize = 100;

/// `GET /sse`: the native protocol as Server-Sent Events.
pub async fn sse(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open(Framing::Sse, state, remote, req).await
}

/// `GET /stream`: the native protocol as newline-delimited JSON over one chunked response.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open(Framing::Lines, state, remote, req).await
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
    let (wait, wanted) =
        match poll_wait(req.uri()).and_then(|w| Ok((w, wanted(req.headers(), req.uri())?))) {
            Ok(parsed) => parsed,
            Err(e) => return ApiError(e).into_response(),
        };
    let Admitted {
        client,
        identity,
        seat: _seat,
    } = match admit(&state, remote, req.headers(), req.uri()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let leaving = transport::Leaving::new(&state, &client);
    let answer = async {
        admission::apply_identity(&state, &client, &identity)?;
        let subscribed = subscribe(&state, &client, &wanted).await?;
        let batch = transport::wait(&client, wait).await;
        let mut positions = wanted.positions.clone();
        let mut messages = Vec::new();
        for record in records::parse(&batch) {
            match record {
                Record::Keepalive(_) => continue,
                Record::Message { ref position, .. } => positions.advance(position),
                Record::Other(_) => {}
            }
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(record.payload()) {
                messages.push(value);
            }
        }
        Ok::<_, HeraldError>(json!({
            "client": client.id,
            "recovered": subscribed["recovered"],
            "messages": messages,
            "recover": positions.to_string(),
        }))
    };
    let answer = Box::pin(answer).await;
    drop(leaving);
    match answer {
        Ok(body) => {
            let mut resp = axum::Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            transport::allow_origin(req.headers(), resp.headers_mut());
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

/// The query's `channels` (comma-separated), `recover` and the `Last-Event-ID` header.
struct Wanted {
    channels: Vec<ChannelName>,
    positions: Positions,
}

fn wanted(headers: &HeaderMap, uri: &Uri) -> Result<Wanted, HeraldError> {
    let query = uri.query().unwrap_or("");
    let mut channels = Vec::new();
    let mut recover = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "channels" | "channel" => transport::channel_list(&v, &mut channels, MAX_CHANNELS)?,
            "recover" => recover = Some(v.into_owned()),
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(HeraldError::bad_request(
            "name the channels to subscribe to: ?channels=a,b",
        ));
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let positions = match recover.or(last_event_id) {
        Some(text) => Positions::parse(&text)?,
        None => Positions::default(),
    };
    Ok(Wanted {
        channels,
        positions,
    })
}

async fn admit(
    state: &Arc<AppState>,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Admitted, Refusal> {
    admission::admit_http(
        state,
        remote,
        headers,
        uri,
        native::DIALECT,
        true,
        &NATIVE_LINES,
    )
    .await
}

async fn open(
    framing: Framing,
    state: Arc<AppState>,
    remote: SocketAddr,
    req: Request,
) -> Response {
    let wanted = match wanted(req.headers(), req.uri()) {
        Ok(wanted) => wanted,
        Err(e) => return ApiError(e).into_response(),
    };
    let Admitted {
        client,
        identity,
        seat,
    } = match admit(&state, remote, req.headers(), req.uri()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    // The client leaves the hub however the request ends before its stream is open, also
    // while the subscription below waits (on the broker, in a cluster).
    let leaving = transport::Leaving::new(&state, &client);
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
    let subscribed = match admission::apply_identity(&state, &client, &identity) {
        Ok(()) => subscribe(&state, &client, &wanted).await,
        Err(e) => Err(e),
    };
    match subscribed {
        Ok(result) => {
            state
                .hub
                .registry()
                .push_or_close(&client, native::line(&result));
        }
        Err(e) => {
            drop(leaving);
            return ApiError(e).into_response();
        }
    }
    drop(client);
    let stream = transport::Stream {
        client: leaving.keep(),
        seat,
        framing,
        content_type: match framing {
            Framing::Sse => "text/event-stream",
            Framing::Lines => "application/x-ndjson",
        },
        positions: wanted.positions,
        closing: close_line,
    };
    let mut resp = transport::respond(state, stream, cutoff);
    transport::allow_origin(req.headers(), resp.headers_mut());
    resp
}

/// A closed client's last line.
fn close_line(disconnect: &Disconnect) -> Option<Bytes> {
    Some(native::line(&json!({
        "op": "close",
        "code": disconnect.code,
        "reason": disconnect.message,
    })))
}

/// Subscribes the client to the channels, recovering where positions were given; the
/// result line's `recovered` says, per channel, whether nothing was missed.
async fn subscribe(
    state: &AppState,
    client: &Arc<ClientHandle>,
    wanted: &Wanted,
) -> Result<serde_json::Value, HeraldError> {
    let actor = Actor::Client(client.clone());
    let replay = |name: &ChannelName| match wanted.positions.get(name) {
        Some((epoch, offset)) => Replay::After { epoch, offset },
        None => Replay::Nothing,
    };
    let done = transport::subscribe(&state.hub, &actor, client, &wanted.channels, replay).await?;
    let recovered: serde_json::Map<String, serde_json::Value> = done
        .recovered
        .into_iter()
        .map(|(c, r)| (c.to_string(), json!(r)))
        .collect();
    Ok(json!({"op": "subscribed", "channels": wanted.channels, "recovered": recovered}))
}
