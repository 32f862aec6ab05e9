//! The Eventual Agent dialect's WebSocket side: subscribe/unsubscribe/publish requests carried
//! out through the hub. Subscribing to `global` joins the firehose (every publication, once).
//! A publication to several channels reaches each client once, since Eventual frames do not
//! name the channel.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::hub::PublishRequest;
use herald_core::{Actor, ClientHandle, ErrorCode, HeraldError, WireFormat};
use herald_protocol::eventual::{self, BadRequest, EVENTUAL_WS, Request};

use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

pub const ENTRY: super::Entry = super::Entry {
    name: eventual::DIALECT,
    mount,
    streams: super::no_streams,
    own,
    upgrades: super::no_upgrades,
};

/// On the main listener: its WebSocket on every path under `dialects.eventual.prefix`.
fn mount(router: super::Routes, config: &crate::config::Config) -> super::Routes {
    super::mount_any_path::<Eventual>(router, &config.dialects.eventual)
}

/// Its own listener: its WebSocket on every path.
fn own(config: &crate::config::Config) -> Vec<super::OwnListener> {
    vec![super::OwnListener {
        name: "eventual",
        mount: config.dialects.eventual.clone(),
        serve: super::serve_any_path::<Eventual>,
    }]
}

#[derive(Default)]
pub struct Eventual;

impl Dialect for Eventual {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        eventual::DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &EVENTUAL_WS
    }

    /// The original sends nothing on connect.
    fn greeting(&self, _state: &AppState, _client: &ClientHandle) -> Option<Bytes> {
        None
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
        self.handle(text).await
    }

    /// The original read binary messages like text ones.
    async fn on_binary(&mut self, data: Bytes) -> Option<Bytes> {
        if std::str::from_utf8(&data).is_err() {
            let error = HeraldError::new(ErrorCode::InvalidJson, "binary message is not UTF-8");
            return Some(eventual::error_frame(&error));
        }
        self.handle(data).await
    }

    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        Some(eventual::error_frame(&HeraldError::new(
            ErrorCode::MessageTooLarge,
            format!("message of {len} bytes skipped: the limit is {limit} bytes"),
        )))
    }

    fn on_dropped(&mut self, _message: &[u8], error: &HeraldError) -> Option<Bytes> {
        Some(eventual::error_frame(error))
    }
}

impl Session<'_> {
    async fn handle(&self, frame: Bytes) -> Option<Bytes> {
        let text = std::str::from_utf8(&frame).ok()?;
        let request = match eventual::parse(text) {
            Ok(r) => r,
            Err(BadRequest::UnknownType) => return Some(eventual::invalid_request_frame()),
            Err(BadRequest::Invalid(e)) => return Some(eventual::error_frame(&e)),
        };
        self.execute(request, &frame)
            .await
            .err()
            .map(|e| eventual::error_frame(&e))
    }

    async fn execute(&self, request: Request<'_>, frame: &Bytes) -> Result<(), HeraldError> {
        let hub = &self.state.hub;
        match request {
            Request::Subscribe(channels) => {
                let (global, others): (Vec<_>, Vec<_>) = channels
                    .into_iter()
                    .partition(|c| c.as_str() == eventual::GLOBAL_CHANNEL);
                if !others.is_empty() {
                    let added = hub.subscribe(&self.actor, self.client, &others, None)?;
                    hub.confirm_subscribed(self.client, &added).await?;
                }
                if !global.is_empty() {
                    hub.subscribe_firehose(&self.actor, self.client, &global[0])?;
                }
            }
            Request::Unsubscribe(channels) => {
                if channels
                    .iter()
                    .any(|c| c.as_str() == eventual::GLOBAL_CHANNEL)
                {
                    hub.unsubscribe_firehose(self.client);
                }
                hub.unsubscribe(self.client, &channels)?;
            }
            Request::Publish { channels, event } => {
                let req = PublishRequest {
                    channels,
                    data: frame.slice_ref(event.get().as_bytes()),
                    to: None,
                    once_per_client: true,
                };
                hub.publish(&self.actor, req).await?;
            }
        }
        Ok(())
    }
}
