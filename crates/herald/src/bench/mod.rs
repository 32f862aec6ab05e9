//! `herald bench`: a load generator for a running Herald server.
//!
//! This module owns the command-line options ([`BenchArgs`]), the three scenarios and their
//! result: a progress line on stderr once a second and ONE JSON object on stdout at the end.
//! * `fanout`: N subscribers on one channel; M messages published over HTTP at a fixed rate
//!   (`--rate`) or as fast as `--window` in-flight requests allow (`--max`); reports
//!   deliveries/s, end-to-end latency, lost/extra deliveries and server CPU per delivery.
//! * `idle`: N subscribed connections that stay idle; reports server memory per connection.
//! * `connect`: N connections + subscriptions as fast as `--concurrency` handshakes allow;
//!   reports connect+subscribe per second and connect→subscribed latency.
//! * `channels`: N subscribers, each on its own channel; M publications spread round robin
//!   over the N channels, one per request or `--batch K` per `POST /api/v1/batch`; reports
//!   server CPU per publication (user and system) besides what `fanout` reports.
//!
//! Every wait is bounded in count and time; `--max-seconds` is a watchdog over the whole run.
//! The pieces: [`state`] (shared counters and histograms), [`subscriber`] (connections),
//! [`publisher`] (HTTP publishing), [`server`] (CPU/RSS readings).

mod publisher;
mod recover;
mod server;
mod state;
mod subscriber;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use herald_client::Api;
use http::Uri;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_websockets::ClientBuilder;

use publisher::{Destinations, Pace, PublishPlan};
use server::{ServerProbe, proc_cpu_seconds, proc_rss_kb};
use state::{Shared, percentiles};
use subscriber::Target;

/// Above this many connections the default source addresses are 127.0.0.1–127.0.0.4.
const MULTI_SOURCE_THRESHOLD: usize = 8000;
/// Publish rate (messages/s) when neither `--rate` nor `--max` is given.
const DEFAULT_RATE: f64 = 20.0;
/// Cap on the memory of the per-connection duplicate bitsets.
const DUPLICATE_BITSET_BUDGET: u64 = 64 << 20;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N subscribers on one channel; publish M messages over HTTP; every subscriber gets every
    /// message. Reports deliveries/s, latency, lost, server CPU per delivery.
    Fanout,
    /// N subscribed connections that stay idle; reports server memory per connection.
    Idle,
    /// N connections + subscriptions as fast as --concurrency handshakes allow.
    Connect,
    /// N subscribers that drop every --drop-every seconds and come back with recovery while
    /// a publisher sends at --rate for --duration seconds; reports losses and duplicates.
    Recover,
    /// N subscribers, each on its own channel `<channel>-<i>`; M publications round robin
    /// over them (one per request, or --batch per request); server CPU per publication.
    Channels,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Connect => "connect",
            Scenario::Recover => "recover",
            Scenario::Channels => "channels",
        }
    }
}

