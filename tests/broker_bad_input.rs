//! Bad input over real sockets: each gets the spec's reaction (v5 DISCONNECT with the
//! right reason code, or close) and the broker keeps serving everyone else.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;
use support::raw;
use support::*;
use tollgate::broker::BrokerSettings;

/// Expect a v5 DISCONNECT with `code`, then the close.
async fn expect_disconnect(raw: &mut Raw, code: p5::DisconnectReasonCode) {
    match raw.read().await {
        Some(p5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, code);
            let reason = d.properties.and_then(|p| p.reason_string);
            assert!(
                reason.is_some_and(|r| !r.is_empty()),
                "v5 refusals carry a reason string"
            );
        }
        other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
    }
    assert!(
        raw.read().await.is_none(),
        "connection closed after DISCONNECT"
    );
}

/// Another client can still publish and receive.
async fn still_serving(addr: SocketAddr) {
    let mut s = v4(addr, "bystander-sub").await;
    s.subscribe("alive", QoS::AtLeastOnce).await;
    let p = v4(addr, "bystander-pub").await;
    p.client
        .publish("alive", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    assert_eq!(s.publish().await.payload, Bytes::from("yes"));
}

fn publish(topic: &[u8], qos: Q5, pkid: u16) -> p5::Packet {
    let mut p = p5::Publish::new("x", qos, "payload", None);
    p.topic = Bytes::copy_from_slice(topic);
    p.pkid = pkid;
    p5::Packet::Publish(p)
}

#[tokio::test]
async fn malformed_packet_gets_disconnect_0x81() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "malformed").await;
    // PUBLISH whose topic length runs past the end of the packet.
    raw.send_bytes(&[0x30, 0x02, 0x00, 0x05]).await;
    expect_disconnect(&mut raw, p5::DisconnectReasonCode::MalformedPacket).await;
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn publish_with_wildcards_or_nul_gets_topic_name_invalid() {
    let b = start_broker().await;
    for topic in [&b"a/+/c"[..], b"a/#", b"a\0b"] {
        let mut raw = Raw::connect_v5(b.addr, "wild").await;
        raw.send(&publish(topic, Q5::AtMostOnce, 0)).await;
        match raw.read().await {
            Some(p5::Packet::Disconnect(d)) => assert!(
                matches!(
                    d.reason_code,
                    p5::DisconnectReasonCode::TopicNameInvalid
                        | p5::DisconnectReasonCode::MalformedPacket
                ),
                "topic {topic:?} got {:?}",
                d.reason_code
            ),
            other => panic!("expected DISCONNECT for {topic:?}, got {other:?}"),
        }
    }
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn publish_with_invalid_utf8_topic_is_refused() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "utf8").await;
    raw.send(&publish(&[b'a', 0xC3, 0x28], Q5::AtMostOnce, 0))
        .await;
    match raw.read().await {
        Some(p5::Packet::Disconnect(d)) => assert!(matches!(
            d.reason_code,
            p5::DisconnectReasonCode::TopicNameInvalid | p5::DisconnectReasonCode::MalformedPacket
        )),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn zero_length_topic_without_alias_is_a_protocol_error() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "empty").await;
    raw.send(&publish(b"", Q5::AtMostOnce, 0)).await;
    expect_disconnect(&mut raw, p5::DisconnectReasonCode::ProtocolError).await;
    b.stop().await;
}

