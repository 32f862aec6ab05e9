//! Real services the cluster and ingress tests start themselves: `redis-server` and
//! `nats-server` on free ports, killed when dropped. Outside CI a missing program skips the
//! test (loudly); in CI (`CI` set, `.ci/run` installs them) it fails it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestServer, WAIT};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `command` (output discarded); `None` (after saying so) when `program` cannot be
/// started and this is not CI.
pub fn spawn(mut command: Command, program: &str) -> Option<Child> {
    match command.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => Some(child),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {program} cannot be started ({e}); install {program}");
            None
        }
        Err(e) => panic!("{program} is required in CI: {e}"),
    }
}

/// A server process, killed when dropped.
pub struct Service(pub Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on a port of its own.
pub struct Redis {
    _process: Service,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_on(free_port(), None)
    }

    /// On `port`; with `dir`, an append-only file there, synced at every write (so what Redis
    /// acknowledged survives a kill and a Redis started again on `dir` has it).
    pub fn start_on(port: u16, dir: Option<&Path>) -> Option<Redis> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let redis = Redis {
            _process: Service(spawn(command, "redis-server")?),
            port,
        };
        wait_for_port(port, "redis-server");
        // Answering, not still loading its append-only file.
        let deadline = Instant::now() + WAIT;
        while !redis.pong() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 5];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// `nats-server` on PATH, or where Debian puts it.
fn nats_server_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A `nats-server` with JetStream (its store in a temporary directory), and optionally its
/// monitoring port.
pub struct Nats {
    _process: Service,
    pub port: u16,
    pub monitor: Option<u16>,
    _store: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Option<Nats> {
        Self::start_on(free_port(), None)
    }

    pub fn start_on(port: u16, monitor: Option<u16>) -> Option<Nats> {
        let store = tempfile::tempdir().unwrap();
        let mut command = Command::new(nats_server_program());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path());
        if let Some(monitor) = monitor {
            command.args(["-m", &monitor.to_string()]);
        }
        let nats = Nats {
            _process: Service(spawn(command, "nats-server")?),
            port,
            monitor,
            _store: store,
        };
        wait_for_port(port, "nats-server");
        if let Some(monitor) = monitor {
            wait_for_port(monitor, "nats-server monitoring");
        }
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Waits until `node` lists `n` live nodes, so requests to the others are answered.
pub async fn until_nodes(node: &TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = node
            .admin()
            .request_ok("GET", "/api/v1/nodes", None)
            .await
            .unwrap();
        if body["nodes"].as_array().unwrap().len() == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never saw each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HMAC secret the cluster tests' nodes share for JWTs.
pub const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";

/// A JWT connection token for `user`, signed with [`JWT_SECRET`].
pub fn user_token(user: &str) -> String {
    herald_server::jwt::mint(
        &herald_server::jwt::Claims {
            sub: user.into(),
            exp: herald_server::jwt::now_secs() + 60,
            ..Default::default()
        },
        herald_server::jwt::JwtAlgorithm::HS256,
        JWT_SECRET.as_bytes(),
    )
    .unwrap()
}
