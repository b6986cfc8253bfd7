//! The fuzz seeds in `fuzz/seeds/` are valid input: every packet in them decodes
//! completely, and the `fuzz_logic` invariants hold on them. Keeps the seeds
//! useful as the codec evolves.

use std::path::Path;

use bytes::BytesMut;
use tollgate::broker::codec::{decode_connect, fuzz_logic, Codec, ProtocolVersion};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("seed readable");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn connect_seeds_are_valid_connects() {
    for (name, bytes) in seeds("codec_connect") {
        let mut buf = BytesMut::from(&bytes[..]);
        let c = decode_connect(&mut buf, 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            c.is_some() && buf.is_empty(),
            "{name}: incomplete or trailing bytes"
        );
        fuzz_logic::codec_connect(&bytes);
    }
}

fn packets_are_valid(target: &str, version: ProtocolVersion) {
    let codec = Codec::new(version, 1 << 20);
    for (name, bytes) in seeds(target) {
        let mut buf = BytesMut::from(&bytes[..]);
        while !buf.is_empty() {
            let packet = codec
                .decode(&mut buf)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(packet.is_some(), "{name}: incomplete packet");
        }
        match version {
            ProtocolVersion::V311 => fuzz_logic::codec_packets_v4(&bytes),
            ProtocolVersion::V5 => fuzz_logic::codec_packets_v5(&bytes),
        }
    }
}

#[test]
fn v311_packet_seeds_are_valid() {
    packets_are_valid("codec_packets_v4", ProtocolVersion::V311);
}

#[test]
fn v5_packet_seeds_are_valid() {
    packets_are_valid("codec_packets_v5", ProtocolVersion::V5);
}

#[test]
fn topic_seeds_hold_the_topic_invariants() {
    for (_, bytes) in seeds("topic_filter") {
        fuzz_logic::topic_filter(&bytes);
    }
}
