//! Configuration: defaults, then a TOML file, then `HERALD_*` environment variables, then
//! command-line flags (applied by the binary). Every key is documented in docs/configuration.md
//! and in the commented file `herald config init` writes ([`DEFAULT_CONFIG_TOML`]).
//!
//! Environment variables: `HERALD_<KEY>` for top-level keys (`HERALD_LISTEN`,
//! `HERALD_ADMIN_KEY`, ...) and `HERALD_<SECTION>__<KEY>` for keys in a section
//! (`HERALD_WEBSOCKET__PING_INTERVAL_SECS`). Other `HERALD_*` variables are ignored
//! ([`unread_variables`] names them for a warning).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment2::Figment;
use figment2::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use herald_core::{ChannelOptions, HubConfig, SubscribePolicy};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the main listener (WebSocket at /ws, HTTP API at /api/v1).
    pub listen: SocketAddr,
    /// Where the embedded store and the generated admin key live.
    pub data_dir: PathBuf,
    /// The admin key. Empty: use `<data_dir>/admin.key`, generating it on first start.
    pub admin_key: String,
    /// Log filter (tracing `EnvFilter` syntax), e.g. "info" or "herald_server=debug".
    pub log: String,
    pub websocket: WebSocketConfig,
    pub channels: ChannelsConfig,
    /// `[namespaces.<ns>]`: options of channels named `<ns>:...` (docs/configuration.md).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    pub limits: LimitsConfig,
    pub events: EventsConfig,
    pub dialects: DialectsConfig,
    pub tls: TlsConfig,
    /// `[[webhooks]]`: endpoints that get lifecycle events by HTTP POST (docs/webhooks.md).
    pub webhooks: Vec<WebhookConfig>,
    pub jwt: JwtConfig,
    /// The app backend asked at connect (and optionally at subscribe/publish), docs/auth-hook.md.
    pub auth_hook: AuthHookConfig,
    pub history: HistoryConfig,
    /// This node's name in a cluster. Empty: the host name and the listen port.
    pub node_name: String,
    /// A listener of its own for `GET /metrics` (Prometheus), without the admin key, e.g.
    /// "127.0.0.1:9091". Empty: none (the main listener serves `/metrics` with the key).
    pub metrics_listen: String,
    /// How nodes of a cluster reach each other (docs/scaling.md).
    pub broker: BrokerConfig,
    /// `[[ingress]]`: queues whose messages Herald publishes (a Redis stream, a NATS subject).
    pub ingress: Vec<IngressConfig>,
    /// Test-only switches, off by default; never on in production.
    pub debug: DebugConfig,
}

/// `[debug]`: switches for testing Herald itself (conformance suites), all off by default.
/// Never turn them on in production.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// A WebSocket at `/debug/echo` on the main listener (plain and TLS) that sends every
    /// text and binary message back as it came, through Herald's own WebSocket transport
    /// (`crate::dialects::echo`): for Autobahn|Testsuite (docs/conformance.md). Anyone may
    /// connect to it, and it takes messages up to 16 MiB.
    pub ws_echo: bool,
}

impl DebugConfig {
    fn validate(&self, dialects: &DialectsConfig) -> Result<(), ConfigError> {
        if !self.ws_echo {
            return Ok(());
        }
        // `/debug/echo` would sit inside a dialect mounted at `/debug`.
        let d = dialects;
        let mounts = [
            ("subsocket", d.subsocket.enabled, &d.subsocket.prefix),
            ("eventual", d.eventual.enabled, &d.eventual.prefix),
            (
                "simplysocket",
                d.simplysocket.enabled,
                &d.simplysocket.prefix,
            ),
            ("pushstream", d.pushstream.enabled, &d.pushstream.prefix),
            ("wspush", d.wspush.enabled, &d.wspush.prefix),
        ];
        let clash = mounts
            .iter()
            .find(|(_, on, prefix)| *on && prefix.as_str() == "/debug");
        match clash {
            Some((name, ..)) => Err(ConfigError(format!(
                "debug.ws_echo: /debug/echo clashes with dialects.{name}.prefix = \"/debug\""
            ))),
            None => Ok(()),
        }
    }
}

/// One `[[ingress]]`: a Redis stream read by a consumer group, or a NATS subject read by a
/// queue group; each message is published as if by the admin (`crate::ingress`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// `redis_stream` or `nats`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `redis://…`/`rediss://…` or `nats://…`, credentials in the URL (never logged).
    pub url: Secret,
    /// redis_stream: the stream's key (default [`DEFAULT_INGRESS_STREAM`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// redis_stream: the consumer group (default [`DEFAULT_INGRESS_GROUP`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// nats: the subject (default [`DEFAULT_INGRESS_SUBJECT`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `herald` (the body of `POST /api/v1/publish`) or `gogin` (`{"channel","message"}`).
    pub format: String,
}

/// An `[[ingress]]`'s default stream key, consumer group and NATS subject.
pub const DEFAULT_INGRESS_STREAM: &str = "herald:ingress";
pub const DEFAULT_INGRESS_GROUP: &str = "herald";
pub const DEFAULT_INGRESS_SUBJECT: &str = "herald.ingress";

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            kind: String::new(),
            url: Secret::default(),
            stream: None,
            group: None,
            subject: None,
            format: "herald".into(),
        }
    }
}

impl IngressConfig {
    pub fn stream(&self) -> &str {
        self.stream.as_deref().unwrap_or(DEFAULT_INGRESS_STREAM)
    }

    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(DEFAULT_INGRESS_GROUP)
    }

    pub fn subject(&self) -> &str {
        self.subject.as_deref().unwrap_or(DEFAULT_INGRESS_SUBJECT)
    }

    /// What this ingress reads, for telling two apart (and for messages: no credentials).
    pub fn source(&self) -> String {
        let url = redacted(&self.url.0);
        match self.kind.as_str() {
            "nats" => format!("nats subject {:?} at {url}", self.subject()),
            _ => format!(
                "redis stream {:?} (group {:?}) at {url}",
                self.stream(),
                self.group()
            ),
        }
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("ingress[{i}].{key}: {why}")));
        let url = self.url.0.as_str();
        // Keys of the other type, and whether they are set.
        let foreign = match self.kind.as_str() {
            "redis_stream" => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return bad(
                        "url",
                        "a redis:// or rediss:// URL is required with type = \"redis_stream\"",
                    );
                }
                for (key, value) in [("stream", self.stream()), ("group", self.group())] {
                    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control)
                    {
                        return bad(key, "1 to 256 characters, no control characters");
                    }
                }
                [("subject", self.subject.is_some(), "nats"), ("", false, "")]
            }
            "nats" => {
                if !url.starts_with("nats://") {
                    return bad("url", "a nats:// URL is required with type = \"nats\"");
                }
                if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                    return bad("url", &e.to_string());
                }
                let subject = self.subject();
                if subject.len() > 256
                    || subject.chars().any(|c| c.is_whitespace() || c.is_control())
                    || subject.split('.').any(str::is_empty)
                {
                    return bad(
                        "subject",
                        "1 to 256 characters: tokens separated by '.', no spaces",
                    );
                }
                [
                    ("stream", self.stream.is_some(), "redis_stream"),
                    ("group", self.group.is_some(), "redis_stream"),
                ]
            }
            "" => return bad("type", "required: \"redis_stream\" or \"nats\""),
            _ => return bad("type", "must be \"redis_stream\" or \"nats\""),
        };
        if let Some((key, _, kind)) = foreign.iter().find(|(_, set, _)| *set) {
            return bad(key, &format!("only with type = \"{kind}\""));
        }
        if !["herald", "gogin"].contains(&self.format.as_str()) {
            return bad("format", "must be \"herald\" or \"gogin\"");
        }
        Ok(())
    }
}

/// `[broker]`: `memory` (one node, the default), `redis` (many nodes sharing one Redis: a
/// single server, a master found through Sentinel, or a Redis Cluster) or `nats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    #[serde(rename = "type")]
    pub kind: String,
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (credentials in the URL).
    /// With `redis`, exactly one of `url`, `sentinel_nodes` and `cluster_nodes` is given.
    pub url: Secret,
    /// With `redis` and `sentinel_nodes`: the name the sentinels know the master by.
    pub sentinel_master: String,
    /// With `redis`: the sentinels' URLs (`redis://[user:password@]host:port[/db]`); the
    /// credentials and database are the master's (docs/scaling.md).
    pub sentinel_nodes: Vec<Secret>,
    /// With `redis`: seed URLs of a Redis Cluster (`redis://[user:password@]host:port`).
    pub cluster_nodes: Vec<Secret>,
    /// Prefix of every key and channel Herald uses in Redis, so several clusters can share one.
    pub prefix: String,
    /// How long a broker call may take before the request fails with `broker_unavailable`.
    pub timeout_ms: u64,
    /// A node that stopped reporting is forgotten (nodes list, cluster stats) after this long.
    pub presence_ttl_secs: u64,
    /// With `nats`: how long a node keeps following a channel it keeps (for its history)
    /// after the channel's last local subscriber left, so that a subscriber back within that
    /// time recovers there (0: stop at once).
    pub follow_linger_secs: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: "memory".into(),
            url: Secret(String::new()),
            sentinel_master: String::new(),
            sentinel_nodes: Vec::new(),
            cluster_nodes: Vec::new(),
            prefix: "herald".into(),
            timeout_ms: 5000,
            presence_ttl_secs: 30,
            follow_linger_secs: 60,
        }
    }
}

