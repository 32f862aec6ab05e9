//! The HTTP API handlers under `/api/v1`. Each one authenticates the caller, parses its body
//! with the same field rules as the WebSocket protocol, and calls one hub operation.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use herald_core::hub::{
    ChannelPublished, ChannelSummary, ClientSummary, CreatedChannel, HistoryPage, HistoryQuery,
    PresenceList, PresenceStats, PublishRequest,
};
use herald_core::stats::StatsSnapshot;
use herald_core::{Actor, ChannelName, ClientId, ErrorCode, HeraldError};
use herald_protocol::native::Fields;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::auth::Caller;
use crate::admin::{BanBody, CreateChannelBody, KickBody};
use crate::cluster::{Control, NodeInfo};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use crate::state::AppState;

type St = State<Arc<AppState>>;

/// The request body as UTF-8 text, with a clear error for oversized or non-UTF-8 bodies.
fn body_text(body: &Result<Bytes, BytesRejection>) -> ApiResult<&str> {
    std::str::from_utf8(body_bytes(body)?)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "body is not UTF-8"))
}

/// The request body, with a clear error for oversized or empty bodies.
fn body_bytes(body: &Result<Bytes, BytesRejection>) -> ApiResult<&Bytes> {
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
    non_empty(bytes)
}

/// `body`, or the error for an empty one.
fn non_empty(body: &Bytes) -> ApiResult<&Bytes> {
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the request needs a JSON body",
        ));
    }
    Ok(body)
}

fn parse_json<'a, T: Deserialize<'a>>(text: &'a str) -> ApiResult<T> {
    // serde would take an array for a struct, field by field in order.
    if !text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the body must be a JSON object",
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        if let Some(field) = herald_protocol::json::repeated_in(&e) {
            let message = herald_protocol::json::repeated_message(&field);
            return ApiError::new(ErrorCode::BadRequest, message);
        }
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
    responses((status = 200, description = "Where the publication went: each channel with its offset, epoch and how many subscribers received it", body = PublishResponse), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "publish")]
pub async fn publish(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PublishResponse>> {
    Ok(Json(
        publish_body(&state, &actor, body_bytes(&body)?).await?,
    ))
}

/// What `POST /api/v1/publish` does with its body (also served without hyper:
/// [`super::direct`]).
pub async fn publish_body(
    state: &AppState,
    actor: &Actor,
    body: &Bytes,
) -> ApiResult<PublishResponse> {
    let req = publish_request(non_empty(body)?)?;
    let channels = state.hub.publish(actor, req).await?;
    Ok(PublishResponse { channels })
}

/// Parses the body of `POST /api/v1/publish` (also what a `format = "herald"` ingress
/// message holds): `channel` or `channels`, `data` (kept as a zero-copy slice of `body`),
/// optional `to`; the same field rules and errors as the WebSocket `publish` op.
pub fn publish_request(body: &Bytes) -> Result<PublishRequest, HeraldError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| HeraldError::new(ErrorCode::InvalidJson, "body is not UTF-8"))?;
    let fields = Fields::parse(text)?;
    Ok(PublishRequest {
        channels: fields.channels()?,
        data: body.slice_ref(fields.data()?.get().as_bytes()),
        to: fields.recipients()?,
        once_per_client: false,
    })
}

/// Body of `POST /api/v1/batch`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the body is parsed by `batch_items`
pub struct BatchBody {
    /// Publications, each with the fields of `POST /api/v1/publish`; at most
    /// `limits.max_batch_publications`.
    publications: Vec<PublishBody>,
}

/// The answer to `POST /api/v1/batch`: one result per publication, in the order given.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// One publication's outcome: where it went, or why it was refused.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Published { channels: Vec<ChannelPublished> },
    Refused { error: ErrorDetail },
}

/// Publish many publications in one request, each to its own channels. Each is checked and
/// published on its own, in order: a refused one gets its error in its place and the others
/// go ahead.
#[utoipa::path(post, path = "/api/v1/batch", request_body = BatchBody,
    responses((status = 200, description = "One result per publication, in order: where it went, or its error", body = BatchResponse), (status = "4XX", description = "The batch itself was refused (not JSON, no `publications` list, more than `limits.max_batch_publications`, body too large): nothing was published", body = ErrorBody)),
    security(("bearer" = [])), tag = "publish")]
