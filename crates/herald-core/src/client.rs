//! A connected client as the hub sees it: id, wire format, outbox, subscriptions and the
//! reasons a connection can end.
//!
//! Lock order (see docs/architecture.md): a client's `subscriptions` lock may be held while
//! taking a channel's state lock, which may be held while pushing to an outbox. Never the
//! other way round.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::channel::ChannelName;
pub use crate::disconnect::{Disconnect, DisconnectReason, close_code};
use crate::format::WireFormat;
use crate::ids::ClientId;
use crate::outbox::Outbox;

/// Facts about a connection fixed at connect time.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub remote: Option<SocketAddr>,
    /// Which protocol it speaks, e.g. `"native"`.
    pub dialect: &'static str,
    pub connected_at_ms: u64,
}

/// What a connection brings to [`Hub::connect_as`](crate::Hub::connect_as) beyond its
/// [`ClientInfo`]: used at connect, not kept in the (per-connection) handle.
#[derive(Clone, Debug, Default)]
pub struct ConnectExtras {
    /// The user it authenticated as at connect, if any (it may also authenticate later).
    pub user: Option<Arc<str>>,
    /// Request headers for the `client.connected` event (`events.headers` in config):
    /// lower-case name, value.
    pub headers: Vec<(String, String)>,
}

impl ClientInfo {
    pub fn new(remote: Option<SocketAddr>, dialect: &'static str) -> Self {
        ClientInfo {
            remote,
            dialect,
            connected_at_ms: now_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One connected client.
pub struct ClientHandle {
    pub id: ClientId,
    pub format: &'static dyn WireFormat,
    pub outbox: Outbox,
    pub info: ClientInfo,
    pub(crate) subscriptions: Mutex<Subscriptions>,
    last_activity_ms: AtomicU64,
    admin: AtomicBool,
    /// The user id, once known (set at most once: from the connection request or `auth`).
    user: OnceLock<Arc<str>>,
    /// Per-client bytes a dialect keeps for [`WireFormat::for_recipient`] (a leaf lock: taken
    /// under a channel's state lock during fan-out, never the other way round).
    pub format_state: Mutex<Bytes>,
    /// Frames (requests) received from the client.
    pub frames_in: AtomicU64,
    /// Deliveries queued to it.
    pub messages_out: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) channels: HashSet<ChannelName>,
    /// Set once the hub has started tearing the client down: no new subscriptions.
    pub(crate) closed: bool,
}

impl ClientHandle {
    pub fn new(format: &'static dyn WireFormat, info: ClientInfo, user: Option<Arc<str>>) -> Self {
        let user = match user {
            Some(u) => OnceLock::from(u),
            None => OnceLock::new(),
        };
        ClientHandle {
            id: ClientId::random(),
            user,
            format,
            outbox: Outbox::new(),
            last_activity_ms: AtomicU64::new(info.connected_at_ms),
            info,
            subscriptions: Mutex::new(Subscriptions::default()),
            admin: AtomicBool::new(false),
            format_state: Mutex::new(Bytes::new()),
            frames_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
        }
    }

    /// Records that the peer showed a sign of life (any frame, including pongs).
    pub fn touch(&self, now_ms: u64) {
        self.last_activity_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn is_admin(&self) -> bool {
        self.admin.load(Ordering::Relaxed)
    }

    pub fn set_admin(&self, admin: bool) {
        self.admin.store(admin, Ordering::Relaxed);
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.get()
    }

    /// Records the user the connection authenticated as. A connection has one user for its
    /// whole life: returns `false` (and changes nothing) if a different one was set before.
    pub fn set_user(&self, user: Arc<str>) -> bool {
        match self.user.get() {
            Some(existing) => **existing == *user,
            None => self.user.set(user.clone()).is_ok() || self.user.get() == Some(&user),
        }
    }

    /// The channels it is subscribed to, sorted.
    pub fn subscriptions(&self) -> Vec<ChannelName> {
        let mut v: Vec<_> = self.subscriptions.lock().channels.iter().cloned().collect();
        v.sort();
        v
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().channels.len()
    }
}
