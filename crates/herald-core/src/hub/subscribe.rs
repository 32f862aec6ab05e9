//! Subscriptions: subscribing (with the checks of policy, limits and channel options),
//! rooms that dialects create, the firehose, and unsubscribing for every reason.

use super::*;
use crate::history::{Recovered, Replay};

/// Which options a subscription creates a missing channel with.
pub(super) enum Create<'a> {
    /// Its namespace's (or the defaults), if `auto_create_channels` is on.
    Namespace,
    /// These, whatever `auto_create_channels` says (dialect rooms).
    With(&'a ChannelOptions),
}

/// What a subscribe request did.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// The channels newly subscribed.
    pub added: Vec<ChannelName>,
    /// Each channel a replay was asked for that recovers: the outcome.
    pub recovered: Vec<(ChannelName, Recovered)>,
}

impl Hub {
    /// Subscribes `client` to `channels` on behalf of `actor` (the client itself, or an
    /// admin). Everything that can be checked up front is, so a refused request changes
    /// nothing; only `channel_full` can stop a request part-way. Subscribing twice is harmless.
    /// Returns the channels that were newly subscribed.
    pub fn subscribe(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        token: Option<&str>,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.subscribe_replaying(actor, client, channels, token, |_| Replay::Nothing)
            .map(|s| s.added)
    }

