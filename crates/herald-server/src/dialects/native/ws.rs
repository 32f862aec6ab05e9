//! The native protocol as a [`Dialect`]: a session turns each parsed request into one hub
//! operation and its reply. The HTTP API calls the same hub operations, so codes and rules
//! match.

use crate::cluster::Control;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::client::{Disconnect, DisconnectReason, close_code};
use herald_core::history::Replay;
use herald_core::hub::{HistoryQuery, PublishRequest};
use herald_core::stats::Stats;
use herald_core::{Actor, ChannelName, ClientHandle, ErrorCode, HeraldError, WireFormat};
use herald_protocol::native::{self, NATIVE_WS, Op, Recipient};
use serde_json::json;

use crate::auth_hook::HookEvent;
use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

/// Herald's own protocol at `/ws`.
/// A native connection: the channels its URL named (`/ws?channels=a,b`), subscribed before
/// its welcome.
#[derive(Default)]
pub struct Native {
    channels: Vec<ChannelName>,
}

/// The channels of `?channels=a,b` (comma-separated, each percent-encoded): 400 before the
/// upgrade for an empty or invalid name, or more than `limits.max_channels_per_request`.
fn url_channels(uri: &axum::http::Uri, max: usize) -> Result<Vec<ChannelName>, HeraldError> {
    let Some(query) = uri.query() else {
        return Ok(Vec::new());
    };
    let mut channels: Vec<ChannelName> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "channels" {
            crate::transport::channel_list(&value, &mut channels, max)?;
        }
    }
    Ok(channels)
}

/// `GET /ws`: the native protocol. With `[auth_hook]` on, a handshake without a credential
/// Herald knows waits for the app backend's answer before it is upgraded or refused.
pub async fn upgrade(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let max = state.config.limits.max_channels_per_request;
    let native = match url_channels(req.uri(), max) {
        Ok(channels) => Native { channels },
        Err(e) => return crate::error::ApiError(e).into_response(),
    };
    if !state.auth_hook.enabled() {
        return crate::transport::ws::upgrade_to(native, state, remote, req);
    }
    if let Err(refusal) = crate::limits::check_attempt(state.guard(), remote.ip(), req.headers()) {
        return refusal.into_response();
    }
    let identity =
        crate::admission::hook_admit(&state, remote, req.headers(), req.uri(), native.name()).await;
    match identity {
        Ok(identity) => {
            crate::transport::ws::upgrade_admitted(native, state, remote, req, identity)
        }
        Err(e) => crate::error::ApiError(e).into_response(),
    }
}

impl Dialect for Native {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        native::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &NATIVE_WS
    }

    fn takes_credentials(&self) -> bool {
        true
    }

    fn error_frame(&self, error: &HeraldError) -> Option<Bytes> {
        Some(native::reply_error(None, error))
    }

    fn greets_late(&self) -> bool {
        !self.channels.is_empty()
    }

    fn greeting(&self, state: &AppState, client: &ClientHandle) -> Option<Bytes> {
        if self.greets_late() {
            return None; // After the URL's subscriptions (`Session::on_open`).
        }
        let config = &state.config;
        Some(native::welcome(
            client.id,
            config.websocket.ping_interval_secs * 1000,
            config.websocket.max_message_bytes,
            config.limits.max_payload_bytes,
        ))
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
        let mut session = Session::new(state, client);
        session.url_channels = &self.channels;
        session
    }
}

