//! Random bytes into a live connection after a valid CONNECT (v3.1.1 and v5): the
//! broker must never panic or stop serving other clients.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
}

const CONNECT_V311: &[u8] = &[
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'f', b'z',
];
const CONNECT_V5: &[u8] = &[
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 2, b'f', b'5',
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_after_connect_never_stop_the_broker(
        v5 in any::<bool>(),
        // Bias towards packet-looking input: a valid first byte then noise.
        first in prop::sample::select(vec![0x30u8, 0x32, 0x34, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0, 0xF0, 0x00]),
        noise in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let b = start_broker().await;
            let mut stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
            stream.write_all(if v5 { CONNECT_V5 } else { CONNECT_V311 }).await.unwrap();
            let mut data = vec![first];
            data.extend_from_slice(&noise);
            let _ = stream.write_all(&data).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            // A second client is still served end to end.
            let mut s = v4(b.addr, "fuzz-check").await;
            s.subscribe("ok", rumqttc::QoS::AtLeastOnce).await;
            s.client.publish("ok", rumqttc::QoS::AtLeastOnce, false, "1").await.unwrap();
            assert_eq!(s.publish().await.payload, bytes::Bytes::from("1"));
            drop(stream);
            b.stop().await;
        });
    }

    #[test]
    fn random_connect_bytes_never_stop_the_broker(
        noise in prop::collection::vec(any::<u8>(), 0..200),
        level in prop::sample::select(vec![3u8, 4, 5, 6, 0xFF]),
        flags in any::<u8>(),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let b = start_broker().await;
            let mut stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
            // A CONNECT header with random level/flags and a random body.
            let mut data = vec![0x10, (8 + noise.len()).min(127) as u8, 0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
            data.extend_from_slice(&noise);
            let _ = stream.write_all(&data).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut s = v4(b.addr, "fuzz-connect-check").await;
            s.subscribe("ok", rumqttc::QoS::AtMostOnce).await;
            drop(stream);
            b.stop().await;
        });
    }
}
