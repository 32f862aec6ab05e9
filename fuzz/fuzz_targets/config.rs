//! The configuration loader (`herald_server::config::Config::from_toml_str`: defaults, then
//! a TOML text, then `validate`), as `Config::load` reads a file.
//!
//! Input: one byte choosing the mode, then either a TOML text as it is, or choices that
//! write one from the configuration's own keys (every key of the default configuration,
//! found by serializing it, plus namespaces, webhooks and ingresses), each with a value of
//! its type: numbers at the edges (0, 1, 2^31, 2^32, `i64::MAX`, ...), strings that mean
//! something to the validation (addresses, URLs, policies) or any text. Asserts:
//! - loading never panics, whatever the text or the numbers;
//! - a configuration that loads gives its hub configuration, its listeners' addresses, its
//!   dialects' mounts, its webhooks' event masks and its origin patterns without panicking;
//! - it round-trips: serialized (as `herald config` prints it) and read back, it is the same
//!   configuration and validates again.
#![no_main]

use std::fmt::Write as _;
use std::sync::LazyLock;

use figment2::Figment;
use figment2::providers::Serialized;
use herald_fuzz::Input;
use herald_server::config::{Config, IngressConfig, OriginPattern, WebhookConfig};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    if input.byte() % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(input.rest()) {
            load(text);
        }
    } else {
        load(&written(&mut input));
    }
});

fn load(text: &str) {
    let Ok(config) = Config::from_toml_str(text) else {
        return;
    };
    let _ = config.hub_config();
    let _ = config.tls.listen_addr();
    let d = &config.dialects;
    for mount in [
        d.subsocket.listen_addr(),
        d.eventual.listen_addr(),
        d.simplysocket.listen_addr(),
        d.pushstream.mount().listen_addr(),
        d.wspush.mount().listen_addr(),
        d.wspush.http_mount().listen_addr(),
    ] {
        let _ = mount;
    }
    for webhook in &config.webhooks {
        assert!(webhook.mask().is_ok(), "a loaded webhook's types are valid");
    }
    for ingress in &config.ingress {
        let _ = ingress.source();
    }
    let _ = herald_server::dialects::main_stream_paths(&config);
    if let Ok(pattern) = OriginPattern::parse(text.lines().next().unwrap_or_default()) {
        let _ = pattern.matches(text);
    }

    let again: Config = Figment::new()
        .merge(Serialized::defaults(&config))
        .extract()
        .expect("a loaded configuration reads back");
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
    again.validate().expect("and validates again");
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Number,
    Text,
    List,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::Array(_) => Kind::List,
        _ => Kind::Text,
    }
}

/// Every leaf key of `v` under `prefix`, with its kind.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Kind)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // Arrays of tables are written apart (webhooks, ingress).
                if !matches!(k.as_str(), "webhooks" | "ingress" | "namespaces")
                    || !prefix.is_empty()
                {
                    leaves(&key, v, out);
                }
            }
        }
        _ => out.push((prefix.to_string(), kind(v))),
    }
}

fn keys_of(v: impl serde::Serialize, extra: &[(&str, Kind)]) -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    leaves("", &serde_json::to_value(v).unwrap(), &mut out);
    out.extend(extra.iter().map(|(k, kind)| (k.to_string(), *kind)));
    out
}

static ROOT: LazyLock<Vec<(String, Kind)>> = LazyLock::new(|| keys_of(Config::default(), &[]));
static WEBHOOK: LazyLock<Vec<(String, Kind)>> =
    LazyLock::new(|| keys_of(WebhookConfig::default(), &[]));
static INGRESS: LazyLock<Vec<(String, Kind)>> = LazyLock::new(|| {
    keys_of(
        IngressConfig::default(),
        &[
            ("stream", Kind::Text),
            ("group", Kind::Text),
            ("subject", Kind::Text),
        ],
    )
});
const NAMESPACE: [(&str, Kind); 9] = [
    ("subscribe", Kind::Text),
    ("publish", Kind::Text),
    ("max_subscribers", Kind::Number),
    ("echo", Kind::Bool),
    ("max_payload_bytes", Kind::Number),
    ("history_size", Kind::Number),
    ("history_ttl_secs", Kind::Number),
    ("presence", Kind::Bool),
    ("join_leave", Kind::Bool),
];

/// Strings the validation tells apart.
const WORDS: &[&str] = &[
    "",
    "127.0.0.1:0",
    "0.0.0.0:8443",
    "[::1]:9091",
    "everywhere",
    "memory",
    "redis",
    "nats",
    "redis://127.0.0.1:6379/",
    "rediss://:pw@h:1/",
    "nats://127.0.0.1:4222",
    "http://127.0.0.1:9/hook",
    "https://example.com/",
    "redis_stream",
    "herald",
    "gogin",
    "public",
    "private",
    "admin",
    "clients",
    "*",
    "connect",
    "publish",
    "https://*.example.com",
    "/ps",
    "/ws",
    "/",
    "mymaster",
    "0123456789abcdef0123456789abcdef",
    "info",
];

const NUMBERS: [i64; 16] = [
    0,
    1,
    2,
    100,
    128,
    1023,
    1024,
    65_535,
    65_536,
    67_108_864,
    67_108_865,
    i32::MAX as i64,
    u32::MAX as i64,
    1 << 32,
    i64::MAX,
    -1,
];

fn value(input: &mut Input, kind: Kind) -> String {
    match kind {
        Kind::Bool => input.bool().to_string(),
        Kind::Number => {
            let choice = input.byte();
            match choice % 4 {
                0 => input.u64().to_string(),
                1 => (input.u64() >> 1).to_string(),
                _ => NUMBERS[usize::from(choice >> 2) % NUMBERS.len()].to_string(),
            }
        }
        Kind::Text => text(input),
        Kind::List => {
            let n = input.byte() % 4;
            let items: Vec<String> = (0..n).map(|_| text(input)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A TOML basic string: a known word or any text.
fn text(input: &mut Input) -> String {
    let choice = usize::from(input.byte());
    let s = match WORDS.get(choice) {
        Some(w) => w.to_string(),
        None => input.string(),
    };
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML text from the configuration's keys: top-level dotted keys first, then namespaces,
/// webhooks and ingresses as tables.
fn written(input: &mut Input) -> String {
    let mut root = String::new();
    let mut tables = String::new();
    while !input.0.is_empty() {
        let choice = usize::from(input.u16());
        match choice % 8 {
            0 => {
                let ns = ["chat", "a-b_1", "", "bad ns", "x"][choice / 8 % 5];
                let (key, kind) = NAMESPACE[choice / 64 % NAMESPACE.len()];
                let _ = writeln!(
                    tables,
                    "[namespaces.\"{ns}\"]\n{key} = {}",
                    value(input, kind)
                );
            }
            1 => {
                let _ = writeln!(tables, "[[webhooks]]");
                for _ in 0..input.byte() % 4 {
                    let (key, kind) = &WEBHOOK[usize::from(input.byte()) % WEBHOOK.len()];
                    let _ = writeln!(tables, "{key} = {}", value(input, *kind));
                }
            }
            2 => {
                let _ = writeln!(tables, "[[ingress]]");
                for _ in 0..input.byte() % 4 {
                    let (key, kind) = &INGRESS[usize::from(input.byte()) % INGRESS.len()];
                    let _ = writeln!(tables, "{key} = {}", value(input, *kind));
                }
            }
            _ => {
                let (key, kind) = &ROOT[choice / 8 % ROOT.len()];
                let _ = writeln!(root, "{key} = {}", value(input, *kind));
            }
        }
    }
    root + &tables
}
