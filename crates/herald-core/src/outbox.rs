//! The per-connection outbox: frames waiting to be written, bounded in bytes.
//!
//! Producers (the fan-out, direct sends, the pinger) never wait: [`Outbox::push`] either
//! queues the shared frame or reports that the outbox is full, and the caller then closes the
//! client as a slow consumer. The connection's writer waits on [`Outbox::ready`], drains
//! everything queued and writes it with as few system calls as it can. An empty outbox holds
//! no heap memory (a `VecDeque` allocates on first push), which keeps idle connections small.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::disconnect::Disconnect;

/// Result of [`Outbox::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queuing would exceed the byte limit; nothing was queued.
    Full,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closing: Option<Disconnect>,
    /// When the first frame of what is queued was published (a publication pushed into an
    /// empty queue), for the publish-to-write latency.
    since: Option<Instant>,
}

/// What the writer gets from one [`Outbox::drain`].
pub struct Drained {
    pub frames: usize,
    pub bytes: usize,
    /// Set when the connection must be closed after writing what was drained.
    pub closing: Option<Disconnect>,
    /// When the first of the drained frames was published, if it was a publication pushed
    /// into an empty queue (a sample of the publish-to-write latency).
    pub since: Option<Instant>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    pub fn new() -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
        }
    }

    /// Queues `frame` unless that would take the outbox over `limit` bytes.
    pub fn push(&self, frame: Bytes, limit: usize) -> Push {
        self.push_since(frame, limit, None)
    }

    /// [`Outbox::push`] of a publication made at `published` (remembered when the queue was
    /// empty, for [`Drained::since`]).
    pub fn push_since(&self, frame: Bytes, limit: usize, published: Option<Instant>) -> Push {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return Push::Closed;
        }
        if st.bytes + frame.len() > limit {
            return Push::Full;
        }
        let was_empty = st.frames.is_empty();
        if was_empty {
            st.since = published;
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Queues `frame` ahead of everything queued (a greeting that must be the first frame the
    /// client reads, built after what it announces was done).
    pub fn push_front(&self, frame: Bytes) -> Push {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return Push::Closed;
        }
        let was_empty = st.frames.is_empty();
        st.bytes += frame.len();
        st.frames.push_front(frame);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Asks the writer to close the connection. The first request wins; returns whether this
    /// one did. Slow consumers lose what was queued (it is what they could not take); other
    /// closes first flush what is queued, so e.g. an `unsubscribed` notice precedes a kick.
    pub fn close(&self, disconnect: Disconnect) -> bool {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return false;
        }
        if disconnect.reason == crate::disconnect::DisconnectReason::SlowConsumer {
            st.frames = VecDeque::new();
            st.bytes = 0;
        }
        st.closing = Some(disconnect);
        drop(st);
        self.ready.notify_one();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().closing.is_some()
    }

    /// The pending close request, if any.
    pub fn closing(&self) -> Option<Disconnect> {
        self.state.lock().closing.clone()
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn pending_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Resolves when something was queued or a close was requested since the last drain.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves queued frames into `out` (up to about `max_bytes`; at least one frame), and
    /// reports a pending close once the queue is empty. Frees the queue's memory when it
    /// empties after a burst.
    pub fn drain(&self, out: &mut Vec<u8>, max_bytes: usize) -> Drained {
        let mut st = self.state.lock();
        let mut frames = 0;
        let mut bytes = 0;
        while let Some(front) = st.frames.front() {
            if frames > 0 && bytes + front.len() > max_bytes {
                break;
            }
            let frame = st.frames.pop_front().expect("front exists");
            bytes += frame.len();
            frames += 1;
            out.extend_from_slice(&frame);
        }
        st.bytes -= bytes;
        if st.frames.is_empty() && st.frames.capacity() > 0 {
            // Idle connections keep no queue memory.
            st.frames = VecDeque::new();
        }
        let closing = if st.frames.is_empty() {
            st.closing.clone()
        } else {
            None
        };
        Drained {
            frames,
            bytes,
            closing,
            since: if frames > 0 { st.since.take() } else { None },
        }
    }

    /// Whether frames are still queued (the writer drains again without waiting).
    pub fn has_pending(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_drains_in_order() {
        let ob = Outbox::new();
        assert_eq!(ob.push(Bytes::from_static(b"abc"), 5), Push::Queued);
        assert_eq!(ob.push(Bytes::from_static(b"def"), 5), Push::Full);
        assert_eq!(ob.push(Bytes::from_static(b"de"), 5), Push::Queued);
        let mut out = Vec::new();
        let d = ob.drain(&mut out, 1024);
        assert_eq!((d.frames, d.bytes), (2, 5));
        assert_eq!(out, b"abcde");
        assert_eq!(ob.pending_bytes(), 0);
    }

    #[test]
    fn slow_consumer_close_drops_queue_and_refuses_more() {
        let ob = Outbox::new();
        ob.push(Bytes::from_static(b"abc"), 100);
        assert!(ob.close(Disconnect::slow_consumer()));
        assert!(!ob.close(Disconnect::timed_out()));
        assert_eq!(ob.push(Bytes::from_static(b"x"), 100), Push::Closed);
        let mut out = Vec::new();
        let d = ob.drain(&mut out, 1024);
        assert_eq!(d.frames, 0);
        assert_eq!(
            d.closing.unwrap().reason,
            crate::disconnect::DisconnectReason::SlowConsumer
        );
    }

    #[test]
    fn other_closes_flush_first() {
        let ob = Outbox::new();
        ob.push(Bytes::from_static(b"abc"), 100);
        ob.close(Disconnect::timed_out());
        let mut out = Vec::new();
        let d = ob.drain(&mut out, 1024);
        assert_eq!(out, b"abc");
        assert!(d.closing.is_some());
    }

    #[test]
    fn drain_respects_batch_size_but_takes_one_frame() {
        let ob = Outbox::new();
        ob.push(Bytes::from(vec![1u8; 10]), 100);
        ob.push(Bytes::from(vec![2u8; 10]), 100);
        let mut out = Vec::new();
        assert_eq!(ob.drain(&mut out, 5).frames, 1);
        assert!(ob.has_pending());
    }

    #[test]
    fn the_publish_time_of_the_first_frame_of_a_batch_is_reported_once() {
        let ob = Outbox::new();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(5);
        ob.push_since(Bytes::from_static(b"a"), 1024, Some(t0));
        // Not into an empty queue: the batch keeps its first frame's time.
        ob.push_since(Bytes::from_static(b"b"), 1024, Some(t1));
        assert_eq!(ob.drain(&mut out, 1024).since, Some(t0));
        // A frame that is not a publication carries no time.
        ob.push(Bytes::from_static(b"c"), 1024);
        assert_eq!(ob.drain(&mut out, 1024).since, None);
        // Reported once: an empty drain has none.
        assert_eq!(ob.drain(&mut out, 1024).since, None);
    }

    #[test]
    fn a_frame_pushed_in_front_is_read_first() {
        let ob = Outbox::new();
        let mut out = Vec::new();
        ob.push(Bytes::from_static(b"message"), 1024);
        ob.push_front(Bytes::from_static(b"welcome;"));
        ob.drain(&mut out, 1024);
        assert_eq!(out, b"welcome;message");
    }

    /// Polls `ob.ready()` once with `waker`: whether it resolved.
    fn ready_now(ob: &Outbox, waker: &std::task::Waker) -> bool {
        use std::future::Future;
        let mut wait = std::pin::pin!(ob.ready());
        let mut cx = std::task::Context::from_waker(waker);
        wait.as_mut().poll(&mut cx).is_ready()
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn flag() -> (std::sync::Arc<Flag>, std::task::Waker) {
        let flag = std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        (flag.clone(), std::task::Waker::from(flag))
    }

    fn woken(flag: &Flag) -> bool {
        flag.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_writer_waiting_is_woken_by_a_push_into_the_empty_queue() {
        let ob = Outbox::new();
        let (flag, waker) = flag();
        let mut wait = std::pin::pin!(ob.ready());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::future::Future::poll(wait.as_mut(), &mut cx).is_pending());
        ob.push(Bytes::from_static(b"a"), 1024);
        assert!(woken(&flag));
        assert!(std::future::Future::poll(wait.as_mut(), &mut cx).is_ready());
    }

    #[test]
    fn a_push_before_the_writer_waits_is_not_missed_and_wakes_once() {
        let ob = Outbox::new();
        let noop = std::task::Waker::noop();
        assert!(!ready_now(&ob, noop), "nothing happened yet");
        ob.push(Bytes::from_static(b"a"), 1024);
        assert!(ready_now(&ob, noop), "kept for the next wait");
        assert!(!ready_now(&ob, noop), "one wake for it");
    }

    #[test]
    fn pushes_behind_a_queued_frame_do_not_wake_again_until_the_queue_empties() {
        let ob = Outbox::new();
        let noop = std::task::Waker::noop();
        ob.push(Bytes::from_static(b"a"), 1024);
        assert!(ready_now(&ob, noop));
        ob.push(Bytes::from_static(b"b"), 1024);
        assert!(
            !ready_now(&ob, noop),
            "the writer drains everything once woken"
        );
        let mut out = Vec::new();
        ob.drain(&mut out, 1024);
        assert_eq!(out, b"ab");
        ob.push(Bytes::from_static(b"c"), 1024);
        assert!(
            ready_now(&ob, noop),
            "a push into the emptied queue wakes again"
        );
    }

    #[test]
    fn a_close_and_a_frame_in_front_wake_the_writer() {
        let ob = Outbox::new();
        let noop = std::task::Waker::noop();
        ob.push_front(Bytes::from_static(b"welcome"));
        assert!(ready_now(&ob, noop));
        let (flag, waker) = flag();
        let mut wait = std::pin::pin!(ob.ready());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::future::Future::poll(wait.as_mut(), &mut cx).is_pending());
        assert!(ob.close(Disconnect::shutdown()));
        assert!(
            woken(&flag),
            "a close wakes a writer even with frames queued"
        );
    }
}