pub async fn batch(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<BatchResponse>> {
    Ok(Json(batch_body(&state, &actor, body_bytes(&body)?).await?))
}

/// What `POST /api/v1/batch` does with its body (also served without hyper:
/// [`super::direct`]).
pub async fn batch_body(state: &AppState, actor: &Actor, body: &Bytes) -> ApiResult<BatchResponse> {
    let items = batch_items(non_empty(body)?, state.config.limits.max_batch_publications)?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match item {
            Ok(req) => state.hub.publish(actor, req).await,
            Err(e) => Err(e),
        };
        results.push(match outcome {
            Ok(channels) => BatchResult::Published { channels },
            Err(e) => BatchResult::Refused {
                error: ErrorDetail {
                    code: e.code.as_str().to_string(),
                    message: e.message,
                },
            },
        });
    }
    Ok(BatchResponse { results })
}

/// The publications of a `POST /api/v1/batch` body, each parsed on its own (a bad one is an
/// error in its place). The list is bounded as it is read: the `max + 1`th entry refuses the
/// batch before anything more is parsed.
fn batch_items(body: &Bytes, max: usize) -> ApiResult<Vec<Result<PublishRequest, HeraldError>>> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "body is not UTF-8"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let raws = serde::de::DeserializeSeed::deserialize(BatchSeed { max }, &mut de)
        .and_then(|raws| de.end().map(|()| raws))
        .map_err(|e| {
            if e.to_string().starts_with(TOO_MANY) {
                let message = format!(
                    "a batch holds at most {max} publications (limits.max_batch_publications)"
                );
                return ApiError::new(ErrorCode::TooMany, message);
            }
            let code = match e.classify() {
                serde_json::error::Category::Data => ErrorCode::BadRequest,
                _ => ErrorCode::InvalidJson,
            };
            ApiError::new(code, format!("invalid body: {e}"))
        })?;
    Ok(raws
        .into_iter()
        .map(|raw| publish_request(&body.slice_ref(raw.get().as_bytes())))
        .collect())
}

/// The marker of the "too many publications" error inside serde's error.
const TOO_MANY: &str = "batch: too many publications";

/// Reads `{"publications":[…]}` into raw slices, refusing the list past `max` entries.
struct BatchSeed {
    max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for BatchSeed {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchSeed {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"an object {"publications": [...]}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut list = None;
        while let Some(key) = map.next_key::<&str>()? {
            if key != "publications" {
                return Err(A::Error::unknown_field(key, &["publications"]));
            }
            if list.is_some() {
                return Err(A::Error::duplicate_field("publications"));
            }
            list = Some(map.next_value_seed(ListSeed { max: self.max })?);
        }
        list.ok_or_else(|| A::Error::missing_field("publications"))
    }
}

/// The `publications` list itself.
struct ListSeed {
    max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListSeed {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of publications")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(raw) = seq.next_element::<&RawValue>()? {
            if out.len() == self.max {
                return Err(A::Error::custom(TOO_MANY));
            }
            out.push(raw);
        }
        if out.is_empty() {
            return Err(A::Error::invalid_length(0, &"at least one publication"));
        }
        Ok(out)
    }
}

// ---- channels -----------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
}

