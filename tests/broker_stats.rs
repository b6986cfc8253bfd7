//! `$SYS/broker/...` statistics, `Broker::stats()`, and memory bounded by live state.

mod support;

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use support::raw::{self, Connect, RawClient, DISCONNECT_NORMAL};
use support::*;
use tollgate::auth::Identity;
use tollgate::broker::{BrokerSettings, InternalOptions};

/// Limit for bulk traffic to be read (an upper bound for a stuck broker on 2 shared
/// cores, not a performance figure).
const BULK: Duration = Duration::from_secs(120);

#[tokio::test]
async fn sys_topics_are_published_retained_with_mosquitto_names() {
    let b = start_broker_with(BrokerSettings {
        sys_interval: Duration::from_millis(200),
        ..test_settings()
    })
    .await;
    let p = v4(b.addr, "sys-pub").await;
    p.client
        .publish("some/topic", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    let mut s = v4(b.addr, "sys-sub").await;
    s.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let wanted = [
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ];
    let mut seen = std::collections::HashMap::new();
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let m = s.publish().await;
        seen.insert(
            m.topic.clone(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        );
    }
    assert_eq!(seen["$SYS/broker/clients/connected"], "2");
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // A client may not publish into $SYS: the next uptime seen is the broker's own.
    p.client
        .publish("$SYS/broker/uptime", QoS::AtMostOnce, false, "fake")
        .await
        .unwrap();
    loop {
        let m = s.publish().await;
        if m.topic == "$SYS/broker/uptime" {
            assert!(m.payload.ends_with(b" seconds"), "got {:?}", m.payload);
            break;
        }
    }
    let stats = b.broker.stats();
    assert!(stats.messages_received >= 1);
    assert!(stats.bytes_received > 0 && stats.bytes_sent > 0);
    assert_eq!(stats.subscriptions, 1);
    b.stop().await;
}

/// A v3.1.1 CONNECT, clean session, keep alive 30 s.
fn connect_30(id: &str) -> Vec<u8> {
    Connect {
        keep_alive: 30,
        ..Connect::new(false, id)
    }
    .encode()
}

/// Minimal v3.1.1 clean-session client: CONNECT, read CONNACK, DISCONNECT.
async fn connect_and_leave(addr: std::net::SocketAddr, id: &str) {
    let (mut s, connack) = RawClient::connect(addr, &connect_30(id)).await;
    assert_eq!((connack.flags, connack.body), (0, vec![0, 0]));
    s.send(&DISCONNECT_NORMAL).await;
    s.closed("after DISCONNECT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_by_live_state() {
    let b = start_broker().await;
    // 10,000 clients with random ids connect and leave (network and in-process).
    let mut tasks = Vec::new();
    for chunk in 0..20 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                connect_and_leave(
                    addr,
                    &format!("net-{chunk}-{i}-{:x}", rand::random::<u32>()),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..8000 {
        let mut c = b
            .broker
            .connect_internal(InternalOptions::new(Identity::internal(&format!(
                "int-{i}-{:x}",
                rand::random::<u32>()
            ))))
            .await
            .unwrap();
        if i % 100 == 0 {
            c.subscribe(&format!("tmp/{i}/#"), Q5::AtLeastOnce)
                .await
                .unwrap();
            c.subscribe(&format!("$share/g{i}/shared/{i}"), Q5::AtLeastOnce)
                .await
                .unwrap();
        }
        let _ = &mut c;
        c.disconnect().await;
    }
    // Live state is counted while it exists (so the zeros below are not a dead
    // counter): subscriptions and their trie nodes, retained messages, durable holds.
    live_state_is_counted(&b).await;
    // 100,000 distinct topics, no retain, no subscribers: one raw v3.1.1 client
    // writes them as QoS 0 PUBLISH packets in large batches.
    let (mut s, _) = RawClient::connect(b.addr, &connect_30("fl")).await;
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..100_000u32 {
        buf.extend(raw::publish(false, &format!("flood/{i}/value"), 0, 0, b"1"));
    }
    s.send(&buf).await;
    wait_until_within("100,000 flood messages received", BULK, || {
        b.broker.stats().messages_received >= 100_000
    })
    .await;
    s.send(&DISCONNECT_NORMAL).await;
    drop(s);
    wait_until("every session gone", || b.broker.stats().sessions == 0).await;
    let stats = b.broker.stats();
    assert_eq!(stats.sessions, 0, "{stats:?}");
    assert_eq!(stats.clients_connected, 0, "{stats:?}");
    assert_eq!(stats.subscriptions, 0, "{stats:?}");
    assert_eq!(stats.subscription_trie_nodes, 0, "{stats:?}");
    assert_eq!(stats.retained_messages, 0, "{stats:?}");
    assert_eq!(stats.durable_holds, 0, "{stats:?}");
    assert!(stats.messages_received >= 100_000);
    b.stop().await;
}

/// Builds state that must be counted, checks the counters follow it, then releases it
/// (the caller checks that everything is back to zero).
async fn live_state_is_counted(b: &TestBroker) {
    let c = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("live-state")))
        .await
        .unwrap();
    for i in 0..50 {
        c.subscribe(&format!("live/{i}/#"), Q5::AtLeastOnce)
            .await
            .unwrap();
    }
    // The router publishes its counters after each batch: wait for them, not a window.
    // `live`, 50 levels below it and a `#` under each.
    wait_until("50 subscriptions in at least 101 trie nodes", || {
        let stats = b.broker.stats();
        stats.subscriptions == 50 && stats.subscription_trie_nodes >= 101
    })
    .await;
    for i in 0..50 {
        c.unsubscribe(&format!("live/{i}/#")).await.unwrap();
    }
    wait_until("unsubscribing frees the trie", || {
        let stats = b.broker.stats();
        (stats.subscriptions, stats.subscription_trie_nodes) == (0, 0)
    })
    .await;

    // Retained messages on 1,000 distinct topics, then cleared with empty payloads.
    for i in 0..1000 {
        c.publish(&format!("kept/{i}"), "v", Q5::AtLeastOnce, true)
            .await
            .unwrap();
    }
    wait_until("1,000 retained messages", || {
        b.broker.stats().retained_messages == 1000
    })
    .await;
    for i in 0..1000 {
        c.publish(&format!("kept/{i}"), "", Q5::AtLeastOnce, true)
            .await
            .unwrap();
    }
    wait_until("retained messages cleared", || {
        b.broker.stats().retained_messages == 0
    })
    .await;

    // A durable subscriber holds a publisher's acknowledgement until it acks.
    let mut options = InternalOptions::new(Identity::internal("live-durable"));
    options.durable = true;
    let mut durable = b.broker.connect_internal(options).await.unwrap();
    durable.subscribe("held/#", Q5::AtLeastOnce).await.unwrap();
    {
        let publish = c.publish("held/1", "x", Q5::AtLeastOnce, false);
        tokio::pin!(publish);
        let delivery = tokio::select! {
            _ = &mut publish => panic!("publish resolved before the durable ack"),
            d = durable.recv() => d.expect("delivery"),
        };
        wait_until("one durable hold", || b.broker.stats().durable_holds == 1).await;
        delivery.ack().await.unwrap();
        tokio::time::timeout(WAIT, publish).await.unwrap().unwrap();
    }
    wait_until("hold released", || b.broker.stats().durable_holds == 0).await;
    durable.disconnect().await;
    c.disconnect().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_loses_qos0_not_broker_memory() {
    let b = start_broker_with(BrokerSettings {
        max_offline_messages: 100,
        ..test_settings()
    })
    .await;
    // Subscribes and then never reads its socket again.
    let mut stuck = Raw::connect_v5(b.addr, "stuck").await;
    let mut sub = rumqttc::v5::mqttbytes::v5::Subscribe::new(
        rumqttc::v5::mqttbytes::v5::Filter::new("flood/#", Q5::AtMostOnce),
        None,
    );
    sub.pkid = 1;
    stuck
        .send(&rumqttc::v5::mqttbytes::v5::Packet::Subscribe(sub))
        .await;
    let (mut s, _) = RawClient::connect(b.addr, &connect_30("fq")).await;
    // 3,000 QoS 0 messages of 16 KiB: far more than socket buffers hold.
    let packet = raw::publish(false, "flood/x", 0, 0, &[0u8; 16 * 1024]);
    for _ in 0..3000 {
        s.send(&packet).await;
    }
    wait_until_within("3,000 messages received", BULK, || {
        b.broker.stats().messages_received >= 3000
    })
    .await;
    let stats = b.broker.stats();
    assert_eq!(stats.messages_received, 3000);
    assert!(stats.dropped_slow_consumer > 0, "{stats:?}");
    // Everyone else is still served.
    let mut other = v4(b.addr, "not-stuck").await;
    other.subscribe("fine", QoS::AtMostOnce).await;
    other
        .client
        .publish("fine", QoS::AtMostOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(other.publish().await.payload, bytes::Bytes::from("ok"));
    // Shutdown does not wait for the stuck client's full socket.
    b.stop().await;
    drop(stuck);
}
