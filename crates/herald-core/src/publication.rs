//! What the registry and the broker exchange: a publication to one channel ([`Publish`]),
//! what it became ([`Published`]), and the registry's word when a channel gains its first or
//! loses its last local subscriber ([`Interest`]). Both sides import this; neither imports
//! the other for it.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::channel::ChannelName;
use crate::format::RawJson;
use crate::ids::ClientId;

/// One publication to one channel, as handed to the broker.
#[derive(Clone, Debug)]
pub struct Publish {
    pub channel: ChannelName,
    pub from: Option<ClientId>,
    pub data: RawJson,
    /// Only these subscribers receive it (`None`: all).
    pub to: Option<Vec<ClientId>>,
    /// Shared by the publishes of one multi-channel publication whose clients must get it at
    /// most once (dialects whose frames do not name the channel): who already got it here.
    pub once: Option<Arc<Mutex<HashSet<ClientId>>>>,
    /// Options to create the channel with if it does not exist, so the publication is kept
    /// (set when the channel's defaults keep history); `None`: an absent channel records
    /// nothing.
    pub create: Option<crate::channel::ChannelOptions>,
}

/// What a publication became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The offset assigned; 0 when the channel did not exist (nothing was recorded).
    pub offset: u64,
    pub epoch: String,
    /// Subscribers on this node it was queued to.
    pub delivered: u64,
}

/// Told, under the channel's lock, when a channel gains its first local subscriber or loses
/// its last: a clustered broker follows only the channels this node needs. Must not block.
pub trait Interest: Send + Sync {
    fn occupied(&self, channel: &ChannelName);
    fn vacated(&self, channel: &ChannelName);
    /// A local client subscribed to a channel with presence or join/leave notices (`notify`:
    /// the other nodes' subscribers are to be told).
    fn joined(
        &self,
        _channel: &ChannelName,
        _client: ClientId,
        _user: Option<&str>,
        _notify: bool,
    ) {
    }
    /// A local client left such a channel.
    fn left(&self, _channel: &ChannelName, _client: ClientId, _user: Option<&str>, _notify: bool) {}
}