/// Options of `herald bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// WebSocket URL of the server (plain ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Base URL of the HTTP API [default: http://HOST:PORT of --url].
    #[arg(long)]
    pub api: Option<String>,
    /// Admin key for POST /api/v1/publish and GET /api/v1/stats.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Number of subscriber connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Channel the subscribers join.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// fanout: number of messages to publish.
    #[arg(short = 'm', long, default_value_t = 200)]
    pub messages: u64,
    /// fanout: publish at this fixed rate (messages/s) [default mode, 20 msg/s].
    #[arg(long, conflicts_with = "max")]
    pub rate: Option<f64>,
    /// fanout: publish as fast as possible with at most --window requests in flight.
    #[arg(long)]
    pub max: bool,
    /// fanout: maximum publish requests in flight (both modes).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// fanout and channels: publications per request; above 1 they go in one
    /// `POST /api/v1/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// fanout: payload size in bytes (a string "p|<seq>|<ns>|xxx…").
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// PID of the server, for CPU (utime+stime) and RSS readings from /proc. Without it the
    /// server's CPU and memory figures are null (GET /api/v1/stats reports neither today).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Concurrent connection handshakes (connect → subscribed).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Comma-separated source IPs to spread connections over
    /// [default: kernel's choice below 8000 connections, 127.0.0.1-127.0.0.4 above, for a
    /// loopback server].
    #[arg(long, value_delimiter = ',')]
    pub src_addrs: Vec<IpAddr>,
    /// Watchdog: the run ends (and reports) after this many seconds whatever happens.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Give up waiting for all subscriptions after this many seconds.
    #[arg(long, default_value_t = 40.0)]
    pub subscribe_timeout: f64,
    /// fanout: pause between "all subscribed" and the first publish, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// fanout: stop draining after this many seconds without a new delivery.
    #[arg(long, default_value_t = 3.0)]
    pub drain_timeout: f64,
    /// fanout: stop draining after this many seconds in any case.
    #[arg(long, default_value_t = 30.0)]
    pub max_drain: f64,
    /// idle: seconds to wait after the last subscription before reading the server's RSS.
    #[arg(long, default_value_t = 3.0)]
    pub idle_wait: f64,
    /// Another node of a cluster (repeatable): subscribers are spread round robin over --url
    /// and these; publishing goes through --api (the node of --url by default).
    #[arg(long = "node-url", value_name = "URL")]
    pub node_urls: Vec<String>,
    /// Extra header on every WebSocket upgrade request, "Name: value" (repeatable).
    #[arg(long = "ws-header", value_name = "NAME: VALUE")]
    pub ws_headers: Vec<String>,
    /// recover: seconds the publisher runs.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// recover: each subscriber drops its connection this often, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub drop_every: f64,
    /// How subscribers connect: `ws` (the native WebSocket at --url) or `sse` (the native
    /// protocol as Server-Sent Events, `GET /sse?channels=<channel>` on the same host and
    /// port); fanout, idle and connect.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Subscribe in the WebSocket URL (`/ws?channels=<channel>`: subscribed by the welcome)
    /// instead of with a subscribe request after it.
    #[arg(long)]
    pub subscribe_in_url: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// How subscribers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
}

/// The JSON result under construction: keys are set as values become known, so that a run
/// cut short by the watchdog still reports what it measured.
struct Report(Map<String, Value>);

impl Report {
    fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_string(), v.into());
    }
    fn get_u64(&self, key: &str) -> u64 {
        self.0.get(key).and_then(Value::as_u64).unwrap_or(0)
    }
}

