//! Channels: creating persistent ones (kept in the store, with a token), replacing their
//! options, deleting any channel, and looking them up for those who may manage them.

use super::*;

/// A newly created channel and its token (shown once; only its hash is kept).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedChannel {
    #[serde(flatten)]
    pub channel: ChannelSummary,
    pub token: String,
}

/// Whether creating a persistent channel may turn a live ephemeral one of the same name into
/// it (admins), or must find no channel at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    MayBeEphemeral,
    Refused,
}

impl Hub {
    /// Creates a persistent channel (kept in the store) and returns it with its token.
    pub async fn create_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<CreatedChannel, HeraldError> {
        self.create(actor, name, options, Existing::MayBeEphemeral)
            .await
    }

    /// Creates a persistent channel only if no channel of that name exists, ephemeral ones
    /// included: for creators that are handed the new channel's token without being admins
    /// (WS-PushServer's `/channel/create`), so they never take over a channel in use.
    pub async fn create_unused_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<CreatedChannel, HeraldError> {
        self.create(actor, name, options, Existing::Refused).await
    }

    async fn create(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
        existing: Existing,
    ) -> Result<CreatedChannel, HeraldError> {
        actor.require_admin("creating channels")?;
        // Serialise creates and deletes so the store and the registry always agree.
        let _guard = self.channel_changes.lock().await;
        if let Some(channel) = self.registry.lookup(&name)
            && (existing == Existing::Refused || channel.summary().persistent)
        {
            return Err(HeraldError::new(
                ErrorCode::ChannelExists,
                format!("channel {name:?} already exists"),
            ));
        }
        let token = secret::new_channel_token();
        let record = ChannelRecord {
            name: name.to_string(),
            options: options.clone(),
            token_hash: secret::hash_token(&token),
            created_at_ms: now_ms(),
        };
        let store = self.store.clone();
        let rec = record.clone();
        run_blocking(move || store.put_channel(&rec)).await?;
        self.registry
            .create_persistent(&name, options, record.token_hash, record.created_at_ms)?;
        let channel = self
            .registry
            .lookup(&name)
            .ok_or_else(|| not_found(&name))?;
        Ok(CreatedChannel {
            channel: channel.summary(),
            token,
        })
    }

    /// Creates a persistent channel, or replaces the options of an existing one (keeping its
    /// token and subscribers). Returns the token when a channel was created.
    pub async fn put_channel(
        &self,
        actor: &Actor,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<Option<String>, HeraldError> {
        actor.require_admin("creating channels")?;
        {
            let _guard = self.channel_changes.lock().await;
            if let Some((token_hash, created_at_ms)) =
                self.registry.update_options(&name, options.clone())
            {
                let record = ChannelRecord {
                    name: name.to_string(),
                    options,
                    token_hash,
                    created_at_ms,
                };
                let store = self.store.clone();
                run_blocking(move || store.put_channel(&record)).await?;
                return Ok(None);
            }
        }
        Ok(Some(self.create_channel(actor, name, options).await?.token))
    }

    /// Deletes a channel: its subscribers get an `unsubscribed` notice, the store forgets it.
    pub async fn delete_channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<u64, HeraldError> {
        let _guard = self.channel_changes.lock().await;
        let channel = self.managed_channel(actor, name)?;
        if channel.summary().persistent {
            let store = self.store.clone();
            let key = name.to_string();
            run_blocking(move || store.delete_channel(&key).map(|_| ())).await?;
        }
        Ok(self.drop_channel(name))
    }

    /// Puts a channel created or changed on another node of a cluster in place here, without
    /// storing it (the shared store has it): created, or its options replaced.
    pub fn apply_channel(&self, record: ChannelRecord) {
        let Ok(name) = ChannelName::parse(&record.name) else {
            tracing::warn!("a shared channel with an invalid name was ignored");
            return;
        };
        if self
            .registry
            .update_options(&name, record.options.clone())
            .is_none()
        {
            let _ = self.registry.create_persistent(
                &name,
                record.options,
                record.token_hash,
                record.created_at_ms,
            );
        }
    }

    /// Removes a channel here without touching the store (deleted on another node of a
    /// cluster, or by [`Hub::delete_channel`]): its subscribers get an `unsubscribed` notice.
    /// Returns how many subscribers it had.
    pub fn drop_channel(&self, name: &ChannelName) -> u64 {
        let subscribers = self.registry.remove_channel(name).unwrap_or_default();
        let notice = |c: &Arc<ClientHandle>| c.format.unsubscribed(name, "channel_deleted");
        for client in &subscribers {
            let mut subs = client.subscriptions.lock();
            // The client may already have re-subscribed to a new channel of the same name;
            // then the name stays in its set (lock order: subscriptions, then channel state).
            let resubscribed = self
                .registry
                .lookup(name)
                .is_some_and(|c| c.has_subscriber(client.id));
            if !resubscribed {
                subs.channels.remove(name);
            }
            let channelless = subs.channels.is_empty();
            drop(subs);
            if let Some(notice) = notice(client) {
                self.registry.push_or_close(client, notice);
            }
            if channelless && client.format.closes_without_channels() {
                // After the notice: closes other than a slow consumer's flush first.
                client.outbox.close(Disconnect::new(
                    DisconnectReason::ChannelDeleted,
                    close_code::NORMAL,
                    "Channel deleted.",
                ));
            }
        }
        subscribers.len() as u64
    }

    /// One channel, for `actor` (admin or the channel's token).
    pub fn channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<ChannelSummary, HeraldError> {
        Ok(self.managed_channel(actor, name)?.summary())
    }

    /// The channel `name` if `actor` may manage it. The credential is checked first: a
    /// channel token gets the same refusal for a channel that does not exist as for another
    /// channel's, so it cannot probe which channels exist.
    pub(super) fn managed_channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<Arc<registry::Channel>, HeraldError> {
        match self.registry.lookup(name) {
            Some(channel) => {
                channel.view(|view| actor.check_manage(name, view))?;
                Ok(channel)
            }
            None => {
                actor.check_manage(name, &ChannelView::absent(self.config.defaults_for(name)))?;
                Err(not_found(name))
            }
        }
    }

    /// Every channel, sorted by name (admin only).
    pub fn channels(&self, actor: &Actor) -> Result<Vec<ChannelSummary>, HeraldError> {
        actor.require_admin("listing channels")?;
        let mut all: Vec<_> = self
            .registry
            .all_channels()
            .iter()
            .map(|c| c.summary())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
