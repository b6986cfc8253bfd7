//! The shared raw MQTT client of `support::raw` checked against the bytes the tests
//! wrote by hand before it (so a port kept the same bytes on the wire), and its reader's
//! bounds: a cap on the remaining length, no non-minimal or over-long lengths, no packet
//! cut by a close, properties that overrun their length.

mod support;

use support::raw::*;
use tokio::io::AsyncWriteExt;

#[test]
fn encoders_write_the_bytes_the_tests_wrote_by_hand() {
    // broker_stats / broker_fuzz: 3.1.1, clean session, keep alive 30, id "fl".
    let v311 = Connect {
        keep_alive: 30,
        ..Connect::new(false, "fl")
    };
    assert_eq!(
        v311.encode(),
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'f', b'l']
    );
    // broker_core: 3.1.1, clean session 0, empty client id.
    let empty = Connect {
        clean: false,
        keep_alive: 30,
        ..Connect::new(false, "")
    };
    assert_eq!(
        empty.encode(),
        [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 30, 0, 0]
    );
    // listener_keepalive and broker_fuzz: v5, clean start, no properties.
    let v5 = Connect {
        keep_alive: 0x1234,
        ..Connect::new(true, "ka")
    };
    assert_eq!(
        v5.encode(),
        [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0x12, 0x34, 0, 0, 2, b'k', b'a']
    );
    // edge_metrics: persistent 3.1.1 with keep alive 60.
    let persistent = Connect {
        clean: false,
        ..Connect::new(false, "o")
    };
    assert_eq!(
        persistent.encode(),
        b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x3c\x00\x01o"
    );
    // edge_rate: a v5 will at QoS 2 (flags 0x02 | 0x04 | 2 << 3), empty will properties.
    let will = connect(true, "w", Some(2));
    assert_eq!(&will[8..11], &[5, 0x16, 0]);
    assert!(will.ends_with(b"\x00\x00\x01w\x00\x00\x06will/t\x00\x04gone"));
    // edge_metrics: SUBSCRIBE r/# at QoS 2, packet id 1.
    assert_eq!(
        subscribe(false, "r/#", 2, 1),
        b"\x82\x08\x00\x01\x00\x03r/#\x02"
    );
    // broker_stats: a 16 KiB QoS 0 PUBLISH has a three-byte remaining length.
    let big = publish(false, "flood/x", 0, 0, &[0u8; 16 * 1024]);
    assert_eq!(&big[..4], &[0x30, 0x89, 0x80, 0x01]);
    assert_eq!(big.len(), 4 + 2 + 7 + 16 * 1024);
    // edge_reauth: AUTH 0x19 with method and data.
    assert_eq!(
        auth(0x19, Some("jwt"), "t"),
        b"\xf0\x0c\x19\x0a\x15\x00\x03jwt\x16\x00\x01t"
    );
    assert_eq!(puback(0x0102), [0x40, 2, 1, 2]);
}

#[test]
fn the_reader_splits_whole_packets_and_reads_reasons_and_publishes() {
    assert_eq!(split(&[0x20, 3, 0]), None, "incomplete");
    // A v5 DISCONNECT 0x96 with a reason string, then a byte of the next packet.
    let bytes = b"\xe0\x07\x96\x05\x1f\x00\x02hi\xd0";
    let (packet, used) = split(bytes).expect("whole");
    assert_eq!(used, 9);
    assert_eq!((packet.kind, packet.flags), (DISCONNECT, 0));
    assert_eq!(packet.reason(), (0x96, "hi".to_string()));
    // A v5 CONNACK with Maximum QoS 1 and Server Keep Alive 30.
    let (connack, _) = split(b"\x20\x08\x00\x00\x05\x24\x01\x13\x00\x1e").expect("whole");
    assert_eq!(connack.reason_code(), 0);
    assert!(connack.properties().contains(&(MAXIMUM_QOS, vec![1])));
    assert_eq!(
        u16_property(&connack.properties(), SERVER_KEEP_ALIVE),
        Some(30)
    );
    // A short v5 PUBACK: Success.
    let (ack, _) = split(&puback(7)).expect("whole");
    assert_eq!(ack.reason(), (0, String::new()));
    // A v5 QoS 1 PUBLISH with a Subscription Identifier.
    let (p, _) = split(b"\x32\x0b\x00\x01t\x00\x05\x03\x0b\x81\x01ok").expect("whole");
    let message = p.publish(true);
    assert_eq!(message.topic, "t");
    assert_eq!((message.qos, message.pkid), (1, Some(5)));
    assert_eq!(message.payload, b"ok");
}

#[test]
#[should_panic(expected = "above the cap")]
fn a_remaining_length_above_the_cap_fails() {
    split(&[0x30, 0xff, 0xff, 0x7f]);
}

#[test]
#[should_panic(expected = "shortest form")]
fn a_non_minimal_remaining_length_fails() {
    split(&[0xd0, 0x80, 0x00]);
}

#[test]
#[should_panic(expected = "longer than four bytes")]
fn a_five_byte_remaining_length_fails() {
    split(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]);
}

#[test]
#[should_panic(expected = "overrun their length")]
fn properties_that_overrun_their_length_fail() {
    // Length 2, but a Reason String of 2 + 2 bytes.
    properties(b"\x02\x1f\x00\x02hi", 0);
}

#[tokio::test]
#[should_panic(expected = "closed inside a packet")]
async fn a_close_inside_a_packet_fails() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        // A CONNACK cut after its first body byte, then the close.
        s.write_all(&[0x20, 2, 0]).await.expect("write");
    });
    let mut client = RawClient::open(addr).await;
    server.await.expect("server");
    client.next().await;
}