impl BrokerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("broker.{key}: {why}")));
        // The ranges hold whatever the type, so a file that is fine on one node stays fine
        // when it joins a cluster.
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return bad("prefix", "1 to 64 letters, digits, '-', '_', '.' or ':'");
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return bad("timeout_ms", "must be between 1 and 60000");
        }
        if !(3..=3600).contains(&self.presence_ttl_secs) {
            return bad("presence_ttl_secs", "must be between 3 and 3600");
        }
        if self.follow_linger_secs > 86_400 {
            return bad("follow_linger_secs", "must be between 0 and 86400");
        }
        match self.kind.as_str() {
            "memory" => return Ok(()),
            "redis" | "nats" => {}
            _ => return bad("type", "must be \"memory\", \"redis\" or \"nats\""),
        }
        let url = self.url.0.as_str();
        let schemes: &[&str] = match self.kind.as_str() {
            "redis" => &["redis://", "rediss://"],
            _ => &["nats://", "tls://"],
        };
        let lists = [
            ("sentinel_nodes", &self.sentinel_nodes),
            ("cluster_nodes", &self.cluster_nodes),
        ];
        if self.kind == "redis" {
            let given: Vec<&str> = [("url", url.is_empty())]
                .into_iter()
                .chain(lists.iter().map(|(key, list)| (*key, list.is_empty())))
                .filter(|(_, empty)| !empty)
                .map(|(key, _)| key)
                .collect();
            if given.len() > 1 {
                return bad(
                    given[1],
                    &format!(
                        "give only one of url, sentinel_nodes and cluster_nodes (also given: {})",
                        given[0]
                    ),
                );
            }
            for (key, list) in lists {
                if list.len() > 64 {
                    return bad(key, "at most 64 URLs");
                }
                for (i, node) in list.iter().enumerate() {
                    if !schemes.iter().any(|s| node.0.starts_with(s)) {
                        return bad(
                            &format!("{key}[{i}]"),
                            "must be a redis:// or rediss:// URL",
                        );
                    }
                }
            }
            let name = self.sentinel_master.as_str();
            match (self.sentinel_nodes.is_empty(), name.is_empty()) {
                (false, true) => {
                    return bad(
                        "sentinel_master",
                        "the master's name is required with sentinel_nodes",
                    );
                }
                (true, false) => {
                    return bad("sentinel_master", "only with sentinel_nodes");
                }
                _ => {}
            }
            if name.len() > 128 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("sentinel_master", "at most 128 characters, without spaces");
            }
        } else {
            for (key, list) in lists {
                if !list.is_empty() {
                    return bad(key, "only with type = \"redis\"");
                }
            }
            if !self.sentinel_master.is_empty() {
                return bad("sentinel_master", "only with type = \"redis\"");
            }
        }
        let elsewhere =
            self.kind == "redis" && url.is_empty() && lists.iter().any(|(_, l)| !l.is_empty());
        if !elsewhere && !schemes.iter().any(|s| url.starts_with(s)) {
            return bad(
                "url",
                &format!(
                    "a {} URL is required with type = {:?}{}",
                    schemes.join(" or "),
                    self.kind,
                    if self.kind == "redis" {
                        " (or sentinel_nodes with sentinel_master, or cluster_nodes)"
                    } else {
                        ""
                    }
                ),
            );
        }
        Ok(())
    }
}

/// `[history]`: what all channels' history may use, and whether it outlives a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Bytes all kept publications may use together (data + about 96 bytes each); the
    /// oldest go first.
    pub max_bytes: usize,
    /// Keep history, and every channel's epoch and offset, in the data directory.
    pub durable: bool,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_bytes: herald_core::hub::DEFAULT_HISTORY_MAX_BYTES,
            durable: true,
        }
    }
}

/// JSON Web Tokens for connections and private-channel subscriptions (docs/auth.md). Any
/// key set turns JWT on; tokens pick the key by their `alg`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Secret for HS256/HS384/HS512 tokens (at least 32 characters). Empty: none.
    pub hmac_secret: Secret,
    /// PEM RSA public key for RS*/PS* tokens. Empty: none.
    pub rsa_public_key_file: PathBuf,
    /// PEM EC public key (P-256 or P-384) for ES256/ES384 tokens. Empty: none.
    pub ecdsa_public_key_file: PathBuf,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Required `iss` claim. Empty: not checked.
    pub issuer: String,
    /// Required `aud` claim. Empty: not checked.
    pub audience: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hmac_secret: Secret::default(),
            rsa_public_key_file: PathBuf::new(),
            ecdsa_public_key_file: PathBuf::new(),
            leeway_secs: 5,
            issuer: String::new(),
            audience: String::new(),
        }
    }
}

/// Shortest JWT HMAC secret accepted.
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl JwtConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let len = self.hmac_secret.0.len();
        if len > 0 && len < MIN_JWT_SECRET_LEN {
            return Err(ConfigError(format!(
                "jwt.hmac_secret: must be at least {MIN_JWT_SECRET_LEN} characters (or empty)"
            )));
        }
        if self.leeway_secs > 300 {
            return Err(ConfigError("jwt.leeway_secs: at most 300 seconds".into()));
        }
        Ok(())
    }
}

/// HTTPS/WSS: a second listener serving the main router over TLS (rustls). The plain `listen`
/// stays available.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address of the TLS listener, e.g. "0.0.0.0:8443". Empty: no TLS listener.
    pub listen: String,
    /// PEM file with the certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
}

impl TlsConfig {
    /// The parsed `listen` address, if TLS is configured.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Ok(());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError(
                "tls.listen: not an address like 0.0.0.0:8443 (or empty for no TLS)".into(),
            ));
        }
        for (key, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError(format!(
                    "tls.{key}: required when tls.listen is set"
                )));
            }
        }
        Ok(())
    }
}

/// Lifecycle events (docs/events.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Request headers copied into `client.connected` events (case-insensitive names).
    pub headers: Vec<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            headers: vec!["user-agent".into(), "origin".into()],
        }
    }
}

/// One webhook endpoint (`[[webhooks]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where events are POSTed: an http:// URL (terminate TLS in a proxy for https).
    pub url: String,
    /// The HMAC-SHA256 key for `Herald-Signature`; at least 16 characters. Never logged.
    pub secret: WebhookSecret,
    /// Event types sent to this endpoint (`"*"` = all).
    pub types: Vec<String>,
    /// 1: one CloudEvent per POST (a JSON object). More: up to that many per POST, as a JSON
    /// array (`application/cloudevents-batch+json`).
    pub batch_max: usize,
    /// How long one POST may take before it counts as failed.
    pub timeout_ms: u64,
    /// POSTs of one batch before it is given up (1 = no retries).
    pub max_attempts: u32,
    /// Events waiting for this endpoint; beyond it new events are dropped (and counted).
    pub queue_capacity: usize,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`, with full jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// The CloudEvents `source`. Empty: `herald://<hostname>`.
    pub source: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret: WebhookSecret::default(),
            types: vec!["*".into()],
            batch_max: 1,
            timeout_ms: 5000,
            max_attempts: 8,
            queue_capacity: 10_000,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            source: String::new(),
        }
    }
}

/// Shortest webhook secret accepted.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// A secret from the configuration (webhook signing keys, the JWT HMAC secret): `Debug`
/// does not show it, so it never reaches a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

