//! `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]), on the main listener
//! for the admin key, and on `metrics_listen`'s listener of its own without one.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::auth::Caller;
use crate::error::ApiError;
use crate::metrics::{BrokerHealth, ConnectionCount};
use crate::state::AppState;

/// `GET /metrics` on the main listener: the admin's.
pub async fn with_key(State(state): State<Arc<AppState>>, Caller(actor): Caller) -> Response {
    if let Err(e) = actor.require_admin("reading metrics") {
        return ApiError(e).into_response();
    }
    exposition(&state).await
}

/// `GET /metrics` on `metrics_listen`.
async fn open(State(state): State<Arc<AppState>>) -> Response {
    exposition(&state).await
}

/// The listener of `metrics_listen`: `/metrics` and `/healthz`.
pub fn listener(state: Arc<AppState>) -> axum::Router {
    Router::new()
        .route("/metrics", get(open))
        .route("/healthz", get(super::routes::healthz))
        .fallback(super::routes::not_found)
        .with_state(state)
}

async fn exposition(state: &AppState) -> Response {
    let stats = state.hub.stats_snapshot();
    // Connections by dialect and transport, counted at the scrape (not on the hot path).
    let mut by: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    for client in state.hub.registry().all_clients() {
        *by.entry((client.info.dialect, client.format.transport()))
            .or_default() += 1;
    }
    let connections: Vec<ConnectionCount> = by
        .into_iter()
        .map(|((dialect, transport), connections)| ConnectionCount {
            dialect,
            transport,
            connections,
        })
        .collect();
    let broker = match &state.cluster {
        None => None,
        Some(cluster) => {
            let asked = std::time::Instant::now();
            let answer = cluster.nodes(stats.clone()).await;
            Some(match answer {
                Ok(nodes) => BrokerHealth {
                    up: true,
                    nodes: nodes.len() as u64,
                    round_trip_seconds: Some(asked.elapsed().as_secs_f64()),
                },
                Err(_) => BrokerHealth {
                    up: false,
                    nodes: 1,
                    round_trip_seconds: None,
                },
            })
        }
    };
    let text = state.metrics.render(&stats, &connections, broker.as_ref());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
