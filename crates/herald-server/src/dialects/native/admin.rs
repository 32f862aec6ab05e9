//! The native protocol's admin operations (`{"op":"clients"}`, `"kick"`, `"ban"`, ...): the
//! HTTP API's management routes over an admin connection. Each parses its fields from the
//! request frame and calls the same hub operation as its HTTP route, with the same errors
//! (bodies shared through [`crate::admin`]).

use std::sync::Arc;

use herald_core::{Actor, ChannelName, ClientHandle, ClientId, EventMask, HeraldError};
use herald_protocol::json as json_text;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admin::{BanBody, CreateChannelBody, KickBody};
use crate::state::AppState;

/// Runs admin op `op`; `text` is the whole request frame.
pub async fn execute(
    state: &AppState,
    actor: &Actor,
    client: &Arc<ClientHandle>,
    op: &str,
    text: &str,
) -> Result<Value, HeraldError> {
    if !actor.is_admin() {
        return Err(HeraldError::forbidden(format!(
            "op {op:?} needs an admin connection (send {{\"op\":\"auth\",\"token\":<admin key>}})"
        )));
    }
    let hub = &state.hub;
    match op {
        "events" => {
            let req: EventsBody = fields(text)?;
            let mask = EventMask::parse(req.types.iter().map(String::as_str))
                .map_err(|bad| HeraldError::bad_request(format!("unknown event type {bad:?}")))?;
            hub.listen_events(actor, client, mask)?;
            // The other nodes relay their events once they know someone here listens: answered
            // once every live node does.
            if let Some(cluster) = &state.cluster {
                // In the report too, for nodes that start later.
                cluster.report_now.notify_one();
                let mask = hub.events().listeners_mask().bits();
                let notice = crate::cluster::Control::Listening { mask };
                if let Err(e) = Box::pin(cluster.ask(notice)).await {
                    tracing::warn!(error = %e.message, "cluster: other nodes' events not asked for");
                }
            }
            let types: Vec<_> = mask.types().map(|t| t.as_str()).collect();
            Ok(json!({ "types": types }))
        }
        "clients" => Ok(json!({ "clients": hub.clients(actor)? })),
        "client" => {
            let req: ClientBody = fields(text)?;
            let id = ClientId::parse(&req.client)?;
            match hub.client(actor, id) {
                Ok(target) => Ok(json!(hub.client_summary(&target, true))),
                Err(e) => {
                    let control = crate::cluster::Control::Inspect {
                        client: id.to_string(),
                    };
                    elsewhere(state, e, control).await
                }
            }
        }
        "channels" => Ok(json!({ "channels": hub.channels(actor)? })),
        "channel" => {
            let req: ChannelBody = fields(text)?;
            let summary = hub.channel(actor, &ChannelName::parse(&req.channel)?)?;
            Ok(serde_json::to_value(summary).unwrap_or_default())
        }
        "channel_create" => {
            let req: CreateChannelBody = fields(text)?;
            let name = req.name()?;
            let options = req.options(hub.config().defaults_for(&name))?;
            let created = hub.create_channel(actor, name, options).await?;
            Ok(serde_json::to_value(created).unwrap_or_default())
        }
        "channel_delete" => {
            let req: ChannelBody = fields(text)?;
            let name = ChannelName::parse(&req.channel)?;
            let unsubscribed = hub.delete_channel(actor, &name).await?;
            Ok(json!({ "deleted": name, "unsubscribed": unsubscribed }))
        }
        "history_delete" => {
            let req: ChannelBody = fields(text)?;
            let name = ChannelName::parse(&req.channel)?;
            let cleared = hub.clear_history(actor, &name)?;
            Ok(json!({ "channel": name, "cleared": cleared }))
        }
        "kick" => {
            let req: KickTarget = fields(text)?;
            let how = KickBody {
                reason: req.reason,
                reconnect: req.reconnect,
            };
            let disconnect = how.disconnect()?;
            // The same answers as DELETE /api/v1/clients/{id} and /api/v1/users/{user}.
            match (req.client, req.user) {
                (Some(id), None) => {
                    let id = ClientId::parse(&id)?;
                    let code = disconnect.code;
                    if let Err(e) = hub.kick(actor, id, disconnect.clone()) {
                        let control = crate::cluster::Control::Kick {
                            client: id.to_string(),
                            code,
                            reason: disconnect.message,
                        };
                        if e.code != herald_core::ErrorCode::ClientNotFound
                            || state.cluster.is_none()
                            || !actor.is_admin()
                        {
                            return Err(e);
                        }
                        let cluster = state.cluster.as_ref().expect("checked");
                        if Box::pin(cluster.on_other_nodes(control)).await? == 0 {
                            return Err(e);
                        }
                    }
                    Ok(json!({ "disconnected": id.to_string(), "code": code }))
                }
                (None, Some(user)) => {
                    let mut disconnected = hub.kick_user(actor, &user, disconnect.clone())?;
                    if let Some(cluster) = &state.cluster {
                        let control = crate::cluster::Control::KickUser {
                            user: user.clone(),
                            code: disconnect.code,
                            reason: disconnect.message,
                        };
                        disconnected += Box::pin(cluster.on_other_nodes(control)).await?;
                    }
                    Ok(json!({ "user": user, "disconnected": disconnected }))
                }
                _ => Err(HeraldError::bad_request(
                    "kick names exactly one of \"client\" or \"user\"",
                )),
            }
        }
        "user" => {
            let req: UserBody = fields(text)?;
            let clients: Vec<_> = hub
                .user_clients(&req.user)
                .iter()
                .map(|c| hub.client_summary(c, true))
                .collect();
            Ok(json!({ "user": req.user, "clients": clients }))
        }
        "ban" => {
            let req: BanBody = fields(text)?;
            let request = req.request()?;
            match hub.ban(actor, request.clone()).await {
                Ok(banned) => {
                    Ok(json!({ "ban": banned.ban.to_json(), "disconnected": banned.disconnected }))
                }
                // A client of another node: that node bans its user or address.
                Err(e) => match request.target {
                    herald_core::hub::BanSubject::Client(id) if actor.is_admin() => {
                        let control = crate::cluster::Control::BanClient {
                            client: id.to_string(),
                            duration_secs: request.duration_secs,
                            reason: request.reason,
                        };
                        elsewhere(state, e, control).await
                    }
                    _ => Err(e),
                },
            }
        }
        "unban" => {
            let req: UnbanBody = fields(text)?;
            let ban = hub.unban(actor, &req.ban).await?;
            Ok(json!({ "unbanned": ban.to_json() }))
        }
        "bans" => {
            let bans: Vec<_> = hub.bans(actor)?.iter().map(|b| b.to_json()).collect();
            Ok(json!({ "bans": bans }))
        }
        "stats" => Ok(serde_json::to_value(hub.stats_snapshot()).unwrap_or_default()),
        other => Err(HeraldError::new(
            herald_core::ErrorCode::UnknownOp,
            format!("unknown admin op {other:?}"),
        )),
    }
}

