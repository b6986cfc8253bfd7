//! The MQTT v5 long tail over real sockets: topic aliases, shared subscriptions,
//! message expiry, subscription identifiers and overlap, No Local, Retain As
//! Published, retain handling, property pass-through, Maximum Packet Size, Receive
//! Maximum, Server Keep Alive, session expiry and the offline queue overflow policy.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use support::*;
use tollgate::broker::BrokerSettings;

fn sub_packet(pkid: u16, filters: Vec<p5::Filter>, id: Option<usize>) -> p5::Packet {
    let mut s = p5::Subscribe::new_many(
        filters,
        id.map(|id| p5::SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        }),
    );
    s.pkid = pkid;
    p5::Packet::Subscribe(s)
}

async fn expect_publish(raw: &mut Raw) -> p5::Publish {
    loop {
        match raw.read().await {
            Some(p5::Packet::Publish(p)) => return p,
            Some(_) => continue,
            None => panic!("connection closed while waiting for a publish"),
        }
    }
}

#[tokio::test]
async fn inbound_topic_alias_resolves_the_topic() {
    let b = start_broker().await;
    let mut s = v4(b.addr, "aliassub").await;
    s.subscribe("al/#", QoS::AtMostOnce).await;
    let mut raw = Raw::connect_v5(b.addr, "aliaspub").await;
    for (topic, payload) in [("al/x", "first"), ("", "second")] {
        let mut p = p5::Publish::new(topic, Q5::AtMostOnce, payload, None);
        p.properties = Some(p5::PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        });
        raw.send(&p5::Packet::Publish(p)).await;
    }
    for payload in ["first", "second"] {
        let got = s.publish().await;
        assert_eq!(got.topic, "al/x");
        assert_eq!(got.payload, Bytes::from(payload));
    }
    b.stop().await;
}

