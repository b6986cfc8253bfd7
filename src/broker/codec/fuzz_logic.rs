//! Fuzz entry points for the codec and the topic module, shared by the cargo-fuzz
//! targets in `fuzz/` and the proptests in `tests/codec_props.rs`.
//!
//! Each function feeds arbitrary bytes through the public API and asserts the
//! invariants that must hold for *every* input; a panic here is a finding. They
//! never allocate more than a small multiple of the input.

use bytes::BytesMut;
use rumqttc::mqttbytes as m4;

use super::{decode_connect, encode_connect, v5, Codec, ProtocolVersion};
use crate::topic;

/// Largest packet the fuzz codecs accept: big enough for any fuzz input.
const FUZZ_MAX_PACKET: usize = 1 << 20;

/// Feeds `data` to [`decode_connect`] whole and in two pieces; a decoded CONNECT
/// must re-encode and decode to the same value.
pub fn codec_connect(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    match decode_connect(&mut buf, FUZZ_MAX_PACKET) {
        Ok(None) => assert_eq!(buf.len(), before, "Ok(None) must not consume bytes"),
        Ok(Some(connect)) => {
            let mut encoded = BytesMut::new();
            encode_connect(&connect, &mut encoded).expect("a decoded CONNECT must encode");
            let again = decode_connect(&mut encoded, FUZZ_MAX_PACKET)
                .expect("a re-encoded CONNECT must decode")
                .expect("a re-encoded CONNECT is complete");
            assert_eq!(again, connect, "CONNECT roundtrip changed the packet");
            assert!(encoded.is_empty(), "re-encoded CONNECT left bytes behind");
        }
        Err(e) => {
            let _ = (e.reason_code(), e.connack_v311_code(), e.to_string());
        }
    }
    // Any prefix of the input must not be decoded differently from "need more".
    if data.len() > 1 {
        let split = data.len() / 2;
        let mut prefix = BytesMut::from(&data[..split]);
        if let Ok(None) = decode_connect(&mut prefix, FUZZ_MAX_PACKET) {
            assert_eq!(prefix.len(), split, "Ok(None) must not consume bytes");
        }
    }
}

/// Decodes every packet in `data` as an MQTT 3.1.1 connection would.
pub fn codec_packets_v4(data: &[u8]) {
    packets(ProtocolVersion::V311, data);
}

/// Decodes every packet in `data` as an MQTT 5 connection would.
pub fn codec_packets_v5(data: &[u8]) {
    packets(ProtocolVersion::V5, data);
}

fn packets(version: ProtocolVersion, data: &[u8]) {
    let codec = Codec::new(version, FUZZ_MAX_PACKET);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let snapshot = (buf.first().map(|b| b >> 4) == Some(3)).then(|| buf.clone());
        match codec.decode(&mut buf) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must not consume bytes");
                break;
            }
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet must consume bytes");
                if let (Some(mut frame), v5::Packet::Publish(publish)) = (snapshot, &packet) {
                    frame.truncate(before - buf.len());
                    same_as_mqttbytes(version, frame, publish);
                }
                roundtrip(&codec, &packet);
            }
            Err(e) => {
                let _ = (e.reason_code(), e.connack_v311_code(), e.to_string());
                break;
            }
        }
    }
}

