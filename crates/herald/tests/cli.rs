//! The `herald` binary itself: configuration files, environment overrides and clear errors
//! at start, and a `serve` → `sub` → `pub` round trip through real processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    // Keep the developer's HERALD_* settings out of the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn config_init_writes_a_file_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    let out = herald()
        .args(["config", "init"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = herald()
        .args(["config", "init"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "refuses to overwrite");
    let out = herald()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"ping_interval_secs\": 25"), "{text}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[websocket]\nping_interval_secs = 10\n").unwrap();
    let out = herald()
        .args(["config", "check"])
        .arg(&path)
        .env("HERALD_WEBSOCKET__PING_INTERVAL_SECS", "7")
        .env("HERALD_ADMIN_KEY", "a-long-enough-admin-key")
        .env("HERALD_UNRELATED", "ignored")
        .env("HERALD_BROKER_TYPE", "redis")
        .env("HERALD_TLS__LISTEN", "127.0.0.1:8443")
        .env("HERALD_TLS__CERT_FILE", "/etc/herald/cert.pem")
        .env("HERALD_TLS__KEY_FILE", "/etc/herald/key.pem")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"ping_interval_secs\": 7"), "{text}");
    assert!(
        text.contains("\"cert_file\": \"/etc/herald/cert.pem\""),
        "{text}"
    );
    assert!(
        text.contains("\"admin_key\": \"<set>\""),
        "the key is never printed: {text}"
    );
    // What is not a setting is ignored, but said (a misspelling would go unnoticed).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "HERALD_BROKER_TYPE is not a setting and is ignored (did you mean HERALD_BROKER__TYPE?)"
        ),
        "{err}"
    );
    assert!(err.contains("HERALD_UNRELATED is not a setting"), "{err}");
    assert!(!err.contains("HERALD_TLS__LISTEN"), "{err}");
}

