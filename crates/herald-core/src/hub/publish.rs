//! Publishing: a publication checked as a whole before any channel is touched, then
//! sequenced and fanned out per channel by the broker; direct messages to one client.

use super::*;

/// A publication request as the hub receives it from any front end.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    pub channels: Vec<ChannelName>,
    /// Valid JSON text.
    pub data: Bytes,
    pub to: Option<Vec<ClientId>>,
    /// Each client gets the publication at most once, however many of its channels it is in
    /// (for dialects whose frames do not name the channel).
    pub once_per_client: bool,
}

/// One channel's outcome of a publication.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelPublished {
    #[schema(value_type = String)]
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: String,
    pub delivered: u64,
}

impl Hub {
    /// Publishes `req.data` to each channel in turn. Checks everything first (names, sizes,
    /// permissions), so a refused publication reaches no channel.
    pub async fn publish(
        &self,
        actor: &Actor,
        mut req: PublishRequest,
    ) -> Result<Vec<ChannelPublished>, HeraldError> {
        if req.channels.is_empty() {
            return Err(HeraldError::new(
                ErrorCode::MissingField,
                "no channel to publish to",
            ));
        }
        self.check_list_len(
            "channels",
            req.channels.len(),
            self.config.max_channels_per_request,
        )?;
        self.check_payload(&req.data)?;
        if let Some(to) = req.to.as_mut() {
            self.check_list_len("to", to.len(), self.config.max_recipients)?;
            to.sort_unstable();
            to.dedup();
        }
        let mut seen = std::collections::HashSet::new();
        req.channels.retain(|c| seen.insert(c.clone()));
        // Channels absent now: if their options keep history, the publication creates them.
        let mut absent = Vec::new();
        for name in &req.channels {
            let check = |view: &ChannelView| {
                actor.check_publish(name, view)?;
                check_channel_payload(name, view.options, req.data.len())
            };
            match self.registry.lookup(name) {
                Some(ch) => ch.view(check)?,
                None => {
                    // The credential first, so a channel token cannot tell a channel that
                    // does not exist from another channel's.
                    check(&ChannelView::absent(self.config.defaults_for(name)))?;
                    if !self.config.auto_create_channels {
                        return Err(not_found(name));
                    }
                    absent.push(name.clone());
                }
            }
        }
        let from = match actor {
            Actor::Client(c) => Some(c.id),
            _ => None,
        };
        let once = req.once_per_client.then(Default::default);
        let mut results = Vec::with_capacity(req.channels.len());
        for name in req.channels {
            // A channel whose options keep history is created by its first publication, so
            // a subscriber that comes (back) later can recover it.
            let create = absent
                .contains(&name)
                .then(|| self.config.defaults_for(&name))
                .filter(|defaults| defaults.history_size > 0)
                .cloned();
            let publish = Publish {
                channel: name.clone(),
                from,
                data: req.data.clone(),
                to: req.to.clone(),
                once: once.clone(),
                create,
            };
            let Published {
                offset,
                epoch,
                delivered,
            } = self.broker.publish(&self.registry, publish).await?;
            results.push(ChannelPublished {
                channel: name,
                offset,
                epoch,
                delivered,
            });
        }
        Ok(results)
    }

    /// Sends `data` to one client.
    pub fn send_direct(&self, actor: &Actor, to: ClientId, data: &[u8]) -> Result<(), HeraldError> {
        if let Actor::Client(c) = actor
            && !c.is_admin()
            && !self.config.client_direct_messages
        {
            return Err(HeraldError::forbidden(
                "clients may not send direct messages on this server",
            ));
        }
        if let Actor::ChannelToken(_) | Actor::Issuer = actor {
            return Err(HeraldError::forbidden("direct messages need the admin key"));
        }
        self.check_payload(data)?;
        let from = match actor {
            Actor::Client(c) => Some(c.id),
            _ => None,
        };
        self.deliver_direct(to, from, data)
    }

    /// Queues a direct message to a client of this node whose sending was already allowed
    /// (here by [`Hub::send_direct`], or on the sender's node of a cluster).
    pub fn deliver_direct(
        &self,
        to: ClientId,
        from: Option<ClientId>,
        data: &[u8],
    ) -> Result<(), HeraldError> {
        let target = self
            .registry
            .client(to)
            .ok_or_else(|| client_not_found(to))?;
        if !self
            .registry
            .push_or_close(&target, target.format.direct(from, data))
        {
            return Err(HeraldError::new(
                ErrorCode::ClientNotFound,
                format!("client {to} is disconnecting; the message was not delivered"),
            ));
        }
        Stats::add(&self.stats.direct_messages, 1);
        Ok(())
    }
}
