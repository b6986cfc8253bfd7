//! Durable broker state (issue 11), persistent sessions: subscriptions, queued QoS 1/2
//! messages and in-flight messages survive a restart with SIGTERM and with `kill -9`,
//! over real sockets (rumqttc publishers and subscribers, a raw v5 socket that leaves
//! messages unacknowledged on purpose, and Debian's mosquitto_sub `-c` as an independent
//! persistent subscriber); a session whose expiry passed while the broker was down is
//! gone; a truncated sessions file is logged and the intact records load; a QoS 2
//! message PUBRECed before a `kill -9` is delivered once however often it is resent;
//! delayed wills of offline sessions are published after a restart when due (or at
//! start when due during the downtime) unless the client came back; wills of clients
//! connected at a `kill -9` are published after the restart. The gateway is
//! the `tollgate` binary, a separate process.
//!
//! `TOLLGATE_STATE_SESSION_RUNS` (default 3) sets the runs of the random-moment `kill -9`
//! test; the long setting is `TOLLGATE_STATE_SESSION_RUNS=20 cargo test --release --test
//! state_sessions acknowledged`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;

use support::clients::{
    raw_v5, raw_wait, v5, v5_connect, v5_connect_packet, v5_options, v5_publish, Raw, V5,
};
use support::gateway::{auth_section, write_config};
use support::net::free_port;
use support::peers::{mosquitto_passwd_file, require_peer};
use support::process::GatewayProcess;

fn config(dir: &Path, port: u16, sync: &str) {
    config_with(dir, port, &format!("[persistence]\nsync = {sync:?}\n"));
}

