//! Unit tests for the codec wrapper: every mapping, every rejection, and every
//! rumqttc 0.25.1 behaviour the wrapper relies on or works around.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes as m4;

use super::decode::parse_header;
use super::encode::put_remaining_length;
use super::*;
use crate::topic;

mod auth;
mod connect;
mod encode;
mod publish;
mod rumqttc_quirks;
mod subscribe;

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
