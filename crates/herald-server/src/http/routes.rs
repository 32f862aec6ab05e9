//! The HTTP API handlers under `/api/v1`. Each one authenticates the caller, parses its body
//! with the same field rules as the WebSocket protocol, and calls one hub operation.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_core::client::{Disconnect, DisconnectReason, close_code};
use herald_core::hub::{
    ChannelPublished, ChannelSummary, ClientSummary, CreatedChannel, PublishRequest,
};
use herald_core::stats::StatsSnapshot;
use herald_core::{
    Actor, ChannelName, ChannelOptions, ClientHandle, ClientId, ErrorCode, HeraldError,
};
use herald_protocol::native::Fields;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::server::AppState;

type St = State<Arc<AppState>>;

/// The request body as UTF-8 text, with a clear error for oversized or non-UTF-8 bodies.
fn body_text(body: &Result<Bytes, BytesRejection>) -> ApiResult<&str> {
    let bytes = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(_)) => {
            return Err(ApiError::new(
                ErrorCode::MessageTooLarge,
                "request body too large",
            ));
        }
        Err(e) => return Err(ApiError::new(ErrorCode::BadRequest, e.body_text())),
    };
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the request needs a JSON body",
        ));
    }
    std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "body is not UTF-8"))
}

fn parse_json<'a, T: Deserialize<'a>>(text: &'a str) -> ApiResult<T> {
    serde_json::from_str(text).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => ErrorCode::BadRequest,
            _ => ErrorCode::InvalidJson,
        };
        ApiError::new(code, format!("invalid body: {e}"))
    })
}

/// Zero-copy slice of the request body for a raw JSON value inside it.
fn raw_bytes(body: &Result<Bytes, BytesRejection>, raw: &RawValue) -> Bytes {
    match body {
        Ok(b) => b.slice_ref(raw.get().as_bytes()),
        Err(_) => Bytes::copy_from_slice(raw.get().as_bytes()),
    }
}

fn channel_param(name: &str) -> ApiResult<ChannelName> {
    Ok(ChannelName::parse(name)?)
}

fn client_param(id: &str) -> ApiResult<ClientId> {
    Ok(ClientId::parse(id)?)
}

// ---- publish ------------------------------------------------------------------------------

/// Body of `POST /api/v1/publish`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the body is parsed by `Fields`
pub struct PublishBody {
    /// Channels to publish to (or give a single `channel`).
    channels: Option<Vec<String>>,
    channel: Option<String>,
    /// Any JSON value, delivered verbatim.
    data: serde_json::Value,
    /// Only these subscribers (client ids) receive it.
    to: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    pub channels: Vec<ChannelPublished>,
}

/// Publish to one or more channels.
#[utoipa::path(post, path = "/api/v1/publish", request_body = PublishBody,
    responses((status = 200, body = PublishResponse), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "publish")]
pub async fn publish(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PublishResponse>> {
    let text = body_text(&body)?;
    let fields = Fields::parse(text)?;
    let req = PublishRequest {
        channels: fields.channels()?,
        data: raw_bytes(&body, fields.data()?),
        to: fields.recipients()?,
        once_per_client: false,
    };
    let channels = state.hub.publish(&actor, req).await?;
    Ok(Json(PublishResponse { channels }))
}

// ---- channels -----------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
}

/// List channels with their subscriber counts (admin).
#[utoipa::path(get, path = "/api/v1/channels",
    responses((status = 200, body = ChannelList), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn list_channels(
    State(state): St,
    Caller(actor): Caller,
) -> ApiResult<Json<ChannelList>> {
    Ok(Json(ChannelList {
        channels: state.hub.channels(&actor)?,
    }))
}

/// Body of `POST /api/v1/channels`; options left out take the `[channels]` defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelBody {
    pub name: String,
    pub public: Option<bool>,
    pub client_publish: Option<bool>,
    pub max_subscribers: Option<u32>,
}

/// Create a channel; the answer carries its token (shown once).
#[utoipa::path(post, path = "/api/v1/channels", request_body = CreateChannelBody,
    responses((status = 201, body = CreatedChannel), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn create_channel(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<CreatedChannel>)> {
    let req: CreateChannelBody = parse_json(body_text(&body)?)?;
    let name = channel_param(&req.name)?;
    let defaults = &state.hub.config().channel_defaults;
    let options = ChannelOptions {
        public: req.public.unwrap_or(defaults.public),
        client_publish: req.client_publish.unwrap_or(defaults.client_publish),
        // 0 means unlimited, as in the configuration file.
        max_subscribers: match req.max_subscribers {
            Some(0) => None,
            Some(n) => Some(n),
            None => defaults.max_subscribers,
        },
    };
    let created = state.hub.create_channel(&actor, name, options).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One channel (admin or the channel's token).
#[utoipa::path(get, path = "/api/v1/channels/{name}",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = ChannelSummary), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn get_channel(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ChannelSummary>> {
    Ok(Json(state.hub.channel(&actor, &channel_param(&name)?)?))
}

#[derive(Serialize, ToSchema)]
pub struct DeletedChannel {
    pub deleted: String,
    /// Subscribers that were told (`{"op":"unsubscribed","reason":"channel_deleted"}`).
    pub unsubscribed: u64,
}

/// Delete a channel; its subscribers are told.
#[utoipa::path(delete, path = "/api/v1/channels/{name}",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, body = DeletedChannel), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn delete_channel(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<DeletedChannel>> {
    let name = channel_param(&name)?;
    let unsubscribed = state.hub.delete_channel(&actor, &name).await?;
    Ok(Json(DeletedChannel {
        deleted: name.to_string(),
        unsubscribed,
    }))
}

// ---- clients ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientSummary>,
}

