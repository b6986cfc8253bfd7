//! PUBLISH and framing: topics, packet ids, properties, fixed-header flags, size limits, partial packets.

use super::*;

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

/// A decoded PUBLISH owns a copy of exactly its packet: it never pins the read buffer
/// (which grows to the largest read), and the buffer stays unshared, so the next read
/// reuses it in place.
#[test]
fn a_publish_owns_its_packet_and_leaves_the_read_buffer_unshared() {
    let one = publish_v5(1, b"t/x", &[0x09, 0, 2, 1, 2], &[7u8; 1000]);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&one);
    buf.extend_from_slice(&one);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
    for _ in 0..2 {
        let Some(v5::Packet::Publish(p)) = v5c().decode(&mut buf).expect("valid") else {
            panic!("expected PUBLISH");
        };
        assert_eq!((&p.topic[..], p.payload.len()), (&b"t/x"[..], 1000));
        let correlation = p.properties.and_then(|p| p.correlation_data).expect("set");
        assert_eq!(&correlation[..], &[1, 2]);
        for owned in [&p.topic, &p.payload, &correlation] {
            assert!(!range.contains(&(owned.as_ptr() as usize)), "a copy");
        }
    }
    assert!(buf.is_empty());
    // Unshared: the space the two packets took is reclaimed without a new allocation.
    assert!(buf.try_reclaim(64 * 1024), "the read buffer is not shared");
    assert_eq!(buf.as_ptr() as usize, range.start);
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
fn refuses_reserved_packet_types_and_auth_in_311() {
    let e = decode_err(&v311(), &[0x00, 0]);
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    let e = decode_err(&v311(), &[0xf0, 0]);
    assert!(matches!(e, CodecError::Malformed { .. }), "{e}");
    // v5 AUTH is decoded (tests/auth.rs); whether it is allowed is the connection's call.
    assert!(matches!(
        decode_one(&v5c(), &[0xf0, 0]),
        Ok(Some(v5::Packet::Auth(_)))
    ));
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

/// Found by the `topic_filter` fuzz target: a legal topic name need not be a legal filter.
#[test]
fn fuzz_regression_share_prefixed_topic_name() {
    fuzz_logic::topic_filter(b"\xff$share/2/");
    assert_eq!(topic::validate_topic_name("$share/2/"), Ok(()));
    assert!(topic::validate_topic_filter("$share/2/").is_err());
}
