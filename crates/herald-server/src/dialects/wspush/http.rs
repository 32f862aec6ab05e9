//! The WS-PushServer dialect's HTTP API: `SERVER_ACTION` envelopes posted to
//! `/channel/create`, `/channel/ping`, `/push` and `/channel/delete` (any method, as the
//! original), answered with its envelopes and the envelope's code as the HTTP status. Channel
//! tokens are Herald channel tokens. `/sysadmin` needs the admin key
//! (`Authorization: Bearer`), which the original did not ask for.

use std::sync::Arc;

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::hub::PublishRequest;
use herald_core::{Actor, ChannelName, ClientId, ErrorCode, SubscribePolicy, secret};
use herald_protocol::{json, wspush};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::state::AppState;

type St = State<Arc<AppState>>;

fn reply(json: Vec<u8>, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A refusal: the error envelope and its code (small, unlike a `Response`).
pub struct Fail {
    code: u16,
    json: Vec<u8>,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        reply(self.json, self.code)
    }
}

fn error(code: u16, message: &str, details: &str) -> Fail {
    Fail {
        code,
        json: wspush::error(code, message, details),
    }
}

fn invalid() -> Fail {
    error(400, "Bad Request", "Invalid message")
}

fn not_found(channel: &str) -> Fail {
    error(
        404,
        "Not found",
        &format!("Could not find a WebSocketChannel called \"{channel}\""),
    )
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "messageType")]
    message_type: String,
    action: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// Parses the `SERVER_ACTION` envelope for `action` and its `data` as `T` (a repeated field
/// is refused, as everywhere): invalid JSON is a 400 with the raw body, a wrong shape a 400
/// `Invalid message`, as in the original. The envelope and its `data` must be objects (serde
/// would read a struct from an array too; the original's schema does not).
fn parse<'a, T: Deserialize<'a>>(text: &'a str, action: &str) -> Result<T, Fail> {
    let object = |json: &str| {
        json.trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
    };
    let env: Envelope = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid(),
        _ => error(400, "Bad Request", text),
    })?;
    if !object(text)
        || !object(env.data.get())
        || env.message_type != "SERVER_ACTION"
        || env.action != action
    {
        return Err(invalid());
    }
    serde_json::from_str(env.data.get()).map_err(|_| invalid())
}

fn ok(message: &str, data: &str) -> Answer {
    Ok(reply(
        wspush::envelope("SERVER_ACK", 200, message, data.as_bytes()),
        200,
    ))
}

fn json_str(s: &str) -> String {
    let mut b = Vec::new();
    wspush::gson_str(&mut b, s);
    String::from_utf8(b).expect("JSON is UTF-8")
}

#[derive(Deserialize)]
struct ChannelOnly {
    channel: String,
}

type Answer = Result<Response, Fail>;

/// `/channel/create`. Anyone may create, as in the original, unless `create = "admin"`; an
/// anonymous creator is held to a per-address rate and a cap on persistent channels, and may
/// not create in a configured namespace whose policy a channel token would widen. Nobody is
/// handed the token of a channel that exists, ephemeral ones in use included (409).
pub async fn create(
    State(state): St,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let cfg = &state.config.dialects.wspush;
    let admin =
        crate::auth::bearer(&headers).is_some_and(|k| secret::secrets_equal(k, &state.admin_key));
    if !admin && cfg.create == "admin" {
        return Err(error(
            401,
            "Unauthorized",
            "Creating channels needs the admin key (Authorization: Bearer)",
        ));
    }
    let text = String::from_utf8_lossy(&body);
    let req: ChannelOnly = parse(&text, "CREATE_CHANNEL")?;
    let name = ChannelName::parse(&req.channel).map_err(|_| invalid())?;
    let hub = state.hub.config();
    let options = hub.defaults_for(&name).clone();
    if !admin {
        if let Some(ns) = name
            .namespace()
            .filter(|ns| hub.namespaces.contains_key(*ns))
            && !(options.client_publish && options.subscribe() == SubscribePolicy::Public)
        {
            return Err(error(
                403,
                "Forbidden",
                &format!(
                    "Creating channels in namespace \"{ns}\" needs the admin key (its policy is not open to anyone)"
                ),
            ));
        }
        if let Err(retry_secs) = state.limits.admit_channel_create(remote.ip()) {
            return Err(error(
                429,
                "Too Many Requests",
                &format!("Too many channels created from this address; retry in {retry_secs} s"),
            ));
        }
        let persistent = state
            .hub
            .registry()
            .all_channels()
            .iter()
            .filter(|c| c.view(|v| v.persistent))
            .count();
        if persistent >= cfg.create_max_channels {
            return Err(error(
                403,
                "Forbidden",
                "The server holds too many channels; creating more needs the admin key",
            ));
        }
    }
    match state
        .hub
        .create_unused_channel(&Actor::Admin, name, options)
        .await
    {
        Ok(created) => {
            let data = format!(
                "{{\"channel\":{},\"channelToken\":{}}}",
                json_str(&req.channel),
                json_str(&created.token)
            );
            ok("Created", &data)
        }
        Err(e) if e.code == ErrorCode::ChannelExists => Err(error(
            409,
            "Conflict",
            &format!(
                "A WebSocketChannel called \"{}\" already exists",
                req.channel
            ),
        )),
        Err(e) => Err(error(500, "Internal Server Error", &e.message)),
    }
}

