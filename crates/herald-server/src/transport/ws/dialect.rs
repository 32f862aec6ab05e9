//! The seam between the WebSocket transport and a protocol: the native protocol today, the
//! seed dialects next (issue 3). The connection task in [`super::connection`] owns the socket,
//! the framing, keep-alive, the outbox and closing; a [`Dialect`] only says how its clients are
//! greeted and encoded, and its [`DialectSession`] turns each message into hub operations and
//! an optional reply frame. Dialects never own channels or clients: they call the hub.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ClientHandle, HeraldError, WireFormat};

use crate::config::WebSocketConfig;
use crate::state::AppState;

/// A protocol spoken over WebSocket.
pub trait Dialect: Send + Sync + 'static {
    type Session<'a>: DialectSession + Send
    where
        Self: 'a;

    /// Name shown in client listings, e.g. `"native"`.
    fn name(&self) -> &'static str;
    /// How hub events (publications, direct messages, notices, keep-alives) are encoded.
    fn format(&self) -> &'static dyn WireFormat;
    /// Refuse browser handshakes whose `Origin` host differs from `Host` (as the original
    /// server of the dialect did).
    fn same_origin_only(&self) -> bool {
        false
    }
    /// Whether the handshake's `Authorization: Bearer` / `?token=` is a Herald credential
    /// (admin key or connection token) to verify. Dialects whose original used those for
    /// something else leave them alone.
    fn takes_credentials(&self) -> bool {
        false
    }
    /// A frame telling the client of an error outside any request (e.g. its token's channels
    /// were refused at connect), if the protocol has one.
    fn error_frame(&self, _error: &HeraldError) -> Option<Bytes> {
        None
    }
    /// The largest message a client may send (`websocket.max_message_bytes` unless the
    /// dialect says otherwise: the debug echo takes more, for Autobahn's section 9).
    fn max_message_bytes(&self, websocket: &WebSocketConfig) -> usize {
        websocket.max_message_bytes
    }
    /// A frame to queue right after the handshake, if the protocol has one.
    fn greeting(&self, state: &AppState, client: &ClientHandle) -> Option<Bytes>;
    /// Whether the greeting comes from [`DialectSession::on_open`] instead (it reports on
    /// requests carried out first, e.g. subscriptions named in the URL).
    fn greets_late(&self) -> bool {
        false
    }
    /// The per-connection state.
    fn session<'a>(
        &'a self,
        state: &'a Arc<AppState>,
        client: &'a Arc<ClientHandle>,
    ) -> Self::Session<'a>;
}

/// One connection's protocol state. Each method returns the reply frame to queue, if any.
pub trait DialectSession {
    fn on_text(&mut self, text: Bytes) -> impl Future<Output = Option<Bytes>> + Send;
    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = Option<Bytes>> + Send;
    /// A message of `len` bytes was over `limit` and skipped.
    fn on_too_large(&mut self, len: u64, limit: usize) -> Option<Bytes>;
    /// `message` was dropped by a limit (`limits.messages_per_second`): the frame telling the
    /// client so, if the protocol has one.
    fn on_dropped(&mut self, _message: &[u8], _error: &HeraldError) -> Option<Bytes> {
        None
    }
    /// Before anything else, when the dialect [`greets_late`](Dialect::greets_late): carries
    /// out what the handshake asked and returns the greeting, queued ahead of everything.
    fn on_open(&mut self) -> impl Future<Output = Option<Bytes>> + Send {
        async { None }
    }
    /// The connection is ending; its subscriptions are still in place.
    fn on_close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
