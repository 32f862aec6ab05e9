//! The embedded store: one redb file (`<data_dir>/herald.redb`). Each write is its own
//! transaction with redb's default durability (fsync on commit), so a channel the API
//! confirmed survives a crash. Values are JSON, so the format stays readable and can gain
//! fields without a migration.
//!
//! After an I/O error (a full disk, say) redb refuses everything until the database is
//! opened again; the store then reopens it at the next operation ([`RedbStore::with_db`]),
//! so that it works again once the disk has room, without a restart.

use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use redb::{Builder, Database, ReadableDatabase, ReadableTable, TableDefinition};

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::ClientId;
use herald_core::bans::BanRecord;
use herald_core::history::{Entry, HistoryOp};
use herald_core::store::{ChannelRecord, Store, StoreError, StoredHistory};

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
/// Bans by id (`ip:...`, `cidr:...`, `user:...`; bans written before ids existed are keyed
/// by the bare address), JSON values.
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");
/// Kept publications by (channel, offset): `time_ms` (8 bytes, big-endian), a byte 1 and the
/// publisher's 16-byte id or a byte 0, then the JSON data.
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
/// Each channel's epoch and latest offset, JSON `{"epoch","offset"}`.
const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");

/// redb's page cache (its default is 1 GiB). The store is read whole once, at start; after
/// that it is written, and history appends touch few pages.
const CACHE_BYTES: usize = 16 << 20;

pub struct RedbStore {
    path: PathBuf,
    /// The open database, and how many times it was opened. `None` after a reopening that
    /// failed, until the next one succeeds.
    db: RwLock<(u64, Option<Database>)>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed. The whole file
    /// is checked first, so a store damaged outside Herald (a disk fault, a bad copy, an edit)
    /// is refused with one error that names the file and what to do, never read half-way.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join("herald.redb");
        // An empty file is what a crash right after creating it leaves, and redb starts a
        // new store in it; but it is also what a failed copy leaves, so it is said.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            tracing::warn!(
                file = %path.display(),
                "the store was an empty file (0 bytes): starting with an empty store (if it held channels and bans, stop and restore it from a backup)"
            );
        }
        match open_db(&path) {
            Ok(db) => Ok(RedbStore {
                path,
                db: RwLock::new((1, Some(db))),
            }),
            Err(e) => Err(StoreError(open_error(&path, e))),
        }
    }

    /// Runs `op` on the database. After an I/O error, redb answers `PreviousIo` until the
    /// database is opened again: it is reopened then (once, whichever call sees it first)
    /// and `op` tried again.
    fn with_db<T>(
        &self,
        op: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let (generation, first) = {
            let db = self.db.read();
            let result = match &db.1 {
                Some(open) => op(open),
                None => Err(redb::Error::PreviousIo),
            };
            (db.0, result)
        };
        match first {
            Err(redb::Error::PreviousIo) => {
                self.reopen(generation)?;
                let db = self.db.read();
                match &db.1 {
                    Some(open) => op(open).map_err(err),
                    None => Err(StoreError("the store is not open".into())),
                }
            }
            other => other.map_err(err),
        }
    }

    /// Opens the database again, unless another call did since `generation`.
    fn reopen(&self, generation: u64) -> Result<(), StoreError> {
        let mut db = self.db.write();
        if db.0 != generation && db.1.is_some() {
            return Ok(());
        }
        // Closed first: the file is locked while open.
        db.1 = None;
        db.0 += 1;
        match open_db(&self.path) {
            Ok(open) => {
                tracing::warn!(file = %self.path.display(), "store reopened after an I/O error");
                db.1 = Some(open);
                Ok(())
            }
            Err(e) => Err(StoreError(format!(
                "the store {} failed on an I/O error (a full disk?) and cannot be opened again yet: {e}",
                self.path.display()
            ))),
        }
    }
}

/// Opens (or creates) the database at `path`, checked whole, with every table.
fn open_db(path: &Path) -> Result<Database, redb::Error> {
    // The engine promises errors, not panics, for damage it finds while checking; a panic is
    // still caught here, in case a check misses something.
    let opened = std::panic::catch_unwind(|| -> Result<Database, redb::Error> {
        let db = Builder::new()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(CHANNELS)?;
        txn.open_table(BANS)?;
        txn.open_table(HISTORY)?;
        txn.open_table(POSITIONS)?;
        txn.commit()?;
        Ok(db)
    });
    opened.unwrap_or_else(|_| {
        Err(redb::Error::Corrupted(
            "the database engine failed reading it".into(),
        ))
    })
}

