//! Hub behaviour without sockets: a test wire format records what would be written.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::MemoryBroker;
use crate::client::DisconnectReason;
use crate::format::Message;
use crate::store::MemoryStore;

/// Channel namespaces (`[namespaces.<ns>]`).
mod namespaces;

/// Encodes every event as readable text and counts message encodings.
struct TestFormat;
static ENCODINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl WireFormat for TestFormat {
    fn name(&self) -> &'static str {
        "test"
    }
    fn message(&self, m: &Message) -> Bytes {
        ENCODINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Bytes::from(format!(
            "msg {} {} {};",
            m.channel,
            m.offset,
            String::from_utf8_lossy(&m.data)
        ))
    }
    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        Bytes::from(format!("direct {};", String::from_utf8_lossy(data)))
    }
    fn unsubscribed(&self, channel: &ChannelName, reason: &str) -> Option<Bytes> {
        Some(Bytes::from(format!("unsub {channel} {reason};")))
    }
    fn connection_notice(&self, client: ClientId, connected: bool) -> Option<Bytes> {
        Some(Bytes::from(format!("notice {client} {connected};")))
    }
    fn keepalive(&self) -> Bytes {
        Bytes::from_static(b"ping;")
    }
}
static FORMAT: TestFormat = TestFormat;

fn hub_with(config: HubConfig) -> Hub {
    Hub::new(
        config,
        Arc::new(MemoryBroker),
        Arc::new(MemoryStore::default()),
    )
}

fn hub() -> Hub {
    hub_with(HubConfig::default())
}

fn connect(hub: &Hub) -> Arc<ClientHandle> {
    hub.connect(&FORMAT, ClientInfo::new(None, "test"))
}

