//! Revalidation of live sessions after a reload (`Broker::revalidate`) and the
//! session-free health probe (`Broker::ping`), over real sockets.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::*;
use tollgate::broker::{Broker, RevalidateCheck, RevalidateVerdict, SessionCredentials};

/// Wait until the router reports `n` connected clients.
async fn wait_connected(broker: &Broker, n: u64) {
    wait_until(&format!("{n} clients connected"), || {
        broker.stats().clients_connected == n
    })
    .await;
}

/// Raw v5 CONNECT with a will on `will_topic`.
async fn raw_with_will(addr: std::net::SocketAddr, id: &str, will_topic: &str) -> Raw {
    let will = p5::LastWill {
        topic: Bytes::copy_from_slice(will_topic.as_bytes()),
        message: Bytes::from_static(b"gone"),
        qos: Q5::AtLeastOnce,
        retain: false,
        properties: None,
    };
    Raw::connect_v5_with_will(addr, id, Some(will)).await
}

#[tokio::test]
async fn revalidation_disconnects_only_rejected_sessions_without_their_will() {
    let b = start_broker().await;
    let mut keeper = v5(b.addr, "keeper").await;
    keeper.subscribe("t/#", Q5::AtLeastOnce).await;
    let mut revoked = raw_with_will(b.addr, "revoked", "t/will").await;
    let mut revoked_v4 = v4(b.addr, "revoked-v4").await;
    let publisher = v5(b.addr, "publisher").await;
    wait_connected(&b.broker, 4).await;

    let seen: Arc<Mutex<Vec<SessionCredentials>>> = Arc::default();
    let log = seen.clone();
    let check: RevalidateCheck = Arc::new(move |c: &SessionCredentials| {
        log.lock().expect("test lock").push(c.clone());
        c.identity
            .client_id
            .starts_with("revoked")
            .then(|| RevalidateVerdict::credentials_revoked("user removed from the password file"))
    });
    b.broker.revalidate(check);

    // The v5 client gets DISCONNECT 0x87 with the reason string, then the close.
    match revoked.read().await {
        Some(p5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, p5::DisconnectReasonCode::NotAuthorized);
            let reason = d.properties.and_then(|p| p.reason_string);
            assert_eq!(
                reason.as_deref(),
                Some("user removed from the password file")
            );
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(
        revoked.read().await.is_none(),
        "connection closed after DISCONNECT"
    );
    // The 3.1.1 client is closed (no DISCONNECT exists there).
    revoked_v4.closed().await;
    wait_connected(&b.broker, 2).await;

    // The other sessions stay and keep receiving; the revoked client's will never fires
    // (anything routed before this publish would arrive first).
    publisher
        .client
        .publish("t/after", Q5::AtLeastOnce, false, "still here")
        .await
        .expect("publish queued");
    let p = keeper.publish().await;
    assert_eq!(&p.topic[..], b"t/after");

    let seen = seen.lock().expect("test lock").clone();
    assert_eq!(seen.len(), 4, "every live network session is checked once");
    assert!(seen
        .iter()
        .all(|c| &*c.listener == "test" && c.peer_certificates.is_none()));
    b.stop().await;
}

#[tokio::test]
async fn certificate_verdict_uses_bad_authentication_method() {
    let b = start_broker().await;
    let mut revoked = Raw::connect_v5(b.addr, "device-1").await;
    wait_connected(&b.broker, 1).await;
    b.broker.revalidate(Arc::new(|_: &SessionCredentials| {
        Some(RevalidateVerdict::certificate_rejected(
            "client certificate revoked by the CRL",
        ))
    }));
    // rumqttc cannot decode 0x8C in a DISCONNECT, so the bytes are checked directly.
    let reason = b"client certificate revoked by the CRL";
    let mut expected = vec![
        0xE0,
        (2 + 3 + reason.len()) as u8,
        0x8C,
        (3 + reason.len()) as u8,
    ];
    expected.extend_from_slice(&[0x1F, 0, reason.len() as u8]);
    expected.extend_from_slice(reason);
    assert_eq!(revoked.read_to_close().await, expected);
    b.stop().await;
}

#[tokio::test]
async fn ping_round_trips_without_creating_a_session() {
    let b = start_broker().await;
    for _ in 0..3 {
        b.broker.ping().await.expect("router answers");
    }
    let stats = b.broker.stats();
    assert_eq!(stats.clients_connected, 0);
    assert_eq!(stats.sessions, 0);
    b.shutdown.cancel();
    b.broker.drained().await;
    assert!(
        b.broker.ping().await.is_err(),
        "a stopped router fails the probe"
    );
}
