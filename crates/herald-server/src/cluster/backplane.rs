//! Which broker joins this node to the others (`[broker] type`), and assembling it: the
//! broker the hub publishes through, the store that shares bans and API channels, the
//! control plane, and the tasks that follow the broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Cluster, ControlPlane, nats, redis, relay};
use crate::state::AppState;

/// The broker joining this node to others, as configured in `[broker]`.
pub enum Backplane {
    Redis(Arc<redis::RedisBroker>),
    Nats(Arc<nats::NatsBroker>),
}

impl Backplane {
    /// Connects to the configured broker (`None` for `memory`: one node).
    pub async fn connect(
        config: &crate::config::BrokerConfig,
        node: &str,
    ) -> anyhow::Result<Option<Backplane>> {
        let backplane = match config.kind.as_str() {
            "redis" => {
                let r = redis::RedisBroker::connect(config).await?;
                r.set_node(node);
                Backplane::Redis(r)
            }
            "nats" => {
                let n = nats::NatsBroker::connect(config).await?;
                n.set_node(node);
                Backplane::Nats(n)
            }
            _ => return Ok(None),
        };
        Ok(Some(backplane))
    }

    pub fn broker(&self) -> Arc<dyn herald_core::Broker> {
        match self {
            Backplane::Redis(r) => r.clone(),
            Backplane::Nats(n) => n.clone(),
        }
    }

    /// The store the hub uses: bans and API channels kept in the broker (a Redis hash, a
    /// JetStream bucket) besides the node's own store, and announced to the other nodes.
    pub async fn shared_store(
        &self,
        local: Arc<dyn herald_core::Store>,
    ) -> anyhow::Result<Arc<dyn herald_core::Store>> {
        Ok(match self {
            Backplane::Redis(r) => Arc::new(r.shared_store(local)),
            Backplane::Nats(n) => Arc::new(
                n.shared_store(local)
                    .await
                    .map_err(|e| anyhow::anyhow!("broker: {e}"))?,
            ),
        })
    }

    /// Hooks the hub to the broker and makes the cluster's control plane.
    pub fn join(
        &self,
        hub: &herald_core::Hub,
        node: &str,
        config: &crate::config::BrokerConfig,
    ) -> Arc<Cluster> {
        let relay = relay::Relay::new(Duration::from_secs(config.presence_ttl_secs));
        hub.events().add_sink(relay.clone());
        let plane: Arc<dyn ControlPlane> = match self {
            Backplane::Redis(r) => r.clone(),
            Backplane::Nats(n) => n.clone(),
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let cluster = Arc::new(Cluster::new(plane, node.to_string(), timeout, relay));
        match self {
            Backplane::Redis(r) => hub.registry().set_interest(r.interest()),
            Backplane::Nats(n) => {
                n.set_cluster(&cluster);
                hub.registry().set_interest(n.interest());
            }
        }
        cluster
    }

    /// Starts the node's cluster tasks; returns once the node hears the others (at most the
    /// broker's timeout).
    pub async fn start(
        self,
        state: &Arc<AppState>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let down = || shutdown.clone();
        let mut tasks = Vec::new();
        let hearing = match &self {
            Backplane::Redis(r) => {
                tasks.push(tokio::spawn(redis::presence_writer(r.clone(), down())));
                tasks.push(tokio::spawn(redis::follow(
                    state.clone(),
                    r.clone(),
                    down(),
                )));
                tasks.push(tokio::spawn(redis::heartbeat(
                    state.clone(),
                    r.clone(),
                    down(),
                )));
                r.hearing().await
            }
            Backplane::Nats(n) => {
                tasks.push(tokio::spawn(nats::follow(state.clone(), n.clone(), down())));
                tasks.push(tokio::spawn(nats::heartbeat(
                    state.clone(),
                    n.clone(),
                    down(),
                )));
                n.hearing().await
            }
        };
        if !hearing {
            tracing::warn!("broker: not yet listening to the cluster; serving anyway");
        }
        if let Some(cluster) = &state.cluster {
            tasks.push(tokio::spawn(relay::send(cluster.clone(), down())));
        }
        tasks
    }
}
