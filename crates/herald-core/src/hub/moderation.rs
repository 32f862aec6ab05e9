//! Moderation: listing and inspecting clients, kicking them, bans by address, range or user,
//! and the operations on all connections of a user.

use super::*;

/// Longest ban or kick reason accepted.
pub const MAX_REASON_LEN: usize = 512;

/// Who to ban.
#[derive(Clone, Debug)]
pub enum BanSubject {
    /// A connected client: its user if it has one, else its address.
    Client(ClientId),
    Target(BanTarget),
}

#[derive(Clone, Debug)]
pub struct BanRequest {
    pub target: BanSubject,
    /// `None`: until lifted.
    pub duration_secs: Option<u64>,
    pub reason: String,
}

/// A ban that was put in force, and how many connections it closed.
#[derive(Clone, Debug)]
pub struct Banned {
    pub ban: BanRecord,
    pub disconnected: u64,
}

/// Parses a ban id: `ip:<address>`, `cidr:<range>`, `user:<user id>`.
pub fn parse_ban_id(id: &str) -> Result<BanTarget, HeraldError> {
    match id.split_once(':') {
        Some(("ip", rest)) => BanTarget::ip(rest),
        Some(("cidr", rest)) => BanTarget::cidr(rest),
        Some(("user", rest)) => BanTarget::user(rest),
        _ => Err(HeraldError::bad_request(
            "a ban id looks like ip:<address>, cidr:<range> or user:<user id>",
        )),
    }
}

/// A client for listings.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClientSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: ClientId,
    pub dialect: &'static str,
    pub remote: Option<String>,
    pub connected_at_ms: u64,
    pub admin: bool,
    /// The user it authenticated as, if any.
    pub user: Option<String>,
    pub subscriptions: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub pending_bytes: usize,
    /// Present in single-client views.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Vec<ChannelName>>,
}

impl Hub {
    pub fn client_summary(&self, client: &ClientHandle, with_channels: bool) -> ClientSummary {
        use std::sync::atomic::Ordering::Relaxed;
        let subs = client.subscriptions();
        ClientSummary {
            id: client.id,
            dialect: client.info.dialect,
            remote: client.info.remote.map(|a| a.to_string()),
            connected_at_ms: client.info.connected_at_ms,
            admin: client.is_admin(),
            user: client.user().map(|u| u.to_string()),
            subscriptions: subs.len(),
            messages_in: client.frames_in.load(Relaxed),
            messages_out: client.messages_out.load(Relaxed),
            pending_bytes: client.outbox.pending_bytes(),
            channels: with_channels.then_some(subs),
        }
    }

    /// Every connected client, oldest first (admin only).
    pub fn clients(&self, actor: &Actor) -> Result<Vec<ClientSummary>, HeraldError> {
        actor.require_admin("listing clients")?;
        let mut all: Vec<_> = self
            .registry
            .all_clients()
            .iter()
            .map(|c| self.client_summary(c, false))
            .collect();
        all.sort_by_key(|c| (c.connected_at_ms, c.id));
        Ok(all)
    }

    /// Looks a client up for an admin operation.
    pub fn client(&self, actor: &Actor, id: ClientId) -> Result<Arc<ClientHandle>, HeraldError> {
        actor.require_admin("managing clients")?;
        self.registry.client(id).ok_or_else(|| client_not_found(id))
    }

    /// Disconnects a client with a close code and reason it will see.
    pub fn kick(
        &self,
        actor: &Actor,
        id: ClientId,
        disconnect: Disconnect,
    ) -> Result<(), HeraldError> {
        let client = self.client(actor, id)?;
        if client.outbox.close(disconnect) {
            Stats::add(&self.stats.kicked, 1);
        }
        Ok(())
    }

    // ---- bans -----------------------------------------------------------------------------

    /// Bans `request.target` (kept in the store) and closes every connection it covers with
    /// 4003 (do not reconnect). A ban of a client names that client's user if it has one,
    /// else the address it connected from.
    pub async fn ban(&self, actor: &Actor, request: BanRequest) -> Result<Banned, HeraldError> {
        actor.require_admin("banning")?;
        if request.reason.len() > MAX_REASON_LEN {
            return Err(HeraldError::bad_request(format!(
                "a reason may be at most {MAX_REASON_LEN} bytes"
            )));
        }
        let target = match request.target {
            BanSubject::Client(id) => {
                let client = self.client(actor, id)?;
                match (client.user(), client.info.remote) {
                    (Some(user), _) => BanTarget::User(user.to_string()),
                    (None, Some(remote)) => BanTarget::Ip(remote.ip().to_canonical()),
                    (None, None) => {
                        return Err(HeraldError::bad_request(
                            "this client has neither a user id nor an address to ban",
                        ));
                    }
                }
            }
            BanSubject::Target(BanTarget::Ip(ip)) => BanTarget::Ip(ip.to_canonical()),
            BanSubject::Target(t) => t,
        };
        let target = target.canonical();
        let now = now_ms();
        self.bans.check_room(&target, now)?;
        let ban = BanRecord {
            target,
            reason: request.reason,
            created_at_ms: now,
            expires_at_ms: request
                .duration_secs
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
        };
        let store = self.store.clone();
        let record = ban.clone();
        run_blocking(move || store.put_ban(&record)).await?;
        let disconnected = self.apply_ban(ban.clone());
        Ok(Banned { disconnected, ban })
    }

