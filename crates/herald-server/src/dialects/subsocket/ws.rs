//! The SubSocket dialect's WebSocket side: each text (or UTF-8 binary) frame is one command
//! (`herald_protocol::subsocket`), carried out through the same hub operations as everything
//! else. Successful commands are silent, as in the original; bad ones get `__error` frames.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::client::{DisconnectReason, close_code};
use herald_core::hub::PublishRequest;
use herald_core::secret;
use herald_core::{
    Actor, ChannelName, ClientHandle, ClientId, Disconnect, ErrorCode, HeraldError, WireFormat,
};
use herald_protocol::subsocket::{self, Command, SUBSOCKET_WS, Unparsed};

use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

#[derive(Default)]
pub struct SubSocket;

impl Dialect for SubSocket {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        subsocket::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &SUBSOCKET_WS
    }

    /// The original sends nothing on connect.
    fn greeting(&self, _state: &AppState, _client: &ClientHandle) -> Option<Bytes> {
        None
    }

    fn same_origin_only(&self) -> bool {
        true
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
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
        let frame = std::str::from_utf8(&text).ok()?;
        self.run(frame)
            .await
            .err()
            .map(|e| subsocket::error_frame(&e))
    }

    async fn on_binary(&mut self, data: Bytes) -> Option<Bytes> {
        // The original parsed binary frames like text ones.
        match std::str::from_utf8(&data) {
            Ok(frame) => self
                .run(frame)
                .await
                .err()
                .map(|e| subsocket::error_frame(&e)),
            Err(_) => Some(subsocket::error_frame(&HeraldError::bad_request(
                "binary frame is not UTF-8 text",
            ))),
        }
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        Some(subsocket::error_frame(&HeraldError::new(
            ErrorCode::MessageTooLarge,
            format!("message of {len} bytes skipped: the limit is {limit} bytes"),
        )))
    }

    fn on_dropped(&mut self, _message: &[u8], error: &HeraldError) -> Option<Bytes> {
        Some(subsocket::error_frame(error))
    }
}

impl Session<'_> {
    async fn run(&self, frame: &str) -> Result<(), HeraldError> {
        let hub = &self.state.hub;
        let command = match subsocket::parse(frame) {
            Ok(c) => c,
            Err(Unparsed::Ignored) => return Ok(()),
            Err(Unparsed::Unknown(cmd)) => {
                return Err(HeraldError::new(
                    ErrorCode::UnknownOp,
                    format!("unknown command {:?}", herald_core::ids::truncate(cmd, 64)),
                ));
            }
            Err(Unparsed::MissingArgument(what)) => {
                return Err(HeraldError::new(
                    ErrorCode::MissingField,
                    format!("missing {what}"),
                ));
            }
            Err(Unparsed::BadArgument(what)) => {
                return Err(HeraldError::new(ErrorCode::BadRequest, what));
            }
        };
        match command {
            Command::Sub(name) => {
                let name = self.existing_channel(name)?;
                let added = hub.subscribe(&self.actor, self.client, &[name], None)?;
                hub.confirm_subscribed(self.client, &added).await?;
            }
            Command::Unsub(name) => {
                hub.unsubscribe(self.client, &[ChannelName::parse(name)?])?;
            }
            Command::AdminToken(token) => {
                if !secret::secrets_equal(token, &self.state.admin_key) {
                    return Err(HeraldError::new(
                        ErrorCode::Unauthorized,
                        "wrong admin token",
                    ));
                }
                hub.make_admin(self.client);
            }
            Command::Pub { channel, message } => {
                let req = PublishRequest {
                    channels: vec![self.existing_channel(channel)?],
                    data: subsocket::text_to_data(message),
                    to: None,
                    once_per_client: false,
                };
                hub.publish(&self.actor, req).await?;
            }
            Command::Broadcast(message) => {
                hub.broadcast(&self.actor, &subsocket::text_to_data(message))?;
            }
            Command::Message { to, message } => {
                let to = ClientId::parse(to)?;
                hub.send_direct(&self.actor, to, &subsocket::text_to_data(message))?;
            }
            Command::Ban { id, seconds } => {
                let id = ClientId::parse(id)?;
                hub.ban_client(&self.actor, id, seconds, "banned by an admin")
                    .await?;
            }
            Command::Kick(id) => {
                let disconnect = Disconnect::new(
                    DisconnectReason::Kicked,
                    close_code::KICKED,
                    "kicked by an admin",
                );
                hub.kick(&self.actor, ClientId::parse(id)?, disconnect)?;
            }
        }
        Ok(())
    }

    /// SubSocket channels are created by its REST API (`channels/put`), never on first use.
    fn existing_channel(&self, name: &str) -> Result<ChannelName, HeraldError> {
        let name = ChannelName::parse(name)?;
        if self.state.hub.registry().lookup(&name).is_none() {
            return Err(HeraldError::new(
                ErrorCode::ChannelNotFound,
                format!("channel {name:?} does not exist"),
            ));
        }
        Ok(name)
    }
}
