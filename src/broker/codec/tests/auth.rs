//! AUTH (MQTT 5 §3.15): decoded and encoded by tollgate, checked against the bytes the
//! specification describes.

use super::*;

fn props(method: Option<&str>, data: Option<&[u8]>) -> AuthFields {
    AuthFields {
        method: method.map(str::to_string),
        data: data.map(Bytes::copy_from_slice),
        reason: None,
        user_properties: vec![],
    }
}

fn auth_of(p: Option<v5::Packet>) -> v5::Auth {
    match p {
        Some(v5::Packet::Auth(a)) => a,
        other => panic!("expected AUTH, got {other:?}"),
    }
}

#[test]
fn decodes_re_authenticate_with_method_and_data() {
    // 0x19, properties: 0x15 "jwt", 0x16 "tok".
    let body = cat(&[&[0x19, 12, 0x15], &s(b"jwt"), &[0x16], &s(b"tok")]);
    let bytes = frame(0xf0, &body);
    let auth = auth_of(decode_one(&v5c(), &bytes).expect("valid"));
    assert_eq!(AuthReason::of(&auth), AuthReason::ReAuthenticate);
    let p = AuthFields::of(&auth).expect("properties");
    assert_eq!(p.method.as_deref(), Some("jwt"));
    assert_eq!(p.data.as_deref(), Some(&b"tok"[..]));
}