/// A webhook's signing secret.
pub type WebhookSecret = Secret;

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl WebhookConfig {
    /// The event types this endpoint wants.
    pub fn mask(&self) -> Result<herald_core::EventMask, String> {
        herald_core::EventMask::parse(self.types.iter().map(String::as_str))
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let bad =
            |field: &str, why: String| Err(ConfigError(format!("webhooks[{i}].{field}: {why}")));
        let url_ok = is_http_url(&self.url);
        if !url_ok {
            return bad(
                "url",
                "must be an http:// URL (https is not supported: terminate TLS in a proxy)".into(),
            );
        }
        if self.url.split_once("://").is_some_and(|(_, rest)| {
            rest.split(['/', '?', '#'])
                .next()
                .unwrap_or_default()
                .contains('@')
        }) {
            return bad(
                "url",
                "must not contain credentials (the signature authenticates Herald)".into(),
            );
        }
        if self.secret.0.chars().count() < MIN_WEBHOOK_SECRET_LEN {
            return bad(
                "secret",
                format!("must be at least {MIN_WEBHOOK_SECRET_LEN} characters"),
            );
        }
        if self.types.is_empty() {
            return bad(
                "types",
                "must name at least one event type (or \"*\")".into(),
            );
        }
        if let Err(name) = self.mask() {
            return bad("types", format!("unknown event type {name:?}"));
        }
        for (field, v, min, max) in [
            ("batch_max", self.batch_max as u64, 1, 1000),
            ("timeout_ms", self.timeout_ms, 1, 300_000),
            ("max_attempts", u64::from(self.max_attempts), 1, 100),
            ("queue_capacity", self.queue_capacity as u64, 1, 10_000_000),
            ("backoff_base_ms", self.backoff_base_ms, 1, 3_600_000),
            ("backoff_max_ms", self.backoff_max_ms, 1, 3_600_000),
        ] {
            if !(min..=max).contains(&v) {
                return bad(field, format!("must be between {min} and {max}"));
            }
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return bad("backoff_max_ms", "must be at least backoff_base_ms".into());
        }
        if !self.source.is_empty() && self.source.chars().any(char::is_control) {
            return bad("source", "must not contain control characters".into());
        }
        Ok(())
    }
}

/// The seed protocols Herald speaks besides its own (docs/dialects.md).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialectsConfig {
    pub subsocket: DialectMount,
    pub eventual: DialectMount,
    pub simplysocket: DialectMount,
    pub pushstream: PushStreamConfig,
    pub wspush: WsPushConfig,
}

/// The WS-PushServer dialect: its WebSocket and its HTTP API were on separate ports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsPushConfig {
    pub enabled: bool,
    /// On the main listener: WebSocket at `<prefix>/ws`, HTTP API at `<prefix>/channel/...`,
    /// `<prefix>/push` and `<prefix>/sysadmin`.
    pub prefix: String,
    /// A listener of its own for the WebSocket (every path), e.g. "0.0.0.0:5222".
    pub listen: String,
    /// A listener of its own for the HTTP API, e.g. "0.0.0.0:5223".
    pub http_listen: String,
    /// Who may use `/channel/create`: "anyone" (as the original) or "admin" (the admin key in
    /// `Authorization: Bearer`).
    pub create: String,
    /// Anonymous creations per second from one address (0 = no limit).
    pub create_rate_per_ip: u32,
    pub create_burst_per_ip: u32,
    /// Anonymous creation is refused once the server holds this many persistent channels.
    pub create_max_channels: usize,
}

impl Default for WsPushConfig {
    fn default() -> Self {
        WsPushConfig {
            enabled: false,
            prefix: "/wspush".into(),
            listen: String::new(),
            http_listen: String::new(),
            create: "anyone".into(),
            create_rate_per_ip: 1,
            create_burst_per_ip: 10,
            create_max_channels: 10_000,
        }
    }
}

impl WsPushConfig {
    pub fn mount(&self) -> DialectMount {
        DialectMount {
            enabled: self.enabled,
            prefix: self.prefix.clone(),
            listen: self.listen.clone(),
            static_dir: String::new(),
        }
    }

    pub fn http_mount(&self) -> DialectMount {
        DialectMount {
            enabled: self.enabled,
            prefix: String::new(),
            listen: self.http_listen.clone(),
            static_dir: String::new(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut mount = self.mount();
        if self.enabled && mount.prefix.is_empty() && mount.listen.is_empty() {
            mount.listen = self.http_listen.clone();
        }
        mount.validate("wspush")?;
        if self.create != "anyone" && self.create != "admin" {
            return Err(ConfigError(
                "dialects.wspush.create: must be \"anyone\" or \"admin\"".into(),
            ));
        }
        if !self.http_listen.is_empty() && self.http_listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError(
                "dialects.wspush.http_listen: not an address like 0.0.0.0:5223".into(),
            ));
        }
        Ok(())
    }
}

/// The push-stream dialect: its mount, and the optional auth hook to the app's backend.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushStreamConfig {
    pub enabled: bool,
    pub prefix: String,
    pub listen: String,
    /// The app backend asked at each subscriber's connect: Herald POSTs the request's
    /// `auth_headers` there; a 2xx answer `{"channels":[...]}` admits the subscriber to those
    /// channels. Empty: no hook (subscribers get the channels in their URL).
    pub auth_url: String,
    /// Request headers forwarded to `auth_url` (case-insensitive names).
    pub auth_headers: Vec<String>,
    /// How long the backend may take before the subscriber is refused (503).
    pub auth_timeout_ms: u64,
}

impl Default for PushStreamConfig {
    fn default() -> Self {
        PushStreamConfig {
            enabled: false,
            prefix: "/pushstream".into(),
            listen: String::new(),
            auth_url: String::new(),
            auth_headers: vec!["cookie".into(), "authorization".into()],
            auth_timeout_ms: 2000,
        }
    }
}

impl PushStreamConfig {
    pub fn mount(&self) -> DialectMount {
        DialectMount {
            enabled: self.enabled,
            prefix: self.prefix.clone(),
            listen: self.listen.clone(),
            static_dir: String::new(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.mount().validate("pushstream")?;
        if !self.auth_url.is_empty() {
            let ok = is_http_url(&self.auth_url);
            if !ok {
                return Err(ConfigError(
                    "dialects.pushstream.auth_url: must be an http:// URL (or empty)".into(),
                ));
            }
        }
        if !(1..=60_000).contains(&self.auth_timeout_ms) {
            return Err(ConfigError(
                "dialects.pushstream.auth_timeout_ms: must be between 1 and 60000".into(),
            ));
        }
        if let Some(h) = self
            .auth_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(ConfigError(format!(
                "dialects.pushstream.auth_headers: {h:?} is not a header name"
            )));
        }
        Ok(())
    }
}

/// Where a dialect is served: under `prefix` on the main listener, and optionally on a
/// listener of its own with the original paths at the root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialectMount {
    pub enabled: bool,
    /// Path prefix on the main listener, e.g. "/subsocket" (its WebSocket is then at
    /// "/subsocket/socket"). Empty: not mounted on the main listener.
    pub prefix: String,
    /// A listener of its own serving the original paths, e.g. "0.0.0.0:8081". Empty: none.
    pub listen: String,
    /// SubSocket only: a folder served at `/static/` (the original's test pages). Empty: none.
    pub static_dir: String,
}

impl DialectMount {
    fn with_prefix(prefix: &str) -> Self {
        DialectMount {
            enabled: false,
            prefix: prefix.into(),
            listen: String::new(),
            static_dir: String::new(),
        }
    }

    /// The parsed `listen` address, if one is configured.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let bad =
            |field: &str, why: &str| Err(ConfigError(format!("dialects.{key}.{field}: {why}")));
        if !self.prefix.is_empty()
            && (!self.prefix.starts_with('/')
                || self.prefix.ends_with('/')
                || self.prefix.len() < 2)
        {
            return bad(
                "prefix",
                "must look like \"/name\" (leading slash, no trailing slash) or be empty",
            );
        }
        let own = [
            "/api", "/ws", "/healthz", "/console", "/metrics", "/sse", "/stream", "/poll",
        ];
        if own.iter().any(|p| self.prefix == *p) {
            return bad("prefix", "clashes with one of Herald's own routes");
        }
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return bad("listen", "not an address like 0.0.0.0:8081");
        }
        if self.enabled && self.prefix.is_empty() && self.listen.is_empty() {
            return bad("enabled", "needs a prefix or a listen address");
        }
        Ok(())
    }
}