#[tokio::test]
async fn oversized_packet_gets_disconnect_0x95() {
    let b = start_broker_with(BrokerSettings {
        max_packet_size: 1024,
        ..test_settings()
    })
    .await;
    let mut raw = Raw::connect_v5(b.addr, "big").await;
    let mut p = p5::Publish::new("big", Q5::AtMostOnce, vec![0u8; 4096], None);
    p.pkid = 0;
    raw.send(&p5::Packet::Publish(p)).await;
    expect_disconnect(&mut raw, p5::DisconnectReasonCode::PacketTooLarge).await;
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "twice-connect").await;
    raw.send(&p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "twice-connect".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    expect_disconnect(&mut raw, p5::DisconnectReasonCode::ProtocolError).await;
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn packet_before_connect_closes_the_socket() {
    let b = start_broker().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&publish(b"early", Q5::AtMostOnce, 0)).await;
    assert!(raw.read_to_close().await.is_empty());
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn v311_malformed_packet_just_closes() {
    let b = start_broker().await;
    let v311 = raw::Connect {
        keep_alive: 30,
        ..raw::Connect::new(false, "v3")
    };
    let (mut raw, connack) = raw::RawClient::connect(b.addr, &v311.encode()).await;
    assert_eq!((connack.flags, connack.body), (0, vec![0, 0]));
    // A SUBSCRIBE cut inside its topic filter.
    raw.send(&[0x82, 0x03, 0x00, 0x01, 0x00]).await;
    raw.closed("v3.1.1 gets no DISCONNECT").await;
    still_serving(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn topic_alias_above_maximum_gets_0x94() {
    let b = start_broker().await;
    let mut raw = Raw::connect_v5(b.addr, "alias").await;
    let mut p = p5::Publish::new("a", Q5::AtMostOnce, "x", None);
    p.properties = Some(p5::PublishProperties {
        topic_alias: Some(1000),
        ..Default::default()
    });
    raw.send(&p5::Packet::Publish(p)).await;
    expect_disconnect(&mut raw, p5::DisconnectReasonCode::TopicAliasInvalid).await;
    b.stop().await;
}

#[tokio::test]
async fn exceeding_receive_maximum_gets_0x93() {
    let b = start_broker_with(BrokerSettings {
        receive_maximum: 2,
        ..test_settings()
    })
    .await;
    let mut raw = Raw::connect_v5(b.addr, "flood").await;
    let mut bytes = bytes::BytesMut::new();
    for pkid in 1..=3 {
        publish(b"q", Q5::ExactlyOnce, pkid)
            .write(&mut bytes, None)
            .unwrap();
    }
    raw.send_bytes(&bytes).await;
    loop {
        match raw.read().await {
            Some(p5::Packet::PubRec(_)) => continue,
            Some(p5::Packet::Disconnect(d)) => {
                assert_eq!(
                    d.reason_code,
                    p5::DisconnectReasonCode::ReceiveMaximumExceeded
                );
                break;
            }
            other => panic!("expected DISCONNECT 0x93, got {other:?}"),
        }
    }
    b.stop().await;
}

/// The broker stops reading at the violation; bytes the client sent after it must not
/// turn the close into a TCP reset, which discards the DISCONNECT still queued in the
/// broker's socket. The client's small receive buffer keeps that DISCONNECT queued: the
/// client first has 24 KB of its own messages echoed and leaves them unread.
#[tokio::test]
async fn disconnect_survives_unread_bytes_behind_the_violation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = start_broker_with(BrokerSettings {
        receive_maximum: 2,
        ..test_settings()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(b.addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "flood-burst".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
    .write(&mut out, None)
    .unwrap();
    stream.write_all(&out.split()).await.unwrap();
    let mut inbox = bytes::BytesMut::new();
    let mut subscribe = p5::Subscribe::new(p5::Filter::new("echo", Q5::AtMostOnce), None);
    subscribe.pkid = 1;
    for (packet, send_next) in [
        ("CONNACK", Some(p5::Packet::Subscribe(subscribe))),
        ("SUBACK", None),
    ] {
        let got = loop {
            match p5::Packet::read(&mut inbox, None) {
                Ok(p) => break p,
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("broker sent a malformed packet: {e}"),
            }
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut inbox))
                .await
                .expect("broker answers")
                .unwrap();
            assert!(n > 0, "broker closed before the {packet}");
        };
        assert!(
            matches!(got, p5::Packet::ConnAck(_) | p5::Packet::SubAck(_)),
            "expected {packet}, got {got:?}"
        );
        if let Some(next) = send_next {
            next.write(&mut out, None).unwrap();
            stream.write_all(&out.split()).await.unwrap();
        }
    }
    // Echoes fill the client's receive buffer; the rest waits in the broker's socket.
    let echo = p5::Publish::new("echo", Q5::AtMostOnce, vec![0u8; 4000], None);
    for _ in 0..6 {
        p5::Packet::Publish(echo.clone())
            .write(&mut out, None)
            .unwrap();
    }
    stream.write_all(&out.split()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The violation (3 QoS 1 over a Receive Maximum of 2), then a burst left unread.
    for pkid in 1..=3 {
        publish(b"q", Q5::AtLeastOnce, pkid)
            .write(&mut out, None)
            .unwrap();
    }
    let mut burst = p5::Publish::new("q", Q5::AtMostOnce, vec![0u8; 4000], None);
    burst.pkid = 0;
    for _ in 0..16 {
        p5::Packet::Publish(burst.clone())
            .write(&mut out, None)
            .unwrap();
    }
    let _ = stream.write_all(&out).await;
    let mut disconnect = None;
    loop {
        match p5::Packet::read(&mut inbox, None) {
            Ok(p5::Packet::Publish(_) | p5::Packet::PubAck(_)) => continue,
            Ok(p5::Packet::Disconnect(d)) => {
                disconnect = Some(d.reason_code);
                continue;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => assert!(
                matches!(e, rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)),
                "{e}"
            ),
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut inbox))
            .await
            .expect("broker closes within the limit");
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("connection reset before the DISCONNECT was read: {e}"),
        }
    }
    assert_eq!(
        disconnect,
        Some(p5::DisconnectReasonCode::ReceiveMaximumExceeded)
    );
    b.stop().await;
}

#[tokio::test]
async fn v5_connect_with_reserved_flag_gets_a_refusing_connack() {
    let b = start_broker().await;
    let mut raw = Raw::open(b.addr).await;
    // v5 CONNECT with the reserved connect flag (bit 0) set.
    raw.send_bytes(&[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 30, 0, 0, 2, b'r', b'f',
    ])
    .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => {
            assert_eq!(c.code, p5::ConnectReturnCode::MalformedPacket);
            assert!(!c.session_present);
        }
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    assert!(raw.read().await.is_none());
    still_serving(b.addr).await;
    b.stop().await;
}