/// The gateway's configuration with `sections` (after `[broker]`).
fn config_with(dir: &Path, port: u16, sections: &str) {
    write_config(
        dir,
        &format!(
            "sys_interval = \"0s\"\nmax_offline_messages = 1000000\nmax_offline_bytes = 1000000000\n{sections}\
             [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nallow_anonymous = true\n"
        ),
    );
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(dir: &Path) -> GatewayProcess {
    GatewayProcess::start_until(dir, &["tollgate is ready"])
}

/// Publish QoS 1 `payloads` on `topic` and wait for every PUBACK.
async fn publish_acked(port: u16, topic: &str, payloads: &[String]) {
    let mut c = v5(addr(port), "publisher").await;
    for p in payloads {
        c.client
            .publish(topic, QoS::AtLeastOnce, false, p.clone())
            .await
            .expect("publish queued");
    }
    for _ in payloads {
        c.wait_for(|p| matches!(p, p5::Packet::PubAck(_)).then_some(()))
            .await;
    }
    let _ = c.client.disconnect().await;
}

/// A rumqttc v5 client resuming (or creating) a persistent session.
async fn persistent(port: u16, id: &str, expiry: u32) -> V5 {
    let mut o = v5_options(addr(port), id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    v5_connect(o).await
}

/// mosquitto_sub resuming session `id` (clean session off, QoS 1), subscribed only to
/// `marker/<id>` (its queued `q/#` messages come from the restored session), until it
/// has read `count` messages; its `topic payload` lines.
fn mosquitto_sub_persistent(port: u16, id: &str, count: usize) -> Vec<String> {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-c", "-i", id, "-q", "1", "-t", &format!("marker/{id}")])
        .args(["-C", &count.to_string(), "-W", "20", "-F", "%t %p"])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_queued_messages_survive_sigterm_and_sigkill_restarts() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = start(dir.path());
    // mosquitto_sub creates its persistent session (clean session off) and leaves.
    let status = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-c", "-i", "msub", "-q", "1", "-t", "q/#", "-E"])
        .status()
        .expect("mosquitto_sub");
    assert!(status.success());
    // A rumqttc v5 session too, with a subscription identifier.
    let mut r = persistent(port, "rsub", 3600).await;
    r.client
        .subscribe_with_properties(
            "q/#",
            QoS::AtLeastOnce,
            p5::SubscribeProperties {
                id: Some(42),
                user_properties: vec![],
            },
        )
        .await
        .expect("subscribe queued");
    r.suback().await;
    r.client.disconnect().await.expect("disconnect queued");
    drop(r);

    let batch = |from: usize| {
        (from..from + 10)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
    };
    publish_acked(port, "q/a", &batch(0)).await;
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    let mut gw =
        GatewayProcess::start_until(dir.path(), &["tollgate is ready", "Broker state loaded"]);
    let loaded = gw
        .lines()
        .into_iter()
        .find(|l| l.contains("Broker state loaded"))
        .expect("logged");
    assert!(loaded.contains("sessions=2"), "{loaded}");
    publish_acked(port, "q/a", &batch(10)).await;
    gw.kill();
    let mut gw = start(dir.path());
    // The last one, published after the kill, proves completeness (queues keep order).
    publish_acked(port, "q/end", &["end".to_string()]).await;

    let lines = mosquitto_sub_persistent(port, "msub", 21);
    let mut want: Vec<String> = batch(0)
        .into_iter()
        .chain(batch(10))
        .map(|p| format!("q/a {p}"))
        .collect();
    want.push("q/end end".into());
    assert_eq!(
        lines, want,
        "mosquitto_sub got every queued message once, in order"
    );

    let mut r = persistent(port, "rsub", 3600).await;
    assert!(r.connack.as_ref().expect("connack").session_present);
    let mut got = Vec::new();
    loop {
        let p = r.publish().await;
        let ids = p
            .properties
            .as_ref()
            .map(|pr| pr.subscription_identifiers.clone());
        assert_eq!(ids, Some(vec![42]), "subscription identifier kept");
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if p.topic == "q/end" {
            break;
        }
    }
    let want: Vec<String> = batch(0)
        .into_iter()
        .chain(batch(10))
        .chain(["end".to_string()])
        .collect();
    assert_eq!(got, want, "rumqttc got every queued message once, in order");
    let _ = r.client.disconnect().await;
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// Read PUBLISH packets until `n` arrived (anything else is skipped).
async fn publishes(raw: &mut Raw, n: usize) -> Vec<p5::Publish> {
    let mut all = Vec::new();
    while all.len() < n {
        match raw.read().await {
            Some(p5::Packet::Publish(p)) => all.push(p),
            Some(_) => {}
            None => panic!("closed after {} of {n} PUBLISHes", all.len()),
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_are_resent_with_dup_and_their_packet_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = start(dir.path());
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("inflight", None, true, 3600, None))
        .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
    raw.send(&p5::Packet::Subscribe(p5::Subscribe {
        pkid: 1,
        filters: vec![p5::Filter::new("f/#", QoS::ExactlyOnce)],
        properties: None,
    }))
    .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::SubAck(_))));
    // Three QoS 2 messages reach it; it sends PUBREC for the first only, and never
    // PUBCOMP.
    let mut publisher = v5(addr(port), "publisher").await;
    for i in 0..3 {
        publisher
            .client
            .publish("f/x", QoS::ExactlyOnce, false, format!("p{i}"))
            .await
            .expect("publish queued");
    }
    let first = publishes(&mut raw, 3).await;
    assert!(first.iter().all(|p| !p.dup && p.qos == QoS::ExactlyOnce));
    raw.send(&p5::Packet::PubRec(p5::PubRec {
        pkid: first[0].pkid,
        reason: p5::PubRecReason::Success,
        properties: None,
    }))
    .await;
    loop {
        match raw.read().await {
            Some(p5::Packet::PubRel(r)) => {
                assert_eq!(r.pkid, first[0].pkid);
                break;
            }
            Some(_) => {}
            None => panic!("closed before PUBREL"),
        }
    }
    for _ in 0..3 {
        publisher
            .wait_for(|p| matches!(p, p5::Packet::PubComp(_)).then_some(()))
            .await;
    }
    assert_eq!(gw.terminate(), Some(0), "clean exit");

    let mut gw = start(dir.path());
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("inflight", None, false, 3600, None))
        .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => assert!(c.session_present, "session restored"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // First the PUBREL of the released one, then the other two again, DUP set, same ids.
    match raw.read().await {
        Some(p5::Packet::PubRel(r)) => assert_eq!(r.pkid, first[0].pkid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    let again = publishes(&mut raw, 2).await;
    for (a, b) in again.iter().zip(&first[1..]) {
        assert!(a.dup, "re-sent with DUP");
        assert_eq!(
            (a.pkid, &a.payload, &a.topic),
            (b.pkid, &b.payload, &b.topic)
        );
    }
    // Completing them leaves nothing to re-send at the next restart.
    raw.send(&p5::Packet::PubComp(p5::PubComp {
        pkid: first[0].pkid,
        reason: p5::PubCompReason::Success,
        properties: None,
    }))
    .await;
    for p in &again {
        raw.send(&p5::Packet::PubRec(p5::PubRec {
            pkid: p.pkid,
            reason: p5::PubRecReason::Success,
            properties: None,
        }))
        .await;
        match raw.read().await {
            Some(p5::Packet::PubRel(r)) => assert_eq!(r.pkid, p.pkid),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        raw.send(&p5::Packet::PubComp(p5::PubComp {
            pkid: p.pkid,
            reason: p5::PubCompReason::Success,
            properties: None,
        }))
        .await;
    }
    // The marker proves the completions were handled before the stop.
    let publisher = v5(addr(port), "publisher").await;
    publisher
        .client
        .publish("f/marker", QoS::AtLeastOnce, false, "m")
        .await
        .expect("publish queued");
    let marker = publishes(&mut raw, 1).await;
    assert_eq!(marker[0].topic, "f/marker");
    raw.send(&p5::Packet::PubAck(p5::PubAck {
        pkid: marker[0].pkid,
        reason: p5::PubAckReason::Success,
        properties: None,
    }))
    .await;
    raw.send(&p5::Packet::Disconnect(p5::Disconnect {
        reason_code: p5::DisconnectReasonCode::NormalDisconnection,
        properties: None,
    }))
    .await;
    let _ = raw.read_to_close().await;
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    let mut gw = start(dir.path());
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("inflight", None, false, 3600, None))
        .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(c)) if c.session_present));
    let publisher = v5(addr(port), "publisher").await;
    publisher
        .client
        .publish("f/marker", QoS::AtLeastOnce, false, "after")
        .await
        .expect("publish queued");
    let next = publishes(&mut raw, 1).await;
    assert_eq!(
        next[0].payload, "after",
        "nothing re-sent before the new message"
    );
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// The kinds of the records in the session log's segment files under `state_dir`
/// (frames as docs/journal.md describes them: a 28-byte header with the payload length
/// at bytes 4..8, then the payload, whose second byte is the record kind), acknowledged
/// or not.
fn session_record_kinds(state_dir: &Path) -> Vec<u8> {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(state_dir.join("state/sessions")).expect("sessions dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("segment");
        let mut at = 0;
        while at + 28 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
            if len < 2 || at + 28 + len as usize > bytes.len() {
                break;
            }
            kinds.push(bytes[at + 28 + 1]);
            at += 28 + len as usize;
        }
    }
    kinds
}

