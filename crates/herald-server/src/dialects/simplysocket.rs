//! The SimplySocket dialect's WebSocket side: every client joins `mesh-global` and is told its
//! id (`know-yourself`); `join-room` / `leave-room` manage room membership (room members are
//! told with `client-joined-room` / `client-left-room`); every other action goes to its
//! `target` room, or to one client when `IsTargetClient` is true, with `sender` set by the
//! server. Refused messages get an `error` action back.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::hub::PublishRequest;
use herald_core::{
    Actor, ChannelName, ChannelOptions, ClientHandle, ClientId, ErrorCode, HeraldError, WireFormat,
};
use herald_protocol::simplysocket::{self, Action, GLOBAL_ROOM, SIMPLYSOCKET_WS};

use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

pub const ENTRY: super::Entry = super::Entry {
    name: simplysocket::DIALECT,
    mount,
    streams: super::no_streams,
    own,
    upgrades: super::no_upgrades,
};

/// On the main listener: its WebSocket on every path under `dialects.simplysocket.prefix`.
fn mount(router: super::Routes, config: &crate::config::Config) -> super::Routes {
    super::mount_any_path::<SimplySocket>(router, &config.dialects.simplysocket)
}

/// Its own listener: its WebSocket on every path.
fn own(config: &crate::config::Config) -> Vec<super::OwnListener> {
    vec![super::OwnListener {
        name: "simplysocket",
        mount: config.dialects.simplysocket.clone(),
        serve: super::serve_any_path::<SimplySocket>,
    }]
}

#[derive(Default)]
pub struct SimplySocket;

impl Dialect for SimplySocket {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        simplysocket::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &SIMPLYSOCKET_WS
    }

    fn greeting(&self, _state: &AppState, client: &ClientHandle) -> Option<Bytes> {
        Some(simplysocket::know_yourself(client.id))
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
        // Everyone is in mesh-global, which always accepts (the server joins them).
        let global = ChannelName::parse(GLOBAL_ROOM).expect("valid room name");
        let open = ChannelOptions {
            public: true,
            client_publish: true,
            max_subscribers: None,
            ..Default::default()
        };
        if let Err(e) = state
            .hub
            .subscribe_with_options(&Actor::Admin, client, &global, &open)
        {
            tracing::warn!(client = %client.id, error = %e, "could not join mesh-global");
        }
        Session {
            state,
            client,
            actor: Actor::Client(client.clone()),
        }
    }
}

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    actor: Actor,
}

impl DialectSession for Session<'_> {
    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        let text = std::str::from_utf8(&text).ok()?;
        let result = match simplysocket::parse(text) {
            Ok(action) => self.execute(action).await,
            Err(e) => Err(e),
        };
        result
            .err()
            .map(|e| simplysocket::error_frame(self.client.id, &e))
    }

    async fn on_binary(&mut self, data: Bytes) -> Option<Bytes> {
        match std::str::from_utf8(&data) {
            Ok(_) => self.on_text(data).await,
            Err(_) => Some(simplysocket::error_frame(
                self.client.id,
                &HeraldError::new(ErrorCode::InvalidJson, "binary message is not UTF-8"),
            )),
        }
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        Some(simplysocket::error_frame(
            self.client.id,
            &HeraldError::new(
                ErrorCode::MessageTooLarge,
                format!("message of {len} bytes skipped: the limit is {limit} bytes"),
            ),
        ))
    }

    fn on_dropped(&mut self, _message: &[u8], error: &HeraldError) -> Option<Bytes> {
        Some(simplysocket::error_frame(self.client.id, error))
    }

    /// Room members hear that the client left (mesh-global excepted: everyone is in it).
    async fn on_close(&mut self) {
        for room in self.client.subscriptions() {
            if room.as_str() != GLOBAL_ROOM {
                self.announce(&room, "client-left-room").await;
            }
        }
    }
}

impl Session<'_> {
    async fn execute(&self, action: Action<'_>) -> Result<(), HeraldError> {
        let hub = &self.state.hub;
        match action {
            Action::JoinRoom { room, player_limit } => {
                // The room's namespace (or `[channels]`) decides history and presence.
                let options = ChannelOptions {
                    public: true,
                    client_publish: true,
                    max_subscribers: player_limit,
                    admin_only_subscribe: false,
                    ..hub.config().defaults_for(&room).clone()
                };
                if hub.subscribe_with_options(&self.actor, self.client, &room, &options)? {
                    hub.confirm_subscribed(self.client, std::slice::from_ref(&room))
                        .await?;
                    if room.as_str() != GLOBAL_ROOM {
                        self.announce(&room, "client-joined-room").await;
                    }
                }
            }
            Action::LeaveRoom { room } => {
                if room.as_str() == GLOBAL_ROOM {
                    return Err(HeraldError::forbidden("every client stays in mesh-global"));
                }
                if !hub
                    .unsubscribe(self.client, std::slice::from_ref(&room))?
                    .is_empty()
                {
                    self.announce(&room, "client-left-room").await;
                }
            }
            Action::Presence { room } => {
                let list = hub.presence(&self.actor, &room).await?;
                let body = serde_json::json!({"roomname": room.as_str(), "clients": list.clients})
                    .to_string();
                let me = self.client.id.to_string();
                let data = simplysocket::encode(
                    "room-presence",
                    Some(body.as_bytes()),
                    true,
                    &me,
                    simplysocket::SERVER_SENDER,
                );
                let frame = SIMPLYSOCKET_WS.direct(None, &data);
                hub.registry().push_or_close(self.client, frame);
            }
            Action::Deliver {
                action,
                body,
                target,
                to_client,
            } => {
                let sender = self.client.id.to_string();
                let body = body.map(|b| b.get().as_bytes());
                let data = Bytes::from(simplysocket::encode(
                    &action, body, to_client, &target, &sender,
                ));
                if to_client {
                    hub.send_direct(&self.actor, ClientId::parse(&target)?, &data)?;
                } else {
                    let room = ChannelName::parse(&target)?;
                    if hub.registry().lookup(&room).is_none() {
                        return Err(HeraldError::new(
                            ErrorCode::ChannelNotFound,
                            format!("no room {room:?}"),
                        ));
                    }
                    let req = PublishRequest {
                        channels: vec![room],
                        data,
                        to: None,
                        once_per_client: false,
                    };
                    hub.publish(&self.actor, req).await?;
                }
            }
        }
        Ok(())
    }

    /// Tells a room's SimplySocket members that this client joined or left it. Sent to them
    /// directly, not published: the notice is this dialect's, and takes no offset in the
    /// channel that other protocols see.
    async fn announce(&self, room: &ChannelName, action: &str) {
        let registry = self.state.hub.registry();
        let Some(channel) = registry.lookup(room) else {
            return;
        };
        let id = self.client.id.to_string();
        let body = serde_json::json!({"roomname": room.as_str(), "client": id}).to_string();
        let data = simplysocket::encode(action, Some(body.as_bytes()), false, room.as_str(), &id);
        let frame = SIMPLYSOCKET_WS.direct(None, &data);
        for member in channel.subscriber_ids() {
            if let Some(member) = registry.client(member)
                && member.format.name() == simplysocket::DIALECT
            {
                registry.push_or_close(&member, frame.clone());
            }
        }
    }
}