impl Default for DialectMount {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// A connection silent (no frame, no pong) for this long is closed with 4101.
    pub ping_timeout_secs: u64,
    /// Largest WebSocket message a client may send; larger ones get `message_too_large`.
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it is disconnected as a slow consumer (4100).
    pub outbox_max_bytes: usize,
    /// Seconds a WebSocket handshake (and an HTTP request head) may take.
    pub handshake_timeout_secs: u64,
    /// The kernel's send buffer of every connection Herald accepts (`SO_SNDBUF`, set on the
    /// listening sockets; the kernel doubles it). Bounds what a reader that stalls holds in
    /// the kernel besides its outbox. 0: the kernel's own sizing (up to `tcp_wmem`'s maximum).
    pub send_buffer_bytes: usize,
    /// Origins browsers may open WebSockets from (`https://app.example.com`,
    /// `https://*.example.com`, `*`). Empty: any. Handshakes without `Origin` always pass.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Subscribing to an unknown channel creates it (publishing to one reaches nobody).
    pub auto_create: bool,
    /// Options of channels created on first use.
    pub public: bool,
    pub client_publish: bool,
    /// 0 = unlimited.
    pub max_subscribers: u32,
    /// A publishing client receives its own publication (when subscribed).
    pub echo: bool,
    /// Largest publication per channel, in bytes; 0 = `limits.max_payload_bytes`.
    pub max_payload_bytes: u32,
    /// Clients may send direct messages (`op: send`) to other clients.
    pub client_direct_messages: bool,
    /// Publications each channel keeps for recovery and the history op (0: none).
    pub history_size: u32,
    /// Seconds each kept publication lives.
    pub history_ttl_secs: u32,
    /// Subscribers may ask who is subscribed.
    pub presence: bool,
    /// Subscribers are told when others join and leave.
    pub join_leave: bool,
}

/// Most `[namespaces.<ns>]` tables.
pub const MAX_NAMESPACES: usize = 256;
/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// `[namespaces.<ns>]`: the options of channels named `<ns>:...`. Keys left out take the
/// `[channels]` value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// "public" (anyone), "private" (holders of the channel's token, and admins) or "admin"
    /// (admins only). Left out: `[channels] public` (true = "public", false = "private").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<String>,
    /// "clients" (clients too) or "admin" (admins, the HTTP API and the backend only).
    /// Left out: `[channels] client_publish`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// 0 = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscribers: Option<u32>,
    /// A publishing client receives its own publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Largest publication, in bytes (at most `limits.max_payload_bytes`); 0 = that limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
    /// Publications each channel keeps (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<u32>,
    /// Seconds each kept publication lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
}

impl NamespaceConfig {
    fn validate(&self, ns: &str, max_payload: usize) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("namespaces.{ns}{key}: {why}")));
        if ns.is_empty()
            || ns.len() > MAX_NAMESPACE_LEN
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "",
                "a namespace name has 1 to 64 ASCII letters, digits, '-' or '_'",
            );
        }
        if let Some(v) = &self.subscribe
            && SubscribePolicy::parse(v).is_none()
        {
            return bad(".subscribe", "must be \"public\", \"private\" or \"admin\"");
        }
        if let Some(v) = &self.publish
            && v != "clients"
            && v != "admin"
        {
            return bad(".publish", "must be \"clients\" or \"admin\"");
        }
        if let Some(v) = self.max_payload_bytes
            && v as usize > max_payload
        {
            return bad(
                ".max_payload_bytes",
                &format!("must not exceed limits.max_payload_bytes ({max_payload})"),
            );
        }
        Ok(())
    }

    /// These options over `defaults` (the `[channels]` ones). Call after validation.
    fn options(&self, defaults: &ChannelOptions) -> ChannelOptions {
        let mut options = defaults.clone();
        if let Some(policy) = self.subscribe.as_deref().and_then(SubscribePolicy::parse) {
            options.set_subscribe(policy);
        }
        if let Some(publish) = &self.publish {
            options.client_publish = publish == "clients";
        }
        if let Some(n) = self.max_subscribers {
            options.max_subscribers = (n > 0).then_some(n);
        }
        if let Some(echo) = self.echo {
            options.echo = echo;
        }
        if let Some(n) = self.max_payload_bytes {
            options.max_payload_bytes = (n > 0).then_some(n);
        }
        if let Some(n) = self.history_size {
            options.history_size = n;
        }
        if let Some(n) = self.history_ttl_secs {
            options.history_ttl_secs = n;
        }
        if let Some(b) = self.presence {
            options.presence = b;
        }
        if let Some(b) = self.join_leave {
            options.join_leave = b;
        }
        options
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_channels_per_connection: usize,
    pub max_channels_per_request: usize,
    pub max_payload_bytes: usize,
    pub max_recipients: usize,
    pub max_http_body_bytes: usize,
    /// Publications in one `POST /api/v1/batch`.
    pub max_batch_publications: usize,
    /// Open WebSocket connections per IP address (IPv6: per /64). 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Open WebSocket connections per user. 0 = unlimited.
    pub max_connections_per_user: usize,
    /// WebSocket handshakes per second per IP address (token bucket). 0 = off.
    pub connect_rate_per_ip: u32,
    /// Handshakes an address may make at once before `connect_rate_per_ip` applies.
    pub connect_burst_per_ip: u32,
    /// Messages per second per connection (token bucket). 0 = off.
    pub messages_per_second: u32,
    /// Messages a connection may send at once before `messages_per_second` applies.
    pub message_burst: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("./herald-data"),
            admin_key: String::new(),
            log: "info".into(),
            websocket: WebSocketConfig::default(),
            channels: ChannelsConfig::default(),
            namespaces: BTreeMap::new(),
            limits: LimitsConfig::default(),
            events: EventsConfig::default(),
            dialects: DialectsConfig {
                subsocket: DialectMount::with_prefix("/subsocket"),
                eventual: DialectMount::with_prefix("/eventual"),
                simplysocket: DialectMount::with_prefix("/simplysocket"),
                pushstream: PushStreamConfig::default(),
                wspush: WsPushConfig::default(),
            },
            tls: TlsConfig::default(),
            webhooks: Vec::new(),
            jwt: JwtConfig::default(),
            auth_hook: Default::default(),
            history: HistoryConfig::default(),
            node_name: String::new(),
            metrics_listen: String::new(),
            broker: BrokerConfig::default(),
            ingress: Vec::new(),
            debug: DebugConfig::default(),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 25,
            ping_timeout_secs: 60,
            max_message_bytes: 64 * 1024,
            outbox_max_bytes: 1024 * 1024,
            handshake_timeout_secs: 10,
            send_buffer_bytes: 128 * 1024,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            auto_create: true,
            public: true,
            client_publish: false,
            max_subscribers: 0,
            echo: true,
            max_payload_bytes: 0,
            client_direct_messages: false,
            history_size: 0,
            history_ttl_secs: herald_core::channel::DEFAULT_HISTORY_TTL_SECS,
            presence: false,
            join_leave: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_channels_per_connection: 1000,
            max_channels_per_request: 100,
            max_payload_bytes: 64 * 1024,
            max_recipients: 1000,
            max_http_body_bytes: 1024 * 1024,
            max_batch_publications: 1000,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            connect_rate_per_ip: 0,
            connect_burst_per_ip: 10,
            messages_per_second: 0,
            message_burst: 50,
        }
    }
}

/// Room for a delivery's envelope and framing beyond its payload.
pub const OUTBOX_HEADROOM: usize = 1024;

/// Shortest admin key accepted from the configuration (generated keys have 43 characters).
pub const MIN_ADMIN_KEY_LEN: usize = 12;

/// Top-level keys that are values, not sections.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "admin_key",
    "log",
    "node_name",
    "metrics_listen",
];

/// Sections (`[websocket]`, `[[webhooks]]`, ...).
const SECTIONS: &[&str] = &[
    "dialects",
    "websocket",
    "channels",
    "namespaces",
    "history",
    "broker",
    "limits",
    "events",
    "tls",
    "jwt",
    "webhooks",
    "auth_hook",
    "ingress",
    "debug",
];

/// Whether a `HERALD_*` variable's first part (before `__`) names a setting: the variables
/// that are ours.
fn is_known_key(first: &str) -> bool {
    TOP_LEVEL_KEYS
        .iter()
        .chain(SECTIONS)
        .any(|k| first.eq_ignore_ascii_case(k))
}

/// `HERALD_*` variables that the `herald` commands read themselves (not settings).
const CLIENT_VARIABLES: &[&str] = &["HERALD_URL", "HERALD_WS_URL", "HERALD_BIN"];

/// The `HERALD_*` variables among `vars` that are not read as settings, each with what was
/// probably meant (`HERALD_BROKER_TYPE`: `HERALD_BROKER__TYPE`): a misspelled name is
/// otherwise ignored without a word, and the server runs with the default.
pub fn unread_variables(vars: impl Iterator<Item = String>) -> Vec<(String, Option<String>)> {
    let mut unread = Vec::new();
    for name in vars {
        let Some(key) = name.strip_prefix("HERALD_") else {
            continue;
        };
        let first = key.split("__").next().unwrap_or_default();
        if is_known_key(first) || CLIENT_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        // A section followed by one underscore instead of two.
        let meant = SECTIONS.iter().find_map(|section| {
            let rest = key.get(section.len()..)?;
            (key[..section.len()].eq_ignore_ascii_case(section) && rest.starts_with('_'))
                .then(|| format!("HERALD_{}_{rest}", &key[..section.len()]))
        });
        unread.push((name, meant));
    }
    unread
}

