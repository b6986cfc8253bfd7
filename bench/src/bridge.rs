//! The bridge section (`--bridge`): 4 publishers → a gateway → its bridge over mutual
//! TLS → a Debian Mosquitto "cloud" → 1 subscriber at the cloud, QoS 1, once through
//! tollgate (its on-disk journal on, default group commit) and once through a Mosquitto
//! bridge (in memory, its best case). Rows: end-to-end msg/s with nothing lost (a run
//! that lost messages is a failure, never a figure), gateway and cloud CPU per message
//! from /proc, the gateway's fsyncs per second (`perf stat` on the syscall tracepoints:
//! tollgate publishes no sync counter), and paced latency through each bridge beside the
//! same publishers sending to the cloud directly. It must never touch a process it did
//! not start.

mod conf;
mod rows;
mod syncs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{Event, Incoming, QoS};
use tokio::sync::mpsc;

use crate::broker::{Broker, Flavor};
use crate::load::{self, Endpoint, LoadResult, LoadSpec};
use crate::measure::{Bench, Column};
use crate::progress;
use crate::report::Measured;
use crate::setup::{self, CertSet, Ports};
use rows::{push_latency_cells, push_latency_rows, push_throughput_cells, push_throughput_rows};
use syncs::SyncCount;

/// How long a gateway may take to forward its first message after it started.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// One gateway column to start: its label, broker software and executable.
pub struct GatewaySpec {
    pub label: String,
    pub flavor: Flavor,
    pub exe: PathBuf,
}

/// The section's processes: the cloud and both gateways.
struct Rig {
    cloud: Broker,
    cloud_at: Endpoint,
    gateways: [Column; 2],
}

/// One measured bridged run.
struct Sample {
    result: LoadResult,
    gateway_ticks: u64,
    /// Of `gateway_ticks`, those in the kernel (stime: system calls, fsync among them).
    gateway_system_ticks: u64,
    cloud_ticks: u64,
    /// fsync + fdatasync calls of the gateway during the run, or why not counted.
    syncs: Result<u64, String>,
}

/// Runs the section and appends its rows and notes to `bench`; a rig that does not start
/// fills every row with the reason.
pub async fn run(bench: &mut Bench, gateways: [GatewaySpec; 2], dir: &Path) {
    bench.notes.push(describe(bench));
    match Rig::start(bench, gateways, dir).await {
        Ok(mut rig) => {
            let runs = throughput(bench, &rig).await;
            push_throughput_rows(bench, runs);
            let lat = latency(bench, &rig).await;
            push_latency_rows(bench, lat);
            for g in rig.gateways.iter_mut() {
                if let Ok(b) = &mut g.broker {
                    b.stop();
                }
            }
            rig.cloud.stop();
        }
        Err(e) => {
            let e = format!("bridge section did not start: {e:#}");
            push_throughput_cells(bench, failed(&e));
            let [p50, p99] = failed(&e);
            push_latency_cells(bench, failed(&e), p50, p99);
        }
    }
}

/// `N` rows whose two cells both say why there is no figure.
fn failed<const N: usize>(why: &str) -> [Vec<Measured>; N] {
    std::array::from_fn(|_| vec![Err(why.to_string()), Err(why.to_string())])
}

/// The section's setup, for the notes.
fn describe(bench: &Bench) -> String {
    let a = &bench.args;
    format!(
        "bridge: {} publishers -> gateway ({}, anonymous) -> bridge over mTLS -> Debian Mosquitto cloud \
         (require_certificate, use_identity_as_username, ACL confining {} to {}#) -> 1 subscriber (mTLS); \
         QoS 1, {} B, {} messages per run, {} interleaved rounds (median; loss summed and reported as a failure); \
         tollgate: journal on disk, sync = batch (group commit, the default), MQTT 5 uplink; Mosquitto: \
         persistence false, its bridge in memory (MQTT 3.1.1 uplink); fsyncs = fsync + fdatasync calls of the \
         gateway process counted by `perf stat` on the syscall tracepoints; latency paced at {:.0} msg/s for \
         {} s, added = bridged percentile - direct percentile (publishers at the cloud over mTLS, run just before)",
        a.publishers,
        if a.plain { "plain TCP" } else { "TLS" },
        conf::GATEWAY_CN,
        conf::REMOTE_PREFIX,
        a.payload,
        a.bridge_messages,
        a.load_rounds.max(1),
        a.bridge_latency_rate,
        a.latency_secs,
    )
}