fn written(client: &ClientHandle) -> String {
    let mut out = Vec::new();
    client.outbox.drain(&mut out, usize::MAX);
    String::from_utf8(out).unwrap()
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn publish_req(channels: &[&str], data: &str) -> PublishRequest {
    PublishRequest {
        channels: channels.iter().map(|c| ch(c)).collect(),
        data: Bytes::from(data.to_string()),
        to: None,
        once_per_client: false,
    }
}

#[tokio::test]
async fn publish_reaches_subscribers_with_increasing_offsets() {
    let hub = hub();
    let a = connect(&hub);
    let b = connect(&hub);
    hub.subscribe(&Actor::Client(a.clone()), &a, &[ch("news")], None)
        .unwrap();
    hub.subscribe(&Actor::Client(b.clone()), &b, &[ch("news")], None)
        .unwrap();
    for i in 1..=3 {
        let r = hub
            .publish(&Actor::Admin, publish_req(&["news"], &i.to_string()))
            .await
            .unwrap();
        assert_eq!((r[0].offset, r[0].delivered), (i, 2));
    }
    assert_eq!(written(&a), "msg news 1 1;msg news 2 2;msg news 3 3;");
    assert_eq!(written(&b), "msg news 1 1;msg news 2 2;msg news 3 3;");
}

#[tokio::test]
async fn encodes_once_per_format_not_per_subscriber() {
    let hub = hub();
    let clients: Vec<_> = (0..50).map(|_| connect(&hub)).collect();
    for c in &clients {
        hub.subscribe(&Actor::Admin, c, &[ch("enc")], None).unwrap();
    }
    let before = ENCODINGS.load(std::sync::atomic::Ordering::Relaxed);
    hub.publish(&Actor::Admin, publish_req(&["enc"], "1"))
        .await
        .unwrap();
    let after = ENCODINGS.load(std::sync::atomic::Ordering::Relaxed);
    // Other tests may encode concurrently, but never 50 times for one publication here.
    assert!(after - before < 50, "encoded {} times", after - before);
}

#[tokio::test]
async fn subscribing_twice_is_harmless_and_unsubscribe_removes_ephemeral_channel() {
    let hub = hub();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    assert_eq!(
        hub.subscribe(&actor, &a, &[ch("x")], None).unwrap().len(),
        1
    );
    assert_eq!(
        hub.subscribe(&actor, &a, &[ch("x")], None).unwrap().len(),
        0
    );
    assert_eq!(hub.registry().channel_count(), 1);
    hub.unsubscribe(&a, &[ch("x")]).unwrap();
    assert_eq!(hub.registry().channel_count(), 0);
    let r = hub
        .publish(&Actor::Admin, publish_req(&["x"], "1"))
        .await
        .unwrap();
    assert_eq!(r[0].delivered, 0);
}

#[tokio::test]
async fn targeted_publication_reaches_only_named_subscribers() {
    let hub = hub();
    let a = connect(&hub);
    let b = connect(&hub);
    for c in [&a, &b] {
        hub.subscribe(&Actor::Admin, c, &[ch("t")], None).unwrap();
    }
    let mut req = publish_req(&["t"], "\"hi\"");
    req.to = Some(vec![b.id, b.id]);
    let r = hub.publish(&Actor::Admin, req).await.unwrap();
    assert_eq!(r[0].delivered, 1);
    assert_eq!(written(&a), "");
    assert_eq!(written(&b), "msg t 1 \"hi\";");
}

#[tokio::test]
async fn client_publish_needs_channel_option() {
    let hub = hub();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    let err = hub
        .publish(&actor, publish_req(&["free"], "1"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let opts = ChannelOptions {
        client_publish: true,
        ..Default::default()
    };
    hub.create_channel(&Actor::Admin, ch("free"), opts)
        .await
        .unwrap();
    hub.publish(&actor, publish_req(&["free"], "1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn private_channel_needs_token_and_token_is_scoped() {
    let hub = hub();
    let opts = ChannelOptions {
        public: false,
        ..Default::default()
    };
    let created = hub
        .create_channel(&Actor::Admin, ch("priv"), opts.clone())
        .await
        .unwrap();
    let other = hub
        .create_channel(&Actor::Admin, ch("other"), opts)
        .await
        .unwrap();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    let err = hub.subscribe(&actor, &a, &[ch("priv")], None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = hub
        .subscribe(&actor, &a, &[ch("priv")], Some(&other.token))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    hub.subscribe(&actor, &a, &[ch("priv")], Some(&created.token))
        .unwrap();

    let token_actor = Actor::ChannelToken(created.token.clone());
    hub.publish(&token_actor, publish_req(&["priv"], "1"))
        .await
        .unwrap();
    let err = hub
        .publish(&token_actor, publish_req(&["other"], "1"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(
        hub.channels(&token_actor).unwrap_err().code,
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn max_subscribers_is_enforced() {
    let hub = hub();
    let opts = ChannelOptions {
        max_subscribers: Some(1),
        ..Default::default()
    };
    hub.create_channel(&Actor::Admin, ch("one"), opts)
        .await
        .unwrap();
    let a = connect(&hub);
    let b = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("one")], None)
        .unwrap();
    let err = hub
        .subscribe(&Actor::Admin, &b, &[ch("one")], None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelFull);
}

#[tokio::test]
async fn deleting_a_channel_tells_subscribers() {
    let hub = hub();
    hub.create_channel(&Actor::Admin, ch("gone"), ChannelOptions::default())
        .await
        .unwrap();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("gone")], None)
        .unwrap();
    assert_eq!(
        hub.delete_channel(&Actor::Admin, &ch("gone"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(written(&a), "unsub gone channel_deleted;");
    assert!(a.subscriptions().is_empty());
    assert_eq!(
        hub.delete_channel(&Actor::Admin, &ch("gone"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::ChannelNotFound
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let hub = hub_with(HubConfig {
        outbox_max_bytes: 100,
        ..Default::default()
    });
    let slow = connect(&hub);
    let fast = connect(&hub);
    for c in [&slow, &fast] {
        hub.subscribe(&Actor::Admin, c, &[ch("s")], None).unwrap();
    }
    for i in 0..20 {
        hub.publish(&Actor::Admin, publish_req(&["s"], &format!("\"{i:08}\"")))
            .await
            .unwrap();
        written(&fast); // the fast one keeps up
    }
    assert!(slow.outbox.is_closing());
    assert!(!fast.outbox.is_closing());
    assert_eq!(hub.stats_snapshot().slow_consumers, 1);
}

#[tokio::test]
async fn disconnect_removes_all_subscriptions() {
    let hub = hub();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("a"), ch("b")], None)
        .unwrap();
    hub.disconnect(&a, DisconnectReason::ClosedByClient);
    assert_eq!(hub.registry().channel_count(), 0);
    assert_eq!(hub.registry().client_count(), 0);
    // A late subscribe on a disconnected client cannot leak it into a channel.
    assert!(hub.subscribe(&Actor::Admin, &a, &[ch("a")], None).is_err());
    assert_eq!(hub.registry().channel_count(), 0);
}

#[tokio::test]
async fn limits_are_enforced_with_codes() {
    let hub = hub_with(HubConfig {
        max_channels_per_connection: 2,
        max_payload_bytes: 4,
        ..Default::default()
    });
    let a = connect(&hub);
    let err = hub
        .subscribe(&Actor::Admin, &a, &[ch("a"), ch("b"), ch("c")], None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooMany);
    assert!(
        a.subscriptions().is_empty(),
        "a refused request changes nothing"
    );
    let err = hub
        .publish(&Actor::Admin, publish_req(&["a"], "\"long\""))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PayloadTooLarge);
}

#[tokio::test]
async fn direct_messages_follow_policy() {
    let hub = hub();
    let a = connect(&hub);
    let b = connect(&hub);
    let err = hub
        .send_direct(&Actor::Client(a.clone()), b.id, b"1")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    hub.send_direct(&Actor::Admin, b.id, b"1").unwrap();
    assert_eq!(written(&b), "direct 1;");
    let err = hub
        .send_direct(&Actor::Admin, ClientId::random(), b"1")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ClientNotFound);
}

#[tokio::test]
async fn concurrent_subscribe_unsubscribe_leaves_consistent_state() {
    let hub = Arc::new(hub());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let hub = hub.clone();
        tasks.push(std::thread::spawn(move || {
            for _ in 0..200 {
                let c = connect(&hub);
                hub.subscribe(&Actor::Admin, &c, &[ch("race")], None)
                    .unwrap();
                hub.unsubscribe(&c, &[ch("race")]).unwrap();
                hub.subscribe(&Actor::Admin, &c, &[ch("race")], None)
                    .unwrap();
                hub.disconnect(&c, DisconnectReason::ClosedByClient);
            }
        }));
    }
    for t in tasks {
        t.join().unwrap();
    }
    assert_eq!(hub.registry().channel_count(), 0);
    assert_eq!(hub.registry().client_count(), 0);
}

#[tokio::test]
async fn keepalive_sweep_pings_and_times_out() {
    let hub = hub();
    let a = connect(&hub);
    let now = crate::client::now_ms();
    hub.keepalive_sweep(now, 60_000);
    assert_eq!(written(&a), "ping;");
    hub.keepalive_sweep(now + 120_000, 60_000);
    assert!(a.outbox.is_closing());
    assert_eq!(hub.stats_snapshot().timed_out, 1);
}

#[tokio::test]
async fn duplicate_channels_in_one_publication_are_published_once() {
    let hub = hub();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("a"), ch("b")], None)
        .unwrap();
    let r = hub
        .publish(&Actor::Admin, publish_req(&["a", "b", "a"], "1"))
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(written(&a), "msg a 1 1;msg b 1 1;");
}

#[tokio::test]
async fn direct_message_to_a_closing_client_is_an_error() {
    let hub = hub_with(HubConfig {
        outbox_max_bytes: 10,
        ..Default::default()
    });
    let b = connect(&hub);
    let err = hub
        .send_direct(&Actor::Admin, b.id, b"\"far too long for the outbox\"")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ClientNotFound);
    assert!(b.outbox.is_closing());
}

#[tokio::test]
async fn resubscribing_during_a_delete_keeps_the_client_consistent() {
    let hub = hub();
    hub.create_channel(&Actor::Admin, ch("re"), ChannelOptions::default())
        .await
        .unwrap();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("re")], None).unwrap();
    hub.delete_channel(&Actor::Admin, &ch("re")).await.unwrap();
    // After the delete the client is in no channel, and can subscribe to the name again.
    assert!(a.subscriptions().is_empty());
    hub.subscribe(&Actor::Admin, &a, &[ch("re")], None).unwrap();
    assert_eq!(a.subscriptions(), vec![ch("re")]);
    hub.disconnect(&a, DisconnectReason::ClosedByClient);
    assert_eq!(hub.registry().channel_count(), 0);
}

#[tokio::test]
async fn admins_hear_of_connects_and_disconnects_and_can_broadcast() {
    let hub = hub();
    let admin = connect(&hub);
    hub.make_admin(&admin);
    let a = connect(&hub);
    hub.disconnect(&a, DisconnectReason::ClosedByClient);
    assert_eq!(
        written(&admin),
        format!("notice {} true;notice {} false;", a.id, a.id)
    );
    let b = connect(&hub);
    written(&admin);
    let err = hub.broadcast(&Actor::Client(b.clone()), b"1").unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(
        hub.broadcast(&Actor::Client(admin.clone()), b"\"all\"")
            .unwrap(),
        2
    );
    assert_eq!(written(&b), "direct \"all\";");
    assert_eq!(written(&admin), "direct \"all\";");
}

#[tokio::test]
async fn firehose_gets_every_publication_once() {
    let hub = hub();
    let fire = connect(&hub);
    let plain = connect(&hub);
    hub.subscribe_firehose(&Actor::Client(fire.clone()), &fire, &ch("global"))
        .unwrap();
    hub.subscribe(&Actor::Admin, &fire, &[ch("a")], None)
        .unwrap();
    hub.subscribe(&Actor::Admin, &plain, &[ch("a"), ch("b")], None)
        .unwrap();
    hub.publish(&Actor::Admin, publish_req(&["b"], "1"))
        .await
        .unwrap();
    hub.publish(&Actor::Admin, publish_req(&["a"], "2"))
        .await
        .unwrap();
    assert_eq!(
        written(&fire),
        "msg b 1 1;msg a 1 2;",
        "b via the firehose, a once"
    );
    let mut req = publish_req(&["a", "b"], "3");
    req.once_per_client = true;
    hub.publish(&Actor::Admin, req).await.unwrap();
    assert_eq!(written(&fire), "msg a 2 3;");
    assert_eq!(written(&plain), "msg b 1 1;msg a 1 2;msg a 2 3;");
    hub.disconnect(&fire, DisconnectReason::ClosedByClient);
    hub.publish(&Actor::Admin, publish_req(&["b"], "4"))
        .await
        .unwrap();
    assert_eq!(hub.registry().channel_count(), 2);
}

/// A second wire format with its own encoding counter.
struct OtherFormat;
static OTHER_ENCODINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl WireFormat for OtherFormat {
    fn name(&self) -> &'static str {
        "other"
    }
    fn message(&self, m: &Message) -> Bytes {
        OTHER_ENCODINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Bytes::from(format!("other {};", m.offset))
    }
    fn direct(&self, _from: Option<ClientId>, data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }
    fn unsubscribed(&self, _channel: &ChannelName, _reason: &str) -> Option<Bytes> {
        None
    }
    fn keepalive(&self) -> Bytes {
        Bytes::new()
    }
}
static OTHER: OtherFormat = OtherFormat;

#[tokio::test]
async fn mixed_audience_is_encoded_once_per_format() {
    let hub = hub();
    let mut test_clients = Vec::new();
    let mut other_clients = Vec::new();
    for _ in 0..40 {
        test_clients.push(connect(&hub));
        other_clients.push(hub.connect(&OTHER, ClientInfo::new(None, "other")));
    }
    for c in test_clients.iter().chain(&other_clients) {
        hub.subscribe(&Actor::Admin, c, &[ch("mixed-audience")], None)
            .unwrap();
    }
    let before = OTHER_ENCODINGS.load(std::sync::atomic::Ordering::Relaxed);
    let r = hub
        .publish(&Actor::Admin, publish_req(&["mixed-audience"], "1"))
        .await
        .unwrap();
    assert_eq!(r[0].delivered, 80);
    // No other test uses OtherFormat, so this count is exact.
    assert_eq!(
        OTHER_ENCODINGS.load(std::sync::atomic::Ordering::Relaxed) - before,
        1
    );
    assert!(other_clients.iter().all(|c| written(c) == "other 1;"));
    assert!(
        test_clients
            .iter()
            .all(|c| written(c) == "msg mixed-audience 1 1;")
    );
}

/// All channels' history stays within `history_max_bytes`: the sweep drops the oldest
/// publications of all channels first, and removes ephemeral channels left with nothing.
#[tokio::test]
async fn the_history_budget_drops_the_oldest_publications_of_all_channels_first() {
    let entry = 10 + crate::history::ENTRY_OVERHEAD;
    let hub = hub_with(HubConfig {
        history_max_bytes: 4 * entry,
        channel_defaults: ChannelOptions {
            history_size: 100,
            ..ChannelOptions::default()
        },
        ..HubConfig::default()
    });
    let data = Bytes::from_static(b"\"12345678\"");
    for (i, channel) in ["a", "b", "a", "c", "b", "c"].iter().enumerate() {
        let req = PublishRequest {
            channels: vec![ChannelName::parse(channel).unwrap()],
            data: data.clone(),
            to: None,
            once_per_client: false,
        };
        hub.publish(&Actor::Admin, req).await.unwrap();
        // Publication times must differ for "oldest" to mean something.
        if i < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    let kept = |name: &str| {
        hub.registry()
            .lookup(&ChannelName::parse(name).unwrap())
            .map(|c| c.read_history(|h, _, _| h.iter().map(|e| e.offset).collect::<Vec<_>>()))
    };
    assert_eq!(hub.registry().history_budget().used(), 6 * entry);
    hub.history_sweep();
    assert_eq!(hub.registry().history_budget().used(), 4 * entry);
    // The first two publications (a:1, b:1) went; a keeps 2, b keeps 2, c both.
    assert_eq!(kept("a"), Some(vec![2]));
    assert_eq!(kept("b"), Some(vec![2]));
    assert_eq!(kept("c"), Some(vec![1, 2]));
    assert_eq!(hub.stats_snapshot().history_evicted, 2);
    // Expiring or evicting everything removes the channels (nobody is subscribed).
    let hub_small = hub_with(HubConfig {
        history_max_bytes: 1,
        channel_defaults: ChannelOptions {
            history_size: 100,
            ..ChannelOptions::default()
        },
        ..HubConfig::default()
    });
    let req = PublishRequest {
        channels: vec![ChannelName::parse("gone").unwrap()],
        data,
        to: None,
        once_per_client: false,
    };
    hub_small.publish(&Actor::Admin, req).await.unwrap();
    assert_eq!(hub_small.registry().channel_count(), 1);
    hub_small.history_sweep();
    assert_eq!(hub_small.registry().channel_count(), 0);
}

/// A channel that keeps history stays for its history TTL after its last subscriber left,
/// with its epoch, so a client that blinked resumes there and gets what was published
/// meanwhile; the sweep removes it once that time is over. One without history goes at once.
#[tokio::test]
async fn a_channel_that_keeps_history_lingers_for_its_ttl_after_its_last_subscriber() {
    let hub = hub_with(HubConfig {
        channel_defaults: ChannelOptions {
            history_size: 10,
            history_ttl_secs: 60,
            ..ChannelOptions::default()
        },
        ..HubConfig::default()
    });
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("kept")], None)
        .unwrap();
    let epoch = hub.registry().lookup(&ch("kept")).unwrap().summary().epoch;
    hub.disconnect(&a, DisconnectReason::ClosedByClient);
    // Nothing published yet, nobody subscribed: still there, same epoch.
    let channel = hub.registry().lookup(&ch("kept")).expect("lingers");
    assert_eq!(channel.summary().epoch, epoch);
    hub.publish(&Actor::Admin, publish_req(&["kept"], "1"))
        .await
        .unwrap();
    let b = connect(&hub);
    let done = hub
        .subscribe_replaying(&Actor::Admin, &b, &[ch("kept")], None, |_| {
            crate::history::Replay::After {
                epoch: &epoch,
                offset: 0,
            }
        })
        .unwrap();
    assert!(done.recovered[0].1.recovered);
    assert_eq!(written(&b), "msg kept 1 1;");
    hub.disconnect(&b, DisconnectReason::ClosedByClient);
    hub.registry().clear_history(&ch("kept"));
    // The sweep leaves it within the TTL and removes it after.
    let now = std::time::Instant::now();
    hub.registry().history_sweep(now);
    assert!(hub.registry().lookup(&ch("kept")).is_some());
    hub.registry()
        .history_sweep(now + std::time::Duration::from_secs(61));
    assert!(hub.registry().lookup(&ch("kept")).is_none());

    // Without history: gone with its last subscriber.
    let plain = hub_with(HubConfig::default());
    let c = connect(&plain);
    plain
        .subscribe(&Actor::Admin, &c, &[ch("plain")], None)
        .unwrap();
    plain.disconnect(&c, DisconnectReason::ClosedByClient);
    assert!(plain.registry().lookup(&ch("plain")).is_none());
}
