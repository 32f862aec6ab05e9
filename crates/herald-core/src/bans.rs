//! Bans: who may not connect. A ban names an IP address, a CIDR range or a user id, with an
//! optional expiry and a reason. Bans are kept in the store, so they survive a restart;
//! expired ones are ignored and pruned on the way.
//!
//! Lookups happen at every handshake (address) and whenever a connection's user becomes
//! known, so they are hash lookups; ranges are few and scanned (at most [`MAX_RANGE_BANS`]).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, HeraldError};
use crate::ids::MAX_USER_LEN;

/// Most bans of all kinds kept at once.
pub const MAX_BANS: usize = 100_000;
/// Most CIDR range bans (each handshake scans them).
pub const MAX_RANGE_BANS: usize = 10_000;

/// What a ban applies to. Serialized as one field: `{"ip": ...}`, `{"cidr": ...}` or
/// `{"user": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanTarget {
    Ip(IpAddr),
    Cidr(IpNet),
    User(String),
}

impl BanTarget {
    /// Checks a user id for a ban.
    pub fn user(user: &str) -> Result<BanTarget, HeraldError> {
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(HeraldError::bad_request(format!(
                "a user id must be 1 to {MAX_USER_LEN} bytes"
            )));
        }
        Ok(BanTarget::User(user.to_string()))
    }

    /// Parses an address range like `10.0.0.0/8` (a single address is a `/32` or `/128`).
    pub fn cidr(text: &str) -> Result<BanTarget, HeraldError> {
        let net: IpNet = text.parse().map_err(|_| {
            HeraldError::bad_request(format!(
                "{:?} is not a CIDR range like 10.0.0.0/8",
                crate::ids::truncate(text, 64)
            ))
        })?;
        Ok(BanTarget::Cidr(net).canonical())
    }

    pub fn ip(text: &str) -> Result<BanTarget, HeraldError> {
        let ip: IpAddr = text.parse().map_err(|_| {
            HeraldError::bad_request(format!(
                "{:?} is not an IP address",
                crate::ids::truncate(text, 64)
            ))
        })?;
        Ok(BanTarget::Ip(ip).canonical())
    }

    /// The form lookups compare against: IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) and
    /// ranges inside `::ffff:0:0/96` become IPv4, as connection addresses do; ranges lose
    /// their host bits.
    pub fn canonical(self) -> BanTarget {
        match self {
            BanTarget::Ip(ip) => BanTarget::Ip(ip.to_canonical()),
            BanTarget::Cidr(IpNet::V6(net)) if net.prefix_len() >= 96 => {
                match net.addr().to_ipv4_mapped() {
                    Some(v4) => ipnet::Ipv4Net::new(v4, net.prefix_len() - 96)
                        .map(|n| BanTarget::Cidr(IpNet::V4(n.trunc())))
                        .unwrap_or(BanTarget::Cidr(IpNet::V6(net.trunc()))),
                    None => BanTarget::Cidr(IpNet::V6(net.trunc())),
                }
            }
            BanTarget::Cidr(net) => BanTarget::Cidr(net.trunc()),
            user => user,
        }
    }
}

/// A ban's id: `ip:<address>`, `cidr:<range>` or `user:<user id>`. It is also the store key.
impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Ip(ip) => write!(f, "ip:{ip}"),
            BanTarget::Cidr(net) => write!(f, "cidr:{net}"),
            BanTarget::User(user) => write!(f, "user:{user}"),
        }
    }
}

/// One ban, as stored and listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    #[serde(flatten)]
    pub target: BanTarget,
    pub reason: String,
    pub created_at_ms: u64,
    /// `None`: until lifted.
    pub expires_at_ms: Option<u64>,
}

impl BanRecord {
    pub fn active_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|e| now_ms < e)
    }

    pub fn id(&self) -> String {
        self.target.to_string()
    }

    /// What a refused or closed connection is told: `banned` or `banned: <reason>`.
    pub fn message(&self) -> String {
        if self.reason.is_empty() {
            "banned".into()
        } else {
            format!("banned: {}", self.reason)
        }
    }

    /// The listing form: the record with its `id`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("id".into(), self.id().into());
        }
        v
    }
}

