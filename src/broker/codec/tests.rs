//! Unit tests for the codec wrapper: every mapping, every rejection, and every
//! rumqttc 0.25.1 behaviour the wrapper relies on or works around.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;

use super::*;

const MAX: usize = 1 << 20;

/// A complete packet: first byte, remaining length, body.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(byte1);
    put_remaining_length(&mut out, body.len()).expect("test body fits");
    out.extend_from_slice(body);
    out.to_vec()
}

/// A two-byte length prefixed field.
fn s(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn v311() -> Codec {
    Codec::new(ProtocolVersion::V311, MAX)
}

fn v5c() -> Codec {
    Codec::new(ProtocolVersion::V5, MAX)
}

fn decode_one(codec: &Codec, bytes: &[u8]) -> Result<Option<v5::Packet>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    codec.decode(&mut buf)
}

fn decode_err(codec: &Codec, bytes: &[u8]) -> CodecError {
    match decode_one(codec, bytes) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, decoded {p:?}"),
    }
}

fn connect_err(bytes: &[u8]) -> CodecError {
    let mut buf = BytesMut::from(bytes);
    match decode_connect(&mut buf, MAX) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, decoded {p:?}"),
    }
}

fn connect_ok(bytes: &[u8]) -> ConnectPacket {
    let mut buf = BytesMut::from(bytes);
    let packet = decode_connect(&mut buf, MAX)
        .expect("valid CONNECT")
        .expect("complete CONNECT");
    assert!(buf.is_empty(), "CONNECT must be consumed entirely");
    packet
}

/// CONNECT body: protocol name, level, flags, keep alive, then `rest`.
fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    cat(&[&s(name), &[level, flags, 0, 60], rest])
}

fn assert_every_prefix_needs_more(bytes: &[u8], decode: impl Fn(&mut BytesMut) -> bool) {
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..len]);
        assert!(decode(&mut buf), "prefix of {len} bytes must be Ok(None)");
        assert_eq!(
            &buf[..],
            &bytes[..len],
            "prefix of {len} bytes must stay untouched"
        );
    }
}

fn sample_v5_connect() -> ConnectPacket {
    let mut props = v5::ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    props.receive_maximum = Some(10);
    props.user_properties = vec![("k".into(), "v".into())];
    ConnectPacket {
        version: ProtocolVersion::V5,
        connect: v5::Connect {
            keep_alive: 30,
            client_id: "dev-1".into(),
            clean_start: false,
            properties: Some(props),
        },
        will: Some(v5::LastWill {
            topic: Bytes::from_static(b"status/dev-1"),
            message: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(v5::LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: None,
                content_type: Some("text/plain".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"\xff\x00binary\x80")),
    }
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn decodes_minimal_v311_connect() {
    let bytes = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &s(b"c1")));
    let c = connect_ok(&bytes);
    assert_eq!(c.version, ProtocolVersion::V311);
    assert_eq!(c.connect.client_id, "c1");
    assert!(c.connect.clean_start);
    assert_eq!(c.connect.keep_alive, 60);
    assert_eq!(c.connect.properties, None);
    assert_eq!((c.will, c.username, c.password), (None, None, None));
}

#[test]
fn connect_roundtrips_v5_with_will_properties_and_binary_password() {
    let packet = sample_v5_connect();
    let mut buf = BytesMut::new();
    encode_connect(&packet, &mut buf).expect("encodes");
    assert_eq!(connect_ok(&buf), packet);
}

#[test]
fn connect_roundtrips_v311_with_will_and_binary_password() {
    let mut packet = sample_v5_connect();
    packet.version = ProtocolVersion::V311;
    packet.connect.properties = None;
    if let Some(will) = packet.will.as_mut() {
        will.properties = None;
    }
    let mut buf = BytesMut::new();
    encode_connect(&packet, &mut buf).expect("encodes");
    assert_eq!(connect_ok(&buf), packet);
}

#[test]
fn connect_password_is_returned_as_raw_bytes() {
    let body = connect_body(
        b"MQTT",
        4,
        0xc2,
        &cat(&[&s(b"c"), &s(b"user"), &s(b"\xff\xfe\x00")]),
    );
    let c = connect_ok(&frame(0x10, &body));
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"\xff\xfe\x00"[..]));
}

#[test]
fn every_prefix_of_a_connect_needs_more_bytes() {
    let mut buf = BytesMut::new();
    encode_connect(&sample_v5_connect(), &mut buf).expect("encodes");
    assert_every_prefix_needs_more(&buf, |b| matches!(decode_connect(b, MAX), Ok(None)));
}

#[test]
fn refuses_reserved_connect_flag() {
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x03, &s(b"c"))));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("reserved connect flag"), "{e}");
    assert_eq!(e.reason_code(), 0x81);
    assert_eq!(e.connack_v311_code(), None);
}

#[test]
fn refuses_connect_fixed_header_flags() {
    let e = connect_err(&frame(0x11, &connect_body(b"MQTT", 4, 0x02, &s(b"c"))));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
}

#[test]
fn refuses_wrong_protocol_level_with_v311_code_1() {
    for level in [3u8, 6, 0, 255] {
        let e = connect_err(&frame(0x10, &connect_body(b"MQTT", level, 0x02, &s(b"c"))));
        assert!(
            matches!(e, CodecError::UnsupportedProtocol { level: l, .. } if l == level),
            "{e}"
        );
        assert_eq!(e.reason_code(), 0x84);
        assert_eq!(e.connack_v311_code(), Some(1));
    }
}

