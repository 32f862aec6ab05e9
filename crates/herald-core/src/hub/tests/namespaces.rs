//! Namespaces: a channel `<ns>:...` takes the options of namespace `<ns>`, names without a
//! (configured) prefix take `channel_defaults`, and options set through the API win.

use super::*;
use crate::channel::SubscribePolicy;

/// `pub:` public, `priv:` private, `adm:` admin-only subscribe; `open:` clients publish,
/// `quiet:` no echo, `small:` 4-byte payloads, `two:` at most 2 subscribers.
fn ns_hub() -> Hub {
    let defaults = ChannelOptions::default();
    let with = |f: &dyn Fn(&mut ChannelOptions)| {
        let mut o = defaults.clone();
        f(&mut o);
        o
    };
    let namespaces = [
        ("pub", with(&|o| o.set_subscribe(SubscribePolicy::Public))),
        ("priv", with(&|o| o.set_subscribe(SubscribePolicy::Private))),
        ("adm", with(&|o| o.set_subscribe(SubscribePolicy::Admin))),
        ("open", with(&|o| o.client_publish = true)),
        (
            "quiet",
            with(&|o| {
                o.client_publish = true;
                o.echo = false
            }),
        ),
        ("small", with(&|o| o.max_payload_bytes = Some(4))),
        ("two", with(&|o| o.max_subscribers = Some(2))),
    ];
    hub_with(HubConfig {
        channel_defaults: defaults.clone(),
        namespaces: namespaces
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..Default::default()
    })
}

fn admin_client(hub: &Hub) -> Arc<ClientHandle> {
    let c = connect(hub);
    hub.make_admin(&c);
    c
}

#[test]
fn defaults_for_uses_the_prefix_before_the_first_colon() {
    let hub = ns_hub();
    let config = hub.config();
    assert!(config.defaults_for(&ch("small:a:b")).max_payload_bytes == Some(4));
    assert_eq!(config.defaults_for(&ch("lobby")), &config.channel_defaults);
    // An unconfigured prefix falls back to the defaults.
    assert_eq!(config.defaults_for(&ch("nope:x")), &config.channel_defaults);
    assert_eq!(config.defaults_for(&ch(":x")), &config.channel_defaults);
}

#[test]
fn public_namespace_admits_anyone() {
    let hub = ns_hub();
    let a = connect(&hub);
    hub.subscribe(&Actor::Client(a.clone()), &a, &[ch("pub:x")], None)
        .unwrap();
    assert_eq!(a.subscriptions(), vec![ch("pub:x")]);
}

