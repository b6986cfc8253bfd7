//! Bridge operations end to end, against the real cloud of tests/support/cloud.rs
//! (Debian's mosquitto over mTLS, `gw1` confined to `site/gw1/#`) and the gateway
//! in-process:
//!
//! - **reload** (what SIGHUP runs, through the gateway's reload handle): a bridge whose
//!   settings did not change keeps its upstream connection (no second birth message, no
//!   reconnect counted); a bridge whose rules changed restarts on the same journal, so
//!   messages stored while the cloud is down survive the reload and arrive after the
//!   cloud is back, in order, and the new rule forwards.
//! - **outage**: the cloud is stopped while several local publishers send QoS 1
//!   messages on several topics; after recovery every message arrives, in order per
//!   topic. That tollgate duplicates nothing is asserted on what the cloud *received
//!   from the bridge* (its debug log: every PUBLISH from `gw1` with its DUP flag, per
//!   cloud instance): the first connection sends nothing twice (no DUP=1), the second
//!   resends first (its DUP=1 PUBLISHes come before any new one, per topic), no message
//!   arrives twice with DUP=0 (at most one DUP=0 PUBLISH per message and topic), and the
//!   resends are at most the in-flight window. Duplicates at the cloud's *subscriber*
//!   are only printed: stopping the cloud makes mosquitto redeliver to its own
//!   subscriber what that subscriber had not acknowledged yet (after a persistence
//!   restore mosquitto 2.0.11 sends some of them without DUP), which a subscriber cannot
//!   tell from a message the bridge sent twice.
//!
//! The outage's length and volume come from the environment: the figures are
//! `TOLLGATE_BRIDGE_OUTAGE_SECS=60 TOLLGATE_BRIDGE_OUTAGE_MESSAGES=10000` (about 75 s);
//! the CI defaults are 5 s and 2,000 messages.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use support::cloud::*;
use support::gateway::{write_config, Gateway};
use support::peers::{require_peer, Mosquitto};
use support::pki::Pki;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What `Gateway::start` writes after `[broker]`, for rewriting the file before a reload.
fn body(config: &str) -> String {
    format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{config}")
}

/// An ACL rule for another user: changes the configuration but not the bridge.
const UNRELATED_ACL_RULE: &str =
    "\n[[acl.rule]]\nuser = \"dashboard\"\naccess = \"read\"\ntopic = \"sensors/#\"\n";

/// A new out rule for the bridge (appended to the last `[[bridge]]`) and its ACL grant.
const NEW_RULE: &str = "\n[[bridge.topic]]\npattern = \"sensors2/#\"\ndirection = \"out\"\nqos = 1\nremote_prefix = \"site/gw1/\"\n\n[[acl.rule]]\nuser = \"bridge:cloud\"\naccess = \"read\"\ntopic = \"sensors2/#\"\n";

fn cloud_with_room(pki: &Pki, dir: &Path) -> String {
    // Persistence keeps the subscriber's session across the outage; an unbounded queue
    // keeps what the bridge sends before that subscriber is back.
    format!("{}max_queued_messages 0\n", cloud_settings(pki, dir, true))
}