/// The SSE subscriber's request (HTTP/1.0: the body is the raw event stream).
fn sse_request(args: &BenchArgs, addr: std::net::SocketAddr) -> String {
    let channel: String = form_urlencoded::byte_serialize(args.channel.as_bytes()).collect();
    let mut req = format!("GET /sse?channels={channel} HTTP/1.0\r\nHost: {addr}\r\n");
    for h in &args.ws_headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Rounds to `digits` decimals (for readable JSON).
fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Keys every result carries (null when not measured by the scenario).
const RESULT_KEYS: &[&str] = &[
    "scenario",
    "mode",
    "n",
    "subscribed",
    "connect_failed",
    "published_ok",
    "publish_errors",
    "expected",
    "received",
    "lost",
    "extra",
    "deliveries_per_s",
    "latency_us",
    "server_cpu_pct",
    "server_cpu_us_per_delivery",
    "server_cpu_us_per_publication",
    "server_rss_before_kb",
    "server_rss_after_kb",
    "bytes_per_conn",
    "conn_per_s",
    "wall_s",
    "errors",
];

/// Everything a scenario needs.
struct Ctx {
    args: BenchArgs,
    shared: Arc<Shared>,
    target: Arc<Target>,
    api: Option<Api>,
    probe: ServerProbe,
}

/// Runs `herald bench`: prints progress on stderr and one JSON result line on stdout. Fails
/// (after printing the result) if no connection could subscribe or the watchdog fired.
pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    args.admin_key = args.admin_key.filter(|k| !k.is_empty());
    validate(&args)?;
    let mut report = Report(Map::new());
    let scenario = args.scenario.name();
    report.set("scenario", scenario);
    report.set("n", args.connections as u64);
    report.set("url", args.url.clone());
    report.set("channel", args.channel.clone());

    let nofile = herald_client::os::raise_nofile_limit();
    let addr = herald_client::ws::resolve_ws_url(&args.url).await?;
    let src = source_addrs(&args, addr.ip());
    report.set(
        "src_addrs",
        src.iter()
            .map(|ip| json!(ip.to_string()))
            .collect::<Vec<_>>(),
    );
    let api_base = match &args.api {
        Some(a) => a.clone(),
        None => api_base_from_ws(&args.url)?,
    };
    let api = args
        .admin_key
        .as_deref()
        .map(|key| Api::new(&api_base, Some(key)));
    let ws_url = if args.subscribe_in_url {
        let first = match args.scenario {
            Scenario::Channels => subscriber::channel_of(&args.channel, 0),
            _ => args.channel.clone(),
        };
        url_with_channels(&args.url, &first)
    } else {
        args.url.clone()
    };
    let builder = ws_builder(&args, &ws_url)?;
    let mut others = Vec::new();
    for url in &args.node_urls {
        let addr = herald_client::ws::resolve_ws_url(url).await?;
        others.push((addr, ws_builder(&args, url)?));
    }
    report.set("node_urls", args.node_urls.clone());
    let track_duplicates = matches!(args.scenario, Scenario::Fanout | Scenario::Channels)
        && (args.connections as u64).saturating_mul(args.messages.div_ceil(64) * 8)
            <= DUPLICATE_BITSET_BUDGET;
    let shared = Arc::new(Shared::new(args.messages, track_duplicates));
    match nofile {
        Ok((soft, _)) if soft < args.connections as u64 + 64 => shared.note_error(format!(
            "open-file limit {soft} is too low for {} connections",
            args.connections
        )),
        Err(e) => shared.note_error(format!("cannot read/raise the open-file limit: {e}")),
        Ok(_) => {}
    }
    let target = Arc::new(Target {
        addr,
        builder,
        src,
        subscribe_frame: json!({"op": "subscribe", "channels": [args.channel], "id": 1})
            .to_string(),
        sse_request: (args.transport == Transport::Sse).then(|| sse_request(&args, addr)),
        subscribe_in_url: args.subscribe_in_url,
        concurrency: args.concurrency,
        others,
        own_channels: (args.scenario == Scenario::Channels).then(|| own_channels(&args)),
    });
    let probe = ServerProbe {
        pid: args.server_pid,
        api: api.clone(),
    };
    let ctx = Ctx {
        args: args.clone(),
        shared: shared.clone(),
        target,
        api,
        probe,
    };

    let hard_limit = Duration::from_secs(args.max_seconds);
    spawn_hard_watchdog(hard_limit + Duration::from_secs(15), scenario);
    let progress = (!args.quiet).then(|| {
        tokio::spawn(state::progress(
            shared.clone(),
            scenario,
            args.connections,
            Duration::from_secs(1),
        ))
    });

    let mut tasks = JoinSet::new();
    let run_deadline = Instant::now() + hard_limit;
    let fut = async {
        match args.scenario {
            Scenario::Fanout | Scenario::Channels => {
                fanout(&ctx, &mut tasks, &mut report, run_deadline).await
            }
            Scenario::Idle => idle(&ctx, &mut tasks, &mut report, run_deadline).await,
            Scenario::Connect => connect(&ctx, &mut tasks, &mut report, run_deadline).await,
            Scenario::Recover => {
                recover::recover(&ctx, &mut tasks, &mut report, run_deadline).await
            }
        }
    };
    let watchdog_fired = tokio::time::timeout_at(run_deadline, fut).await.is_err();
    if watchdog_fired {
        shared.note_error(format!(
            "watchdog: run exceeded --max-seconds {}",
            args.max_seconds
        ));
    }
    if let Some(p) = progress {
        p.abort();
    }
    // Close all connections (bounded: aborting tasks drops their sockets).
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.shutdown()).await;

    finish(&ctx, &mut report);
    println!("{}", Value::Object(report.0.clone()));
    eprintln!("{}", summary(&report));
    if watchdog_fired {
        bail!("bench watchdog fired after {} s", args.max_seconds);
    }
    if report.get_u64("subscribed") == 0 {
        bail!("no connection could subscribe");
    }
    if matches!(args.scenario, Scenario::Fanout | Scenario::Channels)
        && report.get_u64("published_ok") == 0
    {
        bail!("no publish request succeeded");
    }
    Ok(())
}