/// The message for a store that cannot be opened: what happened and what to do.
fn open_error(path: &Path, e: redb::Error) -> String {
    let file = path.display();
    match e {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => format!(
            "the store {file} is in use by another process: stop it, or give this server a data_dir of its own"
        ),
        redb::Error::Io(io)
            if !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            format!("cannot open the store {file}: {io}")
        }
        other => format!(
            "the store {file} is damaged and cannot be used ({other}). Restore it from a backup, or move it aside (rename it) to start with an empty store: the persistent channels, their tokens and the bans it held are then lost"
        ),
    }
}

impl RedbStore {
    fn load<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(table)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                match serde_json::from_slice::<T>(value.value()) {
                    Ok(rec) => out.push(rec),
                    Err(e) => {
                        tracing::error!(key = key.value(), error = %e, "unreadable record skipped")
                    }
                }
            }
            Ok(out)
        })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(value).map_err(err)?;
        self.with_db(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(table)?;
                table.insert(key, value.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let removed = {
                let mut table = txn.open_table(table)?;
                table.remove(key)?.is_some()
            };
            txn.commit()?;
            Ok(removed)
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPosition {
    epoch: String,
    offset: u64,
}

/// `time_ms` (8 bytes), the publisher (a byte 1 and 16 bytes, or a byte 0), the recipients
/// of a publication for some subscribers only (a 2-byte count, 0xFFFF for everyone, then 16
/// bytes each), then the JSON data.
fn encode_entry(e: &Entry) -> Vec<u8> {
    let to = e.to.as_deref().unwrap_or_default();
    let mut v = Vec::with_capacity(27 + 16 * to.len() + e.data.len());
    v.extend_from_slice(&e.time_ms.to_be_bytes());
    match e.from {
        Some(id) => {
            v.push(1);
            v.extend_from_slice(id.as_bytes());
        }
        None => v.push(0),
    }
    match &e.to {
        Some(to) => {
            v.extend_from_slice(&(to.len().min(0xFFFE) as u16).to_be_bytes());
            for id in to.iter().take(0xFFFE) {
                v.extend_from_slice(id.as_bytes());
            }
        }
        None => v.extend_from_slice(&0xFFFFu16.to_be_bytes()),
    }
    v.extend_from_slice(&e.data);
    v
}

fn decode_entry(offset: u64, v: &[u8]) -> Option<Entry> {
    let time_ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let (from, rest) = match v.get(8)? {
        0 => (None, v.get(9..)?),
        1 => (
            Some(ClientId::from_bytes(v.get(9..25)?.try_into().ok()?)),
            v.get(25..)?,
        ),
        _ => return None,
    };
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let (to, data) = if count == 0xFFFF {
        (None, rest.get(2..)?)
    } else {
        let n = usize::from(count);
        let ids = rest.get(2..2 + 16 * n)?;
        let to = ids
            .chunks_exact(16)
            .map(|c| c.try_into().ok().map(ClientId::from_bytes))
            .collect::<Option<Vec<_>>>()?;
        (Some(to), rest.get(2 + 16 * n..)?)
    };
    // The data was valid JSON when written; check again rather than trust the disk.
    serde_json::from_slice::<serde::de::IgnoredAny>(data).ok()?;
    Some(Entry {
        offset,
        from,
        data: bytes::Bytes::copy_from_slice(data),
        time_ms,
        to,
    })
}

impl RedbStore {
    fn history_batch(db: &Database, ops: &[HistoryOp], sync: bool) -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        if !sync {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        }
        {
            let mut history = txn.open_table(HISTORY)?;
            let mut positions = txn.open_table(POSITIONS)?;
            // The last position of each channel in the batch (None: forgotten).
            let mut last: HashMap<&str, Option<(Arc<str>, u64)>> = HashMap::new();
            for op in ops {
                match op {
                    HistoryOp::Append {
                        channel,
                        epoch,
                        entry,
                        keep_from,
                    } => {
                        let name = channel.as_str();
                        history.insert((name, entry.offset), encode_entry(entry).as_slice())?;
                        history.retain_in((name, 0u64)..(name, *keep_from), |_, _| false)?;
                        last.insert(name, Some((epoch.clone(), entry.offset)));
                    }
                    HistoryOp::Position {
                        channel,
                        epoch,
                        offset,
                    } => {
                        last.insert(channel.as_str(), Some((epoch.clone(), *offset)));
                    }
                    HistoryOp::Trim { channel, keep_from } => {
                        let name = channel.as_str();
                        history.retain_in((name, 0u64)..(name, *keep_from), |_, _| false)?;
                    }
                    HistoryOp::Forget { channel } => {
                        let name = channel.as_str();
                        history.retain_in((name, 0u64)..=(name, u64::MAX), |_, _| false)?;
                        last.insert(name, None);
                    }
                }
            }
            for (name, position) in last {
                match position {
                    Some((epoch, offset)) => {
                        let json = serde_json::to_vec(&StoredPosition {
                            epoch: epoch.to_string(),
                            offset,
                        })
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                        positions.insert(name, json.as_slice())?;
                    }
                    None => {
                        positions.remove(name)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn history_all(db: &Database) -> Result<Vec<StoredHistory>, redb::Error> {
        let txn = db.begin_read()?;
        let positions = txn.open_table(POSITIONS)?;
        let history = txn.open_table(HISTORY)?;
        let mut out = Vec::new();
        for row in positions.iter()? {
            let (name, value) = row?;
            let Ok(position) = serde_json::from_slice::<StoredPosition>(value.value()) else {
                tracing::error!(
                    channel = name.value(),
                    "unreadable channel position skipped"
                );
                continue;
            };
            let name = name.value().to_string();
            let mut entries = Vec::new();
            for row in history.range((name.as_str(), 0u64)..=(name.as_str(), u64::MAX))? {
                let (key, value) = row?;
                let offset = key.value().1;
                match decode_entry(offset, value.value()) {
                    Some(e) => entries.push(e),
                    None => {
                        tracing::error!(channel = %name, offset, "unreadable kept publication skipped")
                    }
                }
            }
            out.push(StoredHistory {
                channel: name,
                epoch: position.epoch,
                offset: position.offset,
                entries,
            });
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn load_history(&self) -> Result<Vec<StoredHistory>, StoreError> {
        self.with_db(Self::history_all)
    }

    fn write_history(&self, ops: &[HistoryOp], sync: bool) -> Result<(), StoreError> {
        self.with_db(|db| Self::history_batch(db, ops, sync))
    }

    fn load_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        self.load(CHANNELS)
    }

    fn put_channel(&self, rec: &ChannelRecord) -> Result<(), StoreError> {
        self.put(CHANNELS, &rec.name, rec)
    }

    fn delete_channel(&self, name: &str) -> Result<bool, StoreError> {
        self.delete(CHANNELS, name)
    }

    fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        self.load(BANS)
    }

    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        self.put(BANS, &ban.id(), ban)
    }

    fn delete_ban(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.delete(BANS, id)?;
        // An address ban stored under a legacy key: the bare address, for IPv4 also its
        // IPv4-mapped IPv6 form (how dual-stack listeners saw it).
        let mut legacy = false;
        if let Some(addr) = id.strip_prefix("ip:") {
            legacy |= self.delete(BANS, addr)?;
            if let Ok(std::net::IpAddr::V4(v4)) = addr.parse::<std::net::IpAddr>() {
                legacy |= self.delete(BANS, &v4.to_ipv6_mapped().to_string())?;
            }
        }
        Ok(removed || legacy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::ChannelOptions;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = ChannelRecord {
            name: "orders".into(),
            options: ChannelOptions {
                public: false,
                client_publish: true,
                max_subscribers: Some(3),
                ..Default::default()
            },
            token_hash: "ab".repeat(32),
            created_at_ms: 1,
        };
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store.put_channel(&rec).unwrap();
            store
                .put_channel(&ChannelRecord {
                    name: "tmp".into(),
                    ..rec.clone()
                })
                .unwrap();
            assert!(store.delete_channel("tmp").unwrap());
            assert!(!store.delete_channel("tmp").unwrap());
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.load_channels().unwrap(), vec![rec]);
    }
}