impl DialectSession for Session<'_> {
    /// Subscribes the URL's channels, each with exactly the checks of a `subscribe` request
    /// (without a channel token), then greets with the outcome.
    async fn on_open(&mut self) -> Option<Bytes> {
        let hub = &self.state.hub;
        let mut subscribed = Vec::new();
        let mut errors = Vec::new();
        for channel in self.url_channels {
            let one = std::slice::from_ref(channel);
            // As a `subscribe` request: the app backend first when it is asked about
            // subscriptions (then on its authority), else the client itself.
            let hooked = self.state.auth_hook.asks(HookEvent::Subscribe, self.client);
            let (asked, actor) = if hooked {
                let hook = &self.state.auth_hook;
                let answer = hook.authorize(HookEvent::Subscribe, self.client, one).await;
                (answer, Actor::Issuer)
            } else {
                (Ok(()), self.actor.clone())
            };
            match asked.and_then(|()| hub.subscribe(&actor, self.client, one, None)) {
                Ok(_) => subscribed.push(channel.clone()),
                Err(e) => errors.push((channel.clone(), e)),
            }
        }
        // In a cluster: greet once every node's publications reach this one.
        if let Err(e) = hub.confirm_subscribed(self.client, &subscribed).await {
            errors.extend(subscribed.drain(..).map(|c| (c, e.clone())));
        }
        let config = &self.state.config;
        Some(native::welcome_subscribed(
            self.client.id,
            config.websocket.ping_interval_secs * 1000,
            config.websocket.max_message_bytes,
            config.limits.max_payload_bytes,
            &subscribed,
            &errors,
        ))
    }

    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        self.handle_text(text).await
    }

    async fn on_binary(&mut self, _data: Bytes) -> Option<Bytes> {
        let error = HeraldError::bad_request("binary messages are not part of the native protocol");
        Some(native::reply_error(None, &error))
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        let error = HeraldError::new(
            ErrorCode::MessageTooLarge,
            format!("message of {len} bytes skipped: the limit is {limit} bytes"),
        );
        Some(native::reply_error(None, &error))
    }

    fn on_dropped(&mut self, message: &[u8], error: &HeraldError) -> Option<Bytes> {
        // Echo the request's id, so the client's request gets its answer.
        let text = std::str::from_utf8(message).unwrap_or_default();
        let id = match native::parse_request(text) {
            Ok(req) => req.id,
            Err(bad) => bad.id,
        };
        Some(native::reply_error(id, error))
    }
}

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    actor: Actor,
    /// The `limits.max_connections_per_user` slot taken when `auth` named the user.
    user_slot: std::sync::OnceLock<crate::limits::Slot>,
    /// The channels the URL named, subscribed at open.
    url_channels: &'a [ChannelName],
}

impl<'a> Session<'a> {
    pub fn new(state: &'a Arc<AppState>, client: &'a Arc<ClientHandle>) -> Self {
        Session {
            state,
            client,
            actor: Actor::Client(client.clone()),
            user_slot: std::sync::OnceLock::new(),
            url_channels: &[],
        }
    }

    /// Handles one text message; returns the reply frame, if one is due.
    pub async fn handle_text(&self, text: Bytes) -> Option<Bytes> {
        Stats::add(&self.state.hub.stats().client_requests, 1);
        self.client
            .frames_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The decoder validated UTF-8 already; this cannot fail.
        let s = std::str::from_utf8(&text).ok()?;
        let req = match native::parse_request(s) {
            Ok(req) => req,
            Err(bad) => return Some(native::reply_error(bad.id, &bad.error)),
        };
        // A read's answer can be as long as what it lists; any other reply is bounded by the
        // request (and its action is done, so the answer must say so).
        let read = matches!(
            req.op,
            Op::History { .. } | Op::Presence { .. } | Op::PresenceStats { .. }
        ) || matches!(
            req.op,
            Op::Admin {
                op: "clients" | "client" | "user" | "channels" | "channel" | "bans" | "stats"
            }
        );
        match (self.execute(req.op, &text).await, req.id) {
            (Ok(result), Some(id)) if read => {
                Some(self.within_outbox(id, native::reply_ok(id, &result)))
            }
            (Ok(result), Some(id)) => Some(native::reply_ok(id, &result)),
            (Ok(_), None) => None,
            (Err(e), id) => Some(native::reply_error(id, &e)),
        }
    }

    /// The answer to a read, unless it could never fit in the connection's outbox (an
    /// admin's list of many thousand channels, a history page of large publications): queuing
    /// it would close the connection as a slow consumer, so the answer is `too_many` instead,
    /// and nothing was changed by the read.
    fn within_outbox(&self, id: &serde_json::value::RawValue, reply: Bytes) -> Bytes {
        let limit = self.state.config.websocket.outbox_max_bytes;
        if reply.len() <= limit {
            return reply;
        }
        let error = HeraldError::new(
            ErrorCode::TooMany,
            format!(
                "the reply would be {} bytes, more than this connection's outbox holds \
                 (websocket.outbox_max_bytes = {limit}): use the HTTP API for lists this long",
                reply.len()
            ),
        );
        native::reply_error(Some(id), &error)
    }