#[test]
fn refuses_mqtt31_mqisdp_with_v311_code_1() {
    let e = connect_err(&frame(0x10, &connect_body(b"MQIsdp", 3, 0x02, &s(b"c"))));
    assert!(matches!(e, CodecError::UnsupportedProtocol { .. }), "{e}");
    assert_eq!(e.connack_v311_code(), Some(1));
}

#[test]
fn refuses_unknown_protocol_name_without_connack() {
    let e = connect_err(&frame(0x10, &connect_body(b"HTTP", 4, 0x02, &s(b"c"))));
    assert!(matches!(e, CodecError::UnsupportedProtocol { .. }), "{e}");
    assert_eq!(e.reason_code(), 0x84);
    assert_eq!(e.connack_v311_code(), None);
}

#[test]
fn refuses_inconsistent_will_flags() {
    // Will QoS 3.
    let will = cat(&[&s(b"c"), &s(b"t"), &s(b"m")]);
    let e = connect_err(&frame(
        0x10,
        &connect_body(b"MQTT", 4, 0x02 | 0x04 | 0x18, &will),
    ));
    assert!(e.to_string().contains("will QoS 3"), "{e}");
    // Will retain without will flag.
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x22, &s(b"c"))));
    assert!(e.to_string().contains("without the will flag"), "{e}");
    // Will QoS without will flag.
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x0a, &s(b"c"))));
    assert!(e.to_string().contains("without the will flag"), "{e}");
}

#[test]
fn refuses_will_topic_with_wildcard() {
    let will = cat(&[&s(b"c"), &s(b"a/#"), &s(b"m")]);
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x06, &will)));
    assert!(matches!(e, CodecError::TopicName { .. }), "{e}");
    assert_eq!(e.reason_code(), 0x90);
}

#[test]
fn password_without_username_is_malformed_in_v311_only() {
    let rest = cat(&[&s(b"c"), &s(b"pw")]);
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x42, &rest)));
    assert!(e.to_string().contains("password flag"), "{e}");
    let rest5 = cat(&[&[0u8], &s(b"c"), &s(b"pw")]);
    let c = connect_ok(&frame(0x10, &connect_body(b"MQTT", 5, 0x42, &rest5)));
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn refuses_invalid_utf8_and_nul_in_connect_strings() {
    let e = connect_err(&frame(
        0x10,
        &connect_body(b"MQTT", 4, 0x02, &s(b"\xc3\x28")),
    ));
    assert!(
        e.to_string()
            .contains("client identifier is not valid UTF-8"),
        "{e}"
    );
    assert_eq!(e.reason_code(), 0x81);
    let rest = cat(&[&s(b"c"), &s(b"us\0er")]);
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x82, &rest)));
    assert!(e.to_string().contains("user name"), "{e}");
}

#[test]
fn empty_client_id_needs_clean_session_in_v311() {
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x00, &s(b""))));
    assert!(matches!(e, CodecError::ClientIdRejected { .. }), "{e}");
    assert_eq!(e.connack_v311_code(), Some(2));
    assert_eq!(e.reason_code(), 0x85);
    let c = connect_ok(&frame(0x10, &connect_body(b"MQTT", 4, 0x02, &s(b""))));
    assert_eq!(c.connect.client_id, "");
    // MQTT 5 allows it either way (the server assigns an id).
    let c = connect_ok(&frame(
        0x10,
        &connect_body(b"MQTT", 5, 0x00, &cat(&[&[0u8], &s(b"")])),
    ));
    assert!(!c.connect.clean_start);
}

#[test]
fn first_packet_must_be_connect() {
    for byte1 in [0x30u8, 0x82, 0xc0, 0xe0, 0x20, 0x00, 0xf0] {
        let mut buf = BytesMut::from(&[byte1][..]);
        let e = decode_connect(&mut buf, MAX).expect_err("not CONNECT");
        assert!(matches!(e, CodecError::NotConnect { .. }), "{e}");
        assert_eq!(e.reason_code(), 0x82);
    }
}

#[test]
fn oversized_connect_is_refused_before_its_body_arrives() {
    let bytes = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &s(&[b'x'; 200])));
    let mut buf = BytesMut::from(&bytes[..4]);
    let e = decode_connect(&mut buf, 100).expect_err("too large");
    assert!(
        matches!(e, CodecError::PacketTooLarge { max: 100, .. }),
        "{e}"
    );
    assert_eq!(e.reason_code(), 0x95);
}

#[test]
fn refuses_bytes_after_the_connect_payload() {
    let rest = cat(&[&s(b"c"), &[0xaa]]);
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x02, &rest)));
    assert!(e.to_string().contains("unexpected bytes"), "{e}");
}

#[test]
fn refuses_truncated_connect_fields() {
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 4, 0x82, &s(b"c"))));
    assert!(e.to_string().contains("user name"), "{e}");
    let e = connect_err(&frame(0x10, &[0, 4, b'M']));
    assert!(e.to_string().contains("protocol name"), "{e}");
}

