//! Raw HTTP/1.0 requests for streaming responses (SSE, streaming, long-polling): the body
//! is what the server writes, ended by the server closing.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestServer, WAIT};

/// Sends `request` as it is on a fresh connection and returns the start of the answer's
/// status line, `HTTP/1.x NNN` (12 bytes).
pub async fn status_of(srv: &TestServer, request: &str) -> String {
    let mut s = TcpStream::connect(srv.addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("an answer within the deadline")
        .expect("a status line");
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP/1.0 GET (so the body is the raw stream, ended by the server closing).
pub async fn get(srv: &TestServer, path: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(srv.addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until `done` holds for what arrived (or the deadline).
pub async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 8192];
    while !done(&String::from_utf8_lossy(&got)) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("timed out; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The data of every SSE event, with its id (if any).
pub fn events(text: &str) -> Vec<(Option<String>, Value)> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    body.split("\n\n")
        .filter_map(|event| {
            let mut id = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            Some((id, data?))
        })
        .collect()
}