/// A QoS 1 delivery's packet id record is written once its message record is durable,
/// and only if it is still unacknowledged then: a subscriber that acknowledges at once
/// costs the log no packet id record for most messages (`sync = "always"`, on disk, so
/// durability is slower than its acknowledgements). Every delivery wrote one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_deliveries_acknowledged_before_they_are_durable_write_no_packet_id_record() {
    // On disk, not a tmpfs: fsync takes the time it takes in the field.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "always");
    let mut gw = start(dir.path());
    let mut sub = persistent(port, "fast", 3600).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    const MESSAGES: usize = 300;
    let payloads: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    let publishing = tokio::spawn(async move { publish_acked(port, "q/x", &payloads).await });
    let mut got = 0;
    while got < MESSAGES {
        let p = sub.publish().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got += 1;
    }
    publishing.await.expect("publisher");
    let _ = sub.client.disconnect().await;
    drop(sub);
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    let kinds = session_record_kinds(&dir.path().join("state"));
    let messages = kinds.iter().filter(|&&k| k == 3).count();
    let pkids = kinds.iter().filter(|&&k| k == 4).count();
    println!("{messages} message records, {pkids} packet id records");
    assert_eq!(messages, MESSAGES, "every delivery stored");
    assert!(
        pkids < MESSAGES / 2,
        "{pkids} packet id records for {MESSAGES} deliveries acknowledged at once"
    );
}