#[test]
fn validates_v5_connect_properties() {
    let with_props = |props: &[u8]| {
        let mut section = BytesMut::new();
        put_remaining_length(&mut section, props.len()).expect("small");
        section.extend_from_slice(props);
        frame(
            0x10,
            &connect_body(b"MQTT", 5, 0x02, &cat(&[&section, &s(b"c")])),
        )
    };
    // Duplicate Session Expiry Interval.
    let e = connect_err(&with_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]));
    assert!(matches!(e, CodecError::Protocol { .. }), "{e}");
    // Receive Maximum 0.
    let e = connect_err(&with_props(&[0x21, 0, 0]));
    assert!(e.to_string().contains("Receive Maximum"), "{e}");
    // Authentication Data without Authentication Method.
    let e = connect_err(&with_props(&cat(&[&[0x16], &s(b"x")])));
    assert!(e.to_string().contains("Authentication Data"), "{e}");
    // A PUBLISH-only property.
    let e = connect_err(&with_props(&[0x23, 0, 1]));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    // Unknown identifier.
    let e = connect_err(&with_props(&[0x7f, 0]));
    assert!(e.to_string().contains("unknown property"), "{e}");
    // Property length past the end.
    let e = connect_err(&frame(0x10, &connect_body(b"MQTT", 5, 0x02, &[20, 0x11])));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    // Valid: Maximum Packet Size and a user property.
    let c = connect_ok(&with_props(&cat(&[
        &[0x27, 0, 0, 1, 0],
        &[0x26],
        &s(b"k"),
        &s(b"v"),
    ])));
    let props = c.connect.properties.expect("properties");
    assert_eq!(props.max_packet_size, Some(256));
    assert_eq!(
        props.user_properties,
        vec![("k".to_owned(), "v".to_owned())]
    );
}

// ---------------------------------------------------------------- PUBLISH

fn publish_v4(qos: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let pkid: &[u8] = if qos > 0 { &[0, 7] } else { &[] };
    frame(0x30 | (qos << 1), &cat(&[&s(topic), pkid, payload]))
}

fn publish_v5(qos: u8, topic: &[u8], props: &[u8], payload: &[u8]) -> Vec<u8> {
    let pkid: &[u8] = if qos > 0 { &[0, 7] } else { &[] };
    let mut section = BytesMut::new();
    put_remaining_length(&mut section, props.len()).expect("small");
    section.extend_from_slice(props);
    frame(
        0x30 | (qos << 1),
        &cat(&[&s(topic), pkid, &section, payload]),
    )
}

#[test]
fn decodes_publish_v311_as_v5_without_properties() {
    for qos in 0..3u8 {
        let Some(v5::Packet::Publish(p)) =
            decode_one(&v311(), &publish_v4(qos, b"a/b", b"hello")).expect("valid")
        else {
            panic!("expected PUBLISH");
        };
        assert_eq!(&p.topic[..], b"a/b");
        assert_eq!(&p.payload[..], b"hello");
        assert_eq!(p.qos as u8, qos);
        assert_eq!(p.pkid, if qos > 0 { 7 } else { 0 });
        assert_eq!(p.properties, None);
    }
}

#[test]
fn decodes_publish_v5_with_properties() {
    let props = cat(&[
        &[0x01, 1, 0x02, 0, 0, 0, 9, 0x23, 0, 3],
        &[0x08],
        &s(b"reply/x"),
        &[0x09],
        &s(b"\x01\x02"),
    ]);
    let Some(v5::Packet::Publish(p)) =
        decode_one(&v5c(), &publish_v5(1, b"t", &props, b"x")).expect("valid")
    else {
        panic!("expected PUBLISH");
    };
    let props = p.properties.expect("properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.message_expiry_interval, Some(9));
    assert_eq!(props.topic_alias, Some(3));
    assert_eq!(props.response_topic.as_deref(), Some("reply/x"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(&p.payload[..], b"x");
}

#[test]
fn publish_payload_is_not_copied() {
    let bytes = publish_v5(0, b"t", &[], &[7u8; 1000]);
    let mut buf = BytesMut::from(&bytes[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(v5::Packet::Publish(p)) = v5c().decode(&mut buf).expect("valid") else {
        panic!("expected PUBLISH");
    };
    assert!(
        range.contains(&(p.payload.as_ptr() as usize)),
        "payload must point into the read buffer"
    );
    assert!(
        range.contains(&(p.topic.as_ptr() as usize)),
        "topic must point into the read buffer"
    );
}

#[test]
fn every_prefix_of_a_publish_needs_more_bytes() {
    for codec in [v311(), v5c()] {
        let bytes = if codec.version == ProtocolVersion::V5 {
            publish_v5(2, b"x/y", &[0x02, 0, 0, 0, 1], &[1u8; 300])
        } else {
            publish_v4(2, b"x/y", &[1u8; 300])
        };
        assert_every_prefix_needs_more(&bytes, |b| matches!(codec.decode(b), Ok(None)));
        assert!(decode_one(&codec, &bytes).expect("valid").is_some());
    }
}

#[test]
fn decodes_back_to_back_packets_one_at_a_time() {
    let mut bytes = publish_v4(1, b"a", b"1");
    bytes.extend(frame(0xc0, &[]));
    bytes.extend(&publish_v4(0, b"b", b"2")[..3]);
    let mut buf = BytesMut::from(&bytes[..]);
    let codec = v311();
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(v5::Packet::Publish(_)))
    ));
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(v5::Packet::PingReq(_)))
    ));
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert_eq!(buf.len(), 3);
}

#[test]
fn refuses_publish_qos3_and_dup_on_qos0_from_the_first_byte() {
    for codec in [v311(), v5c()] {
        let e = decode_err(&codec, &[0x36]);
        assert!(e.to_string().contains("QoS 3"), "{e}");
        assert_eq!(e.reason_code(), 0x81);
        let e = decode_err(&codec, &[0x38]);
        assert!(e.to_string().contains("DUP"), "{e}");
    }
}