/// Checks option values that clap cannot.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.window == 0 || args.concurrency == 0 {
        bail!("--window and --concurrency must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number");
    }
    for (name, v) in [
        ("--subscribe-timeout", args.subscribe_timeout),
        ("--settle", args.settle),
        ("--drain-timeout", args.drain_timeout),
        ("--max-drain", args.max_drain),
        ("--idle-wait", args.idle_wait),
        ("--duration", args.duration),
        ("--drop-every", args.drop_every),
    ] {
        if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
            bail!("{name} must be between 0 and 86400 seconds");
        }
    }
    if matches!(
        args.scenario,
        Scenario::Fanout | Scenario::Recover | Scenario::Channels
    ) && args.admin_key.is_none()
    {
        bail!(
            "fanout, channels and recover publish over the HTTP API: give --admin-key or set HERALD_ADMIN_KEY"
        );
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.scenario == Scenario::Channels
        && (args.transport != Transport::Ws || !args.node_urls.is_empty())
    {
        bail!("channels runs over the WebSocket transport of one node (--transport ws)");
    }
    if args.scenario == Scenario::Recover && args.drop_every < 0.1 {
        bail!("--drop-every must be at least 0.1 seconds");
    }
    Ok(())
}

/// Source addresses: `--src-addrs`, else 127.0.0.1–4 above 8000 connections to a loopback
/// IPv4 server, else none (the kernel picks).
fn source_addrs(args: &BenchArgs, server: IpAddr) -> Vec<IpAddr> {
    if !args.src_addrs.is_empty() {
        return args.src_addrs.clone();
    }
    match server {
        IpAddr::V4(v4) if v4.is_loopback() && args.connections > MULTI_SOURCE_THRESHOLD => (1..=4)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `http://HOST:PORT` of a `ws://HOST:PORT/...` URL.
fn api_base_from_ws(url: &str) -> anyhow::Result<String> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url:?}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url {url:?} has no host"))?;
    let scheme = if uri.scheme_str() == Some("wss") {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{authority}"))
}

/// `channels`: connection `i` subscribes to `<channel>-<i>`; with `--subscribe-in-url` its
/// upgrade request names that channel.
fn own_channels(args: &BenchArgs) -> subscriber::OwnChannels {
    let make_builder = args.subscribe_in_url.then(|| {
        let args = args.clone();
        Box::new(move |idx: usize| {
            let channel = subscriber::channel_of(&args.channel, idx as u64);
            let url = url_with_channels(&args.url, &channel);
            ws_builder(&args, &url).expect("the same URL was accepted for connection 0")
        }) as Box<dyn Fn(usize) -> ClientBuilder<'static> + Send + Sync>
    });
    subscriber::OwnChannels {
        base: args.channel.clone(),
        make_builder,
    }
}

/// `url` with `channels=<channel>` added to its query.
fn url_with_channels(url: &str, channel: &str) -> String {
    let channel: String = form_urlencoded::byte_serialize(channel.as_bytes()).collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}channels={channel}")
}

/// The upgrade request builder: `url` plus `--ws-header`s.
fn ws_builder(args: &BenchArgs, url: &str) -> anyhow::Result<ClientBuilder<'static>> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("--url must be a ws:// URL");
    }
    let mut builder = ClientBuilder::from_uri(uri);
    for h in &args.ws_headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--ws-header {h:?} is not \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {h:?}"))?;
        builder = builder
            .add_header(name, value)
            .with_context(|| format!("header {h:?} cannot be set"))?;
    }
    Ok(builder)
}

