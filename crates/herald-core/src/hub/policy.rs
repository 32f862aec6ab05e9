//! Policy: who may do what. Every hub operation names its [`Actor`] and asks here first, so
//! the HTTP API, WebSocket sessions and admin connections obey the same rules.

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::client::ClientHandle;
use crate::error::HeraldError;
use crate::hub::registry::ChannelView;
use crate::secret;

/// Who is asking.
#[derive(Clone)]
pub enum Actor {
    /// The admin key (HTTP API) or an admin connection.
    Admin,
    /// A bearer channel token from the HTTP API: may act on the channel it belongs to only.
    ChannelToken(String),
    /// A client over its connection.
    Client(Arc<ClientHandle>),
    /// The app backend's word, given through a verified credential: a JWT subscription
    /// token, a connection token's `channels`, or the auth hook's answer. It may subscribe
    /// clients to public and private channels, but not to admin-only ones, and may do
    /// nothing else.
    Issuer,
}

impl Actor {
    /// Admins, and clients that became admin.
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Admin => true,
            Actor::Client(c) => c.is_admin(),
            Actor::ChannelToken(_) | Actor::Issuer => false,
        }
    }

    fn holds_token_of(&self, channel: &ChannelView, presented: Option<&str>) -> bool {
        let Some(hash) = channel.token_hash else {
            return false;
        };
        let token = match self {
            Actor::ChannelToken(t) => Some(t.as_str()),
            _ => presented,
        };
        token.is_some_and(|t| secret::token_matches_hash(t, hash))
    }

    /// Whether this actor may subscribe someone to `name` (a client itself, or, for
    /// admins, anybody). `presented` is a channel token sent with a client's request.
    ///
    /// By the channel's [`SubscribePolicy`](crate::SubscribePolicy):
    /// - public: anyone;
    /// - private: admins, and whoever holds the channel's token;
    /// - admin: admins only.
    ///
    /// The one place a private channel admits a non-admin is [`Actor::may_join_private`]:
    /// the channel's token, or [`Actor::Issuer`] (a verified JWT subscription token or the
    /// auth hook's allow, checked by the server before it asks).
    pub fn check_subscribe(
        &self,
        name: &ChannelName,
        channel: &ChannelView,
        presented: Option<&str>,
    ) -> Result<(), HeraldError> {
        if self.is_admin() {
            return Ok(());
        }
        if channel.options.admin_only_subscribe {
            return Err(HeraldError::forbidden(format!(
                "only admins may subscribe to channel {name:?}"
            )));
        }
        if channel.options.public || self.may_join_private(channel, presented) {
            return Ok(());
        }
        Err(HeraldError::forbidden(format!(
            "channel {name:?} is not public: subscribing needs its token or an admin"
        )))
    }

    /// Whether a non-admin may join a private channel: the app backend vouched for it, or it
    /// presents the channel's token.
    fn may_join_private(&self, channel: &ChannelView, presented: Option<&str>) -> bool {
        matches!(self, Actor::Issuer) || self.holds_token_of(channel, presented)
    }

    /// Whether this actor may publish to `name`.
    pub fn check_publish(
        &self,
        name: &ChannelName,
        channel: &ChannelView,
    ) -> Result<(), HeraldError> {
        match self {
            Actor::Admin => Ok(()),
            Actor::ChannelToken(_) if self.holds_token_of(channel, None) => Ok(()),
            Actor::ChannelToken(_) => Err(HeraldError::forbidden(format!(
                "this token does not belong to channel {name:?}"
            ))),
            Actor::Client(c) if c.is_admin() || channel.options.client_publish => Ok(()),
            Actor::Client(_) => Err(HeraldError::forbidden(format!(
                "clients may not publish to channel {name:?} (client_publish is off)"
            ))),
            Actor::Issuer => Err(HeraldError::forbidden(
                "a subscription grant cannot publish",
            )),
        }
    }

    /// Whether this actor may inspect or delete channel `name` through the API.
    pub fn check_manage(
        &self,
        name: &ChannelName,
        channel: &ChannelView,
    ) -> Result<(), HeraldError> {
        if self.is_admin() || self.holds_token_of(channel, None) {
            return Ok(());
        }
        Err(HeraldError::forbidden(format!(
            "this credential cannot manage channel {name:?}"
        )))
    }

    /// Admin-only operations (listing, managing other clients, creating channels).
    pub fn require_admin(&self, what: &str) -> Result<(), HeraldError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(HeraldError::forbidden(format!(
                "{what} needs the admin key"
            )))
        }
    }
}
