//! Warnings about things dropped because a queue was full (webhook events, history changes),
//! at most one per interval: a count that is not said at once is held back and said with the
//! next warning, or when the queue has room again, so no drop goes unlogged because the drops
//! stopped inside an interval. Lock-free: it sits on the paths that emit into the queues.

use std::sync::atomic::{AtomicU64, Ordering};

/// The count of drops not yet said, and when the last warning went out.
pub struct DropLog {
    interval_ms: u64,
    /// Milliseconds on the caller's clock (`u64::MAX`: never).
    last_ms: AtomicU64,
    unlogged: AtomicU64,
}

impl DropLog {
    pub fn new(interval_ms: u64) -> DropLog {
        DropLog {
            interval_ms,
            last_ms: AtomicU64::new(u64::MAX),
            unlogged: AtomicU64::new(0),
        }
    }

    /// One more was dropped at `now_ms`: the count to warn about now, if a warning is due.
    pub fn dropped(&self, now_ms: u64) -> Option<u64> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= self.interval_ms;
        (due && self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok())
        .then(|| self.unlogged.swap(0, Ordering::Relaxed))
        .filter(|n| *n > 0)
    }

    /// The queue took one again: the count held back since the last warning, if any (one
    /// relaxed load when there is none).
    pub fn room(&self) -> Option<u64> {
        if self.unlogged.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.unlogged.swap(0, Ordering::Relaxed)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drop_is_said_at_once_then_once_per_interval() {
        let log = DropLog::new(10_000);
        assert_eq!(log.dropped(5), Some(1));
        assert_eq!(log.dropped(6), None);
        assert_eq!(log.dropped(9_000), None);
        assert_eq!(log.dropped(10_005), Some(3));
        assert_eq!(log.dropped(10_006), None);
    }

    /// Drops that stop inside an interval are said when the queue has room again.
    #[test]
    fn what_is_held_back_is_said_when_there_is_room() {
        let log = DropLog::new(10_000);
        assert_eq!(log.room(), None);
        assert_eq!(log.dropped(0), Some(1));
        assert_eq!(log.dropped(1), None);
        assert_eq!(log.dropped(2), None);
        assert_eq!(log.room(), Some(2));
        assert_eq!(log.room(), None);
        // The interval still holds for the next drops.
        assert_eq!(log.dropped(3), None);
        assert_eq!(log.room(), Some(1));
    }
}