/// Last-resort watchdog on a plain thread, in case the runtime itself is stuck: prints a
/// minimal result and exits the process.
fn spawn_hard_watchdog(after: Duration, scenario: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        println!(
            "{}",
            json!({"scenario": scenario, "errors": ["hard watchdog: the run did not finish; exiting"]})
        );
        eprintln!("herald bench: hard watchdog fired after {after:?}; exiting");
        std::process::exit(3);
    });
}

/// Connects all subscribers and waits for them; records the connection figures.
async fn connect_phase(
    ctx: &Ctx,
    tasks: &mut JoinSet<()>,
    report: &mut Report,
    run_deadline: Instant,
) {
    let n = ctx.args.connections;
    let start_ns = ctx.shared.now_ns();
    subscriber::spawn_all(&ctx.shared, &ctx.target, tasks, n);
    let deadline =
        (Instant::now() + Duration::from_secs_f64(ctx.args.subscribe_timeout)).min(run_deadline);
    if !subscriber::wait_settled(&ctx.shared, n, deadline).await {
        ctx.shared.note_error(format!(
            "not all connections subscribed within {} s",
            ctx.args.subscribe_timeout
        ));
    }
    let subscribed = ctx.shared.subscribed.load(Relaxed);
    let last = ctx.shared.last_sub_ns.load(Relaxed);
    let connect_s = last.saturating_sub(start_ns) as f64 / 1e9;
    report.set("subscribed", subscribed as u64);
    report.set("connect_failed", (n - subscribed.min(n)) as u64);
    report.set("connect_s", round(connect_s, 3));
    if connect_s > 0.0 {
        report.set("conn_per_s", round(subscribed as f64 / connect_s, 1));
    }
    report.set(
        "subscribe_latency_us",
        percentiles(&ctx.shared.subscribe_latency()),
    );
}

