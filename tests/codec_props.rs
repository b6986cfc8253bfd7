//! Property tests for the codec wrapper and the topic rules, through the public API.
//!
//! They run the same `fuzz_logic` entry points as the cargo-fuzz targets in `fuzz/`
//! (which need nightly), on random bytes and on valid packets with random
//! mutations, and check encode → decode roundtrips for the packets the broker
//! exchanges in both protocol versions.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tollgate::broker::codec::{
    decode_connect, encode_connect, fuzz_logic, v5, Codec, ConnectPacket, ProtocolVersion, QoS,
};
use tollgate::topic;

const MAX: usize = 1 << 20;

/// 256 cases by default; `PROPTEST_CASES=100000` for a longer campaign.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9$ é]{1,6}(/[a-z0-9 ]{0,5}){0,4}".prop_filter("valid topic name", |t| {
        topic::validate_topic_name(t).is_ok()
    })
}

fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        3 => "[a-z0-9]{0,4}".boxed(),
        1 => Just("+".to_owned()).boxed(),
    ];
    (proptest::collection::vec(level, 1..5), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str(if f.is_empty() { "#" } else { "/#" });
        }
        if f.is_empty() {
            f.push('x');
        }
        f
    })
}

fn short_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _-]{0,8}"
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((short_string(), short_string()), 0..3)
}