/// List channels with their subscriber counts (admin).
#[utoipa::path(get, path = "/api/v1/channels",
    responses((status = 200, description = "Every channel, sorted by name", body = ChannelList), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn list_channels(
    State(state): St,
    Caller(actor): Caller,
) -> ApiResult<Json<ChannelList>> {
    Ok(Json(ChannelList {
        channels: state.hub.channels(&actor)?,
    }))
}

/// Create a channel; the answer carries its token (shown once).
#[utoipa::path(post, path = "/api/v1/channels", request_body = CreateChannelBody,
    responses((status = 201, description = "The new persistent channel and its token (shown only this once)", body = CreatedChannel), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn create_channel(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<CreatedChannel>)> {
    let req: CreateChannelBody = parse_json(body_text(&body)?)?;
    let name = req.name()?;
    let options = req.options(state.hub.config().defaults_for(&name))?;
    let created = state.hub.create_channel(&actor, name, options).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One channel (admin or the channel's token).
#[utoipa::path(get, path = "/api/v1/channels/{name}",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, description = "The channel", body = ChannelSummary), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
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
    responses((status = 200, description = "The channel is gone; its subscribers were told", body = DeletedChannel), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
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

// ---- history and presence -----------------------------------------------------------------

/// Query of `GET /api/v1/channels/{name}/history`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Publications after this offset (exclusive); needs `epoch`.
    since_offset: Option<u64>,
    /// The epoch `since_offset` belongs to.
    epoch: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Newest first.
    reverse: Option<bool>,
}

/// A channel's kept publications (admin or the channel's token).
#[utoipa::path(get, path = "/api/v1/channels/{name}/history",
    params(("name" = String, Path, description = "channel name"), HistoryParams),
    responses((status = 200, description = "The channel's position and the publications read, oldest first unless reverse", body = HistoryPage), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn get_history(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<HistoryPage>> {
    let name = channel_param(&name)?;
    let Query(p) = params.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let since = match (p.epoch, p.since_offset) {
        (Some(epoch), Some(offset)) => Some((epoch, offset)),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give both since_offset and epoch, or neither",
            ));
        }
    };
    let query = HistoryQuery {
        since,
        limit: p.limit,
        reverse: p.reverse.unwrap_or(false),
    };
    Ok(Json(state.hub.history(&actor, &name, &query)?))
}

#[derive(Serialize, ToSchema)]
pub struct ClearedHistory {
    pub channel: String,
    /// Publications dropped.
    pub cleared: u64,
}

/// Drop a channel's kept publications (admin or the channel's token); its offset and epoch
/// stay.
#[utoipa::path(delete, path = "/api/v1/channels/{name}/history",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, description = "The history is empty", body = ClearedHistory), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn delete_history(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ClearedHistory>> {
    let name = channel_param(&name)?;
    let cleared = state.hub.clear_history(&actor, &name)?;
    Ok(Json(ClearedHistory {
        channel: name.to_string(),
        cleared,
    }))
}

/// Who is subscribed to a channel with `presence` (admin or the channel's token).
#[utoipa::path(get, path = "/api/v1/channels/{name}/presence",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, description = "The subscribers, with their users", body = PresenceList), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn get_presence(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PresenceList>> {
    Ok(Json(
        state.hub.presence(&actor, &channel_param(&name)?).await?,
    ))
}

/// How many clients and distinct users are subscribed (admin or the channel's token).
#[utoipa::path(get, path = "/api/v1/channels/{name}/presence_stats",
    params(("name" = String, Path, description = "channel name")),
    responses((status = 200, description = "Counts of subscribers and distinct users", body = PresenceStats), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "channels")]
pub async fn get_presence_stats(
    State(state): St,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PresenceStats>> {
    Ok(Json(
        state
            .hub
            .presence_stats(&actor, &channel_param(&name)?)
            .await?,
    ))
}

// ---- clients ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientSummary>,
}

/// List connected clients (admin).
#[utoipa::path(get, path = "/api/v1/clients",
    responses((status = 200, description = "Every connected client", body = ClientList), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn list_clients(State(state): St, Caller(actor): Caller) -> ApiResult<Json<ClientList>> {
    Ok(Json(ClientList {
        clients: state.hub.clients(&actor)?,
    }))
}

/// One client with its subscriptions (admin).
#[utoipa::path(get, path = "/api/v1/clients/{id}",
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, description = "The client, with its channels", body = ClientSummary), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn get_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = client_param(&id)?;
    match state.hub.client(&actor, id) {
        Ok(client) => Ok(Json(serde_json::json!(
            state.hub.client_summary(&client, true)
        ))),
        Err(e) => {
            let control = Control::Inspect {
                client: id.to_string(),
            };
            Ok(Json(on_owner(&state, &actor, e, control).await?))
        }
    }
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

