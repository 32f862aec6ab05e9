//! Abuse limits enforced at the edge, before the hub: connections per IP and per user, the
//! connection-attempt rate per IP, the `Origin` allowlist for browser handshakes, the
//! message rate of each connection, and the rate of anonymous channel creation per IP
//! (docs/configuration.md `[limits]`, docs/errors.md).
//!
//! The global `limits.max_connections` slot stays in [`crate::admission`], and the
//! per-request limits (channels per connection and request, payload size) stay in the hub;
//! this module owns the rest. Checks take a [`Guard`] (the limits and the counters) and
//! refuse with a typed [`Refusal`]. Every trip is refused or answered with a documented code, counted in
//! [`herald_core::stats::Stats`] and logged (at most once a second per kind, with the number of
//! trips not logged in between, so a flood cannot flood the log). A trip only ever affects the
//! IP, user or connection that caused it.
//!
//! Memory is bounded: per-IP and per-user counts are removed when they drop to zero, and the
//! connection-rate buckets live in a capped table from which full (idle) buckets are swept.
//! A connection's message-rate state is 16 bytes inline in its task, touched only when the
//! limit is on.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use herald_core::client::{Disconnect, DisconnectReason, close_code};
use herald_core::stats::Stats;
use herald_core::{ClientHandle, ErrorCode, HeraldError};
use parking_lot::Mutex;

use crate::auth::Identity;
use crate::config::Config;
use crate::config::OriginPattern;
use crate::error::Refusal;

/// A connection dropping this many times its burst in a row is closed with
/// [`close_code::RATE_LIMITED`].
pub const FLOOD_FACTOR: u32 = 10;
/// Most per-IP connection-rate buckets kept at once (about 40 bytes each). Beyond it, new
/// addresses are not rate-limited until idle buckets can be swept (fail open: a full table
/// never refuses anyone).
pub const MAX_RATE_BUCKETS: usize = 65_536;
const SHARDS: usize = 16;
const NANOS: u64 = 1_000_000_000;
/// Shortest gap between two sweeps of one full bucket shard.
const SWEEP_GAP_NS: u64 = NANOS / 10;