    async fn execute(&self, op: Op<'_>, frame: &Bytes) -> Result<serde_json::Value, HeraldError> {
        let hub = &self.state.hub;
        match op {
            Op::Subscribe {
                channels,
                token,
                client,
                recover,
            } => {
                let target = match self.target(client) {
                    Ok(target) => target,
                    // An admin subscribing a client of another node.
                    Err(e) => {
                        let control = Control::Subscribe {
                            client: client.map(|c| c.to_string()).unwrap_or_default(),
                            channels: channels.iter().map(ToString::to_string).collect(),
                        };
                        let changed = self.elsewhere(e, control).await?;
                        return Ok(json!({ "channels": channels, "changed": changed }));
                    }
                };
                // Who vouches for the subscription: a JWT subscription token or the app
                // backend (on their authority, private channels too), else the client itself.
                let (actor, token) = match token.as_deref() {
                    Some(jwt) if crate::jwt::looks_like_jwt(jwt) => {
                        self.check_subscription_token(&target, &channels, jwt)?;
                        (Actor::Issuer, None)
                    }
                    _ if self.state.auth_hook.asks(HookEvent::Subscribe, self.client) => {
                        let hook = &self.state.auth_hook;
                        // Boxed, like every rare slow path here: the connection task's future
                        // is allocated per connection and sized for its largest await.
                        Box::pin(hook.authorize(HookEvent::Subscribe, self.client, &channels))
                            .await?;
                        (Actor::Issuer, None)
                    }
                    token => (self.actor.clone(), token),
                };
                let replay = |name: &herald_core::ChannelName| {
                    recover
                        .iter()
                        .find(|(c, _)| c == name)
                        .map_or(Replay::Nothing, |(_, p)| Replay::After {
                            epoch: &p.epoch,
                            offset: p.offset,
                        })
                };
                // Complete the channels' history first (in a cluster, from the backplane),
                // holding them so nothing is lost between that and the subscription.
                let recovering: Vec<_> = recover.iter().map(|(c, _)| c.clone()).collect();
                if !recovering.is_empty()
                    && let Err(e) = hub.prepare_recovery(&actor, &recovering, token).await
                {
                    hub.end_recovery(&recovering);
                    return Err(e);
                }
                let done = hub.subscribe_replaying(&actor, &target, &channels, token, replay);
                hub.end_recovery(&recovering);
                let done = done?;
                // In a cluster: answer once every node's publications reach this one.
                hub.confirm_subscribed(&target, &done.added).await?;
                if recover.is_empty() {
                    return Ok(json!({ "channels": channels, "changed": done.added }));
                }
                let recovered: serde_json::Map<String, serde_json::Value> = done
                    .recovered
                    .into_iter()
                    .map(|(c, r)| (c.to_string(), json!(r)))
                    .collect();
                Ok(json!({ "channels": channels, "changed": done.added, "recovered": recovered }))
            }
            Op::History {
                channel,
                since,
                limit,
                reverse,
            } => {
                let query = HistoryQuery {
                    since: since.map(|p| (p.epoch, p.offset)),
                    limit,
                    reverse,
                };
                Ok(json!(hub.history(&self.actor, &channel, &query)?))
            }
            Op::Presence { channel } => Ok(json!(hub.presence(&self.actor, &channel).await?)),
            Op::PresenceStats { channel } => {
                Ok(json!(hub.presence_stats(&self.actor, &channel).await?))
            }
            Op::Unsubscribe { channels, client } => {
                let changed = match client {
                    None => json!(hub.unsubscribe(self.client, &channels)?),
                    Some(id) => match self.target(client) {
                        Ok(target) => json!(hub.force_unsubscribe(&target, &channels, "admin")?),
                        Err(e) => {
                            let control = Control::Unsubscribe {
                                client: id.to_string(),
                                channels: channels.iter().map(ToString::to_string).collect(),
                            };
                            self.elsewhere(e, control).await?
                        }
                    },
                };
                Ok(json!({ "channels": channels, "changed": changed }))
            }
            Op::Publish { channels, data, to } => {
                let data = frame.slice_ref(data.get().as_bytes());
                // The backend is an extra gate: the channel must still take client publications.
                if self.state.auth_hook.asks(HookEvent::Publish, self.client) {
                    let hook = &self.state.auth_hook;
                    Box::pin(hook.authorize(HookEvent::Publish, self.client, &channels)).await?;
                }
                let results = hub
                    .publish(
                        &self.actor,
                        PublishRequest {
                            channels,
                            data,
                            to,
                            once_per_client: false,
                        },
                    )
                    .await?;
                Ok(json!({ "channels": results }))
            }
            Op::Send { to, data } => match to {
                Recipient::Client(id) => {
                    if let Err(e) = hub.send_direct(&self.actor, id, data.get().as_bytes()) {
                        // A client of another node: the message was allowed here.
                        let control = Control::Send {
                            client: id.to_string(),
                            from: Some(self.client.id.to_string()),
                            data: data.to_owned(),
                        };
                        self.elsewhere(e, control).await?;
                    }
                    Ok(json!({ "sent": true }))
                }
                Recipient::User(user) => {
                    let mut sent = hub.send_to_user(&self.actor, &user, data.get().as_bytes())?;
                    if let Some(cluster) = &self.state.cluster {
                        let control = Control::SendUser {
                            user: user.clone(),
                            data: data.to_owned(),
                        };
                        sent += Box::pin(cluster.on_other_nodes(control)).await?;
                    }
                    Ok(json!({ "sent": sent > 0, "connections": sent }))
                }
            },
            Op::Ping => Ok(json!({ "pong": true })),
            Op::Auth { token } => self.authenticate(&token),
            Op::Admin { op } => {
                let text = std::str::from_utf8(frame).unwrap_or_default();
                Box::pin(super::admin::execute(
                    self.state,
                    &self.actor,
                    self.client,
                    op,
                    text,
                ))
                .await
            }
        }
    }