#[tokio::test]
async fn shared_subscription_round_robins_and_fails_over() {
    let b = start_broker().await;
    let mut a = v5(b.addr, "share-a").await;
    let mut c = v5(b.addr, "share-c").await;
    a.subscribe("$share/g/sh/#", Q5::AtLeastOnce).await;
    c.subscribe("$share/g/sh/#", Q5::AtLeastOnce).await;
    let p = v5(b.addr, "share-p").await;
    for i in 0..4 {
        p.client
            .publish("sh/x", Q5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(a.publish().await.payload);
        got.push(c.publish().await.payload);
    }
    got.sort();
    assert_eq!(got, vec!["0", "1", "2", "3"]);
    a.client.disconnect().await.unwrap();
    wait_until("2 clients connected", || {
        b.broker.stats().clients_connected == 2
    })
    .await;
    for i in 4..6 {
        p.client
            .publish("sh/x", Q5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    assert_eq!(c.publish().await.payload, Bytes::from("4"));
    assert_eq!(c.publish().await.payload, Bytes::from("5"));
    b.stop().await;
}

#[tokio::test]
async fn shared_group_without_online_member_queues_for_a_persistent_member() {
    let b = start_broker().await;
    let mut o = v5_options(b.addr, "share-persist");
    o.set_session_expiry_interval(Some(60));
    let mut m = v5_connect(o.clone()).await;
    m.subscribe("$share/g2/q/#", Q5::AtLeastOnce).await;
    m.client.disconnect().await.unwrap();
    wait_until("no client connected", || {
        b.broker.stats().clients_connected == 0
    })
    .await;
    let p = v5(b.addr, "share-p2").await;
    p.client
        .publish("q/1", Q5::AtLeastOnce, false, "kept")
        .await
        .unwrap();
    wait_until("1 message received", || {
        b.broker.stats().messages_received == 1
    })
    .await;
    o.set_clean_start(false);
    let mut m = v5_connect(o).await;
    assert!(m.connack.as_ref().unwrap().session_present);
    assert_eq!(m.publish().await.payload, Bytes::from("kept"));
    b.stop().await;
}

#[tokio::test]
async fn message_expiry_drops_expired_queued_messages_and_counts_down() {
    let b = start_broker().await;
    let mut o = v5_options(b.addr, "expiring");
    o.set_session_expiry_interval(Some(60));
    let mut s = v5_connect(o.clone()).await;
    s.subscribe("ex/#", Q5::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    wait_until("no client connected", || {
        b.broker.stats().clients_connected == 0
    })
    .await;
    let p = v5(b.addr, "ex-pub").await;
    let published = tokio::time::Instant::now();
    for (payload, expiry) in [("short", 1), ("long", 60)] {
        let props = p5::PublishProperties {
            message_expiry_interval: Some(expiry),
            ..Default::default()
        };
        p.client
            .publish_with_properties("ex/x", Q5::AtLeastOnce, false, payload, props)
            .await
            .unwrap();
    }
    wait_until("2 messages received", || {
        b.broker.stats().messages_received == 2
    })
    .await;
    // Sleeping longer than the 1 s expiry only makes "short" more surely expired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    o.set_clean_start(false);
    let mut s = v5_connect(o).await;
    let got = s.publish().await;
    assert_eq!(got.payload, Bytes::from("long"));
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    // At least 1.5 s have passed, and at most what this test has measured (a loaded
    // machine may take seconds; the bound follows it instead of a fixed window).
    let waited = published.elapsed().as_secs() as u32;
    assert!(
        left < 60 && left + waited + 1 >= 60,
        "expiry counted down to {left} after {waited} s"
    );
    s.assert_nothing_before_marker(&p.client, "ex/marker").await;
    b.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_highest_qos_with_all_ids() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "overlap").await;
    raw.send(&sub_packet(
        1,
        vec![p5::Filter::new("o/#", Q5::AtMostOnce)],
        Some(1),
    ))
    .await;
    raw.send(&sub_packet(
        2,
        vec![p5::Filter::new("o/+", Q5::AtLeastOnce)],
        Some(2),
    ))
    .await;
    let p = v4(b.addr, "overlap-pub").await;
    p.client
        .publish("o/x", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let got = expect_publish(&mut raw).await;
    assert_eq!(got.qos, Q5::AtLeastOnce);
    let mut ids = got.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    raw.send(&p5::Packet::PubAck(p5::PubAck::new(got.pkid, None)))
        .await;
    p.client
        .publish("o/y", QoS::AtMostOnce, false, "two")
        .await
        .unwrap();
    let second = expect_publish(&mut raw).await;
    assert_eq!(
        second.payload,
        Bytes::from("two"),
        "the first message came exactly once"
    );
    b.stop().await;
}

#[tokio::test]
async fn no_local_skips_the_publishers_own_messages() {
    let b = start_broker().await;
    let mut me = v5(b.addr, "nolocal").await;
    let mut f = p5::Filter::new("nl", Q5::AtLeastOnce);
    f.nolocal = true;
    me.client.subscribe_many(vec![f]).await.unwrap();
    me.suback().await;
    let mut other = v5(b.addr, "nl-other").await;
    other.subscribe("nl", Q5::AtLeastOnce).await;
    me.client
        .publish("nl", Q5::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    assert_eq!(other.publish().await.payload, Bytes::from("mine"));
    // "mine" was routed (other has it) before the marker from other.
    me.assert_nothing_before_marker(&other.client, "nl").await;
    b.stop().await;
}

#[tokio::test]
async fn retain_as_published_and_retain_handling() {
    let b = start_broker().await;
    let p = v5(b.addr, "rap-pub").await;
    p.client
        .publish("rh/x", Q5::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    wait_until("1 retained message", || {
        b.broker.stats().retained_messages == 1
    })
    .await;

    let mut never = v5(b.addr, "rh-never").await;
    let mut f = p5::Filter::new("rh/#", Q5::AtLeastOnce);
    f.retain_forward_rule = p5::RetainForwardRule::Never;
    never.client.subscribe_many(vec![f]).await.unwrap();
    never.suback().await;
    never
        .assert_nothing_before_marker(&p.client, "rh/marker")
        .await;

    let mut new_only = v5(b.addr, "rh-new").await;
    let mut f = p5::Filter::new("rh/#", Q5::AtLeastOnce);
    f.retain_forward_rule = p5::RetainForwardRule::OnNewSubscribe;
    f.preserve_retain = true;
    new_only
        .client
        .subscribe_many(vec![f.clone()])
        .await
        .unwrap();
    new_only.suback().await;
    assert!(new_only.publish().await.retain);
    new_only.client.subscribe_many(vec![f]).await.unwrap();
    new_only.suback().await;
    new_only
        .assert_nothing_before_marker(&p.client, "rh/marker")
        .await;
    // Retain As Published keeps the flag on live messages; without it it is cleared.
    let mut plain = v5(b.addr, "rh-plain").await;
    let mut f = p5::Filter::new("rh/#", Q5::AtLeastOnce);
    f.retain_forward_rule = p5::RetainForwardRule::Never;
    plain.client.subscribe_many(vec![f]).await.unwrap();
    plain.suback().await;
    p.client
        .publish("rh/x", Q5::AtLeastOnce, true, "live")
        .await
        .unwrap();
    assert!(new_only.publish().await.retain);
    assert!(!plain.publish().await.retain);
    b.stop().await;
}

#[tokio::test]
async fn v5_properties_pass_through_unchanged() {
    let b = start_broker().await;
    let mut s = v5(b.addr, "props-sub").await;
    s.subscribe("pp/#", Q5::AtLeastOnce).await;
    let p = v5(b.addr, "props-pub").await;
    let props = p5::PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    p.client
        .publish_with_properties("pp/x", Q5::AtLeastOnce, false, "{}", props.clone())
        .await
        .unwrap();
    let got = s.publish().await.properties.unwrap();
    assert_eq!(got.payload_format_indicator, props.payload_format_indicator);
    assert_eq!(got.response_topic, props.response_topic);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.user_properties, props.user_properties);
    assert_eq!(got.content_type, props.content_type);
    b.stop().await;
}

#[tokio::test]
async fn messages_larger_than_the_clients_maximum_packet_size_are_dropped_and_counted() {
    let b = start_broker().await;
    let mut o = v5_options(b.addr, "smallpackets");
    o.set_max_packet_size(Some(200));
    let mut s = v5_connect(o).await;
    s.subscribe("mp/#", Q5::AtLeastOnce).await;
    let p = v5(b.addr, "mp-pub").await;
    p.client
        .publish("mp/x", Q5::AtLeastOnce, false, vec![7u8; 1000])
        .await
        .unwrap();
    p.client
        .publish("mp/x", Q5::AtLeastOnce, false, "small")
        .await
        .unwrap();
    assert_eq!(s.publish().await.payload, Bytes::from("small"));
    assert_eq!(b.broker.stats().dropped_oversize, 1);
    b.stop().await;
}

#[tokio::test]
async fn client_receive_maximum_limits_messages_in_flight() {
    let b = start_broker().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "slow".into(),
            clean_start: true,
            properties: Some(p5::ConnectProperties {
                receive_maximum: Some(2),
                ..Default::default()
            }),
        },
        None,
        None,
    ))
    .await;
    let connack = match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => c,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    let props = connack.properties.unwrap();
    assert_eq!(
        props.receive_max,
        Some(BrokerSettings::default().receive_maximum)
    );
    raw.send(&sub_packet(
        1,
        vec![p5::Filter::new("rm", Q5::AtLeastOnce)],
        None,
    ))
    .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::SubAck(_))));
    let p = v4(b.addr, "rm-pub").await;
    for i in 0..5 {
        p.client
            .publish("rm", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let first = expect_publish(&mut raw).await;
    let second = expect_publish(&mut raw).await;
    assert_ne!(first.pkid, second.pkid);
    // A fixed window: no marker can pass the Receive Maximum to prove absence.
    let third = tokio::time::timeout(Duration::from_millis(300), raw.read()).await;
    assert!(
        third.is_err(),
        "a third message must wait for an acknowledgement"
    );
    raw.send(&p5::Packet::PubAck(p5::PubAck::new(first.pkid, None)))
        .await;
    let third = expect_publish(&mut raw).await;
    assert_eq!(third.payload, Bytes::from("2"));
    assert_ne!(third.pkid, second.pkid, "never reuse an id still in flight");
    b.stop().await;
}

#[tokio::test]
async fn server_keep_alive_is_announced_when_the_client_asks_too_much() {
    let b = start_broker_with(BrokerSettings {
        max_keepalive: 10,
        ..test_settings()
    })
    .await;
    let mut o = v5_options(b.addr, "ka");
    o.set_keep_alive(Duration::from_secs(60));
    let c = v5_connect(o).await;
    let props = c.connack.unwrap().properties.unwrap();
    assert_eq!(props.server_keep_alive, Some(10));
    b.stop().await;
}

#[tokio::test]
async fn session_expiry_removes_the_session_after_the_interval() {
    let b = start_broker().await;
    let mut o = v5_options(b.addr, "expires");
    o.set_session_expiry_interval(Some(1));
    let mut s = v5_connect(o).await;
    s.subscribe("se/#", Q5::AtLeastOnce).await;
    let disconnected = tokio::time::Instant::now();
    s.client.disconnect().await.unwrap();
    // The session outlives its connection for the interval: removal is never earlier
    // than 1 s after the DISCONNECT (a lower bound, which a slow machine cannot break).
    wait_until("session expired", || b.broker.stats().sessions == 0).await;
    assert!(
        disconnected.elapsed() >= Duration::from_millis(990),
        "session removed {:?} after the DISCONNECT",
        disconnected.elapsed()
    );
    assert_eq!(b.broker.stats().subscriptions, 0);
    assert_eq!(b.broker.stats().subscription_trie_nodes, 0);
    b.stop().await;
}

#[tokio::test]
async fn offline_queue_overflow_drops_the_oldest_and_counts() {
    let b = start_broker_with(BrokerSettings {
        max_offline_messages: 3,
        ..test_settings()
    })
    .await;
    let mut o = v4_options(b.addr, "overflow");
    o.set_clean_session(false);
    let (mut s, _) = v4_connect(o.clone()).await;
    s.subscribe("of/#", QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    s.closed().await;
    let mut p = v4(b.addr, "of-pub").await;
    for i in 0..5 {
        p.client
            .publish("of/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
        p.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
    }
    assert_eq!(b.broker.stats().dropped_queue_overflow, 2);
    let (mut s, present) = v4_connect(o).await;
    assert!(present);
    for i in 2..5 {
        assert_eq!(s.publish().await.payload, Bytes::from(format!("m{i}")));
    }
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_shared_message_moves_to_another_member_when_a_session_ends() {
    let b = start_broker().await;
    let mut a = Raw::connect_v5(b.addr, "share-first").await;
    a.send(&sub_packet(
        1,
        vec![p5::Filter::new("$share/g3/mv/#", Q5::AtLeastOnce)],
        None,
    ))
    .await;
    assert!(matches!(a.read().await, Some(p5::Packet::SubAck(_))));
    let p = v4(b.addr, "mv-pub").await;
    p.client
        .publish("mv/1", QoS::AtLeastOnce, false, "handoff")
        .await
        .unwrap();
    let first = expect_publish(&mut a).await;
    assert_eq!(first.payload, Bytes::from("handoff"));
    let mut other = v5(b.addr, "share-second").await;
    other.subscribe("$share/g3/mv/#", Q5::AtLeastOnce).await;
    // `a` never acknowledges and leaves; its clean session ends.
    drop(a);
    assert_eq!(other.publish().await.payload, Bytes::from("handoff"));
    b.stop().await;
}
