//! Prometheus metrics: what `GET /metrics` renders, through `metrics-exporter-prometheus`'s
//! recorder (one per server, not the process-wide one, so servers in one process do not mix).
//!
//! The hot path pays nothing new for the counters: they are the hub's own `Stats` counters
//! (per core, see `herald_core::stats::Counter`; the gauges are its live figures), copied
//! into the recorder when a scrape renders. Three things are measured where they happen:
//! bytes written (per write batch, in a per-core counter of its own), the publish-to-write latency (one publication-led write batch in [`SAMPLE_EVERY`] per
//! connection: the batch's first publication, timed from its fan-out), and the auth hook's
//! answer time. The samples are folded into their histograms every second ([`Metrics::upkeep`]),
//! so they never pile up between scrapes.

use std::sync::Arc;

use herald_core::stats::StatsSnapshot;
use metrics::{Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new("herald", Level::INFO, None);

/// One write batch in this many, per connection, is timed for the publish-to-write
/// histogram (a fan-out to many connections would otherwise record one sample per delivery).
pub const SAMPLE_EVERY: u32 = 16;

/// Latency buckets, in seconds (100 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Connections now, by dialect and transport (`websocket` or `http`).
pub struct ConnectionCount {
    pub dialect: &'static str,
    pub transport: &'static str,
    pub connections: u64,
}

/// What the broker reports at a scrape, on a cluster.
pub struct BrokerHealth {
    pub up: bool,
    pub nodes: u64,
    /// The time a question to every live node took to be answered, in seconds.
    pub round_trip_seconds: Option<f64>,
}

/// One server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Bytes written to clients (WebSocket and HTTP streams): counted per core, copied into
    /// the recorder when a scrape renders.
    pub bytes_written: herald_core::stats::Counter,
    /// From a publication's fan-out to the write of the batch it leads.
    pub publish_to_write: Histogram,
    /// The auth hook's answers (connect, subscribe, publish).
    pub auth_hook_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How a figure is read from [`StatsSnapshot`].
type Read = fn(&StatsSnapshot) -> u64;
/// A counter: name, labels, help, how to read it.
type CounterSpec = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    Read,
);

/// Every counter copied from [`StatsSnapshot`].
#[rustfmt::skip]
const COUNTERS: &[CounterSpec] = &[
    (
        "herald_connections_opened_total",
        &[],
        "Connections opened.",
        |s| s.connections_total,
    ),
    (
        "herald_disconnections_total",
        &[],
        "Connections ended, for any reason.",
        |s| s.disconnections_total,
    ),
    (
        "herald_messages_in_total",
        &[],
        "Requests and messages received from clients.",
        |s| s.messages_in,
    ),
    (
        "herald_publications_total",
        &[],
        "Publications accepted (one per channel published to).",
        |s| s.publications,
    ),
    (
        "herald_messages_out_total",
        &[],
        "Deliveries queued to clients.",
        |s| s.messages_out,
    ),
    (
        "herald_direct_messages_total",
        &[],
        "Direct messages queued.",
        |s| s.direct_messages,
    ),
    (
        "herald_slow_consumers_total",
        &[],
        "Clients closed because they could not keep up (4100).",
        |s| s.slow_consumers,
    ),
    (
        "herald_disconnects_total",
        &[("reason", "slow_consumer")],
        "Connections the server ended, by reason.",
        |s| s.slow_consumers,
    ),
    (
        "herald_disconnects_total",
        &[("reason", "timed_out")],
        "Connections the server ended, by reason.",
        |s| s.timed_out,
    ),
    (
        "herald_disconnects_total",
        &[("reason", "kicked")],
        "Connections the server ended, by reason.",
        |s| s.kicked,
    ),
    (
        "herald_disconnects_total",
        &[("reason", "rate_limited")],
        "Connections the server ended, by reason.",
        |s| s.rate_limited_disconnects,
    ),
    (
        "herald_refused_connections_total",
        &[("limit", "max_connections")],
        "Handshakes refused by a limit, by limit.",
        |s| s.refused_max_connections,
    ),
    (
        "herald_refused_connections_total",
        &[("limit", "per_ip")],
        "Handshakes refused by a limit, by limit.",
        |s| s.refused_per_ip,
    ),
    (
        "herald_refused_connections_total",
        &[("limit", "per_user")],
        "Handshakes refused by a limit, by limit.",
        |s| s.refused_per_user,
    ),
    (
        "herald_refused_connections_total",
        &[("limit", "connect_rate")],
        "Handshakes refused by a limit, by limit.",
        |s| s.refused_connect_rate,
    ),
    (
        "herald_refused_connections_total",
        &[("limit", "origin")],
        "Handshakes refused by a limit, by limit.",
        |s| s.refused_origin,
    ),
    (
        "herald_rate_limited_messages_total",
        &[],
        "Messages dropped by limits.messages_per_second.",
        |s| s.rate_limited,
    ),
    (
        "herald_webhook_events_total",
        &[("result", "delivered")],
        "Lifecycle events sent to webhooks, by result.",
        |s| s.webhook_delivered,
    ),
    (
        "herald_webhook_events_total",
        &[("result", "failed")],
        "Lifecycle events sent to webhooks, by result.",
        |s| s.webhook_failed,
    ),
    (
        "herald_webhook_events_total",
        &[("result", "dropped")],
        "Lifecycle events sent to webhooks, by result.",
        |s| s.webhook_dropped,
    ),
    (
        "herald_webhook_retries_total",
        &[],
        "Webhook POSTs retried after a failure.",
        |s| s.webhook_retries,
    ),
    (
        "herald_history_evicted_total",
        &[],
        "Kept publications dropped to stay within [history] max_bytes.",
        |s| s.history_evicted,
    ),
    (
        "herald_history_write_dropped_total",
        &[],
        "History changes not written to disk (the writer fell behind).",
        |s| s.history_write_dropped,
    ),
    (
        "herald_recoveries_total",
        &[("result", "recovered")],
        "Recoveries after a reconnect, by result.",
        |s| s.recovered,
    ),
    (
        "herald_recoveries_total",
        &[("result", "failed")],
        "Recoveries after a reconnect, by result.",
        |s| s.recover_failed,
    ),
    (
        "herald_ingress_messages_total",
        &[("result", "published")],
        "Queue messages of [[ingress]], by result.",
        |s| s.ingress_published,
    ),
    (
        "herald_ingress_messages_total",
        &[("result", "rejected")],
        "Queue messages of [[ingress]], by result.",
        |s| s.ingress_rejected,
    ),
];