fn publish_properties() -> impl Strategy<Value = Option<v5::PublishProperties>> {
    proptest::option::of(
        (
            proptest::option::of(0u8..2),
            proptest::option::of(any::<u32>()),
            proptest::option::of(1u16..),
            proptest::option::of(topic_name()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            user_properties(),
            proptest::option::of(short_string()),
        )
            .prop_map(
                |(pfi, expiry, alias, response, correlation, user, content)| {
                    v5::PublishProperties {
                        payload_format_indicator: pfi,
                        message_expiry_interval: expiry,
                        topic_alias: alias,
                        response_topic: response,
                        correlation_data: correlation.map(Bytes::from),
                        user_properties: user,
                        subscription_identifiers: vec![],
                        content_type: content,
                    }
                },
            )
            .prop_filter("non-empty section", |p| {
                *p != v5::PublishProperties::default()
            }),
    )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = v5::Packet> {
    (
        topic_name(),
        qos(),
        1u16..,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        publish_properties(),
    )
        .prop_map(
            move |(topic, qos, pkid, retain, dup, payload, properties)| {
                let with_id = qos != QoS::AtMostOnce;
                v5::Packet::Publish(v5::Publish {
                    dup: dup && with_id,
                    qos,
                    retain,
                    topic: Bytes::from(topic),
                    pkid: if with_id { pkid } else { 0 },
                    payload: Bytes::from(payload),
                    properties: if version == ProtocolVersion::V5 {
                        properties
                    } else {
                        None
                    },
                })
            },
        )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = v5::Packet> {
    let filter = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(move |(path, qos, nolocal, preserve_retain, rh, shared)| {
            let v5 = version == ProtocolVersion::V5;
            let path = if shared {
                format!("$share/g1/{path}")
            } else {
                path
            };
            v5::Filter {
                path,
                qos,
                nolocal: v5 && nolocal && !shared,
                preserve_retain: v5 && preserve_retain,
                retain_forward_rule: match (v5, rh) {
                    (true, 1) => v5::RetainForwardRule::OnNewSubscribe,
                    (true, 2) => v5::RetainForwardRule::Never,
                    _ => v5::RetainForwardRule::OnEverySubscribe,
                },
            }
        });
    (
        1u16..,
        proptest::collection::vec(filter, 1..4),
        proptest::option::of(1usize..268_435_455),
        user_properties(),
    )
        .prop_map(move |(pkid, filters, id, user)| {
            let properties = (version == ProtocolVersion::V5 && (id.is_some() || !user.is_empty()))
                .then_some(v5::SubscribeProperties {
                    id,
                    user_properties: user,
                });
            v5::Packet::Subscribe(v5::Subscribe {
                pkid,
                filters,
                properties,
            })
        })
}

fn unsubscribe() -> impl Strategy<Value = v5::Packet> {
    (1u16.., proptest::collection::vec(topic_filter(), 1..4)).prop_map(|(pkid, filters)| {
        v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid,
            filters,
            properties: None,
        })
    })
}

fn ack(version: ProtocolVersion) -> impl Strategy<Value = v5::Packet> {
    (
        0u8..4,
        1u16..,
        any::<bool>(),
        proptest::option::of(short_string()),
    )
        .prop_map(move |(kind, pkid, failed, reason)| {
            let v5 = version == ProtocolVersion::V5;
            let reason_string = reason.filter(|_| v5);
            match kind {
                0 => v5::Packet::PubAck(v5::PubAck {
                    pkid,
                    reason: if v5 && failed {
                        v5::PubAckReason::NotAuthorized
                    } else {
                        v5::PubAckReason::Success
                    },
                    properties: reason_string.map(|r| v5::PubAckProperties {
                        reason_string: Some(r),
                        user_properties: vec![],
                    }),
                }),
                1 => v5::Packet::PubRec(v5::PubRec {
                    pkid,
                    reason: if v5 && failed {
                        v5::PubRecReason::QuotaExceeded
                    } else {
                        v5::PubRecReason::Success
                    },
                    properties: reason_string.map(|r| v5::PubRecProperties {
                        reason_string: Some(r),
                        user_properties: vec![],
                    }),
                }),
                2 => v5::Packet::PubRel(v5::PubRel {
                    pkid,
                    reason: if v5 && failed {
                        v5::PubRelReason::PacketIdentifierNotFound
                    } else {
                        v5::PubRelReason::Success
                    },
                    properties: reason_string.map(|r| v5::PubRelProperties {
                        reason_string: Some(r),
                        user_properties: vec![],
                    }),
                }),
                _ => v5::Packet::PubComp(v5::PubComp {
                    pkid,
                    reason: if v5 && failed {
                        v5::PubCompReason::PacketIdentifierNotFound
                    } else {
                        v5::PubCompReason::Success
                    },
                    properties: reason_string.map(|r| v5::PubCompProperties {
                        reason_string: Some(r),
                        user_properties: vec![],
                    }),
                }),
            }
        })
}

fn client_packet(version: ProtocolVersion) -> impl Strategy<Value = v5::Packet> {
    prop_oneof![
        3 => publish(version).boxed(),
        1 => subscribe(version).boxed(),
        1 => unsubscribe().boxed(),
        2 => ack(version).boxed(),
        1 => Just(v5::Packet::PingReq(v5::PingReq)).boxed(),
    ]
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = ConnectPacket> {
    (
        "[a-zA-Z0-9-]{1,23}",
        any::<u16>(),
        any::<bool>(),
        proptest::option::of((
            topic_name(),
            proptest::collection::vec(any::<u8>(), 0..16),
            qos(),
            any::<bool>(),
        )),
        proptest::option::of(short_string()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
    )
        .prop_map(
            move |(client_id, keep_alive, clean_start, will, username, password)| {
                let v5 = version == ProtocolVersion::V5;
                ConnectPacket {
                    version,
                    connect: v5::Connect {
                        keep_alive,
                        client_id,
                        clean_start,
                        properties: None,
                    },
                    will: will.map(|(topic, message, qos, retain)| v5::LastWill {
                        topic: Bytes::from(topic),
                        message: Bytes::from(message),
                        qos,
                        retain,
                        properties: None,
                    }),
                    // 3.1.1 needs a user name for a password.
                    username: if v5 {
                        username
                    } else {
                        username.or_else(|| password.as_ref().map(|_| "u".into()))
                    },
                    password: password.map(Bytes::from),
                }
            },
        )
}

fn encode(codec: &Codec, packet: &v5::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    codec
        .encode(packet, &mut buf)
        .expect("generated packets encode");
    buf
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, v5::Packet)> {
    version().prop_flat_map(|v| client_packet(v).prop_map(move |p| (v, p)))
}

fn versioned_connect_bytes() -> impl Strategy<Value = Vec<u8>> {
    version().prop_flat_map(connect).prop_map(|c| {
        let mut buf = BytesMut::new();
        encode_connect(&c, &mut buf).expect("generated CONNECTs encode");
        buf.to_vec()
    })
}

/// Random edits of a valid packet: overwrite, insert, truncate.
fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, value, op) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at % bytes.len();
        match op % 4 {
            0 | 1 => bytes[i] = value,
            2 => bytes.insert(i, value),
            _ => bytes.truncate(i),
        }
    }
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_any_decoder(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_logic::codec_connect(&data);
        fuzz_logic::codec_packets_v4(&data);
        fuzz_logic::codec_packets_v5(&data);
        fuzz_logic::topic_filter(&data);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        byte1 in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = vec![byte1];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 { b |= 0x80; }
            data.push(b);
            if len == 0 { break; }
        }
        data.extend(&body);
        fuzz_logic::codec_connect(&data);
        fuzz_logic::codec_packets_v4(&data);
        fuzz_logic::codec_packets_v5(&data);
    }

    #[test]
    fn mutated_valid_packets_never_panic((v, packet) in versioned_packet(), edits in edits()) {
        let codec = Codec::new(v, MAX);
        let mut bytes = encode(&codec, &packet).to_vec();
        // Unmutated first: decodes, roundtrips, and (PUBLISH) equals mqttbytes' reading.
        match v {
            ProtocolVersion::V311 => fuzz_logic::codec_packets_v4(&bytes),
            ProtocolVersion::V5 => fuzz_logic::codec_packets_v5(&bytes),
        }
        mutate(&mut bytes, &edits);
        fuzz_logic::codec_packets_v4(&bytes);
        fuzz_logic::codec_packets_v5(&bytes);
    }

    #[test]
    fn mutated_valid_connects_never_panic(bytes in versioned_connect_bytes(), edits in edits()) {
        let mut bytes = bytes;
        mutate(&mut bytes, &edits);
        fuzz_logic::codec_connect(&bytes);
    }

    #[test]
    fn client_packets_roundtrip_through_encode_and_decode((v, packet) in versioned_packet()) {
        let codec = Codec::new(v, MAX);
        let mut buf = encode(&codec, &packet);
        prop_assert_eq!(codec.encoded_len(&packet), buf.len());
        let decoded = codec.decode(&mut buf).expect("valid").expect("complete");
        prop_assert_eq!(decoded, packet);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn connects_roundtrip_through_encode_and_decode(c in version().prop_flat_map(connect)) {
        let mut buf = BytesMut::new();
        encode_connect(&c, &mut buf).expect("encodes");
        let decoded = decode_connect(&mut buf, MAX).expect("valid").expect("complete");
        prop_assert_eq!(decoded, c);
    }

    #[test]
    fn every_prefix_of_a_valid_packet_needs_more_bytes((v, packet) in versioned_packet()) {
        let codec = Codec::new(v, MAX);
        let bytes = encode(&codec, &packet);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert!(matches!(codec.decode(&mut buf), Ok(None)), "prefix {}", len);
            prop_assert_eq!(&buf[..], &bytes[..len]);
        }
    }

    #[test]
    fn every_prefix_of_a_valid_connect_needs_more_bytes(bytes in versioned_connect_bytes()) {
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert!(matches!(decode_connect(&mut buf, MAX), Ok(None)), "prefix {}", len);
            prop_assert_eq!(&buf[..], &bytes[..len]);
        }
    }

    #[test]
    fn packets_decode_one_after_another((v, packets) in version().prop_flat_map(|v| {
        proptest::collection::vec(client_packet(v), 1..6).prop_map(move |p| (v, p))
    })) {
        let codec = Codec::new(v, MAX);
        let mut buf = BytesMut::new();
        for p in &packets {
            codec.encode(p, &mut buf).expect("encodes");
        }
        for p in &packets {
            prop_assert_eq!(&codec.decode(&mut buf).expect("valid").expect("complete"), p);
        }
        prop_assert!(matches!(codec.decode(&mut buf), Ok(None)));
    }

    #[test]
    fn filter_cover_implies_match(outer in topic_filter(), inner in topic_filter(), t in topic_name()) {
        if topic::filter_covers(&outer, &inner) && topic::matches(&inner, &t) {
            prop_assert!(topic::matches(&outer, &t), "{} covers {} which matches {}", outer, inner, t);
        }
    }

    #[test]
    fn topic_logic_holds_on_wildcard_heavy_strings(s in "[a$+#/\u{0}]{0,12}", t in "[a$/]{0,8}") {
        let mut data = s.into_bytes();
        data.push(0xff);
        data.extend(t.into_bytes());
        fuzz_logic::topic_filter(&data);
    }
}

