//! Bans: who may not connect. Today a ban names an IP address (what SubSocket's
//! `ban <uuid> [seconds]` means: the address that client came from), with an optional expiry
//! and a reason. Bans are kept in the store, so they survive a restart; expired ones are
//! ignored and pruned. (Bans by user id and CIDR come with the admin-clients work.)

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// One ban, as stored and listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The banned address (the key).
    pub ip: IpAddr,
    pub reason: String,
    pub created_at_ms: u64,
    /// `None`: until lifted.
    pub expires_at_ms: Option<u64>,
}

impl BanRecord {
    pub fn active_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// The bans in force, looked up at every handshake.
#[derive(Default)]
pub struct BanList {
    by_ip: RwLock<HashMap<IpAddr, BanRecord>>,
}

impl BanList {
    pub fn insert(&self, ban: BanRecord) {
        self.by_ip.write().insert(ban.ip, ban);
    }

    pub fn remove(&self, ip: IpAddr) -> Option<BanRecord> {
        self.by_ip.write().remove(&ip)
    }

    /// The ban that refuses `ip` now, if any (expired bans are dropped on the way).
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Option<BanRecord> {
        let found = self.by_ip.read().get(&ip).cloned()?;
        if found.active_at(now_ms) {
            return Some(found);
        }
        self.by_ip.write().remove(&ip);
        None
    }

    pub fn list(&self, now_ms: u64) -> Vec<BanRecord> {
        let mut all: Vec<_> = self
            .by_ip
            .read()
            .values()
            .filter(|b| b.active_at(now_ms))
            .cloned()
            .collect();
        all.sort_by_key(|b| b.created_at_ms);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_honoured() {
        let list = BanList::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        list.insert(BanRecord {
            ip,
            reason: "r".into(),
            created_at_ms: 0,
            expires_at_ms: Some(100),
        });
        assert!(list.check(ip, 50).is_some());
        assert!(list.check(ip, 100).is_none());
        assert!(list.list(0).is_empty(), "pruned");
    }
}
