//! History: the history op and API (reading a channel's kept publications, clearing them),
//! the sweep that expires them and keeps all history within its byte budget, and putting
//! history back from the store at start. Recording and replaying happen in the registry,
//! under the channel's lock (crate::history explains the parts).

use serde_json::value::RawValue;

use super::*;
use crate::history::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};

/// What part of a channel's history to read.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// Publications after this position (exclusive), if its epoch is the channel's; `None`:
    /// the latest `limit`.
    pub since: Option<(String, u64)>,
    /// At most this many (default 100, at most [`MAX_HISTORY_LIMIT`]).
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// A channel's position and the publications read.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub epoch: String,
    /// The channel's latest offset.
    pub offset: u64,
    pub publications: Vec<Publication>,
}

/// One kept publication.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Publication {
    pub offset: u64,
    /// The publishing client; `null` for the HTTP API and the server.
    #[schema(value_type = Option<String>)]
    pub from: Option<ClientId>,
    /// The publication's data, as it was published.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// When it was published (milliseconds since the Unix epoch).
    pub time_ms: u64,
}

impl Hub {
    /// Reads `name`'s history for `actor`: admins, the channel's token, a client subscribed
    /// to it, or anyone who may subscribe to it. A channel without history answers its
    /// position and no publications.
    pub fn history(
        &self,
        actor: &Actor,
        name: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, HeraldError> {
        let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(HeraldError::bad_request(format!(
                "\"limit\" must be between 1 and {MAX_HISTORY_LIMIT}"
            )));
        }
        let Some(channel) = self.readable_channel(actor, name)? else {
            return Ok(HistoryPage {
                epoch: String::new(),
                offset: 0,
                publications: Vec::new(),
            });
        };
        let page = channel.read_history(|history, epoch, offset| {
            let entries: Vec<_> = match &query.since {
                Some((e, since)) if e == epoch => match history.after(*since, offset) {
                    Some(after) => after,
                    // Older than what is kept: from the oldest kept.
                    None => history.iter().cloned().collect(),
                },
                // Another epoch: nothing of the client's position is meaningful here.
                Some(_) => Vec::new(),
                None => history.last(limit),
            };
            let mut entries: Vec<_> = match &query.since {
                Some(_) => entries.into_iter().take(limit).collect(),
                None => entries,
            };
            if query.reverse {
                entries.reverse();
            }
            (epoch.to_string(), offset, entries)
        });
        let (epoch, offset, entries) = page;
        // A client sees the publications it would have received (not those for others only).
        let reader = match actor {
            Actor::Client(c) if !c.is_admin() => Some(c.id),
            _ => None,
        };
        let publications = entries
            .iter()
            .filter(|e| reader.is_none_or(|id| e.for_client(id)))
            .map(|e| Publication {
                offset: e.offset,
                from: e.from,
                data: RawValue::from_string(String::from_utf8_lossy(&e.data).into_owned())
                    .unwrap_or_else(|_| {
                        RawValue::from_string("null".into()).expect("null is JSON")
                    }),
                time_ms: e.time_ms,
            })
            .collect();
        Ok(HistoryPage {
            epoch,
            offset,
            publications,
        })
    }

    /// Before a subscribe with recovery: holds `channels` and has the broker complete their
    /// local history (a cluster: from the backplane, so a client recovers on any node). Call
    /// [`Hub::end_recovery`] after the subscribe, whatever happened.
    pub async fn prepare_recovery(
        &self,
        actor: &Actor,
        channels: &[ChannelName],
        token: Option<&str>,
    ) -> Result<(), HeraldError> {
        if !self.broker.is_clustered() {
            return Ok(()); // The local history is the whole history.
        }
        // Only channels the subscribe may join or create: nothing is held (created, followed,
        // copied from the backplane) for a request that will be refused.
        self.check_list_len(
            "channels",
            channels.len(),
            self.config.max_channels_per_request,
        )?;
        for name in channels {
            let create = super::subscribe::Create::Namespace;
            self.precheck_subscribe(actor, name, token, self.creating(&create, name))?;
        }
        for name in channels {
            let options = match self.registry.lookup(name) {
                Some(c) => c.view(|v| v.options.clone()),
                None => self.config.defaults_for(name).clone(),
            };
            self.registry.hold(name, &options);
        }
        self.broker.prepare(&self.registry, channels).await
    }