/// The channels a subscription route's body lists.
fn body_channels(body: &Result<Bytes, BytesRejection>) -> ApiResult<Vec<ChannelName>> {
    Ok(Fields::parse(body_text(body)?)?.channels()?)
}

/// Subscribe a client to channels (admin; works on private channels too).
#[utoipa::path(post, path = "/api/v1/clients/{id}/subscribe", request_body = ChannelsBody,
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, description = "The requested channels, and those that changed", body = SubscriptionChange), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn subscribe_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SubscriptionChange>> {
    let id = client_param(&id)?;
    let channels = body_channels(&body)?;
    let changed = match state.hub.client(&actor, id) {
        Ok(client) => {
            let changed = state.hub.subscribe(&actor, &client, &channels, None)?;
            state.hub.confirm_subscribed(&client, &changed).await?;
            changed
        }
        Err(e) => {
            let control = Control::Subscribe {
                client: id.to_string(),
                channels: channels.iter().map(ToString::to_string).collect(),
            };
            on_owner(&state, &actor, e, control).await?
        }
    };
    Ok(Json(SubscriptionChange { channels, changed }))
}

/// Unsubscribe a client; it receives `{"op":"unsubscribed","reason":"admin"}` (admin).
#[utoipa::path(post, path = "/api/v1/clients/{id}/unsubscribe", request_body = ChannelsBody,
    params(("id" = String, Path, description = "client id")),
    responses((status = 200, description = "The requested channels, and those that changed", body = SubscriptionChange), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn unsubscribe_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SubscriptionChange>> {
    let id = client_param(&id)?;
    let channels = body_channels(&body)?;
    let changed = match state.hub.client(&actor, id) {
        Ok(client) => state.hub.force_unsubscribe(&client, &channels, "admin")?,
        Err(e) => {
            let control = Control::Unsubscribe {
                client: id.to_string(),
                channels: channels.iter().map(ToString::to_string).collect(),
            };
            on_owner(&state, &actor, e, control).await?
        }
    };
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
    responses((status = 200, description = "The message is queued for the client", body = Sent), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
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
    match state.hub.send_direct(&actor, id, &data) {
        // In a cluster, the client may be on another node.
        Err(e) if e.code == ErrorCode::ClientNotFound && actor.is_admin() => {
            let control = Control::Send {
                client: id.to_string(),
                from: None,
                data: serde_json::from_str(fields.data()?.get())
                    .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?,
            };
            if elsewhere(&state, control).await? == 0 {
                return Err(e.into());
            }
        }
        other => other?,
    }
    Ok(Json(Sent { sent: true }))
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    pub disconnected: String,
    pub code: u16,
}

/// Disconnect a client with a reason (admin).
#[utoipa::path(delete, path = "/api/v1/clients/{id}",
    params(("id" = String, Path, description = "client id"), KickBody),
    responses((status = 200, description = "The client is being disconnected", body = Disconnected), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "clients")]
pub async fn kick_client(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
    query: Result<Query<KickBody>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Disconnected>> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let id = client_param(&id)?;
    let disconnect = q.disconnect()?;
    let code = disconnect.code;
    match state.hub.kick(&actor, id, disconnect.clone()) {
        // In a cluster, the client may be on another node.
        Err(e) if e.code == ErrorCode::ClientNotFound && actor.is_admin() => {
            let control = Control::Kick {
                client: id.to_string(),
                code,
                reason: disconnect.message,
            };
            if elsewhere(&state, control).await? == 0 {
                return Err(e.into());
            }
        }
        other => other?,
    }
    Ok(Json(Disconnected {
        disconnected: id.to_string(),
        code,
    }))
}

// ---- users --------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct UserConnections {
    pub user: String,
    pub clients: Vec<ClientSummary>,
}

/// The connections of a user (admin).
#[utoipa::path(get, path = "/api/v1/users/{user}",
    params(("user" = String, Path, description = "user id")),
    responses((status = 200, description = "The user's connections", body = UserConnections), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "users")]
