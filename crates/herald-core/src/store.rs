//! The durable store: state that users create and that must survive a restart (channels
//! created through the API, with their options and hashed tokens; bans; channel history and
//! positions, when `[history] durable`).
//!
//! Implementations: [`MemoryStore`] here (tests, `--data-dir` less runs), redb in
//! herald-server. Calls are synchronous and may block on disk; the hub runs them on the
//! blocking thread pool.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::bans::BanRecord;
use crate::channel::ChannelOptions;
use crate::history::{Entry, HistoryOp};

/// A channel as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub name: String,
    pub options: ChannelOptions,
    /// SHA-256 (hex) of the channel token; the token itself is never stored.
    pub token_hash: String,
    pub created_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

pub trait Store: Send + Sync + 'static {
    fn load_channels(&self) -> Result<Vec<ChannelRecord>, StoreError>;
    /// Inserts or replaces the record of `rec.name`.
    fn put_channel(&self, rec: &ChannelRecord) -> Result<(), StoreError>;
    /// Returns whether a record was removed.
    fn delete_channel(&self, name: &str) -> Result<bool, StoreError>;
    fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError>;
    /// Inserts or replaces the ban with `ban.id()`.
    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError>;
    /// Removes the ban with this id (`ip:...`, `cidr:...`, `user:...`).
    fn delete_ban(&self, id: &str) -> Result<bool, StoreError>;
    /// Every channel's kept position and publications (none for a store that keeps no
    /// history).
    fn load_history(&self) -> Result<Vec<StoredHistory>, StoreError> {
        Ok(Vec::new())
    }
    /// Applies history changes in order, as one write. With `sync` false the write may stay
    /// in the page cache until a later synced one (the writer syncs at least once a second);
    /// with `sync` true it and every earlier one are on disk when this returns.
    fn write_history(&self, _ops: &[HistoryOp], _sync: bool) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A channel's history as stored: its position and kept publications, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHistory {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub entries: Vec<Entry>,
}

/// Keeps everything in memory: nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    channels: Mutex<BTreeMap<String, ChannelRecord>>,
    bans: Mutex<BTreeMap<String, BanRecord>>,
}

impl Store for MemoryStore {
    fn load_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        Ok(self.channels.lock().values().cloned().collect())
    }
    fn put_channel(&self, rec: &ChannelRecord) -> Result<(), StoreError> {
        self.channels.lock().insert(rec.name.clone(), rec.clone());
        Ok(())
    }
    fn delete_channel(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.channels.lock().remove(name).is_some())
    }
    fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        Ok(self.bans.lock().values().cloned().collect())
    }
    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        self.bans.lock().insert(ban.id(), ban.clone());
        Ok(())
    }
    fn delete_ban(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.bans.lock().remove(id).is_some())
    }
}
