//! Several nodes as one Herald: what is shared between nodes whatever carries it.
//!
//! - [`backplane`]: which broker joins the nodes, and starting its tasks.
//! - [`redis`]: the Redis broker (sequencing, history, presence and the backplane), over one
//!   server, a master found through Sentinel, or a Redis Cluster ([`redis::topology`]).
//! - [`nats`]: the NATS broker (the backplane only: order per publishing node, history per
//!   node).
//! - [`wire`]: what a publication and a presence record look like between nodes.
//! - [`control`]: operations one node asks the others to carry out (kick, send, subscribe a
//!   client it does not have, ...) and notices every node applies (bans, API channels,
//!   lifecycle events), with how each is carried out on the receiving node.
//! - [`shared`]: the store wrapper that keeps bans and API channels in the broker, so every
//!   node (and one started later) has them.
//! - [`relay`]: lifecycle events of this node for the other nodes' admin connections.
//!
//! [`Cluster`] is the control plane the HTTP API and connections use: it sends requests and
//! notices over a [`ControlPlane`] (Redis pub/sub or NATS subjects) and gathers the answers.

pub mod backplane;
pub mod carry;
pub mod control;
pub mod linger;
pub mod nats;
pub mod nats_shared;
pub mod redis;
pub mod relay;
pub mod shared;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_core::broker::BoxFuture;
use herald_core::stats::StatsSnapshot;
use herald_core::{ErrorCode, HeraldError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use backplane::Backplane;
pub use control::{Answer, Control, ControlRequest};

/// How control messages travel between nodes.
pub trait ControlPlane: Send + Sync + 'static {
    /// Sends a control request (JSON) to every node, this one included (it ignores its own).
    fn broadcast(&self, json: String) -> BoxFuture<'_, Result<(), HeraldError>>;
    /// Sends an answer (JSON) to the node named `node`.
    fn answer(&self, node: String, json: String) -> BoxFuture<'_, ()>;
    /// The live nodes (reported within the presence time to live), this one included, each
    /// with its last report.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<(String, Report)>, HeraldError>>;
}

/// What a node reports to the cluster every third of `presence_ttl_secs`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub at_ms: u64,
    /// The node's name and a random id of this start (`name#id`): presence entries of an
    /// earlier start of a node with the same name are not taken for live ones.
    #[serde(default)]
    pub instance: String,
    pub stats: StatsSnapshot,
    /// The lifecycle events its admin connections listen to ([`relay`]).
    #[serde(default)]
    pub listening: u32,
}

/// One node of the cluster, as `GET /api/v1/nodes` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub name: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub uptime_seconds: u64,
}

/// The control plane of this node.
pub struct Cluster {
    plane: Arc<dyn ControlPlane>,
    node: String,
    timeout: Duration,
    /// Requests sent to the other nodes, waiting for their answers, by request id.
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
    next_request: AtomicU64,
    pub relay: Arc<relay::Relay>,
    /// Asks for this node's report to be written now (its admin listeners changed).
    pub report_now: tokio::sync::Notify,
}

/// Removes a waiting control request when dropped (also when the asker gave up half-way).
struct Forget<'a>(&'a Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

pub use crate::config::redacted;

pub fn unavailable(what: impl std::fmt::Display) -> HeraldError {
    HeraldError::new(
        ErrorCode::BrokerUnavailable,
        format!("the broker is unavailable: {what}"),
    )
}

