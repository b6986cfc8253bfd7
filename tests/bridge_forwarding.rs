//! The cloud bridge against a real cloud: Debian's mosquitto with
//! `require_certificate true`, `use_identity_as_username true` and an ACL confining
//! the gateway's certificate identity (`gw1`) to `site/gw1/#`; a tollgate gateway with
//! a `[[bridge]]` over mTLS (PKI made at test time with rcgen). Proves forwarding with
//! prefix mapping both ways, the local ACL on ingress, no loop through a `both` rule,
//! the status topic (birth "online", "offline" at shutdown), failover to the second
//! address, and QoS 1 delivery in order after a cloud outage.
//!
//! The outbox is the on-disk journal (`src/bridge/journal_outbox.rs`); its survival of a
//! `kill -9` of tollgate is tested in `tests/bridge_crash.rs`.

mod support;

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use support::cloud::*;
use support::gateway::Gateway;
use support::peers::{require_peer, Mosquitto};
use support::pki::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_both_ways_through_the_second_address_with_the_acl_and_no_loop() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Mosquitto::start(dir.path(), &cloud_settings(&pki, dir.path(), false));
    let gw_cert = pki.client("gw1");
    // The first address refuses connections: the bridge must fail over to the second.
    let dead = format!("127.0.0.1:{}", support::net::free_port());
    let live = format!("127.0.0.1:{}", cloud.port);

    let (operator, mut up) = cloud_client(&pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/#").await;
    let gw = Gateway::start(
        dir.path(),
        &gateway_config(&pki, &gw_cert, &[dead, live.clone()]),
    )
    .await;

    let status = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(status.1, "online", "birth message on the status topic");
    let state = wait_state(&gw, "state-watch", |v| v["state"] == "connected").await;
    assert_eq!(
        state["address"],
        live.as_str(),
        "connected through the second address"
    );

    // Out, with the prefix mapping.
    let (local, mut down) = local_client(&gw, "device").await;
    local
        .publish("sensors/t1/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("queued");
    let m = next_on(&mut up, "site/gw1/sensors/t1/temp").await;
    assert_eq!(m.1, "21.5");

    // In: the local ACL keeps secret/# out (bridge:cloud may not write it), cmd/# passes.
    subscribe(&local, "cmd/#").await;
    subscribe(&local, "secret/#").await;
    subscribe(&local, "state/#").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    operator
        .publish("site/gw1/secret/key", QoS::AtLeastOnce, false, "no")
        .await
        .expect("queued");
    operator
        .publish("site/gw1/cmd/reboot", QoS::AtLeastOnce, false, "now")
        .await
        .expect("queued");
    let m = next(&mut down).await;
    assert_eq!(
        (m.0.as_str(), m.1.as_str()),
        ("cmd/reboot", "now"),
        "the denied secret/key came first, or did not come"
    );
    let state = wait_state(&gw, "state-watch-2", |v| {
        v["dropped"]["ingress_denied"] == 1
    })
    .await;
    assert_eq!(state["received"], 1);

    // No loop: state/x comes in through the `both` rule and does not go back out.
    operator
        .publish("site/gw1/state/x", QoS::AtLeastOnce, false, "from-cloud")
        .await
        .expect("queued");
    let m = next(&mut down).await;
    assert_eq!((m.0.as_str(), m.1.as_str()), ("state/x", "from-cloud"));
    local
        .publish("sensors/marker", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queued");
    // The cloud subscriber sees its own state/x once, then the marker: no echo between.
    next_on(&mut up, "site/gw1/state/x").await;
    let after = next(&mut up).await;
    assert_eq!(
        (after.0.as_str(), after.1.as_str()),
        ("site/gw1/sensors/marker", "marker"),
        "state/x was re-exported by the bridge that brought it in"
    );

    // Shutdown says offline (and the cloud keeps it retained).
    gw.stop().await;
    let status = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(status.1, "offline");
    drop(cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_published_during_a_cloud_outage_arrive_in_order_after_recovery() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    const N: usize = 300;
    // A persistent cloud session: what arrives while this subscriber reconnects is kept.
    let PersistentCloud {
        pki,
        dir,
        settings,
        cloud,
        port,
        gw_cert,
        operator: _operator,
        mut up,
    } = persistent_cloud("site/gw1/sensors/#").await;
    let gw = Gateway::start(
        dir.path(),
        &gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{port}")]),
    )
    .await;
    wait_state(&gw, "state-watch", |v| v["state"] == "connected").await;

    cloud.terminate();
    wait_state(&gw, "state-watch-2", |v| v["state"] != "connected").await;
    let (local, _down) = local_client(&gw, "device").await;
    for i in 0..N {
        local
            .publish("sensors/seq", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    // Every message is acknowledged locally (stored in the outbox) while the cloud is down.
    let state = wait_state(&gw, "state-watch-3", |v| v["queued_messages"] == N as u64).await;
    assert_ne!(state["state"], "connected");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _cloud = Mosquitto::start_on(dir.path(), port, &settings);
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(30), up.recv())
            .await
            .expect("messages after recovery")
            .expect("client alive");
        if topic == "site/gw1/sensors/seq" {
            got.push(payload.parse::<usize>().expect("number"));
        }
    }
    let want: Vec<usize> = (0..N).collect();
    assert_eq!(got, want, "all delivered, in order, none duplicated");
    let state = wait_state(&gw, "state-watch-4", |v| v["queued_messages"] == 0).await;
    assert!(state["reconnects"].as_u64().expect("counter") >= 1);
    assert!(state["acked"].as_u64().expect("counter") >= N as u64);
    gw.stop().await;
}
