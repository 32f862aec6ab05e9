//! Why and how a connection ends: the reason the hub records ([`DisconnectReason`]), the
//! WebSocket close codes Herald uses ([`close_code`]) and the two together with the text for
//! the peer ([`Disconnect`]), which a client's outbox carries to its connection.

/// Why a connection ended. Each maps to a documented WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed the connection (or it dropped).
    ClosedByClient,
    /// An operator disconnected it; it may reconnect.
    Kicked,
    /// Its outbox overflowed: it did not read fast enough.
    SlowConsumer,
    /// No sign of life within the ping timeout.
    TimedOut,
    /// The server is shutting down.
    ServerShutdown,
    /// It broke the transport protocol (bad framing, invalid UTF-8, ...).
    ProtocolError,
    /// Its address was banned.
    Banned,
    /// It kept sending far past `limits.messages_per_second`.
    RateLimited,
    /// The channel it was made for was deleted, and its protocol cannot subscribe again
    /// (push-stream: [`WireFormat::closes_without_channels`](crate::WireFormat)).
    ChannelDeleted,
}

impl DisconnectReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClosedByClient => "closed_by_client",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::TimedOut => "timed_out",
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Banned => "banned",
            DisconnectReason::RateLimited => "rate_limited",
            DisconnectReason::ChannelDeleted => "channel_deleted",
        }
    }
}

/// WebSocket close codes Herald uses (documented in docs/protocol.md). 4000-4099: do not
/// reconnect; 4100-4199: reconnect with back-off; 4200-4299: reconnect at once.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    /// Disconnected by an operator; do not reconnect.
    pub const KICKED_NO_RECONNECT: u16 = 4000;
    /// Refused or disconnected by a ban; do not reconnect.
    pub const BANNED: u16 = 4003;
    /// Outbox overflow.
    pub const SLOW_CONSUMER: u16 = 4100;
    /// No pong/activity within the ping timeout.
    pub const TIMED_OUT: u16 = 4101;
    /// Kept sending far past the message rate limit.
    pub const RATE_LIMITED: u16 = 4102;
    /// Disconnected by an operator; may reconnect.
    pub const KICKED: u16 = 4200;
}

/// How a connection is to be closed: the reason for the hub, the code and text for the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: DisconnectReason,
    pub code: u16,
    pub message: String,
}

impl Disconnect {
    pub fn new(reason: DisconnectReason, code: u16, message: impl Into<String>) -> Self {
        Disconnect {
            reason,
            code,
            message: message.into(),
        }
    }
    pub fn slow_consumer() -> Self {
        Self::new(
            DisconnectReason::SlowConsumer,
            close_code::SLOW_CONSUMER,
            "slow consumer: outbox full",
        )
    }
    pub fn timed_out() -> Self {
        Self::new(
            DisconnectReason::TimedOut,
            close_code::TIMED_OUT,
            "ping timeout",
        )
    }
    pub fn shutdown() -> Self {
        Self::new(
            DisconnectReason::ServerShutdown,
            close_code::GOING_AWAY,
            "server shutting down",
        )
    }
}
