//! Encoding: v3.1.1 mappings (acks, SUBACK 0x80, CONNACK codes), DISCONNECT, refusals, round trips.

use super::*;

#[test]
fn encodes_v311_publish_without_properties() {
    let bytes = encode(
        &v311(),
        &v5::Packet::Publish(publish(QoS::AtLeastOnce, 0x0102)),
    );
    assert_eq!(bytes, frame(0x33, &cat(&[&s(b"a/b"), &[1, 2], b"hi"])));
    let bytes = encode(&v311(), &v5::Packet::Publish(publish(QoS::AtMostOnce, 0)));
    assert_eq!(bytes, frame(0x31, &cat(&[&s(b"a/b"), b"hi"])));
}

#[test]
fn encodes_v5_publish_with_properties_and_roundtrips_through_a_client_decoder() {
    let packet = v5::Packet::Publish(publish(QoS::ExactlyOnce, 9));
    let bytes = encode(&v5c(), &packet);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        v5::Packet::read(&mut buf, None).expect("rumqttc reads it"),
        packet
    );
}

#[test]
fn publish_with_packet_id_zero_is_refused_and_the_buffer_is_left_as_it_was() {
    for codec in [v311(), v5c()] {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let e = codec
            .encode(&v5::Packet::Publish(publish(QoS::AtLeastOnce, 0)), &mut buf)
            .expect_err("pkid 0");
        assert!(matches!(e, CodecError::Encode { .. }), "{e}");
        assert_eq!(&buf[..], b"keep");
    }
}

#[test]
fn alias_only_publish_cannot_go_to_a_v311_client() {
    let mut p = publish(QoS::AtMostOnce, 0);
    p.topic = Bytes::new();
    let mut buf = BytesMut::new();
    assert!(v311().encode(&v5::Packet::Publish(p), &mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn v311_acks_drop_reason_codes_and_properties() {
    let mut ack = v5::PubAck::new(
        7,
        Some(v5::PubAckProperties {
            reason_string: Some("x".into()),
            user_properties: vec![],
        }),
    );
    ack.reason = v5::PubAckReason::NotAuthorized;
    assert_eq!(
        encode(&v311(), &v5::Packet::PubAck(ack)),
        vec![0x40, 2, 0, 7]
    );
    let mut rec = v5::PubRec::new(7, None);
    rec.reason = v5::PubRecReason::QuotaExceeded;
    assert_eq!(
        encode(&v311(), &v5::Packet::PubRec(rec)),
        vec![0x50, 2, 0, 7]
    );
    assert_eq!(
        encode(&v311(), &v5::Packet::PubRel(v5::PubRel::new(7, None))),
        vec![0x62, 2, 0, 7]
    );
    assert_eq!(
        encode(&v311(), &v5::Packet::PubComp(v5::PubComp::new(7, None))),
        vec![0x70, 2, 0, 7]
    );
    let unsuback = v5::UnsubAck {
        pkid: 7,
        reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted],
        properties: None,
    };
    assert_eq!(
        encode(&v311(), &v5::Packet::UnsubAck(unsuback)),
        vec![0xb0, 2, 0, 7]
    );
    assert_eq!(
        encode(&v311(), &v5::Packet::PingResp(v5::PingResp)),
        vec![0xd0, 0]
    );
}

#[test]
fn v311_suback_keeps_granted_qos_and_maps_failures_to_0x80() {
    use v5::SubscribeReasonCode as R;
    let suback = v5::SubAck {
        pkid: 3,
        return_codes: vec![
            R::Success(QoS::AtMostOnce),
            R::Success(QoS::AtLeastOnce),
            R::Success(QoS::ExactlyOnce),
            R::NotAuthorized,
            R::TopicFilterInvalid,
            R::QuotaExceeded,
            R::Unspecified,
        ],
        properties: None,
    };
    assert_eq!(
        encode(&v311(), &v5::Packet::SubAck(suback)),
        vec![0x90, 9, 0, 3, 0, 1, 2, 0x80, 0x80, 0x80, 0x80]
    );
}

#[test]
fn v311_connack_codes_are_mapped() {
    use v5::ConnectReturnCode as C;
    let table = [
        (C::Success, 0),
        (C::UnsupportedProtocolVersion, 1),
        (C::RefusedProtocolVersion, 1),
        (C::ClientIdentifierNotValid, 2),
        (C::BadClientId, 2),
        (C::ServerUnavailable, 3),
        (C::ServerBusy, 3),
        (C::Banned, 3),
        (C::ServiceUnavailable, 3),
        (C::QuotaExceeded, 3),
        (C::BadUserNamePassword, 4),
        (C::BadAuthenticationMethod, 4),
        (C::NotAuthorized, 5),
        (C::ConnectionRateExceeded, 5),
    ];
    for (code, expected) in table {
        let ack = v5::ConnAck {
            session_present: code == C::Success,
            code,
            properties: Some(connack_properties()),
        };
        let bytes = encode(&v311(), &v5::Packet::ConnAck(ack));
        assert_eq!(
            bytes,
            vec![0x20, 2, u8::from(code == C::Success), expected],
            "{code:?}"
        );
    }
}

#[test]
fn v5_connack_with_v311_only_codes_does_not_panic() {
    use v5::ConnectReturnCode as C;
    for (code, expected) in [
        (C::RefusedProtocolVersion, 0x84),
        (C::BadClientId, 0x85),
        (C::ServiceUnavailable, 0x88),
    ] {
        let ack = v5::ConnAck {
            session_present: false,
            code,
            properties: None,
        };
        assert_eq!(
            encode(&v5c(), &v5::Packet::ConnAck(ack)),
            vec![0x20, 3, 0, expected, 0]
        );
    }
}

#[test]
fn server_disconnect_is_not_sent_to_v311_clients() {
    let mut buf = BytesMut::new();
    let d = v5::Disconnect::new(v5::DisconnectReasonCode::SessionTakenOver);
    assert_eq!(
        v311()
            .encode(&v5::Packet::Disconnect(d), &mut buf)
            .expect("ok"),
        0
    );
    assert!(buf.is_empty());
}

#[test]
fn v5_disconnect_is_encoded_exactly() {
    let d = |code| v5::Packet::Disconnect(v5::Disconnect::new(code));
    assert_eq!(
        encode(&v5c(), &d(v5::DisconnectReasonCode::NormalDisconnection)),
        vec![0xe0, 0]
    );
    assert_eq!(
        encode(&v5c(), &d(v5::DisconnectReasonCode::SessionTakenOver)),
        vec![0xe0, 1, 0x8e]
    );
    assert_eq!(
        encode(&v5c(), &d(v5::DisconnectReasonCode::ServerShuttingDown)),
        vec![0xe0, 1, 0x8b]
    );
    let with_reason = v5::Packet::Disconnect(v5::Disconnect {
        reason_code: v5::DisconnectReasonCode::MalformedPacket,
        properties: Some(v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some("bad".into()),
            user_properties: vec![],
            server_reference: None,
        }),
    });
    let bytes = encode(&v5c(), &with_reason);
    assert_eq!(bytes, frame(0xe0, &cat(&[&[0x81, 6, 0x1f], &s(b"bad")])));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        v5::Packet::read(&mut buf, None).expect("rumqttc reads it"),
        with_reason
    );
}