/// The bans in force.
#[derive(Default)]
pub struct BanList {
    inner: RwLock<Bans>,
    /// Bumped by every insert: a handshake that checked the bans at generation `g` needs to
    /// look again once listed only if the generation moved since.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Bans {
    ips: HashMap<IpAddr, BanRecord>,
    users: HashMap<String, BanRecord>,
    ranges: Vec<BanRecord>,
}

impl Bans {
    fn len(&self) -> usize {
        self.ips.len() + self.users.len() + self.ranges.len()
    }
}

impl BanList {
    /// Checks that `target` can be added (limits); replacing an existing ban always can.
    /// Expired bans are pruned first, so they never count.
    pub fn check_room(&self, target: &BanTarget, now_ms: u64) -> Result<(), HeraldError> {
        self.prune(now_ms);
        let bans = self.inner.read();
        let exists = match target {
            BanTarget::Ip(ip) => bans.ips.contains_key(ip),
            BanTarget::User(u) => bans.users.contains_key(u),
            BanTarget::Cidr(_) => bans.ranges.iter().any(|b| &b.target == target),
        };
        if exists {
            return Ok(());
        }
        if bans.len() >= MAX_BANS {
            return Err(HeraldError::new(
                ErrorCode::TooMany,
                format!("at most {MAX_BANS} bans can be in force; lift some first"),
            ));
        }
        if matches!(target, BanTarget::Cidr(_)) && bans.ranges.len() >= MAX_RANGE_BANS {
            return Err(HeraldError::new(
                ErrorCode::TooMany,
                format!("at most {MAX_RANGE_BANS} range bans can be in force"),
            ));
        }
        Ok(())
    }