pub async fn get_user(
    State(state): St,
    Caller(actor): Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<UserConnections>> {
    actor.require_admin("managing users")?;
    let clients = state
        .hub
        .user_clients(&user)
        .iter()
        .map(|c| state.hub.client_summary(c, true))
        .collect();
    Ok(Json(UserConnections { user, clients }))
}

#[derive(Serialize, ToSchema)]
pub struct UserDisconnected {
    pub user: String,
    /// Connections closed.
    pub disconnected: u64,
}

/// Disconnect every connection of a user (admin).
#[utoipa::path(delete, path = "/api/v1/users/{user}",
    params(("user" = String, Path, description = "user id"), KickBody),
    responses((status = 200, description = "How many of the user's connections are being disconnected", body = UserDisconnected), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "users")]
pub async fn kick_user(
    State(state): St,
    Caller(actor): Caller,
    Path(user): Path<String>,
    query: Result<Query<KickBody>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<UserDisconnected>> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let disconnect = q.disconnect()?;
    let mut disconnected = state.hub.kick_user(&actor, &user, disconnect.clone())?;
    let control = Control::KickUser {
        user: user.clone(),
        code: disconnect.code,
        reason: disconnect.message,
    };
    disconnected += elsewhere(&state, control).await?;
    Ok(Json(UserDisconnected { user, disconnected }))
}

#[derive(Serialize, ToSchema)]
pub struct SentToUser {
    pub sent: bool,
    /// Connections that got the message.
    pub connections: u64,
}

/// Send a direct message to every connection of a user (admin).
#[utoipa::path(post, path = "/api/v1/users/{user}/send", request_body = SendBody,
    params(("user" = String, Path, description = "user id")),
    responses((status = 200, description = "How many of the user's connections the message was queued for", body = SentToUser), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "users")]
pub async fn send_to_user(
    State(state): St,
    Caller(actor): Caller,
    Path(user): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SentToUser>> {
    let fields = Fields::parse(body_text(&body)?)?;
    let data = raw_bytes(&body, fields.data()?);
    let mut connections = state.hub.send_to_user(&actor, &user, &data)?;
    let control = Control::SendUser {
        user: user.clone(),
        data: serde_json::from_str(fields.data()?.get())
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?,
    };
    connections += elsewhere(&state, control).await?;
    Ok(Json(SentToUser {
        sent: connections > 0,
        connections,
    }))
}

// ---- bans ---------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BanCreated {
    /// The ban: `id`, one of `ip` / `cidr` / `user`, `reason`, `created_at_ms`,
    /// `expires_at_ms`.
    #[schema(value_type = Object)]
    pub ban: serde_json::Value,
    /// Connections it closed (4003).
    pub disconnected: u64,
}

/// Ban a client (its user, else its address), a user, an address or a range (admin).
#[utoipa::path(post, path = "/api/v1/bans", request_body = BanBody,
    responses((status = 201, description = "The ban, and how many connections it closed", body = BanCreated), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "bans")]
pub async fn create_ban(
    State(state): St,
    Caller(actor): Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<BanCreated>)> {
    let req: BanBody = parse_json(body_text(&body)?)?;
    let request = req.request()?;
    let created = match state.hub.ban(&actor, request.clone()).await {
        Ok(banned) => BanCreated {
            ban: banned.ban.to_json(),
            disconnected: banned.disconnected,
        },
        // A client of another node: that node bans its user or address.
        Err(e) => match request.target {
            herald_core::hub::BanSubject::Client(id) => {
                let control = Control::BanClient {
                    client: id.to_string(),
                    duration_secs: request.duration_secs,
                    reason: request.reason,
                };
                on_owner(&state, &actor, e, control).await?
            }
            herald_core::hub::BanSubject::Target(_) => return Err(e.into()),
        },
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Serialize, ToSchema)]
pub struct BanList {
    #[schema(value_type = Vec<Object>)]
    pub bans: Vec<serde_json::Value>,
}

/// The bans in force, oldest first (admin).
#[utoipa::path(get, path = "/api/v1/bans",
    responses((status = 200, description = "Bans in force", body = BanList), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "bans")]