    /// A JWT subscription token names one channel and this connection's user, and admits it
    /// on the token issuer's authority (private channels included); limits such as
    /// `max_subscribers` still apply.
    fn check_subscription_token(
        &self,
        target: &Arc<ClientHandle>,
        channels: &[herald_core::ChannelName],
        token: &str,
    ) -> Result<(), HeraldError> {
        let [channel] = channels else {
            return Err(HeraldError::bad_request(
                "a subscription token covers one channel: subscribe to it alone",
            ));
        };
        let user = target.user().map(|u| u.as_ref());
        crate::auth::verify_subscription(self.state.keys(), token, channel, user)
    }

    /// An op on a client this node does not have (`e`): in a cluster, carried out by the
    /// node that has it.
    async fn elsewhere(
        &self,
        e: HeraldError,
        control: Control,
    ) -> Result<serde_json::Value, HeraldError> {
        Box::pin(crate::cluster::on_owner(
            self.state.cluster.as_deref(),
            e,
            control,
        ))
        .await
    }

    /// The client an op acts on: itself, or (admins) the one named by `client`.
    fn target(
        &self,
        client: Option<herald_core::ClientId>,
    ) -> Result<Arc<ClientHandle>, HeraldError> {
        match client {
            None => Ok(self.client.clone()),
            Some(id) if id == self.client.id => Ok(self.client.clone()),
            Some(id) => self.state.hub.client(&self.actor, id),
        }
    }

    /// `{"op":"auth","token":...}`: the admin key or a connection token, after connecting.
    fn authenticate(&self, token: &str) -> Result<serde_json::Value, HeraldError> {
        let identity = crate::auth::verify(self.state.keys(), token)?;
        if let Some(user) = &identity.user {
            // Refused; the connection stays as it was (anonymous), like a refused handshake.
            if let Some(ban) = self.state.hub.banned_user(user) {
                return Err(HeraldError::new(ErrorCode::Banned, ban.message()));
            }
            // A user named for the first time counts against its connection limit (the
            // admin key is exempt, as at the handshake).
            if self.client.user().is_none() && !identity.admin && !self.client.is_admin() {
                let ip = self.client.info.remote.map(|r| r.ip());
                let ip = ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                if let Some(slot) = crate::limits::take_user_slot(self.state.guard(), ip, user)? {
                    let _ = self.user_slot.set(slot);
                }
            }
            if !self.client.set_user(user.clone()) {
                return Err(HeraldError::forbidden(
                    "this connection is already authenticated as another user",
                ));
            }
            // A user ban put in force since the check above missed this connection.
            if let Some(ban) = self.state.hub.banned_user(user) {
                self.client.outbox.close(Disconnect::new(
                    DisconnectReason::Banned,
                    close_code::BANNED,
                    ban.message(),
                ));
                return Err(HeraldError::new(ErrorCode::Banned, ban.message()));
            }
        }
        crate::admission::apply_identity(self.state, self.client, &identity)?;
        Ok(json!({
            "admin": self.client.is_admin(),
            "user": self.client.user().map(|u| u.to_string()),
            "channels": identity.channels,
        }))
    }
}