#[test]
fn decodes_the_short_forms() {
    // Remaining length 0: Success without properties.
    let auth = auth_of(decode_one(&v5c(), &[0xf0, 0]).expect("valid"));
    assert_eq!(AuthReason::of(&auth), AuthReason::Success);
    assert!(auth.properties.is_none());
    // Remaining length 1: a reason code, property length 0 implied.
    let auth = auth_of(decode_one(&v5c(), &[0xf0, 1, 0x18]).expect("valid"));
    assert_eq!(AuthReason::of(&auth), AuthReason::ContinueAuthentication);
    assert!(auth.properties.is_none());
    // An empty property section is no properties too.
    let auth = auth_of(decode_one(&v5c(), &[0xf0, 2, 0x19, 0]).expect("valid"));
    assert_eq!(AuthReason::of(&auth), AuthReason::ReAuthenticate);
    assert!(auth.properties.is_none());
    // Reason string and user properties are kept.
    let body = cat(&[
        &[0x19, 16, 0x1f],
        &s(b"why"),
        &[0x26],
        &s(b"k"),
        &s(b"v"),
        &[0x15],
        &s(b""),
    ]);
    let auth = auth_of(decode_one(&v5c(), &frame(0xf0, &body)).expect("valid"));
    let p = AuthFields::of(&auth).expect("properties");
    assert_eq!(p.reason.as_deref(), Some("why"));
    assert_eq!(p.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(p.method.as_deref(), Some(""));
}

#[test]
fn refuses_malformed_auth() {
    let codec = v5c();
    // A reason code AUTH does not have.
    let e = decode_err(&codec, &[0xf0, 2, 0x87, 0]);
    assert_eq!(e.reason_code(), 0x81, "{e}");
    assert!(e.to_string().contains("0x87"), "{e}");
    // Fixed header flags must be 0.
    let e = decode_err(&codec, &[0xf1, 0]);
    assert_eq!(e.reason_code(), 0x81, "{e}");
    // Duplicate Authentication Method: protocol error.
    let body = cat(&[&[0x19, 12, 0x15], &s(b"jwt"), &[0x15], &s(b"jwt")]);
    let e = decode_err(&codec, &frame(0xf0, &body));
    assert_eq!(e.reason_code(), 0x82, "{e}");
    assert!(e.to_string().contains("more than once"), "{e}");
    // Duplicate Authentication Data: protocol error.
    let body = cat(&[&[0x19, 8, 0x16], &s(b"a"), &[0x16], &s(b"b")]);
    assert_eq!(decode_err(&codec, &frame(0xf0, &body)).reason_code(), 0x82);
    // A property AUTH may not carry (Session Expiry Interval).
    let e = decode_err(&codec, &frame(0xf0, &[0x19, 5, 0x11, 0, 0, 0, 1]));
    assert_eq!(e.reason_code(), 0x81, "{e}");
    // Truncated: the data's length runs past the property section.
    let e = decode_err(&codec, &frame(0xf0, &[0x19, 4, 0x16, 0, 9, b'x']));
    assert_eq!(e.reason_code(), 0x81, "{e}");
    // Truncated: the property length runs past the packet.
    let e = decode_err(&codec, &frame(0xf0, &[0x19, 9, 0x16, 0, 1]));
    assert_eq!(e.reason_code(), 0x81, "{e}");
    // Trailing bytes after the property section.
    let e = decode_err(&codec, &frame(0xf0, &[0x19, 0, 0xff]));
    assert_eq!(e.reason_code(), 0x81, "{e}");
    // The method is a UTF-8 string.
    let body = cat(&[&[0x19, 5, 0x15], &s(&[0xff, 0xfe])]);
    assert_eq!(decode_err(&codec, &frame(0xf0, &body)).reason_code(), 0x81);
}

#[test]
fn an_incomplete_auth_waits_for_more_bytes() {
    let body = cat(&[&[0x19, 6, 0x15], &s(b"jwt")]);
    let bytes = frame(0xf0, &body);
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
    assert!(v5c().decode(&mut buf).expect("no error yet").is_none());
    assert_eq!(buf.len(), bytes.len() - 1, "buffer untouched");
}

#[test]
fn encodes_auth_as_the_specification_says() {
    let codec = v5c();
    let mut buf = BytesMut::new();
    let success = AuthReason::Success.packet(Some(props(Some("jwt"), None)));
    codec
        .encode(&v5::Packet::Auth(success), &mut buf)
        .expect("encodable");
    assert_eq!(
        &buf[..],
        &frame(0xf0, &cat(&[&[0x00, 6, 0x15], &s(b"jwt")]))[..]
    );
    // Success without properties: the short form.
    buf.clear();
    codec
        .encode(
            &v5::Packet::Auth(AuthReason::Success.packet(None)),
            &mut buf,
        )
        .expect("encodable");
    assert_eq!(&buf[..], &[0xf0, 0]);
    // Every property, in order, and what is written decodes to the same packet.
    let mut all = props(Some("jwt"), Some(b"\x00\x01data"));
    all.reason = Some("again".into());
    all.user_properties = vec![("a".into(), "b".into())];
    let packet = v5::Packet::Auth(AuthReason::ReAuthenticate.packet(Some(all)));
    buf.clear();
    let n = codec.encode(&packet, &mut buf).expect("encodable");
    assert_eq!(n, buf.len());
    let expected = frame(
        0xf0,
        &cat(&[
            &[0x19, 30, 0x15],
            &s(b"jwt"),
            &[0x16],
            &s(b"\x00\x01data"),
            &[0x1f],
            &s(b"again"),
            &[0x26],
            &s(b"a"),
            &s(b"b"),
        ]),
    );
    assert_eq!(&buf[..], &expected[..]);
    assert_eq!(decode_one(&codec, &buf).expect("valid"), Some(packet));
    assert_eq!(
        codec.encoded_len(&v5::Packet::Auth(AuthReason::Success.packet(None))),
        2
    );
}

#[test]
fn a_property_too_long_to_encode_leaves_nothing_behind() {
    let mut p = props(Some("jwt"), None);
    p.data = Some(Bytes::from(vec![0u8; 70_000]));
    let mut buf = BytesMut::from(&b"keep"[..]);
    let e = v5c()
        .encode(
            &v5::Packet::Auth(AuthReason::ReAuthenticate.packet(Some(p))),
            &mut buf,
        )
        .expect_err("too long");
    assert!(matches!(e, CodecError::Encode { .. }), "{e}");
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn reason_codes_round_trip() {
    for reason in [
        AuthReason::Success,
        AuthReason::ContinueAuthentication,
        AuthReason::ReAuthenticate,
    ] {
        assert_eq!(AuthReason::from_u8(reason.as_u8()), Some(reason));
        assert_eq!(AuthReason::of(&reason.packet(None)), reason);
    }
    assert_eq!(AuthReason::from_u8(0x87), None);
}
