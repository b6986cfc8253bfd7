//! The rumqttc 0.25.1 behaviours the wrapper relies on or works around, pinned so an upgrade shows what changed.

use super::*;

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