/// fanout: N subscribers on one channel, M messages over HTTP. channels: N subscribers on a
/// channel each, M publications round robin over them.
async fn fanout(ctx: &Ctx, tasks: &mut JoinSet<()>, report: &mut Report, run_deadline: Instant) {
    let args = &ctx.args;
    let shared = &ctx.shared;
    let pace = match (args.max, args.rate) {
        (true, _) => Pace::Max,
        (false, Some(r)) => Pace::Rate(r),
        (false, None) => Pace::Rate(DEFAULT_RATE),
    };
    report.set("mode", if args.max { "max" } else { "rate" });
    if let Pace::Rate(r) = pace {
        report.set("rate", r);
    }
    report.set("messages", args.messages);
    report.set("batch", args.batch as u64);
    report.set("window", args.window as u64);
    report.set("payload_bytes", args.payload_bytes as u64);
    report.set("duplicates_tracked", shared.track_duplicates);
    if let Some(kb) = ctx.probe.rss_kb().await {
        report.set("server_rss_before_kb", kb);
    }

    connect_phase(ctx, tasks, report, run_deadline).await;
    if shared.subscribed.load(Relaxed) == 0 {
        return;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let Some(api) = &ctx.api else { return };
    let live = shared.live_subscribers();
    report.set("live_subscribers", live);
    let closed_before = shared.closed.load(Relaxed);
    let cpu0 = ctx.probe.cpu_seconds().await;
    let split0 = ctx.probe.cpu_split();
    let self_cpu0 = proc_cpu_seconds("self");
    let phase_t0 = Instant::now();
    let own_channels = args.scenario == Scenario::Channels;
    let plan = PublishPlan {
        destinations: if own_channels {
            Destinations::RoundRobin {
                base: args.channel.clone(),
                n: args.connections as u64,
            }
        } else {
            Destinations::One(args.channel.clone())
        },
        messages: args.messages,
        batch: args.batch,
        pace,
        window: args.window,
        payload_bytes: args.payload_bytes,
        deadline: run_deadline,
    };
    shared.phase_subscribers.store(live, Relaxed);
    let published = publisher::publish(shared, api, &plan).await;
    // channels: each publication has one subscriber, if its connection is still there.
    let expected = if !own_channels {
        live * published.ok
    } else if live == args.connections as u64 {
        published.ok
    } else {
        shared.note_error("not every channel has its subscriber: expected is the server's count");
        published.server_delivered
    };
    report.set("published_ok", published.ok);
    report.set("publish_errors", published.errors);
    report.set("server_reported_delivered", published.server_delivered);
    report.set("expected", expected);
    let publish_s = (published.done_ns.saturating_sub(published.first_ns)) as f64 / 1e9;
    if publish_s > 0.0 {
        report.set(
            "publish_rate_achieved",
            round(published.ok as f64 / publish_s, 1),
        );
    }

    drain(ctx, expected, run_deadline).await;

    let phase_s = phase_t0.elapsed().as_secs_f64();
    let cpu1 = ctx.probe.cpu_seconds().await;
    let split1 = ctx.probe.cpu_split();
    let self_cpu1 = proc_cpu_seconds("self");
    let d = shared.deliveries();
    report.set("received", d.received);
    report.set(
        "duplicates",
        if shared.track_duplicates {
            json!(d.duplicates)
        } else {
            Value::Null
        },
    );
    report.set("lost", expected.saturating_sub(d.received));
    let unparsed = shared.unparsed.load(Relaxed);
    report.set(
        "extra",
        d.received.saturating_sub(expected) + d.duplicates + unparsed,
    );
    report.set("unrecognised_deliveries", unparsed);
    report.set(
        "offset_regressions",
        shared.offset_regressions.load(Relaxed),
    );
    report.set(
        "subs_closed_during_phase",
        (shared.closed.load(Relaxed) - closed_before) as u64,
    );
    let span_s = d.last_ns.saturating_sub(published.first_ns) as f64 / 1e9;
    if d.received > 0 && span_s > 0.0 {
        report.set("deliveries_per_s", round(d.received as f64 / span_s, 0));
        report.set("delivery_span_s", round(span_s, 3));
    }
    report.set("latency_us", percentiles(&d.latency));
    report.set("phase_s", round(phase_s, 3));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let cpu = (b - a).max(0.0);
        report.set("server_cpu_s", round(cpu, 3));
        report.set("server_cpu_pct", round(cpu / phase_s * 100.0, 1));
        if d.received > 0 {
            report.set(
                "server_cpu_us_per_delivery",
                round(cpu * 1e6 / d.received as f64, 2),
            );
        }
    }
    // Per publication, split user / system (needs --server-pid).
    if let (Some((u0, s0)), Some((u1, s1))) = (split0, split1)
        && published.ok > 0
    {
        let per = |a: f64, b: f64| round((b - a).max(0.0) * 1e6 / published.ok as f64, 2);
        report.set("server_cpu_us_per_publication", per(u0 + s0, u1 + s1));
        report.set("server_user_us_per_publication", per(u0, u1));
        report.set("server_sys_us_per_publication", per(s0, s1));
    }
    if let (Some(a), Some(b)) = (self_cpu0, self_cpu1) {
        report.set("loadgen_cpu_pct", round((b - a) / phase_s * 100.0, 1));
        if d.received > 0 {
            report.set(
                "loadgen_cpu_us_per_delivery",
                round((b - a) * 1e6 / d.received as f64, 2),
            );
        }
    }
    if let Some(kb) = ctx.probe.rss_kb().await {
        report.set("server_rss_after_kb", kb);
    }
}