/// List connected clients (admin).
#[utoipa::path(get, path = "/api/v1/clients",
    responses((status = 200, body = ClientList), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn list_clients(State(state): St, Caller(actor): Caller) -> ApiResult<Json<ClientList>> {
    Ok(Json(ClientList {
        clients: state.hub.clients(&actor)?,
    }))
}

/// One client with its subscriptions (admin).
#[utoipa::path(get, path = "/api/v1/clients/{id}",
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, body = ClientSummary), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn get_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ClientSummary>> {
    let client = state.hub.client(&actor, client_param(&id)?)?;
    Ok(Json(state.hub.client_summary(&client, true)))
}

/// Body of the subscribe and unsubscribe routes.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: parsed by `Fields`
pub struct ChannelsBody {
    channels: Option<Vec<String>>,
    channel: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionChange {
    /// The channels named in the request.
    #[schema(value_type = Vec<String>)]
    pub channels: Vec<ChannelName>,
    /// Those whose subscription actually changed.
    #[schema(value_type = Vec<String>)]
    pub changed: Vec<ChannelName>,
}

/// The client a subscription route names, and the channels its body lists.
fn client_and_channels(
    state: &AppState,
    actor: &Actor,
    id: &str,
    body: &Result<Bytes, BytesRejection>,
) -> ApiResult<(Arc<ClientHandle>, Vec<ChannelName>)> {
    let client = state.hub.client(actor, client_param(id)?)?;
    let channels = Fields::parse(body_text(body)?)?.channels()?;
    Ok((client, channels))
}

/// Subscribe a client to channels (admin; works on private channels too).
#[utoipa::path(post, path = "/api/v1/clients/{id}/subscribe", request_body = ChannelsBody,
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, body = SubscriptionChange), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn subscribe_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SubscriptionChange>> {
    let (client, channels) = client_and_channels(&state, &actor, &id, &body)?;
    let changed = state.hub.subscribe(&actor, &client, &channels, None)?;
    Ok(Json(SubscriptionChange { channels, changed }))
}

/// Unsubscribe a client; it receives `{"op":"unsubscribed","reason":"admin"}` (admin).
#[utoipa::path(post, path = "/api/v1/clients/{id}/unsubscribe", request_body = ChannelsBody,
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, body = SubscriptionChange), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn unsubscribe_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SubscriptionChange>> {
    let (client, channels) = client_and_channels(&state, &actor, &id, &body)?;
    let changed = state.hub.force_unsubscribe(&client, &channels, "admin")?;
    Ok(Json(SubscriptionChange { channels, changed }))
}

/// Body of `POST /api/v1/clients/{id}/send`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: parsed by `Fields`
pub struct SendBody {
    /// Any JSON value, delivered as `{"op":"direct","from":null,"data":...}`.
    data: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct Sent {
    pub sent: bool,
}

/// Send a direct message to a client.
#[utoipa::path(post, path = "/api/v1/clients/{id}/send", request_body = SendBody,
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, body = Sent), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn send_to_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Sent>> {
    let id = client_param(&id)?;
    let fields = Fields::parse(body_text(&body)?)?;
    let data = raw_bytes(&body, fields.data()?);
    state.hub.send_direct(&actor, id, &data)?;
    Ok(Json(Sent { sent: true }))
}

/// Query of `DELETE /api/v1/clients/{id}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KickQuery {
    /// Shown to the client in the close frame (at most 120 bytes are sent).
    pub reason: Option<String>,
    /// `false`: close with 4000 (do not reconnect) instead of 4200 (may reconnect).
    pub reconnect: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    pub disconnected: String,
    pub code: u16,
}

/// Disconnect a client with a reason (admin).
#[utoipa::path(delete, path = "/api/v1/clients/{id}",
    params(("id" = String, Path, description = "client id"), KickQuery),
    responses((status = 200, body = Disconnected), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn kick_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    query: Result<Query<KickQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Disconnected>> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let id = client_param(&id)?;
    let code = if q.reconnect == Some(false) {
        close_code::KICKED_NO_RECONNECT
    } else {
        close_code::KICKED
    };
    let reason = q
        .reason
        .unwrap_or_else(|| "disconnected by an operator".into());
    if reason.len() > 120 {
        return Err(HeraldError::bad_request("reason is longer than 120 bytes").into());
    }
    state.hub.kick(
        &actor,
        id,
        Disconnect::new(DisconnectReason::Kicked, code, reason),
    )?;
    Ok(Json(Disconnected {
        disconnected: id.to_string(),
        code,
    }))
}

// ---- stats, health, fallbacks -------------------------------------------------------------

/// Server counters (admin).
#[utoipa::path(get, path = "/api/v1/stats",
    responses((status = 200, body = StatsSnapshot), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), tag = "server")]
pub async fn stats(State(state): St, Caller(actor): Caller) -> ApiResult<Json<StatsSnapshot>> {
    actor.require_admin("reading stats")?;
    Ok(Json(state.hub.stats_snapshot()))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: 200 while the server accepts requests (no credential needed).
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)), tag = "server")]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route (see /api/v1/openapi.json)",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}