/// Parses the op's fields from the frame, without its `op` and `id`. Unknown fields are
/// refused, as the HTTP API refuses them.
fn fields<T: DeserializeOwned>(text: &str) -> Result<T, HeraldError> {
    let mut map = json_text::unique_object(text).map_err(|e| match e {
        json_text::UniqueError::Repeated(key) => {
            HeraldError::bad_request(json_text::repeated_message(&key))
        }
        json_text::UniqueError::Object(e) => {
            HeraldError::bad_request(format!("invalid request: {e}"))
        }
    })?;
    map.remove("op");
    map.remove("id");
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        let msg = e.to_string();
        // serde's "missing field `x`" keeps the protocol's missing_field code.
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return HeraldError::new(
                herald_core::ErrorCode::MissingField,
                format!("missing field \"{name}\""),
            );
        }
        HeraldError::bad_request(format!("invalid request: {msg}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientBody {
    client: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnbanBody {
    /// The ban's id, e.g. `ip:10.0.0.1` or `user:alice`.
    ban: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickTarget {
    client: Option<String>,
    user: Option<String>,
    reason: Option<String>,
    reconnect: Option<bool>,
}

/// An op on a client this node does not have (`e`): in a cluster, carried out by the node
/// that has it.
async fn elsewhere(
    state: &AppState,
    e: HeraldError,
    control: crate::cluster::Control,
) -> Result<serde_json::Value, HeraldError> {
    Box::pin(crate::cluster::on_owner(
        state.cluster.as_deref(),
        e,
        control,
    ))
    .await
}