/// Waits until `expected` deliveries arrived, or none arrived for `--drain-timeout`, or
/// `--max-drain` passed, or the run deadline.
async fn drain(ctx: &Ctx, expected: u64, run_deadline: Instant) {
    let start = Instant::now();
    let hard = (start + Duration::from_secs_f64(ctx.args.max_drain)).min(run_deadline);
    let quiet_limit = Duration::from_secs_f64(ctx.args.drain_timeout);
    let mut last = ctx.shared.received();
    let mut last_change = start;
    loop {
        if last >= expected {
            return;
        }
        let now = Instant::now();
        if now >= hard {
            ctx.shared.note_error(format!(
                "drain stopped after {:.1} s",
                (now - start).as_secs_f64()
            ));
            return;
        }
        if now - last_change >= quiet_limit {
            ctx.shared.note_error(format!(
                "drain stopped: no delivery for {} s",
                ctx.args.drain_timeout
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = ctx.shared.received();
        if r != last {
            last = r;
            last_change = Instant::now();
        }
    }
}

/// idle: N subscribed idle connections; server memory per connection.
async fn idle(ctx: &Ctx, tasks: &mut JoinSet<()>, report: &mut Report, run_deadline: Instant) {
    let before = ctx.probe.rss_kb().await;
    if let Some(kb) = before {
        report.set("server_rss_before_kb", kb);
    }
    let self_before = proc_rss_kb("self");
    connect_phase(ctx, tasks, report, run_deadline).await;
    tokio::time::sleep(Duration::from_secs_f64(ctx.args.idle_wait)).await;
    let live = ctx.shared.live_subscribers();
    report.set("live_subscribers", live);
    if let Some(c) = ctx.probe.connections().await {
        report.set("server_connections", c);
    }
    let after = ctx.probe.rss_kb().await;
    if let Some(kb) = after {
        report.set("server_rss_after_kb", kb);
    }
    if let (Some(b), Some(a)) = (before, after)
        && live > 0
    {
        let bytes = (a as f64 - b as f64) * 1024.0 / live as f64;
        report.set("bytes_per_conn", round(bytes, 0));
    }
    if let (Some(b), Some(a)) = (self_before, proc_rss_kb("self"))
        && live > 0
    {
        report.set(
            "loadgen_bytes_per_conn",
            round((a as f64 - b as f64) * 1024.0 / live as f64, 0),
        );
    }
}

/// connect: connection + subscribe rate.
async fn connect(ctx: &Ctx, tasks: &mut JoinSet<()>, report: &mut Report, run_deadline: Instant) {
    let cpu0 = ctx.probe.cpu_seconds().await;
    let split0 = ctx.probe.cpu_split();
    let t0 = Instant::now();
    connect_phase(ctx, tasks, report, run_deadline).await;
    let wall = t0.elapsed().as_secs_f64();
    report.set("latency_us", percentiles(&ctx.shared.subscribe_latency()));
    report.set("latency_kind", "connect_to_subscribed");
    if let (Some(a), Some(b)) = (cpu0, ctx.probe.cpu_seconds().await) {
        let cpu = (b - a).max(0.0);
        report.set("server_cpu_s", round(cpu, 3));
        if wall > 0.0 {
            report.set("server_cpu_pct", round(cpu / wall * 100.0, 1));
        }
    }
    // Per connection, split user / system (needs --server-pid).
    let subscribed = ctx.shared.subscribed.load(Relaxed) as f64;
    if let (Some((u0, s0)), Some((u1, s1))) = (split0, ctx.probe.cpu_split())
        && subscribed > 0.0
    {
        let per = |a: f64, b: f64| round((b - a).max(0.0) * 1e6 / subscribed, 1);
        report.set("server_cpu_us_per_conn", per(u0 + s0, u1 + s1));
        report.set("server_user_us_per_conn", per(u0, u1));
        report.set("server_sys_us_per_conn", per(s0, s1));
    }
}

/// Fills the fields every result has.
fn finish(ctx: &Ctx, report: &mut Report) {
    let shared = &ctx.shared;
    report.set("wall_s", round(shared.elapsed_s(), 3));
    if !report.0.contains_key("subscribed") {
        report.set("subscribed", shared.subscribed.load(Relaxed) as u64);
    }
    report.set("subs_closed", shared.closed.load(Relaxed) as u64);
    if matches!(ctx.args.scenario, Scenario::Fanout | Scenario::Channels)
        && !report.0.contains_key("received")
    {
        // Cut short (watchdog): report what had arrived.
        let d = shared.deliveries();
        report.set("received", d.received);
        report.set("latency_us", percentiles(&d.latency));
        report.set("published_ok", shared.published_ok.load(Relaxed));
        report.set("publish_errors", shared.publish_errors.load(Relaxed));
    }
    if let Some(kb) = proc_rss_kb("self") {
        report.set("loadgen_rss_kb", kb);
    }
    report.set("errors", shared.errors_json());
    for key in RESULT_KEYS {
        report.0.entry(key.to_string()).or_insert(Value::Null);
    }
}

/// One human-readable line for stderr.
fn summary(r: &Report) -> String {
    let g = |k: &str| match r.0.get(k) {
        Some(Value::Null) | None => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let lat = |k: &str| match r.0.get("latency_us").and_then(|l| l.get(k)) {
        Some(Value::Number(n)) => format!("{:.2}", n.as_f64().unwrap_or(0.0) / 1000.0),
        _ => "-".to_string(),
    };
    let head = format!(
        "bench {} n={}: subscribed {} (failed {}, closed later {})",
        g("scenario"),
        g("n"),
        g("subscribed"),
        g("connect_failed"),
        g("subs_closed"),
    );
    let body = match r.0.get("scenario").and_then(Value::as_str) {
        Some("fanout" | "channels") => format!(
            "{} mode | published {} (errors {}) | received {}/{}, lost {}, extra {} | {} deliveries/s | latency ms p50 {} p90 {} p99 {} max {} | server cpu {}%, {} us/delivery, {} us/publication (user {}, sys {})",
            g("mode"),
            g("published_ok"),
            g("publish_errors"),
            g("received"),
            g("expected"),
            g("lost"),
            g("extra"),
            g("deliveries_per_s"),
            lat("p50"),
            lat("p90"),
            lat("p99"),
            lat("max"),
            g("server_cpu_pct"),
            g("server_cpu_us_per_delivery"),
            g("server_cpu_us_per_publication"),
            g("server_user_us_per_publication"),
            g("server_sys_us_per_publication"),
        ),
        Some("recover") => format!(
            "published {} | received {}/{}, lost {} (unrecovered {}, live {}), duplicates {} | drops {}, recovered {}, failed {}, resubscribed {}, refused {} | recovery ms p50 {} p99 {}",
            g("published_ok"),
            g("received"),
            g("expected"),
            g("lost"),
            g("lost_unrecovered"),
            g("lost_live"),
            g("duplicates"),
            g("drops"),
            g("recovered"),
            g("recover_failed"),
            g("resubscribed"),
            g("subscribe_refused"),
            r.0.get("recovery_us")
                .and_then(|l| l.get("p50"))
                .and_then(Value::as_f64)
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
            r.0.get("recovery_us")
                .and_then(|l| l.get("p99"))
                .and_then(Value::as_f64)
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
        ),
        Some("idle") => format!(
            "server rss {} -> {} kB, {} bytes/connection",
            g("server_rss_before_kb"),
            g("server_rss_after_kb"),
            g("bytes_per_conn"),
        ),
        _ => format!(
            "{} conn+sub/s | connect->subscribed ms p50 {} p99 {} | server cpu {}%",
            g("conn_per_s"),
            lat("p50"),
            lat("p99"),
            g("server_cpu_pct"),
        ),
    };
    let errors =
        r.0.get("errors")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
    format!(
        "{head} | {body} | {} s, {errors} distinct errors",
        g("wall_s")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_is_derived_from_the_ws_url() {
        assert_eq!(
            api_base_from_ws("ws://127.0.0.1:8080/ws").ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            api_base_from_ws("ws://localhost/ws?x=1").ok().as_deref(),
            Some("http://localhost")
        );
    }
}
