//! SUBSCRIBE, UNSUBSCRIBE, the acknowledgements, PINGREQ and DISCONNECT in both versions.

use super::*;

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