struct Setup {
    pki: Pki,
    dir: tempfile::TempDir,
    gw_cert: (PathBuf, PathBuf),
    settings: String,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_cert = pki.client("gw1");
    let settings = cloud_with_room(&pki, dir.path());
    Setup {
        pki,
        dir,
        gw_cert,
        settings,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_does_not_change_the_bridge_keeps_its_cloud_connection() {
    if !require_peer("mosquitto") {
        return;
    }
    let s = setup();
    let cloud = Mosquitto::start(s.dir.path(), &s.settings);
    let config = gateway_config(&s.pki, &s.gw_cert, &[format!("127.0.0.1:{}", cloud.port)]);
    let (operator, mut up) = cloud_client(&s.pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/#").await;
    let gw = Gateway::start(s.dir.path(), &config).await;
    let status = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(status.1, "online");
    wait_state(&gw, "w1", |v| v["state"] == "connected").await;
    let (local, _down) = local_client(&gw, "device").await;
    local
        .publish("sensors/before-reload", QoS::AtLeastOnce, false, "1")
        .await
        .expect("queued");
    next_on(&mut up, "site/gw1/sensors/before-reload").await;
    wait_state(&gw, "w2", |v| v["acked"] == 1).await;

    write_config(
        s.dir.path(),
        &body(&format!("{config}{UNRELATED_ACL_RULE}")),
    );
    gw.reload.reload().await.expect("reload accepted");

    // A restarted bridge would say "offline" (its shutdown) and "online" (its birth)
    // before anything else: the next message on the cloud must be the marker.
    local
        .publish("sensors/after-reload", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queued");
    let m = next(&mut up).await;
    assert_eq!(
        (m.0.as_str(), m.1.as_str()),
        ("site/gw1/sensors/after-reload", "marker"),
        "the bridge reconnected across a reload that did not change it"
    );
    // The same counters (a new instance would count 1): the same bridge, never reconnected.
    let state = wait_state(&gw, "w3", |v| v["acked"] == 2).await;
    assert_eq!(state["reconnects"], 0, "{state}");
    assert_eq!(state["state"], "connected", "{state}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_bridge_restarts_on_its_journal_and_delivers_what_was_queued() {
    if !require_peer("mosquitto") {
        return;
    }
    const N: usize = 200;
    let s = setup();
    let cloud = Mosquitto::start(s.dir.path(), &s.settings);
    let port = cloud.port;
    let config = gateway_config(&s.pki, &s.gw_cert, &[format!("127.0.0.1:{port}")]);
    let (operator, mut up) = cloud_client(&s.pki, port, "operator", false).await;
    subscribe(&operator, "site/gw1/#").await;
    let gw = Gateway::start(s.dir.path(), &config).await;
    wait_state(&gw, "w1", |v| v["state"] == "connected").await;

    cloud.terminate();
    wait_state(&gw, "w2", |v| v["state"] != "connected").await;
    let (local, _down) = local_client(&gw, "device").await;
    for i in 0..N {
        local
            .publish("sensors/seq", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    wait_state(&gw, "w3", |v| v["queued_messages"] == N as u64).await;

    write_config(s.dir.path(), &body(&format!("{config}{NEW_RULE}")));
    gw.reload.reload().await.expect("reload accepted");
    // A new instance: it recovered the N messages from the journal at its start, and
    // the counters carried over (stored once, not twice).
    let state = wait_state(&gw, "w4", |v| {
        v["recovered_at_open"] == N as u64
            && v["queued_messages"] == N as u64
            && v["state"] != "disabled"
    })
    .await;
    assert_eq!(state["stored"], N as u64, "{state}");
    assert_eq!(state["lost_at_open"], 0, "{state}");

    let _cloud = Mosquitto::start_on(s.dir.path(), port, &s.settings);
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
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, in order, once");
    // The new rule is in force.
    local
        .publish("sensors2/x", QoS::AtLeastOnce, false, "new-rule")
        .await
        .expect("queued");
    let m = next_on(&mut up, "site/gw1/sensors2/x").await;
    assert_eq!(m.1, "new-rule");
    wait_state(&gw, "w5", |v| v["queued_messages"] == 0).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_outage_under_load_loses_and_reorders_nothing() {
    if !require_peer("mosquitto") {
        return;
    }
    const PUBLISHERS: u64 = 4;
    const TOPICS_EACH: u64 = 2;
    let outage = Duration::from_secs(env_number("TOLLGATE_BRIDGE_OUTAGE_SECS", 5));
    let total = env_number("TOLLGATE_BRIDGE_OUTAGE_MESSAGES", 2000);
    let per_publisher = total / PUBLISHERS;
    let total = per_publisher * PUBLISHERS;
    let mut s = setup();
    // Both cloud instances append what they receive (with the DUP flag) to one log.
    let cloud_log = s.dir.path().join("cloud.log");
    s.settings.push_str(&format!(
        "log_dest file {}\nlog_type all\n",
        cloud_log.display()
    ));
    let cloud = Mosquitto::start(s.dir.path(), &s.settings);
    let port = cloud.port;
    let config = gateway_config(&s.pki, &s.gw_cert, &[format!("127.0.0.1:{port}")]);
    let mut up = dup_aware_subscriber(&s.pki, port).await;
    let gw = Gateway::start(s.dir.path(), &config).await;
    wait_state(&gw, "w1", |v| v["state"] == "connected").await;

    // The messages are spread over one second before the outage, the outage, and one
    // second after it.
    let span = outage + Duration::from_secs(2);
    let pause = span / u32::try_from(per_publisher).expect("count");
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (client, _rx) = local_client(&gw, &format!("publisher-{p}")).await;
        publishers.push(tokio::spawn(async move {
            let _rx = _rx;
            let mut next_at = tokio::time::Instant::now();
            for i in 0..per_publisher {
                let topic = format!("sensors/p{p}/t{}", i % TOPICS_EACH);
                client
                    .publish(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        (i / TOPICS_EACH).to_string(),
                    )
                    .await
                    .expect("queued");
                next_at += pause;
                tokio::time::sleep_until(next_at).await;
            }
            client
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cloud.terminate();
    let down_at = Instant::now();
    tokio::time::sleep(outage).await;
    let state = wait_state(&gw, "w2", |_| true).await;
    let queued_at_recovery = state["queued_messages"].as_u64().expect("counter");
    let _cloud = Mosquitto::start_on(s.dir.path(), port, &s.settings);
    let up_at = Instant::now();
    let down_for = up_at - down_at;

    // Per topic, the first arrival of each number in arrival order; later arrivals are
    // duplicates: with DUP set the cloud redelivered to its own subscriber (its session
    // across its restart: not the bridge's doing), without DUP the cloud received the
    // message twice from the bridge.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut distinct = std::collections::HashSet::new();
    let (mut with_dup, mut without_dup) = (Vec::new(), Vec::new());
    let limit = Duration::from_secs(60) + outage;
    while (distinct.len() as u64) < total {
        let (topic, payload, dup) = tokio::time::timeout(limit, up.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{} of {total} arrived: {:?}", distinct.len(), counts(&seen))
            })
            .expect("client alive");
        let seq: u64 = payload.parse().expect("number");
        if distinct.insert((topic.clone(), seq)) {
            seen.entry(topic).or_default().push(seq);
        } else if dup {
            with_dup.push((topic, seq));
        } else {
            without_dup.push((topic, seq));
        }
    }
    let drained_after = up_at.elapsed();
    for p in publishers {
        let _ = p.await;
    }
    let per_topic = per_publisher / TOPICS_EACH;
    assert_eq!(
        seen.len() as u64,
        PUBLISHERS * TOPICS_EACH,
        "{:?}",
        counts(&seen)
    );
    for (topic, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..per_topic).collect::<Vec<_>>(),
            "{topic}: every message, in order"
        );
    }
    // A trailing marker: nothing else was on its way (a late duplicate would be here).
    let (marker, _rx) = local_client(&gw, "marker").await;
    marker
        .publish("sensors/marker", QoS::AtLeastOnce, false, "0")
        .await
        .expect("queued");
    loop {
        let (topic, payload, dup) = tokio::time::timeout(limit, up.recv())
            .await
            .expect("the marker arrives")
            .expect("client alive");
        if topic == "site/gw1/sensors/marker" {
            break;
        }
        let seq: u64 = payload.parse().expect("number");
        if dup {
            with_dup.push((topic, seq));
        } else {
            without_dup.push((topic, seq));
        }
    }
    let state = wait_state(&gw, "w3", |v| v["queued_messages"] == 0).await;
    // Sent again by the bridge: PUBLISH packets beyond one per message and the two births.
    let resent = state["sent"].as_u64().expect("counter") - total - 2;
    eprintln!(
        "bridge outage: {total} QoS 1 messages from {PUBLISHERS} publishers on {} topics; cloud down {:.1}s with {queued_at_recovery} queued; all delivered {:.1}s after the cloud came back ({:.1}s in all); {resent} resent by the bridge (unacknowledged when the cloud went down); duplicates at the subscriber: {} with DUP {with_dup:?}, {} without {without_dup:?}; reconnects {}, sent {}, acked {}",
        PUBLISHERS * TOPICS_EACH,
        down_for.as_secs_f64(),
        drained_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        with_dup.len(),
        without_dup.len(),
        state["reconnects"],
        state["sent"],
        state["acked"],
    );
    assert!(queued_at_recovery > 0, "the outage queued nothing: {state}");

    // What the cloud received from the bridge (the marker, last, says the log is complete).
    let received = received_from_gateway(&cloud_log, "site/gw1/sensors/marker").await;
    let mut resends = 0;
    for (topic, seqs) in &seen {
        let got = received.get(topic).map_or(&[][..], Vec::as_slice);
        let (first, second): (Vec<_>, Vec<_>) =
            got.iter().partition(|(instance, _)| *instance == 0);
        assert!(
            first.iter().all(|(_, dup)| !dup),
            "{topic}: the first connection sent something twice: {got:?}"
        );
        let resent = second.iter().take_while(|(_, dup)| *dup).count();
        assert!(
            second[resent..].iter().all(|(_, dup)| !dup),
            "{topic}: a resend (DUP=1) after a new message on the second connection: {got:?}"
        );
        let fresh = got.iter().filter(|(_, dup)| !dup).count();
        assert!(
            fresh <= seqs.len(),
            "{topic}: {fresh} PUBLISHes without DUP for {} messages: one went out twice as new",
            seqs.len()
        );
        assert!(
            fresh + resent >= seqs.len(),
            "{topic}: the log misses messages: {got:?}"
        );
        resends += resent;
    }
    // The bridge's default max_inflight (the cloud sets no Receive Maximum).
    let window = usize::from(tollgate::bridge::config::DEFAULT_MAX_INFLIGHT);
    assert!(
        resends <= window,
        "{resends} resends: more than the in-flight window when the cloud went down"
    );
    eprintln!(
        "bridge outage: the cloud received {resends} resends (DUP=1), no message twice without DUP"
    );
    // `sent` counts every PUBLISH written to a connection, also those written just
    // before the cloud went down: never fewer than the cloud logged receiving.
    let logged: u64 = received.values().map(|v| v.len() as u64).sum();
    let state = wait_state(&gw, "w4", |v| {
        v["sent"].as_u64().is_some_and(|s| s >= logged)
    })
    .await;
    eprintln!(
        "bridge outage: sent {} for {logged} PUBLISHes the cloud logged",
        state["sent"]
    );
    gw.stop().await;
}

/// What the cloud received from the gateway (client id `gw1`), read from its debug log
/// once it shows a PUBLISH on `last`: per topic, (cloud instance, DUP flag) in arrival
/// order, the instance counted from 0 by mosquitto's start lines.
async fn received_from_gateway(log: &Path, last: &str) -> HashMap<String, Vec<(usize, bool)>> {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut instance = None;
        let mut received: HashMap<String, Vec<(usize, bool)>> = HashMap::new();
        for line in text.lines() {
            if line.contains(" starting") && line.contains("mosquitto version") {
                instance = Some(instance.map_or(0, |i| i + 1));
            }
            // "Received PUBLISH from gw1 (d0, q1, r0, m5, 'site/gw1/x', ... (1 bytes))"
            let Some(rest) = line
                .split_once("Received PUBLISH from gw1 (d")
                .map(|(_, r)| r)
            else {
                continue;
            };
            let dup = rest.starts_with('1');
            let topic = rest.split('\'').nth(1).expect("topic in quotes");
            received
                .entry(topic.to_string())
                .or_default()
                .push((instance.expect("a start line first"), dup));
        }
        if received.contains_key(last) {
            return received;
        }
        assert!(
            Instant::now() < deadline,
            "the cloud's log never showed {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counts(seen: &HashMap<String, Vec<u64>>) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = seen.iter().map(|(t, s)| (t.clone(), s.len())).collect();
    v.sort();
    v
}

/// A subscriber on the cloud to `site/gw1/sensors/#` whose messages carry their DUP
/// flag: set, the cloud redelivered to this subscriber; clear, the cloud received the
/// message again from the bridge.
async fn dup_aware_subscriber(
    pki: &Pki,
    port: u16,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)> {
    use rumqttc::v5::mqttbytes::v5 as p5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (cert, key) = pki.client("operator");
    let tls = tollgate::tls::build_client_config(&pki.ca_path, Some((&cert, &key)))
        .expect("client TLS config");
    let mut o = MqttOptions::new("operator", "127.0.0.1", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_keep_alive(Duration::from_secs(30))
    .set_clean_start(false)
    .set_session_expiry_interval(Some(3600));
    let (client, mut events) = AsyncClient::new(o, 100);
    client
        .subscribe("site/gw1/sensors/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p5::Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(p5::Packet::Publish(p))) => {
                    let m = (
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                        p.dup,
                    );
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(support::WAIT, subscribed)
        .await
        .expect("subscribed on the cloud within the limit")
        .expect("subscriber task alive");
    rx
}