    /// Adds or replaces the ban of `ban.target` (in its canonical form).
    pub fn insert(&self, mut ban: BanRecord) {
        ban.target = ban.target.canonical();
        let mut bans = self.inner.write();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match &ban.target {
            BanTarget::Ip(ip) => {
                bans.ips.insert(*ip, ban);
            }
            BanTarget::User(u) => {
                bans.users.insert(u.clone(), ban);
            }
            BanTarget::Cidr(_) => {
                bans.ranges.retain(|b| b.target != ban.target);
                bans.ranges.push(ban);
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn remove(&self, target: &BanTarget) -> Option<BanRecord> {
        let mut bans = self.inner.write();
        match target {
            BanTarget::Ip(ip) => bans.ips.remove(ip),
            BanTarget::User(u) => bans.users.remove(u),
            BanTarget::Cidr(_) => {
                let i = bans.ranges.iter().position(|b| &b.target == target)?;
                Some(bans.ranges.swap_remove(i))
            }
        }
    }

    /// The ban that refuses `ip` now, if any: the address's own, else an active range
    /// holding it. Expired bans are ignored (and pruned by [`BanList::prune`]).
    pub fn check_ip(&self, ip: IpAddr, now_ms: u64) -> Option<BanRecord> {
        let ip = ip.to_canonical();
        let bans = self.inner.read();
        if let Some(ban) = bans.ips.get(&ip).filter(|b| b.active_at(now_ms)) {
            return Some(ban.clone());
        }
        bans.ranges
            .iter()
            .find(|b| {
                b.active_at(now_ms)
                    && matches!(&b.target, BanTarget::Cidr(net) if net.contains(&ip))
            })
            .cloned()
    }

    /// The ban that refuses `user` now, if any.
    pub fn check_user(&self, user: &str, now_ms: u64) -> Option<BanRecord> {
        let bans = self.inner.read();
        bans.users
            .get(user)
            .filter(|b| b.active_at(now_ms))
            .cloned()
    }

    /// Drops every ban that has expired; returns them (their store records may go too).
    pub fn prune(&self, now_ms: u64) -> Vec<BanRecord> {
        let mut bans = self.inner.write();
        let mut expired = Vec::new();
        bans.ips.retain(|_, b| {
            let keep = b.active_at(now_ms);
            if !keep {
                expired.push(b.clone());
            }
            keep
        });
        bans.users.retain(|_, b| {
            let keep = b.active_at(now_ms);
            if !keep {
                expired.push(b.clone());
            }
            keep
        });
        bans.ranges.retain(|b| {
            let keep = b.active_at(now_ms);
            if !keep {
                expired.push(b.clone());
            }
            keep
        });
        expired
    }

    pub fn list(&self, now_ms: u64) -> Vec<BanRecord> {
        self.prune(now_ms);
        let bans = self.inner.read();
        let mut all: Vec<_> = bans
            .ips
            .values()
            .chain(bans.users.values())
            .chain(bans.ranges.iter())
            .filter(|b| b.active_at(now_ms))
            .cloned()
            .collect();
        all.sort_by_key(|b| (b.created_at_ms, b.id()));
        all
    }

    /// Whether a connection from `ip` with `user` is covered by `ban`.
    pub fn covers(ban: &BanRecord, ip: Option<IpAddr>, user: Option<&str>) -> bool {
        match &ban.target {
            BanTarget::Ip(b) => ip.is_some_and(|ip| ip.to_canonical() == *b),
            BanTarget::Cidr(net) => ip.is_some_and(|ip| net.contains(&ip.to_canonical())),
            BanTarget::User(u) => user == Some(u.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: BanTarget, expires_at_ms: Option<u64>) -> BanRecord {
        BanRecord {
            target,
            reason: "r".into(),
            created_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn expiry_is_honoured() {
        let list = BanList::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        list.insert(ban(BanTarget::Ip(ip), Some(100)));
        assert!(list.check_ip(ip, 50).is_some());
        assert!(list.check_ip(ip, 100).is_none());
        assert_eq!(list.prune(100).len(), 1);
        assert!(list.list(0).is_empty(), "pruned");
    }

    #[test]
    fn ranges_users_and_mapped_addresses() {
        let list = BanList::default();
        list.insert(ban(BanTarget::cidr("10.1.0.0/16").unwrap(), None));
        list.insert(ban(BanTarget::user("mallory").unwrap(), None));
        assert!(list.check_ip("10.1.200.3".parse().unwrap(), 0).is_some());
        assert!(
            list.check_ip("::ffff:10.1.0.9".parse().unwrap(), 0)
                .is_some()
        );
        assert!(list.check_ip("10.2.0.1".parse().unwrap(), 0).is_none());
        assert!(list.check_user("mallory", 0).is_some());
        assert!(list.check_user("alice", 0).is_none());
        // An expired address ban inside a banned range still leaves the range in force, and so
        // does an expired range overlapping an active one.
        list.insert(ban(BanTarget::Ip("10.1.0.5".parse().unwrap()), Some(1)));
        assert!(list.check_ip("10.1.0.5".parse().unwrap(), 5).is_some());
        list.insert(ban(BanTarget::cidr("10.0.0.0/8").unwrap(), Some(1)));
        list.insert(ban(BanTarget::cidr("10.1.0.0/16").unwrap(), None));
        assert!(list.check_ip("10.1.9.9".parse().unwrap(), 5).is_some());
        assert_eq!(list.list(5).len(), 2);
        assert!(
            list.remove(&BanTarget::cidr("10.1.0.0/16").unwrap())
                .is_some()
        );
        assert!(list.check_ip("10.1.200.3".parse().unwrap(), 0).is_none());
    }

    #[test]
    fn records_keep_the_old_stored_form() {
        // Bans stored before ranges and users existed: {"ip": ...}.
        let old = r#"{"ip":"10.0.0.1","reason":"x","created_at_ms":1,"expires_at_ms":null}"#;
        let rec: BanRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.id(), "ip:10.0.0.1");
        let v = rec.to_json();
        assert_eq!(v["id"], "ip:10.0.0.1");
        assert_eq!(v["ip"], "10.0.0.1");
        let user: BanRecord = serde_json::from_value(
            serde_json::json!({"user":"u1","reason":"","created_at_ms":0,"expires_at_ms":5}),
        )
        .unwrap();
        assert_eq!(user.target, BanTarget::User("u1".into()));
        assert!(BanTarget::cidr("300.0.0.0/8").is_err());
        // IPv4-mapped forms are stored as IPv4, as connection addresses are compared.
        assert_eq!(
            BanTarget::ip("::ffff:10.0.0.1").unwrap().to_string(),
            "ip:10.0.0.1"
        );
        assert_eq!(
            BanTarget::cidr("::ffff:10.0.0.0/104").unwrap().to_string(),
            "cidr:10.0.0.0/8"
        );
        assert_eq!(
            BanTarget::cidr("10.1.2.3/16").unwrap().to_string(),
            "cidr:10.1.0.0/16"
        );
        assert!(BanTarget::user("").is_err());
    }
}