#[test]
fn config_check_never_prints_the_brokers_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "").unwrap();
    let out = herald()
        .args(["config", "check"])
        .arg(&path)
        .env("HERALD_ADMIN_KEY", "a-long-enough-admin-key")
        .env("HERALD_BROKER__TYPE", "redis")
        .env(
            "HERALD_BROKER__URL",
            "redis://user:s3cret-pass@10.0.0.1:6379/",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.0.0.1:6379"), "{text}");
    assert!(
        !text.contains("s3cret-pass"),
        "the password is hidden: {text}"
    );
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        ("[limits]\nmax_connections = -3\n", "limits.max_connections"),
        ("listen = \"not an address\"\n", "listen"),
        (
            "[websocket]\nping_timeout_secs = 1\n",
            "websocket.ping_timeout_secs",
        ),
        ("admin_key = \"short\"\n", "admin_key"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        (
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "tls.cert_file: cannot read /nonexistent/cert.pem",
        ),
        ("[tls]\nlisten = \"127.0.0.1:0\"\n", "tls.cert_file"),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        let out = herald()
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let out = herald()
        .args(["serve", "--listen", "nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Kills the server when the test ends, however it ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_sub_pub_round_trip_with_generated_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Child(
        herald()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut printed_key = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("admin key (generated").nth(1) {
            printed_key = rest.rsplit(' ').next().map(str::to_string);
            break;
        }
    }
    let key = printed_key.expect("the generated admin key is printed once");
    let stored = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    assert_eq!(stored.trim(), key);

    let mut sub = Child(
        herald()
            .args([
                "sub",
                "news",
                "--count",
                "1",
                "--url",
                &format!("ws://127.0.0.1:{port}/ws"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until the subscriber is subscribed.
    let mut sub_err = BufReader::new(sub.0.stderr.take().unwrap());
    let mut line = String::new();
    sub_err.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed to news"), "{line}");

    let out = herald()
        .args([
            "pub",
            "news",
            r#"{"hello":"world"}"#,
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("HERALD_ADMIN_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stdout = BufReader::new(sub.0.stdout.take().unwrap());
    let mut got = String::new();
    stdout.read_line(&mut got).unwrap();
    assert!(Instant::now() < deadline);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["op"], "message");
    assert_eq!(v["data"], serde_json::json!({"hello": "world"}));
    assert!(sub.0.wait().unwrap().success());
}

#[test]
fn token_mints_verifiable_connection_and_subscription_tokens() {
    use herald_server::config::{JwtConfig, Secret};
    use herald_server::jwt::JwtVerifier;
    let secret = "cli-test-jwt-secret-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let mint = |args: &[&str]| {
        let out = herald()
            .arg("token")
            .args(args)
            .current_dir(dir.path())
            .env("HERALD_JWT__HMAC_SECRET", secret)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let verifier = JwtVerifier::from_config(&JwtConfig {
        hmac_secret: Secret(secret.into()),
        ..JwtConfig::default()
    })
    .unwrap()
    .unwrap();
    let conn = verifier
        .verify(&mint(&[
            "--sub",
            "alice",
            "--channels",
            "news,alerts",
            "--admin",
        ]))
        .unwrap();
    assert_eq!(conn.sub, "alice");
    assert_eq!(conn.channels, vec!["news", "alerts"]);
    assert!(conn.admin && conn.channel.is_none());
    let sub = verifier
        .verify(&mint(&["--sub", "bob", "--channel", "vip", "--ttl", "60"]))
        .unwrap();
    assert_eq!(sub.channel.as_deref(), Some("vip"));
    assert!(sub.exp <= herald_server::jwt::now_secs() + 60);

    // No key anywhere: a clear error, status 1.
    let out = herald()
        .args(["token", "--sub", "x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no signing key"), "{err}");
    let out = herald()
        .args(["token", "--sub", "x", "--alg", "XX999", "--secret", secret])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alg"));
}

/// `config check` refuses a log filter that `serve` would refuse (it accepted it).
#[test]
fn config_check_refuses_a_bad_log_filter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "log = \"[[[[\"\n").unwrap();
    let out = herald()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("log:"), "{text}");
}

/// A log line shows what a client sent with its line breaks and terminal escapes escaped:
/// a refused token whose header's `alg` held `\r\n` and a fake line (read before any
/// signature check, so anyone could send it) wrote that fake line into the log as a line of
/// its own, and a screen-clearing escape with it.
#[test]
fn a_client_cannot_forge_a_log_line() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Child(
        herald()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .env(
                "HERALD_JWT__HMAC_SECRET",
                "a-test-secret-of-enough-length-0123456789",
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = server.0.stderr.take().unwrap();
    let lines = std::sync::mpsc::channel();
    let (tx, rx) = lines;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    // Up when it says where it listens.
    while !log.iter().any(|l: &String| l.contains("listening on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        log.push(rx.recv_timeout(left).expect("the server started"));
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let header = b64(r#"{"alg":"x\r\n2026-01-01T00:00:00Z  WARN herald: FORGED\u001b[2J"}"#);
    let token = format!("{header}.{}.AAAA", b64("{}"));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    // The refusal is logged before it is answered: the line is there now.
    while !log.iter().any(|l| l.contains("bad credential")) {
        let left = deadline.saturating_duration_since(Instant::now());
        log.push(rx.recv_timeout(left).expect("the refusal is logged"));
    }
    let refusal = log.iter().find(|l| l.contains("bad credential")).unwrap();
    assert!(refusal.contains(r"\r\n2026-01-01"), "{refusal}");
    assert!(refusal.contains("FORGED"), "{refusal}");
    for line in &log {
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line:?}");
        assert!(!line.contains('\u{1b}'), "a raw escape: {line:?}");
    }
}

/// One blocking HTTP/1.1 request with the admin key: the status and the body.
fn http(port: u16, method: &str, path: &str, key: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// Sets the file-size limit of process `pid` (`None`: unlimited); the hard limit stays
/// unlimited, so it can be raised again.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on another process, with a valid limit and no old value.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// After the disk fills (here: the process may not grow its files, the same error to redb),
/// the store refused everything until a restart (503 `store_unavailable` on every channel
/// creation), because redb wants to be opened again after an I/O error; the history batches
/// that failed were only logged. Now they are counted (`history_write_dropped`), and the
/// store is reopened at its next operation: once there is room, it works without a restart.
#[test]
fn the_store_works_again_after_a_full_disk_without_a_restart() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = herald();
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir.path())
    .env("HERALD_ADMIN_KEY", "a-long-enough-admin-key")
    .env("HERALD_CHANNELS__HISTORY_SIZE", "10000")
    .env("HERALD_LOG", "error")
    .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec. A write past the limit
    // fails with EFBIG instead of killing the process with SIGXFSZ.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let server = Child(cmd.spawn().unwrap());
    let key = "a-long-enough-admin-key";
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = dir.path().join("herald.redb");
    let size = std::fs::metadata(&file).unwrap().len();
    limit_file_size(server.0.id(), Some(size));
    // Kept publications fill the store until it cannot grow: a history batch fails (and with
    // it, before, the store for good).
    let data = format!(r#"{{"channel":"fill","data":"{}"}}"#, "x".repeat(60_000));
    let dropped = || {
        let (_, stats) = http(port, "GET", "/api/v1/stats", key, "");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        stats["history_write_dropped"].as_u64().unwrap()
    };
    let mut published = 0;
    while dropped() == 0 {
        assert!(Instant::now() < deadline, "no history write failed");
        if published < 4000 {
            for _ in 0..50 {
                assert_eq!(http(port, "POST", "/api/v1/publish", key, &data).0, 200);
            }
            published += 50;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Room again: the next write works, and what it wrote is there after a restart.
    limit_file_size(server.0.id(), None);
    let (status, body) = http(port, "POST", "/api/v1/channels", key, r#"{"name":"after"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(port, "GET", "/api/v1/channels/after", key, "");
    assert_eq!(status, 200, "{body}");
}
