//! What happened to a client or a channel: the kinds of lifecycle event ([`EventType`]), the
//! set of kinds a listener wants ([`EventMask`]) and one event as emitted ([`Event`]). The
//! bus that emits them is [`crate::events`]; the wire formats encode them
//! ([`crate::format::WireFormat`]).

/// The kinds of lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    ClientConnected,
    ClientDisconnected,
    ClientSubscribed,
    ClientUnsubscribed,
    ChannelOccupied,
    ChannelVacated,
    ClientBanned,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::ClientConnected,
        EventType::ClientDisconnected,
        EventType::ClientSubscribed,
        EventType::ClientUnsubscribed,
        EventType::ChannelOccupied,
        EventType::ChannelVacated,
        EventType::ClientBanned,
    ];

    /// The name on the wire, e.g. `"client.connected"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::ClientConnected => "client.connected",
            EventType::ClientDisconnected => "client.disconnected",
            EventType::ClientSubscribed => "client.subscribed",
            EventType::ClientUnsubscribed => "client.unsubscribed",
            EventType::ChannelOccupied => "channel.occupied",
            EventType::ChannelVacated => "channel.vacated",
            EventType::ClientBanned => "client.banned",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of event types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventMask(pub(crate) u32);

impl EventMask {
    pub const NONE: EventMask = EventMask(0);
    pub const ALL: EventMask = EventMask((1 << EventType::ALL.len()) - 1);

    pub fn of(types: impl IntoIterator<Item = EventType>) -> EventMask {
        EventMask(types.into_iter().fold(0, |m, t| m | t.bit()))
    }

    /// Parses names (`"*"` = all); the error names the first unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<EventMask, String> {
        let mut mask = EventMask::NONE;
        for name in names {
            if name == "*" {
                mask = EventMask::ALL;
                continue;
            }
            let t = EventType::parse(name).ok_or_else(|| name.to_string())?;
            mask.0 |= t.bit();
        }
        Ok(mask)
    }

    /// The bits, for carrying a mask between nodes.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// A mask carried between nodes (unknown bits dropped).
    pub fn from_bits(bits: u32) -> EventMask {
        EventMask(bits & EventMask::ALL.0)
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn types(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| self.contains(*t))
    }

    pub fn union(self, other: EventMask) -> EventMask {
        EventMask(self.0 | other.0)
    }
}

/// One event.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventType,
    /// Server-wide sequence number, increasing in emission order (unique per process run).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The event's fields (a JSON object): `client`, `user`, `channel`, `reason`, ... as
    /// documented in docs/events.md.
    pub data: serde_json::Map<String, serde_json::Value>,
}