pub async fn list_bans(State(state): St, Caller(actor): Caller) -> ApiResult<Json<BanList>> {
    let bans = state
        .hub
        .bans(&actor)?
        .iter()
        .map(|b| b.to_json())
        .collect();
    Ok(Json(BanList { bans }))
}

#[derive(Serialize, ToSchema)]
pub struct Unbanned {
    #[schema(value_type = Object)]
    pub unbanned: serde_json::Value,
}

/// Lift a ban by id, e.g. `ip:10.0.0.1`, `cidr:10.0.0.0/8`, `user:alice` (admin).
#[utoipa::path(delete, path = "/api/v1/bans/{id}",
    params(("id" = String, Path, description = "ban id")),
    responses((status = 200, description = "The ban that was lifted", body = Unbanned), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "bans")]
pub async fn delete_ban(
    State(state): St,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Unbanned>> {
    let ban = state.hub.unban(&actor, &id).await?;
    Ok(Json(Unbanned {
        unbanned: ban.to_json(),
    }))
}

// ---- stats, health, fallbacks -------------------------------------------------------------

/// Server counters (admin); in a cluster, summed over its nodes (`nodes` says how many).
#[utoipa::path(get, path = "/api/v1/stats",
    responses((status = 200, description = "Counters of this server", body = StatsSnapshot), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "server")]
pub async fn stats(State(state): St, Caller(actor): Caller) -> ApiResult<Json<StatsSnapshot>> {
    actor.require_admin("reading stats")?;
    let mine = state.hub.stats_snapshot();
    match &state.cluster {
        None => Ok(Json(mine)),
        Some(cluster) => {
            // Without the broker, this node's own figures rather than nothing.
            match cluster.nodes(mine.clone()).await {
                Ok(nodes) => Ok(Json(crate::cluster::sum(&nodes).unwrap_or(mine))),
                Err(e) => {
                    tracing::warn!(error = %e, "stats: this node's only");
                    Ok(Json(mine))
                }
            }
        }
    }
}

/// In a cluster: has the other nodes carry out `control` and returns what they did (0
/// alone).
async fn elsewhere(state: &AppState, control: Control) -> ApiResult<u64> {
    match &state.cluster {
        Some(cluster) => Ok(cluster.on_other_nodes(control).await?),
        None => Ok(0),
    }
}

/// An operation on a client this node does not have (`e`: why it failed here): in a cluster,
/// for admins, the node that has the client carries it out and its answer is returned; else
/// `e`.
async fn on_owner<T: serde::de::DeserializeOwned>(
    state: &AppState,
    actor: &Actor,
    e: herald_core::HeraldError,
    control: Control,
) -> ApiResult<T> {
    if !actor.is_admin() {
        return Err(e.into());
    }
    let answer = crate::cluster::on_owner(state.cluster.as_deref(), e, control).await?;
    serde_json::from_value(answer)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("another node's answer: {e}")))
}

#[derive(Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// The nodes of the cluster (this one alone without a cluster broker), each with its figures.
#[utoipa::path(get, path = "/api/v1/nodes",
    responses((status = 200, description = "Every live node, this one first", body = NodeList), (status = "4XX", description = "Refused: the error code and message (docs/errors.md)", body = ErrorBody)),
    security(("bearer" = [])), tag = "server")]
pub async fn nodes(State(state): St, Caller(actor): Caller) -> ApiResult<Json<NodeList>> {
    actor.require_admin("listing nodes")?;
    let mine = state.hub.stats_snapshot();
    let all = match &state.cluster {
        None => vec![(state.node_name.clone(), mine)],
        Some(cluster) => cluster.nodes(mine).await?,
    };
    Ok(Json(NodeList {
        nodes: all
            .into_iter()
            .map(|(name, s)| NodeInfo {
                name,
                connections: s.connections,
                subscriptions: s.subscriptions,
                uptime_seconds: s.uptime_seconds,
            })
            .collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: 200 while the server accepts requests (no credential needed).
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The server is up", body = Health)), tag = "server")]
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
