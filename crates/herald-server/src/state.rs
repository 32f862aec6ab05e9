//! What every handler and connection task shares: the hub and the node's services, built
//! once by [`crate::server`].

use std::sync::Arc;

use herald_core::Hub;

use crate::config::Config;

/// Shared by every handler and connection task.
pub struct AppState {
    pub hub: Hub,
    pub config: Config,
    pub admin_key: String,
    /// Verifies JSON Web Tokens, when `[jwt]` has a key.
    pub jwt: Option<crate::jwt::JwtVerifier>,
    /// WebSocket connections admitted (handshake accepted, not yet ended).
    pub ws_connections: std::sync::atomic::AtomicUsize,
    /// Per-IP, per-user, connection-rate, origin and message-rate limits.
    pub limits: Arc<crate::limits::Limits>,
    /// The app backend's auth hook (`[auth_hook]`) and its HTTP client.
    pub auth_hook: crate::auth_hook::AuthHook,
    /// This node's name (`node_name`, else the host name and the bound port).
    pub node_name: String,
    /// The control plane joining this node to a cluster, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Prometheus metrics (`GET /metrics`) and the handles the hot path records into.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// What credentials are checked against.
    pub fn keys(&self) -> crate::auth::Keys<'_> {
        crate::auth::Keys {
            admin_key: &self.admin_key,
            jwt: self.jwt.as_ref(),
        }
    }

    /// The limits' handle on this node.
    pub fn guard(&self) -> crate::limits::Guard<'_> {
        crate::limits::Guard {
            limits: &self.limits,
            stats: self.hub.stats(),
        }
    }
}

impl AsRef<Hub> for AppState {
    fn as_ref(&self) -> &Hub {
        &self.hub
    }
}