/// The other side of the deferral: a QoS 1 delivery still unacknowledged once its
/// message record is durable gets its packet id record, so a `kill -9` after that
/// re-sends it with DUP and its packet id. The second message's PUBACK proves the
/// first one's packet id record durable (it was appended when the first one's
/// durability was reported, before the second message came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_message_in_flight_at_sigkill_is_resent_with_dup_and_its_packet_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = start(dir.path());
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("inflight1", None, true, 3600, None))
        .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
    raw.send(&p5::Packet::Subscribe(p5::Subscribe {
        pkid: 1,
        filters: vec![p5::Filter::new("g/#", QoS::AtLeastOnce)],
        properties: None,
    }))
    .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::SubAck(_))));
    publish_acked(port, "g/x", &["first".to_string()]).await;
    let first = publishes(&mut raw, 1).await.remove(0);
    assert!(!first.dup);
    publish_acked(port, "g/x", &["second".to_string()]).await;
    let second = publishes(&mut raw, 1).await.remove(0);
    assert_eq!(second.payload, "second");
    gw.kill();

    let mut gw = start(dir.path());
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("inflight1", None, false, 3600, None))
        .await;
    assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(c)) if c.session_present));
    let again = publishes(&mut raw, 2).await;
    assert_eq!(again[0].payload, "first");
    assert!(again[0].dup, "re-sent with DUP");
    assert_eq!(again[0].pkid, first.pkid, "under its packet id");
    assert_eq!(again[1].payload, "second");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_expiry_passed_during_downtime_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = start(dir.path());
    for (id, expiry) in [("short", 2), ("long", 3600)] {
        let mut c = persistent(port, id, expiry).await;
        c.subscribe("e/#", QoS::AtLeastOnce).await;
        c.client.disconnect().await.expect("disconnect queued");
    }
    publish_acked(port, "e/x", &["queued".to_string()]).await;
    // Killed: the long session's expiry counts from its disconnect, in wall time.
    gw.kill();
    std::thread::sleep(Duration::from_millis(2500));
    let mut gw =
        GatewayProcess::start_until(dir.path(), &["tollgate is ready", "Broker state loaded"]);
    let loaded = gw
        .lines()
        .into_iter()
        .find(|l| l.contains("Broker state loaded"))
        .expect("logged");
    assert!(
        loaded.contains("sessions=1") && loaded.contains("sessions_expired_while_down=1"),
        "{loaded}"
    );
    let short = persistent(port, "short", 2).await;
    assert!(
        !short.connack.as_ref().expect("connack").session_present,
        "expired session gone"
    );
    let mut long = persistent(port, "long", 3600).await;
    assert!(long.connack.as_ref().expect("connack").session_present);
    assert_eq!(long.publish().await.payload, "queued");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_sessions_file_is_logged_and_the_intact_records_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "always");
    let mut gw = start(dir.path());
    let mut c = persistent(port, "torn", 3600).await;
    c.subscribe("t/#", QoS::AtLeastOnce).await;
    c.client.disconnect().await.expect("disconnect queued");
    drop(c);
    let payloads: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    publish_acked(port, "t/x", &payloads).await;
    gw.kill();
    // Tear the last record (a power cut mid-write): the tenth queued message.
    let seg_dir = dir.path().join("state/state/sessions");
    let seg = std::fs::read_dir(&seg_dir)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    let len = bytes.len();
    bytes.truncate(len - 3);
    std::fs::write(&seg, &bytes).expect("truncate");

    let mut gw = start(dir.path());
    let log = gw.lines();
    assert!(
        log.iter()
            .any(|l| l.contains("Session state: records lost to damage") && l.contains("records=1")),
        "the loss is logged: {log:#?}"
    );
    // Still serving and storing: a new message queues behind the nine intact ones.
    publish_acked(port, "t/x", &["after".to_string()]).await;
    let mut c = persistent(port, "torn", 3600).await;
    let mut got = Vec::new();
    loop {
        let p = c.publish().await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if p.payload == "after" {
            break;
        }
    }
    let mut want: Vec<String> = payloads[..9].to_vec();
    want.push("after".into());
    assert_eq!(got, want);
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_a_persistent_subscriber_across_sigkill_at_random_moments() {
    let runs: usize = std::env::var("TOLLGATE_STATE_SESSION_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let received: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    for run in 0..runs {
        let mut gw = start(dir.path());
        if run == 0 {
            // A second persistent subscriber stays offline during every run: all it
            // gets comes from its stored queue.
            let mut c = persistent(port, "offline-sub", 3600).await;
            c.subscribe("load/#", QoS::AtLeastOnce).await;
            c.client.disconnect().await.expect("disconnect queued");
        }
        let subscriber = subscribe_persistent(port, received.clone(), run == 0).await;
        let run_acked = load_until_killed(port, run as u64 * 1_000_000, &mut gw).await;
        subscriber.abort();
        acked.extend(run_acked);
    }
    // Last start: each subscriber drains its session up to a marker published now.
    let mut gw = start(dir.path());
    let mut online = persistent(port, "durable-sub", 3600).await;
    let mut offline = persistent(port, "offline-sub", 3600).await;
    publish_acked(port, "load/end", &["end".to_string()]).await;
    let offline_received: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    for (c, received) in [(&mut online, &received), (&mut offline, &offline_received)] {
        loop {
            let p = c.publish().await;
            if p.topic == "load/end" {
                break;
            }
            let v: u64 = String::from_utf8_lossy(&p.payload)
                .parse()
                .expect("a number");
            *received.lock().expect("received").entry(v).or_insert(0) += 1;
        }
    }
    assert!(!acked.is_empty(), "the load was acknowledged at all");
    for (name, received) in [("online", &received), ("offline", &offline_received)] {
        let received = received.lock().expect("received");
        let lost: Vec<&u64> = acked.iter().filter(|v| !received.contains_key(v)).collect();
        let duplicates: usize = received.values().map(|n| n - 1).sum();
        eprintln!(
            "{runs} kill -9 runs, {name} subscriber: {} QoS 1 PUBLISHes acknowledged, {} received, {} lost, {duplicates} duplicates",
            acked.len(),
            received.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{name}: acknowledged but never delivered: {lost:?}"
        );
    }
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// The persistent subscriber (`durable-sub`, QoS 1 on `load/#`), counting what it
/// receives until its connection ends.
async fn subscribe_persistent(
    port: u16,
    received: Arc<Mutex<HashMap<u64, usize>>>,
    first: bool,
) -> tokio::task::JoinHandle<()> {
    let mut c = persistent(port, "durable-sub", 3600).await;
    if first {
        c.subscribe("load/#", QoS::AtLeastOnce).await;
    } else {
        assert!(
            c.connack.as_ref().expect("connack").session_present,
            "session restored"
        );
    }
    tokio::spawn(async move {
        while let Some(Ok(event)) = c.events.recv().await {
            if let rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) = event {
                if let Ok(v) = String::from_utf8_lossy(&p.payload).parse::<u64>() {
                    *received.lock().expect("received").entry(v).or_insert(0) += 1;
                }
            }
        }
    })
}