    /// Ends [`Hub::prepare_recovery`].
    pub fn end_recovery(&self, channels: &[ChannelName]) {
        if !self.broker.is_clustered() {
            return;
        }
        for name in channels {
            self.registry.release(name);
        }
    }

    /// Drops `name`'s kept publications (admin or the channel's token); its position stays.
    pub fn clear_history(&self, actor: &Actor, name: &ChannelName) -> Result<u64, HeraldError> {
        self.managed_channel(actor, name)?;
        Ok(self.registry.clear_history(name) as u64)
    }

    /// The channel `actor` may read (history, presence), or `None` if it does not exist but
    /// `actor` could subscribe to it.
    pub(super) fn readable_channel(
        &self,
        actor: &Actor,
        name: &ChannelName,
    ) -> Result<Option<Arc<Channel>>, HeraldError> {
        let check = |view: &ChannelView| match actor {
            Actor::ChannelToken(_) => actor.check_manage(name, view),
            _ => actor.check_subscribe(name, view, None),
        };
        match self.registry.lookup(name) {
            Some(channel) => {
                let subscribed = matches!(actor, Actor::Client(c) if channel.has_subscriber(c.id));
                if !subscribed {
                    channel.view(check)?;
                }
                Ok(Some(channel))
            }
            None => {
                check(&ChannelView::absent(self.config.defaults_for(name)))?;
                Ok(None)
            }
        }
    }

    /// Expires kept publications and keeps all history within its budget (the server runs
    /// it every second, and at once when the budget is exceeded).
    pub fn history_sweep(&self) {
        self.registry.history_sweep(std::time::Instant::now());
    }

    /// Puts history and positions back from the store (at start, after the channels).
    /// Publications older than their channel's `history_ttl_secs` are not put back.
    pub fn restore_history(&self) -> Result<usize, HeraldError> {
        let stored = self
            .store
            .load_history()
            .map_err(|e| HeraldError::new(ErrorCode::StoreUnavailable, e.to_string()))?;
        let now = std::time::Instant::now();
        let wall = now_ms();
        let mut kept = 0;
        let mut forget = Vec::new();
        for h in stored {
            let Ok(name) = ChannelName::parse(&h.channel) else {
                continue;
            };
            let options = match self.registry.lookup(&name) {
                Some(c) => c.view(|v| v.options.clone()),
                None => self.config.defaults_for(&name).clone(),
            };
            let ttl_ms = u64::from(options.history_ttl_secs) * 1000;
            let entries: Vec<_> = h
                .entries
                .into_iter()
                .filter_map(|e| {
                    let age = wall.saturating_sub(e.time_ms);
                    let left = ttl_ms.checked_sub(age).filter(|l| *l > 0)?;
                    Some((e, now + std::time::Duration::from_millis(left)))
                })
                .filter(|_| options.history_size > 0)
                .collect();
            kept += entries.len();
            if entries.is_empty() && self.registry.lookup(&name).is_none() {
                // Nothing left to keep and no channel to keep a position for: drop the rows.
                forget.push(crate::history::HistoryOp::Forget { channel: name });
                continue;
            }
            self.registry
                .restore_history(&name, &options, &h.epoch, h.offset, entries);
        }
        if !forget.is_empty()
            && let Err(e) = self.store.write_history(&forget, true)
        {
            tracing::warn!(error = %e, "expired history not removed from the store");
        }
        Ok(kept)
    }
}
