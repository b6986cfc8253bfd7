//! Everything a client can size has a bound that tells the truth: queue weights
//! count properties, the QoS 0 slow-consumer guard counts bytes, and the caps on
//! subscriptions per client, retained messages and persistent sessions refuse with
//! the protocol's reaction and a counter; the queue overflow policies drop the
//! oldest, drop the new, or slow the publishers down.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::*;
use tokio::io::AsyncWriteExt;
use tollgate::broker::{BrokerSettings, QueueOverflow};

fn settings(f: impl FnOnce(&mut BrokerSettings)) -> BrokerSettings {
    let mut s = test_settings();
    f(&mut s);
    s
}

async fn with_policy(settings: BrokerSettings, policy: QueueOverflow) -> TestBroker {
    let listener = tollgate::broker::ListenerContext {
        queue_overflow: policy,
        ..test_listener()
    };
    start_broker_on(
        settings,
        std::sync::Arc::new(tollgate::auth::AnonymousOnly),
        std::sync::Arc::new(tollgate::acl::AllowAll),
        listener,
    )
    .await
}

/// A persistent v5 subscriber to `filter` that goes offline.
async fn offline_subscriber(addr: std::net::SocketAddr, id: &str, filter: &str) {
    let (mut raw, _) = raw_v5(addr, id, None, true, 3600, None).await;
    raw.send(&v5_subscribe(filter, 1)).await;
    raw_wait(&mut raw, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    raw.send(&p5::Packet::Disconnect(p5::Disconnect::new(
        p5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    assert!(raw.read().await.is_none());
}

/// Publish `packets` and wait for the PUBACK of a trailing QoS 1 marker on a topic
/// nobody holds back: every PUBACK the broker sends for `packets` without holding
/// it comes before the marker's. Returns the packet ids acknowledged before it.
async fn publish_then_marker(publisher: &mut Raw, packets: &[p5::Packet]) -> Vec<u16> {
    let mut bytes = bytes::BytesMut::new();
    for p in packets {
        p.write(&mut bytes, None).expect("encodable");
    }
    v5_publish("unrelated/marker", Q5::AtLeastOnce, 999, "m")
        .write(&mut bytes, None)
        .expect("encodable");
    publisher.send_bytes(&bytes).await;
    let mut acked = Vec::new();
    loop {
        match publisher.read().await {
            Some(p5::Packet::PubAck(a)) if a.pkid == 999 => return acked,
            Some(p5::Packet::PubAck(a)) => acked.push(a.pkid),
            Some(_) => {}
            None => panic!("publisher disconnected"),
        }
    }
}

/// Reconnect the persistent subscriber and collect `n` payloads, acknowledging each.
async fn drain_subscriber(addr: std::net::SocketAddr, id: &str, n: usize) -> Vec<Bytes> {
    let (mut raw, connack) = raw_v5(addr, id, None, false, 3600, None).await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    while got.len() < n {
        let p = raw_wait(&mut raw, |p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        raw.send(&p5::Packet::PubAck(p5::PubAck::new(p.pkid, None)))
            .await;
        got.push(p.payload);
    }
    got
}

fn numbered(topic: &str, n: u16) -> Vec<p5::Packet> {
    (1..=n)
        .map(|i| {
            let mut p = p5::Publish::new(topic, Q5::AtLeastOnce, Bytes::from(i.to_string()), None);
            p.pkid = i;
            p5::Packet::Publish(p)
        })
        .collect()
}

#[tokio::test]
async fn queue_weight_counts_properties() {
    let b = start_broker_with(settings(|s| s.max_offline_bytes = 64 * 1024)).await;
    offline_subscriber(b.addr, "sub", "w/#").await;
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    // 1 KiB of payload but 8 KiB of user properties each: only about 7 fit in 64 KiB.
    let packets: Vec<p5::Packet> = (1..=20u16)
        .map(|i| {
            let props = p5::PublishProperties {
                user_properties: vec![("k".into(), "v".repeat(8 * 1024))],
                ..Default::default()
            };
            let mut p = p5::Publish::new("w/x", Q5::AtLeastOnce, vec![b'p'; 1024], Some(props));
            p.pkid = i;
            p5::Packet::Publish(p)
        })
        .collect();
    publish_then_marker(&mut publisher, &packets).await;
    let stats = b.broker.stats();
    assert!(
        stats.dropped_queue_overflow >= 12,
        "properties not counted: {stats:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_drop_new_keeps_the_oldest() {
    for (policy, expected) in [
        (QueueOverflow::DropOldest, ["6", "7", "8", "9", "10"]),
        (QueueOverflow::DropNew, ["1", "2", "3", "4", "5"]),
    ] {
        let b = with_policy(settings(|s| s.max_offline_messages = 5), policy).await;
        offline_subscriber(b.addr, "sub", "q/#").await;
        let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
        let acked = publish_then_marker(&mut publisher, &numbered("q/x", 10)).await;
        assert_eq!(
            acked.len(),
            10,
            "{policy:?}: dropping policies acknowledge everything"
        );
        assert_eq!(b.broker.stats().dropped_queue_overflow, 5, "{policy:?}");
        let got = drain_subscriber(b.addr, "sub", 5).await;
        assert_eq!(got, expected.map(Bytes::from), "{policy:?}");
        b.stop().await;
    }
}

#[tokio::test]
async fn block_publishers_holds_acknowledgements_until_the_queue_drains() {
    let b = with_policy(
        settings(|s| s.max_offline_messages = 5),
        QueueOverflow::BlockPublishers,
    )
    .await;
    offline_subscriber(b.addr, "sub", "q/#").await;
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    let acked = publish_then_marker(&mut publisher, &numbered("q/x", 12)).await;
    assert_eq!(
        acked,
        vec![1, 2, 3, 4, 5],
        "acknowledged beyond the queue bound"
    );
    assert_eq!(b.broker.stats().publishers_blocked, 7);
    assert_eq!(b.broker.stats().dropped_queue_overflow, 0);
    // The subscriber comes back: nothing was lost, and the held PUBACKs follow.
    let got = drain_subscriber(b.addr, "sub", 12).await;
    let expected: Vec<Bytes> = (1..=12).map(|i: u16| Bytes::from(i.to_string())).collect();
    assert_eq!(got, expected);
    let mut rest = Vec::new();
    while rest.len() < 7 {
        match publisher.read().await {
            Some(p5::Packet::PubAck(a)) => {
                assert_eq!(a.reason, p5::PubAckReason::Success);
                rest.push(a.pkid)
            }
            Some(_) => {}
            None => panic!("publisher disconnected"),
        }
    }
    assert_eq!(rest, (6..=12).collect::<Vec<u16>>());
    b.stop().await;
}

#[tokio::test]
async fn block_publishers_stops_reading_a_v311_publisher() {
    let b = with_policy(
        settings(|s| {
            s.max_offline_messages = 2;
            s.receive_maximum = 3;
        }),
        QueueOverflow::BlockPublishers,
    )
    .await;
    offline_subscriber(b.addr, "sub", "q/#").await;
    // A 3.1.1 publisher: 2 queued, 3 held (its window), the rest stays in the socket.
    let mut publisher = tokio::net::TcpStream::connect(b.addr)
        .await
        .expect("connect");
    let mut out = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Connect::new("pub4")
        .write(&mut out)
        .expect("encodable");
    for i in 1..=20u16 {
        let mut p =
            rumqttc::mqttbytes::v4::Publish::new("q/x", rumqttc::QoS::AtLeastOnce, i.to_string());
        p.pkid = i;
        p.write(&mut out).expect("encodable");
    }
    publisher.write_all(&out).await.expect("write");
    wait_until("the publisher's window is held", || {
        b.broker.stats().publishers_blocked == 3
    })
    .await;
    // Nothing more is read from it while the window is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = b.broker.stats();
    assert_eq!(stats.publishers_blocked, 3, "{stats:?}");
    assert_eq!(stats.dropped_queue_overflow, 0);
    assert_eq!(stats.messages_received, 5);
    let got = drain_subscriber(b.addr, "sub", 20).await;
    assert_eq!(got.len(), 20);
    assert_eq!(b.broker.stats().dropped_queue_overflow, 0);
    b.stop().await;
}

#[tokio::test]
async fn qos0_slow_consumer_guard_counts_bytes() {
    let b = start_broker_with(settings(|s| {
        s.max_offline_bytes = 1024 * 1024;
        s.max_packet_size = 256 * 1024;
    }))
    .await;
    // A subscriber that never reads.
    let (mut stuck, _) = raw_v5(b.addr, "stuck", None, true, 0, None).await;
    stuck.send(&v5_subscribe("big/#", 1)).await;
    raw_wait(&mut stuck, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    // 400 x 64 KiB = 25 MiB: far fewer messages than the count guard (1,000), far
    // more bytes than socket buffers and the 1 MiB bound hold.
    for _ in 0..400 {
        publisher
            .send(&p5::Packet::Publish(p5::Publish::new(
                "big/x",
                Q5::AtMostOnce,
                vec![0u8; 64 * 1024],
                None,
            )))
            .await;
    }
    wait_until("QoS 0 messages dropped by the byte guard", || {
        b.broker.stats().dropped_slow_consumer > 0
    })
    .await;
    drop(stuck);
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_per_client_are_capped() {
    let b = start_broker_with(settings(|s| s.max_subscriptions_per_client = 3)).await;
    let (mut raw, _) = raw_v5(b.addr, "many", None, true, 0, None).await;
    let filters: Vec<p5::Filter> = ["a", "b", "c", "d", "a"]
        .iter()
        .map(|f| p5::Filter::new(*f, Q5::AtMostOnce))
        .collect();
    let mut s = p5::Subscribe::new_many(filters, None);
    s.pkid = 1;
    raw.send(&p5::Packet::Subscribe(s)).await;
    let suback = raw_wait(&mut raw, |p| match p {
        p5::Packet::SubAck(s) => Some(s.clone()),
        _ => None,
    })
    .await;
    let ok = p5::SubscribeReasonCode::Success(Q5::AtMostOnce);
    // A filter the session already has is a replacement, not one more.
    assert_eq!(
        suback.return_codes,
        vec![ok, ok, ok, p5::SubscribeReasonCode::QuotaExceeded, ok]
    );
    assert_eq!(b.broker.stats().refused_subscription_quota, 1);
    let mut c4 = v4(b.addr, "many4").await;
    for f in ["a", "b", "c"] {
        c4.subscribe(f, rumqttc::QoS::AtMostOnce).await;
    }
    c4.client
        .subscribe("d", rumqttc::QoS::AtMostOnce)
        .await
        .expect("queued");
    assert_eq!(
        c4.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    b.stop().await;
}

#[tokio::test]
async fn retained_store_is_capped_in_count_and_bytes() {
    let b = start_broker_with(settings(|s| {
        s.max_retained_messages = 3;
        s.max_retained_bytes = 10 * 1024;
    }))
    .await;
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    let retained = |topic: &str, size: usize, pkid: u16| {
        let mut p = p5::Publish::new(topic, Q5::AtLeastOnce, vec![b'r'; size], None);
        p.retain = true;
        p.pkid = pkid;
        p5::Packet::Publish(p)
    };
    let packets = vec![
        retained("r/1", 100, 1),
        retained("r/2", 100, 2),
        retained("r/3", 100, 3),
        // A fourth topic: over the count.
        retained("r/4", 100, 4),
        // Replacing an existing one is fine within the bytes bound...
        retained("r/1", 200, 5),
        // ...but not beyond it.
        retained("r/2", 20 * 1024, 6),
    ];
    publish_then_marker(&mut publisher, &packets).await;
    let stats = b.broker.stats();
    assert_eq!(stats.retained_messages, 3);
    assert_eq!(stats.dropped_retained_quota, 2);
    assert_eq!(stats.retained_bytes, (3 + 200) + (3 + 100) + (3 + 100));
    // Clearing frees room for a new topic.
    let mut clear = p5::Publish::new("r/3", Q5::AtLeastOnce, Bytes::new(), None);
    clear.retain = true;
    clear.pkid = 7;
    publish_then_marker(
        &mut publisher,
        &[p5::Packet::Publish(clear), retained("r/4", 100, 8)],
    )
    .await;
    let mut reader = v4(b.addr, "reader").await;
    reader.subscribe("r/#", rumqttc::QoS::AtMostOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(reader.publish().await.topic);
    }
    topics.sort();
    assert_eq!(topics, vec!["r/1", "r/2", "r/4"]);
    b.stop().await;
}

#[tokio::test]
async fn persistent_sessions_are_capped() {
    let b = start_broker_with(settings(|s| s.max_persistent_sessions = 2)).await;
    let (_a, _) = raw_v5(b.addr, "p1", None, true, 3600, None).await;
    let (_b, _) = raw_v5(b.addr, "p2", None, true, 3600, None).await;
    let (mut third, connack) = raw_v5(b.addr, "p3", None, true, 3600, None).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::QuotaExceeded);
    assert!(third.read().await.is_none());
    // Clean sessions do not count; resuming an existing one is always possible.
    let (_clean, connack) = raw_v5(b.addr, "c1", None, true, 0, None).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::Success);
    let (_again, connack) = raw_v5(b.addr, "p1", None, false, 3600, None).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::Success);
    // 3.1.1: return code 3 (server unavailable).
    let mut o = v4_options(b.addr, "p4");
    o.set_clean_session(false);
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let refused = loop {
        match tokio::time::timeout(WAIT, el.poll()).await.expect("answer") {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => break code,
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => break c.code,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused, rumqttc::ConnectReturnCode::ServiceUnavailable);
    assert_eq!(b.broker.stats().refused_session_quota, 2);
    b.stop().await;
}

#[tokio::test]
async fn limits_reached_are_counted_on_sys_topics() {
    let b = start_broker_with(settings(|s| {
        s.max_subscriptions_per_client = 1;
        s.sys_interval = Duration::from_secs(1);
    }))
    .await;
    let mut c = v4(b.addr, "counted").await;
    c.subscribe(
        "$SYS/tollgate/refused/subscription_quota",
        rumqttc::QoS::AtMostOnce,
    )
    .await;
    c.client
        .subscribe("one/too/many", rumqttc::QoS::AtMostOnce)
        .await
        .expect("queued");
    assert_eq!(
        c.suback().await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    // The retained value first, then the next tick's: wait for the one that counts.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = c.publish().await;
        assert_eq!(p.topic, "$SYS/tollgate/refused/subscription_quota");
        if p.payload == "1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counter never reached 1"
        );
    }
    b.stop().await;
}

fn connect_with_alias_max(id: &str, max: u16) -> p5::Packet {
    let p5::Packet::Connect(mut connect, will, login) = v5_connect_packet(id, None, true, 0, None)
    else {
        unreachable!("v5_connect_packet builds a CONNECT")
    };
    if let Some(props) = connect.properties.as_mut() {
        props.topic_alias_max = Some(max);
    }
    p5::Packet::Connect(connect, will, login)
}

#[tokio::test]
async fn outbound_topic_aliases_towards_a_client_that_allows_two() {
    let b = start_broker().await;
    let mut sub = Raw::open(b.addr).await;
    sub.send(&connect_with_alias_max("aliased", 2)).await;
    raw_wait(&mut sub, |p| {
        matches!(p, p5::Packet::ConnAck(_)).then_some(())
    })
    .await;
    sub.send(&v5_subscribe("a/#", 1)).await;
    raw_wait(&mut sub, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    let topics = ["a/1", "a/1", "a/2", "a/3", "a/1"];
    let packets: Vec<p5::Packet> = topics
        .iter()
        .map(|t| v5_publish(t, Q5::AtMostOnce, 0, "x"))
        .collect();
    publish_then_marker(&mut publisher, &packets).await;
    let mut seen = Vec::new();
    while seen.len() < topics.len() {
        let p = raw_wait(&mut sub, |p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        let alias = p.properties.and_then(|p| p.topic_alias);
        seen.push((String::from_utf8(p.topic.to_vec()).expect("utf8"), alias));
    }
    assert_eq!(
        seen,
        vec![
            ("a/1".into(), Some(1)),
            ("".into(), Some(1)),
            ("a/2".into(), Some(2)),
            ("a/3".into(), Some(1)),
            ("a/1".into(), Some(2)),
        ]
    );
    // A client that announced none gets full topics.
    let (mut plain, _) = raw_v5(b.addr, "plain", None, true, 0, None).await;
    plain.send(&v5_subscribe("a/#", 1)).await;
    raw_wait(&mut plain, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    publish_then_marker(&mut publisher, &[v5_publish("a/9", Q5::AtMostOnce, 0, "x")]).await;
    let p = raw_wait(&mut plain, |p| match p {
        p5::Packet::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(p.topic, Bytes::from("a/9"));
    assert!(p.properties.and_then(|p| p.topic_alias).is_none());
    b.stop().await;
}

#[tokio::test]
async fn inbound_topic_aliases_are_bounded_in_bytes() {
    let b = start_broker().await;
    let (mut raw, _) = raw_v5(b.addr, "aliases", None, true, 0, None).await;
    // 32 aliases (the default maximum) of 4 KiB topics: more than 64 KiB in all.
    let mut bytes = bytes::BytesMut::new();
    for alias in 1..=32u16 {
        let topic = format!("{alias:02}/{}", "t".repeat(4096));
        let props = p5::PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        p5::Publish::new(topic, Q5::AtMostOnce, "x", Some(props))
            .write(&mut bytes)
            .expect("encodable");
    }
    raw.send_bytes(&bytes).await;
    let reason = raw_wait(&mut raw, |p| match p {
        p5::Packet::Disconnect(d) => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.reason_code, p5::DisconnectReasonCode::QuotaExceeded);
    b.stop().await;
}

#[tokio::test]
async fn audit_event_counts_and_untracked_login_failures_are_on_sys_topics() {
    let b = start_broker_with(settings(|s| s.sys_interval = Duration::from_secs(1))).await;
    let mut c = v4(b.addr, "audit-counted").await;
    c.subscribe(
        "$SYS/tollgate/audit/events/client_connected",
        rumqttc::QoS::AtMostOnce,
    )
    .await;
    c.subscribe(
        "$SYS/tollgate/auth/untracked_failures",
        rumqttc::QoS::AtMostOnce,
    )
    .await;
    let (mut connected, mut untracked) = (None, None);
    while connected.is_none() || untracked.is_none() {
        let p = c.publish().await;
        let value: u64 = std::str::from_utf8(&p.payload)
            .expect("utf-8")
            .parse()
            .expect("a count");
        match p.topic.as_str() {
            "$SYS/tollgate/audit/events/client_connected" => connected = Some(value),
            "$SYS/tollgate/auth/untracked_failures" => untracked = Some(value),
            other => panic!("unexpected {other}"),
        }
    }
    // This client's own CONNECT is one of the events counted (process-wide counters).
    assert!(connected.expect("seen") >= 1);
    b.stop().await;
}