/// Whether `url` is an `http://` URL with a host (outgoing calls: hooks and webhooks; Herald
/// has no TLS client).
pub fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some())
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults, then `file` (if given, it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new().merge(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(
            Env::prefixed("HERALD_")
                .split("__")
                .filter(|key| is_known_key(key.as_str().split('.').next().unwrap_or_default())),
        );
        Self::extract(fig)
    }

    /// Defaults, then the TOML `text` (no file, no environment), validated: what
    /// [`Config::load`] makes of a file holding `text` when no `HERALD_*` variable is set.
    /// Pure, so that it can be fuzzed (`fuzz/fuzz_targets/config.rs`).
    #[doc(hidden)]
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::new()
                .merge(Serialized::defaults(Config::default()))
                .merge(Toml::string(text)),
        )
    }

    fn extract(fig: Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        self.validate_durations()?;
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad(
                "metrics_listen",
                "must be an address like \"127.0.0.1:9091\" (or empty)",
            );
        }
        let ws = &self.websocket;
        if ws.ping_interval_secs == 0 {
            return bad("websocket.ping_interval_secs", "must be at least 1");
        }
        if ws.ping_timeout_secs <= ws.ping_interval_secs {
            return bad(
                "websocket.ping_timeout_secs",
                "must be greater than ping_interval_secs",
            );
        }
        if !(128..=64 * 1024 * 1024).contains(&ws.max_message_bytes) {
            return bad(
                "websocket.max_message_bytes",
                "must be between 128 and 67108864",
            );
        }
        // One largest delivery (payload + envelope + framing) must fit, or every subscriber
        // of a large publication would be cut off as a slow consumer.
        if ws.outbox_max_bytes < self.limits.max_payload_bytes + OUTBOX_HEADROOM {
            return bad(
                "websocket.outbox_max_bytes",
                &format!(
                    "must be at least limits.max_payload_bytes + {OUTBOX_HEADROOM} ({})",
                    self.limits.max_payload_bytes + OUTBOX_HEADROOM
                ),
            );
        }
        if ws.handshake_timeout_secs == 0 {
            return bad("websocket.handshake_timeout_secs", "must be at least 1");
        }
        if ws.send_buffer_bytes != 0 && !(4096..=64 * 1024 * 1024).contains(&ws.send_buffer_bytes) {
            return bad(
                "websocket.send_buffer_bytes",
                "must be 0 (the kernel's sizing) or between 4096 and 67108864",
            );
        }
        if let Some(h) = self
            .events
            .headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(ConfigError(format!(
                "events.headers: {h:?} is not a header name"
            )));
        }
        if let Some(h) = self.events.headers.iter().find(|h| {
            ["authorization", "proxy-authorization", "cookie"]
                .iter()
                .any(|secret| h.eq_ignore_ascii_case(secret))
        }) {
            return Err(ConfigError(format!(
                "events.headers: {h:?} carries credentials and is never copied into events"
            )));
        }
        if self.events.headers.len() > 32 {
            return bad("events.headers", "at most 32 headers");
        }
        self.jwt.validate()?;
        self.auth_hook.validate()?;
        self.broker.validate()?;
        if self.node_name.len() > 128 {
            return bad("node_name", "at most 128 characters");
        }
        self.dialects.subsocket.validate("subsocket")?;
        self.dialects.eventual.validate("eventual")?;
        self.dialects.simplysocket.validate("simplysocket")?;
        self.dialects.pushstream.validate()?;
        self.dialects.wspush.validate()?;
        self.tls.validate()?;
        self.debug.validate(&self.dialects)?;
        for (i, webhook) in self.webhooks.iter().enumerate() {
            webhook.validate(i)?;
        }
        for (i, ingress) in self.ingress.iter().enumerate() {
            ingress.validate(i)?;
            let source = (ingress.kind.as_str(), ingress.source());
            if let Some(j) = self.ingress[..i]
                .iter()
                .position(|other| (other.kind.as_str(), other.source()) == source)
            {
                return bad(
                    &format!("ingress[{i}]"),
                    &format!("reads the same queue as ingress[{j}]"),
                );
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_channels_per_connection",
                l.max_channels_per_connection,
            ),
            (
                "limits.max_channels_per_request",
                l.max_channels_per_request,
            ),
            ("limits.max_payload_bytes", l.max_payload_bytes),
            ("limits.max_recipients", l.max_recipients),
            ("limits.max_http_body_bytes", l.max_http_body_bytes),
            ("limits.max_batch_publications", l.max_batch_publications),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if l.max_payload_bytes > l.max_http_body_bytes {
            return bad(
                "limits.max_payload_bytes",
                "must not exceed limits.max_http_body_bytes",
            );
        }
        validate_limits(self)?;
        self.validate_namespaces()?;
        if self.admin_key.is_empty() {
            return Ok(());
        }
        if self.admin_key.len() < MIN_ADMIN_KEY_LEN {
            return bad(
                "admin_key",
                "must be at least 12 characters (or empty to generate one)",
            );
        }
        Ok(())
    }

    fn validate_namespaces(&self) -> Result<(), ConfigError> {
        let max_payload = self.limits.max_payload_bytes;
        if self.channels.max_payload_bytes as usize > max_payload {
            return Err(ConfigError(format!(
                "channels.max_payload_bytes: must not exceed limits.max_payload_bytes ({max_payload})"
            )));
        }
        if self.namespaces.len() > MAX_NAMESPACES {
            return Err(ConfigError(format!(
                "namespaces: at most {MAX_NAMESPACES} namespaces"
            )));
        }
        for (ns, namespace) in &self.namespaces {
            namespace.validate(ns, max_payload)?;
        }
        let defaults = self.channel_defaults();
        defaults
            .validate_history()
            .map_err(|why| ConfigError(format!("channels.{why}")))?;
        for (ns, namespace) in &self.namespaces {
            namespace
                .options(&defaults)
                .validate_history()
                .map_err(|why| ConfigError(format!("namespaces.{ns}.{why}")))?;
        }
        if self.history.max_bytes < 1024 {
            return Err(ConfigError(
                "history.max_bytes: must be at least 1024".into(),
            ));
        }
        Ok(())
    }

    /// The options of channels without a configured namespace (`[channels]`).
    fn channel_defaults(&self) -> ChannelOptions {
        let c = &self.channels;
        ChannelOptions {
            public: c.public,
            client_publish: c.client_publish,
            max_subscribers: (c.max_subscribers > 0).then_some(c.max_subscribers),
            admin_only_subscribe: false,
            echo: c.echo,
            max_payload_bytes: (c.max_payload_bytes > 0).then_some(c.max_payload_bytes),
            history_size: c.history_size,
            history_ttl_secs: c.history_ttl_secs,
            presence: c.presence,
            join_leave: c.join_leave,
        }
    }

    /// The hub's share of the configuration.
    pub fn hub_config(&self) -> HubConfig {
        let channel_defaults = self.channel_defaults();
        let namespaces: HashMap<String, ChannelOptions> = self
            .namespaces
            .iter()
            .map(|(ns, n)| (ns.clone(), n.options(&channel_defaults)))
            .collect();
        HubConfig {
            outbox_max_bytes: self.websocket.outbox_max_bytes,
            max_channels_per_connection: self.limits.max_channels_per_connection,
            max_channels_per_request: self.limits.max_channels_per_request,
            max_payload_bytes: self.limits.max_payload_bytes,
            max_recipients: self.limits.max_recipients,
            auto_create_channels: self.channels.auto_create,
            channel_defaults,
            namespaces,
            client_direct_messages: self.channels.client_direct_messages,
            history_max_bytes: self.history.max_bytes,
        }
    }
}

/// figment's errors already name the key ("for key `websocket.ping_interval_secs`"); keep
/// every error of a multi-error report.
/// Longest time a `*_secs` or `*_ms` setting may name: a year. Far past it, a deadline no
/// longer fits the clock (`u64::MAX` seconds made every request panic).
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