impl Cluster {
    pub fn new(
        plane: Arc<dyn ControlPlane>,
        node: String,
        timeout: Duration,
        relay: Arc<relay::Relay>,
    ) -> Cluster {
        Cluster {
            plane,
            node,
            timeout,
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            relay,
            report_now: tokio::sync::Notify::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends a notice every other node applies, without waiting for them.
    pub async fn notify(&self, control: Control) -> Result<(), HeraldError> {
        let request = ControlRequest {
            id: 0,
            from: self.node.clone(),
            control,
        };
        let json =
            serde_json::to_string(&request).map_err(|e| HeraldError::internal(e.to_string()))?;
        self.plane.broadcast(json).await
    }

    /// Has every other live node carry out `control` and returns their answers. Waits for
    /// every live node's answer, at most `timeout_ms`; a node that does not answer in time
    /// gives none.
    pub async fn ask(&self, control: Control) -> Result<Vec<Answer>, HeraldError> {
        let others = self
            .plane
            .nodes()
            .await?
            .into_iter()
            .filter(|(name, _)| *name != self.node)
            .count();
        if others == 0 {
            return Ok(Vec::new());
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().insert(id, tx);
        let _forget = Forget(&self.pending, id);
        let request = ControlRequest {
            id,
            from: self.node.clone(),
            control,
        };
        let json =
            serde_json::to_string(&request).map_err(|e| HeraldError::internal(e.to_string()))?;
        self.plane.broadcast(json).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut answers = Vec::new();
        while answers.len() < others {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => break,
            }
        }
        Ok(answers)
    }

    /// The sum of what the other nodes did (connections kicked, messages queued).
    pub async fn on_other_nodes(&self, control: Control) -> Result<u64, HeraldError> {
        Ok(self.ask(control).await?.iter().map(|a| a.count).sum())
    }

    /// For an operation on one client this node does not have: the answer of the node that
    /// has it (`None`: no node has it).
    pub async fn on_owner(
        &self,
        control: Control,
    ) -> Result<Option<Result<serde_json::Value, HeraldError>>, HeraldError> {
        let answers = self.ask(control).await?;
        Ok(answers
            .into_iter()
            .find(|a| a.count > 0)
            .map(Answer::into_result))
    }

    /// Hands an answer that arrived for this node to the request waiting for it.
    pub fn take_answer(&self, payload: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Answer>(payload) else {
            tracing::warn!("cluster: malformed control answer dropped");
            return;
        };
        if let Some(tx) = self.pending.lock().get(&answer.id) {
            let _ = tx.send(answer);
        }
    }

    /// Sends this node's answer to the asking node.
    pub fn reply(&self, to: String, answer: Answer) {
        let plane = self.plane.clone();
        tokio::spawn(async move {
            if let Ok(json) = serde_json::to_string(&answer) {
                plane.answer(to, json).await;
            }
        });
    }

    /// Every live node's figures, this one's first (`mine`).
    pub async fn nodes(
        &self,
        mine: StatsSnapshot,
    ) -> Result<Vec<(String, StatsSnapshot)>, HeraldError> {
        let mut out = vec![(self.node.clone(), mine)];
        for (name, report) in self.plane.nodes().await? {
            if name != self.node {
                out.push((name, report.stats));
            }
        }
        Ok(out)
    }
}

/// An operation on a client this node does not have (`e`: why it failed here): in a cluster,
/// the node that has the client carries it out and its answer is returned; else `e`. The
/// caller checked that the actor may do it to a client of its own node.
pub async fn on_owner(
    cluster: Option<&Cluster>,
    e: HeraldError,
    control: Control,
) -> Result<serde_json::Value, HeraldError> {
    match cluster {
        Some(cluster) if e.code == ErrorCode::ClientNotFound => {
            cluster.on_owner(control).await?.unwrap_or(Err(e))
        }
        _ => Err(e),
    }
}

/// Whether a node's report made at `at_ms` (its clock) is current at `now` (this node's):
/// within `ttl` either way, so clocks may differ by up to `ttl`.
pub fn fresh(at_ms: u64, now: u64, ttl: std::time::Duration) -> bool {
    now.abs_diff(at_ms) <= ttl.as_millis() as u64
}

/// Sums the nodes' counters (uptime: this node's, the first); `None` for no nodes. Counters
/// come from other nodes' reports: the sums saturate rather than overflow.
pub fn sum(nodes: &[(String, StatsSnapshot)]) -> Option<StatsSnapshot> {
    let mut total = serde_json::Map::new();
    for (_, stats) in nodes {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(stats) else {
            continue;
        };
        for (k, v) in fields {
            let add = v.as_u64().unwrap_or(0);
            let entry = total.entry(k.clone()).or_insert(serde_json::json!(0u64));
            *entry = serde_json::json!(entry.as_u64().unwrap_or(0).saturating_add(add));
        }
    }
    let (_, mine) = nodes.first()?;
    total.insert(
        "uptime_seconds".into(),
        serde_json::json!(mine.uptime_seconds),
    );
    total.insert("nodes".into(), serde_json::json!(nodes.len() as u64));
    serde_json::from_value(serde_json::Value::Object(total)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_report_is_fresh_within_the_ttl_either_way() {
        let ttl = Duration::from_secs(30);
        let now = 1_000_000_000;
        assert!(fresh(now, now, ttl));
        assert!(fresh(now - 30_000, now, ttl));
        assert!(fresh(now + 30_000, now, ttl));
        assert!(!fresh(now - 30_001, now, ttl));
        // A ghost entry from far ahead is not live for good.
        assert!(!fresh(now + 30_001, now, ttl));
        assert!(!fresh(u64::MAX, now, ttl));
    }

    /// Forged reports with counters near the top of u64 once made `/api/v1/stats` panic on
    /// overflow (debug builds) or wrap (release).
    #[test]
    fn sums_of_huge_counters_saturate() {
        let huge = StatsSnapshot {
            connections: u64::MAX,
            messages_in: u64::MAX,
            ..StatsSnapshot::default()
        };
        let nodes = vec![("a".to_string(), huge.clone()), ("b".to_string(), huge)];
        let total = serde_json::to_value(sum(&nodes).unwrap()).unwrap();
        assert_eq!(total["nodes"], 2);
        for (k, v) in total.as_object().unwrap() {
            if k != "nodes" && k != "uptime_seconds" {
                assert!(v.as_u64().is_some(), "{k}: {v}");
            }
        }
        assert_eq!(total["connections"], u64::MAX);
        assert_eq!(total["messages_in"], u64::MAX);
    }
}
