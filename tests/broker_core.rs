//! Core broker behaviour over real sockets: CONNECT/CONNACK, QoS 0/1/2 both ways,
//! wildcards, retained messages, sessions, wills, keepalive, takeover, shutdown,
//! and interoperability with Debian's mosquitto_pub/mosquitto_sub.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use support::raw;
use support::*;

#[tokio::test]
async fn v311_and_v5_clients_exchange_qos0_1_2() {
    let b = start_broker().await;
    let mut s4 = v4(b.addr, "sub4").await;
    let mut s5 = v5(b.addr, "sub5").await;
    s4.subscribe("t/#", QoS::ExactlyOnce).await;
    s5.subscribe("t/#", Q5::ExactlyOnce).await;
    let p4 = v4(b.addr, "pub4").await;
    let p5c = v5(b.addr, "pub5").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        p4.client
            .publish(format!("t/{i}"), qos, false, format!("v4-{i}"))
            .await
            .unwrap();
        let got = s4.publish().await;
        assert_eq!(got.payload, Bytes::from(format!("v4-{i}")));
        assert_eq!(got.qos, qos);
        let got = s5.publish().await;
        assert_eq!(got.payload, Bytes::from(format!("v4-{i}")));
        assert_eq!(got.qos as u8, qos as u8);
    }
    for (i, qos) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        p5c.client
            .publish(format!("t/x{i}"), qos, false, format!("v5-{i}"))
            .await
            .unwrap();
        assert_eq!(s4.publish().await.payload, Bytes::from(format!("v5-{i}")));
        let got = s5.publish().await;
        assert_eq!(got.topic, Bytes::from(format!("t/x{i}")));
        assert_eq!(got.qos, qos);
    }
    b.stop().await;
}