impl Config {
    /// Every time setting within [`MAX_DURATION_SECS`] (`history_ttl_secs`, 32 bits, cannot
    /// overflow).
    fn validate_durations(&self) -> Result<(), ConfigError> {
        let (ws, broker, hook) = (&self.websocket, &self.broker, &self.auth_hook);
        let mut secs = vec![
            (
                "websocket.ping_interval_secs".to_string(),
                ws.ping_interval_secs,
            ),
            ("websocket.ping_timeout_secs".into(), ws.ping_timeout_secs),
            (
                "websocket.handshake_timeout_secs".into(),
                ws.handshake_timeout_secs,
            ),
            ("broker.presence_ttl_secs".into(), broker.presence_ttl_secs),
            (
                "broker.follow_linger_secs".into(),
                broker.follow_linger_secs,
            ),
            ("jwt.leeway_secs".into(), self.jwt.leeway_secs),
            ("auth_hook.cache_secs".into(), hook.cache_secs),
        ];
        let mut ms = vec![
            ("broker.timeout_ms".to_string(), broker.timeout_ms),
            ("auth_hook.timeout_ms".into(), hook.timeout_ms),
            (
                "dialects.pushstream.auth_timeout_ms".into(),
                self.dialects.pushstream.auth_timeout_ms,
            ),
        ];
        for (i, w) in self.webhooks.iter().enumerate() {
            ms.push((format!("webhooks[{i}].timeout_ms"), w.timeout_ms));
            ms.push((format!("webhooks[{i}].backoff_base_ms"), w.backoff_base_ms));
            ms.push((format!("webhooks[{i}].backoff_max_ms"), w.backoff_max_ms));
        }
        secs.extend(ms.into_iter().map(|(key, v)| (key, v.div_ceil(1000))));
        match secs.into_iter().find(|(_, v)| *v > MAX_DURATION_SECS) {
            Some((key, _)) => Err(ConfigError(format!(
                "{key}: must be at most a year ({MAX_DURATION_SECS} s)"
            ))),
            None => Ok(()),
        }
    }
}

