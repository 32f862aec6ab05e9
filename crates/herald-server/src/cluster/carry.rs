//! How this node carries out what the other nodes send on the control plane
//! ([`super::control`]'s requests and notices): read by the brokers' receiving tasks.

use std::sync::Arc;

use herald_core::events::{Event, EventMask, EventType};
use herald_core::{Actor, ChannelName, ClientId, Disconnect, DisconnectReason, HeraldError};

use super::control::{Answer, Control, ControlRequest};
use crate::state::AppState;

/// Carries out another node's control message here; returns the answer for a request (`None`
/// for a notice, or for this node's own message).
pub async fn carry_out(state: &Arc<AppState>, request: ControlRequest) -> Option<Answer> {
    let cluster = state.cluster.as_ref()?;
    if request.from == cluster.node() {
        return None; // Our own: done locally before asking.
    }
    let hub = &state.hub;
    let admin = Actor::Admin;
    let id = request.id;
    // The client an operation names, if it is here.
    let local = |client: &str| {
        ClientId::parse(client)
            .ok()
            .and_then(|id| hub.registry().client(id))
    };
    let count = |n: u64| {
        Some(Answer {
            id,
            count: n,
            ..Answer::default()
        })
    };
    match request.control {
        Control::Kick {
            client,
            code,
            reason,
        } => {
            let d = Disconnect::new(DisconnectReason::Kicked, code, reason);
            let kicked = local(&client).is_some_and(|c| hub.kick(&admin, c.id, d).is_ok());
            count(u64::from(kicked))
        }
        Control::KickUser { user, code, reason } => {
            let d = Disconnect::new(DisconnectReason::Kicked, code, reason);
            count(hub.kick_user(&admin, &user, d).unwrap_or(0))
        }
        Control::Send { client, from, data } => {
            let from = from.and_then(|f| ClientId::parse(&f).ok());
            let sent = local(&client).is_some_and(|c| {
                hub.deliver_direct(c.id, from, data.get().as_bytes())
                    .is_ok()
            });
            count(u64::from(sent))
        }
        Control::SendUser { user, data } => count(
            hub.send_to_user(&admin, &user, data.get().as_bytes())
                .unwrap_or(0),
        ),
        Control::Inspect { client } => Some(Answer::of(
            id,
            local(&client).map(|c| {
                serde_json::to_value(hub.client_summary(&c, true))
                    .map_err(|e| HeraldError::internal(e.to_string()))
            }),
        )),
        Control::Subscribe { client, channels } => {
            let result = match local(&client) {
                None => None,
                Some(c) => Some(
                    async {
                        let channels = parse_channels(&channels)?;
                        let changed = hub.subscribe(&admin, &c, &channels, None)?;
                        hub.confirm_subscribed(&c, &changed).await?;
                        Ok(serde_json::json!(changed))
                    }
                    .await,
                ),
            };
            Some(Answer::of(id, result))
        }
        Control::Unsubscribe { client, channels } => {
            let result = local(&client).map(|c| {
                let channels = parse_channels(&channels)?;
                let changed = hub.force_unsubscribe(&c, &channels, "admin")?;
                Ok(serde_json::json!(changed))
            });
            Some(Answer::of(id, result))
        }
        Control::BanClient {
            client,
            duration_secs,
            reason,
        } => {
            let result = match local(&client) {
                None => None,
                Some(c) => Some(
                    async {
                        let request = herald_core::hub::BanRequest {
                            target: herald_core::hub::BanSubject::Client(c.id),
                            duration_secs,
                            reason,
                        };
                        let banned = hub.ban(&admin, request).await?;
                        Ok(serde_json::json!({
                            "ban": banned.ban.to_json(),
                            "disconnected": banned.disconnected,
                        }))
                    }
                    .await,
                ),
            };
            Some(Answer::of(id, result))
        }
        Control::Presence { channel } => {
            let here: Vec<(String, Option<String>)> = ChannelName::parse(&channel)
                .ok()
                .and_then(|name| hub.registry().lookup(&name))
                .map(|c| c.subscribers())
                .unwrap_or_default()
                .iter()
                .map(|c| (c.id.to_string(), c.user().map(|u| u.to_string())))
                .collect();
            Some(Answer {
                id,
                count: here.len() as u64,
                value: Some(serde_json::json!(here)),
                error: None,
            })
        }
        Control::Banned { ban } => {
            hub.apply_ban(ban);
            None
        }
        Control::Unbanned { id } => {
            hub.forget_ban(&id);
            None
        }
        Control::ChannelPut { channel } => {
            hub.apply_channel(channel);
            None
        }
        Control::ChannelDeleted { name } => {
            if let Ok(name) = ChannelName::parse(&name) {
                hub.drop_channel(&name);
            }
            None
        }
        Control::Listening { mask } => {
            cluster
                .relay
                .listening(hub, &request.from, EventMask::from_bits(mask));
            count(0)
        }
        Control::Events { events } => {
            for e in events {
                let Some(kind) = EventType::parse(&e.event) else {
                    continue;
                };
                let mut data = e.data;
                data.insert("node".into(), request.from.clone().into());
                hub.registry().relay_event(&Event {
                    kind,
                    seq: e.seq,
                    time_ms: e.time_ms,
                    data,
                });
            }
            None
        }
    }
}

fn parse_channels(names: &[String]) -> Result<Vec<ChannelName>, HeraldError> {
    names.iter().map(|n| ChannelName::parse(n)).collect()
}

/// A control message from another node: a notice is applied at once, in order; a request
/// is carried out on its own task (it may wait) and answered.
pub async fn receive(state: &Arc<AppState>, payload: &[u8]) {
    let Ok(request) = serde_json::from_slice::<ControlRequest>(payload) else {
        tracing::warn!("cluster: malformed control message dropped");
        return;
    };
    let from = request.from.clone();
    if request.id == 0 {
        carry_out(state, request).await;
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        if let Some(answer) = carry_out(&state, request).await
            && let Some(cluster) = &state.cluster
        {
            cluster.reply(from, answer);
        }
    });
}

/// After the backplane came back: every local subscriber of a followed channel is
/// unsubscribed with the reason `broker_reconnected` (native clients resubscribe with
/// `recover`; dialects without such a notice see nothing, as when a channel is left).
pub fn tell_subscribers_to_recover(state: &AppState) {
    for name in state.hub.registry().occupied_channels() {
        tell_channel_subscribers_to_recover(state, &name);
    }
}

/// The same for the local subscribers of one channel (its sharded subscription had to be
/// made again).
pub fn tell_channel_subscribers_to_recover(state: &AppState, name: &ChannelName) {
    let hub = &state.hub;
    let Some(channel) = hub.registry().lookup(name) else {
        return;
    };
    for client in channel.subscribers() {
        let _ = hub.force_unsubscribe(&client, std::slice::from_ref(name), "broker_reconnected");
    }
}
