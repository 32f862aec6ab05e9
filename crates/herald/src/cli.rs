//! Command-line interface: argument definitions and what each subcommand does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_client::{Api, Client, Event};
use herald_server::Config;
use herald_server::config::DEFAULT_CONFIG_TOML;

use crate::bench;

#[derive(Parser)]
#[command(name = "herald", version, about = "Real-time pub/sub over WebSockets")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Publish one message through the HTTP API.
    Pub(PubArgs),
    /// Subscribe to channels and print every message as a JSON line.
    Sub(SubArgs),
    /// Load-test a running server (fanout, idle, connect, recover, channels).
    Bench(bench::BenchArgs),
    /// Mint a JWT connection or subscription token (for testing; your backend mints real ones).
    Token(TokenArgs),
    /// Write or check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (default: ./herald.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve the debug echo WebSocket at /debug/echo (sets `debug.ws_echo`): for conformance
    /// suites only, never in production.
    #[arg(long)]
    debug_ws_echo: bool,
}

#[derive(Args)]
struct PubArgs {
    /// Channel to publish to.
    channel: String,
    /// The message: JSON, or any other text (sent as a JSON string).
    message: String,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HERALD_URL")]
    url: String,
    /// Admin key or the channel's token.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Args)]
struct SubArgs {
    /// Channels to subscribe to.
    #[arg(required = true)]
    channels: Vec<String>,
    /// WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", env = "HERALD_WS_URL")]
    url: String,
    /// Channel token, for private channels.
    #[arg(long)]
    token: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Channels to subscribe the connection to at connect (comma-separated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Make the connection an admin.
    #[arg(long)]
    admin: bool,
    /// Mint a subscription token for this private channel instead of a connection token.
    #[arg(long, conflicts_with_all = ["channels", "admin"])]
    channel: Option<String>,
    /// Signing algorithm: HS256/384/512 (with the HMAC secret), RS*/PS* or ES256/384 (with
    /// --private-key).
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// PEM private key for RS*/PS*/ES* (PKCS#8 for EC keys).
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// The HMAC secret (default: `jwt.hmac_secret` of --config or ./herald.toml, or
    /// HERALD_JWT__HMAC_SECRET).
    #[arg(long, env = "HERALD_JWT__HMAC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Config file to read `[jwt]` from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// `iss` claim (default: `jwt.issuer` of the config).
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim (default: `jwt.audience` of the config).
    #[arg(long)]
    audience: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Write a commented default config file.
    Init {
        /// Where to write it.
        #[arg(default_value = "herald.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file (and HERALD_* variables) and print the result.
    Check { path: PathBuf },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Pub(args) => publish(args).await,
        Command::Sub(args) => subscribe(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Token(args) => mint_token(args),
        Command::Config(ConfigCommand::Init { path, force }) => config_init(&path, force),
        Command::Config(ConfigCommand::Check { path }) => {
            let config = Config::load(Some(&path))?;
            warn_unread_variables();
            log_filter(&config.log)?;
            println!(
                "{} is valid; effective configuration (JSON):\n",
                path.display()
            );
            let mut shown = config.clone();
            if !shown.admin_key.is_empty() {
                shown.admin_key = "<set>".into();
            }
            if !shown.jwt.hmac_secret.0.is_empty() {
                shown.jwt.hmac_secret.0 = "<set>".into();
            }
            for webhook in &mut shown.webhooks {
                webhook.secret.0 = "<set>".into();
            }
            // Broker and ingress URLs with their passwords hidden.
            let broker = &mut shown.broker;
            let ingress = shown.ingress.iter_mut().map(|i| &mut i.url);
            for url in std::iter::once(&mut broker.url)
                .chain(broker.sentinel_nodes.iter_mut())
                .chain(broker.cluster_nodes.iter_mut())
                .chain(ingress)
            {
                url.0 = herald_server::cluster::redacted(&url.0);
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
    }
}

/// `herald token`: prints a signed token on stdout.
fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    use herald_server::jwt::{self, Claims, JwtAlgorithm};
    let alg: JwtAlgorithm = args
        .alg
        .parse()
        .map_err(|_| anyhow::anyhow!("--alg {:?}: not a JWT algorithm like HS256", args.alg))?;
    let default_file = PathBuf::from("herald.toml");
    let file = match &args.config {
        Some(p) => Some(p.clone()),
        None if default_file.exists() => Some(default_file),
        None => None,
    };
    let config = Config::load(file.as_deref())?;
    let key = match &args.private_key {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("--private-key: cannot read {}", path.display()))?,
        None => {
            let secret = args
                .secret
                .clone()
                .unwrap_or_else(|| config.jwt.hmac_secret.0.clone());
            if secret.is_empty() {
                anyhow::bail!(
                    "no signing key: give --secret, set jwt.hmac_secret in the config, or use --private-key"
                );
            }
            secret.into_bytes()
        }
    };
    let now = jwt::now_secs();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let claims = Claims {
        sub: args.sub,
        exp: now + args.ttl,
        iat: Some(now),
        iss: args.issuer.or_else(|| non_empty(&config.jwt.issuer)),
        aud: args
            .audience
            .or_else(|| non_empty(&config.jwt.audience))
            .map(serde_json::Value::from),
        channels: args.channels,
        admin: args.admin,
        channel: args.channel,
        ..Claims::default()
    };
    println!("{}", jwt::mint(&claims, alg, &key)?);
    Ok(())
}

fn config_init(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!("{} exists; use --force to overwrite", path.display());
    }
    std::fs::write(path, DEFAULT_CONFIG_TOML)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Says which `HERALD_*` variables are not settings (a misspelled name would otherwise be
/// ignored without a word).
fn warn_unread_variables() {
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for (name, meant) in herald_server::config::unread_variables(names) {
        match meant {
            Some(meant) => eprintln!(
                "herald: warning: {name} is not a setting and is ignored (did you mean {meant}?)"
            ),
            None => eprintln!("herald: warning: {name} is not a setting and is ignored"),
        }
    }
}

fn load_serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    warn_unread_variables();
    let default_file = PathBuf::from("herald.toml");
    let file = match &args.config {
        Some(p) => Some(p.clone()),
        None if default_file.exists() => Some(default_file),
        None => None,
    };
    let mut config = Config::load(file.as_deref())?;
    if let Some(listen) = &args.listen {
        config.listen = listen.parse().map_err(|e| {
            anyhow::anyhow!("--listen {listen:?}: not an address like 127.0.0.1:8080 ({e})")
        })?;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if args.debug_ws_echo {
        config.debug.ws_echo = true;
    }
    config.validate()?;
    Ok(config)
}

/// The `log` setting as a filter; `config check` and `serve` refuse the same values.
fn log_filter(log: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::try_new(log)
        .map_err(|e| anyhow::anyhow!("invalid configuration: log: {e}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_serve_config(&args)?;
    let filter = log_filter(&config.log)?;
    crate::logging::init(filter);
    let server = herald_server::start(config).await?;
    let addr = server.local_addr;
    tracing::info!(%addr, restored_channels = server.restored_channels, "herald listening");
    eprintln!("herald {} listening on {addr}", env!("CARGO_PKG_VERSION"));
    eprintln!("  WebSocket:  ws://{addr}/ws");
    eprintln!("  HTTP API:   http://{addr}/api/v1  (OpenAPI: /api/v1/openapi.json)");
    if let Some(tls_addr) = server.tls_addr {
        eprintln!("  WSS:        wss://{tls_addr}/ws");
        eprintln!("  HTTPS API:  https://{tls_addr}/api/v1");
    }
    let subsocket = &server.state.config.dialects.subsocket;
    if subsocket.enabled && !subsocket.prefix.is_empty() {
        eprintln!("  SubSocket:  ws://{addr}{}/socket", subsocket.prefix);
    }
    if server.state.config.debug.ws_echo {
        let path = herald_server::dialects::echo::PATH;
        eprintln!(
            "  Debug echo: ws://{addr}{path} (debug.ws_echo: for tests, never in production)"
        );
    }
    for (dialect, dialect_addr) in &server.dialect_addrs {
        eprintln!("  {dialect} (own listener): {dialect_addr}");
    }
    let data_dir = &server.state.config.data_dir;
    if server.generated_admin_key {
        eprintln!(
            "  admin key (generated, shown once; kept in {}): {}",
            data_dir.join("admin.key").display(),
            server.admin_key()
        );
    } else if server.state.config.admin_key.is_empty() {
        eprintln!("  admin key:  in {}", data_dir.join("admin.key").display());
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let key = args.key.filter(|k| !k.is_empty()).context(
        "no credential: pass --key or set HERALD_ADMIN_KEY (the admin key is in <data_dir>/admin.key)",
    )?;
    let data = serde_json::from_str(&args.message)
        .unwrap_or_else(|_| serde_json::Value::String(args.message.clone()));
    let api = Api::new(&args.url, Some(&key));
    let result = api.publish(&[&args.channel], data).await?;
    println!("{result}");
    Ok(())
}

async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    let mut client = match &args.token {
        // A channel token goes in a subscribe request; otherwise subscribe in the URL (one
        // round trip).
        Some(token) => {
            let mut client = Client::connect(&args.url).await?;
            let req =
                serde_json::json!({"op": "subscribe", "channels": args.channels, "token": token});
            client.request_ok(req).await?;
            client
        }
        None => {
            let channels: Vec<&str> = args.channels.iter().map(String::as_str).collect();
            Client::connect_subscribed(&args.url, &channels).await?
        }
    };
    eprintln!(
        "subscribed to {} as {}",
        args.channels.join(", "),
        client.id()
    );
    let mut seen = 0u64;
    let mut out = std::io::stdout();
    loop {
        match client.next_event(Duration::from_secs(3600)).await {
            Ok(Event::Frame(v)) => {
                if matches!(
                    v["op"].as_str(),
                    Some("message" | "direct" | "unsubscribed")
                ) {
                    writeln!(out, "{v}")?;
                    out.flush()?;
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
            Ok(Event::Text(t)) => writeln!(out, "{t}")?,
            Ok(Event::Closed { code, reason }) => {
                anyhow::bail!("server closed the connection: {code} {reason}")
            }
            Err(e) if e.to_string().contains("timed out") => continue,
            Err(e) => return Err(e),
        }
    }
}
