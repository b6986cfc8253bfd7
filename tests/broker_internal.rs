//! The in-process client API (adapters, bridge) and the authorization seam: same
//! semantics and ACL checks as network clients, and durable hold-back of PUBACKs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use support::*;
use tollgate::acl::{Access, AclDecision, Authorizer};
use tollgate::auth::{AnonymousOnly, Identity};
use tollgate::broker::{BrokerError, BrokerSettings, InternalOptions};

#[tokio::test]
async fn internal_client_exchanges_messages_with_network_clients() {
    let b = start_broker().await;
    let mut internal = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:test")))
        .await
        .unwrap();
    assert_eq!(
        internal.subscribe("in/#", Q5::AtLeastOnce).await.unwrap(),
        p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)
    );
    let net = v4(b.addr, "netpub").await;
    net.client
        .publish("in/1", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, internal.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.topic, "in/1");
    assert_eq!(d.payload, Bytes::from("hello"));
    assert_eq!(d.qos, Q5::AtLeastOnce);
    d.ack().await.unwrap();

    let mut sub = v5(b.addr, "netsub").await;
    sub.subscribe("out/#", Q5::AtLeastOnce).await;
    internal
        .publish("out/1", "from adapter", Q5::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(sub.publish().await.payload, Bytes::from("from adapter"));
    assert_eq!(
        internal.unsubscribe("in/#").await.unwrap(),
        p5::UnsubAckReason::Success
    );
    b.stop().await;
}