#[derive(Deserialize)]
struct ChannelToken {
    channel: String,
    #[serde(rename = "channelToken")]
    channel_token: Option<String>,
}

/// Finds the channel and checks its token: 404, then 401 or 403 for a null token
/// (`null_is`), 403 for a wrong one.
fn authorize(
    state: &AppState,
    channel: &str,
    token: Option<&str>,
    null_is: u16,
) -> Result<(ChannelName, String), Fail> {
    let name = ChannelName::parse(channel).map_err(|_| not_found(channel))?;
    let ch = state
        .hub
        .registry()
        .lookup(&name)
        .ok_or_else(|| not_found(channel))?;
    let Some(token) = token else {
        return Err(if null_is == 401 {
            error(401, "Unauthorized", "No channel token provided")
        } else {
            error(403, "Forbidden", "Channel token is invalid")
        });
    };
    let valid = ch.view(|v| {
        v.token_hash
            .is_some_and(|h| secret::token_matches_hash(token, h))
    });
    if !valid {
        return Err(error(403, "Forbidden", "Channel token is invalid"));
    }
    Ok((name, token.to_string()))
}

#[derive(Deserialize)]
struct PingBody<'a> {
    channel: String,
    /// Required, may be null: `None` when absent, the raw `null` or string when present.
    #[serde(borrow, default, rename = "channelToken", deserialize_with = "present")]
    channel_token: Option<&'a RawValue>,
}

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

pub async fn ping(State(state): St, body: Bytes) -> Answer {
    let text = String::from_utf8_lossy(&body);
    let req: PingBody = parse(&text, "PING_CHANNEL")?;
    // The key is required by the schema; its value may be null.
    let token = match req.channel_token.ok_or_else(invalid)? {
        raw if raw.get() == "null" => None,
        raw => Some(json::string(raw).ok_or_else(invalid)?),
    };
    authorize(&state, &req.channel, token.as_deref(), 401)?;
    ok("OK", &channel_ack(&req.channel))
}

/// The `data` of the original's acks for a channel (its `ack.schema.json` requires both keys).
fn channel_ack(channel: &str) -> String {
    format!(
        "{{\"channel\":{},\"channelToken\":null}}",
        json_str(channel)
    )
}

#[derive(Deserialize)]
struct Push {
    channel: String,
    #[serde(rename = "channelToken")]
    channel_token: String,
    #[serde(default)]
    recipients: Vec<String>,
    message: String,
}

pub async fn push(State(state): St, body: Bytes) -> Answer {
    let text = String::from_utf8_lossy(&body);
    let req: Push = parse(&text, "PUSH_MESSAGE")?;
    let (name, token) = authorize(&state, &req.channel, Some(&req.channel_token), 403)?;
    // Unknown recipients are skipped, as in the original.
    let recipients: Vec<ClientId> = req
        .recipients
        .iter()
        .filter_map(|r| ClientId::parse(r).ok())
        .collect();
    let to = (!req.recipients.is_empty()).then_some(recipients);
    let publish = PublishRequest {
        channels: vec![name],
        data: wspush::text_to_data(&req.message),
        to,
        once_per_client: false,
    };
    match state
        .hub
        .publish(&Actor::ChannelToken(token), publish)
        .await
    {
        Ok(_) => ok("Sent", &channel_ack(&req.channel)),
        Err(e) => Err(error(e.code.http_status(), "Bad Request", &e.message)),
    }
}

pub async fn delete(State(state): St, body: Bytes) -> Answer {
    let text = String::from_utf8_lossy(&body);
    let req: ChannelToken = parse(&text, "DELETE_CHANNEL")?;
    let (name, token) = authorize(&state, &req.channel, req.channel_token.as_deref(), 403)?;
    match state
        .hub
        .delete_channel(&Actor::ChannelToken(token), &name)
        .await
    {
        Ok(_) => ok("Deleted", &channel_ack(&req.channel)),
        Err(e) => Err(error(
            e.code.http_status(),
            "Internal Server Error",
            &e.message,
        )),
    }
}

pub async fn sysadmin(State(state): St, headers: HeaderMap) -> Answer {
    if !crate::auth::bearer(&headers).is_some_and(|k| secret::secrets_equal(k, &state.admin_key)) {
        return Err(error(
            401,
            "Unauthorized",
            "The admin key is required (Authorization: Bearer)",
        ));
    }
    let mut names: Vec<String> = state
        .hub
        .registry()
        .all_channels()
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    names.sort();
    let list = names
        .iter()
        .map(|n| json_str(n))
        .collect::<Vec<_>>()
        .join(",");
    let data = format!(
        "{{\"channels\":[{list}],\"channelsAmount\":{},\"clientsAmount\":{}}}",
        names.len(),
        state.hub.registry().client_count()
    );
    Ok(reply(
        wspush::envelope("SERVER_SYSADMIN", 200, "OK", data.as_bytes()),
        200,
    ))
}
