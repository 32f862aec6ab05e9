//! Subscriber connections of `herald bench`: one tokio task per connection that connects (from
//! a chosen source address), upgrades, waits for the welcome frame, subscribes, and then counts
//! deliveries. Deliveries are parsed cheaply — the payload is found with a substring search for
//! `"data":"` instead of a JSON parse — because the load generator shares the CPU with the
//! server under test.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_client::ws::TolerantStream;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use super::state::{Shared, parse_payload};

/// Time limit for the TCP connect.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit for upgrade + welcome + subscribe reply.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how subscribers connect.
pub struct Target {
    /// Server address (resolved once).
    pub addr: SocketAddr,
    /// Upgrade request builder (URL and extra headers), shared by all connections.
    pub builder: ClientBuilder<'static>,
    /// Source addresses to spread connections over (empty: kernel's choice).
    pub src: Vec<IpAddr>,
    /// The subscribe request, as sent.
    pub subscribe_frame: String,
    /// Subscribe over Server-Sent Events with this request instead of a WebSocket.
    pub sse_request: Option<String>,
    /// The WebSocket URL subscribes (`?channels=`): the welcome says so, no request follows.
    pub subscribe_in_url: bool,
    /// Concurrent handshakes allowed.
    pub concurrency: usize,
    /// More nodes of a cluster (`--node-url`): connection `i` goes to node `i % (1 + len)`,
    /// 0 being `addr`.
    pub others: Vec<(SocketAddr, ClientBuilder<'static>)>,
    /// `channels`: connection `i` subscribes to its own channel, `channel_of(i)`, with its own
    /// upgrade request (`make_builder(i)`, when the URL names the channel).
    pub own_channels: Option<OwnChannels>,
}

/// One channel per connection (`herald bench channels`).
pub struct OwnChannels {
    /// Channel `i` is `<base>-<i>`.
    pub base: String,
    /// The upgrade request of connection `i`, when it differs per connection.
    #[allow(clippy::type_complexity)]
    pub make_builder: Option<Box<dyn Fn(usize) -> ClientBuilder<'static> + Send + Sync>>,
}

/// The channel of connection `idx` in `herald bench channels`.
pub fn channel_of(base: &str, idx: u64) -> String {
    format!("{base}-{idx}")
}

impl Target {
    /// The address and upgrade request of connection `idx`.
    fn node(&self, idx: usize) -> (SocketAddr, &ClientBuilder<'static>) {
        match idx % (1 + self.others.len()) {
            0 => (self.addr, &self.builder),
            i => (self.others[i - 1].0, &self.others[i - 1].1),
        }
    }
}

/// Spawns `n` subscriber tasks into `tasks`; at most `target.concurrency` of them are between
/// "start connecting" and "subscribed" at any time.
pub fn spawn_all(shared: &Arc<Shared>, target: &Arc<Target>, tasks: &mut JoinSet<()>, n: usize) {
    let sem = Arc::new(Semaphore::new(target.concurrency.max(1)));
    for idx in 0..n {
        tasks.spawn(subscriber(shared.clone(), target.clone(), idx, sem.clone()));
    }
}

/// Waits until all `n` connections are subscribed or failed, or until `deadline`; returns
/// whether all of them got an outcome.
pub async fn wait_settled(shared: &Shared, n: usize, deadline: Instant) -> bool {
    loop {
        let done = shared.subscribed.load(Relaxed) + shared.failed.load(Relaxed);
        if done >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One subscriber: runs the connection and books its outcome.
async fn subscriber(shared: Arc<Shared>, target: Arc<Target>, idx: usize, sem: Arc<Semaphore>) {
    let Ok(permit) = sem.acquire_owned().await else {
        return;
    };
    let mut permit = Some(permit);
    let mut subscribed = false;
    let err = run(&shared, &target, idx, &mut permit, &mut subscribed).await;
    if subscribed {
        shared.closed.fetch_add(1, Relaxed);
        shared.note_error(format!("subscriber lost: {err}"));
    } else {
        shared.failed.fetch_add(1, Relaxed);
        shared.note_error(format!("subscriber failed: {err}"));
    }
}

/// Connects, subscribes and receives until the connection ends; returns why it ended.
async fn run(
    shared: &Shared,
    target: &Target,
    idx: usize,
    permit: &mut Option<OwnedSemaphorePermit>,
    subscribed: &mut bool,
) -> String {
    let t0 = shared.now_ns();
    let src = (!target.src.is_empty()).then(|| target.src[idx % target.src.len()]);
    let (addr, mut builder) = target.node(idx);
    let own_builder = target
        .own_channels
        .as_ref()
        .and_then(|own| own.make_builder.as_ref())
        .map(|make| make(idx));
    if let Some(b) = &own_builder {
        builder = b;
    }
    let stream = match timeout(
        TCP_CONNECT_TIMEOUT,
        herald_client::os::tcp_connect(addr, src),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect: timed out".into(),
    };
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    if let Some(request) = &target.sse_request {
        return sse(
            shared, idx, stream, request, deadline, t0, permit, subscribed,
        )
        .await;
    }
    let mut ws = match timeout_at(deadline, handshake(shared, target, idx, builder, stream)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return e,
        Err(_) => return "timed out before subscribed".into(),
    };
    shared.mark_subscribed((shared.now_ns().saturating_sub(t0)) / 1000);
    *subscribed = true;
    permit.take();
    receive(shared, idx, &mut ws).await
}

/// Upgrade, welcome, subscribe request and its reply.
async fn handshake(
    shared: &Shared,
    target: &Target,
    idx: usize,
    builder: &ClientBuilder<'static>,
    stream: TcpStream,
) -> Result<WebSocketStream<TolerantStream>, String> {
    let (mut ws, _) = builder
        .connect_on(TolerantStream::new(stream))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let welcome = next_text(&mut ws).await?;
    if !welcome.contains("\"welcome\"") {
        return Err(format!("expected welcome, got {welcome:.200}"));
    }
    shared.connected.fetch_add(1, Relaxed);
    if target.subscribe_in_url {
        if !welcome.contains("\"subscribed\":[\"") {
            return Err(format!("the welcome subscribed nothing: {welcome:.200}"));
        }
        ws.get_mut().set_tolerant(true);
        return Ok(ws);
    }
    let frame = match &target.own_channels {
        Some(own) => serde_json::json!({
            "op": "subscribe",
            "channels": [channel_of(&own.base, idx as u64)],
            "id": 1
        })
        .to_string(),
        None => target.subscribe_frame.clone(),
    };
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["op"] == "reply" && v["id"] == 1 {
            if let Some(e) = v.get("error") {
                return Err(format!("subscribe refused: {e}"));
            }
            // From now on only pongs are written: a failed one must not hide the close frame.
            ws.get_mut().set_tolerant(true);
            return Ok(ws);
        }
    }
}

/// Next text message during the handshake phase (control frames skipped).
async fn next_text(ws: &mut WebSocketStream<TolerantStream>) -> Result<String, String> {
    loop {
        match ws.next().await {
            None => return Err("connection ended".into()),
            Some(Err(e)) => return Err(format!("read: {e}")),
            Some(Ok(m)) => {
                if let Some(t) = m.as_text() {
                    return Ok(t.to_string());
                }
                if let Some((code, reason)) = m.as_close() {
                    return Err(format!("closed by server: {} {reason}", u16::from(code)));
                }
            }
        }
    }
}

/// The delivery loop: counts deliveries until the connection ends.
async fn receive(shared: &Shared, idx: usize, ws: &mut WebSocketStream<TolerantStream>) -> String {
    let mut seen: Vec<u64> = Vec::new();
    let mut last_offset: Option<u64> = None;
    loop {
        let msg = match ws.next().await {
            None => return "connection ended".into(),
            Some(Err(e)) => return format!("read: {e}"),
            Some(Ok(m)) => m,
        };
        let Some(text) = msg.as_text() else {
            if let Some((code, reason)) = msg.as_close() {
                return format!("closed by server: {} {reason}", u16::from(code));
            }
            continue;
        };
        if text.contains("\"op\":\"message\"") {
            on_message(shared, idx, text, &mut seen, &mut last_offset);
        } else if text.contains("\"op\":\"unsubscribed\"") {
            return format!("unsubscribed by server: {text:.200}");
        }
    }
}

/// A subscriber over Server-Sent Events: the request, then events until the stream ends;
/// subscribed once the `subscribed` event arrived.
#[allow(clippy::too_many_arguments)]
async fn sse(
    shared: &Shared,
    idx: usize,
    mut stream: TcpStream,
    request: &str,
    deadline: Instant,
    t0: u64,
    permit: &mut Option<OwnedSemaphorePermit>,
    subscribed: &mut bool,
) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return format!("send request: {e}");
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let (mut seen, mut last_offset) = (Vec::new(), None);
    loop {
        let read = if *subscribed {
            stream.read(&mut chunk).await
        } else {
            match timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(r) => r,
                Err(_) => return "timed out before subscribed".into(),
            }
        };
        let n = match read {
            Ok(0) => return "connection ended".into(),
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&buf[start..start + end]);
            start += end + 1;
            let Some(data) = line.strip_prefix("data: ") else {
                if line.starts_with("HTTP/") && !line.contains(" 200 ") {
                    return format!("refused: {line}");
                }
                continue;
            };
            if data.contains("\"op\":\"message\"") {
                on_message(shared, idx, data, &mut seen, &mut last_offset);
            } else if data.contains("\"op\":\"subscribed\"") && !*subscribed {
                shared.connected.fetch_add(1, Relaxed);
                shared.mark_subscribed((shared.now_ns().saturating_sub(t0)) / 1000);
                *subscribed = true;
                permit.take();
            } else if data.contains("\"op\":\"close\"") {
                return format!("closed by server: {data:.200}");
            }
        }
        buf.drain(..start);
    }
}