/// Every gauge copied from [`StatsSnapshot`].
#[rustfmt::skip]
const GAUGES: &[(&str, &str, Read)] = &[
    ("herald_connections", "Open connections.", |s| s.connections),
    ("herald_channels", "Channels that exist now.", |s| {
        s.channels
    }),
    (
        "herald_subscriptions",
        "Subscriptions now, summed over channels.",
        |s| s.subscriptions,
    ),
    (
        "herald_history_messages",
        "Publications kept in history.",
        |s| s.history_messages,
    ),
    (
        "herald_history_bytes",
        "Bytes of history kept (counted against [history] max_bytes).",
        |s| s.history_bytes,
    ),
    (
        "herald_uptime_seconds",
        "Seconds since the server started.",
        |s| s.uptime_seconds,
    ),
];

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, *v))
            .collect::<Vec<_>>(),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        for (name, _, help, _) in COUNTERS {
            recorder.describe_counter((*name).into(), None, (*help).into());
        }
        for (name, help, _) in GAUGES {
            recorder.describe_gauge((*name).into(), None, (*help).into());
        }
        recorder.describe_gauge(
            "herald_connections_by_transport".into(),
            None,
            "Open connections, by dialect and transport.".into(),
        );
        recorder.describe_counter(
            "herald_bytes_written_total".into(),
            Some(Unit::Bytes),
            "Bytes written to clients.".into(),
        );
        recorder.describe_histogram(
            "herald_publish_to_write_seconds".into(),
            Some(Unit::Seconds),
            "From a publication's fan-out to the write that carries it (the first publication of each write batch).".into(),
        );
        recorder.describe_histogram(
            "herald_auth_hook_seconds".into(),
            Some(Unit::Seconds),
            "How long the app backend took to answer the auth hook.".into(),
        );
        recorder.describe_gauge(
            "herald_broker_up".into(),
            None,
            "Whether this node reaches its cluster broker (1) or not (0).".into(),
        );
        recorder.describe_gauge(
            "herald_broker_nodes".into(),
            None,
            "Live nodes of the cluster, this one included.".into(),
        );
        recorder.describe_gauge(
            "herald_broker_round_trip_seconds".into(),
            Some(Unit::Seconds),
            "How long a question to every live node took to be answered, at the last scrape."
                .into(),
        );
        let publish_to_write =
            recorder.register_histogram(&key("herald_publish_to_write_seconds", &[]), &META);
        let auth_hook_seconds =
            recorder.register_histogram(&key("herald_auth_hook_seconds", &[]), &META);
        Metrics {
            recorder,
            bytes_written: Default::default(),
            publish_to_write,
            auth_hook_seconds,
        }
    }

    /// Folds the latency samples recorded since the last call into their histograms (run
    /// every second, so samples never pile up between scrapes).
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// Whether the `n`-th write of a connection is timed: one in [`SAMPLE_EVERY`].
    pub fn sampled(n: u32) -> bool {
        n.is_multiple_of(SAMPLE_EVERY)
    }

    /// A connection wrote `bytes`; `since` is when the first publication of the batch was
    /// fanned out. `writes` is the connection's count of publication-led writes, of which one
    /// in [`SAMPLE_EVERY`] is timed.
    pub fn written(&self, writes: &mut u32, bytes: usize, since: Option<std::time::Instant>) {
        self.bytes_written.add(bytes as u64);
        if let Some(t) = since {
            let timed = Self::sampled(*writes);
            *writes = writes.wrapping_add(1);
            if timed {
                self.publish_to_write.record(t.elapsed().as_secs_f64());
            }
        }
    }

    /// The Prometheus text exposition of `stats`, the connections by transport and, on a
    /// cluster, the broker's health.
    pub fn render(
        &self,
        stats: &StatsSnapshot,
        connections: &[ConnectionCount],
        broker: Option<&BrokerHealth>,
    ) -> String {
        let r = &self.recorder;
        r.register_counter(&key("herald_bytes_written_total", &[]), &META)
            .absolute(self.bytes_written.get());
        for (name, labels, _, read) in COUNTERS {
            r.register_counter(&key(name, labels), &META)
                .absolute(read(stats));
        }
        for (name, _, read) in GAUGES {
            r.register_gauge(&key(name, &[]), &META)
                .set(read(stats) as f64);
        }
        for c in connections {
            let labels = [("dialect", c.dialect), ("transport", c.transport)];
            r.register_gauge(&key("herald_connections_by_transport", &labels), &META)
                .set(c.connections as f64);
        }
        if let Some(b) = broker {
            r.register_gauge(&key("herald_broker_up", &[]), &META)
                .set(if b.up { 1.0 } else { 0.0 });
            r.register_gauge(&key("herald_broker_nodes", &[]), &META)
                .set(b.nodes as f64);
            if let Some(rtt) = b.round_trip_seconds {
                r.register_gauge(&key("herald_broker_round_trip_seconds", &[]), &META)
                    .set(rtt);
            }
        }
        let handle = r.handle();
        handle.run_upkeep();
        handle.render()
    }
}