/// A generic cell rate algorithm (an exact token bucket kept as one timestamp, the
/// "theoretical arrival time"): `rate` events a second on average, `burst` at once.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Nanoseconds one event costs.
    interval: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) * interval`.
    tolerance: u64,
}

impl Gcra {
    fn new(rate: u32, burst: u32) -> Option<Gcra> {
        (rate > 0).then(|| {
            let interval = NANOS / u64::from(rate);
            Gcra {
                interval,
                tolerance: u64::from(burst.max(1) - 1) * interval,
            }
        })
    }

    /// Admits an event at `now` (updating `tat`), or says how many nanoseconds until one
    /// would be admitted.
    fn admit(&self, tat: &mut u64, now: u64) -> Result<(), u64> {
        let t = (*tat).max(now);
        let ahead = t - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = t + self.interval;
        Ok(())
    }
}

/// Logs at most once a second, counting what it held back.
#[derive(Default)]
struct LogGate {
    next_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn check(&self, now: u64) -> Option<u64> {
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(next, now + NANOS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A map split over locked shards, so handshakes from different addresses rarely contend.
struct Sharded<K, V> {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<K, V>>>,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, V>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// Counts held per key, an entry removed when its count drops to zero.
struct Counts<K>(Sharded<K, usize>);

impl<K: Hash + Eq + Clone> Counts<K> {
    /// Adds one unless `key` already holds `max`.
    fn take(&self, key: &K, max: usize) -> Result<(), usize> {
        let mut shard = self.0.shard(key).lock();
        let n = shard.entry(key.clone()).or_insert(0);
        if *n >= max {
            let held = *n;
            if held == 0 {
                shard.remove(key);
            }
            return Err(held);
        }
        *n += 1;
        Ok(())
    }

    fn release(&self, key: &K) {
        let mut shard = self.0.shard(key).lock();
        if let Entry::Occupied(mut e) = shard.entry(key.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Connection-rate buckets: one arrival time per address, capped and swept.
struct Buckets {
    map: Sharded<IpAddr, u64>,
    /// Per shard: when a full shard may be swept next.
    next_sweep: Vec<AtomicU64>,
}

impl Buckets {
    fn new() -> Self {
        Buckets {
            map: Sharded::new(),
            next_sweep: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn admit(&self, gcra: &Gcra, ip: IpAddr, now: u64) -> Result<(), u64> {
        let index = self.map.hasher.hash_one(ip) as usize % SHARDS;
        let mut shard = self.map.shards[index].lock();
        if let Some(tat) = shard.get_mut(&ip) {
            return gcra.admit(tat, now);
        }
        if shard.len() >= MAX_RATE_BUCKETS / SHARDS {
            let next = &self.next_sweep[index];
            if now >= next.load(Ordering::Relaxed) {
                next.store(now + SWEEP_GAP_NS, Ordering::Relaxed);
                // A bucket whose arrival time has passed is full: the same as no bucket.
                shard.retain(|_, tat| *tat > now);
            }
            if shard.len() >= MAX_RATE_BUCKETS / SHARDS {
                return Ok(());
            }
        }
        let mut tat = 0;
        let verdict = gcra.admit(&mut tat, now);
        shard.insert(ip, tat);
        verdict
    }
}

/// Which limit refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    PerIp,
    PerUser,
    ConnectRate,
    Origin,
}

/// The limits' configuration, state and log gates, shared by every connection.
pub struct Limits {
    epoch: Instant,
    per_ip: usize,
    per_user: usize,
    ip_counts: Counts<IpAddr>,
    user_counts: Counts<Arc<str>>,
    connect: Option<Gcra>,
    buckets: Buckets,
    /// Anonymous channel creation (`[dialects.wspush] create_rate_per_ip`).
    create: Option<Gcra>,
    create_buckets: Buckets,
    messages: Option<Gcra>,
    /// Consecutive drops that close a connection.
    flood_drops: u32,
    origins: Vec<OriginPattern>,
    log_refused: [LogGate; 5],
    log_rate_limited: LogGate,
}

impl Limits {
    /// Built from a validated configuration.
    pub fn new(config: &Config) -> Limits {
        let l = &config.limits;
        Limits {
            epoch: Instant::now(),
            per_ip: l.max_connections_per_ip,
            per_user: l.max_connections_per_user,
            ip_counts: Counts(Sharded::new()),
            user_counts: Counts(Sharded::new()),
            connect: Gcra::new(l.connect_rate_per_ip, l.connect_burst_per_ip),
            buckets: Buckets::new(),
            create: Gcra::new(
                config.dialects.wspush.create_rate_per_ip,
                config.dialects.wspush.create_burst_per_ip,
            ),
            create_buckets: Buckets::new(),
            messages: Gcra::new(l.messages_per_second, l.message_burst),
            flood_drops: l.message_burst.max(1).saturating_mul(FLOOD_FACTOR),
            origins: config
                .websocket
                .allowed_origins
                .iter()
                .filter_map(|o| OriginPattern::parse(o).ok())
                .collect(),
            log_refused: Default::default(),
            log_rate_limited: LogGate::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Admits one anonymous channel creation from `ip`, or says in how many seconds one would
    /// be admitted.
    pub fn admit_channel_create(&self, ip: IpAddr) -> Result<(), u64> {
        match &self.create {
            Some(gcra) => self
                .create_buckets
                .admit(gcra, ip_key(ip), self.now_ns())
                .map_err(|wait_ns| wait_ns.div_ceil(NANOS).max(1)),
            None => Ok(()),
        }
    }

    /// Addresses with open connections now, and connection-rate buckets held (for tests and
    /// diagnostics: both must stay bounded).
    pub fn tracked(&self) -> (usize, usize) {
        (self.ip_counts.0.len(), self.buckets.map.len())
    }
}

/// The address limits are kept for: IPv4 as is (also when IPv4-mapped), IPv6 by its /64
/// (one host or subscriber usually holds a whole /64).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn refusal(status: StatusCode, code: ErrorCode, message: String) -> Refusal {
    Refusal::new(status, code, message)
}

/// What the limits need of the node: its limits and its counters.
#[derive(Clone, Copy)]
pub struct Guard<'a> {
    pub limits: &'a Arc<Limits>,
    pub stats: &'a Stats,
}

/// Counts (and, gated, logs) a handshake refused by a limit.
pub fn count_refusal(guard: Guard, kind: Refused, ip: IpAddr, detail: &str) {
    let stats = guard.stats;
    Stats::add(&stats.refused_connections, 1);
    let (counter, index) = match kind {
        Refused::MaxConnections => (&stats.refused_max_connections, 0),
        Refused::PerIp => (&stats.refused_per_ip, 1),
        Refused::PerUser => (&stats.refused_per_user, 2),
        Refused::ConnectRate => (&stats.refused_connect_rate, 3),
        Refused::Origin => (&stats.refused_origin, 4),
    };
    Stats::add(counter, 1);
    let limits = guard.limits;
    if let Some(skipped) = limits.log_refused[index].check(limits.now_ns()) {
        tracing::warn!(%ip, limit = ?kind, skipped, "connection refused: {detail}");
    }
}

/// The checks made before anything else at a handshake: the connection-attempt rate of the
/// address (every attempt counts, refused or not), then the `Origin` allowlist.
pub fn check_attempt(guard: Guard, ip: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
    let limits = guard.limits;
    if let Some(gcra) = &limits.connect
        && let Err(wait_ns) = limits.buckets.admit(gcra, ip_key(ip), limits.now_ns())
    {
        count_refusal(
            guard,
            Refused::ConnectRate,
            ip,
            "limits.connect_rate_per_ip",
        );
        let mut resp = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connection attempts from this address; retry later".into(),
        );
        resp.retry_after_secs = Some(wait_ns.div_ceil(NANOS).max(1));
        return Err(resp);
    }
    if limits.origins.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // Not a browser.
    };
    let origin = origin.to_str().unwrap_or("");
    if limits.origins.iter().any(|p| p.matches(origin)) {
        return Ok(());
    }
    count_refusal(guard, Refused::Origin, ip, "websocket.allowed_origins");
    let shown = herald_core::ids::truncate(origin, 200);
    Err(refusal(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("origin {shown:?} is not allowed (websocket.allowed_origins)"),
    ))
}

/// A held per-IP or per-user connection count, given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    key: SlotKey,
}

enum SlotKey {
    Ip(IpAddr),
    User(Arc<str>),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.key {
            SlotKey::Ip(ip) => self.limits.ip_counts.release(ip),
            SlotKey::User(user) => self.limits.user_counts.release(user),
        }
    }
}

/// The per-IP and per-user slots a connection holds for its life. Boxed, and absent when
/// neither limit applies: it lives in every connection's task, so it stays one word.
pub struct ConnectionSlots {
    _held: Option<Box<(Option<Slot>, Option<Slot>)>>,
}

impl ConnectionSlots {
    fn new(ip: Option<Slot>, user: Option<Slot>) -> Self {
        match (ip, user) {
            (None, None) => ConnectionSlots { _held: None },
            slots => ConnectionSlots {
                _held: Some(Box::new(slots)),
            },
        }
    }
}

fn too_many(what: &str, held: usize, key: &str) -> String {
    format!("{what} already has {held} open connections, the most allowed ({key})")
}

/// Takes the connection's per-IP and per-user slots (the admin key is exempt, as from bans).
pub fn take_slots(
    guard: Guard,
    ip: IpAddr,
    identity: &Identity,
) -> Result<ConnectionSlots, Refusal> {
    let limits = guard.limits;
    if identity.admin {
        return Ok(ConnectionSlots::new(None, None));
    }
    let ip_slot = if limits.per_ip > 0 {
        let key = ip_key(ip);
        if let Err(held) = limits.ip_counts.take(&key, limits.per_ip) {
            count_refusal(guard, Refused::PerIp, ip, "limits.max_connections_per_ip");
            return Err(refusal(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooMany,
                too_many("this address", held, "limits.max_connections_per_ip"),
            ));
        }
        Some(Slot {
            limits: limits.clone(),
            key: SlotKey::Ip(key),
        })
    } else {
        None
    };
    let user_slot = match &identity.user {
        Some(user) => take_user_slot(guard, ip, user)
            .map_err(|e| refusal(StatusCode::TOO_MANY_REQUESTS, e.code, e.message))?,
        None => None,
    };
    Ok(ConnectionSlots::new(ip_slot, user_slot))
}

/// Takes a slot of `limits.max_connections_per_user` for `user` (at the handshake, or when a
/// connection authenticates later); `None` when the limit is off.
pub fn take_user_slot(
    guard: Guard,
    ip: IpAddr,
    user: &Arc<str>,
) -> Result<Option<Slot>, HeraldError> {
    let limits = guard.limits;
    if limits.per_user == 0 {
        return Ok(None);
    }
    if let Err(held) = limits.user_counts.take(user, limits.per_user) {
        count_refusal(
            guard,
            Refused::PerUser,
            ip,
            "limits.max_connections_per_user",
        );
        return Err(HeraldError::new(
            ErrorCode::TooMany,
            too_many(
                &format!("user {user:?}"),
                held,
                "limits.max_connections_per_user",
            ),
        ));
    }
    Ok(Some(Slot {
        limits: limits.clone(),
        key: SlotKey::User(user.clone()),
    }))
}

/// What to do with a message a connection sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: drop it and answer `rate_limited`.
    Drop,
    /// Flooding far past the rate: close the connection with this.
    Close(Disconnect),
}

/// One connection's message rate (`limits.messages_per_second`, `limits.message_burst`).
#[derive(Default)]
pub struct MessageRate {
    tat: u64,
    drops: u32,
}

impl MessageRate {
    /// Called for every data message (text, binary, too large) before it is handled.
    #[inline]
    pub fn check(&mut self, guard: Guard, client: &ClientHandle) -> Verdict {
        let limits = guard.limits;
        let Some(gcra) = &limits.messages else {
            return Verdict::Allow;
        };
        if client.is_admin() {
            return Verdict::Allow;
        }
        let now = limits.now_ns();
        if gcra.admit(&mut self.tat, now).is_ok() {
            self.drops = 0;
            return Verdict::Allow;
        }
        self.drops += 1;
        let stats = guard.stats;
        Stats::add(&stats.rate_limited, 1);
        if self.drops >= limits.flood_drops {
            Stats::add(&stats.rate_limited_disconnects, 1);
            tracing::warn!(client = %client.id, remote = ?client.info.remote, "connection closed: flooding past limits.messages_per_second");
            return Verdict::Close(Disconnect::new(
                DisconnectReason::RateLimited,
                close_code::RATE_LIMITED,
                "rate limit exceeded",
            ));
        }
        if let Some(skipped) = limits.log_rate_limited.check(now) {
            tracing::warn!(client = %client.id, remote = ?client.info.remote, skipped, "message dropped: limits.messages_per_second");
        }
        Verdict::Drop
    }
}

/// The error a dropped message is answered with.
pub fn rate_limited_error() -> HeraldError {
    HeraldError::new(
        ErrorCode::RateLimited,
        "too many messages: this one was dropped (limits.messages_per_second)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let g = Gcra::new(10, 3).unwrap();
        let mut tat = 0;
        let t0 = 5 * NANOS;
        for _ in 0..3 {
            assert!(g.admit(&mut tat, t0).is_ok());
        }
        let wait = g.admit(&mut tat, t0).unwrap_err();
        assert_eq!(wait, NANOS / 10);
        assert!(g.admit(&mut tat, t0 + wait).is_ok());
        assert!(g.admit(&mut tat, t0 + wait).is_err());
        // Idle long enough: the whole burst again.
        let later = t0 + 10 * NANOS;
        for _ in 0..3 {
            assert!(g.admit(&mut tat, later).is_ok());
        }
        assert!(Gcra::new(0, 5).is_none());
    }

    #[test]
    fn counts_remove_entries_at_zero() {
        let c: Counts<IpAddr> = Counts(Sharded::new());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(c.take(&ip, 2).is_ok());
        assert!(c.take(&ip, 2).is_ok());
        assert_eq!(c.take(&ip, 2), Err(2));
        c.release(&ip);
        c.release(&ip);
        assert_eq!(c.0.len(), 0);
        assert_eq!(c.take(&ip, 0), Err(0));
        assert_eq!(c.0.len(), 0);
    }

    #[test]
    fn user_counts_are_per_user() {
        let c: Counts<Arc<str>> = Counts(Sharded::new());
        let (a, b): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert!(c.take(&a, 1).is_ok());
        assert_eq!(c.take(&a, 1), Err(1));
        assert!(c.take(&b, 1).is_ok());
        c.release(&a);
        assert!(c.take(&a, 1).is_ok());
    }

    #[test]
    fn buckets_stay_bounded_and_fail_open() {
        let b = Buckets::new();
        let g = Gcra::new(1, 1).unwrap();
        let now = NANOS;
        for i in 0..(MAX_RATE_BUCKETS as u32 + 5000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = b.admit(&g, ip, now);
        }
        assert!(b.map.len() <= MAX_RATE_BUCKETS);
        // Later, every bucket is full again and is swept to make room.
        let later = now + 10 * NANOS;
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, 1));
        assert!(b.admit(&g, fresh, later).is_ok());
        assert!(b.admit(&g, fresh, later).is_err());
        // Its shard was swept down to it alone.
        assert!(b.map.len() <= MAX_RATE_BUCKETS - MAX_RATE_BUCKETS / SHARDS + 1);
    }

    #[test]
    fn origin_patterns() {
        let exact = OriginPattern::parse("https://App.example.com/").unwrap();
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com.evil.net"));
        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.EXAMPLE.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://evilexample.com"));
        assert!(!wild.matches("http://a.example.com"));
        assert!(!wild.matches("https://a.example.com:8443"));
        let port = OriginPattern::parse("https://*.example.com:8443").unwrap();
        assert!(port.matches("https://a.example.com:8443"));
        assert!(OriginPattern::parse("*").unwrap().matches("https://x"));
        assert!(OriginPattern::parse("null").unwrap().matches("null"));
        for bad in ["example.com", "https://", "https://a.com/path", "ht tp://a"] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_is_kept_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn log_gate_holds_back_and_counts() {
        let g = LogGate::default();
        assert_eq!(g.check(NANOS), Some(0));
        assert_eq!(g.check(NANOS + 1), None);
        assert_eq!(g.check(NANOS + 2), None);
        assert_eq!(g.check(2 * NANOS + 5), Some(2));
    }
}