    /// [`Hub::subscribe`], with what each new subscriber gets from its channel's history
    /// first (`replay(channel)`): a recovery after a reconnect, or a backtrack. The replayed
    /// publications are queued before any newer one of the channel, each exactly once.
    pub fn subscribe_replaying<'r>(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        token: Option<&str>,
        replay: impl Fn(&ChannelName) -> Replay<'r>,
    ) -> Result<Subscribed, HeraldError> {
        self.subscribe_creating(actor, client, channels, token, Create::Namespace, replay)
    }

    /// Subscribes `client` to `room`, creating it (ephemeral) with `options` if it does not
    /// exist, whatever `auto_create_channels` says: for channels whose options the client
    /// sets when it creates them (e.g. a subscriber limit). Returns whether it newly joined.
    pub fn subscribe_with_options(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        room: &ChannelName,
        options: &ChannelOptions,
    ) -> Result<bool, HeraldError> {
        let done = self.subscribe_creating(
            actor,
            client,
            std::slice::from_ref(room),
            None,
            Create::With(options),
            |_| Replay::Nothing,
        )?;
        Ok(!done.added.is_empty())
    }

    fn subscribe_creating<'r>(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        token: Option<&str>,
        create: Create<'_>,
        replay: impl Fn(&ChannelName) -> Replay<'r>,
    ) -> Result<Subscribed, HeraldError> {
        self.check_list_len(
            "channels",
            channels.len(),
            self.config.max_channels_per_request,
        )?;
        let mut subs = client.subscriptions.lock();
        if subs.closed {
            return Err(HeraldError::new(
                ErrorCode::ClientNotFound,
                "the client is disconnecting",
            ));
        }
        let fresh = channels
            .iter()
            .filter(|c| !subs.channels.contains(*c))
            .count();
        if subs.channels.len() + fresh > self.config.max_channels_per_connection {
            return Err(HeraldError::new(
                ErrorCode::TooMany,
                format!(
                    "a connection may subscribe to at most {} channels",
                    self.config.max_channels_per_connection
                ),
            ));
        }
        for name in channels {
            self.precheck_subscribe(actor, name, token, self.creating(&create, name))?;
        }
        let mut done = Subscribed::default();
        for name in channels {
            let check = |view: &ChannelView| {
                actor.check_subscribe(name, view, token)?;
                if let Some(max) = view.options.max_subscribers
                    && view.subscribers >= max as usize
                {
                    return Err(HeraldError::new(
                        ErrorCode::ChannelFull,
                        format!("channel {name:?} has reached its {max} subscribers"),
                    ));
                }
                Ok(())
            };
            let create = self.creating(&create, name);
            let (added, recovered) =
                self.registry
                    .add_subscriber(name, client, create, replay(name), check)?;
            if added == Added::New {
                subs.channels.insert(name.clone());
                done.added.push(name.clone());
            }
            if let Some(recovered) = recovered {
                done.recovered.push((name.clone(), recovered));
            }
        }
        Ok(done)
    }

    /// The options `name` would be created with if it does not exist (`None`: not created).
    pub(super) fn creating<'a>(
        &'a self,
        create: &Create<'a>,
        name: &ChannelName,
    ) -> Option<&'a ChannelOptions> {
        match create {
            Create::Namespace => self
                .config
                .auto_create_channels
                .then(|| self.config.defaults_for(name)),
            Create::With(options) => Some(options),
        }
    }

    pub(super) fn precheck_subscribe(
        &self,
        actor: &Actor,
        name: &ChannelName,
        token: Option<&str>,
        create: Option<&ChannelOptions>,
    ) -> Result<(), HeraldError> {
        match (self.registry.lookup(name), create) {
            (Some(channel), _) => channel.view(|view| actor.check_subscribe(name, view, token)),
            (None, Some(options)) => {
                actor.check_subscribe(name, &ChannelView::absent(options), token)
            }
            (None, None) => Err(not_found(name)),
        }
    }

    /// Adds `client` to the firehose: it receives every publication on every channel (once).
    /// It is subscribed to `channel` too, which it needs permission for (the dialect's name
    /// for the firehose, e.g. Eventual's `global`).
    pub fn subscribe_firehose(
        &self,
        actor: &Actor,
        client: &Arc<ClientHandle>,
        channel: &ChannelName,
    ) -> Result<(), HeraldError> {
        self.subscribe(actor, client, std::slice::from_ref(channel), None)?;
        let subs = client.subscriptions.lock();
        if !subs.closed {
            self.registry.add_firehose(client.clone());
        }
        Ok(())
    }

    pub fn unsubscribe_firehose(&self, client: &Arc<ClientHandle>) {
        self.registry.remove_firehose(client.id);
    }

    /// After a subscribe: resolves once this node receives every node's publications to the
    /// channels `client` was just `added` to ([`Hub::broker_ready`]). If the broker cannot
    /// confirm it, those subscriptions are taken back and the error returned: a refused
    /// subscribe leaves nothing behind.
    pub async fn confirm_subscribed(
        &self,
        client: &Arc<ClientHandle>,
        added: &[ChannelName],
    ) -> Result<(), HeraldError> {
        if let Err(e) = self.broker_ready(added).await {
            self.unsubscribe_because(client, added, "broker_unavailable")?;
            return Err(e);
        }
        Ok(())
    }

    /// Removes `client` from `channels`; channels it was not in are ignored. Returns the
    /// channels it actually left.
    pub fn unsubscribe(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.unsubscribe_because(client, channels, "unsubscribed")
    }

    fn unsubscribe_because(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        reason: &'static str,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        self.check_list_len(
            "channels",
            channels.len(),
            self.config.max_channels_per_request,
        )?;
        let mut subs = client.subscriptions.lock();
        let mut left = Vec::new();
        for name in channels {
            if subs.channels.remove(name) {
                self.registry.remove_subscriber(name, client.id, reason);
                left.push(name.clone());
            }
        }
        Ok(left)
    }

    /// Removes a subscription on the server's initiative and tells the client why.
    pub fn force_unsubscribe(
        &self,
        client: &Arc<ClientHandle>,
        channels: &[ChannelName],
        reason: &str,
    ) -> Result<Vec<ChannelName>, HeraldError> {
        let left = self.unsubscribe_because(client, channels, "removed")?;
        for name in &left {
            if let Some(notice) = client.format.unsubscribed(name, reason) {
                self.registry.push_or_close(client, notice);
            }
        }
        Ok(left)
    }
}