#[tokio::test]
async fn durable_subscriber_holds_back_puback_until_it_acks() {
    let b = start_broker().await;
    let mut options = InternalOptions::new(Identity::internal("bridge:journal"));
    options.durable = true;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("j/#", Q5::AtLeastOnce).await.unwrap();
    let mut publisher = v4(b.addr, "holdme").await;
    // Subscribed before `j/1`, so that no SUBACK wait can swallow an early PUBACK.
    publisher.subscribe("j-marker", QoS::AtMostOnce).await;
    publisher
        .client
        .publish("j/1", QoS::AtLeastOnce, false, "keep")
        .await
        .unwrap();
    let mut d = tokio::time::timeout(WAIT, durable.recv())
        .await
        .unwrap()
        .unwrap();
    let ack = d.take_ack().expect("QoS 1 delivery carries an ack handle");
    // No PUBACK while the durable subscriber has not stored the message: the publisher
    // sends itself a QoS 0 marker after `j/1`, and a PUBACK not held back would be
    // queued to this connection before the marker's delivery.
    publisher
        .client
        .publish("j-marker", QoS::AtMostOnce, false, MARKER)
        .await
        .unwrap();
    let first = publisher
        .wait_for(|p| match p {
            rumqttc::Packet::PubAck(a) => panic!("PUBACK {} before the durable ack", a.pkid),
            rumqttc::Packet::Publish(m) => Some(m.topic.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, "j-marker");
    ack.ack().await.unwrap();
    publisher
        .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn durable_subscriber_holds_back_in_process_publish() {
    let b = start_broker().await;
    let mut options = InternalOptions::new(Identity::internal("bridge:journal2"));
    options.durable = true;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("k/#", Q5::AtLeastOnce).await.unwrap();
    let publisher = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:pub")))
        .await
        .unwrap();
    let publish = publisher.publish("k/1", "x", Q5::AtLeastOnce, false);
    tokio::pin!(publish);
    let d = tokio::select! {
        _ = &mut publish => panic!("publish resolved before the durable ack"),
        d = durable.recv() => d.unwrap(),
    };
    // QoS 0 is never held, and serves as the marker: when it reaches the durable
    // subscriber, a `k/1` acknowledgement that was not held back has resolved already.
    publisher
        .publish("k/2", MARKER, Q5::AtMostOnce, false)
        .await
        .unwrap();
    internal_expect_marker(&mut durable, "k/2").await;
    tokio::select! {
        biased;
        _ = &mut publish => panic!("QoS 1 publish resolved before the durable ack"),
        _ = std::future::ready(()) => {}
    }
    assert_eq!(b.broker.stats().durable_holds, 1);
    d.ack().await.unwrap();
    tokio::time::timeout(WAIT, publish).await.unwrap().unwrap();
    assert_eq!(b.broker.stats().durable_holds, 0);
    b.stop().await;
}

/// Denies writes and subscriptions under `secret/`, and reads of `hidden/` for everyone
/// except `trusted`.
struct TestAcl;

impl Authorizer for TestAcl {
    fn check(&self, identity: &Identity, access: Access, topic: &str) -> AclDecision {
        let deny = match access {
            Access::Write | Access::Subscribe => topic.starts_with("secret"),
            Access::Read => topic.starts_with("hidden/") && identity.client_id != "trusted",
        };
        if deny {
            AclDecision::Deny {
                rule: Some("test".into()),
            }
        } else {
            AclDecision::Allow { rule: None }
        }
    }
}

#[tokio::test]
async fn every_publish_subscribe_and_delivery_passes_the_authorizer() {
    let b = start_broker_full(test_settings(), Arc::new(AnonymousOnly), Arc::new(TestAcl)).await;
    // v5 publish denied → PUBACK 0x87.
    let mut p = v5(b.addr, "writer").await;
    p.client
        .publish("secret/x", Q5::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let ack = p
        .wait_for(|p| match p {
            p5::Packet::PubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.reason, p5::PubAckReason::NotAuthorized);
    assert!(
        ack.properties.and_then(|p| p.reason_string).is_some(),
        "v5 refusals carry a reason string"
    );
    // v5 subscribe denied → 0x87; v3.1.1 → 0x80.
    let ack = p.subscribe("secret/#", Q5::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    let mut s4 = v4(b.addr, "reader").await;
    s4.client
        .subscribe("secret/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let ack = s4.suback().await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    // Delivery denied for `reader`, allowed for `trusted`.
    s4.subscribe("hidden/#", QoS::AtLeastOnce).await;
    let mut trusted = v4(b.addr, "trusted").await;
    trusted.subscribe("hidden/#", QoS::AtLeastOnce).await;
    p.client
        .publish("hidden/1", Q5::AtLeastOnce, false, "psst")
        .await
        .unwrap();
    assert_eq!(trusted.publish().await.topic, "hidden/1");
    // `hidden/1` went to the router before the marker from the same connection.
    s4.subscribe("marker", QoS::AtLeastOnce).await;
    s4.assert_nothing_before_marker(&p.client, "marker").await;
    // In-process clients get the same checks.
    let internal = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:acl")))
        .await
        .unwrap();
    assert!(matches!(
        internal
            .publish("secret/y", "no", Q5::AtMostOnce, false)
            .await,
        Err(BrokerError::Refused(_))
    ));
    assert_eq!(
        internal
            .subscribe("secret/#", Q5::AtMostOnce)
            .await
            .unwrap(),
        p5::SubscribeReasonCode::NotAuthorized
    );
    b.stop().await;
}

fn persistent_connect(id: &str, clean_start: bool) -> p5::Packet {
    p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start,
            properties: Some(p5::ConnectProperties {
                session_expiry_interval: Some(60),
                ..Default::default()
            }),
        },
        None,
        None,
    )
}

#[tokio::test]
async fn held_puback_survives_publisher_reconnect_and_resend_is_not_routed_twice() {
    let b = start_broker().await;
    let mut options = InternalOptions::new(Identity::internal("bridge:journal3"));
    options.durable = true;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("h/#", Q5::AtLeastOnce).await.unwrap();

    let mut raw = Raw::open(b.addr).await;
    raw.send(&persistent_connect("resender", true)).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
    let mut publish = p5::Publish::new("h/1", Q5::AtLeastOnce, "once", None);
    publish.pkid = 5;
    raw.send(&p5::Packet::Publish(publish.clone())).await;
    let d = tokio::time::timeout(WAIT, durable.recv())
        .await
        .unwrap()
        .unwrap();
    drop(raw);

    let mut raw = Raw::open(b.addr).await;
    raw.send(&persistent_connect("resender", false)).await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => assert!(c.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    publish.dup = true;
    raw.send(&p5::Packet::Publish(publish)).await;
    // A resend of a held message is not routed again: a QoS 0 marker sent after it on
    // the same connection is the next delivery.
    raw.send(&p5::Packet::Publish(p5::Publish::new(
        "h/marker",
        Q5::AtMostOnce,
        MARKER,
        None,
    )))
    .await;
    internal_expect_marker(&mut durable, "h/marker").await;
    d.ack().await.unwrap();
    match raw.read().await {
        Some(p5::Packet::PubAck(a)) => assert_eq!(a.pkid, 5),
        other => panic!("expected PUBACK 5, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn message_a_durable_subscriber_loses_is_refused_with_quota_exceeded() {
    let b = start_broker_with(tollgate::broker::BrokerSettings {
        max_offline_messages: 1,
        ..test_settings()
    })
    .await;
    let mut options = InternalOptions::new(Identity::internal("bridge:small"));
    options.durable = true;
    options.receive_maximum = 1;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("lq/#", Q5::AtLeastOnce).await.unwrap();
    let mut raw = Raw::connect_v5(b.addr, "lq-pub").await;
    for pkid in 1..=3 {
        let mut p = p5::Publish::new("lq/x", Q5::AtLeastOnce, format!("{pkid}"), None);
        p.pkid = pkid;
        raw.send(&p5::Packet::Publish(p)).await;
    }
    // 1 is in flight to the durable subscriber, 2 was queued and pushed out by 3.
    match raw.read().await {
        Some(p5::Packet::PubAck(a)) => {
            assert_eq!(a.pkid, 2);
            assert_eq!(a.reason, p5::PubAckReason::QuotaExceeded);
        }
        other => panic!("expected PUBACK 0x97 for 2, got {other:?}"),
    }
    for expected in [1u16, 3] {
        let d = tokio::time::timeout(WAIT, durable.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.payload, Bytes::from(expected.to_string()));
        d.ack().await.unwrap();
        match raw.read().await {
            Some(p5::Packet::PubAck(a)) => {
                assert_eq!(a.pkid, expected);
                assert_eq!(a.reason, p5::PubAckReason::Success);
            }
            other => panic!("expected PUBACK for {expected}, got {other:?}"),
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn internal_no_local_subscription_skips_own_publications() {
    let b = start_broker().await;
    let mut bridge = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("bridge:loop")))
        .await
        .unwrap();
    let mut f = p5::Filter::new("nl2/#", Q5::AtLeastOnce);
    f.nolocal = true;
    assert_eq!(
        bridge.subscribe_filter(f).await.unwrap(),
        p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)
    );
    bridge
        .publish("nl2/own", "mine", Q5::AtLeastOnce, false)
        .await
        .unwrap();
    let net = v4(b.addr, "nl2-pub").await;
    net.client
        .publish("nl2/theirs", QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, bridge.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.topic, "nl2/theirs");
    b.stop().await;
}

#[tokio::test]
async fn v311_publisher_over_receive_maximum_is_paused_not_disconnected() {
    let b = start_broker_with(BrokerSettings {
        receive_maximum: 2,
        ..test_settings()
    })
    .await;
    let mut options = InternalOptions::new(Identity::internal("bridge:slow"));
    options.durable = true;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("bp/#", Q5::AtLeastOnce).await.unwrap();
    let mut publisher = v4(b.addr, "burst").await;
    for i in 0..5 {
        publisher
            .client
            .publish(format!("bp/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let mut acks = Vec::new();
    for i in 0..2 {
        let mut d = tokio::time::timeout(WAIT, durable.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.topic, format!("bp/{i}"));
        acks.push(d.take_ack().unwrap());
    }
    // Two unacknowledged: the third stays in the socket. A fixed window, because no
    // marker could overtake a socket the broker has stopped reading.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), durable.recv())
            .await
            .is_err(),
        "the broker must stop reading at the inbound window"
    );
    // Each ack frees one slot; the rest arrive in order and nobody is disconnected.
    for a in acks {
        a.ack().await.unwrap();
    }
    for i in 2..5 {
        let d = tokio::time::timeout(WAIT, durable.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.topic, format!("bp/{i}"));
        d.ack().await.unwrap();
    }
    let mut pubacks = 0;
    while pubacks < 5 {
        publisher
            .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
        pubacks += 1;
    }
    assert_eq!(b.broker.stats().clients_connected, 2);
    b.stop().await;
}
