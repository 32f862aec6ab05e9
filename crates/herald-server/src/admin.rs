//! What the HTTP API and admin connections share: the bodies of management requests and how
//! each becomes a hub call. `POST /api/v1/bans` and `{"op":"ban"}` parse the same struct and
//! reach the same [`Hub::ban`](herald_core::Hub::ban), so their rules and error codes match.

use herald_core::bans::BanTarget;
use herald_core::client::{Disconnect, DisconnectReason, close_code};
use herald_core::hub::{BanRequest, BanSubject, MAX_REASON_LEN};
use herald_core::{ChannelName, ChannelOptions, ClientId, HeraldError, SubscribePolicy};
use serde::Deserialize;
use utoipa::ToSchema;

/// Longest close reason sent in a WebSocket close frame (the frame allows 123 bytes).
pub const MAX_CLOSE_REASON: usize = 120;

/// Creating a channel; options left out take its namespace's (`[namespaces.<ns>]` for a
/// name `<ns>:...`, else the `[channels]` defaults).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelBody {
    /// The channel name (`channel` is accepted too over WebSocket).
    #[serde(alias = "channel")]
    pub name: String,
    /// `true` = `subscribe: "public"`, `false` = `subscribe: "private"`.
    pub public: Option<bool>,
    /// Who may subscribe: `public`, `private` (token holders and admins) or `admin`.
    pub subscribe: Option<SubscribePolicy>,
    pub client_publish: Option<bool>,
    /// 0 = unlimited.
    pub max_subscribers: Option<u32>,
    /// Whether a publishing client receives its own publication.
    pub echo: Option<bool>,
    /// Largest publication to this channel, in bytes; 0 = the global limit.
    pub max_payload_bytes: Option<u32>,
    /// Publications kept for recovery and history (0: none; at most 10000).
    pub history_size: Option<u32>,
    /// Seconds each kept publication lives (default 300, at most a week).
    pub history_ttl_secs: Option<u32>,
    /// Subscribers may ask who is subscribed.
    pub presence: Option<bool>,
    /// Subscribers are told when others join and leave.
    pub join_leave: Option<bool>,
}

impl CreateChannelBody {
    pub fn name(&self) -> Result<ChannelName, HeraldError> {
        ChannelName::parse(&self.name)
    }

    /// The options the request sets, over `defaults` (the options of the name's namespace,
    /// [`HubConfig::defaults_for`](herald_core::HubConfig::defaults_for)).
    pub fn options(&self, defaults: &ChannelOptions) -> Result<ChannelOptions, HeraldError> {
        let zero_is_none = |v: Option<u32>, default: Option<u32>| match v {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        let mut options = ChannelOptions {
            client_publish: self.client_publish.unwrap_or(defaults.client_publish),
            // 0 means unlimited, as in the configuration file.
            max_subscribers: zero_is_none(self.max_subscribers, defaults.max_subscribers),
            echo: self.echo.unwrap_or(defaults.echo),
            max_payload_bytes: zero_is_none(self.max_payload_bytes, defaults.max_payload_bytes),
            history_size: self.history_size.unwrap_or(defaults.history_size),
            history_ttl_secs: self.history_ttl_secs.unwrap_or(defaults.history_ttl_secs),
            presence: self.presence.unwrap_or(defaults.presence),
            join_leave: self.join_leave.unwrap_or(defaults.join_leave),
            ..defaults.clone()
        };
        options
            .validate_history()
            .map_err(HeraldError::bad_request)?;
        let from_public = self.public.map(|public| {
            if public {
                SubscribePolicy::Public
            } else {
                SubscribePolicy::Private
            }
        });
        match (self.subscribe, from_public) {
            (Some(a), Some(b)) if a != b => {
                return Err(HeraldError::bad_request(format!(
                    "\"public\": {} contradicts \"subscribe\": {:?}",
                    self.public.unwrap_or_default(),
                    a.as_str()
                )));
            }
            (Some(policy), _) | (None, Some(policy)) => options.set_subscribe(policy),
            (None, None) => {}
        }
        Ok(options)
    }
}

/// How to disconnect a client or user.
#[derive(Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    /// Shown to the client in the close frame (at most 120 bytes).
    pub reason: Option<String>,
    /// `false`: close with 4000 (do not reconnect) instead of 4200 (may reconnect).
    pub reconnect: Option<bool>,
}

impl KickBody {
    pub fn disconnect(&self) -> Result<Disconnect, HeraldError> {
        let code = if self.reconnect == Some(false) {
            close_code::KICKED_NO_RECONNECT
        } else {
            close_code::KICKED
        };
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| "disconnected by an operator".into());
        if reason.len() > MAX_CLOSE_REASON {
            return Err(HeraldError::bad_request(format!(
                "reason is longer than {MAX_CLOSE_REASON} bytes"
            )));
        }
        Ok(Disconnect::new(DisconnectReason::Kicked, code, reason))
    }
}

/// A ban: exactly one of `client`, `user`, `ip`, `cidr`.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanBody {
    /// A connected client: bans its user if it has one, else its address.
    pub client: Option<String>,
    pub user: Option<String>,
    pub ip: Option<String>,
    /// An address range, e.g. `10.0.0.0/8`.
    pub cidr: Option<String>,
    /// Seconds until the ban expires; absent = until lifted.
    pub duration_secs: Option<u64>,
    /// Kept with the ban and shown to refused clients.
    pub reason: Option<String>,
}

impl BanBody {
    pub fn request(&self) -> Result<BanRequest, HeraldError> {
        let given = [&self.client, &self.user, &self.ip, &self.cidr]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given != 1 {
            return Err(HeraldError::bad_request(
                "a ban names exactly one of \"client\", \"user\", \"ip\" or \"cidr\"",
            ));
        }
        let target = if let Some(id) = &self.client {
            BanSubject::Client(ClientId::parse(id)?)
        } else if let Some(user) = &self.user {
            BanSubject::Target(BanTarget::user(user)?)
        } else if let Some(ip) = &self.ip {
            BanSubject::Target(BanTarget::ip(ip)?)
        } else {
            BanSubject::Target(BanTarget::cidr(self.cidr.as_deref().unwrap_or_default())?)
        };
        if self.duration_secs == Some(0) {
            return Err(HeraldError::bad_request(
                "duration_secs must be at least 1 (leave it out for a ban until lifted)",
            ));
        }
        let reason = self.reason.clone().unwrap_or_default();
        if reason.len() > MAX_REASON_LEN {
            return Err(HeraldError::bad_request(format!(
                "reason is longer than {MAX_REASON_LEN} bytes"
            )));
        }
        Ok(BanRequest {
            target,
            duration_secs: self.duration_secs,
            reason,
        })
    }
}
