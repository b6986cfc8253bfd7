//! Memory follows the bounds, not the bytes a client sends: a queued 20-byte message
//! must not keep alive the megabyte-sized read buffer it was decoded from. Alone in
//! its file so the process RSS it measures is this test's.

mod support;

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::*;
use tollgate::acl::Acl;
use tollgate::auth::AnonymousOnly;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_megabyte_publishes_do_not_pin_memory_through_queued_small_ones() {
    const MAX_OFFLINE: usize = 1024 * 1024;
    const PAIRS: u16 = 300;
    let mut settings = test_settings();
    settings.max_packet_size = 2 * 1024 * 1024;
    settings.max_offline_bytes = MAX_OFFLINE;
    settings.max_offline_messages = 100_000;
    let acl = Acl::parse("t.acl", "topic readwrite sub/#\n", &[]).expect("acl");
    let b = start_broker_full(settings, Arc::new(AnonymousOnly), Arc::new(acl)).await;

    // A persistent subscriber that goes offline.
    let (mut sub, _) = raw_v5(b.addr, "sub", None, true, 3600, None).await;
    sub.send(&v5_subscribe("sub/#", 1)).await;
    raw_wait(&mut sub, |p| {
        matches!(p, p5::Packet::SubAck(_)).then_some(())
    })
    .await;
    drop(sub);
    wait_until("subscriber offline", || {
        b.broker.stats().clients_connected == 0
    })
    .await;

    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    let big = vec![b'x'; 1024 * 1024];
    let before = rss_bytes();
    for i in 1..=PAIRS {
        // One write: the denied megabyte and the small message share a read buffer.
        let mut bytes = BytesMut::new();
        p5::Publish::new("denied/x", Q5::AtMostOnce, big.clone(), None)
            .write(&mut bytes)
            .expect("encodable");
        let mut small = p5::Publish::new("sub/x", Q5::AtLeastOnce, vec![b's'; 20], None);
        small.pkid = i;
        small.write(&mut bytes).expect("encodable");
        publisher.send_bytes(&bytes).await;
        raw_wait(&mut publisher, |p| match p {
            p5::Packet::PubAck(a) if a.pkid == i => Some(()),
            _ => None,
        })
        .await;
    }
    let grown = rss_bytes().saturating_sub(before);
    let stats = b.broker.stats();
    assert_eq!(stats.dropped_queue_overflow, 0, "{stats:?}");
    // 300 queued messages of ~30 bytes; pinned read buffers would be ~300 MiB.
    assert!(
        grown < 32 * MAX_OFFLINE,
        "RSS grew by {} MiB holding {} bytes of queued messages",
        grown / (1024 * 1024),
        usize::from(PAIRS) * 30
    );
    b.stop().await;
}