    /// Puts a ban in force on this node without storing it (the store already has it: made
    /// here by [`Hub::ban`], or on another node of a cluster): closes every local connection
    /// it covers with 4003 and emits `client.banned`. Returns how many it closed.
    pub fn apply_ban(&self, ban: BanRecord) -> u64 {
        self.bans.insert(ban.clone());
        let message = ban.message();
        let close = Disconnect::new(DisconnectReason::Banned, close_code::BANNED, message);
        let mut closed = Vec::new();
        for other in self.registry.all_clients() {
            let ip = other.info.remote.map(|a| a.ip());
            // Admin connections hold the admin secret: an address ban does not lock them out.
            let exempt = other.is_admin() && !matches!(ban.target, BanTarget::User(_));
            if !exempt
                && BanList::covers(&ban, ip, other.user().map(|u| u.as_ref()))
                && other.outbox.close(close.clone())
            {
                Stats::add(&self.stats.kicked, 1);
                closed.push(other.id);
            }
        }
        self.registry.emit(EventType::ClientBanned, |f| {
            if let Value::Object(fields) = serde_json::to_value(&ban).unwrap_or_default() {
                f.extend(fields);
            }
            // The ban's id as "ban": "id" is the request id in native frames.
            f.insert("ban".into(), ban.id().into());
            let ids = closed.iter().map(|id| Value::from(id.to_string()));
            f.insert("clients".into(), Value::Array(ids.collect()));
        });
        closed.len() as u64
    }

    /// Lifts a ban on this node without touching the store (lifted on another node of a
    /// cluster). Unknown ids are ignored.
    pub fn forget_ban(&self, id: &str) {
        if let Ok(target) = parse_ban_id(id) {
            self.bans.remove(&target);
        }
    }

    /// Bans the address or user of client `id` (SubSocket's `ban <uuid> [seconds]`).
    pub async fn ban_client(
        &self,
        actor: &Actor,
        id: ClientId,
        duration_secs: Option<u64>,
        reason: &str,
    ) -> Result<BanRecord, HeraldError> {
        let request = BanRequest {
            target: BanSubject::Client(id),
            duration_secs,
            reason: reason.to_string(),
        };
        Ok(self.ban(actor, request).await?.ban)
    }

    /// Lifts the ban with this id (`ip:...`, `cidr:...`, `user:...`).
    pub async fn unban(&self, actor: &Actor, id: &str) -> Result<BanRecord, HeraldError> {
        actor.require_admin("lifting bans")?;
        let target = parse_ban_id(id)?;
        let Some(ban) = self.bans.remove(&target) else {
            return Err(HeraldError::new(
                ErrorCode::NotFound,
                format!("no ban {:?} is in force", crate::ids::truncate(id, 300)),
            ));
        };
        let store = self.store.clone();
        let key = ban.id();
        if let Err(e) = run_blocking(move || store.delete_ban(&key)).await {
            self.bans.insert(ban);
            return Err(e);
        }
        Ok(ban)
    }

    /// The bans in force, oldest first (admin only).
    pub fn bans(&self, actor: &Actor) -> Result<Vec<BanRecord>, HeraldError> {
        actor.require_admin("listing bans")?;
        Ok(self.bans.list(now_ms()))
    }

    /// Forgets expired bans, in memory and in the store (the server's housekeeping calls it).
    pub async fn prune_bans(&self) {
        let expired = self.bans.prune(now_ms());
        if expired.is_empty() {
            return;
        }
        let store = self.store.clone();
        let ids: Vec<String> = expired.iter().map(|b| b.id()).collect();
        let result = run_blocking(move || {
            for id in &ids {
                store.delete_ban(id)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e.message, "could not forget expired bans");
        }
    }

    /// The ban that refuses a connection from `ip` now, if any.
    pub fn banned(&self, ip: std::net::IpAddr) -> Option<BanRecord> {
        self.bans.check_ip(ip, now_ms())
    }

    /// Changes whenever a ban is put in force (see [`BanList::generation`]).
    pub fn ban_generation(&self) -> u64 {
        self.bans.generation()
    }

    /// The ban that refuses connections of `user` now, if any.
    pub fn banned_user(&self, user: &str) -> Option<BanRecord> {
        self.bans.check_user(user, now_ms())
    }

    /// Disconnects every connection of `user` with `disconnect`; returns how many.
    pub fn kick_user(
        &self,
        actor: &Actor,
        user: &str,
        disconnect: Disconnect,
    ) -> Result<u64, HeraldError> {
        actor.require_admin("managing clients")?;
        let mut kicked = 0;
        for client in self.user_clients(user) {
            if client.outbox.close(disconnect.clone()) {
                kicked += 1;
            }
        }
        Stats::add(&self.stats.kicked, kicked);
        Ok(kicked)
    }

    /// Sends `data` directly to every connection of `user`; returns how many got it.
    pub fn send_to_user(&self, actor: &Actor, user: &str, data: &[u8]) -> Result<u64, HeraldError> {
        actor.require_admin("messaging users")?;
        self.check_payload(data)?;
        let mut sent = 0;
        for client in self.user_clients(user) {
            if self
                .registry
                .push_or_close(&client, client.format.direct(None, data))
            {
                sent += 1;
            }
        }
        Stats::add(&self.stats.direct_messages, sent);
        Ok(sent)
    }

    /// The connections of `user`. A scan: admin operations are rare next to the hot path, and
    /// an index would cost every connection memory.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        let mut found = self.registry.all_clients();
        found.retain(|c| c.user().is_some_and(|u| **u == *user));
        found
    }
}