// ------------------------------------------------------------------ server → client

fn reason_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(short_string())
}

fn connack() -> impl Strategy<Value = v5::Packet> {
    use v5::ConnectReturnCode as C;
    let code = proptest::sample::select(vec![
        C::Success,
        C::UnspecifiedError,
        C::MalformedPacket,
        C::ProtocolError,
        C::UnsupportedProtocolVersion,
        C::ClientIdentifierNotValid,
        C::BadUserNamePassword,
        C::NotAuthorized,
        C::ServerUnavailable,
        C::ServerBusy,
        C::Banned,
        C::BadAuthenticationMethod,
        C::PacketTooLarge,
        C::QuotaExceeded,
        C::ConnectionRateExceeded,
    ]);
    (
        code,
        any::<bool>(),
        proptest::option::of((
            proptest::option::of(any::<u32>()),
            proptest::option::of(1u16..),
            proptest::option::of(0u8..2),
            proptest::option::of(1u32..),
            proptest::option::of("[a-z0-9-]{1,12}"),
            proptest::option::of(any::<u16>()),
            reason_string(),
            user_properties(),
            proptest::option::of(any::<u16>()),
        )),
    )
        .prop_map(|(code, session_present, props)| {
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: session_present && code == v5::ConnectReturnCode::Success,
                code,
                properties: props.map(
                    |(
                        expiry,
                        receive_max,
                        retain,
                        max_packet,
                        assigned,
                        alias_max,
                        reason,
                        user,
                        keep_alive,
                    )| {
                        v5::ConnAckProperties {
                            session_expiry_interval: expiry,
                            receive_max,
                            max_qos: Some(1),
                            retain_available: retain,
                            max_packet_size: max_packet,
                            assigned_client_identifier: assigned,
                            topic_alias_max: alias_max,
                            reason_string: reason,
                            user_properties: user,
                            wildcard_subscription_available: Some(1),
                            subscription_identifiers_available: Some(1),
                            shared_subscription_available: Some(1),
                            server_keep_alive: keep_alive,
                            response_information: None,
                            server_reference: None,
                            authentication_method: None,
                            authentication_data: None,
                        }
                    },
                ),
            })
        })
}

