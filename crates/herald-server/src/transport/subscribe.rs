//! Subscribing a transport's client: the channel list a URL names (`?channels=a,b`, for the
//! WebSocket and the HTTP transports alike) and the subscribe with a replay, the same way
//! whatever the dialect.

use std::sync::Arc;

use herald_core::history::Replay;
use herald_core::hub::Subscribed;
use herald_core::{Actor, ChannelName, ClientHandle, HeraldError, Hub};

/// Adds the channels of a `?channels=` value (comma-separated, already percent-decoded) to
/// `into`, dropping repeats: an empty or invalid name, or more than `max` channels in all,
/// is a clear error, found before any more work (the list comes from the network).
pub fn channel_list(
    value: &str,
    into: &mut Vec<ChannelName>,
    max: usize,
) -> Result<(), HeraldError> {
    for name in value.split(',') {
        if name.is_empty() {
            return Err(HeraldError::bad_request(
                "channels: an empty channel name (channels=a,b)",
            ));
        }
        let channel = ChannelName::parse(name)?;
        if !into.contains(&channel) {
            if into.len() == max {
                return Err(HeraldError::new(
                    herald_core::ErrorCode::TooMany,
                    format!("channels: at most {max}"),
                ));
            }
            into.push(channel);
        }
    }
    Ok(())
}

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
    hub.confirm_subscribed(client, &done.added).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lists_are_bounded_and_strict() {
        let mut got = Vec::new();
        channel_list("a,b,a", &mut got, 3).unwrap();
        assert_eq!(got.len(), 2, "repeats are dropped");
        for bad in ["a,,b", "", "bad name"] {
            assert!(channel_list(bad, &mut Vec::new(), 10).is_err(), "{bad:?}");
        }
        // The bound is checked as names come, not after parsing them all.
        let long: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
        let e = channel_list(&long.join(","), &mut Vec::new(), 100).unwrap_err();
        assert_eq!(e.code, herald_core::ErrorCode::TooMany);
    }
}
