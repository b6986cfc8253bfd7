//! CONNECT: parsing, every refusal and its CONNACK code, the version peek before the packet is complete.

use super::*;

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