/// A shared handle, as the server state keeps it.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_labels_and_histograms() {
        let m = Metrics::new();
        let stats = StatsSnapshot {
            publications: 7,
            connections: 3,
            slow_consumers: 2,
            ..StatsSnapshot::default()
        };
        m.bytes_written.add(100);
        m.publish_to_write.record(0.002);
        let conns = [ConnectionCount {
            dialect: "native",
            transport: "http",
            connections: 2,
        }];
        let text = m.render(&stats, &conns, None);
        assert!(text.contains("herald_publications_total 7"), "{text}");
        assert!(text.contains("herald_connections 3"), "{text}");
        assert!(
            text.contains("herald_disconnects_total{reason=\"slow_consumer\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "herald_connections_by_transport{dialect=\"native\",transport=\"http\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("herald_bytes_written_total 100"), "{text}");
        assert!(
            text.contains("herald_publish_to_write_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(text.contains("# HELP herald_publications_total"), "{text}");
        assert!(
            !text.contains("herald_broker_up"),
            "no broker, no broker metrics: {text}"
        );
        // A second render sets, not adds.
        let text = m.render(&stats, &conns, None);
        assert!(text.contains("herald_publications_total 7"), "{text}");
    }

    /// The Grafana dashboard in docs/ queries only metrics that exist.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let m = Metrics::new();
        m.auth_hook_seconds.record(0.01);
        m.publish_to_write.record(0.001);
        let broker = BrokerHealth {
            up: true,
            nodes: 2,
            round_trip_seconds: Some(0.001),
        };
        let conns = [ConnectionCount {
            dialect: "native",
            transport: "websocket",
            connections: 1,
        }];
        let text = m.render(&StatsSnapshot::default(), &conns, Some(&broker));
        let dashboard = include_str!("../../../docs/grafana/herald.json");
        let mut checked = 0;
        for (i, _) in dashboard.match_indices("herald_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let name = name.strip_suffix("_bucket").unwrap_or(&name);
            if name == "herald_" {
                continue; // The dashboard's own uid and tags.
            }
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "the dashboard queries {name}, which is not exported"
            );
            checked += 1;
        }
        assert!(checked > 15, "{checked}");
    }
}
