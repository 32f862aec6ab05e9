//! Subscribing an HTTP transport's client with a replay, the same way whatever the dialect.

use std::sync::Arc;

use herald_core::history::Replay;
use herald_core::hub::Subscribed;
use herald_core::{Actor, ChannelName, ClientHandle, HeraldError, Hub};

/// Subscribes `client` (on behalf of `actor`) to `channels`, each first getting what
/// `replay` says from its history. Channels that replay have their history completed first
/// (on a cluster, from the backplane, so a client resumes on any node), and the subscription
/// is confirmed by the broker before this returns.
pub async fn subscribe<'r>(
    hub: &Hub,
    actor: &Actor,
    client: &Arc<ClientHandle>,
    channels: &[ChannelName],
    replay: impl Fn(&ChannelName) -> Replay<'r>,
) -> Result<Subscribed, HeraldError> {
    let replaying: Vec<ChannelName> = channels
        .iter()
        .filter(|c| !matches!(replay(c), Replay::Nothing))
        .cloned()
        .collect();
    if !replaying.is_empty()
        && let Err(e) = hub.prepare_recovery(actor, &replaying, None).await
    {
        hub.end_recovery(&replaying);
        return Err(e);
    }
    let done = hub.subscribe_replaying(actor, client, channels, None, replay);
    hub.end_recovery(&replaying);
    let done = done?;
    hub.broker_ready(&done.added).await?;
    Ok(done)
}
