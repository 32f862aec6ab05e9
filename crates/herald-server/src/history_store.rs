//! Durable history (`[history] durable`): the hub hands every history change to
//! [`HistoryWriter`] without waiting (a bounded queue), and one task writes them to the store
//! in batches, one transaction per batch, off the publish path, syncing them to disk at most a
//! second later ([`SYNC_EVERY`]) and at shutdown. Also the sweep task that
//! expires kept publications and keeps all history within `[history] max_bytes`.
//!
//! When the store falls so far behind that the queue is full, changes are dropped (counted in
//! `history_write_dropped`, logged at most once a second): the fan-out never waits on disk.
//! A batch the store fails to write (a full disk) is counted there too, and logged.
//! What is in memory is unaffected; only what a restart would bring back is.

use std::sync::Arc;
use std::time::Duration;

use herald_core::history::{HistoryOp, HistorySink};
use herald_core::stats::Stats;
use herald_core::{Hub, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::drop_log::DropLog;

/// History changes waiting for the writer, at most.
pub const QUEUE: usize = 65_536;
/// Changes written in one transaction, at most.
const BATCH: usize = 4096;
/// How often the sweep runs when nothing else wakes it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest time a history write stays unsynced (in the page cache only).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The hub's [`HistorySink`]: a non-blocking hand-off to the writer task.
pub struct HistoryWriter {
    tx: mpsc::Sender<HistoryOp>,
    stats: Arc<Stats>,
    /// Warnings about drops, at most one a second.
    drops: DropLog,
    /// The clock of `drops`.
    started: std::time::Instant,
}

impl HistorySink for HistoryWriter {
    fn record(&self, op: HistoryOp) {
        match self.tx.try_send(op) {
            Ok(()) => {
                if let Some(dropped) = self.drops.room() {
                    tracing::warn!(
                        dropped,
                        "history writer caught up; more changes were not kept on disk before"
                    );
                }
            }
            Err(_) => {
                Stats::add(&self.stats.history_write_dropped, 1);
                let now = self.started.elapsed().as_millis() as u64;
                if let Some(dropped) = self.drops.dropped(now) {
                    tracing::warn!(
                        dropped,
                        "history writer behind: changes not kept on disk (history_write_dropped)"
                    );
                }
            }
        }
    }
}

/// The writer task, and how to make it finish.
pub struct Writer {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Writer {
    /// Writes what is still queued, then ends (at shutdown; bounded by `wait`).
    pub async fn finish(self, wait: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(wait, self.task).await;
    }
}

/// Starts the writer: the hub's history changes go to `store` from now on.
pub fn start_writer(hub: &Hub, store: Arc<dyn Store>) -> Writer {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = hub.shared_stats();
    hub.registry().set_history_sink(Arc::new(HistoryWriter {
        tx,
        stats: hub.shared_stats(),
        drops: DropLog::new(1000),
        started: std::time::Instant::now(),
    }));
    let (stop, stop_rx) = watch::channel(false);
    Writer {
        task: tokio::spawn(write_loop(rx, stop_rx, store, stats)),
        stop,
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<HistoryOp>,
    mut stop: watch::Receiver<bool>,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // Writes go to the page cache and are synced to disk at most SYNC_EVERY later: one fsync a
    // second instead of one per batch (a crash loses at most that second).
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let sync_at = unsynced_since.map(|t| t + SYNC_EVERY);
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            _ = stop.changed() => true,
            _ = sleep_until_opt(sync_at) => false,
        };
        if stopping {
            // What is queued still goes out.
            while let Ok(op) = rx.try_recv() {
                batch.push(op);
            }
        }
        let sync = stopping || sync_at.is_some_and(|t| Instant::now() >= t);
        if !batch.is_empty() || (sync && unsynced_since.is_some()) {
            write(&store, std::mem::take(&mut batch), sync, &stats).await;
            unsynced_since = if sync {
                None
            } else {
                unsynced_since.or(Some(Instant::now()))
            };
        }
        if stopping {
            return;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn write(store: &Arc<dyn Store>, ops: Vec<HistoryOp>, sync: bool, stats: &Stats) {
    let store = store.clone();
    let n = ops.len() as u64;
    let failed = match tokio::task::spawn_blocking(move || store.write_history(&ops, sync)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    Stats::add(&stats.history_write_dropped, n);
    tracing::error!(error = %failed, changes = n, "writing history failed (history_write_dropped)");
}

/// Runs the hub's history sweep every second, and at once when the byte budget is exceeded,
/// until `shutdown`. `owner` is whatever keeps the hub alive (the server's state).
pub async fn sweeper<S: AsRef<Hub> + Send + Sync + 'static>(
    owner: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hub = (*owner).as_ref();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = hub.registry().history_budget().pressure() => {}
        }
        hub.history_sweep();
    }
}