fn describe(err: figment2::Error) -> String {
    err.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The commented file written by `herald config init`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../herald.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists that pick `HERALD_*` variables hold every key of the configuration, each
    /// where it belongs (a section is a table or a list of tables).
    #[test]
    fn the_variable_lists_know_every_key() {
        let config = serde_json::to_value(Config::default()).unwrap();
        let keys = config.as_object().unwrap();
        for (key, value) in keys {
            let section = value.is_object() || value.is_array();
            let listed = if section { SECTIONS } else { TOP_LEVEL_KEYS };
            assert!(listed.contains(&key.as_str()), "{key} (section: {section})");
        }
        assert_eq!(keys.len(), TOP_LEVEL_KEYS.len() + SECTIONS.len());
    }

    #[test]
    fn misspelled_variables_are_named_with_what_was_meant() {
        let vars = [
            "HERALD_BROKER_TYPE",
            "HERALD_BROKER__TYPE",
            "HERALD_LISTEN",
            "HERALD_URL",
            "HERALD_LISTEN_ADDR",
            "HERALD_NOPE",
            "HERALD_AUTH_HOOK_URL",
            "PATH",
        ]
        .map(String::from);
        let unread = unread_variables(vars.into_iter());
        assert_eq!(
            unread,
            vec![
                (
                    "HERALD_BROKER_TYPE".to_string(),
                    Some("HERALD_BROKER__TYPE".to_string())
                ),
                ("HERALD_LISTEN_ADDR".to_string(), None),
                ("HERALD_NOPE".to_string(), None),
                (
                    "HERALD_AUTH_HOOK_URL".to_string(),
                    Some("HERALD_AUTH_HOOK__URL".to_string())
                ),
            ]
        );
    }

    /// A time setting past a year is refused, naming its key: `u64::MAX` seconds of
    /// handshake timeout passed `config check` and made every HTTP request panic, and a huge
    /// ping interval panicked every WebSocket handshake.
    #[test]
    fn time_settings_are_bounded() {
        type Set = fn(&mut Config, u64);
        let cases: [(&str, Set); 9] = [
            ("websocket.handshake_timeout_secs", |c, v| {
                c.websocket.handshake_timeout_secs = v
            }),
            ("websocket.ping_interval_secs", |c, v| {
                c.websocket.ping_interval_secs = v;
                c.websocket.ping_timeout_secs = v.saturating_add(1);
            }),
            ("websocket.ping_timeout_secs", |c, v| {
                c.websocket.ping_timeout_secs = v
            }),
            ("broker.presence_ttl_secs", |c, v| {
                c.broker.presence_ttl_secs = v
            }),
            ("broker.timeout_ms", |c, v| c.broker.timeout_ms = v),
            ("jwt.leeway_secs", |c, v| c.jwt.leeway_secs = v),
            ("auth_hook.cache_secs", |c, v| c.auth_hook.cache_secs = v),
            ("auth_hook.timeout_ms", |c, v| c.auth_hook.timeout_ms = v),
            ("webhooks[0].backoff_max_ms", |c, v| {
                c.webhooks.push(WebhookConfig {
                    url: "http://127.0.0.1:1/hook".into(),
                    ..WebhookConfig::default()
                });
                c.webhooks[0].backoff_max_ms = v;
            }),
        ];
        for (key, set) in cases {
            for huge in [u64::MAX, i64::MAX as u64, MAX_DURATION_SECS * 1000 + 1] {
                let mut config = Config::default();
                set(&mut config, huge);
                let err = config.validate().unwrap_err().0;
                assert!(err.starts_with(key), "{key} = {huge}: {err}");
            }
        }
        // A year is allowed (where nothing else bounds the key).
        let mut config = Config::default();
        config.websocket.handshake_timeout_secs = MAX_DURATION_SECS;
        config.validate().unwrap();
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, DEFAULT_CONFIG_TOML).unwrap();
        let parsed: Config = Figment::new().merge(Toml::file(&path)).extract().unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    /// Every key of the configuration appears in the file `herald config init` writes (set
    /// or commented out), under its section's header.
    #[test]
    fn example_file_shows_every_key() {
        fn walk(path: &str, value: &serde_json::Value, missing: &mut Vec<String>) {
            let serde_json::Value::Object(map) = value else {
                return;
            };
            let has_leaves = map.values().any(|v| !v.is_object());
            if !path.is_empty()
                && has_leaves
                && !DEFAULT_CONFIG_TOML
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("[{path}]")))
            {
                missing.push(format!("[{path}]"));
            }
            for (key, v) in map {
                if v.is_object() {
                    let sub = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(&sub, v, missing);
                } else if !DEFAULT_CONFIG_TOML.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    // A list of tables, e.g. `[[webhooks]]`, is shown by an example table.
                    l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[[{key}]]"))
                }) {
                    missing.push(format!("{path}.{key}"));
                }
            }
        }
        let default = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        walk("", &default, &mut missing);
        assert!(
            missing.is_empty(),
            "not in herald.example.toml: {missing:?}"
        );
        assert!(DEFAULT_CONFIG_TOML.ends_with('\n'));
    }

    /// The fuzzed entry point reads a text as `load` reads a file holding it.
    #[test]
    fn a_toml_text_loads_as_a_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        for text in [
            DEFAULT_CONFIG_TOML,
            "[limits]\nmax_connections = 7\n",
            "[websocket]\nping_interval_secs = 0\n",
            "[websocket]\nping_intervl_secs = 3\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let from_file = Config::load(Some(&path)).map(|c| format!("{c:?}"));
            let from_text = Config::from_toml_str(text).map(|c| format!("{c:?}"));
            assert_eq!(from_text.is_ok(), from_file.is_ok(), "{text}");
            if let (Ok(a), Ok(b)) = (from_text, from_file) {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, "[websocket]\nping_interval_secs = \"soon\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("websocket.ping_interval_secs"), "{err}");

        std::fs::write(&path, "[websocket]\nping_intervl_secs = 3\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("ping_intervl_secs"), "{err}");

        std::fs::write(&path, "[websocket]\nping_interval_secs = 0\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("websocket.ping_interval_secs"), "{err}");

        std::fs::write(&path, "[websocket]\noutbox_max_bytes = 1000\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("websocket.outbox_max_bytes"), "{err}");

        std::fs::write(&path, "[tls]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("tls.cert_file"), "{err}");

        std::fs::write(&path, "[tls]\nlisten = \"everywhere\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("tls.listen"), "{err}");

        std::fs::write(&path, "[events]\nheaders = [\"Authorization\"]\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("events.headers") && err.contains("credentials"),
            "{err}"
        );

        let err = Config::load(Some(&dir.path().join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn debug_echo_is_off_by_default_and_checked() {
        assert!(!Config::default().debug.ws_echo);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path))
        };
        assert!(load("[debug]\nws_echo = true\n").unwrap().debug.ws_echo);
        let err = load("[debug]\nws_echo = 1\n").unwrap_err().to_string();
        assert!(err.contains("debug.ws_echo"), "{err}");
        let err = load("[debug]\nws_eho = true\n").unwrap_err().to_string();
        assert!(err.contains("ws_eho"), "{err}");
        let clash = "[dialects.simplysocket]\nenabled = true\nprefix = \"/debug\"\n";
        assert!(load(clash).is_ok(), "no clash while the echo is off");
        let err = load(&format!("{clash}[debug]\nws_echo = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("debug.ws_echo") && err.contains("dialects.simplysocket.prefix"),
            "{err}"
        );
    }

    #[test]
    fn redis_topologies_parse_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path))
        };
        let c = load(
            "[broker]\ntype = \"redis\"\nsentinel_master = \"mymaster\"\n\
             sentinel_nodes = [\"redis://127.0.0.1:26379/\", \"redis://:pw@127.0.0.1:26380/\"]\n",
        )
        .unwrap();
        assert_eq!(c.broker.sentinel_nodes.len(), 2);
        assert!(!format!("{c:?}").contains("pw@"), "URLs are not shown");
        let c = load("[broker]\ntype = \"redis\"\ncluster_nodes = [\"redis://127.0.0.1:7000/\"]\n")
            .unwrap();
        assert_eq!(c.broker.cluster_nodes[0].0, "redis://127.0.0.1:7000/");
        for (toml, key) in [
            ("type = \"redis\"\n", "broker.url"),
            (
                "type = \"redis\"\nurl = \"redis://a/\"\ncluster_nodes = [\"redis://b/\"]\n",
                "broker.cluster_nodes",
            ),
            (
                "type = \"redis\"\nsentinel_nodes = [\"redis://b/\"]\n",
                "broker.sentinel_master",
            ),
            (
                "type = \"redis\"\nurl = \"redis://a/\"\nsentinel_master = \"m\"\n",
                "broker.sentinel_master",
            ),
            (
                "type = \"redis\"\ncluster_nodes = [\"redis://a/\", \"http://b/\"]\n",
                "broker.cluster_nodes[1]",
            ),
            (
                "type = \"nats\"\nurl = \"nats://a/\"\ncluster_nodes = [\"redis://a/\"]\n",
                "broker.cluster_nodes",
            ),
            // The ranges hold with the default (memory) broker too.
            ("prefix = \"a b\"\n", "broker.prefix"),
            ("timeout_ms = 0\n", "broker.timeout_ms"),
            (
                "type = \"memory\"\npresence_ttl_secs = 2\n",
                "broker.presence_ttl_secs",
            ),
            ("follow_linger_secs = 86401\n", "broker.follow_linger_secs"),
        ] {
            let err = load(&format!("[broker]\n{toml}")).unwrap_err().to_string();
            assert!(err.contains(&format!("{key}:")), "{key}: {err}");
        }
    }

    #[test]
    fn namespaces_parse_over_the_channel_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            r#"
[channels]
client_publish = true
max_subscribers = 10
[namespaces.chat]
echo = false
max_payload_bytes = 100
[namespaces.orders]
subscribe = "private"
publish = "admin"
max_subscribers = 0
[namespaces.ops]
subscribe = "admin"
"#,
        )
        .unwrap();
        let hub = Config::load(Some(&path)).unwrap().hub_config();
        let chat = herald_core::ChannelName::parse("chat:room").unwrap();
        let chat = hub.defaults_for(&chat);
        assert!(chat.public && chat.client_publish && !chat.echo);
        assert_eq!(chat.max_subscribers, Some(10), "inherited from [channels]");
        assert_eq!(chat.max_payload_bytes, Some(100));
        let orders = &hub.namespaces["orders"];
        assert_eq!(orders.subscribe(), SubscribePolicy::Private);
        assert!(!orders.client_publish && orders.echo);
        assert_eq!(orders.max_subscribers, None, "0 = unlimited");
        assert_eq!(hub.namespaces["ops"].subscribe(), SubscribePolicy::Admin);
        let plain = herald_core::ChannelName::parse("plain").unwrap();
        assert_eq!(hub.defaults_for(&plain), &hub.channel_defaults);
        assert!(hub.channel_defaults.client_publish && hub.channel_defaults.echo);
    }

    #[test]
    fn commented_namespaces_of_the_example_file_are_valid() {
        let start = DEFAULT_CONFIG_TOML
            .find("# [namespaces.")
            .expect("the example file shows namespaces");
        let mut toml = DEFAULT_CONFIG_TOML[..start].to_string();
        for line in DEFAULT_CONFIG_TOML[start..].lines() {
            match line.strip_prefix("# ") {
                Some(l) if l.starts_with('[') || l.contains(" = ") => toml.push_str(l),
                _ if line.starts_with('#') || line.is_empty() => {}
                _ => break,
            }
            toml.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(
            config.namespaces.keys().collect::<Vec<_>>(),
            ["chat", "orders"]
        );
    }

    #[test]
    fn commented_ingresses_of_the_example_file_are_valid() {
        let start = DEFAULT_CONFIG_TOML
            .find("# [[ingress]]")
            .expect("the example file shows ingresses");
        let mut toml = String::new();
        for line in DEFAULT_CONFIG_TOML[start..].lines() {
            match line.strip_prefix("# ") {
                Some(l) if l.starts_with('[') || l.contains(" = ") => toml.push_str(l),
                _ if line.starts_with('#') => {}
                _ => break,
            }
            toml.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::load(Some(&path)).unwrap();
        let kinds: Vec<_> = config.ingress.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, ["redis_stream", "nats"]);
    }

    #[test]
    fn namespace_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path)).unwrap_err().to_string()
        };
        for (toml, expected) in [
            (
                "[namespaces.chat]\nsubscribe = \"friends\"\n",
                r#"namespaces.chat.subscribe: must be "public", "private" or "admin""#,
            ),
            (
                "[namespaces.chat]\npublish = \"anyone\"\n",
                r#"namespaces.chat.publish: must be "clients" or "admin""#,
            ),
            (
                "[namespaces.chat]\nmax_payload_bytes = 70000\n",
                "namespaces.chat.max_payload_bytes: must not exceed limits.max_payload_bytes (65536)",
            ),
            (
                "[namespaces.\"a.b\"]\necho = true\n",
                "namespaces.a.b: a namespace name has 1 to 64",
            ),
            (
                &format!("[namespaces.{}]\necho = true\n", "n".repeat(65)),
                "a namespace name has 1 to 64",
            ),
            ("[namespaces.chat]\ncolour = 1\n", "colour"),
            ("[namespaces.chat]\necho = \"no\"\n", "namespaces.chat.echo"),
            (
                "[channels]\nmax_payload_bytes = 70000\n",
                "channels.max_payload_bytes",
            ),
        ] {
            let err = load(toml);
            assert!(err.contains(expected), "{toml}: {err}");
        }
        let many: String = (0..=MAX_NAMESPACES)
            .map(|i| format!("[namespaces.n{i}]\n"))
            .collect();
        assert!(load(&many).contains("namespaces: at most 256"));
    }

    #[test]
    fn webhooks_parse_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path))
        };
        let ok =
            "[[webhooks]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"\n";
        let config = load(&format!(
            "{ok}types = [\"client.connected\"]\nbatch_max = 10\n[[webhooks]]\nurl = \"http://h/x\"\nsecret = \"fedcba9876543210\"\n"
        ))
        .unwrap();
        assert_eq!(config.webhooks.len(), 2);
        assert_eq!(config.webhooks[0].batch_max, 10);
        assert_eq!(config.webhooks[1].types, ["*"]);
        assert_eq!(config.webhooks[1].max_attempts, 8);
        assert!(
            !format!("{config:?}").contains("0123456789abcdef"),
            "secret in Debug"
        );

        for (extra, key) in [
            (
                "types = [\"client.connected\", \"x\"]\n",
                "webhooks[0].types: unknown event type \"x\"",
            ),
            ("types = []\n", "webhooks[0].types"),
            ("batch_max = 0\n", "webhooks[0].batch_max"),
            ("queue_capacity = 0\n", "webhooks[0].queue_capacity"),
            ("max_attempts = 0\n", "webhooks[0].max_attempts"),
            ("timeout_ms = 0\n", "webhooks[0].timeout_ms"),
            (
                "backoff_base_ms = 500\nbackoff_max_ms = 100\n",
                "webhooks[0].backoff_max_ms",
            ),
            ("colour = \"red\"\n", "colour"),
        ] {
            let err = load(&format!("{ok}{extra}")).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let err = load("[[webhooks]]\nurl = \"https://h/x\"\nsecret = \"0123456789abcdef\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("webhooks[0].url"), "{err}");
        let err = load("[[webhooks]]\nurl = \"http://u:pw@h/x\"\nsecret = \"0123456789abcdef\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("webhooks[0].url: must not contain credentials"),
            "{err}"
        );
        let err = load("[[webhooks]]\nurl = \"http://h/x\"\nsecret = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("webhooks[0].secret") && !err.contains("short"),
            "{err}"
        );
        let err = load(&format!(
            "{ok}[[webhooks]]\nsecret = \"0123456789abcdef\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("webhooks[1].url"), "{err}");
    }

    #[test]
    fn ingress_parses_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path))
        };
        let redis =
            "[[ingress]]\ntype = \"redis_stream\"\nurl = \"redis://:pw-s3cret@127.0.0.1:6379/\"\n";
        let nats = "[[ingress]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n";
        let config = load(&format!(
            "{redis}{nats}subject = \"notification\"\nformat = \"gogin\"\n"
        ))
        .unwrap();
        let [r, n] = &config.ingress[..] else {
            panic!("two ingresses")
        };
        assert_eq!(
            (r.stream(), r.group(), r.format.as_str()),
            ("herald:ingress", "herald", "herald")
        );
        assert_eq!((n.subject(), n.format.as_str()), ("notification", "gogin"));
        assert!(!format!("{config:?}").contains("pw-s3cret"), "URL in Debug");
        assert!(!r.source().contains("pw-s3cret"), "URL in messages");
        assert_eq!(load(nats).unwrap().ingress[0].subject(), "herald.ingress");

        for (toml, expected) in [
            (
                "[[ingress]]\nurl = \"redis://h/\"\n",
                "ingress[0].type: required",
            ),
            (
                "[[ingress]]\ntype = \"kafka\"\n",
                "ingress[0].type: must be",
            ),
            (
                "[[ingress]]\ntype = \"redis_stream\"\nurl = \"nats://h\"\n",
                "ingress[0].url",
            ),
            (
                "[[ingress]]\ntype = \"nats\"\nurl = \"redis://h/\"\n",
                "ingress[0].url",
            ),
            ("[[ingress]]\ntype = \"nats\"\n", "ingress[0].url"),
            (
                &format!("{redis}subject = \"s\"\n"),
                r#"ingress[0].subject: only with type = "nats""#,
            ),
            (
                &format!("{nats}stream = \"s\"\n"),
                r#"ingress[0].stream: only with type = "redis_stream""#,
            ),
            (&format!("{nats}group = \"g\"\n"), "ingress[0].group"),
            (&format!("{redis}stream = \"\"\n"), "ingress[0].stream"),
            (&format!("{redis}group = \"a\\nb\"\n"), "ingress[0].group"),
            (&format!("{nats}subject = \"a..b\"\n"), "ingress[0].subject"),
            (&format!("{nats}subject = \"a b\"\n"), "ingress[0].subject"),
            (&format!("{redis}format = \"json\"\n"), "ingress[0].format"),
            (&format!("{redis}colour = 1\n"), "colour"),
            (
                &format!("{nats}{redis}{redis}"),
                "ingress[2]: reads the same queue as ingress[1]",
            ),
        ] {
            let err = load(toml).unwrap_err().to_string();
            assert!(err.contains(expected), "{toml}: {err}");
            assert!(!err.contains("pw-s3cret"), "{err}");
        }
        // Another stream or group of the same Redis is another queue.
        assert!(load(&format!("{redis}{redis}stream = \"other\"\n")).is_ok());
    }

    #[test]
    fn auth_hook_parses_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load(Some(&path))
        };
        let config = load("[auth_hook]\nurl = \"http://127.0.0.1:9000/auth\"\non_subscribe = true\ncache_secs = 30\n").unwrap();
        assert!(config.auth_hook.on_subscribe);
        assert_eq!(config.auth_hook.headers, ["authorization", "cookie"]);
        for (toml, key) in [
            ("url = \"https://h/auth\"\n", "auth_hook.url"),
            (
                "url = \"http://h/a\"\ntimeout_ms = 0\n",
                "auth_hook.timeout_ms",
            ),
            (
                "url = \"http://h/a\"\ntimeout_ms = 60001\n",
                "auth_hook.timeout_ms",
            ),
            (
                "url = \"http://h/a\"\nheaders = [\"bad header\"]\n",
                "auth_hook.headers",
            ),
            (
                "url = \"http://h/a\"\ncache_secs = 3601\n",
                "auth_hook.cache_secs",
            ),
            ("on_publish = true\n", "auth_hook.on_publish"),
            ("colour = 1\n", "colour"),
        ] {
            let err = load(&format!("[auth_hook]\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}

/// Checks `[limits]` (and the rate keys of the dialects), naming the key.
fn validate_limits(config: &Config) -> Result<(), ConfigError> {
    let l = &config.limits;
    let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
    for (rate_key, rate, burst_key, burst) in [
        (
            "limits.connect_rate_per_ip",
            l.connect_rate_per_ip,
            "limits.connect_burst_per_ip",
            l.connect_burst_per_ip,
        ),
        (
            "limits.messages_per_second",
            l.messages_per_second,
            "limits.message_burst",
            l.message_burst,
        ),
        (
            "dialects.wspush.create_rate_per_ip",
            config.dialects.wspush.create_rate_per_ip,
            "dialects.wspush.create_burst_per_ip",
            config.dialects.wspush.create_burst_per_ip,
        ),
    ] {
        if rate > 1_000_000 {
            return bad(rate_key, "must be at most 1000000 (0 = off)");
        }
        if !(1..=1_000_000).contains(&burst) {
            return bad(burst_key, "must be between 1 and 1000000");
        }
    }
    for origin in &config.websocket.allowed_origins {
        if let Err(why) = OriginPattern::parse(origin) {
            return Err(ConfigError(format!("websocket.allowed_origins: {why}")));
        }
    }
    Ok(())
}

/// An `allowed_origins` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    /// `https://app.example.com`, `null`, ... (compared case-insensitively).
    Exact(String),
    /// `https://*.example.com[:port]`: `prefix` = `https://`, `suffix` = `.example.com[:port]`.
    Subdomain {
        prefix: String,
        suffix: String,
    },
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let s = s.trim().trim_end_matches('/');
        if s == "*" {
            return Ok(OriginPattern::Any);
        }
        if s.eq_ignore_ascii_case("null") {
            return Ok(OriginPattern::Exact("null".into()));
        }
        let (scheme, host) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not an origin like \"https://app.example.com\""))?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        let (wild, rest) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let host_ok = !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
        if !scheme_ok || !host_ok {
            return Err(format!(
                "{s:?} is not an origin like \"https://app.example.com\" or \"https://*.example.com\" (no path)"
            ));
        }
        let lower = |x: &str| x.to_ascii_lowercase();
        Ok(if wild {
            OriginPattern::Subdomain {
                prefix: format!("{}://", lower(scheme)),
                suffix: format!(".{}", lower(rest)),
            }
        } else {
            OriginPattern::Exact(lower(s))
        })
    }

    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomain { prefix, suffix } => {
                let b = origin.as_bytes();
                b.len() > prefix.len() + suffix.len()
                    && b[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                    && b[b.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && b[prefix.len()..b.len() - suffix.len()]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))
            }
        }
    }
}

