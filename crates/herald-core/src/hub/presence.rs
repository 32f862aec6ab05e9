//! Presence: who is subscribed to a channel (clients and their users, on every node of a
//! cluster: [`Broker::presence`](crate::Broker)), for channels with the `presence` option; join and leave notices are sent by the registry as subscribers come and
//! go (`join_leave`).

use super::*;

/// One subscriber.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceEntry {
    #[schema(value_type = String, format = Uuid)]
    pub client: ClientId,
    /// Its user id; `null` for an anonymous connection.
    pub user: Option<String>,
}

/// Who is subscribed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceList {
    pub clients: Vec<PresenceEntry>,
}

/// How many are subscribed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceStats {
    pub clients: u64,
    /// Distinct user ids among them (anonymous connections have none).
    pub users: u64,
}

impl Hub {
    /// The subscribers of `name` (on every node of a cluster), for its subscribers, admins
    /// and its token.
    pub async fn presence(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<PresenceList, HeraldError> {
        let mut clients: Vec<_> = self
            .present(actor, name)
            .await?
            .into_iter()
            .map(|(client, user)| PresenceEntry { client, user })
            .collect();
        clients.sort_by_key(|c| c.client);
        Ok(PresenceList { clients })
    }

    /// How many clients and distinct users are subscribed to `name`.
    pub async fn presence_stats(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<PresenceStats, HeraldError> {
        let present = self.present(actor, name).await?;
        let users: std::collections::HashSet<_> = present
            .iter()
            .filter_map(|(_, user)| user.clone())
            .collect();
        Ok(PresenceStats {
            clients: present.len() as u64,
            users: users.len() as u64,
        })
    }

    async fn present(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<Vec<crate::broker::Present>, HeraldError> {
        let allowed = |channel: Option<&Arc<Channel>>| -> Result<(), HeraldError> {
            let view_check = |view: &ChannelView| match actor {
                Actor::ChannelToken(_) => actor.check_manage(name, view),
                _ if actor.is_admin() => Ok(()),
                _ => Err(HeraldError::forbidden(format!(
                    "presence of channel {name:?} is for its subscribers"
                ))),
            };
            match channel {
                Some(c) => match actor {
                    Actor::Client(me) if c.has_subscriber(me.id) => Ok(()),
                    _ => c.view(view_check),
                },
                None => view_check(&ChannelView::absent(self.config.defaults_for(name))),
            }
        };
        let channel = self.registry.lookup(name);
        allowed(channel.as_ref())?;
        let enabled = match &channel {
            Some(c) => c.view(|v| v.options.presence),
            None => self.config.defaults_for(name).presence,
        };
        if !enabled {
            return Err(HeraldError::new(
                ErrorCode::PresenceDisabled,
                format!("channel {name:?} does not track presence (its presence option is off)"),
            ));
        }
        if let Some(everywhere) = self.broker.presence(&self.registry, name).await? {
            return Ok(everywhere);
        }
        Ok(channel
            .map(|c| c.subscribers())
            .unwrap_or_default()
            .iter()
            .map(|c| (c.id, c.user().map(|u| u.to_string())))
            .collect())
    }
}