#[tokio::test]
async fn publisher_gets_puback_and_pubcomp() {
    let b = start_broker().await;
    let mut p = v4(b.addr, "acks").await;
    p.client
        .publish("nobody/listens", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    p.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await;
    p.client
        .publish("nobody/listens", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    p.wait_for(|p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(()))
        .await;
    b.stop().await;
}

#[tokio::test]
async fn wildcards_match_and_leading_wildcards_skip_dollar_topics() {
    let b = start_broker().await;
    let mut all = v4(b.addr, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = v4(b.addr, "plus").await;
    plus.subscribe("a/+/c", QoS::AtMostOnce).await;
    let mut dollar = v4(b.addr, "dollar").await;
    dollar.subscribe("$app/#", QoS::AtMostOnce).await;
    let p = v4(b.addr, "p").await;
    p.client
        .publish("$app/x", QoS::AtMostOnce, false, "d")
        .await
        .unwrap();
    p.client
        .publish("a/b/c", QoS::AtMostOnce, false, "abc")
        .await
        .unwrap();
    assert_eq!(dollar.publish().await.topic, "$app/x");
    assert_eq!(plus.publish().await.topic, "a/b/c");
    // `#` sees a/b/c but never the `$` topic published before it.
    assert_eq!(all.publish().await.topic, "a/b/c");
    b.stop().await;
}

#[tokio::test]
async fn retained_messages_set_replace_clear_and_deliver_on_subscribe() {
    let b = start_broker().await;
    let p = v4(b.addr, "rp").await;
    p.client
        .publish("r/1", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    p.client
        .publish("r/1", QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    p.client
        .publish("r/2", QoS::AtLeastOnce, true, "gone")
        .await
        .unwrap();
    p.client
        .publish("r/2", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    p.client
        .publish("r/3", QoS::AtLeastOnce, false, "not retained")
        .await
        .unwrap();
    // A QoS 1 round trip on the same connection orders everything before it.
    let mut s = v4(b.addr, "rs").await;
    wait_until("one retained message stored", || {
        b.broker.stats().retained_messages == 1
    })
    .await;
    s.subscribe("r/#", QoS::AtLeastOnce).await;
    let got = s.publish().await;
    assert_eq!(got.topic, "r/1");
    assert_eq!(got.payload, Bytes::from("two"));
    assert!(got.retain, "retained delivery carries the retain flag");
    s.assert_nothing_before_marker(&p.client, "r/marker").await;
    // Live messages are delivered without the retain flag.
    p.client
        .publish("r/1", QoS::AtLeastOnce, true, "three")
        .await
        .unwrap();
    let live = s.publish().await;
    assert!(!live.retain);
    b.stop().await;
}

#[tokio::test]
async fn persistent_session_queues_while_offline_and_resumes() {
    let b = start_broker().await;
    let mut o = v4_options(b.addr, "persist");
    o.set_clean_session(false);
    let (mut s, present) = v4_connect(o.clone()).await;
    assert!(!present);
    s.subscribe("q/#", QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    s.closed().await;
    let mut p = v4(b.addr, "qp").await;
    for i in 0..3 {
        p.client
            .publish("q/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
        p.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
    }
    p.client
        .publish("q/x", QoS::AtMostOnce, false, "qos0 not queued")
        .await
        .unwrap();
    let (mut s, present) = v4_connect(o).await;
    assert!(present, "session present after reconnect");
    for i in 0..3 {
        assert_eq!(s.publish().await.payload, Bytes::from(format!("m{i}")));
    }
    // The QoS 0 message was published before the marker on the same connection.
    s.assert_nothing_before_marker(&p.client, "q/marker").await;
    b.stop().await;
}

#[tokio::test]
async fn clean_session_discards_subscriptions() {
    let b = start_broker().await;
    let mut o = v4_options(b.addr, "cleaner");
    o.set_clean_session(false);
    let (mut s, _) = v4_connect(o.clone()).await;
    s.subscribe("c/#", QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    s.closed().await;
    o.set_clean_session(true);
    let (mut s, present) = v4_connect(o).await;
    assert!(!present);
    let p = v4(b.addr, "cp").await;
    p.client
        .publish("c/x", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(b.broker.stats().subscriptions, 0);
    // `c/x` went to the router before the marker from the same connection.
    s.subscribe("marker", QoS::AtLeastOnce).await;
    s.assert_nothing_before_marker(&p.client, "marker").await;
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_resume() {
    let b = start_broker().await;
    // Raw v5 subscriber that never acknowledges.
    let mut raw = Raw::open(b.addr).await;
    raw.send(&p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "dupper".into(),
            clean_start: true,
            properties: Some(p5::ConnectProperties {
                session_expiry_interval: Some(60),
                ..Default::default()
            }),
        },
        None,
        None,
    ))
    .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
    let mut sub = p5::Subscribe::new(p5::Filter::new("d/x", Q5::AtLeastOnce), None);
    sub.pkid = 1;
    raw.send(&p5::Packet::Subscribe(sub)).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::SubAck(_))));
    let p = v4(b.addr, "dp").await;
    p.client
        .publish("d/x", QoS::AtLeastOnce, false, "once")
        .await
        .unwrap();
    let first = match raw.read().await {
        Some(p5::Packet::Publish(p)) => p,
        other => panic!("expected publish, got {other:?}"),
    };
    assert!(!first.dup);
    drop(raw);
    let mut raw = Raw::open(b.addr).await;
    raw.send(&p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "dupper".into(),
            clean_start: false,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => assert!(c.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    match raw.read().await {
        Some(p5::Packet::Publish(again)) => {
            assert!(again.dup, "resent with DUP");
            assert_eq!(again.pkid, first.pkid);
            assert_eq!(again.payload, first.payload);
        }
        other => panic!("expected resent publish, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn qos2_duplicate_before_pubrel_is_delivered_once() {
    let b = start_broker().await;
    let mut s = v4(b.addr, "once").await;
    s.subscribe("e/#", QoS::ExactlyOnce).await;
    let mut raw = Raw::connect_v5(b.addr, "twice").await;
    let mut publish = p5::Publish::new("e/1", Q5::ExactlyOnce, "exactly", None);
    publish.pkid = 7;
    raw.send(&p5::Packet::Publish(publish.clone())).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::PubRec(r)) if r.pkid == 7));
    publish.dup = true;
    raw.send(&p5::Packet::Publish(publish)).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::PubRec(r)) if r.pkid == 7));
    raw.send(&p5::Packet::PubRel(p5::PubRel::new(7, None)))
        .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::PubComp(c)) if c.pkid == 7));
    assert_eq!(s.publish().await.payload, Bytes::from("exactly"));
    let me = s.client.clone();
    s.assert_nothing_before_marker(&me, "e/marker").await;
    b.stop().await;
}

fn will_connect(id: &str, keep_alive: u16, delay: Option<u32>, expiry: Option<u32>) -> p5::Packet {
    p5::Packet::Connect(
        p5::Connect {
            keep_alive,
            client_id: id.into(),
            clean_start: true,
            properties: Some(p5::ConnectProperties {
                session_expiry_interval: expiry,
                ..Default::default()
            }),
        },
        Some(p5::LastWill {
            topic: Bytes::from(format!("will/{id}")),
            message: Bytes::from("gone"),
            qos: Q5::AtLeastOnce,
            retain: false,
            properties: delay.map(|d| p5::LastWillProperties {
                delay_interval: Some(d),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        }),
        None,
    )
}

#[tokio::test]
async fn will_is_sent_on_abnormal_close_but_not_after_disconnect() {
    let b = start_broker().await;
    let mut s = v4(b.addr, "watcher").await;
    s.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut polite = Raw::open(b.addr).await;
    polite.send(&will_connect("polite", 30, None, None)).await;
    assert!(matches!(polite.read().await, Some(p5::Packet::ConnAck(_))));
    polite
        .send(&p5::Packet::Disconnect(p5::Disconnect::new(
            p5::DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
    assert!(polite.read().await.is_none());

    let mut rude = Raw::open(b.addr).await;
    rude.send(&will_connect("rude", 30, None, None)).await;
    assert!(matches!(rude.read().await, Some(p5::Packet::ConnAck(_))));
    drop(rude);
    assert_eq!(s.publish().await.topic, "will/rude");

    let mut asks = Raw::open(b.addr).await;
    asks.send(&will_connect("asks", 30, None, None)).await;
    assert!(matches!(asks.read().await, Some(p5::Packet::ConnAck(_))));
    // DISCONNECT 0x04 (with will message), empty property list.
    asks.send_bytes(&[0xE0, 0x02, 0x04, 0x00]).await;
    assert_eq!(s.publish().await.topic, "will/asks");
    let me = s.client.clone();
    s.assert_nothing_before_marker(&me, "will/marker").await;
    b.stop().await;
}

/// Will delay (seconds) within which a client reconnects in the cancellation test.
const RECONNECT_MARGIN: u32 = 4;

#[tokio::test]
async fn will_delay_holds_the_will_and_reconnect_cancels_it() {
    let b = start_broker().await;
    let mut s = v4(b.addr, "delaywatch").await;
    s.subscribe("will/#", QoS::AtLeastOnce).await;
    let started = tokio::time::Instant::now();
    let mut w = Raw::open(b.addr).await;
    w.send(&will_connect("late", 30, Some(1), Some(10))).await;
    assert!(matches!(w.read().await, Some(p5::Packet::ConnAck(_))));
    drop(w);
    assert_eq!(s.publish().await.topic, "will/late");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "will waited for its delay"
    );

    // A will delay long enough that the reconnect below beats it even on a loaded machine.
    let mut w = Raw::open(b.addr).await;
    w.send(&will_connect("back", 30, Some(RECONNECT_MARGIN), Some(60)))
        .await;
    assert!(matches!(w.read().await, Some(p5::Packet::ConnAck(_))));
    drop(w);
    let mut again = Raw::open(b.addr).await;
    again
        .send(&p5::Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: "back".into(),
                clean_start: false,
                properties: None,
            },
            None,
            None,
        ))
        .await;
    assert!(matches!(again.read().await, Some(p5::Packet::ConnAck(_))));
    // The marker is a will with the same delay dropped after the reconnect: its timer
    // ends after the cancelled one would have, so `will/back` would arrive first.
    let mut sentinel = Raw::open(b.addr).await;
    sentinel
        .send(&will_connect(
            "sentinel",
            30,
            Some(RECONNECT_MARGIN),
            Some(60),
        ))
        .await;
    assert!(matches!(
        sentinel.read().await,
        Some(p5::Packet::ConnAck(_))
    ));
    drop(sentinel);
    let next = s.publish().await;
    assert_eq!(next.topic, "will/sentinel", "the cancelled will was sent");
    b.stop().await;
}

#[tokio::test]
async fn keepalive_is_enforced_at_one_and_a_half_times_and_fires_the_will() {
    let b = start_broker().await;
    let mut s = v4(b.addr, "kawatch").await;
    s.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut silent = Raw::open(b.addr).await;
    let started = tokio::time::Instant::now();
    silent.send(&will_connect("silent", 1, None, None)).await;
    assert!(matches!(silent.read().await, Some(p5::Packet::ConnAck(_))));
    match silent.read().await {
        Some(p5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, p5::DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed after {elapsed:?}"
    );
    assert_eq!(s.publish().await.topic, "will/silent");
    b.stop().await;
}

#[tokio::test]
async fn duplicate_client_id_takes_over_and_old_connection_gets_0x8e() {
    let b = start_broker().await;
    let mut first = v5(b.addr, "same").await;
    let _second = v5(b.addr, "same").await;
    let reason = first.disconnect_reason().await;
    assert!(reason.contains("SessionTakenOver"), "got {reason}");
    b.stop().await;
}

#[tokio::test]
async fn empty_client_id_is_assigned_for_clean_sessions_and_refused_for_persistent_v311() {
    let b = start_broker().await;
    let c = v5(b.addr, "").await;
    let assigned = c
        .connack
        .as_ref()
        .and_then(|c| c.properties.as_ref())
        .and_then(|p| p.assigned_client_identifier.clone());
    assert!(assigned.is_some_and(|id| !id.is_empty()));

    // v3.1.1 CONNECT, clean session = 0, empty client id: CONNACK 0x02, then the close.
    let persistent = raw::Connect {
        clean: false,
        keep_alive: 30,
        ..raw::Connect::new(false, "")
    };
    let (mut client, connack) = raw::RawClient::connect(b.addr, &persistent.encode()).await;
    assert_eq!((connack.flags, connack.body), (0, vec![0, 2]));
    client.closed("after the refusal").await;
    b.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused() {
    let b = start_broker().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 30, 0, 0])
        .await;
    let answer = raw.read_to_close().await;
    assert!(
        answer.is_empty() || answer == vec![0x20, 2, 0, 1],
        "got {answer:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn connect_timeout_closes_a_silent_socket() {
    let b = start_broker_with(tollgate::broker::BrokerSettings {
        connect_timeout: Duration::from_millis(300),
        ..test_settings()
    })
    .await;
    let mut raw = Raw::open(b.addr).await;
    let started = tokio::time::Instant::now();
    assert!(raw.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    b.stop().await;
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down_and_drains() {
    let b = start_broker().await;
    let mut c = v5(b.addr, "bye").await;
    let mut c4 = v4(b.addr, "bye4").await;
    b.shutdown.cancel();
    let reason = c.disconnect_reason().await;
    assert!(reason.contains("ServerShuttingDown"), "got {reason}");
    c4.closed().await;
    tokio::time::timeout(WAIT, b.broker.drained())
        .await
        .expect("drained");
}

#[tokio::test]
async fn mosquitto_clients_interoperate_both_protocol_versions() {
    if !require_peer("mosquitto_sub") || !require_peer("mosquitto_pub") {
        return;
    }
    let b = start_broker().await;
    let port = b.addr.port().to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "m/#",
            "-C",
            "2",
            "-W",
            "30",
            "-v",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    // Wait until the subscription is live.
    wait_until("mosquitto_sub subscribed", || {
        b.broker.stats().subscriptions >= 1
    })
    .await;
    for (v, msg) in [("mqttv311", "from311"), ("mqttv5", "from5")] {
        let status = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                v,
                "-q",
                "1",
                "-t",
                "m/x",
                "-m",
                msg,
            ])
            .status()
            .await
            .expect("mosquitto_pub runs");
        assert!(status.success());
    }
    // mosquitto_sub gives up by itself after 30 s (`-W`); this limit only backs it up.
    let out = tokio::time::timeout(Duration::from_secs(35), sub.wait_with_output())
        .await
        .expect("sub exits")
        .expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("m/x from311") && text.contains("m/x from5"),
        "got {text:?}"
    );
    // And rumqttc receives what mosquitto_pub sends.
    let mut s = v4(b.addr, "rsub").await;
    s.subscribe("m/#", QoS::AtLeastOnce).await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "2",
            "-t",
            "m/y",
            "-m",
            "hi",
        ])
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success());
    assert_eq!(s.publish().await.payload, Bytes::from("hi"));
    b.stop().await;
}