/// Books one `{"op":"message",...}` frame.
fn on_message(
    shared: &Shared,
    idx: usize,
    text: &str,
    seen: &mut Vec<u64>,
    last_offset: &mut Option<u64>,
) {
    if let Some(off) = number_after(text, "\"offset\":") {
        if last_offset.is_some_and(|last| off <= last) {
            shared.offset_regressions.fetch_add(1, Relaxed);
        }
        *last_offset = Some(off);
    }
    // "data" is the last key of a message frame: search from the end.
    let payload = text.rfind("\"data\":\"").and_then(|i| {
        let rest = &text[i + 8..];
        rest.find('"').map(|j| &rest[..j])
    });
    let Some((seq, send_ns)) = payload.and_then(parse_payload) else {
        if shared.unparsed.fetch_add(1, Relaxed) < 3 {
            shared.note_error(format!("unrecognised delivery: {text:.160}"));
        }
        return;
    };
    if seq >= shared.messages {
        shared.unparsed.fetch_add(1, Relaxed);
        return;
    }
    let mut duplicate = false;
    if shared.track_duplicates {
        if seen.is_empty() {
            seen.resize(shared.messages.div_ceil(64) as usize, 0);
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        duplicate = seen[word] & bit != 0;
        seen[word] |= bit;
    }
    let latency_us = shared.now_ns().saturating_sub(send_ns) / 1000;
    shared.record_delivery(idx, latency_us, duplicate);
}

/// The unsigned integer right after the first occurrence of `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)? + key.len();
    text[i..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(None, |acc: Option<u64>, d| {
            Some(acc.unwrap_or(0).wrapping_mul(10) + u64::from(d - b'0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_are_booked() {
        let shared = Shared::new(4, true);
        let (mut seen, mut last) = (Vec::new(), None);
        let frame = |off: u64, seq: u64| {
            format!(
                r#"{{"op":"message","channel":"bench","offset":{off},"epoch":"e","from":null,"data":"p|{seq}|0|xx"}}"#
            )
        };
        on_message(&shared, 0, &frame(1, 0), &mut seen, &mut last);
        on_message(&shared, 0, &frame(2, 1), &mut seen, &mut last);
        on_message(&shared, 0, &frame(2, 1), &mut seen, &mut last);
        on_message(&shared, 0, &frame(3, 9), &mut seen, &mut last);
        on_message(
            &shared,
            0,
            r#"{"op":"message","data":{"x":1}}"#,
            &mut seen,
            &mut last,
        );
        let d = shared.deliveries();
        assert_eq!((d.received, d.duplicates), (2, 1));
        assert_eq!(shared.offset_regressions.load(Relaxed), 1);
        assert_eq!(shared.unparsed.load(Relaxed), 2);
        assert_eq!(
            number_after(r#"{"offset":123,"x":1}"#, "\"offset\":"),
            Some(123)
        );
        assert_eq!(number_after(r#"{"offset":null}"#, "\"offset\":"), None);
    }
}
