//! The WS-PushServer dialect's WebSocket side: `CLIENT_ACK` "Connected" with the client's
//! uuid, `CLIENT_ACTION` SUBSCRIBE / UNSUBSCRIBE acknowledged with the current subscription
//! list, pushes as `CLIENT_PUSH`. A missing `uuid` is inferred from the connection; a wrong one
//! is refused and nothing is done.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Actor, ChannelName, ClientHandle, ClientId, ErrorCode, HeraldError, WireFormat};
use herald_protocol::wspush::{self, ClientAction, Refused, WSPUSH_WS};

use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

#[derive(Default)]
pub struct WsPush;

impl Dialect for WsPush {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        wspush::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &WSPUSH_WS
    }

    fn greeting(&self, _state: &AppState, client: &ClientHandle) -> Option<Bytes> {
        let data = wspush::client_data(client.id, &[]);
        Some(wspush::ws_frame(&wspush::envelope(
            "CLIENT_ACK",
            200,
            "Connected",
            &data,
        )))
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

fn error_frame(code: u16, message: &str, details: &str) -> Bytes {
    wspush::ws_frame(&wspush::error(code, message, details))
}

impl DialectSession for Session<'_> {
    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        let raw = std::str::from_utf8(&text).ok()?;
        let (uuid, channel, subscribe) = match wspush::parse_client(raw) {
            Ok(ClientAction::Ignored) => return None,
            Ok(ClientAction::Subscribe { uuid, channel }) => (uuid, channel, true),
            Ok(ClientAction::Unsubscribe { uuid, channel }) => (uuid, channel, false),
            Err(Refused::BadJson) => return Some(error_frame(400, "Bad JSON", raw)),
            Err(Refused::Invalid) => return Some(error_frame(400, "Invalid message", raw)),
        };
        if let Some(uuid) = uuid.and_then(|u| ClientId::parse(&u).ok())
            && uuid != self.client.id
        {
            // As the original: another connection's uuid, or nobody's.
            let whose = if self.state.hub.registry().client(uuid).is_some() {
                "this"
            } else {
                "any"
            };
            return Some(error_frame(
                403,
                "Forbidden",
                &format!("The given UUID does not belong to {whose} WebSocket connection"),
            ));
        }
        let not_found = || {
            error_frame(
                404,
                "Not found",
                &format!("Could not find a WebSocketChannel called \"{channel}\""),
            )
        };
        let Ok(name) = ChannelName::parse(&channel) else {
            return Some(not_found());
        };
        let hub = &self.state.hub;
        if hub.registry().lookup(&name).is_none() {
            return Some(not_found());
        }
        let result = if subscribe {
            match hub.subscribe(&self.actor, self.client, &[name], None) {
                Ok(added) => hub.confirm_subscribed(self.client, &added).await,
                Err(e) => Err(e),
            }
        } else {
            hub.unsubscribe(self.client, &[name]).map(|_| ())
        };
        if let Err(e) = result {
            let status = e.code.http_status();
            let message = if e.code == ErrorCode::Forbidden {
                "Forbidden"
            } else {
                "Bad Request"
            };
            return Some(error_frame(status, message, &e.message));
        }
        let channels = self.client.subscriptions();
        *self.client.format_state.lock() = wspush::channel_list(&channels);
        let ack = if subscribe {
            "Subscribed"
        } else {
            "Unsubscribed"
        };
        let data = wspush::client_data(self.client.id, &channels);
        Some(wspush::ws_frame(&wspush::envelope(
            "CLIENT_ACK",
            200,
            ack,
            &data,
        )))
    }

    /// Binary frames were ignored by the original.
    async fn on_binary(&mut self, _data: Bytes) -> Option<Bytes> {
        None
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        Some(error_frame(
            400,
            "Invalid message",
            &format!("message of {len} bytes is over the {limit}-byte limit"),
        ))
    }

    fn on_dropped(&mut self, _message: &[u8], error: &HeraldError) -> Option<Bytes> {
        Some(error_frame(429, "Too Many Requests", &error.message))
    }
}
