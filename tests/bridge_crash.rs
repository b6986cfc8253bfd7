//! The bridge journal against crashes (issue 9: "an uplink outage or a power cut loses
//! nothing that was acknowledged"). The gateway is the `tollgate` binary (a separate
//! process, so it can be killed with SIGKILL), the cloud Debian's mosquitto over mTLS
//! (as in tests/bridge_forwarding.rs). A local rumqttc client publishes QoS 1 messages
//! while the cloud is down; every PUBACK it gets means the message is in the bridge's
//! journal (the durable hold-back releases it only after the append was fsynced). The
//! gateway is killed, the cloud started, the gateway restarted: every acknowledged
//! message must arrive at a subscriber on the cloud (duplicates are allowed, counted).
//!
//! `TOLLGATE_BRIDGE_CRASH_MESSAGES` (default 1000) sets the number of messages,
//! `TOLLGATE_BRIDGE_CRASH_RUNS` (default 2) the runs of the random-moment kill test.

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::mpsc;

use support::cloud::cloud_settings;
use support::gateway::write_config;
use support::net::free_port;
use support::peers::{require_peer, Mosquitto};
use support::pki::Pki;
use support::process::GatewayProcess;

/// How long the cloud may take to receive everything after the restart.
const DELIVERY_LIMIT: Duration = Duration::from_secs(120);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The gateway's configuration: a local TCP listener on `port`, a bridge to the cloud.
fn gateway_config(dir: &Path, pki: &Pki, gw_cert: &(PathBuf, PathBuf), port: u16, cloud: u16) {
    write_config(
        dir,
        &format!(
            r##"sys_interval = "0"

[[listener]]
name = "local"
bind = "127.0.0.1:{port}"
transport = "tcp"
allow_anonymous = true

[[bridge]]
name = "cloud"
address = ["127.0.0.1:{cloud}"]
protocol = "5"
client_id = "gw1"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
backoff = {{ min = "200ms", max = "1s", stable = "5s" }}

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site/gw1/"
"##,
            ca = pki.ca_path.display().to_string(),
            cert = gw_cert.0.display().to_string(),
            key = gw_cert.1.display().to_string(),
        ),
    );
}

/// Publish `n` QoS 1 messages `m-<i>` on `sensors/crash` to the gateway at `port`;
/// returns the ids whose PUBACK arrived, when all did or the connection ended.
async fn publish(port: u16, n: usize, acked: Arc<Mutex<HashSet<usize>>>) {
    let mut o = MqttOptions::new("crash-publisher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100);
    tokio::spawn(async move {
        for i in 0..n {
            if client
                .publish("sensors/crash", QoS::AtLeastOnce, false, format!("m-{i}"))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // rumqttc writes PUBLISH packets in request order: that maps packet ids to ids.
    let mut next_id = 0usize;
    let mut by_pkid: HashMap<u16, usize> = HashMap::new();
    let mut sent: VecDeque<usize> = VecDeque::new();
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent.push_back(next_id);
                by_pkid.insert(pkid, next_id);
                next_id += 1;
            }
            Ok(Event::Incoming(p5::Packet::PubAck(ack))) => {
                if let Some(id) = by_pkid.remove(&ack.pkid) {
                    let mut set = acked.lock().expect("acked");
                    set.insert(id);
                    if set.len() == n {
                        return;
                    }
                }
            }
            Ok(_) => {}
            // The gateway was killed (or refused us): what was acknowledged is known.
            Err(_) => return,
        }
    }
}

/// A subscriber on the cloud (certificate CN `operator`) to `site/gw1/sensors/#`;
/// returns once subscribed, payloads arrive on the channel.
async fn cloud_subscriber(pki: &Pki, port: u16) -> mpsc::UnboundedReceiver<String> {
    let (cert, key) = pki.client("operator");
    let tls = tollgate::tls::build_client_config(&pki.ca_path, Some((&cert, &key)))
        .expect("client TLS config");
    let mut o = MqttOptions::new("crash-subscriber", "127.0.0.1", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100);
    client
        .subscribe("site/gw1/sensors/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let (tx, rx) = mpsc::unbounded_channel();
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
                    if tx
                        .send(String::from_utf8_lossy(&p.payload).into_owned())
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), subscribed)
        .await
        .expect("subscribed on the cloud within the limit")
        .expect("subscriber task alive");
    rx
}