#[test]
fn auth_is_not_encoded_for_311() {
    let auth = v5::Packet::Auth(AuthReason::Success.packet(None));
    let mut buf = BytesMut::new();
    assert!(matches!(
        v311().encode(&auth, &mut buf),
        Err(CodecError::Encode { .. })
    ));
    assert!(buf.is_empty());
}

#[test]
fn encoded_len_matches_encode() {
    let packets = [
        v5::Packet::Publish(publish(QoS::AtLeastOnce, 1)),
        v5::Packet::Publish(publish(QoS::AtMostOnce, 0)),
        v5::Packet::PubAck(v5::PubAck::new(1, None)),
        v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::SessionTakenOver,
        )),
        v5::Packet::PingResp(v5::PingResp),
    ];
    for codec in [v311(), v5c()] {
        for p in &packets {
            let mut buf = BytesMut::new();
            let n = codec.encode(p, &mut buf).expect("encodes");
            assert_eq!(codec.encoded_len(p), n, "{:?} {p:?}", codec.version);
        }
    }
}

#[test]
fn encode_then_decode_roundtrips_client_packets() {
    let sub = v5::Packet::Subscribe(v5::Subscribe {
        pkid: 4,
        filters: vec![v5::Filter::new("a/+", QoS::AtLeastOnce)],
        properties: None,
    });
    let unsub = v5::Packet::Unsubscribe(v5::Unsubscribe::new("a/#", None));
    let mut unsub = unsub;
    if let v5::Packet::Unsubscribe(u) = &mut unsub {
        u.pkid = 5;
    }
    let packets = [
        sub,
        unsub,
        v5::Packet::Publish(v5::Publish {
            properties: None,
            ..publish(QoS::ExactlyOnce, 8)
        }),
        v5::Packet::PubRel(v5::PubRel::new(8, None)),
        v5::Packet::PingReq(v5::PingReq),
    ];
    for codec in [v311(), v5c()] {
        for p in &packets {
            let bytes = encode(&codec, p);
            assert_eq!(
                &decode_one(&codec, &bytes)
                    .expect("decodes")
                    .expect("complete"),
                p
            );
        }
    }
}

// ---------------------------------------------------------------- rumqttc behaviours

#[test]
fn refusing_connack_never_claims_a_session() {
    let ack = |code| {
        v5::Packet::ConnAck(v5::ConnAck {
            session_present: true,
            code,
            properties: None,
        })
    };
    assert_eq!(
        encode(&v311(), &ack(v5::ConnectReturnCode::NotAuthorized)),
        vec![0x20, 2, 0, 5]
    );
    assert_eq!(
        encode(&v311(), &ack(v5::ConnectReturnCode::Success)),
        vec![0x20, 2, 1, 0]
    );
    assert_eq!(
        encode(&v5c(), &ack(v5::ConnectReturnCode::NotAuthorized)),
        vec![0x20, 3, 0, 0x87, 0]
    );
    assert_eq!(
        encode(&v5c(), &ack(v5::ConnectReturnCode::Success)),
        vec![0x20, 3, 1, 0, 0]
    );
}

#[test]
fn refuses_outgoing_properties_that_cannot_be_encoded() {
    let mut p = publish(QoS::AtMostOnce, 0);
    if let Some(props) = p.properties.as_mut() {
        props.user_properties = vec![("k".into(), "v".repeat(70_000))];
    }
    let mut buf = BytesMut::new();
    let e = v5c()
        .encode(&v5::Packet::Publish(p.clone()), &mut buf)
        .expect_err("too long");
    assert!(e.to_string().contains("65535"), "{e}");
    assert!(buf.is_empty());
    // 3.1.1 drops properties, so the same message can go to a 3.1.1 client.
    assert!(v311()
        .encode(&v5::Packet::Publish(p.clone()), &mut buf)
        .is_ok());
    if let Some(props) = p.properties.as_mut() {
        props.user_properties.clear();
        props.subscription_identifiers = vec![0];
    }
    let mut buf = BytesMut::new();
    assert!(v5c().encode(&v5::Packet::Publish(p), &mut buf).is_err());
    assert!(buf.is_empty());
}
