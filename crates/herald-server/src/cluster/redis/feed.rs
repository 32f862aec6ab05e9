//! The node's pub/sub connection to Redis, whatever the topology ([`super::topology`]):
//! control messages on plain channels ([`Feed::listen`]), publications on the channels the
//! node follows ([`Feed::follow`]), and what arrives ([`Feed::next`]).
//!
//! - **Standalone / Sentinel**: one `PubSub` connection to the server (the master); SUBSCRIBE
//!   for everything. With Sentinel the feed ends ([`Incoming::Lost`]) when the node finds
//!   another master than the one it is connected to, so it reconnects there.
//! - **Cluster**: redis-rs's cluster connection in RESP3 with a push channel. Publications are
//!   followed with SSUBSCRIBE, which the connection sends to the shard owning the channel's
//!   slot (each shard delivers its channels' messages in order); control channels with
//!   SUBSCRIBE (a plain PUBLISH reaches every node of a cluster). When the connection to a
//!   shard breaks, redis-rs reconnects and subscribes again by itself; the feed reports
//!   [`Incoming::Interrupted`], since messages may have been missed meanwhile. A sharded
//!   subscription the server ends by itself (its slot moved) is [`Incoming::Dropped`].

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, watch};

/// What the pub/sub connection brought.
pub enum Incoming {
    /// A message on a Redis channel.
    Message(Msg),
    /// Messages may have been lost, but the subscriptions are back (a cluster shard's
    /// connection was re-established).
    Interrupted,
    /// The server ended the subscription to this sharded channel on its own.
    Dropped(String),
    /// The connection is gone (or points at a former master): open another feed.
    Lost,
}

/// A pub/sub connection.
pub enum Feed {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
        /// Sentinel: the newest master's address, and the one this feed is connected to.
        moved: Option<(watch::Receiver<String>, String)>,
    },
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Feed {
    pub fn single(pubsub: PubSub, moved: Option<(watch::Receiver<String>, String)>) -> Feed {
        let (sink, stream) = pubsub.split();
        Feed::Single {
            sink,
            stream,
            moved,
        }
    }

    pub fn cluster(
        conn: redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) -> Feed {
        Feed::Cluster { conn, pushes }
    }

    /// Subscribes to a plain channel (control messages).
    pub async fn listen(&mut self, topic: &str) -> RedisResult<()> {
        match self {
            Feed::Single { sink, .. } => sink.subscribe(topic).await,
            Feed::Cluster { conn, .. } => conn.subscribe(topic).await,
        }
    }

    /// Subscribes to a channel's publications (sharded in a cluster).
    pub async fn follow(&mut self, topic: &str) -> RedisResult<()> {
        match self {
            Feed::Single { sink, .. } => sink.subscribe(topic).await,
            Feed::Cluster { conn, .. } => conn.ssubscribe(topic).await,
        }
    }

    /// Unsubscribes from a channel's publications.
    pub async fn unfollow(&mut self, topic: &str) -> RedisResult<()> {
        match self {
            Feed::Single { sink, .. } => sink.unsubscribe(topic).await,
            Feed::Cluster { conn, .. } => conn.sunsubscribe(topic).await,
        }
    }

    /// The next thing that arrives. Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        match self {
            Feed::Single { stream, moved, .. } => tokio::select! {
                message = stream.next() => message.map_or(Incoming::Lost, Incoming::Message),
                () = moved_away(moved) => Incoming::Lost,
            },
            Feed::Cluster { pushes, .. } => loop {
                let Some(push) = pushes.recv().await else {
                    return Incoming::Lost;
                };
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some(message) = Msg::from_push_info(push) {
                            return Incoming::Message(message);
                        }
                    }
                    PushKind::Disconnection => return Incoming::Interrupted,
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(topic)) = push.data.first()
                            && let Ok(topic) = std::str::from_utf8(topic)
                        {
                            return Incoming::Dropped(topic.to_string());
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

/// Resolves when another master than this feed's was found (never without Sentinel).
async fn moved_away(moved: &mut Option<(watch::Receiver<String>, String)>) {
    let Some((newest, mine)) = moved else {
        return std::future::pending().await;
    };
    loop {
        if newest.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = newest.borrow_and_update().clone();
        if !now.is_empty() && now != *mine {
            return;
        }
    }
}
