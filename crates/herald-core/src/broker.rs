//! The broker: the one place that knows whether Herald runs on one node or many.
//!
//! It assigns each publication its position in the channel's stream (offset and epoch) and
//! hands it to the fan-out of every node. [`MemoryBroker`] is the single-node implementation:
//! offsets live in the local registry's channel state and the fan-out happens in the same
//! critical section, so every subscriber sees a channel's publications in offset order.
//! Clustered brokers (herald-server's `cluster` module) carry publications between nodes:
//! Redis assigns offsets centrally and each node calls
//! [`Registry::deliver_at`](crate::hub::Registry); NATS carries them and each node sequences
//! what arrives locally.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::format::RawJson;
use crate::hub::Registry;
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

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Broker: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Several nodes share channels through it.
    fn is_clustered(&self) -> bool {
        false
    }
    fn publish<'a>(
        &'a self,
        local: &'a Registry,
        publish: Publish,
    ) -> BoxFuture<'a, Result<Published, HeraldError>>;
    /// Resolves once publications to `channels` from every node reach this one (a clustered
    /// broker: once its backplane subscriptions are in place). A subscriber is answered only
    /// then, so it misses nothing published after its reply.
    fn ready<'a>(&'a self, _channels: &'a [ChannelName]) -> BoxFuture<'a, Result<(), HeraldError>> {
        Box::pin(async { Ok(()) })
    }
    /// Who is subscribed to `channel` on every node; `None`: this node's registry knows
    /// (single node).
    fn presence<'a>(
        &'a self,
        _local: &'a Registry,
        _channel: &'a ChannelName,
    ) -> BoxFuture<'a, Result<Option<Vec<Present>>, HeraldError>> {
        Box::pin(async { Ok(None) })
    }
    /// Before a recovery: completes the local history of `channels` (held by the registry,
    /// so followed) from the backplane's, so a client recovers on any node. Single node:
    /// nothing to do.
    fn prepare<'a>(
        &'a self,
        _local: &'a Registry,
        _channels: &'a [ChannelName],
    ) -> BoxFuture<'a, Result<(), HeraldError>> {
        Box::pin(async { Ok(()) })
    }
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

/// One subscriber as the cluster's presence knows it.
pub type Present = (ClientId, Option<String>);

/// Single-node broker: sequencing and fan-out in the local registry.
#[derive(Default)]
pub struct MemoryBroker;

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn publish<'a>(
        &'a self,
        local: &'a Registry,
        publish: Publish,
    ) -> BoxFuture<'a, Result<Published, HeraldError>> {
        Box::pin(async move { Ok(local.publish_sequenced(&publish)) })
    }
}