#[test]
fn refuses_wildcards_nul_and_invalid_utf8_in_publish_topics() {
    for codec in [v311(), v5c()] {
        let build = |topic: &[u8]| {
            if codec.version == ProtocolVersion::V5 {
                publish_v5(0, topic, &[], b"p")
            } else {
                publish_v4(0, topic, b"p")
            }
        };
        for topic in [&b"a/+"[..], b"a/#", b"#"] {
            let e = decode_err(&codec, &build(topic));
            assert!(
                matches!(
                    e,
                    CodecError::TopicName {
                        source: TopicError::WildcardInName(_),
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(e.reason_code(), 0x90);
        }
        let e = decode_err(&codec, &build(b"a\0b"));
        assert!(
            matches!(
                e,
                CodecError::TopicName {
                    source: TopicError::Nul { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.reason_code(), 0x81);
        let e = decode_err(&codec, &build(b"a\xffb"));
        assert!(
            matches!(
                e,
                CodecError::TopicName {
                    source: TopicError::NotUtf8 { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.reason_code(), 0x81);
    }
}

#[test]
fn empty_publish_topic_is_left_to_alias_resolution_in_v5_only() {
    let e = decode_err(&v311(), &publish_v4(0, b"", b"p"));
    assert!(
        matches!(
            e,
            CodecError::TopicName {
                source: TopicError::Empty,
                ..
            }
        ),
        "{e}"
    );
    let p = decode_one(&v5c(), &publish_v5(0, b"", &[0x23, 0, 1], b"p")).expect("valid in v5");
    assert!(matches!(p, Some(v5::Packet::Publish(p)) if p.topic.is_empty()));
}

#[test]
fn refuses_packet_id_zero() {
    let e = decode_err(&v311(), &frame(0x32, &cat(&[&s(b"t"), &[0, 0]])));
    assert!(e.to_string().contains("packet identifier 0"), "{e}");
    let e = decode_err(&v5c(), &frame(0x82, &cat(&[&[0, 0, 0], &s(b"t"), &[0]])));
    assert!(e.to_string().contains("packet identifier 0"), "{e}");
    let e = decode_err(&v311(), &frame(0xa2, &cat(&[&[0, 0], &s(b"t")])));
    assert!(e.to_string().contains("packet identifier 0"), "{e}");
    let e = decode_err(&v311(), &frame(0x40, &[0, 0]));
    assert!(e.to_string().contains("packet identifier 0"), "{e}");
}

#[test]
fn refuses_bad_publish_properties() {
    let codec = v5c();
    // Subscription Identifier from a client.
    let e = decode_err(&codec, &publish_v5(0, b"t", &[0x0b, 1], b""));
    assert!(matches!(e, CodecError::Protocol { .. }), "{e}");
    // Server-only property.
    let e = decode_err(&codec, &publish_v5(0, b"t", &[0x21, 0, 1], b""));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    // Duplicate Message Expiry Interval.
    let e = decode_err(
        &codec,
        &publish_v5(0, b"t", &[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1], b""),
    );
    assert!(e.to_string().contains("more than once"), "{e}");
    // Payload Format Indicator 2.
    let e = decode_err(&codec, &publish_v5(0, b"t", &[0x01, 2], b""));
    assert!(e.to_string().contains("Payload Format Indicator"), "{e}");
    // Response Topic with a wildcard.
    let e = decode_err(
        &codec,
        &publish_v5(0, b"t", &cat(&[&[0x08], &s(b"r/#")]), b""),
    );
    assert!(e.to_string().contains("Response Topic"), "{e}");
    // User property with invalid UTF-8.
    let e = decode_err(
        &codec,
        &publish_v5(0, b"t", &cat(&[&[0x26], &s(b"k"), &s(b"\xff")]), b""),
    );
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    // Property value cut off by the end of the section.
    let e = decode_err(
        &codec,
        &frame(0x30, &cat(&[&s(b"t"), &[2, 0x02, 0], b"payload"])),
    );
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
}

// ---------------------------------------------------------------- fixed header

#[test]
fn refuses_wrong_fixed_header_flags() {
    for codec in [v311(), v5c()] {
        for byte1 in [0x80u8, 0x83, 0x60, 0x61, 0xa0, 0x41, 0x52, 0x72, 0xc1, 0xe2] {
            let e = decode_err(&codec, &[byte1]);
            assert!(
                e.to_string().contains("fixed header flags"),
                "{byte1:#x}: {e}"
            );
            assert_eq!(e.reason_code(), 0x81);
        }
    }
}

#[test]
fn refuses_server_only_packets_and_second_connect() {
    for codec in [v311(), v5c()] {
        for byte1 in [0x20u8, 0x90, 0xb0, 0xd0, 0x10] {
            let e = decode_err(&codec, &[byte1, 0]);
            assert!(matches!(e, CodecError::Protocol { .. }), "{byte1:#x}: {e}");
            assert_eq!(e.reason_code(), 0x82);
        }
    }
}

#[test]
fn refuses_reserved_packet_types_and_auth() {
    let e = decode_err(&v311(), &[0x00, 0]);
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    let e = decode_err(&v311(), &[0xf0, 0]);
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    let e = decode_err(&v5c(), &[0xf0, 0]);
    assert!(e.to_string().contains("AUTH"), "{e}");
    assert_eq!(e.reason_code(), 0x82);
}

#[test]
fn refuses_oversized_packets_before_the_body_arrives() {
    let codec = Codec::new(ProtocolVersion::V5, 64);
    let bytes = publish_v5(0, b"t", &[], &[0u8; 100]);
    let e = decode_err(&codec, &bytes[..3]);
    assert!(
        matches!(e, CodecError::PacketTooLarge { max: 64, .. }),
        "{e}"
    );
    assert_eq!(e.reason_code(), 0x95);
    // The limit counts the whole packet, fixed header included.
    let exact = publish_v5(0, b"t", &[], &[0u8; 58]);
    assert_eq!(exact.len(), 64);
    assert!(decode_one(&codec, &exact).expect("fits").is_some());
    let over = publish_v5(0, b"t", &[], &[0u8; 59]);
    assert!(matches!(
        decode_err(&codec, &over),
        CodecError::PacketTooLarge { size: 65, .. }
    ));
}

#[test]
fn refuses_remaining_length_longer_than_four_bytes() {
    let e = decode_err(&v5c(), &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
    let mut buf = BytesMut::from(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01][..]);
    assert!(matches!(
        decode_connect(&mut buf, MAX),
        Err(CodecError::Malformed { .. })
    ));
}

// ---------------------------------------------------------------- SUBSCRIBE / UNSUBSCRIBE

fn subscribe(v5: bool, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = vec![0, 9];
    if v5 {
        body.push(0);
    }
    for (f, o) in filters {
        body.extend(s(f));
        body.push(*o);
    }
    frame(0x82, &body)
}

#[test]
fn v311_subscribe_gets_default_v5_options() {
    let p = decode_one(
        &v311(),
        &subscribe(false, &[(b"a/+", 1), (b"$share/g/b/#", 2)]),
    )
    .expect("valid");
    let Some(v5::Packet::Subscribe(sub)) = p else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(sub.pkid, 9);
    assert_eq!(sub.properties, None);
    assert_eq!(
        sub.filters,
        vec![
            v5::Filter {
                path: "a/+".into(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
            },
            v5::Filter {
                path: "$share/g/b/#".into(),
                qos: QoS::ExactlyOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
            },
        ]
    );
}

#[test]
fn v5_subscribe_keeps_options_and_identifier() {
    let body = cat(&[&[0, 9, 2, 0x0b, 5], &s(b"a/#"), &[0b0010_1101]]);
    let Some(v5::Packet::Subscribe(sub)) = decode_one(&v5c(), &frame(0x82, &body)).expect("valid")
    else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(sub.properties.expect("properties").id, Some(5));
    let f = &sub.filters[0];
    assert_eq!(
        (f.qos, f.nolocal, f.preserve_retain),
        (QoS::AtLeastOnce, true, true)
    );
    assert_eq!(f.retain_forward_rule, v5::RetainForwardRule::Never);
}

#[test]
fn refuses_invalid_subscriptions() {
    for v5 in [false, true] {
        let codec = if v5 { v5c() } else { v311() };
        let e = decode_err(&codec, &subscribe(v5, &[]));
        assert!(e.to_string().contains("without any topic filter"), "{e}");
        assert_eq!(e.reason_code(), 0x82);
        let e = decode_err(&codec, &subscribe(v5, &[(b"a", 3)]));
        assert!(e.to_string().contains("QoS 3"), "{e}");
        let e = decode_err(&codec, &subscribe(v5, &[(b"a", 0x80)]));
        assert!(e.to_string().contains("reserved bits"), "{e}");
        let e = decode_err(&codec, &subscribe(v5, &[(b"a/#/b", 0)]));
        assert!(matches!(e, CodecError::TopicFilter { .. }), "{e}");
        assert_eq!(e.reason_code(), 0x8F);
        let e = decode_err(&codec, &subscribe(v5, &[(b"$share/g", 0)]));
        assert!(
            matches!(
                e,
                CodecError::TopicFilter {
                    source: TopicError::SharedMalformed(_),
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_err(&codec, &subscribe(v5, &[(b"a\0", 0)]));
        assert_eq!(e.reason_code(), 0x81, "{e}");
        let e = decode_err(&codec, &subscribe(v5, &[(b"", 0)]));
        assert!(
            matches!(
                e,
                CodecError::TopicFilter {
                    source: TopicError::Empty,
                    ..
                }
            ),
            "{e}"
        );
        // Truncated options byte.
        let mut bytes = subscribe(v5, &[(b"a", 0)]);
        bytes.pop();
        bytes[1] -= 1;
        assert!(matches!(
            decode_err(&codec, &bytes),
            CodecError::Malformed { .. }
        ));
    }
    // v3.1.1 has no subscription options: bits 2..7 are reserved.
    let e = decode_err(&v311(), &subscribe(false, &[(b"a", 0x04)]));
    assert!(e.to_string().contains("reserved bits"), "{e}");
    let e = decode_err(&v5c(), &subscribe(true, &[(b"a", 0x30)]));
    assert!(e.to_string().contains("retain handling 3"), "{e}");
    let e = decode_err(&v5c(), &subscribe(true, &[(b"$share/g/a", 0x04)]));
    assert!(e.to_string().contains("No Local"), "{e}");
    // Subscription Identifier 0 and twice.
    let e = decode_err(
        &v5c(),
        &frame(0x82, &cat(&[&[0, 9, 2, 0x0b, 0], &s(b"a"), &[0]])),
    );
    assert!(e.to_string().contains("must not be 0"), "{e}");
    let e = decode_err(
        &v5c(),
        &frame(0x82, &cat(&[&[0, 9, 4, 0x0b, 1, 0x0b, 2], &s(b"a"), &[0]])),
    );
    assert!(e.to_string().contains("more than once"), "{e}");
}

#[test]
fn decodes_and_validates_unsubscribe() {
    let Some(v5::Packet::Unsubscribe(u)) = decode_one(
        &v311(),
        &frame(0xa2, &cat(&[&[0, 4], &s(b"a/+"), &s(b"b")])),
    )
    .expect("valid") else {
        panic!("expected UNSUBSCRIBE");
    };
    assert_eq!(
        (u.pkid, u.filters.clone(), u.properties),
        (4, vec!["a/+".to_owned(), "b".to_owned()], None)
    );
    let Some(v5::Packet::Unsubscribe(u)) =
        decode_one(&v5c(), &frame(0xa2, &cat(&[&[0, 4, 0], &s(b"a")]))).expect("valid")
    else {
        panic!("expected UNSUBSCRIBE");
    };
    assert_eq!(u.filters, vec!["a".to_owned()]);
    let e = decode_err(&v311(), &frame(0xa2, &[0, 4]));
    assert!(e.to_string().contains("without any topic filter"), "{e}");
    let e = decode_err(&v5c(), &frame(0xa2, &cat(&[&[0, 4, 0], &s(b"a/#/c")])));
    assert!(matches!(e, CodecError::TopicFilter { .. }), "{e}");
}

// ---------------------------------------------------------------- acks, ping, disconnect

#[test]
fn decodes_acks_in_both_versions() {
    for (byte1, name) in [
        (0x40u8, "PUBACK"),
        (0x50, "PUBREC"),
        (0x62, "PUBREL"),
        (0x70, "PUBCOMP"),
    ] {
        let p = decode_one(&v311(), &frame(byte1, &[0, 5]))
            .expect("valid")
            .expect("complete");
        assert_eq!(v5_packet_name(&p), name);
        let p5 = decode_one(&v5c(), &frame(byte1, &[0, 5]))
            .expect("valid")
            .expect("complete");
        assert_eq!(
            p, p5,
            "{name}: v3.1.1 and v5 short forms map to the same packet"
        );
        // v3.1.1 acks are exactly 2 bytes.
        let e = decode_err(&v311(), &frame(byte1, &[0, 5, 0]));
        assert!(e.to_string().contains("unexpected bytes"), "{name}: {e}");
    }
    // v5 with reason code only, and with properties.
    let Some(v5::Packet::PubAck(a)) =
        decode_one(&v5c(), &frame(0x40, &[0, 5, 0x10])).expect("valid")
    else {
        panic!("expected PUBACK");
    };
    assert_eq!(a.reason, v5::PubAckReason::NoMatchingSubscribers);
    let body = cat(&[&[0, 5, 0x80, 5, 0x1f], &s(b"no")]);
    let Some(v5::Packet::PubRec(a)) = decode_one(&v5c(), &frame(0x50, &body)).expect("valid")
    else {
        panic!("expected PUBREC");
    };
    assert_eq!(
        a.properties.expect("properties").reason_string.as_deref(),
        Some("no")
    );
    // Trailing bytes after the properties.
    let e = decode_err(&v5c(), &frame(0x40, &[0, 5, 0, 0, 9]));
    assert!(e.to_string().contains("unexpected bytes"), "{e}");
    // Unknown reason code.
    let e = decode_err(&v5c(), &frame(0x40, &[0, 5, 0x05]));
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
}

#[test]
fn decodes_pingreq_and_refuses_a_body() {
    for codec in [v311(), v5c()] {
        assert!(matches!(
            decode_one(&codec, &[0xc0, 0]),
            Ok(Some(v5::Packet::PingReq(_)))
        ));
        assert!(matches!(
            decode_err(&codec, &[0xc0, 1, 0]),
            CodecError::Malformed { .. }
        ));
    }
}

#[test]
fn v311_disconnect_maps_to_normal_disconnection() {
    let p = decode_one(&v311(), &[0xe0, 0])
        .expect("valid")
        .expect("complete");
    assert_eq!(
        p,
        v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection
        ))
    );
    assert!(matches!(
        decode_err(&v311(), &[0xe0, 1, 0]),
        CodecError::Malformed { .. }
    ));
}

#[test]
fn decodes_every_v5_disconnect_form() {
    let normal = decode_one(&v5c(), &[0xe0, 0])
        .expect("valid")
        .expect("complete");
    assert!(
        matches!(normal, v5::Packet::Disconnect(d) if d.reason_code == v5::DisconnectReasonCode::NormalDisconnection)
    );
    let with_will = decode_one(&v5c(), &[0xe0, 1, 0x04])
        .expect("valid")
        .expect("complete");
    assert!(
        matches!(with_will, v5::Packet::Disconnect(d) if d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage)
    );
    let with_props = decode_one(&v5c(), &[0xe0, 7, 0, 5, 0x11, 0, 0, 0, 9])
        .expect("valid")
        .expect("complete");
    let v5::Packet::Disconnect(d) = with_props else {
        panic!("expected DISCONNECT");
    };
    assert_eq!(
        d.properties.expect("properties").session_expiry_interval,
        Some(9)
    );
    assert!(matches!(
        decode_err(&v5c(), &[0xe0, 1, 0x01]),
        CodecError::Malformed { .. }
    ));
    assert!(matches!(
        decode_err(&v5c(), &[0xe0, 3, 0, 0, 0]),
        CodecError::Malformed { .. }
    ));
}

// ---------------------------------------------------------------- encoding

fn encode(codec: &Codec, packet: &v5::Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let n = codec.encode(packet, &mut buf).expect("encodes");
    assert_eq!(n, buf.len());
    buf.to_vec()
}

fn publish(qos: QoS, pkid: u16) -> v5::Publish {
    v5::Publish {
        dup: false,
        qos,
        retain: true,
        topic: Bytes::from_static(b"a/b"),
        pkid,
        payload: Bytes::from_static(b"hi"),
        properties: Some(v5::PublishProperties {
            message_expiry_interval: Some(5),
            subscription_identifiers: vec![3, 300],
            ..Default::default()
        }),
    }
}

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

fn connack_properties() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: Some(10),
        receive_max: Some(5),
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: Some("auto-1".into()),
        topic_alias_max: None,
        reason_string: Some("why".into()),
        user_properties: vec![],
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
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
fn auth_is_never_encoded() {
    // `AuthReasonCode` is not exported, so build the packet through its reader.
    let wire = Bytes::from_static(&[0xf0, 2, 0, 0]);
    let header = parse_header(&wire).expect("valid").expect("complete");
    let auth = v5::Packet::Auth(v5::Auth::read(header.v5(), wire).expect("rumqttc reads AUTH"));
    for codec in [v311(), v5c()] {
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(&auth, &mut buf),
            Err(CodecError::Encode { .. })
        ));
        assert!(buf.is_empty());
    }
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

/// Why DISCONNECT is decoded by tollgate: mqttbytes refuses the two shortest legal forms.
#[test]
fn rumqttc_refuses_short_v5_disconnects() {
    let mut buf = BytesMut::from(&[0xe0, 0][..]);
    assert!(
        v5::Packet::read(&mut buf, None).is_err(),
        "rumqttc now accepts `E0 00`: simplify decode"
    );
    let mut buf = BytesMut::from(&[0xe0, 1, 0x04][..]);
    assert!(
        v5::Packet::read(&mut buf, None).is_err(),
        "rumqttc now accepts `E0 01 04`: simplify decode"
    );
}

/// Why DISCONNECT is encoded by tollgate.
#[test]
fn rumqttc_writes_a_stray_byte_after_a_disconnect_reason_code() {
    let mut buf = BytesMut::new();
    v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::SessionTakenOver,
    ))
    .write(&mut buf, None)
    .expect("writes");
    assert_eq!(
        &buf[..],
        &[0xe0, 1, 0x8e, 0],
        "rumqttc fixed DISCONNECT encoding: simplify encode"
    );
}

/// Why CONNACK codes are remapped before v5 encoding.
#[test]
fn rumqttc_panics_encoding_v311_connack_codes_in_v5() {
    let ack = v5::ConnAck {
        session_present: false,
        code: v5::ConnectReturnCode::BadClientId,
        properties: None,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut buf = BytesMut::new();
        let _ = ack.write(&mut buf);
    }));
    assert!(
        result.is_err(),
        "rumqttc no longer panics on BadClientId: remapping is optional now"
    );
}

/// Why encode truncates the buffer on error.
#[test]
fn rumqttc_writes_half_a_publish_before_refusing_packet_id_zero() {
    let mut buf = BytesMut::new();
    let p = v5::Publish {
        properties: None,
        ..publish(QoS::AtLeastOnce, 0)
    };
    assert!(p.write(&mut buf).is_err());
    assert!(!buf.is_empty(), "rumqttc now checks before writing");
}

/// Why packet types are checked by tollgate: mqttbytes decodes server packets from anyone.
#[test]
fn rumqttc_decodes_server_only_packets_and_ignores_flags() {
    let mut buf = BytesMut::from(&[0x20, 3, 0, 0, 0][..]);
    assert!(matches!(
        v5::Packet::read(&mut buf, None),
        Ok(v5::Packet::ConnAck(_))
    ));
    let mut buf = BytesMut::from(&frame(0x80, &cat(&[&[0, 1, 0], &s(b"a"), &[0]]))[..]);
    assert!(matches!(
        v5::Packet::read(&mut buf, None),
        Ok(v5::Packet::Subscribe(_))
    ));
    let mut buf = BytesMut::from(&frame(0x80, &cat(&[&[0, 1], &s(b"a"), &[0xfc]]))[..]);
    assert!(matches!(
        m4::v4::Packet::read(&mut buf, 1000),
        Ok(m4::v4::Packet::Subscribe(_))
    ));
    // Trailing bytes in a v3.1.1 PUBACK are ignored.
    let mut buf = BytesMut::from(&[0x40, 3, 0, 1, 9][..]);
    assert!(matches!(
        m4::v4::Packet::read(&mut buf, 1000),
        Ok(m4::v4::Packet::PubAck(_))
    ));
}

/// Why CONNECT is parsed by tollgate.
#[test]
fn rumqttc_connect_ignores_the_reserved_flag_and_refuses_binary_passwords() {
    let body = connect_body(b"MQTT", 4, 0x03, &s(b"c"));
    let mut buf = BytesMut::from(&frame(0x10, &body)[..]);
    assert!(matches!(
        m4::v4::Packet::read(&mut buf, 1000),
        Ok(m4::v4::Packet::Connect(_))
    ));
    let body = connect_body(b"MQTT", 4, 0xc2, &cat(&[&s(b"c"), &s(b"u"), &s(b"\xff")]));
    let mut buf = BytesMut::from(&frame(0x10, &body)[..]);
    assert!(
        m4::v4::Packet::read(&mut buf, 1000).is_err(),
        "rumqttc now accepts binary passwords"
    );
}

/// Why the size limit is checked by tollgate: mqttbytes compares the remaining length only.
#[test]
fn rumqttc_max_size_ignores_the_fixed_header() {
    let bytes = publish_v4(0, b"t", &[0u8; 10]);
    let remaining = bytes.len() - 2;
    assert!(m4::check(bytes.iter(), remaining).is_ok());
}

/// Relied on: the mqttbytes PUBLISH reader does not copy the payload.
#[test]
fn rumqttc_publish_read_splits_the_frame_without_copying() {
    let frame_bytes = Bytes::from(publish_v5(0, b"t", &[], &[5u8; 64]));
    let header = parse_header(&frame_bytes)
        .expect("valid")
        .expect("complete");
    let p = v5::Publish::read(header.v5(), frame_bytes.clone()).expect("valid");
    let range = frame_bytes.as_ptr() as usize..frame_bytes.as_ptr() as usize + frame_bytes.len();
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
}

/// Why PUBLISH topics are validated by tollgate: the v5 reader keeps raw bytes.
#[test]
fn rumqttc_v5_publish_accepts_invalid_topics() {
    for topic in [&b"\xff\xfe"[..], b"a/#", b"a\0"] {
        let frame_bytes = Bytes::from(publish_v5(0, topic, &[], b"x"));
        let header = parse_header(&frame_bytes)
            .expect("valid")
            .expect("complete");
        assert!(v5::Publish::read(header.v5(), frame_bytes).is_ok());
    }
}

#[test]
fn error_messages_name_the_packet_and_the_problem() {
    let e = decode_err(&v311(), &frame(0x32, &cat(&[&s(b"t"), &[0, 0]])));
    assert_eq!(
        e.to_string(),
        "malformed PUBLISH packet: packet identifier 0 on a QoS 1/2 PUBLISH"
    );
    let e = decode_err(&v311(), &[0x20, 0]);
    assert_eq!(
        e.to_string(),
        "protocol error in CONNACK packet: only a server may send this packet"
    );
}

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

/// Micro benchmark, not a test: `cargo test --release --lib publish_codec_speed -- --ignored --nocapture`.
/// Prints ns per PUBLISH decode and encode (64-byte payload) for both versions,
/// next to mqttbytes' own decoder on the same bytes. Buffers are reused so the
/// figures are not dominated by page faults.
#[test]
#[ignore = "benchmark; run explicitly in release mode"]
fn publish_codec_speed() {
    use std::hint::black_box;
    use std::time::Instant;
    const N: u32 = 500_000;
    println!(
        "size_of v5::Packet {} CodecError {}",
        std::mem::size_of::<v5::Packet>(),
        std::mem::size_of::<CodecError>()
    );
    for codec in [v311(), v5c()] {
        let packet = v5::Packet::Publish(v5::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"factory/line1/sensor42/temperature"),
            pkid: 42,
            payload: Bytes::from(vec![0x55u8; 64]),
            properties: None,
        });
        let mut out = BytesMut::with_capacity(4096);
        let start = Instant::now();
        for _ in 0..N {
            out.clear();
            codec.encode(black_box(&packet), &mut out).expect("encodes");
        }
        let encode_ns = start.elapsed().as_nanos() / u128::from(N);
        let wire = out.split().freeze();
        let mut buf = BytesMut::with_capacity(4096);
        let start = Instant::now();
        for _ in 0..N {
            buf.extend_from_slice(&wire);
            black_box(codec.decode(&mut buf).expect("valid").expect("complete"));
        }
        let decode_ns = start.elapsed().as_nanos() / u128::from(N);
        let start = Instant::now();
        for _ in 0..N {
            buf.extend_from_slice(&wire);
            let ok = match codec.version {
                ProtocolVersion::V5 => v5::Packet::read(&mut buf, None).is_ok(),
                ProtocolVersion::V311 => m4::v4::Packet::read(&mut buf, MAX).is_ok(),
            };
            assert!(black_box(ok));
        }
        let baseline_ns = start.elapsed().as_nanos() / u128::from(N);
        println!(
            "MQTT {}: PUBLISH encode {encode_ns} ns, decode {decode_ns} ns (mqttbytes alone: {baseline_ns} ns)",
            codec.version
        );
    }
}

#[test]
fn peeks_the_connect_version_before_the_packet_is_complete() {
    let mut v5_bytes = BytesMut::new();
    encode_connect(&sample_v5_connect(), &mut v5_bytes).expect("encodes");
    assert_eq!(
        peek_connect_version(&v5_bytes[..9]),
        Some(ProtocolVersion::V5)
    );
    assert_eq!(peek_connect_version(&v5_bytes[..8]), None);
    let v4_bytes = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &s(b"c")));
    assert_eq!(peek_connect_version(&v4_bytes), Some(ProtocolVersion::V311));
    let v3_bytes = frame(0x10, &connect_body(b"MQIsdp", 3, 0x02, &s(b"c")));
    assert_eq!(peek_connect_version(&v3_bytes), None);
    assert_eq!(peek_connect_version(&[0x30, 0]), None);
    assert_eq!(peek_connect_version(&[]), None);
}

#[test]
fn decode_connect_leaves_pipelined_packets_in_the_buffer() {
    let mut bytes = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &s(b"c")));
    bytes.extend(frame(0x82, &cat(&[&[0, 1], &s(b"a"), &[1]])));
    bytes.extend([0xc0, 0]);
    let mut buf = BytesMut::from(&bytes[..]);
    let c = decode_connect(&mut buf, MAX)
        .expect("valid")
        .expect("complete");
    let codec = Codec::new(c.version, MAX);
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(v5::Packet::Subscribe(_)))
    ));
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(v5::Packet::PingReq(_)))
    ));
    assert!(buf.is_empty());
}
