//! Bans and API channels shared by every node: a [`Store`] that keeps them in Redis as well
//! as in the node's own store, and tells the other nodes of each change.
//!
//! Redis holds the cluster's copy (hashes `<prefix>:bans` and `<prefix>:channels`, JSON
//! records); a change is written there and announced on `<prefix>:ctl` in one transaction
//! (in a Redis Cluster, where a transaction cannot publish across the cluster, the write and
//! then the announcement), then every other node applies it ([`super::control`]). A node
//! starting loads Redis's copy (records only its own store has, from before it joined, are
//! added to Redis). History goes to the node's own store only. Calls block (the hub runs them
//! on the blocking pool), so this uses a plain Redis connection with the broker's time limit,
//! opened as the topology says ([`super::redis::topology`]): a connection that failed is
//! dropped and the call tried once more on a new one (with Sentinel, to the master the
//! sentinels name then); the writes are idempotent.

use std::sync::Arc;

use herald_core::Store;
use herald_core::bans::BanRecord;
use herald_core::history::HistoryOp;
use herald_core::store::{ChannelRecord, StoreError, StoredHistory};
use parking_lot::Mutex;

use super::control::{Control, ControlRequest};
use super::redis::topology::{Blocking, Keys, Topology};

pub struct SharedStore {
    local: Arc<dyn Store>,
    topology: Arc<Topology>,
    conn: Mutex<Option<Blocking>>,
    keys: Keys,
    /// This node's name, for the notices' `from`.
    node: String,
}

impl SharedStore {
    pub fn new(
        local: Arc<dyn Store>,
        topology: Arc<Topology>,
        keys: Keys,
        node: &str,
    ) -> SharedStore {
        SharedStore {
            local,
            topology,
            conn: Mutex::new(None),
            keys,
            node: node.to_string(),
        }
    }

    fn key(&self, what: &str) -> String {
        self.keys.shared(what)
    }

    /// Runs `f` on the connection, opening it first if needed. A connection on which `f`
    /// failed is dropped, and where the failure says the server went away (or became a
    /// replica) `f` runs once more on a new connection.
    fn with<T>(
        &self,
        f: impl Fn(&mut dyn redis::ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => {
                    let opened = self
                        .topology
                        .blocking()
                        .map_err(|e| StoreError(format!("Redis: {e}")))?;
                    slot.insert(opened)
                }
            };
            match f(conn.conn()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    *slot = None;
                    if attempt == 1 && super::redis::topology::master_gone(&e) {
                        continue;
                    }
                    return Err(StoreError(format!("Redis: {e}")));
                }
            }
        }
    }

    /// Writes (`Some`) or deletes (`None`) one record and announces `notice`, atomically.
    fn change(
        &self,
        hash: &str,
        field: &str,
        json: Option<String>,
        notice: Control,
    ) -> Result<(), StoreError> {
        let notice = serde_json::to_string(&ControlRequest {
            id: 0,
            from: self.node.clone(),
            control: notice,
        })
        .map_err(|e| StoreError(e.to_string()))?;
        let write = match &json {
            Some(json) => redis::cmd("HSET")
                .arg(self.key(hash))
                .arg(field)
                .arg(json)
                .clone(),
            None => redis::cmd("HDEL").arg(self.key(hash)).arg(field).clone(),
        };
        let mut announce = redis::cmd("PUBLISH");
        announce.arg(self.keys.control()).arg(notice);
        if self.keys.sharded() {
            // A Redis Cluster: the write (to the shard owning the hash), then the notice (one
            // command at a time: the blocking cluster connection does not pipeline).
            self.with(|c| write.query::<()>(c))?;
            self.with(|c| announce.query::<()>(c))
        } else {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .add_command(write)
                .ignore()
                .add_command(announce)
                .ignore();
            self.with(|c| pipe.query::<()>(c))
        }
    }

    /// Redis's records of `hash`, merged with the local ones it lacks (which are added).
    fn load<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        hash: &str,
        local: Vec<T>,
        key: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, StoreError> {
        let all: Vec<(String, String)> =
            self.with(|c| redis::cmd("HGETALL").arg(self.key(hash)).query(c))?;
        let mut out = Vec::new();
        for (field, json) in &all {
            match serde_json::from_str::<T>(json) {
                Ok(rec) => out.push(rec),
                Err(e) => {
                    tracing::warn!(field, error = %e, "cluster: a bad shared {hash} record was skipped")
                }
            }
        }
        for rec in local {
            let k = key(&rec);
            if all.iter().any(|(field, _)| *field == k) {
                continue;
            }
            let json = serde_json::to_string(&rec).map_err(|e| StoreError(e.to_string()))?;
            self.with(|c| {
                redis::cmd("HSETNX")
                    .arg(self.key(hash))
                    .arg(&k)
                    .arg(&json)
                    .query::<()>(c)
            })?;
            out.push(rec);
        }
        Ok(out)
    }
}

impl Store for SharedStore {
    fn load_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let local = self.local.load_channels()?;
        self.load("channels", local, |r| r.name.clone())
    }

    fn put_channel(&self, rec: &ChannelRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError(e.to_string()))?;
        let notice = Control::ChannelPut {
            channel: rec.clone(),
        };
        self.change("channels", &rec.name, Some(json), notice)?;
        self.local.put_channel(rec)
    }

    fn delete_channel(&self, name: &str) -> Result<bool, StoreError> {
        let notice = Control::ChannelDeleted {
            name: name.to_string(),
        };
        self.change("channels", name, None, notice)?;
        self.local.delete_channel(name)
    }

    fn load_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        let local = self.local.load_bans()?;
        self.load("bans", local, BanRecord::id)
    }

    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(ban).map_err(|e| StoreError(e.to_string()))?;
        let notice = Control::Banned { ban: ban.clone() };
        self.change("bans", &ban.id(), Some(json), notice)?;
        self.local.put_ban(ban)
    }

    fn delete_ban(&self, id: &str) -> Result<bool, StoreError> {
        let notice = Control::Unbanned { id: id.to_string() };
        self.change("bans", id, None, notice)?;
        self.local.delete_ban(id)
    }

    fn load_history(&self) -> Result<Vec<StoredHistory>, StoreError> {
        self.local.load_history()
    }

    fn write_history(&self, ops: &[HistoryOp], sync: bool) -> Result<(), StoreError> {
        self.local.write_history(ops, sync)
    }
}
