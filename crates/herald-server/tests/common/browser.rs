//! A real headless browser for the tests: Debian's `chromium` driven through `chromedriver`
//! (the W3C WebDriver protocol, spoken here over plain HTTP), and a page server on a port of
//! its own, so pages reach Herald from another origin as real pages do. Outside CI a missing
//! driver skips the test (loudly); in CI (`.ci/run` installs `chromium` and
//! `chromium-driver`) it fails it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;
use super::services::{Service, free_port, spawn, wait_for_port};

/// How long a page has to get where a test waits for it (a browser start and an
/// EventSource reconnect take seconds).
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// One browser session, ended (and the driver killed) when dropped.
pub struct Browser {
    port: u16,
    session: String,
    _driver: Service,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Option<Browser> {
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}"));
        let driver = Service(spawn(command, "chromedriver")?);
        wait_for_port(port, "chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let created = call(port, "POST", "/session", Some(capabilities)).await;
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        Some(Browser {
            port,
            session,
            _driver: driver,
            _profile: profile,
        })
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let answer = call(self.port, method, &path, body).await;
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns something truthy, and returns it; panics with `what`
    /// and the page's `window.log` after [`PAGE_WAIT`].
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let v = self.eval(script).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let log = self.eval("return window.log || null").await;
                panic!("timed out waiting for {what}; page log: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session so chromium exits with the driver (best effort, blocking).
        let path = format!("/session/{}", self.session);
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(WAIT));
            let req =
                format!("DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(req.as_bytes());
            let _ = s.read(&mut [0u8; 4096]);
        }
    }
}

/// One WebDriver request (HTTP/1.1, `Connection: close`) and its JSON answer.
async fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A busy chromedriver (two cores shared by parallel tests) has now and then refused or
    // reset a connection before answering (seen in CI, and once on `POST /session` under a
    // loaded machine): a request that got no answer at all is sent again until the deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(PAGE_WAIT * 2, exchange(port, req.as_bytes())).await {
            Ok(Ok(body)) => {
                return serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            }
            Ok(Err((e, false))) if tokio::time::Instant::now() < deadline => {
                eprintln!(
                    "chromedriver on {port}: {e} before answering {method} {path}; sending it again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err((e, _))) => panic!("chromedriver on {port}, {method} {path}: {e}"),
            Err(_) => panic!("chromedriver on {port} does not answer {method} {path}"),
        }
    }
}

/// Sends `req` on a new connection and reads the answer's body; on failure, the error and
/// whether any of the answer had arrived.
async fn exchange(port: u16, req: &[u8]) -> Result<String, (std::io::Error, bool)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| (e, false))?;
    s.write_all(req).await.map_err(|e| (e, false))?;
    // The driver keeps the connection open: read the head, then Content-Length bytes.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(body.to_string());
            }
        }
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| (e, !answer.is_empty()))?;
        if n == 0 {
            let early = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed early: {text}"),
            );
            return Err((early, !answer.is_empty()));
        }
        answer.extend_from_slice(&buf[..n]);
    }
}

/// Serves `pages` (path, content type, body) on 127.0.0.1 on a port of its own; stops when
/// dropped.
pub struct PageServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start(pages: Vec<(&'static str, &'static str, String)>) -> PageServer {
        let mut router = axum::Router::new();
        for (path, content_type, body) in pages {
            router = router.route(
                path,
                axum::routing::get(move || {
                    let body = body.clone();
                    async move { ([(axum::http::header::CONTENT_TYPE, content_type)], body) }
                }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        PageServer { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