#[tokio::test]
async fn retained_will_is_stored_for_later_subscribers() {
    let b = start_broker().await;
    let mut w = Raw::open(b.addr).await;
    let mut packet = will_connect("retainer", 30, None, None);
    if let p5::Packet::Connect(_, Some(will), _) = &mut packet {
        will.retain = true;
    }
    w.send(&packet).await;
    assert!(matches!(w.read().await, Some(p5::Packet::ConnAck(_))));
    drop(w);
    wait_until("the retained will stored", || {
        b.broker.stats().retained_messages == 1
    })
    .await;
    let mut s = v4(b.addr, "late-watcher").await;
    s.subscribe("will/#", QoS::AtLeastOnce).await;
    let got = s.publish().await;
    assert_eq!(got.topic, "will/retainer");
    assert!(got.retain);
    b.stop().await;
}

/// A client may send its first packets right behind the CONNECT, without waiting for
/// the CONNACK: they are served at once, not when the next bytes happen to arrive.
#[tokio::test]
async fn packets_pipelined_behind_connect_are_served() {
    let b = start_broker().await;
    let mut raw = Raw::open(b.addr).await;
    let mut bytes = bytes::BytesMut::new();
    p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "pipelined".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
    .write(&mut bytes, None)
    .unwrap();
    let mut subscribe = p5::Subscribe::new(p5::Filter::new("pipe/#", Q5::AtLeastOnce), None);
    subscribe.pkid = 7;
    p5::Packet::Subscribe(subscribe)
        .write(&mut bytes, None)
        .unwrap();
    raw.send_bytes(&bytes).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
    match raw.read().await {
        Some(p5::Packet::SubAck(s)) => assert_eq!(s.pkid, 7),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    b.stop().await;
}
