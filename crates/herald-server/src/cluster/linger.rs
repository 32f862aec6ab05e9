//! Which channels a NATS node keeps following after their last local subscriber left, and
//! until when (`[broker] follow_linger_secs`).
//!
//! Core NATS keeps no history: a node hears a channel only while it follows it, so a client
//! that was the node's only subscriber of a channel could never recover there after a short
//! absence. A vacated channel that the node keeps (for its history) is therefore followed a
//! while longer; a subscriber that comes back within that time finds nothing missed. This is
//! only the bookkeeping (pure, tested below); the follow task in [`super::nats`] acts on it.
//!
//! Bounded twice: by time (each entry lives `linger`) and by count (at most `max` channels
//! linger, the oldest going first; the queue of vacate times, which keeps stale entries of
//! channels taken again, is compacted to at most twice that and 64).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use herald_core::ChannelName;

pub struct Linger {
    linger: Duration,
    max: usize,
    /// Lingering channels and when each was vacated.
    since: HashMap<ChannelName, Instant>,
    /// The same, in the order they were vacated; an entry whose channel was taken again (or
    /// vacated again later) is stale and skipped.
    order: VecDeque<(ChannelName, Instant)>,
}

impl Linger {
    pub fn new(linger: Duration, max: usize) -> Linger {
        Linger {
            linger,
            max,
            since: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// `channel` lost its last local subscriber at `now`: whether to keep following it (it
    /// lingers), and the channels to stop following at once to stay within `max`.
    pub fn vacated(&mut self, channel: &ChannelName, now: Instant) -> (bool, Vec<ChannelName>) {
        if self.linger.is_zero() || self.max == 0 {
            return (false, Vec::new());
        }
        self.since.insert(channel.clone(), now);
        self.order.push_back((channel.clone(), now));
        // Stale entries behind a live one leave only when it does: under churn, compact so
        // that the queue stays within a small multiple of the lingering channels.
        if self.order.len() > 2 * self.since.len() + 64 {
            let since = &self.since;
            self.order.retain(|(c, at)| since.get(c) == Some(at));
        }
        let mut evicted = Vec::new();
        while self.since.len() > self.max {
            match self.pop_front() {
                Some(c) => evicted.push(c),
                None => break,
            }
        }
        (true, evicted)
    }

    /// `channel` has a local subscriber again: whether it was lingering (then the node never
    /// stopped following it and missed nothing).
    pub fn occupied(&mut self, channel: &ChannelName) -> bool {
        self.since.remove(channel).is_some()
    }

    /// The channels whose time is up at `now`, no longer lingering: to stop following.
    pub fn expired(&mut self, now: Instant) -> Vec<ChannelName> {
        let mut out = Vec::new();
        loop {
            // The front's time is judged only once it is a live entry.
            self.drop_stale();
            match self.order.front() {
                Some((_, at)) if now >= *at + self.linger => {}
                _ => return out,
            }
            if let Some(c) = self.pop_front() {
                out.push(c);
            }
        }
    }

    /// When the next lingering channel's time is up.
    pub fn next_expiry(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.order.front().map(|(_, at)| *at + self.linger)
    }

    /// Takes the oldest live entry (stale ones are dropped on the way).
    fn pop_front(&mut self) -> Option<ChannelName> {
        while let Some((channel, at)) = self.order.pop_front() {
            if self.since.get(&channel) == Some(&at) {
                self.since.remove(&channel);
                return Some(channel);
            }
        }
        None
    }

    fn drop_stale(&mut self) {
        while let Some((channel, at)) = self.order.front() {
            if self.since.get(channel) == Some(at) {
                return;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_vacated_channel_lingers_until_its_time_is_up() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        assert_eq!(l.vacated(&name("a"), t0), (true, vec![]));
        assert_eq!(l.next_expiry(), Some(t0 + 10 * SEC));
        assert!(l.expired(t0 + 9 * SEC).is_empty());
        assert_eq!(l.expired(t0 + 10 * SEC), vec![name("a")]);
        assert_eq!(l.since.len(), 0);
        assert_eq!(l.next_expiry(), None);
    }

    #[test]
    fn a_channel_taken_again_stops_lingering_and_does_not_expire() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        l.vacated(&name("a"), t0);
        assert!(l.occupied(&name("a")));
        assert!(!l.occupied(&name("b")), "never vacated");
        assert_eq!(l.next_expiry(), None);
        assert!(l.expired(t0 + 60 * SEC).is_empty());
    }

    #[test]
    fn vacated_again_later_counts_from_the_last_time() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        l.vacated(&name("a"), t0);
        l.occupied(&name("a"));
        l.vacated(&name("a"), t0 + 5 * SEC);
        assert_eq!(l.next_expiry(), Some(t0 + 15 * SEC));
        assert!(l.expired(t0 + 12 * SEC).is_empty());
        assert_eq!(l.expired(t0 + 15 * SEC), vec![name("a")]);
    }

    #[test]
    fn beyond_the_most_the_oldest_stops_lingering_at_once() {
        let mut l = Linger::new(10 * SEC, 2);
        let t0 = Instant::now();
        l.vacated(&name("a"), t0);
        l.vacated(&name("b"), t0 + SEC);
        assert_eq!(l.vacated(&name("c"), t0 + 2 * SEC), (true, vec![name("a")]));
        assert_eq!(l.since.len(), 2);
        assert_eq!(l.expired(t0 + 11 * SEC), vec![name("b")]);
    }

    #[test]
    fn no_linger_time_means_no_lingering() {
        let mut l = Linger::new(Duration::ZERO, 100);
        assert_eq!(l.vacated(&name("a"), Instant::now()), (false, vec![]));
        assert_eq!(l.since.len(), 0);
    }

    #[test]
    fn a_stale_entry_does_not_let_a_later_one_expire_early() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        l.vacated(&name("a"), t0);
        l.vacated(&name("b"), t0 + Duration::from_millis(1));
        l.occupied(&name("b"));
        l.vacated(&name("c"), t0 + 5 * SEC);
        assert_eq!(
            l.expired(t0 + 10 * SEC + Duration::from_millis(1)),
            vec![name("a")]
        );
        assert_eq!(l.next_expiry(), Some(t0 + 15 * SEC));
        assert_eq!(l.expired(t0 + 15 * SEC), vec![name("c")]);
    }

    #[test]
    fn stale_entries_behind_a_live_one_do_not_pile_up() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        l.vacated(&name("first"), t0);
        for i in 0..10_000 {
            l.vacated(&name("a"), t0 + Duration::from_millis(i));
            l.occupied(&name("a"));
        }
        assert!(l.order.len() <= 2 * l.since.len() + 65, "{}", l.order.len());
        assert_eq!(l.expired(t0 + 60 * SEC), vec![name("first")]);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut l = Linger::new(10 * SEC, 100);
        let t0 = Instant::now();
        for i in 0..1000 {
            l.vacated(&name("a"), t0 + Duration::from_millis(i));
            l.occupied(&name("a"));
        }
        assert_eq!(l.next_expiry(), None);
        assert!(l.order.is_empty());
    }
}
