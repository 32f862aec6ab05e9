//! A native-protocol session: turns each parsed request into one hub operation and its
//! reply. The same hub calls back the HTTP API, so codes and rules match.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::hub::PublishRequest;
use herald_core::stats::Stats;
use herald_core::{Actor, ClientHandle, HeraldError};
use herald_protocol::native::{self, Op};
use serde_json::json;

use crate::server::AppState;

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
    actor: Actor,
}

impl<'a> Session<'a> {
    pub fn new(state: &'a Arc<AppState>, client: &'a Arc<ClientHandle>) -> Self {
        Session {
            state,
            client,
            actor: Actor::Client(client.clone()),
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.state.config.websocket.max_message_bytes
    }

    /// Queues a reply to this client (a client that never reads its replies ends up a slow
    /// consumer like any other).
    pub fn reply(&self, frame: Bytes) {
        self.state.hub.registry().push_or_close(self.client, frame);
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
        match (self.execute(req.op, &text).await, req.id) {
            (Ok(result), Some(id)) => Some(native::reply_ok(id, &result)),
            (Ok(_), None) => None,
            (Err(e), id) => Some(native::reply_error(id, &e)),
        }
    }

    async fn execute(&self, op: Op<'_>, frame: &Bytes) -> Result<serde_json::Value, HeraldError> {
        let hub = &self.state.hub;
        match op {
            Op::Subscribe { channels, token } => {
                let changed =
                    hub.subscribe(&self.actor, self.client, &channels, token.as_deref())?;
                Ok(json!({ "channels": channels, "changed": changed }))
            }
            Op::Unsubscribe { channels } => {
                let changed = hub.unsubscribe(self.client, &channels)?;
                Ok(json!({ "channels": channels, "changed": changed }))
            }
            Op::Publish { channels, data, to } => {
                let data = frame.slice_ref(data.get().as_bytes());
                let results = hub
                    .publish(&self.actor, PublishRequest { channels, data, to })
                    .await?;
                Ok(json!({ "channels": results }))
            }
            Op::Send { to, data } => {
                hub.send_direct(&self.actor, to, data.get().as_bytes())?;
                Ok(json!({ "sent": true }))
            }
            Op::Ping => Ok(json!({ "pong": true })),
        }
    }
}
