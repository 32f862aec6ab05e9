//! What a wire format must be able to encode, and the per-publication encode cache.
//!
//! A [`WireFormat`] is one (protocol, transport) pair, e.g. "native JSON over WebSocket". It
//! turns hub events into complete, ready-to-write frames (transport framing included), so the
//! fan-out encodes a publication once per format and every subscriber's outbox shares the same
//! [`Bytes`].

use std::sync::Arc;

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ids::ClientId;

/// JSON text already validated by whoever received it; passed through without re-serializing.
pub type RawJson = Bytes;

/// One publication as the fan-out sees it.
#[derive(Clone, Debug)]
pub struct Message {
    pub channel: ChannelName,
    /// Position in the channel's stream: +1 per publication.
    pub offset: u64,
    /// Changes whenever the channel's offset sequence restarts.
    pub epoch: Arc<str>,
    /// The publishing client; `None` for the HTTP API and the server.
    pub from: Option<ClientId>,
    /// The payload: valid JSON text.
    pub data: RawJson,
    /// Wall-clock time of publication (milliseconds since the Unix epoch).
    pub time_ms: u64,
}

/// Encodes hub events into transport-ready frames for one kind of connection.
pub trait WireFormat: Send + Sync + 'static {
    /// Short name, shown in client listings (e.g. `"native"`). Unique per format: the fan-out
    /// keys its per-publication encode cache by it.
    fn name(&self) -> &'static str;
    /// A channel publication.
    fn message(&self, msg: &Message) -> Bytes;
    /// A message sent to this one client.
    fn direct(&self, from: Option<ClientId>, data: &[u8]) -> Bytes;
    /// The server removed a subscription (channel deleted, admin action); `None` when the
    /// protocol has no such notice.
    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes>;
    /// Whether a connection is closed once a deleted channel was its last subscription, after
    /// the [`WireFormat::unsubscribed`] notice: for protocols whose connections name their
    /// channels once, at connect (push-stream closes them so the client reconnects).
    fn closes_without_channels(&self) -> bool {
        false
    }
    /// For channels with `join_leave`: `client` (with its `user`) joined or left `channel`.
    /// `None` (the default): the protocol has no such notice.
    fn presence_change(
        &self,
        _channel: &ChannelName,
        _client: ClientId,
        _user: Option<&str>,
        _joined: bool,
    ) -> Option<Bytes> {
        None
    }
    /// A message an admin sent to every connected client. Defaults to a direct message.
    fn broadcast(&self, from: Option<ClientId>, data: &[u8]) -> Bytes {
        self.direct(from, data)
    }
    /// For admin connections: a client connected or disconnected. `None` (the default): the
    /// protocol does not announce connections.
    fn connection_notice(&self, _client: ClientId, _connected: bool) -> Option<Bytes> {
        None
    }
    /// For admin connections that asked for lifecycle events (`{"op":"events"}`): one event.
    /// `None` (the default): the protocol has no event frame.
    fn event(&self, _event: &crate::lifecycle::Event) -> Option<Bytes> {
        None
    }
    /// A keep-alive probe; the transport's answer counts as activity.
    fn keepalive(&self) -> Bytes;
    /// The transport its connections use, for metrics: `"websocket"` or `"http"`.
    fn transport(&self) -> &'static str {
        "websocket"
    }
    /// The frame one recipient gets from the shared encoding of [`WireFormat::message`].
    /// Formats whose deliveries carry per-recipient fields (WS-PushServer's uuid and
    /// subscription list) build them around the shared payload here, from the client's
    /// [`ClientHandle::format_state`](crate::ClientHandle); the default shares the bytes.
    fn for_recipient(&self, shared: &Bytes, _client: &crate::ClientHandle) -> Bytes {
        shared.clone()
    }
}

/// Encodes one message at most once per wire format. Formats are few (one per dialect and
/// transport), so a linear scan over a short vector beats hashing. Formats are told apart by
/// [`WireFormat::name`], which must be unique: they are zero-sized statics, and distinct
/// zero-sized statics may share an address, so a pointer would not do.
pub struct EncodeCache<'a> {
    msg: &'a Message,
    encoded: Vec<(&'static str, Bytes)>,
}

impl<'a> EncodeCache<'a> {
    pub fn new(msg: &'a Message) -> Self {
        EncodeCache {
            msg,
            encoded: Vec::new(),
        }
    }

    /// The frame for `format`, encoding it on first use.
    pub fn frame(&mut self, format: &'static dyn WireFormat) -> Bytes {
        let key = format.name();
        if let Some((_, bytes)) = self.encoded.iter().find(|(k, _)| *k == key) {
            return bytes.clone();
        }
        let bytes = format.message(self.msg);
        self.encoded.push((key, bytes.clone()));
        bytes
    }

    /// How many encodings were made (tests check it stays one per format).
    pub fn encodings(&self) -> usize {
        self.encoded.len()
    }
}