/// Publish QoS 1 values `first..` on `load/<n>` until the gateway is killed at a random
/// moment; the values acknowledged.
async fn load_until_killed(port: u16, first: u64, gw: &mut GatewayProcess) -> BTreeSet<u64> {
    let mut options = v5_options(addr(port), "load");
    options.set_outgoing_inflight_upper_limit(32);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
    // What rumqttc will write, in request order: its Outgoing::Publish events come in
    // the same order and carry the packet id the PUBACK will name.
    let queued: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let reader = {
        let queued = queued.clone();
        tokio::spawn(async move {
            let mut inflight = BTreeMap::new();
            let mut acked = BTreeSet::new();
            while let Ok(event) = events.poll().await {
                match event {
                    rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                        if let Some(v) = queued.lock().expect("queued").pop_front() {
                            inflight.insert(pkid, v);
                        }
                    }
                    rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a)) => {
                        if let Some(v) = inflight.remove(&a.pkid) {
                            assert_eq!(a.reason, p5::PubAckReason::Success, "{v} not stored");
                            acked.insert(v);
                        }
                    }
                    _ => {}
                }
            }
            acked
        })
    };
    let publisher = tokio::spawn(async move {
        for v in first.. {
            queued.lock().expect("queued").push_back(v);
            if client
                .publish(
                    format!("load/{}", v % 10),
                    QoS::AtLeastOnce,
                    false,
                    v.to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let wait = rand::thread_rng().gen_range(300..1500);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    gw.kill();
    publisher.abort();
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the client noticed the kill")
        .expect("reader task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_session_still_belongs_to_its_identity() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let passwd = mosquitto_passwd_file(dir.path(), &[("alice", "secret")]);
    config_with(dir.path(), port, &auth_section(&passwd));
    let alice = |clean: bool| {
        let mut o = v5_options(addr(port), "owned");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(3600));
        o.set_credentials("alice", "secret");
        o
    };
    let mut gw = start(dir.path());
    let mut c = v5_connect(alice(true)).await;
    c.subscribe("o/#", QoS::AtLeastOnce).await;
    c.client.disconnect().await.expect("disconnect queued");
    publish_acked(port, "o/x", &["for alice".to_string()]).await;
    gw.kill();
    let mut gw = start(dir.path());
    // An anonymous client with the same client id is refused (0x87) and takes nothing.
    let mut raw = Raw::open(addr(port)).await;
    raw.send(&v5_connect_packet("owned", None, false, 3600, None))
        .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => {
            assert_eq!(c.code, p5::ConnectReturnCode::NotAuthorized);
            assert!(!c.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Audited (the log is read on another thread: waited for, not sampled).
    tokio::task::block_in_place(|| gw.wait_for_line("owned", Duration::from_secs(10)));
    let mut c = v5_connect(alice(false)).await;
    assert!(c.connack.as_ref().expect("connack").session_present);
    assert_eq!(c.publish().await.payload, "for alice");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// One persistent subscriber reads a fast stream of messages while an offline one gets
/// one now and then: each segment of the session log keeps one live record among
/// acknowledged ones. Compaction copies those forward as the log fills (not only once a
/// second), so a minimum-size log (`max_bytes` 1 MiB: 512 KiB for sessions) refuses
/// nothing while about three times that passes through it at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_log_is_compacted_within_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config_with(dir.path(), port, "[persistence]\nmax_bytes = 1048576\n");
    let mut gw = start(dir.path());
    let mut cold = persistent(port, "cold", 3600).await;
    cold.subscribe("cold/#", QoS::AtLeastOnce).await;
    cold.client.disconnect().await.expect("disconnect queued");
    let mut hot = persistent(port, "hot", 3600).await;
    hot.subscribe("hot/#", QoS::AtLeastOnce).await;
    // The publisher waits for the hot subscriber after each batch, so what is live in
    // the log is the cold messages and one batch: the log stays within its budget only
    // by compaction, however slowly a busy machine runs the reader.
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 3000 {
            hot.publish().await;
            n += 1;
            seen.store(n, Ordering::SeqCst);
        }
        hot
    });
    let mut publisher = v5(addr(port), "publisher").await;
    let payload = "x".repeat(400);
    let mut cold_sent = 0;
    for batch in 0..120 {
        for i in 0..25 {
            publisher
                .client
                .publish("hot/x", QoS::AtLeastOnce, false, payload.clone())
                .await
                .expect("publish queued");
            if i == 0 && batch % 2 == 0 {
                publisher
                    .client
                    .publish("cold/x", QoS::AtLeastOnce, false, format!("c{cold_sent}"))
                    .await
                    .expect("publish queued");
                cold_sent += 1;
            }
        }
        let acks = 25 + usize::from(batch % 2 == 0);
        for _ in 0..acks {
            let reason = publisher
                .wait_for(|p| match p {
                    p5::Packet::PubAck(a) => Some(a.reason),
                    _ => None,
                })
                .await;
            assert_eq!(reason, p5::PubAckReason::Success, "batch {batch}: stored");
        }
        let caught_up = (batch + 1) * 25;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::SeqCst) < caught_up {
            assert!(
                std::time::Instant::now() < deadline,
                "batch {batch}: the hot subscriber did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // No pause: the stream runs as fast as the machine allows (several times
        // 512 KiB a second). Compaction driven by the 1 s upkeep alone refused messages
        // here (0x97); driven by what was appended, it makes room in time.
    }
    let _hot = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("hot subscriber got everything")
        .expect("reader");
    gw.kill();
    let mut gw = start(dir.path());
    let mut cold = persistent(port, "cold", 3600).await;
    for i in 0..cold_sent {
        assert_eq!(cold.publish().await.payload, format!("c{i}"));
    }
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// A QoS 2 PUBLISH that tollgate PUBRECed before a `kill -9` and that its publisher
/// resends with DUP after the restart is acknowledged again and not delivered a second
/// time; its PUBREL is answered with PUBCOMP (Success, not "packet id not found").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_pubreced_before_sigkill_is_delivered_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = start(dir.path());
    let mut before = v5(addr(port), "watcher").await;
    before.subscribe("e/#", QoS::ExactlyOnce).await;
    let mut syncer = persistent(port, "syncer", 3600).await;
    syncer.subscribe("sync/#", QoS::AtLeastOnce).await;
    syncer.client.disconnect().await.expect("disconnect queued");
    let (mut raw, _) = raw_v5(addr(port), "qos2-publisher", None, false, 3600, None).await;
    // Its PUBACK waits for a record stored after the publisher's session record.
    raw.send(&v5_publish("sync/x", QoS::AtLeastOnce, 6, "sync"))
        .await;
    raw_wait(&mut raw, |p| {
        matches!(p, p5::Packet::PubAck(_)).then_some(())
    })
    .await;
    let mut publish = p5::Publish::new("e/x", QoS::ExactlyOnce, "once", None);
    publish.pkid = 7;
    raw.send(&p5::Packet::Publish(publish.clone())).await;
    let pubrec = |p: &p5::Packet| match p {
        p5::Packet::PubRec(r) => Some((r.pkid, r.reason)),
        _ => None,
    };
    assert_eq!(
        raw_wait(&mut raw, pubrec).await,
        (7, p5::PubRecReason::Success)
    );
    assert_eq!(before.publish().await.payload, "once");
    // Killed between PUBREC and PUBREL.
    gw.kill();
    drop(raw);

    let mut gw = start(dir.path());
    let mut after = v5(addr(port), "watcher").await;
    after.subscribe("e/#", QoS::ExactlyOnce).await;
    let (mut raw, connack) = raw_v5(addr(port), "qos2-publisher", None, false, 3600, None).await;
    assert!(connack.session_present, "publisher's session restored");
    publish.dup = true;
    raw.send(&p5::Packet::Publish(publish)).await;
    assert_eq!(
        raw_wait(&mut raw, pubrec).await,
        (7, p5::PubRecReason::Success)
    );
    raw.send(&p5::Packet::PubRel(p5::PubRel {
        pkid: 7,
        reason: p5::PubRelReason::Success,
        properties: None,
    }))
    .await;
    let pubcomp = raw_wait(&mut raw, |p| match p {
        p5::Packet::PubComp(c) => Some((c.pkid, c.reason)),
        _ => None,
    })
    .await;
    assert_eq!(pubcomp, (7, p5::PubCompReason::Success));
    // The marker, from the same publisher after the PUBCOMP: the watcher gets it first,
    // so the resend was not delivered again.
    raw.send(&v5_publish("e/marker", QoS::AtLeastOnce, 8, "end"))
        .await;
    raw_wait(&mut raw, |p| {
        matches!(p, p5::Packet::PubAck(_)).then_some(())
    })
    .await;
    assert_eq!(after.publish().await.payload, "end");
    // The id is free again: a new message under it is delivered.
    let mut next = p5::Publish::new("e/x", QoS::ExactlyOnce, "second", None);
    next.pkid = 7;
    raw.send(&p5::Packet::Publish(next)).await;
    assert_eq!(
        raw_wait(&mut raw, pubrec).await,
        (7, p5::PubRecReason::Success)
    );
    assert_eq!(after.publish().await.payload, "second");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// A raw v5 client of a persistent session (`expiry` s) with a QoS 1 will on
/// `w/<id>` delayed `delay` s, dropped without DISCONNECT; returns when tollgate
/// logged the will stored (the gateway logs the router at debug level).
async fn leave_with_delayed_will(
    gw: &GatewayProcess,
    port: u16,
    id: &str,
    expiry: u32,
    delay: u32,
) {
    let will = p5::LastWill {
        topic: format!("w/{id}").into(),
        message: format!("{id} gone").into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Some(p5::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    };
    let (raw, connack) = raw_v5(addr(port), id, None, false, expiry, Some(will)).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::Success);
    drop(raw);
    let line = tokio::task::block_in_place(|| {
        gw.wait_for_line("Delayed will stored", Duration::from_secs(10))
    });
    assert!(line.contains(id), "{line}");
}

fn start_logging_wills(dir: &Path) -> GatewayProcess {
    GatewayProcess::start(dir, Some("info,tollgate::broker::router=debug"), 0)
}

/// Delayed wills of sessions offline when tollgate stops: after `kill -9` one is
/// published when its delay (wall time) ends, after the restart; one whose client came
/// back first is not; after SIGTERM, one due during the downtime and one of a session
/// that expired during it are published at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_wills_survive_sigkill_and_sigterm_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let gw = start_logging_wills(dir.path());
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    watcher.subscribe("w/#", QoS::AtLeastOnce).await;
    watcher
        .client
        .disconnect()
        .await
        .expect("disconnect queued");
    drop(watcher);
    let delay = 4;
    leave_with_delayed_will(&gw, port, "dev1", 3600, delay).await;
    let closed1 = std::time::Instant::now();
    leave_with_delayed_will(&gw, port, "dev2", 3600, delay).await;
    let closed2 = std::time::Instant::now();
    // Its PUBACK waits for its record, appended after both wills: they are on disk too.
    publish_acked(port, "w/sync", &["sync".to_string()]).await;
    let mut gw = gw;
    gw.kill();

    let mut gw = start_logging_wills(dir.path());
    // dev2 comes back before its will is due: cancelled.
    let (dev2, connack) = raw_v5(addr(port), "dev2", None, false, 3600, None).await;
    assert!(connack.session_present);
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    assert_eq!(watcher.publish().await.payload, "sync");
    let will = watcher.publish().await;
    assert_eq!(
        (will.topic.as_ref(), will.payload.as_ref()),
        (&b"w/dev1"[..], &b"dev1 gone"[..])
    );
    assert!(
        closed1.elapsed() >= Duration::from_secs(delay.into()) - Duration::from_millis(100),
        "published after its delay, not at start: {:?}",
        closed1.elapsed()
    );
    // Past dev2's due time, a marker: its will would have come before it.
    let due2 = closed2 + Duration::from_secs(delay.into()) + Duration::from_millis(500);
    tokio::time::sleep(due2.saturating_duration_since(std::time::Instant::now())).await;
    publish_acked(port, "w/marker", &["m1".to_string()]).await;
    assert_eq!(
        watcher.publish().await.payload,
        "m1",
        "dev2's will was cancelled"
    );
    drop(dev2);
    watcher
        .client
        .disconnect()
        .await
        .expect("disconnect queued");
    drop(watcher);

    // Due while tollgate is stopped: dev3 by its delay, dev4 by its session's end.
    leave_with_delayed_will(&gw, port, "dev3", 3600, 1).await;
    leave_with_delayed_will(&gw, port, "dev4", 1, 60).await;
    let closed = std::time::Instant::now();
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    tokio::time::sleep(
        (closed + Duration::from_millis(2500)).saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let mut gw = start_logging_wills(dir.path());
    assert!(
        gw.lines()
            .iter()
            .any(|l| l.contains("wills=2") && l.contains("Delayed wills due")),
        "{:#?}",
        gw.lines()
    );
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        got.push(String::from_utf8_lossy(&watcher.publish().await.payload).into_owned());
    }
    got.sort();
    assert_eq!(got, vec!["dev3 gone", "dev4 gone"]);
    // Nothing else was pending: the next message is the marker.
    publish_acked(port, "w/marker", &["m2".to_string()]).await;
    assert_eq!(watcher.publish().await.payload, "m2");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// A v5 will on `w/<id>` saying "<id> gone", delayed `delay` s (none when 0).
fn will_of(id: &str, delay: u32) -> p5::LastWill {
    p5::LastWill {
        topic: format!("w/{id}").into(),
        message: format!("{id} gone").into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: (delay > 0).then(|| p5::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    }
}

/// Connect raw v5 client `id` (`expiry` s; clean start when 0) with `will`, and wait
/// until tollgate logged its will stored.
async fn connect_with_will(
    gw: &GatewayProcess,
    port: u16,
    id: &str,
    expiry: u32,
    delay: u32,
) -> Raw {
    let (raw, connack) = raw_v5(
        addr(port),
        id,
        None,
        expiry == 0,
        expiry,
        Some(will_of(id, delay)),
    )
    .await;
    assert_eq!(connack.code, p5::ConnectReturnCode::Success);
    wait_will_stored(gw, id);
    raw
}

fn wait_will_stored(gw: &GatewayProcess, id: &str) {
    let line = tokio::task::block_in_place(|| {
        gw.wait_for_line("Will of a connected client stored", Duration::from_secs(10))
    });
    assert!(line.contains(id), "{line}");
}

/// Debian's mosquitto_sub as a connected MQTT 3.1.1 client with a will on `w/<id>`.
fn mosquitto_sub_with_will(port: u16, id: &str) -> std::process::Child {
    std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["-i", id, "-t", &format!("idle/{id}")])
        .args(["--will-topic", &format!("w/{id}"), "--will-payload"])
        .arg(format!("{id} gone"))
        .args(["--will-qos", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_sub")
}

/// The next `n` payloads the watcher gets, sorted.
async fn payloads(watcher: &mut V5, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(String::from_utf8_lossy(&watcher.publish().await.payload).into_owned());
    }
    got.sort();
    got
}

/// Wills of clients connected when tollgate gets `kill -9` count as their connection
/// dropping at the restart: a will without delay (v5 clean start, and Debian's
/// mosquitto_sub over 3.1.1) is published once the state is loaded; a delayed will of
/// a persistent session `min(delay, expiry)` after the restart, unless its client
/// comes back first; a will cleanly disconnected before the crash is not published.
/// After SIGTERM a connected client's will is not published (a server stop closes
/// connections without their wills, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_of_clients_connected_at_sigkill_are_published_after_restart() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let gw = start_logging_wills(dir.path());
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    watcher.subscribe("w/#", QoS::AtLeastOnce).await;
    watcher
        .client
        .disconnect()
        .await
        .expect("disconnect queued");
    drop(watcher);
    let delay = 3;
    let now_a = connect_with_will(&gw, port, "now-a", 0, 0).await;
    let mut sub = mosquitto_sub_with_will(port, "now-b");
    wait_will_stored(&gw, "now-b");
    let delayed_c = connect_with_will(&gw, port, "delayed-c", 3600, delay).await;
    let back_d = connect_with_will(&gw, port, "back-d", 3600, delay).await;
    let mut clean_e = connect_with_will(&gw, port, "clean-e", 0, 0).await;
    clean_e
        .send(&p5::Packet::Disconnect(p5::Disconnect {
            reason_code: p5::DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }))
        .await;
    assert!(clean_e.read().await.is_none(), "closed after DISCONNECT");
    // The socket closes before the router hears of it: the removal is waited for, so
    // the record below is appended after it.
    let line = tokio::task::block_in_place(|| {
        gw.wait_for_line(
            "Will record of an ended connection removed",
            Duration::from_secs(10),
        )
    });
    assert!(line.contains("clean-e"), "{line}");
    // Its PUBACK waits for its record, appended after the wills and the removal: they
    // are on disk too.
    publish_acked(port, "w/sync", &["sync".to_string()]).await;
    let mut gw = gw;
    gw.kill();
    let _ = sub.kill();
    let _ = sub.wait();
    drop((now_a, delayed_c, back_d));

    let restarted = std::time::Instant::now();
    let gw = start_logging_wills(dir.path());
    // back-d comes back before its will is due: cancelled.
    let (back_d, connack) = raw_v5(addr(port), "back-d", None, false, 3600, None).await;
    assert!(connack.session_present);
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    assert_eq!(watcher.publish().await.payload, "sync");
    assert_eq!(
        payloads(&mut watcher, 2).await,
        ["now-a gone", "now-b gone"]
    );
    assert_eq!(watcher.publish().await.payload, "delayed-c gone");
    assert!(
        restarted.elapsed() >= Duration::from_secs(delay.into()),
        "published after its delay from the restart: {:?}",
        restarted.elapsed()
    );
    // Past back-d's due time, a marker: its will or clean-e's would come before it.
    tokio::time::sleep(
        (restarted + Duration::from_secs(delay.into()) + Duration::from_millis(500))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    publish_acked(port, "w/marker", &["m1".to_string()]).await;
    assert_eq!(watcher.publish().await.payload, "m1");
    watcher
        .client
        .disconnect()
        .await
        .expect("disconnect queued");
    drop(watcher);

    // SIGTERM with a client connected: its will is not published, now or at start.
    let now_f = connect_with_will(&gw, port, "now-f", 0, 0).await;
    let mut gw = gw;
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    drop((now_f, back_d));
    let mut gw = start_logging_wills(dir.path());
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    publish_acked(port, "w/marker", &["m2".to_string()]).await;
    assert_eq!(watcher.publish().await.payload, "m2");
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

/// The configuration with `[persistence]` and anonymous ACL rules (`(access, topic)`).
fn config_with_acl(dir: &Path, port: u16, rules: &[(&str, &str)]) {
    let mut sections = String::from("[persistence]\nsync = \"batch\"\n[acl]\n");
    for (access, topic) in rules {
        sections.push_str(&format!(
            "[[acl.rule]]\naccess = {access:?}\ntopic = {topic:?}\n"
        ));
    }
    config_with(dir, port, &sections);
}

/// A will stored for a client connected at `kill -9` goes through the one write
/// authorization when it is published after the restart: one whose topic the
/// restarted gateway's ACL denies is not published, the other one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_will_is_authorized_again_when_published_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config_with_acl(dir.path(), port, &[("readwrite", "#")]);
    let gw = start_logging_wills(dir.path());
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    watcher.subscribe("w/#", QoS::AtLeastOnce).await;
    watcher
        .client
        .disconnect()
        .await
        .expect("disconnect queued");
    drop(watcher);
    let denied = connect_with_will(&gw, port, "denied-g", 0, 0).await;
    let allowed = connect_with_will(&gw, port, "allowed-h", 0, 0).await;
    publish_acked(port, "w/sync", &["sync".to_string()]).await;
    let mut gw = gw;
    gw.kill();
    drop((denied, allowed));

    config_with_acl(
        dir.path(),
        port,
        &[("readwrite", "#"), ("deny", "w/denied-g")],
    );
    let mut gw = start_logging_wills(dir.path());
    let mut watcher = persistent(port, "will-watcher", 3600).await;
    assert_eq!(watcher.publish().await.payload, "sync");
    assert_eq!(watcher.publish().await.payload, "allowed-h gone");
    publish_acked(port, "w/marker", &["m1".to_string()]).await;
    assert_eq!(
        watcher.publish().await.payload,
        "m1",
        "the denied will was not published"
    );
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}
