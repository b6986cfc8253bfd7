//! Durable broker state (issue 11): retained messages survive a restart with SIGTERM and
//! with `kill -9`, over real sockets (rumqttc publishers, a rumqttc reader and Debian's
//! mosquitto_sub), and a damaged state file is logged and skipped while the intact
//! records load. The gateway is the `tollgate` binary, a separate process.
//!
//! `TOLLGATE_STATE_CRASH_RUNS` (default 3) sets the runs of the random-moment `kill -9`
//! test; the long setting is `TOLLGATE_STATE_CRASH_RUNS=20 cargo test --release --test
//! state_retained`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;

use support::clients::{v5, v5_options, V5};
use support::gateway::write_config;
use support::net::free_port;
use support::peers::require_peer;
use support::process::GatewayProcess;

fn config(dir: &Path, port: u16, sync: &str) {
    write_config(
        dir,
        &format!(
            "sys_interval = \"0s\"\n[persistence]\nsync = {sync:?}\n\
             [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nallow_anonymous = true\n"
        ),
    );
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Every retained message under `r/#` now, read with a subscription and proven complete
/// by a trailing marker on a second topic: the same connection sends the SUBSCRIBE and
/// then the marker, and the broker handles them in order.
async fn retained(port: u16) -> BTreeMap<String, String> {
    let mut c = v5(addr(port), "reader").await;
    c.client
        .subscribe_many([
            p5::Filter::new("r/#", QoS::AtLeastOnce),
            p5::Filter::new("marker/reader", QoS::AtLeastOnce),
        ])
        .await
        .expect("subscribe queued");
    c.client
        .publish("marker/reader", QoS::AtLeastOnce, false, "end")
        .await
        .expect("marker queued");
    let mut all = BTreeMap::new();
    loop {
        let p = c.publish().await;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic == "marker/reader" {
            break;
        }
        assert!(p.retain, "{topic} delivered as retained");
        all.insert(topic, String::from_utf8_lossy(&p.payload).into_owned());
    }
    let _ = c.client.disconnect().await;
    all
}

async fn publish_retained(c: &V5, topic: &str, payload: &str, expiry: Option<u32>) {
    let properties = p5::PublishProperties {
        message_expiry_interval: expiry,
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    c.client
        .publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            true,
            payload.to_string(),
            properties,
        )
        .await
        .expect("publish queued");
}

/// Wait for `n` PUBACKs.
async fn pubacks(c: &mut V5, n: usize) {
    for _ in 0..n {
        c.wait_for(|p| matches!(p, p5::Packet::PubAck(_)).then_some(()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_sigterm_and_sigkill_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
    let mut c = v5(addr(port), "setter").await;
    publish_retained(&c, "r/kept", "1", None).await;
    publish_retained(&c, "r/replaced", "old", None).await;
    publish_retained(&c, "r/replaced", "new", None).await;
    publish_retained(&c, "r/cleared", "x", None).await;
    publish_retained(&c, "r/cleared", "", None).await;
    publish_retained(&c, "r/expires", "soon", Some(2)).await;
    publish_retained(&c, "r/lasting", "hour", Some(3600)).await;
    pubacks(&mut c, 7).await;
    let _ = c.client.disconnect().await;
    let want: BTreeMap<String, String> = [
        ("r/kept", "1"),
        ("r/replaced", "new"),
        ("r/expires", "soon"),
        ("r/lasting", "hour"),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(retained(port).await, want);

    // Clean stop and start.
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    let mut gw =
        GatewayProcess::start_until(dir.path(), &["tollgate is ready", "Broker state loaded"]);
    assert_eq!(retained(port).await, want, "after SIGTERM");

    // Message expiry kept counting while the broker was down.
    gw.kill();
    std::thread::sleep(Duration::from_millis(2100));
    let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
    let mut after_kill = want.clone();
    after_kill.remove("r/expires");
    assert_eq!(retained(port).await, after_kill, "after kill -9 and expiry");

    // mosquitto_sub, an independent client, sees the same with its remaining expiry.
    if require_peer("mosquitto_sub") {
        let out = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
            .args(["-t", "r/lasting", "-C", "1", "-W", "10", "-F", "%r %t %p"])
            .output()
            .expect("mosquitto_sub");
        let line = String::from_utf8_lossy(&out.stdout);
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("1"), "retain flag in {line:?}");
        assert_eq!(parts.next(), Some("r/lasting"));
        assert_eq!(parts.next(), Some("hour"));
    }
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_values_survive_sigkill_at_random_moments() {
    let runs: usize = std::env::var("TOLLGATE_STATE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "batch");
    // Highest acknowledged value per topic, over every run.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_acked = 0usize;
    for run in 0..=runs {
        let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
        // Every acknowledged value is still there, or a later one (sent, not yet acked).
        let now = retained(port).await;
        for (topic, value) in &acked {
            let stored: u64 = now
                .get(topic)
                .unwrap_or_else(|| panic!("run {run}: {topic} lost (acknowledged {value})"))
                .parse()
                .expect("a number");
            assert!(
                stored >= *value,
                "run {run}: {topic} went back from {value} to {stored}"
            );
        }
        if run == runs {
            break;
        }
        let (run_acked, count) = load_until_killed(port, run as u64 * 1_000_000, &mut gw).await;
        total_acked += count;
        for (topic, value) in run_acked {
            let best = acked.entry(topic).or_insert(0);
            *best = (*best).max(value);
        }
    }
    assert!(total_acked > 0, "the load was acknowledged at all");
    eprintln!("{runs} kill -9 runs, {total_acked} retained PUBLISHes acknowledged, none lost");
}

/// Publish retained QoS 1 values `first..` over 50 topics until the gateway is killed at
/// a random moment; returns the highest acknowledged value per topic and the count.
async fn load_until_killed(
    port: u16,
    first: u64,
    gw: &mut GatewayProcess,
) -> (BTreeMap<String, u64>, usize) {
    let mut options = v5_options(addr(port), "load");
    options.set_outgoing_inflight_upper_limit(32);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
    // What rumqttc will write, in request order: its Outgoing::Publish events come in
    // the same order and carry the packet id the PUBACK will name.
    let queued: Arc<Mutex<std::collections::VecDeque<(String, u64)>>> = Arc::default();
    let reader = {
        let queued = queued.clone();
        tokio::spawn(async move {
            let mut inflight = std::collections::HashMap::new();
            let mut acked: BTreeMap<String, u64> = BTreeMap::new();
            let mut count = 0usize;
            while let Ok(event) = events.poll().await {
                match event {
                    rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                        if let Some(m) = queued.lock().expect("queued").pop_front() {
                            inflight.insert(pkid, m);
                        }
                    }
                    rumqttc::v5::Event::Incoming(p5::Packet::PubAck(a)) => {
                        if let Some((topic, value)) = inflight.remove(&a.pkid) {
                            count += 1;
                            let best = acked.entry(topic).or_insert(0);
                            *best = (*best).max(value);
                        }
                    }
                    _ => {}
                }
            }
            (acked, count)
        })
    };
    let publisher = tokio::spawn(async move {
        for v in first.. {
            let topic = format!("r/{}", v % 50);
            queued.lock().expect("queued").push_back((topic.clone(), v));
            if client
                .publish(topic, QoS::AtLeastOnce, true, v.to_string())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let wait = rand::thread_rng().gen_range(200..1500);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    gw.kill();
    publisher.abort();
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the client noticed the kill")
        .expect("reader task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_logged_and_the_intact_records_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    config(dir.path(), port, "always");
    let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
    let mut c = v5(addr(port), "setter").await;
    for i in 0..10 {
        publish_retained(&c, &format!("r/{i}"), &format!("v{i}"), None).await;
    }
    pubacks(&mut c, 10).await;
    let _ = c.client.disconnect().await;
    gw.kill();
    // Tear the last record (a power cut mid-write).
    let seg_dir = dir.path().join("state/state/retained");
    let seg = std::fs::read_dir(&seg_dir)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    let len = bytes.len();
    bytes.truncate(len - 3);
    std::fs::write(&seg, &bytes).expect("truncate");

    let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
    let loaded = retained(port).await;
    let want: BTreeMap<String, String> = (0..9)
        .map(|i| (format!("r/{i}"), format!("v{i}")))
        .collect();
    assert_eq!(loaded, want, "the nine intact records load");
    let log = gw.lines();
    assert!(
        log.iter()
            .any(|l| l.contains("lost to damage") && l.contains("records=1")),
        "the loss is logged: {log:#?}"
    );
    // Still serving and storing.
    let mut c = v5(addr(port), "setter2").await;
    publish_retained(&c, "r/after", "ok", None).await;
    pubacks(&mut c, 1).await;
    assert_eq!(gw.terminate(), Some(0), "clean exit");
    let mut gw = GatewayProcess::start_until(dir.path(), &["tollgate is ready"]);
    assert_eq!(
        retained(port).await.get("r/after").map(String::as_str),
        Some("ok")
    );
    assert_eq!(gw.terminate(), Some(0), "clean exit");
}
