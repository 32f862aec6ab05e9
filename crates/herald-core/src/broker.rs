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

use std::future::Future;
use std::pin::Pin;

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::hub::registry::Registry;
use crate::ids::ClientId;
pub use crate::publication::{Interest, Publish, Published};

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
