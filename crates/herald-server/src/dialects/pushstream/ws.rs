//! The push-stream dialect's WebSocket side (`/subscribe/<ch1>/<ch2>`; channels as
//! [`super::subscriber`] says). Text a subscriber sends is published to all its channels
//! (where policy allows) and answered with a WebSocket ping, as the original.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::Bytes;
use herald_core::client::{DisconnectReason, close_code};
use herald_core::history::Replay;
use herald_core::hub::PublishRequest;
use herald_core::{Actor, ClientHandle, Disconnect, WireFormat};
use herald_protocol::pushstream::{self, PUSHSTREAM_WS};
use herald_protocol::ws;

use super::subscriber::{self, Subscriber};
use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

/// One subscriber's connection.
pub struct PushStream {
    subscriber: Subscriber,
}

/// `GET <prefix>/subscribe/<channels>` (or `?channels=`): the subscriber's WebSocket.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let subscriber = match subscriber::subscriber(&state, req.uri(), req.headers()).await {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    crate::transport::ws::upgrade_to(PushStream { subscriber }, state, remote, req)
}

impl Dialect for PushStream {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        pushstream::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &PUSHSTREAM_WS
    }

    fn greeting(&self, _state: &AppState, _client: &ClientHandle) -> Option<Bytes> {
        None
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
        let actor = Actor::Client(client.clone());
        let subscriber = self.subscriber.actor(client);
        let names = self.subscriber.names();
        if let Err(e) = state
            .hub
            .subscribe_replaying(&subscriber, client, &names, None, |name| {
                match self.subscriber.backtrack(name) {
                    0 => Replay::Nothing,
                    n => Replay::Last(n),
                }
            })
        {
            // The original closed with the status and reason after the upgrade.
            let reason = format!("{}: {}", e.code, e.message);
            client.outbox.close(Disconnect::new(
                DisconnectReason::ProtocolError,
                close_code::POLICY,
                reason,
            ));
        }
        Session {
            state,
            client,
            actor,
        }
    }
}

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    actor: Actor,
}

impl DialectSession for Session<'_> {
    /// Published to every channel of the subscriber; answered with a ping.
    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        let text = std::str::from_utf8(&text).ok()?;
        let channels = self.client.subscriptions();
        if channels.is_empty() {
            return Some(ws::ping_frame());
        }
        let req = PublishRequest {
            channels,
            data: pushstream::text_to_data(text),
            to: None,
            once_per_client: false,
        };
        match self.state.hub.publish(&self.actor, req).await {
            Ok(_) => Some(ws::ping_frame()),
            Err(e) => {
                tracing::debug!(client = %self.client.id, error = %e, "push-stream publish refused");
                Some(ws::ping_frame())
            }
        }
    }

    async fn on_binary(&mut self, _data: Bytes) -> Option<Bytes> {
        None
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        tracing::debug!(client = %self.client.id, len, limit, "push-stream message too large, skipped");
        None
    }
}