/// tollgate assembles PUBLISH itself; mqttbytes must read the same frame the same way.
fn same_as_mqttbytes(version: ProtocolVersion, mut frame: BytesMut, ours: &v5::Publish) {
    match version {
        ProtocolVersion::V5 => {
            let theirs =
                v5::Packet::read(&mut frame, None).expect("mqttbytes reads a PUBLISH we accept");
            assert_eq!(
                theirs,
                v5::Packet::Publish(ours.clone()),
                "PUBLISH differs from mqttbytes"
            );
        }
        ProtocolVersion::V311 => {
            let theirs = match m4::v4::Packet::read(&mut frame, FUZZ_MAX_PACKET) {
                Ok(m4::v4::Packet::Publish(p)) => p,
                other => panic!("mqttbytes reads a PUBLISH we accept as {other:?}"),
            };
            assert_eq!(
                theirs.topic.as_bytes(),
                &ours.topic[..],
                "topic differs from mqttbytes"
            );
            assert_eq!(
                theirs.payload, ours.payload,
                "payload differs from mqttbytes"
            );
            assert_eq!(
                (theirs.dup, theirs.qos as u8, theirs.retain, theirs.pkid),
                (ours.dup, ours.qos as u8, ours.retain, ours.pkid),
                "flags or packet id differ from mqttbytes"
            );
            assert_eq!(ours.properties, None);
        }
    }
    assert!(
        frame.is_empty(),
        "mqttbytes and tollgate disagree on the frame length"
    );
}

/// Client packets the broker decodes must survive encode → decode unchanged.
fn roundtrip(codec: &Codec, packet: &v5::Packet) {
    let comparable = matches!(
        packet,
        v5::Packet::Publish(_)
            | v5::Packet::Subscribe(_)
            | v5::Packet::Unsubscribe(_)
            | v5::Packet::PubAck(_)
            | v5::Packet::PubRec(_)
            | v5::Packet::PubRel(_)
            | v5::Packet::PubComp(_)
            | v5::Packet::PingReq(_)
            | v5::Packet::Auth(_)
    );
    let mut encoded = BytesMut::new();
    let written = codec.encode(packet, &mut encoded);
    if !comparable {
        return;
    }
    let written = written.expect("a decoded client packet must encode");
    assert_eq!(
        written,
        encoded.len(),
        "encode must report the bytes written"
    );
    assert_eq!(
        written,
        codec.encoded_len(packet),
        "encoded_len must match encode"
    );
    let again = codec
        .decode(&mut encoded)
        .expect("a re-encoded packet must decode")
        .expect("a re-encoded packet is complete");
    assert_eq!(&again, packet, "encode → decode changed the packet");
    assert!(encoded.is_empty(), "re-encoding left bytes behind");
}

/// Topic validation and matching invariants on arbitrary strings: `data` is split
/// at the first 0xFF byte into a filter and a topic.
pub fn topic_filter(data: &[u8]) {
    let (left, right) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let (Ok(filter), Ok(name)) = (
        topic::topic_from_bytes(left),
        topic::topic_from_bytes(right),
    ) else {
        return;
    };
    let filter_ok = topic::validate_topic_filter(filter).is_ok();
    let name_ok = topic::validate_topic_name(name).is_ok();
    let _ = topic::parse_shared(filter);
    if name_ok {
        assert!(topic::matches(name, name), "a topic name must match itself");
        // (`$share/g/` is a legal topic name but a malformed shared filter.)
        assert!(
            topic::validate_topic_filter(name).is_ok() || name.starts_with(topic::SHARED_PREFIX),
            "a topic name is a valid filter"
        );
        assert!(topic::filter_covers(name, name), "a filter covers itself");
    }
    if filter_ok && topic::parse_shared(filter).ok().flatten().is_none() {
        assert!(
            topic::filter_covers(filter, filter),
            "a filter covers itself"
        );
        assert!(
            topic::filter_covers("#", filter) || filter.starts_with('$'),
            "`#` covers every filter not starting with `$`"
        );
        if name_ok {
            let m = topic::matches(filter, name);
            // `#` matches everything except `$` topics.
            assert_eq!(topic::matches("#", name), !name.starts_with('$'));
            // A filter covering `filter` matches whatever `filter` matches.
            if m {
                for outer in ["#", "+/#", "$SYS/#"] {
                    if topic::filter_covers(outer, filter) {
                        assert!(
                            topic::matches(outer, name),
                            "{outer} covers {filter} but misses {name}"
                        );
                    }
                }
            }
            // A topic name as a filter covers exactly itself.
            if topic::filter_covers(filter, name) {
                assert!(m, "{filter} covers {name} as a filter, so it must match it");
            }
        }
    }
}