/// `[auth_hook]`: the app backend asked at connect (and optionally at subscribe/publish).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthHookConfig {
    /// Where Herald POSTs its questions: an http:// URL. Empty: no hook.
    pub url: String,
    /// Request headers of the handshake forwarded to the backend (case-insensitive names).
    pub headers: Vec<String>,
    /// Forward the handshake's query string (`?token=...&room=...`).
    pub forward_query: bool,
    /// How long one question may take; slower answers refuse with `auth_unavailable`.
    pub timeout_ms: u64,
    /// Ask before a (non-admin) client subscribes.
    pub on_subscribe: bool,
    /// Ask before a (non-admin) client publishes.
    pub on_publish: bool,
    /// Seconds a connect answer is reused for the same forwarded headers and query. 0: none.
    pub cache_secs: u64,
}

impl Default for AuthHookConfig {
    fn default() -> Self {
        AuthHookConfig {
            url: String::new(),
            headers: vec!["authorization".into(), "cookie".into()],
            forward_query: true,
            timeout_ms: 2000,
            on_subscribe: false,
            on_publish: false,
            cache_secs: 0,
        }
    }
}

impl AuthHookConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("auth_hook.{key}: {why}")));
        if !self.url.is_empty() {
            let ok = is_http_url(&self.url);
            if !ok {
                return bad(
                    "url",
                    "must be an http:// URL (or empty for no hook; terminate TLS in a proxy)"
                        .into(),
                );
            }
        }
        if let Some(h) = self
            .headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return bad("headers", format!("{h:?} is not a header name"));
        }
        if self.headers.len() > 32 {
            return bad("headers", "at most 32 headers".into());
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return bad("timeout_ms", "must be between 1 and 60000".into());
        }
        if self.cache_secs > 3600 {
            return bad("cache_secs", "at most 3600".into());
        }
        if !self.url.is_empty() || !(self.on_subscribe || self.on_publish) {
            return Ok(());
        }
        bad(
            if self.on_subscribe {
                "on_subscribe"
            } else {
                "on_publish"
            },
            "needs auth_hook.url".into(),
        )
    }
}

/// `redis://user:password@host/` with the password hidden, for messages.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_string(),
    }
}