/// One crash run: publish with the cloud down, SIGKILL the gateway (after every PUBACK,
/// or `kill_after` into publishing), start the cloud, restart the gateway, and check
/// every acknowledged message arrives. Returns (acknowledged, distinct, duplicates).
async fn crash_run(n: usize, kill_after: Option<Duration>) -> (usize, usize, usize) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud_dir = dir.path().join("cloud");
    std::fs::create_dir(&cloud_dir).expect("cloud dir");
    let gw_cert = pki.client("gw1");
    let (port, cloud_port) = (free_port(), free_port());
    gateway_config(dir.path(), &pki, &gw_cert, port, cloud_port);

    let mut gateway = GatewayProcess::start(dir.path(), None, 1);
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let publisher = tokio::spawn(publish(port, n, acked.clone()));
    match kill_after {
        None => {
            tokio::time::timeout(DELIVERY_LIMIT, publisher)
                .await
                .expect("every PUBACK within the limit")
                .expect("publisher task");
            assert_eq!(
                acked.lock().expect("acked").len(),
                n,
                "every message acknowledged while the cloud is down"
            );
        }
        Some(delay) => {
            tokio::time::sleep(delay).await;
        }
    }
    gateway.kill();
    let first_log = gateway.lines();
    drop(gateway);
    let acked: HashSet<usize> = acked.lock().expect("acked").clone();

    let _cloud = Mosquitto::start_on(
        &cloud_dir,
        cloud_port,
        &cloud_settings(&pki, &cloud_dir, false),
    );
    let mut rx = cloud_subscriber(&pki, cloud_port).await;
    let gateway = GatewayProcess::start(dir.path(), None, 1);

    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
    let missing = |seen: &HashMap<String, usize>| {
        acked
            .iter()
            .filter(|i| !seen.contains_key(&format!("m-{i}")))
            .count()
    };
    while missing(&seen) > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(payload)) => *seen.entry(payload).or_default() += 1,
            _ => {
                let log = gateway.lines();
                let mut lost: Vec<&usize> = acked
                    .iter()
                    .filter(|i| !seen.contains_key(&format!("m-{i}")))
                    .collect();
                lost.sort();
                lost.truncate(20);
                panic!(
                    "{} of {} acknowledged messages never reached the cloud (first: {lost:?}; {} distinct seen; first run log: {first_log:#?}, restart log: {log:#?})",
                    missing(&seen),
                    acked.len(),
                    seen.len()
                );
            }
        }
    }
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let log = gateway.lines();
    let recovered = format!("pending={}", acked.len());
    assert!(
        log.iter()
            .any(|l| l.contains("Bridge journal opened") && l.contains("pending=")),
        "the restart logs what it recovered (at least {recovered}): {log:#?}"
    );
    (acked.len(), seen.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_while_the_cloud_is_down() {
    if !require_peer("mosquitto") {
        return;
    }
    let n = env_number("TOLLGATE_BRIDGE_CRASH_MESSAGES", 1000);
    let started = Instant::now();
    let (acked, distinct, duplicates) = crash_run(n, None).await;
    eprintln!(
        "bridge crash: {acked} acknowledged, {distinct} distinct arrived, {duplicates} duplicates, {:?}",
        started.elapsed()
    );
    assert_eq!(acked, n);
    assert!(distinct >= n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_at_a_random_moment() {
    if !require_peer("mosquitto") {
        return;
    }
    let n = env_number("TOLLGATE_BRIDGE_CRASH_MESSAGES", 1000);
    let runs = env_number("TOLLGATE_BRIDGE_CRASH_RUNS", 2);
    for run in 0..runs {
        let delay = Duration::from_millis(rand::thread_rng().gen_range(20..1500));
        let (acked, distinct, duplicates) = crash_run(n, Some(delay)).await;
        eprintln!(
            "bridge crash run {run}: killed after {delay:?}: {acked} acknowledged, {distinct} distinct arrived, {duplicates} duplicates"
        );
    }
}