/// A rustls client config trusting `ca` and presenting `client` (mutual TLS).
fn mtls_client(ca: &Path, client: &CertSet) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(ca)?.as_slice()) {
        roots.add(c.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    let chain = rustls_pemfile::certs(&mut read(&client.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", client.cert.display()))?;
    let key = rustls_pemfile::private_key(&mut read(&client.key)?.as_slice())
        .with_context(|| format!("parsing {}", client.key.display()))?
        .with_context(|| format!("no private key in {}", client.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate and key do not match")?;
    Ok(Arc::new(cfg))
}

impl Rig {
    /// Certificates, the cloud, then both gateways, each proven to forward a message.
    async fn start(bench: &Bench, gateways: [GatewaySpec; 2], dir: &Path) -> anyhow::Result<Rig> {
        let json = bench.args.json;
        let pki = &bench.pki;
        let gw_cert = setup::make_client_cert(dir, pki, conf::GATEWAY_CN)?;
        let operator = setup::make_client_cert(dir, pki, conf::OPERATOR_CN)?;
        let cloud_at = Endpoint {
            port: setup::free_port()?,
            tls: Some(mtls_client(&pki.ca, &operator)?),
            ws: false,
            login: None,
        };
        let acl = dir.join("cloud.acl");
        setup::write(&acl, &conf::cloud_acl())?;
        let cloud_conf = dir.join("cloud.conf");
        setup::write(&cloud_conf, &conf::cloud_conf(pki, cloud_at.port, &acl))?;
        progress(
            json,
            &format!(
                "bridge: starting the cloud (Mosquitto, mTLS) with {}",
                cloud_conf.display()
            ),
        );
        let cloud = Broker::start(
            "cloud",
            Flavor::Mosquitto,
            &bench.args.mosquitto,
            &cloud_conf,
            Ports::single(cloud_at.port),
            dir,
        )
        .await?;
        let mut cols = Vec::new();
        for g in gateways {
            let broker = start_gateway(bench, &g, &gw_cert, &cloud_at, dir).await;
            if let Err(e) = &broker {
                eprintln!("warning: {} gateway: {e}", g.label);
            }
            cols.push(Column {
                label: g.label,
                broker,
            });
        }
        let gateways: [Column; 2] = match cols.try_into() {
            Ok(c) => c,
            Err(_) => anyhow::bail!("internal: expected two gateways"),
        };
        Ok(Rig {
            cloud,
            cloud_at,
            gateways,
        })
    }

    fn cloud(&self) -> Result<&Broker, String> {
        if self.cloud.alive() {
            Ok(&self.cloud)
        } else {
            Err(format!(
                "the cloud exited; see {}",
                self.cloud.log.display()
            ))
        }
    }
}

/// Writes gateway `g`'s configuration, starts it and waits until a message it accepted
/// arrives at the cloud.
async fn start_gateway(
    bench: &Bench,
    g: &GatewaySpec,
    gw_cert: &CertSet,
    cloud_at: &Endpoint,
    dir: &Path,
) -> Result<Broker, String> {
    let pki = &bench.pki;
    let ports = Ports::pick().map_err(|e| e.to_string())?;
    let name = format!("{}-gateway", g.label);
    let (path, text) = match g.flavor {
        Flavor::Tollgate => {
            let data = dir.join(format!("{name}-data"));
            std::fs::create_dir_all(&data)
                .map_err(|e| format!("creating {}: {e}", data.display()))?;
            let base = setup::tollgate_conf(&data, pki, ports, None, !bench.args.tollgate_defaults);
            (
                dir.join(format!("{name}.toml")),
                conf::tollgate_gateway_conf(
                    &base,
                    pki,
                    gw_cert,
                    cloud_at.port,
                    bench.args.bridge_inflight,
                ),
            )
        }
        Flavor::Mosquitto => (
            dir.join(format!("{name}.conf")),
            conf::mosquitto_gateway_conf(
                &setup::mosquitto_conf(pki, ports, None),
                pki,
                gw_cert,
                cloud_at.port,
            ),
        ),
    };
    setup::write(&path, &text).map_err(|e| e.to_string())?;
    progress(
        bench.args.json,
        &format!(
            "bridge: starting {name}: {} with {}",
            g.exe.display(),
            path.display()
        ),
    );
    let broker = Broker::start(&name, g.flavor, &g.exe, &path, ports, dir)
        .await
        .map_err(|e| e.to_string())?;
    let local = Endpoint {
        port: ports.plain,
        tls: None,
        ws: false,
        login: None,
    };
    let waited = wait_forwarding(&local, cloud_at, &g.label)
        .await
        .map_err(|e| format!("{e}; see {}", broker.log.display()))?;
    progress(
        bench.args.json,
        &format!(
            "bridge: {name} forwards to the cloud ({} ms after start)",
            waited.as_millis()
        ),
    );
    Ok(broker)
}

/// Publishes `bench/ready/<tag>` at the gateway every 250 ms until the cloud delivers
/// `site/gw1/bench/ready/<tag>` (the bridge is up and forwarding), within [`READY_LIMIT`].
async fn wait_forwarding(
    gateway: &Endpoint,
    cloud: &Endpoint,
    tag: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let local_topic = format!("{}ready/{tag}", conf::LOCAL_PREFIX);
    let remote_topic = format!("{}{local_topic}", conf::REMOTE_PREFIX);
    let (sub, mut sub_ev) = load::new_client(cloud, 64, format!("bench-ready-sub-{tag}"));
    load::wait_connack(&mut sub_ev, "cloud probe")
        .await
        .map_err(|e| e.to_string())?;
    load::subscribe(
        &sub,
        &mut sub_ev,
        &remote_topic,
        QoS::AtLeastOnce,
        "cloud probe".into(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let sub_task = tokio::spawn(async move {
        loop {
            match sub_ev.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = arrived_tx.send(p.topic);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let (publisher, mut pub_ev) = load::new_client(gateway, 64, format!("bench-ready-pub-{tag}"));
    let pub_task = tokio::spawn(async move {
        loop {
            if pub_ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let outcome = loop {
        let _ = publisher.try_publish(
            local_topic.clone(),
            QoS::AtLeastOnce,
            false,
            b"ready".to_vec(),
        );
        match tokio::time::timeout(Duration::from_millis(250), arrived.recv()).await {
            Ok(Some(t)) if t == remote_topic => break Ok(start.elapsed()),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break Err("the cloud probe stopped".to_string()),
        }
        if start.elapsed() > READY_LIMIT {
            break Err(format!(
                "nothing published on {local_topic} at the gateway reached the cloud as {remote_topic} within {} s",
                READY_LIMIT.as_secs()
            ));
        }
    };
    let _ = publisher.try_disconnect();
    let _ = sub.try_disconnect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    pub_task.abort();
    sub_task.abort();
    outcome
}

fn spec_through(bench: &Bench, rig: &Rig, gateway: &Broker, tag: String) -> LoadSpec {
    let a = &bench.args;
    LoadSpec {
        publish_to: Endpoint {
            port: if a.plain {
                gateway.ports.plain
            } else {
                gateway.ports.tls_rsa
            },
            tls: (!a.plain).then(|| bench.tls.clone()),
            ws: false,
            login: None,
        },
        subscribe_at: rig.cloud_at.clone(),
        publish_prefix: conf::LOCAL_PREFIX.into(),
        subscribe_filter: conf::CLOUD_FILTER.into(),
        publishers: a.publishers,
        subscribers: 1,
        qos: QoS::AtLeastOnce,
        payload: a.payload,
        per_publisher: (a.bridge_messages / a.publishers.max(1)).max(1),
        rate: None,
        // A slow bridge is a figure, not a failure: only a stall (5 s without any
        // message at the cloud) or 10 minutes end a run early.
        stall: Duration::from_secs(5),
        limit: Duration::from_secs(600),
        tag,
        persistent: false,
    }
}

/// One bridged run through gateway `i`, with both processes' CPU ticks and the gateway's
/// syncs over the measured window.
async fn bridged_once(rig: &Rig, i: usize, spec: &LoadSpec, dir: &Path) -> Result<Sample, String> {
    let gateway = rig.gateways[i].running()?;
    let cloud = rig.cloud()?;
    let counter = SyncCount::start(gateway.pid(), dir.join(format!("perf-{}.txt", spec.tag)));
    if counter.is_ok() {
        // perf needs a moment to attach; nothing is synced before the publishers start.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // gateway user, gateway system, cloud (user + system); at start, then at the end.
    let ticks = Arc::new(Mutex::new([0u64; 6]));
    let (t1, t2) = (ticks.clone(), ticks.clone());
    let sample = |t: &Mutex<[u64; 6]>, at: usize| {
        let mut t = t.lock().expect("invariant: lock not poisoned");
        let (user, system) = gateway.cpu_ticks_split().unwrap_or((0, 0));
        t[at] = user;
        t[at + 1] = system;
        t[at + 2] = cloud.cpu_ticks().unwrap_or(0);
    };
    let result = load::run(
        spec,
        || sample(&t1, 0),
        || {
            sample(&t2, 3);
            if let Ok(c) = &counter {
                c.stop();
            }
        },
    )
    .await
    .map_err(|e| e.to_string());
    let syncs = counter.and_then(SyncCount::finish);
    let result = result?;
    let [u0, s0, c0, u1, s1, c1] = *ticks.lock().expect("invariant: lock not poisoned");
    // Let the gateway drain acks and disconnects before the next run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Sample {
        result,
        gateway_ticks: (u1 + s1).saturating_sub(u0 + s0),
        gateway_system_ticks: s1.saturating_sub(s0),
        cloud_ticks: c1.saturating_sub(c0),
        syncs,
    })
}

/// `--load-rounds` interleaved bridged runs per gateway.
async fn throughput(bench: &mut Bench, rig: &Rig) -> [Result<Vec<Sample>, String>; 2] {
    let rounds = bench.args.load_rounds.max(1);
    let dir = rig
        .cloud
        .log
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut runs: [Result<Vec<Sample>, String>; 2] = [Ok(Vec::new()), Ok(Vec::new())];
    for round in 0..rounds {
        for (i, slot) in runs.iter_mut().enumerate() {
            if slot.is_err() {
                continue;
            }
            let gateway = match rig.gateways[i].running() {
                Ok(g) => g,
                Err(e) => {
                    *slot = Err(e);
                    continue;
                }
            };
            progress(
                bench.args.json,
                &format!(
                    "bridge: {} gateway, QoS 1, {} messages (round {}/{rounds})",
                    rig.gateways[i].label,
                    bench.args.bridge_messages,
                    round + 1
                ),
            );
            let spec = spec_through(bench, rig, gateway, format!("br-{i}-r{round}"));
            match bridged_once(rig, i, &spec, &dir).await {
                Ok(s) => {
                    note_run(bench, &rig.gateways[i].label, &s.result);
                    if let Ok(v) = slot {
                        v.push(s);
                    }
                }
                Err(e) => *slot = Err(e),
            }
        }
    }
    runs
}

/// Notes for a run with duplicates, a time-out or client errors.
fn note_run(bench: &mut Bench, label: &str, r: &LoadResult) {
    if r.duplicates > 0 || r.timed_out || r.lost > 0 {
        bench.notes.push(format!(
            "bridge {label}: {} of {} received, {} duplicates{}",
            r.received,
            r.expected,
            r.duplicates,
            if r.timed_out {
                ", run hit the time limit"
            } else {
                ""
            },
        ));
    }
    if !r.errors.is_empty() {
        bench.notes.push(format!(
            "bridge {label}: client errors: {}",
            r.errors.join("; ")
        ));
    }
}

/// Per gateway: the paced run through it and, just before, the same load sent directly
/// to the cloud.
type LatencyRuns = [Result<(LoadResult, LoadResult), String>; 2];

async fn latency(bench: &mut Bench, rig: &Rig) -> LatencyRuns {
    let a = bench.args.clone();
    let total = (a.bridge_latency_rate * a.latency_secs) as usize;
    let mut out: LatencyRuns = [Err(String::new()), Err(String::new())];
    for (i, slot) in out.iter_mut().enumerate() {
        let label = rig.gateways[i].label.clone();
        progress(
            a.json,
            &format!(
                "bridge: {label} gateway, QoS 1 latency at {:.0} msg/s for {} s, and direct to the cloud",
                a.bridge_latency_rate, a.latency_secs
            ),
        );
        *slot = async {
            let gateway = rig.gateways[i].running()?;
            let mut through = spec_through(bench, rig, gateway, format!("brlat-{i}"));
            through.per_publisher = (total / a.publishers.max(1)).max(1);
            through.rate = Some(a.bridge_latency_rate);
            let mut direct = through.clone();
            direct.tag = format!("brdirect-{i}");
            direct.publish_to = rig.cloud_at.clone();
            direct.publish_prefix = conf::DIRECT_PREFIX.into();
            let d = load::run(&direct, || {}, || {})
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t = load::run(&through, || {}, || {})
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok((t, d))
        }
        .await;
    }
    out
}
