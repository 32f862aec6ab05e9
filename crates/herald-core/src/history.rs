//! Channel history: the last publications of a channel, bounded three ways (the channel's
//! `history_size` and `history_ttl_secs`, and one byte budget shared by every channel,
//! `[history] max_bytes`), read to recover a reconnecting client and by the history op.
//!
//! A channel's [`History`] lives under the channel's state lock, next to the offset it
//! follows, so recording a publication and replaying one never interleave with a newer one.
//! The publish path only appends and trims its own channel; expiry and the shared budget are
//! enforced by the hub's sweep ([`crate::Hub::history_sweep`]), which the server runs on a
//! timer and whenever the budget is exceeded ([`Budget::pressure`]).
//!
//! Durability is someone else's job: every change is described as a [`HistoryOp`] and handed
//! to a [`HistorySink`] (the server's store writer), which must never block.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ids::ClientId;

/// Bytes counted per kept publication on top of its data (the entry, its `Arc`, its slot).
pub const ENTRY_OVERHEAD: usize = 96;
/// Most publications one history request returns (`limit`).
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// The default `limit` of a history request.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// One kept publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub from: Option<ClientId>,
    /// The publication's JSON, copied out of the frame it came in (so keeping it does not keep
    /// the whole received buffer alive).
    pub data: Bytes,
    /// Wall-clock time of publication, for clients and for expiry across a restart.
    pub time_ms: u64,
    /// A publication for some subscribers only (`to`): only they get it back from history.
    pub to: Option<Vec<ClientId>>,
}

impl Entry {
    /// Whether `client` may get it from history (it would have received it live).
    pub fn for_client(&self, client: ClientId) -> bool {
        self.to.as_ref().is_none_or(|to| to.contains(&client))
    }

    /// The bytes it counts against the budget.
    pub fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// The shared byte budget of all channels' history.
pub struct Budget {
    used: AtomicUsize,
    max: usize,
    /// Woken when `used` passes `max`: the sweep then evicts the oldest entries.
    pressure: tokio::sync::Notify,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
            pressure: tokio::sync::Notify::new(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn over(&self) -> bool {
        self.used() > self.max
    }

    /// Resolves when the budget was exceeded since the last call.
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }

    fn add(&self, n: usize) {
        if self.used.fetch_add(n, Ordering::Relaxed) + n > self.max {
            self.pressure.notify_one();
        }
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A change to keep in the store, in the order the hub made it.
#[derive(Debug, Clone)]
pub enum HistoryOp {
    /// A publication to keep; everything below `keep_from` is gone.
    Append {
        channel: ChannelName,
        epoch: Arc<str>,
        entry: Arc<Entry>,
        keep_from: u64,
    },
    /// The channel's position (persistent channels without history: so a restart keeps
    /// their epoch and offset).
    Position {
        channel: ChannelName,
        epoch: Arc<str>,
        offset: u64,
    },
    /// Entries below `keep_from` expired or were evicted.
    Trim {
        channel: ChannelName,
        keep_from: u64,
    },
    /// The channel's history and position are gone (deleted, or expired with nobody left).
    Forget { channel: ChannelName },
}

/// Where [`HistoryOp`]s go. `record` is called under a channel's lock: it must not block.
pub trait HistorySink: Send + Sync {
    fn record(&self, op: HistoryOp);
}

/// What a new subscriber receives from the channel's history, before any newer publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay<'a> {
    Nothing,
    /// Recovery: every publication after `offset` of `epoch`, or nothing if any is missing.
    After {
        epoch: &'a str,
        offset: u64,
    },
    /// The last `n` kept publications (push-stream's backtrack).
    Last(usize),
    /// The kept publications made after `after_ms` (wall-clock milliseconds), at most the
    /// `newest` of them (push-stream's `If-Modified-Since` positioning).
    Since {
        after_ms: u64,
        newest: usize,
    },
}

/// The outcome of a recovery, as the subscribe reply reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Recovered {
    /// Every missed publication follows (none was missing, and they fit in the outbox).
    pub recovered: bool,
    /// The channel's current epoch and latest offset.
    pub epoch: String,
    pub offset: u64,
}

/// A channel's kept publications, oldest first, each with when it expires.
#[derive(Default)]
pub struct History {
    entries: VecDeque<(Arc<Entry>, Instant)>,
}

impl History {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The offset of the oldest entry held, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.offset)
    }

    /// When the oldest entry was published (the sweep evicts the globally oldest first).
    pub fn oldest_time_ms(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.time_ms)
    }

    /// Appends `entry` (expiring after `ttl`) and drops the oldest beyond `size`.
    pub fn push(&mut self, entry: Arc<Entry>, ttl: Duration, size: usize, budget: &Budget) {
        let expires = Instant::now() + ttl;
        budget.add(entry.cost());
        self.entries.push_back((entry, expires));
        while self.entries.len() > size {
            self.pop_oldest(budget);
        }
    }

    /// Puts back an entry read from the store (oldest first), expiring at `expires`.
    pub fn restore(&mut self, entry: Arc<Entry>, expires: Instant, budget: &Budget) {
        budget.add(entry.cost());
        self.entries.push_back((entry, expires));
    }

    /// Drops entries that expired by `now`; returns whether any did.
    pub fn expire(&mut self, now: Instant, budget: &Budget) -> bool {
        let mut changed = false;
        while self.entries.front().is_some_and(|(_, exp)| *exp <= now) {
            self.pop_oldest(budget);
            changed = true;
        }
        changed
    }

    /// Drops the oldest entry.
    pub fn pop_oldest(&mut self, budget: &Budget) -> bool {
        match self.entries.pop_front() {
            Some((e, _)) => {
                budget.sub(e.cost());
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self, budget: &Budget) {
        while self.pop_oldest(budget) {}
    }

    /// The entries after `offset` (exclusive), oldest first, if every one of them is still
    /// held: `None` when some were already dropped (`offset + 1` is older than the oldest
    /// held) while the channel has published past `offset`. Nothing follows an `offset` at
    /// or beyond `latest` (a recovery checks for a position ahead of the channel itself).
    pub fn after(&self, offset: u64, latest: u64) -> Option<Vec<Arc<Entry>>> {
        if offset >= latest {
            return Some(Vec::new());
        }
        let start = self.entries.partition_point(|(e, _)| e.offset <= offset);
        let tail: Vec<Arc<Entry>> = self
            .entries
            .range(start..)
            .map(|(e, _)| e.clone())
            .collect();
        // Every publication from offset + 1 to the latest, none missing.
        let complete = tail.first().is_some_and(|e| e.offset == offset + 1)
            && tail.last().is_some_and(|e| e.offset == latest)
            && tail.windows(2).all(|w| w[1].offset == w[0].offset + 1);
        complete.then_some(tail)
    }

    /// The last `n` entries, oldest first.
    pub fn last(&self, n: usize) -> Vec<Arc<Entry>> {
        let skip = self.entries.len().saturating_sub(n);
        self.entries
            .iter()
            .skip(skip)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// The entries published after `after_ms` (exclusive), at most the last `n` of them,
    /// oldest first.
    pub fn since(&self, after_ms: u64, n: usize) -> Vec<Arc<Entry>> {
        let newer: Vec<Arc<Entry>> = self
            .entries
            .iter()
            .filter(|(e, _)| e.time_ms > after_ms)
            .map(|(e, _)| e.clone())
            .collect();
        let skip = newer.len().saturating_sub(n);
        newer.into_iter().skip(skip).collect()
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<Entry>> {
        self.entries.iter().map(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, bytes: usize) -> Arc<Entry> {
        Arc::new(Entry {
            offset,
            from: None,
            data: Bytes::from(vec![b'1'; bytes]),
            time_ms: offset,
            to: None,
        })
    }

    #[test]
    fn size_bounds_the_count_and_the_budget_follows() {
        let budget = Budget::new(1 << 20);
        let mut h = History::default();
        for o in 1..=5 {
            h.push(entry(o, 10), Duration::from_secs(60), 3, &budget);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.first_offset(), Some(3));
        assert_eq!(budget.used(), 3 * (10 + ENTRY_OVERHEAD));
        h.clear(&budget);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn after_replays_only_a_complete_tail() {
        let budget = Budget::new(1 << 20);
        let mut h = History::default();
        for o in 1..=5 {
            h.push(entry(o, 1), Duration::from_secs(60), 3, &budget);
        }
        // Held: 3, 4, 5.
        let offsets =
            |v: Option<Vec<Arc<Entry>>>| v.map(|v| v.iter().map(|e| e.offset).collect::<Vec<_>>());
        assert_eq!(offsets(h.after(2, 5)), Some(vec![3, 4, 5]));
        assert_eq!(offsets(h.after(4, 5)), Some(vec![5]));
        assert_eq!(offsets(h.after(5, 5)), Some(vec![]));
        // Nothing follows a position ahead of the channel (a history page since it is empty).
        assert_eq!(offsets(h.after(6, 5)), Some(vec![]));
        assert_eq!(offsets(h.after(u64::MAX, 5)), Some(vec![]));
        assert_eq!(offsets(h.after(1, 5)), None, "2 is gone");
        assert_eq!(offsets(History::default().after(0, 0)), Some(vec![]));
        assert_eq!(offsets(History::default().after(0, 3)), None);
        // Kept entries that do not reach the latest offset, or with a hole: not complete.
        assert_eq!(offsets(h.after(2, 6)), None, "6 is not kept");
        let mut holed = History::default();
        for o in [1, 2, 4, 5] {
            holed.push(entry(o, 1), Duration::from_secs(60), 10, &budget);
        }
        assert_eq!(offsets(holed.after(1, 5)), None, "3 is missing");
        assert_eq!(offsets(holed.after(3, 5)), Some(vec![4, 5]));
        assert_eq!(
            h.last(2).iter().map(|e| e.offset).collect::<Vec<_>>(),
            [4, 5]
        );
    }

    #[test]
    fn expiry_drops_the_oldest_and_exceeding_the_budget_signals() {
        let budget = Budget::new(2 * (100 + ENTRY_OVERHEAD));
        let mut h = History::default();
        h.push(entry(1, 100), Duration::ZERO, 10, &budget);
        h.push(entry(2, 100), Duration::from_secs(60), 10, &budget);
        assert!(!budget.over());
        assert!(h.expire(Instant::now(), &budget));
        assert_eq!(h.first_offset(), Some(2));
        h.push(entry(3, 100), Duration::from_secs(60), 10, &budget);
        h.push(entry(4, 100), Duration::from_secs(60), 10, &budget);
        assert!(budget.over());
    }
}