fn suback() -> impl Strategy<Value = v5::Packet> {
    use v5::SubscribeReasonCode as R;
    let code = prop_oneof![
        qos().prop_map(R::Success),
        proptest::sample::select(vec![
            R::Unspecified,
            R::ImplementationSpecific,
            R::NotAuthorized,
            R::TopicFilterInvalid,
            R::PkidInUse,
            R::QuotaExceeded,
            R::SharedSubscriptionsNotSupported,
            R::SubscriptionIdNotSupported,
            R::WildcardSubscriptionsNotSupported,
        ]),
    ];
    (
        1u16..,
        proptest::collection::vec(code, 1..5),
        reason_string(),
    )
        .prop_map(|(pkid, return_codes, reason)| {
            v5::Packet::SubAck(v5::SubAck {
                pkid,
                return_codes,
                properties: reason.map(|r| v5::SubAckProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })
        })
}

fn unsuback() -> impl Strategy<Value = v5::Packet> {
    let reason = proptest::sample::select(vec![
        v5::UnsubAckReason::Success,
        v5::UnsubAckReason::NoSubscriptionExisted,
        v5::UnsubAckReason::NotAuthorized,
        v5::UnsubAckReason::TopicFilterInvalid,
    ]);
    (
        1u16..,
        proptest::collection::vec(reason, 1..5),
        reason_string(),
    )
        .prop_map(|(pkid, reasons, reason)| {
            v5::Packet::UnsubAck(v5::UnsubAck {
                pkid,
                reasons,
                properties: reason.map(|r| v5::UnsubAckProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })
        })
}

fn outgoing_publish() -> impl Strategy<Value = v5::Packet> {
    (
        publish(ProtocolVersion::V5),
        proptest::collection::vec(1usize..268_435_455, 0..3),
    )
        .prop_map(|(p, ids)| {
            let v5::Packet::Publish(mut p) = p else {
                unreachable!("publish strategy")
            };
            if !ids.is_empty() {
                let mut props = p.properties.take().unwrap_or_default();
                props.subscription_identifiers = ids;
                p.properties = Some(props);
            }
            v5::Packet::Publish(p)
        })
}

fn server_disconnect() -> impl Strategy<Value = v5::Packet> {
    use v5::DisconnectReasonCode as D;
    let code = proptest::sample::select(vec![
        D::NormalDisconnection,
        D::MalformedPacket,
        D::ProtocolError,
        D::NotAuthorized,
        D::ServerShuttingDown,
        D::KeepAliveTimeout,
        D::SessionTakenOver,
        D::TopicNameInvalid,
        D::ReceiveMaximumExceeded,
        D::TopicAliasInvalid,
        D::PacketTooLarge,
        D::QuotaExceeded,
    ]);
    (code, reason_string()).prop_map(|(reason_code, reason)| {
        v5::Packet::Disconnect(v5::Disconnect {
            reason_code,
            properties: reason.map(|r| v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(r),
                user_properties: vec![],
                server_reference: None,
            }),
        })
    })
}

fn server_packet() -> impl Strategy<Value = v5::Packet> {
    prop_oneof![
        connack(),
        suback(),
        unsuback(),
        outgoing_publish(),
        ack(ProtocolVersion::V5),
        server_disconnect(),
        Just(v5::Packet::PingResp(v5::PingResp)),
    ]
}

/// What a 3.1.1 client should read for a server packet, in v4 terms.
fn expected_v4(packet: &v5::Packet) -> Option<rumqttc::mqttbytes::v4::Packet> {
    use rumqttc::mqttbytes::v4;
    use rumqttc::mqttbytes::QoS as Q4;
    let q4 = |q: QoS| match q {
        QoS::AtMostOnce => Q4::AtMostOnce,
        QoS::AtLeastOnce => Q4::AtLeastOnce,
        QoS::ExactlyOnce => Q4::ExactlyOnce,
    };
    Some(match packet {
        v5::Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: q4(p.qos),
            retain: p.retain,
            topic: String::from_utf8(p.topic.to_vec()).expect("generated topics are UTF-8"),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        v5::Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        v5::Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        v5::Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        v5::Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        v5::Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
            s.pkid,
            s.return_codes
                .iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => v4::SubscribeReasonCode::Success(q4(*q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        v5::Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
        v5::Packet::PingResp(_) => v4::Packet::PingResp,
        v5::Packet::Disconnect(_) => return None,
        v5::Packet::ConnAck(c) => {
            let code = match tollgate::broker::codec::connack_code_v311(c.code) {
                0 => v4::ConnectReturnCode::Success,
                1 => v4::ConnectReturnCode::RefusedProtocolVersion,
                2 => v4::ConnectReturnCode::BadClientId,
                3 => v4::ConnectReturnCode::ServiceUnavailable,
                4 => v4::ConnectReturnCode::BadUserNamePassword,
                _ => v4::ConnectReturnCode::NotAuthorized,
            };
            v4::Packet::ConnAck(v4::ConnAck::new(code, c.session_present))
        }
        other => panic!("not a server packet: {other:?}"),
    })
}

proptest! {
    #![proptest_config(config())]

    /// The broker's outgoing packets are read back unchanged by rumqttc's own
    /// client-side v5 decoder (an independent reader of what we write).
    #[test]
    fn server_packets_are_read_back_by_a_v5_client(packet in server_packet()) {
        let codec = Codec::new(ProtocolVersion::V5, MAX);
        let mut buf = encode(&codec, &packet);
        prop_assert_eq!(codec.encoded_len(&packet), buf.len());
        let read = v5::Packet::read(&mut buf, None);
        match (&packet, read) {
            // rumqttc's reader refuses the two shortest DISCONNECT forms (see unit tests).
            (v5::Packet::Disconnect(d), Err(_)) if d.properties.is_none() => {}
            (_, read) => {
                prop_assert_eq!(read.expect("client decodes"), packet);
                prop_assert!(buf.is_empty(), "bytes left after the packet");
            }
        }
    }

    /// Same for 3.1.1 clients, after the documented v5 → v4 mapping.
    #[test]
    fn server_packets_are_read_back_by_a_v311_client(packet in server_packet()) {
        let codec = Codec::new(ProtocolVersion::V311, MAX);
        let packet = match packet {
            v5::Packet::Publish(mut p) => { p.properties = None; v5::Packet::Publish(p) }
            other => other,
        };
        let mut buf = encode(&codec, &packet);
        prop_assert_eq!(codec.encoded_len(&packet), buf.len());
        match expected_v4(&packet) {
            None => prop_assert!(buf.is_empty(), "DISCONNECT must not be sent to 3.1.1 clients"),
            Some(expected) => {
                let read = rumqttc::mqttbytes::v4::Packet::read(&mut buf, MAX).expect("client decodes");
                prop_assert_eq!(read, expected);
                prop_assert!(buf.is_empty(), "bytes left after the packet");
            }
        }
    }
}

// ------------------------------------------------------------------ stream reassembly

/// Decodes until "need more" or the first error; errors as their reason code.
fn drain(codec: &Codec, buf: &mut BytesMut, out: &mut Vec<Result<v5::Packet, u8>>) -> bool {
    loop {
        match codec.decode(buf) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => return true,
            Err(e) => {
                out.push(Err(e.reason_code()));
                return false;
            }
        }
    }
}

fn stream() -> impl Strategy<Value = (ProtocolVersion, Vec<u8>)> {
    version().prop_flat_map(|v| {
        (
            proptest::collection::vec(client_packet(v), 1..5),
            proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..2),
        )
            .prop_map(move |(packets, edits)| {
                let codec = Codec::new(v, MAX);
                let mut bytes = Vec::new();
                for p in &packets {
                    bytes.extend_from_slice(&encode(&codec, p));
                }
                mutate(&mut bytes, &edits);
                (v, bytes)
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// TCP may deliver a stream in any pieces: decoding must not depend on them.
    #[test]
    fn chunked_input_decodes_like_whole_input((v, bytes) in stream(), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let codec = Codec::new(v, MAX);
        let mut whole = Vec::new();
        drain(&codec, &mut BytesMut::from(&bytes[..]), &mut whole);

        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut chunked = Vec::new();
        let mut buf = BytesMut::new();
        let mut from = 0;
        for to in points {
            buf.extend_from_slice(&bytes[from..to]);
            from = to;
            if !drain(&codec, &mut buf, &mut chunked) {
                break;
            }
        }
        prop_assert_eq!(chunked, whole);
    }
}
