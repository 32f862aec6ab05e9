//! The debug echo: a WebSocket at [`PATH`] on the main listener (plain TCP and TLS) that sends
//! every text and binary message back as it came. Mounted only with `[debug] ws_echo = true`
//! (or `herald serve --debug-ws-echo`); never in production: anyone may connect, and it takes
//! messages up to [`MAX_MESSAGE_BYTES`].
//!
//! It exists so conformance suites (Autobahn|Testsuite, `scripts/autobahn`, docs/conformance.md)
//! test Herald's own WebSocket code: it is a [`Dialect`] like any other, so its connections go
//! through the same admission, the same upgrade (served on the socket for plain TCP, through
//! hyper for TLS), the same connection task, frame decoder and close handling as every real
//! client's. Only two things are its own: its message limit (Autobahn's section 9 sends
//! messages of up to 16 MiB; `websocket.max_message_bytes` for real clients stays as
//! configured) and the outbox room its echoes may take.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::client::{Disconnect, DisconnectReason};
use herald_core::outbox::Push;
use herald_core::stats::Stats;
use herald_core::{ChannelName, ClientHandle, ClientId, Message, WireFormat};
use herald_protocol::ws;

use crate::config::{Config, WebSocketConfig};
use crate::state::AppState;
use crate::transport::ws::{Dialect, DialectSession};

/// Its name in client listings.
pub const DIALECT: &str = "echo";
/// Where it is mounted when on.
pub const PATH: &str = "/debug/echo";
/// The largest message it takes: Autobahn's largest (cases 9.1.6 and 9.2.6).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// What its echoes may hold queued: two of the largest messages.
const OUTBOX_MAX_BYTES: usize = 2 * (MAX_MESSAGE_BYTES + ws::MAX_HEADER);
/// The close code for a message over [`MAX_MESSAGE_BYTES`] (RFC 6455: "message too big").
const MESSAGE_TOO_BIG: u16 = 1009;

pub const ENTRY: super::Entry = super::Entry {
    name: DIALECT,
    mount,
    streams: super::no_streams,
    own: super::no_listeners,
    upgrades,
};

/// On the main listener at [`PATH`], with `[debug] ws_echo` only.
fn mount(router: super::Routes, config: &Config) -> super::Routes {
    if !config.debug.ws_echo {
        return router;
    }
    router.route(
        PATH,
        axum::routing::get(crate::transport::ws::upgrade::<Echo>),
    )
}

/// Its plain-TCP upgrades are served on the socket, as `/ws`'s are.
fn upgrades(config: &Config) -> Vec<String> {
    if config.debug.ws_echo {
        vec![PATH.to_string()]
    } else {
        Vec::new()
    }
}

#[derive(Default)]
pub struct Echo;

impl Dialect for Echo {
    type Session<'a> = Session<'a>;

    fn name(&self) -> &'static str {
        DIALECT
    }

    fn format(&self) -> &'static dyn WireFormat {
        &ECHO_WS
    }

    fn max_message_bytes(&self, _websocket: &WebSocketConfig) -> usize {
        MAX_MESSAGE_BYTES
    }

    fn greeting(&self, _state: &AppState, _client: &ClientHandle) -> Option<Bytes> {
        None
    }

    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Session<'a> {
        Session { state, client }
    }
}

pub struct Session<'a> {
    state: &'a AppState,
    client: &'a Arc<ClientHandle>,
}

impl Session<'_> {
    /// Queues the echo itself, with room for [`MAX_MESSAGE_BYTES`] messages (a reply returned
    /// to the connection would be held to `websocket.outbox_max_bytes`).
    fn echo(&self, opcode: u8, payload: &[u8]) -> Option<Bytes> {
        let frame = ws::frame(opcode, payload);
        if self.client.outbox.push(frame, OUTBOX_MAX_BYTES) == Push::Full
            && self.client.outbox.close(Disconnect::slow_consumer())
        {
            Stats::add(&self.state.hub.stats().slow_consumers, 1);
        }
        None
    }
}

impl DialectSession for Session<'_> {
    async fn on_text(&mut self, text: Bytes) -> Option<Bytes> {
        self.echo(ws::OP_TEXT, &text)
    }

    async fn on_binary(&mut self, data: Bytes) -> Option<Bytes> {
        self.echo(ws::OP_BINARY, &data)
    }

    /// An echo has no error message to send: the connection is closed with 1009.
    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes> {
        self.client.outbox.close(Disconnect::new(
            DisconnectReason::ProtocolError,
            MESSAGE_TOO_BIG,
            format!("message of {len} bytes: the limit is {limit} bytes"),
        ));
        None
    }
}

/// What the hub sends an echo connection (it subscribes to nothing; an admin may still send
/// it a message through the HTTP API): the data as a text frame, and pings.
pub struct EchoWs;

pub static ECHO_WS: EchoWs = EchoWs;

impl WireFormat for EchoWs {
    fn name(&self) -> &'static str {
        DIALECT
    }

    fn message(&self, m: &Message) -> Bytes {
        ws::frame(ws::OP_TEXT, &m.data)
    }

    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        ws::frame(ws::OP_TEXT, data)
    }

    fn unsubscribed(&self, _channel: &ChannelName, _reason: &str) -> Option<Bytes> {
        None
    }

    fn keepalive(&self) -> Bytes {
        ws::ping_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off, nothing is served; on, its plain-TCP upgrades are served on the socket as `/ws`'s.
    #[test]
    fn upgrade_paths_follow_the_switch() {
        let mut config = Config::default();
        assert_eq!(super::super::main_upgrade_paths(&config), ["/ws"]);
        config.debug.ws_echo = true;
        assert_eq!(super::super::main_upgrade_paths(&config), ["/ws", PATH]);
    }
}