#[tokio::test]
async fn private_namespace_refuses_without_token_and_admits_with_it() {
    let hub = ns_hub();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    // Ephemeral: nobody holds a token, so only admins get in.
    let err = hub
        .subscribe(&actor, &a, &[ch("priv:x")], None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(hub.registry().channel_count(), 0, "nothing was created");

    // Created through the API without options: it is private by its namespace.
    let created = hub
        .create_channel(
            &Actor::Admin,
            ch("priv:room"),
            hub.config().defaults_for(&ch("priv:room")).clone(),
        )
        .await
        .unwrap();
    let err = hub
        .subscribe(&actor, &a, &[ch("priv:room")], None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    let err = hub
        .subscribe(&actor, &a, &[ch("priv:room")], Some("wrong"))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    hub.subscribe(&actor, &a, &[ch("priv:room")], Some(&created.token))
        .unwrap();

    // Admins: an admin connection itself, and the admin subscribing a client.
    let admin = admin_client(&hub);
    hub.subscribe(&Actor::Client(admin.clone()), &admin, &[ch("priv:x")], None)
        .unwrap();
    let b = connect(&hub);
    hub.subscribe(&Actor::Admin, &b, &[ch("priv:y")], None)
        .unwrap();
}

#[tokio::test]
async fn admin_namespace_admits_admins_only_not_token_holders() {
    let hub = ns_hub();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    let err = hub.subscribe(&actor, &a, &[ch("adm:x")], None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert!(err.message.contains("only admins"), "{}", err.message);
    let created = hub
        .create_channel(
            &Actor::Admin,
            ch("adm:room"),
            hub.config().defaults_for(&ch("adm:room")).clone(),
        )
        .await
        .unwrap();
    let err = hub
        .subscribe(&actor, &a, &[ch("adm:room")], Some(&created.token))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    hub.subscribe(&Actor::Admin, &a, &[ch("adm:room"), ch("adm:x")], None)
        .unwrap();
    let admin = admin_client(&hub);
    hub.subscribe(&Actor::Client(admin.clone()), &admin, &[ch("adm:x")], None)
        .unwrap();
}

#[tokio::test]
async fn publish_by_namespace_clients_or_admin() {
    let hub = ns_hub();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    hub.subscribe(&actor, &a, &[ch("open:x"), ch("plain")], None)
        .unwrap();
    hub.publish(&actor, publish_req(&["open:x"], "1"))
        .await
        .unwrap();
    // Also for a channel nobody is subscribed to yet.
    hub.publish(&actor, publish_req(&["open:empty"], "1"))
        .await
        .unwrap();
    for name in ["plain", "pub:x", "nope:x"] {
        let err = hub
            .publish(&actor, publish_req(&[name], "1"))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden, "{name}");
    }
    // A refused channel stops the whole publication.
    let err = hub
        .publish(&actor, publish_req(&["open:x", "plain"], "2"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(written(&a), "msg open:x 1 1;");
    hub.publish(&Actor::Admin, publish_req(&["plain"], "3"))
        .await
        .unwrap();
    assert_eq!(written(&a), "msg plain 1 3;");
}

#[tokio::test]
async fn max_subscribers_from_namespace() {
    let hub = ns_hub();
    let clients: Vec<_> = (0..3).map(|_| connect(&hub)).collect();
    for c in &clients[..2] {
        hub.subscribe(&Actor::Client(c.clone()), c, &[ch("two:x")], None)
            .unwrap();
    }
    let c = &clients[2];
    let err = hub
        .subscribe(&Actor::Client(c.clone()), c, &[ch("two:x")], None)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelFull);
    // Another channel of the namespace has its own count.
    hub.subscribe(&Actor::Client(c.clone()), c, &[ch("two:y")], None)
        .unwrap();
}

#[tokio::test]
async fn echo_off_skips_the_publisher_only() {
    let hub = ns_hub();
    let a = connect(&hub);
    let b = connect(&hub);
    for c in [&a, &b] {
        hub.subscribe(
            &Actor::Client(c.clone()),
            c,
            &[ch("quiet:x"), ch("open:x")],
            None,
        )
        .unwrap();
    }
    let r = hub
        .publish(&Actor::Client(a.clone()), publish_req(&["quiet:x"], "1"))
        .await
        .unwrap();
    assert_eq!(r[0].delivered, 1);
    assert_eq!(written(&a), "");
    assert_eq!(written(&b), "msg quiet:x 1 1;");
    // The admin key (no publishing client) reaches everyone.
    hub.publish(&Actor::Admin, publish_req(&["quiet:x"], "2"))
        .await
        .unwrap();
    assert_eq!(written(&a), "msg quiet:x 2 2;");
    // Echo on (the default): the publisher gets its own message.
    hub.publish(&Actor::Client(a.clone()), publish_req(&["open:x"], "3"))
        .await
        .unwrap();
    assert_eq!(written(&a), "msg open:x 1 3;");
    assert_eq!(written(&b), "msg quiet:x 2 2;msg open:x 1 3;");
}

#[tokio::test]
async fn max_payload_bytes_per_namespace() {
    let hub = ns_hub();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("small:x")], None)
        .unwrap();
    hub.publish(&Actor::Admin, publish_req(&["small:x"], "1234"))
        .await
        .unwrap();
    for channels in [&["small:x"][..], &["plain", "small:y"]] {
        let err = hub
            .publish(&Actor::Admin, publish_req(channels, "12345"))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert!(
            err.message.contains("small:") && err.message.contains("at most 4"),
            "{}",
            err.message
        );
    }
    hub.publish(&Actor::Admin, publish_req(&["plain"], "12345"))
        .await
        .unwrap();
    assert_eq!(written(&a), "msg small:x 1 1234;");
}

#[tokio::test]
async fn options_set_through_the_api_override_the_namespace() {
    let hub = ns_hub();
    // priv: is private, but this channel was created public and open to clients, no echo.
    let mut options = hub.config().defaults_for(&ch("priv:open")).clone();
    options.set_subscribe(SubscribePolicy::Public);
    options.client_publish = true;
    options.echo = false;
    hub.create_channel(&Actor::Admin, ch("priv:open"), options)
        .await
        .unwrap();
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    hub.subscribe(&actor, &a, &[ch("priv:open")], None).unwrap();
    hub.publish(&actor, publish_req(&["priv:open"], "1"))
        .await
        .unwrap();
    assert_eq!(written(&a), "");
    // Replacing the options of the existing channel takes effect at once.
    let mut options = hub.config().defaults_for(&ch("priv:open")).clone();
    options.client_publish = true;
    hub.put_channel(&Actor::Admin, ch("priv:open"), options)
        .await
        .unwrap();
    hub.publish(&actor, publish_req(&["priv:open"], "2"))
        .await
        .unwrap();
    assert_eq!(written(&a), "msg priv:open 2 2;");
    let b = connect(&hub);
    let err = hub
        .subscribe(&Actor::Client(b.clone()), &b, &[ch("priv:open")], None)
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::Forbidden,
        "private again by its options"
    );
}

#[test]
fn names_without_a_prefix_use_the_defaults() {
    let hub = hub_with(HubConfig {
        channel_defaults: ChannelOptions {
            public: false,
            ..Default::default()
        },
        namespaces: [("pub".to_string(), ChannelOptions::default())].into(),
        ..Default::default()
    });
    let a = connect(&hub);
    let actor = Actor::Client(a.clone());
    for name in ["lobby", "other:lobby"] {
        let err = hub.subscribe(&actor, &a, &[ch(name)], None).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden, "{name}");
    }
    hub.subscribe(&actor, &a, &[ch("pub:lobby")], None).unwrap();
}

#[test]
fn ephemeral_channels_take_their_namespace_options() {
    let hub = ns_hub();
    let a = connect(&hub);
    hub.subscribe(&Actor::Admin, &a, &[ch("quiet:x"), ch("plain")], None)
        .unwrap();
    let quiet = hub.channel(&Actor::Admin, &ch("quiet:x")).unwrap();
    assert!(!quiet.persistent);
    assert!(!quiet.options.echo && quiet.options.client_publish);
    let plain = hub.channel(&Actor::Admin, &ch("plain")).unwrap();
    assert_eq!(plain.options, ChannelOptions::default());
}
