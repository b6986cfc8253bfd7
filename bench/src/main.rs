//! `tollgate-bench`: starts tollgate and Debian's Mosquitto side by side on
//! loopback with equivalent configs (same certificates, same password and
//! ACL files), drives both with the same load generator and prints
//! throughput with zero loss, broker CPU per message, latency, connect rates
//! and memory per idle TLS connection, with ratios against the targets of
//! issues 2 and 3. It is a measuring tool, not a test: it must never judge
//! pass/fail by exit code, and must never touch processes it did not start.

mod broker;
mod conn;
mod load;
mod report;
mod setup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::QoS;
use serde_json::json;

use broker::{Broker, Flavor};
use conn::{Login, Target};
use load::{LoadResult, LoadSpec};
use report::{cell, cell_note, Measured, Row};
use setup::{AuthFiles, Pki, Ports, Scratch};

/// Side-by-side benchmark of tollgate against Mosquitto on loopback.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// tollgate executable (default: `tollgate` next to this binary).
    #[arg(long)]
    tollgate: Option<PathBuf>,
    /// Mosquitto executable.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Self-test: run a second Mosquitto in the tollgate column (ratios ≈ 1.0).
    #[arg(long)]
    baseline_only: bool,
    /// Plain TCP for the message load instead of TLS.
    #[arg(long)]
    plain: bool,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscriber connections (each subscribes to every message).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// QoS levels to measure throughput for, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,0")]
    qos: Vec<u8>,
    /// Payload size in bytes (at least 14: the time/sequence stamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per throughput run (all publishers together).
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Paced QoS 1 rate (msg/s, all publishers) for the latency run.
    #[arg(long, default_value_t = 2_000.0)]
    latency_rate: f64,
    /// Duration of the latency run in seconds.
    #[arg(long, default_value_t = 3.0)]
    latency_secs: f64,
    /// Connects per connect-rate row.
    #[arg(long, default_value_t = 1_000)]
    connects: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 16)]
    connect_concurrency: usize,
    /// Interleaved rounds per throughput row (the median is shown; loss is summed).
    #[arg(long, default_value_t = 3)]
    load_rounds: usize,
    /// Interleaved rounds per connect-rate row (the median is shown).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also measure TLS connects with an ECDSA P-256 certificate.
    #[arg(long)]
    ecdsa: bool,
    /// Idle TLS connections for the memory row.
    #[arg(long, default_value_t = 2_000)]
    idle_conns: usize,
    /// Passwords + ACLs on both brokers (same mosquitto_passwd and acl files),
    /// plus the power-cut reconnect storm.
    #[arg(long)]
    auth: bool,
    /// Devices in the power-cut storm (--auth).
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// Device handshakes in flight during the storm.
    #[arg(long, default_value_t = 100)]
    storm_concurrency: usize,
    /// Extra non-matching ACL rules for the bench user, ahead of its grant (--auth).
    #[arg(long, default_value_t = 10)]
    acl_rules: usize,
    /// Skip sections: memory, connect, throughput, latency, storm.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Give tollgate only the fixed-schema keys (its default session queue and
    /// inflight bounds) instead of bounds raised like Mosquitto's.
    #[arg(long)]
    tollgate_defaults: bool,
    /// Seconds to watch each broker's RSS after the throughput burst (RSS after a
    /// burst / idle RSS).
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Source commit of the tollgate under test, recorded in the output (default:
    /// `git rev-parse --short HEAD` in the current directory).
    #[arg(long)]
    commit: Option<String>,
    /// Render a `--json` result file as the README's Markdown tables and exit
    /// (measures nothing).
    #[arg(long, value_name = "FILE.json")]
    markdown: Option<PathBuf>,
    /// Keep the scratch directory (configs, certs, broker logs).
    #[arg(long)]
    keep: bool,
}

/// Per column of a connect row: rates, CPU µs per connect and a failure
/// note over the rounds, or why the column has no figure.
type ConnectAcc = Result<(Vec<f64>, Vec<f64>, Option<String>), String>;

/// One column: a broker under test, or why it is not running.
struct Column {
    label: String,
    broker: Result<Broker, String>,
}

impl Column {
    fn running(&self) -> Result<&Broker, String> {
        match &self.broker {
            Ok(b) if b.alive() => Ok(b),
            Ok(b) => Err(format!("{} exited; see {}", b.name, b.log.display())),
            Err(e) => Err(e.clone()),
        }
    }
}

fn progress(json: bool, msg: &str) {
    if !json {
        eprintln!("  .. {msg}");
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn tls_client(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(c.with_context(|| format!("parsing CA {}", ca.display()))?)
            .context("adding CA to the trust store")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connect is a full handshake: no session resumption.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

fn version_of(exe: &Path, arg: &str) -> String {
    Command::new(exe)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

struct Bench {
    args: Args,
    pki: Pki,
    tls: Arc<rustls::ClientConfig>,
    tck: u64,
    cols: [Column; 2],
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Each column's RSS in KiB before any load (the idle figure bursts are compared to).
    idle_rss: [Option<u64>; 2],
}

impl Bench {
    fn skip(&self, section: &str) -> bool {
        self.args.skip.iter().any(|s| s == section)
    }

    fn login(&self) -> Option<Login> {
        self.args.auth.then(|| Login {
            user: setup::BENCH_USER.into(),
            pass: setup::BENCH_PASS.into(),
        })
    }

    fn target(&self, port: u16, tls: bool) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: tls.then(|| tokio_rustls::TlsConnector::from(self.tls.clone())),
        }
    }

    fn push(
        &mut self,
        metric: impl Into<String>,
        unit: &'static str,
        decimals: usize,
        a: Measured,
        b: Measured,
        target: report::Target,
    ) {
        self.rows.push(Row {
            metric: metric.into(),
            unit,
            decimals,
            a,
            b,
            target,
        });
    }

    async fn memory(&mut self) {
        let n = self.args.idle_conns;
        let mut idle = Vec::new();
        let mut per_conn = Vec::new();
        for i in 0..2 {
            progress(
                self.args.json,
                &format!(
                    "{}: idle RSS and {n} idle TLS connections",
                    self.cols[i].label
                ),
            );
            let login = self.login();
            let res: Result<(f64, f64), String> = async {
                let b = self.cols[i].running()?;
                let before = b.rss_kib().map_err(|e| e.to_string())?;
                self.idle_rss[i] = Some(before);
                let t = self.target(b.ports.tls_rsa, true);
                let (batch, streams) = conn::batch(
                    &t,
                    n,
                    32,
                    "idle",
                    |_| login.clone(),
                    true,
                    Duration::from_secs(120),
                )
                .await
                .map_err(|e| e.to_string())?;
                if batch.ok < n {
                    return Err(format!(
                        "only {} of {n} idle connections opened: {}",
                        batch.ok,
                        batch.first_error.unwrap_or_default()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let b = self.cols[i].running()?;
                let after = b.rss_kib().map_err(|e| e.to_string())?;
                for s in streams {
                    conn::close(s).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok((before as f64, (after as f64 - before as f64) / n as f64))
            }
            .await;
            match res {
                Ok((b, p)) => {
                    idle.push(cell(b / 1024.0));
                    per_conn.push(cell(p));
                }
                Err(e) => {
                    idle.push(Err(e.clone()));
                    per_conn.push(Err(e));
                }
            }
        }
        let [ia, ib]: [Measured; 2] = idle.try_into().expect("invariant: two columns");
        let [pa, pb]: [Measured; 2] = per_conn.try_into().expect("invariant: two columns");
        self.push("idle RSS", "MiB", 1, ia, ib, report::Target::None);
        self.push(
            format!("RSS per idle TLS connection @{n}"),
            "KiB",
            1,
            pa,
            pb,
            report::Target::AtMost(12.0),
        );
    }

    /// Connect-rate row (median of `--rounds` interleaved rounds) and, when
    /// `cpu_row` is set, a broker-CPU-per-connect row.
    async fn connect_row(
        &mut self,
        label: &str,
        which: fn(&Ports) -> u16,
        tls: bool,
        target: report::Target,
        cpu_row: bool,
    ) {
        let rounds = self.args.rounds.max(1);
        let mut failures = Vec::new();
        // Per column: Ok(rates, cpu µs per connect, failure note) or the error.
        let mut acc: [ConnectAcc; 2] = [Ok(Default::default()), Ok(Default::default())];
        for round in 0..rounds {
            for (i, slot) in acc.iter_mut().enumerate() {
                let Ok((rates, cpus, note)) = slot else {
                    continue;
                };
                progress(
                    self.args.json,
                    &format!(
                        "{}: {} {label} (round {}/{rounds})",
                        self.cols[i].label,
                        self.args.connects,
                        round + 1
                    ),
                );
                let login = self.login();
                let res: Result<(conn::Batch, u64), String> = async {
                    let b = self.cols[i].running()?;
                    let t = self.target(which(&b.ports), tls);
                    let before = b.cpu_ticks().map_err(|e| e.to_string())?;
                    let (batch, _) = conn::batch(
                        &t,
                        self.args.connects,
                        self.args.connect_concurrency,
                        "rate",
                        |_| login.clone(),
                        false,
                        Duration::from_secs(120),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    // Let the broker finish the last disconnects before sampling.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let after = b.cpu_ticks().map_err(|e| e.to_string())?;
                    Ok((batch, after.saturating_sub(before)))
                }
                .await;
                match res {
                    Ok((batch, ticks)) => {
                        rates.push(batch.rate());
                        cpus.push(ticks as f64 * 1e6 / self.tck as f64 / batch.ok.max(1) as f64);
                        if batch.failed > 0 && note.is_none() {
                            *note = Some(format!("{} FAILED", batch.failed));
                            failures.push(format!(
                                "{} {label}: {} of {} connects failed, first: {}",
                                self.cols[i].label,
                                batch.failed,
                                self.args.connects,
                                batch.first_error.unwrap_or_default()
                            ));
                        }
                    }
                    Err(e) => *slot = Err(e),
                }
            }
        }
        self.notes.extend(failures);
        let [a, b] = acc;
        let split = |m: ConnectAcc| -> (Measured, Measured) {
            match m {
                Ok((rates, cpus, note)) => {
                    let mk = |v: f64| match &note {
                        Some(n) => cell_note(v, n.clone()),
                        None => cell(v),
                    };
                    (mk(median(rates)), mk(median(cpus)))
                }
                Err(e) => (Err(e.clone()), Err(e)),
            }
        };
        let (ra, ca) = split(a);
        let (rb, cb) = split(b);
        self.push(label, "conn/s", 0, ra, rb, target);
        if cpu_row {
            self.push(
                format!("  broker CPU per {label}"),
                "µs",
                0,
                ca,
                cb,
                report::Target::None,
            );
        }
    }

    fn load_spec(&self, port: u16, qos: QoS, tag: String) -> LoadSpec {
        LoadSpec {
            port,
            tls: (!self.args.plain).then(|| self.tls.clone()),
            login: self
                .args
                .auth
                .then(|| (setup::BENCH_USER.to_string(), setup::BENCH_PASS.to_string())),
            publishers: self.args.publishers,
            subscribers: self.args.subscribers,
            qos,
            payload: self.args.payload,
            per_publisher: (self.args.messages / self.args.publishers.max(1)).max(1),
            rate: None,
            stall: Duration::from_secs(3),
            limit: Duration::from_secs(90),
            tag,
        }
    }

    /// One load run against column `i`, with the broker's CPU ticks over the
    /// measured window.
    async fn load_once(&mut self, i: usize, spec: &LoadSpec) -> Result<(LoadResult, u64), String> {
        let b = self.cols[i].running()?;
        let ticks = Arc::new(Mutex::new((0u64, 0u64)));
        let (t1, t2) = (ticks.clone(), ticks.clone());
        let res = load::run(
            spec,
            || {
                if let Ok(t) = b.cpu_ticks() {
                    t1.lock().expect("invariant: lock not poisoned").0 = t;
                }
            },
            || {
                if let Ok(t) = b.cpu_ticks() {
                    t2.lock().expect("invariant: lock not poisoned").1 = t;
                }
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let (start, end) = *ticks.lock().expect("invariant: lock not poisoned");
        // Let the broker drain acks and disconnects before the next run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok((res, end.saturating_sub(start)))
    }

    async fn throughput(&mut self, qos_level: u8) {
        let qos = match qos_level {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let transport = if self.args.plain { "plain" } else { "TLS" };
        let rounds = self.args.load_rounds.max(1);
        // Per column: every round's result and broker CPU ticks, or why not.
        let mut runs: [Result<Vec<(LoadResult, u64)>, String>; 2] =
            [Ok(Vec::new()), Ok(Vec::new())];
        let mut ports = [0u16; 2];
        for round in 0..rounds {
            for i in 0..2 {
                if runs[i].is_err() {
                    continue;
                }
                progress(
                    self.args.json,
                    &format!(
                        "{}: QoS {qos_level} {transport} throughput, {} messages (round {}/{rounds})",
                        self.cols[i].label,
                        self.args.messages,
                        round + 1
                    ),
                );
                let port = match self.cols[i].running() {
                    Ok(b) if self.args.plain => b.ports.plain,
                    Ok(b) => b.ports.tls_rsa,
                    Err(e) => {
                        runs[i] = Err(e);
                        continue;
                    }
                };
                ports[i] = port;
                let spec = self.load_spec(port, qos, format!("q{qos_level}-{i}-r{round}"));
                match self.load_once(i, &spec).await {
                    Ok(r) => {
                        if let Ok(v) = &mut runs[i] {
                            v.push(r);
                        }
                    }
                    Err(e) => runs[i] = Err(e),
                }
            }
        }
        let mut rate = Vec::new();
        let mut cpu = Vec::new();
        let mut lost = Vec::new();
        let mut lat = Vec::new();
        for (i, col_runs) in runs.into_iter().enumerate() {
            let col_runs = col_runs.and_then(|v| {
                if v.is_empty() {
                    Err("no run completed".to_string())
                } else {
                    Ok(v)
                }
            });
            let col_runs = match col_runs {
                Ok(v) => v,
                Err(e) => {
                    for v in [&mut rate, &mut cpu, &mut lost, &mut lat] {
                        v.push(Err(e.clone()));
                    }
                    continue;
                }
            };
            let label = self.cols[i].label.clone();
            for (r, _) in &col_runs {
                if r.duplicates > 0 || r.timed_out {
                    self.notes.push(format!(
                        "{label} QoS {qos_level}: {} of {} expected received, {} duplicates{}; slowest latency {:.1} ms",
                        r.received,
                        r.expected,
                        r.duplicates,
                        if r.timed_out { ", run hit the time limit" } else { "" },
                        r.latency_max_us / 1000.0
                    ));
                }
                if !r.errors.is_empty() {
                    self.notes.push(format!(
                        "{label} QoS {qos_level}: client errors: {}",
                        r.errors.join("; ")
                    ));
                }
            }
            let per_msg = |(r, ticks): &(LoadResult, u64)| {
                *ticks as f64 * 1e6 / self.tck as f64 / (r.received.max(1)) as f64
            };
            cpu.push(cell(median(col_runs.iter().map(per_msg).collect())));
            let total_lost: u64 = col_runs.iter().map(|(r, _)| r.lost).sum();
            lost.push(cell(total_lost as f64));
            lat.push(cell(median(
                col_runs
                    .iter()
                    .map(|(r, _)| r.latency_p50_us / 1000.0)
                    .collect(),
            )));
            let unpaced = median(col_runs.iter().map(|(r, _)| r.rate()).collect());
            if total_lost == 0 {
                rate.push(cell(unpaced));
                continue;
            }
            // Loss: report it; for QoS 0 look for a paced rate without loss.
            let mut found = None;
            if qos == QoS::AtMostOnce {
                for factor in [0.8, 0.6, 0.4] {
                    let mut paced = self.load_spec(
                        ports[i],
                        qos,
                        format!("q{qos_level}-{i}-p{}", (factor * 10.0) as u32),
                    );
                    paced.rate = Some(unpaced * factor);
                    progress(
                        self.args.json,
                        &format!(
                            "{label}: loss {total_lost}; retry paced at {:.0} msg/s",
                            unpaced * factor
                        ),
                    );
                    if let Ok((pr, _)) = self.load_once(i, &paced).await {
                        if pr.lost == 0 {
                            found = Some(pr.rate());
                            break;
                        }
                    }
                }
            }
            rate.push(match found {
                Some(x) => cell_note(
                    x,
                    format!("paced; unpaced LOSS {total_lost} at {unpaced:.0}/s"),
                ),
                None => cell_note(unpaced, format!("LOSS {total_lost}")),
            });
        }
        let two =
            |v: Vec<Measured>| -> [Measured; 2] { v.try_into().expect("invariant: two columns") };
        let [ra, rb] = two(rate);
        let [ca, cb] = two(cpu);
        let [la, lb] = two(lost);
        let [pa, pb] = two(lat);
        let auth = if self.args.auth { ", auth+ACL" } else { "" };
        self.push(
            format!("QoS {qos_level} {transport}{auth} throughput, zero loss"),
            "msg/s",
            0,
            ra,
            rb,
            report::Target::RatioAtLeast(2.0),
        );
        self.push(
            format!("  QoS {qos_level} messages lost"),
            "",
            0,
            la,
            lb,
            report::Target::None,
        );
        self.push(
            format!("  QoS {qos_level} broker CPU per message"),
            "µs",
            1,
            ca,
            cb,
            if qos_level == 1 && !self.args.plain {
                report::Target::AtMost(15.0)
            } else {
                report::Target::None
            },
        );
        self.push(
            format!("  QoS {qos_level} latency p50 at saturation"),
            "ms",
            1,
            pa,
            pb,
            report::Target::None,
        );
    }

    /// Before a burst: each column's idle RSS, unless the memory section measured it.
    fn sample_idle_rss(&mut self) {
        for i in 0..2 {
            if self.idle_rss[i].is_none() {
                self.idle_rss[i] = self.cols[i].running().ok().and_then(|b| b.rss_kib().ok());
            }
        }
    }

    /// After the throughput burst (its connections closed): sample both brokers' RSS every
    /// second for `--settle-secs` and report the last sample against the idle RSS.
    async fn settle(&mut self) {
        let secs = self.args.settle_secs;
        if secs == 0 {
            return;
        }
        progress(
            self.args.json,
            &format!("both: RSS every second for {secs} s after the burst"),
        );
        let mut first: [Option<u64>; 2] = [None, None];
        let mut last: [Result<u64, String>; 2] = [
            Err("not sampled".to_string()),
            Err("not sampled".to_string()),
        ];
        // The first second at which RSS was within 2x the idle figure.
        let mut within: [Option<u64>; 2] = [None, None];
        for second in 0..=secs {
            if second > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for i in 0..2 {
                let sample = self.cols[i]
                    .running()
                    .and_then(|b| b.rss_kib().map_err(|e| e.to_string()));
                if let Ok(kib) = sample {
                    first[i].get_or_insert(kib);
                    if within[i].is_none() && self.idle_rss[i].is_some_and(|idle| kib <= 2 * idle) {
                        within[i] = Some(second);
                    }
                }
                last[i] = sample;
            }
        }
        let idle = self.idle_rss;
        let after: Vec<Measured> = (0..2)
            .map(|i| match first[i] {
                Some(kib) => cell(kib as f64 / 1024.0),
                None => Err(last[i].clone().err().unwrap_or_default()),
            })
            .collect();
        let ratio: Vec<Measured> = (0..2)
            .map(|i| match (&last[i], idle[i]) {
                (Ok(kib), Some(idle)) if idle > 0 => {
                    let r = *kib as f64 / idle as f64;
                    match within[i] {
                        Some(s) => cell_note(r, format!("<= 2x after {s} s")),
                        None => cell_note(r, "never <= 2x"),
                    }
                }
                (Err(e), _) => Err(e.clone()),
                _ => Err("idle RSS not measured".to_string()),
            })
            .collect();
        let [aa, ab]: [Measured; 2] = after.try_into().expect("invariant: two columns");
        let [ra, rb]: [Measured; 2] = ratio.try_into().expect("invariant: two columns");
        self.push(
            "RSS right after the throughput burst",
            "MiB",
            1,
            aa,
            ab,
            report::Target::None,
        );
        self.push(
            format!("RSS {secs} s after the burst / idle RSS"),
            "x",
            2,
            ra,
            rb,
            report::Target::AtMost(2.0),
        );
    }

    async fn latency(&mut self) {
        let transport = if self.args.plain { "plain" } else { "TLS" };
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let total = (self.args.latency_rate * self.args.latency_secs) as usize;
        for i in 0..2 {
            progress(
                self.args.json,
                &format!(
                    "{}: QoS 1 latency at {:.0} msg/s for {} s",
                    self.cols[i].label, self.args.latency_rate, self.args.latency_secs
                ),
            );
            let res: Result<LoadResult, String> = async {
                let b = self.cols[i].running()?;
                let port = if self.args.plain {
                    b.ports.plain
                } else {
                    b.ports.tls_rsa
                };
                let mut spec = self.load_spec(port, QoS::AtLeastOnce, format!("lat-{i}"));
                spec.per_publisher = (total / self.args.publishers.max(1)).max(1);
                spec.rate = Some(self.args.latency_rate);
                self.load_once(i, &spec).await.map(|(r, _)| r)
            }
            .await;
            match res {
                Ok(r) => {
                    let note = (r.lost > 0).then(|| format!("LOSS {}", r.lost));
                    p50.push(Ok(report::Cell {
                        value: r.latency_p50_us / 1000.0,
                        note: note.clone(),
                    }));
                    p99.push(Ok(report::Cell {
                        value: r.latency_p99_us / 1000.0,
                        note,
                    }));
                }
                Err(e) => {
                    p50.push(Err(e.clone()));
                    p99.push(Err(e));
                }
            }
        }
        let [a50, b50]: [Measured; 2] = p50.try_into().expect("invariant: two columns");
        let [a99, b99]: [Measured; 2] = p99.try_into().expect("invariant: two columns");
        let r = self.args.latency_rate;
        self.push(
            format!("QoS 1 {transport} latency p50 @{r:.0} msg/s"),
            "ms",
            2,
            a50,
            b50,
            report::Target::None,
        );
        self.push(
            format!("QoS 1 {transport} latency p99 @{r:.0} msg/s"),
            "ms",
            2,
            a99,
            b99,
            report::Target::None,
        );
    }

    /// The power-cut storm with the server certificate behind `port` (`key` names it
    /// in the rows: "RSA-2048" or "ECDSA P-256").
    async fn storm(&mut self, key: &str, port: fn(&setup::Ports) -> u16) {
        let n = self.args.devices;
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut cpu = Vec::new();
        for i in 0..2 {
            progress(
                self.args.json,
                &format!(
                    "{}: power cut, {n} devices with passwords",
                    self.cols[i].label
                ),
            );
            let res: Result<(Measured, Measured, Measured), String> = async {
                let b = self.cols[i].running()?;
                let t = self.target(port(&b.ports), true);
                let login = |d: usize| {
                    Some(Login {
                        user: setup::device_user(d),
                        pass: setup::device_pass(d),
                    })
                };
                let limit = Duration::from_secs(120);
                // First boot: every device connects once and stays connected.
                let (first, streams) = conn::batch(
                    &t,
                    n,
                    self.args.storm_concurrency,
                    "dev",
                    login,
                    true,
                    limit,
                )
                .await
                .map_err(|e| e.to_string())?;
                // Power cut: every connection drops without DISCONNECT.
                drop(streams);
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let b = self.cols[i].running()?;
                let before = b.cpu_ticks().map_err(|e| e.to_string())?;
                let (again, streams) = conn::batch(
                    &t,
                    n,
                    self.args.storm_concurrency,
                    "dev",
                    login,
                    true,
                    limit,
                )
                .await
                .map_err(|e| e.to_string())?;
                let after = b.cpu_ticks().map_err(|e| e.to_string())?;
                let cpu_us = after.saturating_sub(before) as f64 * 1e6
                    / self.tck as f64
                    / again.ok.max(1) as f64;
                for s in streams {
                    conn::close(s).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mk = |b: conn::Batch| {
                    if b.failed > 0 {
                        cell_note(
                            b.rate(),
                            format!(
                                "{} FAILED, first: {}",
                                b.failed,
                                b.first_error.unwrap_or_default()
                            ),
                        )
                    } else {
                        cell(b.rate())
                    }
                };
                Ok((mk(first), mk(again), cell(cpu_us)))
            }
            .await;
            match res {
                Ok((c, w, u)) => {
                    cold.push(c);
                    warm.push(w);
                    cpu.push(u);
                }
                Err(e) => {
                    cold.push(Err(e.clone()));
                    warm.push(Err(e.clone()));
                    cpu.push(Err(e));
                }
            }
        }
        let [ca, cb]: [Measured; 2] = cold.try_into().expect("invariant: two columns");
        let [wa, wb]: [Measured; 2] = warm.try_into().expect("invariant: two columns");
        let [ua, ub]: [Measured; 2] = cpu.try_into().expect("invariant: two columns");
        self.push(
            format!("TLS {key}+password first connect, {n} devices"),
            "conn/s",
            0,
            ca,
            cb,
            report::Target::None,
        );
        self.push(
            format!("TLS {key}+password power-cut reconnect, {n} devices"),
            "conn/s",
            0,
            wa,
            wb,
            report::Target::RatioAtLeast(2.0),
        );
        self.push(
            format!("  broker CPU per power-cut reconnect, {key}"),
            "µs",
            0,
            ua,
            ub,
            report::Target::None,
        );
    }

    /// With --auth: a wrong password must be refused, or the auth figures of
    /// that broker compare nothing.
    async fn auth_sanity(&mut self) {
        for i in 0..2 {
            let Ok(b) = self.cols[i].running() else {
                continue;
            };
            let t = self.target(b.ports.tls_rsa, true);
            let wrong = Login {
                user: setup::PROBE_USER.into(),
                pass: "definitely-wrong".into(),
            };
            let verdict = match conn::open(&t, "bench-wrong-pw", 60, Some(&wrong)).await {
                Ok(s) => {
                    conn::close(s).await;
                    Some("ACCEPTED a wrong password: authentication is not enforced, its --auth figures are not comparable")
                }
                Err(conn::ConnError::Refused { .. }) => None,
                Err(_) => Some("closed the connection on a wrong password without CONNACK"),
            };
            if let Some(v) = verdict {
                self.notes.push(format!("{} {v}", self.cols[i].label));
            }
        }
    }
}

/// Median of a non-empty sample (0 for an empty one).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `git rev-parse --short HEAD` in the current directory, or "unknown".
fn source_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn default_tollgate() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tollgate")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/tollgate"))
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(file) = &args.markdown {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not tollgate-bench --json output", file.display()))?;
        print!("{}", report::markdown(&value)?);
        return Ok(());
    }
    // Shown as the cargo command documented in README.md (Performance).
    let command_line = std::iter::once("cargo run --release -p tollgate-bench --".to_string())
        .chain(std::env::args().skip(1).map(|a| shell_quote(&a)))
        .collect::<Vec<_>>()
        .join(" ");
    if args.payload < load::STAMP_LEN {
        bail!(
            "--payload must be at least {} bytes (time and sequence stamp)",
            load::STAMP_LEN
        );
    }
    if args.publishers == 0 || args.subscribers == 0 || args.publishers > usize::from(u16::MAX) {
        bail!("--publishers and --subscribers must be at least 1 (publishers at most 65535)");
    }
    if let Some(q) = args.qos.iter().find(|&&q| q > 2) {
        bail!("--qos {q}: only 0, 1 and 2 exist");
    }
    let need_fds = (args.idle_conns.max(args.devices) + 200) as u64;
    if let Some(limit) = open_files_limit() {
        if limit < need_fds && !args.skip.iter().any(|s| s == "memory") {
            bail!(
                "open-files limit is {limit}, the idle-connection test needs about {need_fds}: \
                 run `ulimit -n {}` first (hard limit: `ulimit -Hn`), or lower --idle-conns",
                need_fds.max(8192)
            );
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wall = Instant::now();
    let scratch = Scratch::new(args.keep)?;
    let dir = scratch.dir.clone();
    progress(args.json, &format!("scratch directory {}", dir.display()));
    let pki = setup::make_pki(&dir)?;
    let auth: Option<AuthFiles> = if args.auth {
        Some(setup::make_auth(&dir, args.devices, args.acl_rules)?)
    } else {
        None
    };
    let tollgate_exe = args.tollgate.clone().unwrap_or_else(default_tollgate);
    let a_flavor = if args.baseline_only {
        Flavor::Mosquitto
    } else {
        Flavor::Tollgate
    };
    let a_label = if args.baseline_only {
        "mosquitto-A"
    } else {
        "tollgate"
    };
    let a_exe = if args.baseline_only {
        args.mosquitto.clone()
    } else {
        tollgate_exe.clone()
    };

    let mut cols = Vec::new();
    let mut notes = Vec::new();
    for (label, flavor, exe) in [
        (a_label, a_flavor, a_exe.clone()),
        ("mosquitto", Flavor::Mosquitto, args.mosquitto.clone()),
    ] {
        let ports = Ports::pick()?;
        let (conf, fallback) = match flavor {
            Flavor::Mosquitto => {
                let p = dir.join(format!("{label}.conf"));
                setup::write(&p, &setup::mosquitto_conf(&pki, ports, auth.as_ref()))?;
                (p, None)
            }
            Flavor::Tollgate => {
                let data = dir.join(format!("{label}-data"));
                std::fs::create_dir_all(&data)
                    .with_context(|| format!("creating {}", data.display()))?;
                let p = dir.join(format!("{label}.toml"));
                setup::write(
                    &p,
                    &setup::tollgate_conf(
                        &data,
                        &pki,
                        ports,
                        auth.as_ref(),
                        !args.tollgate_defaults,
                    ),
                )?;
                let minimal = dir.join(format!("{label}-fixed-keys.toml"));
                setup::write(
                    &minimal,
                    &setup::tollgate_conf(&data, &pki, ports, auth.as_ref(), false),
                )?;
                (p, Some(minimal))
            }
        };
        progress(
            args.json,
            &format!(
                "starting {label}: {} with {}",
                exe.display(),
                conf.display()
            ),
        );
        let mut broker = Broker::start(label, flavor, &exe, &conf, ports, &dir).await;
        if let (Err(broker::BrokerError::Exited { tail, .. }), Some(minimal)) = (&broker, &fallback)
        {
            if tail.contains("max_offline") || tail.contains("max_inflight") {
                progress(
                    args.json,
                    &format!(
                        "{label} does not know the queue-bound keys; retrying with {}",
                        minimal.display()
                    ),
                );
                notes.push(format!(
                    "{label} refused max_offline_messages/max_offline_bytes/max_inflight: ran with its default session queue bounds"
                ));
                broker = Broker::start(label, flavor, &exe, minimal, ports, &dir).await;
            }
        }
        let broker = broker.map_err(|e| e.to_string());
        if let Err(e) = &broker {
            eprintln!("warning: {e}");
        }
        cols.push(Column {
            label: label.to_string(),
            broker,
        });
    }
    let cols: [Column; 2] = match cols.try_into() {
        Ok(c) => c,
        Err(_) => bail!("internal: expected two columns"),
    };
    if cols[1].broker.is_err() {
        bail!("Mosquitto, the reference, did not start; nothing to compare against");
    }
    let tls = tls_client(&pki.ca)?;
    let mut bench = Bench {
        args: args.clone(),
        pki,
        tls,
        tck: broker::clk_tck(),
        cols,
        rows: Vec::new(),
        notes,
        idle_rss: [None, None],
    };

    if !bench.skip("memory") {
        bench.memory().await;
    }
    if !bench.skip("connect") {
        let auth = if args.auth { " + password" } else { "" };
        bench
            .connect_row(
                &format!("connect plain{auth}"),
                |p| p.plain,
                false,
                report::Target::None,
                false,
            )
            .await;
        bench
            .connect_row(
                &format!("connect TLS RSA-2048{auth}"),
                |p| p.tls_rsa,
                true,
                report::Target::RatioAtLeast(2.0),
                true,
            )
            .await;
        if args.ecdsa {
            bench
                .connect_row(
                    &format!("connect TLS ECDSA P-256{auth}"),
                    |p| p.tls_ec,
                    true,
                    report::Target::None,
                    true,
                )
                .await;
        }
    }
    if !bench.skip("throughput") {
        bench.sample_idle_rss();
        for q in args.qos.clone() {
            bench.throughput(q).await;
        }
        bench.settle().await;
    }
    if !bench.skip("latency") {
        bench.latency().await;
    }
    if args.auth && !bench.skip("storm") {
        bench.storm("RSA-2048", |p| p.tls_rsa).await;
        if args.ecdsa {
            bench.storm("ECDSA P-256", |p| p.tls_ec).await;
        }
    }
    if args.auth {
        bench.auth_sanity().await;
    }
    for c in bench.cols.iter_mut() {
        if let Ok(b) = &mut c.broker {
            b.stop();
        }
    }
    if args.auth && a_flavor == Flavor::Tollgate {
        if let Ok(b) = &bench.cols[0].broker {
            let log = std::fs::read_to_string(&b.log).unwrap_or_default();
            if log.contains("is ignored") {
                bench.notes.push(format!(
                    "this tollgate build ignores [auth]/[acl] (see {}): its --auth figures are not comparable",
                    b.log.display()
                ));
            }
        }
    }

    let a_version = version_of(
        &a_exe,
        if a_flavor == Flavor::Tollgate {
            "--version"
        } else {
            "-h"
        },
    );
    let m_version = version_of(&args.mosquitto, "-h");
    let transport = if args.plain {
        "plain TCP"
    } else {
        "TLS (RSA-2048, TLS 1.3)"
    };
    let setup_line = format!(
        "{transport}, {} B payload, {} publishers -> {} subscribers, {} messages per run, auth+ACL {}",
        args.payload,
        args.publishers,
        args.subscribers,
        args.messages,
        if args.auth { "on" } else { "off" }
    );
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    let b_label = bench.cols[1].label.clone();
    let commit = args.commit.clone().unwrap_or_else(source_commit);
    if args.json {
        let meta = json!({
            "command": command_line,
            "commit": commit,
            "date": utc_now(),
            "setup": setup_line,
            "machine": machine,
            "versions": { a_label: a_version, "mosquitto": m_version },
            "clk_tck": bench.tck,
            "wall_seconds": wall.elapsed().as_secs_f64(),
            "notes": bench.notes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&bench.rows, a_label, &b_label, meta))?
        );
    } else {
        println!("$ {command_line}");
        println!("setup:    {setup_line}");
        println!("machine:  {machine}");
        println!("brokers:  {a_label} = {a_version} (commit {commit}); mosquitto = {m_version}");
        println!();
        print!("{}", report::table(&bench.rows, a_label, &b_label));
        println!();
        println!("Notes:");
        println!("  * ratio = {a_label}/mosquitto. Throughput: publishers send a fixed count as fast as the");
        println!("    QoS 1 inflight window (100) allows; time runs from release to the subscriber holding every");
        println!("    message. A run that lost messages is marked LOSS; QoS 0 then retries paced.");
        println!("  * The load generator shares the machine's cores with the broker, so rates and latencies are");
        println!("    disturbed by it; broker CPU per message (utime+stime from /proc/PID/stat, CLK_TCK {}) is", bench.tck);
        println!("    the least disturbed figure.");
        println!("  * Connects are full handshakes (no TLS resumption) with CONNECT/CONNACK/DISCONNECT, {} in flight.", args.connect_concurrency);
        println!(
            "  * RSS per idle connection = (VmRSS with N idle TLS clients - VmRSS before) / N."
        );
        println!("  * RSS after the burst: the throughput runs' clients have disconnected; VmRSS is sampled");
        println!("    every second for --settle-secs and the last sample divided by the idle RSS (before any load).");
        if a_flavor == Flavor::Tollgate {
            if args.tollgate_defaults {
                println!("  * --tollgate-defaults: tollgate runs with its default session queue and inflight bounds,");
                println!("    Mosquitto with max_queued_messages 0 / max_inflight_messages 0 (not equivalent).");
            } else {
                println!("  * Queues: Mosquitto max_queued_messages 0, max_queued_bytes 0, max_inflight_messages 0;");
                println!("    tollgate max_offline_messages 10000000, max_offline_bytes 4 GiB, max_inflight 65535.");
            }
        }
        if args.auth {
            println!("  * --auth: both brokers read the same mosquitto_passwd ($7$) file and acl file ({} filler rules", args.acl_rules);
            println!("    ahead of the grant). Power cut: {} devices connect, all sockets drop, all reconnect with", args.devices);
            println!(
                "    {} handshakes in flight; the reconnect row is measured.",
                args.storm_concurrency
            );
        }
        for n in &bench.notes {
            println!("  * {n}");
        }
        println!("  wall time {:.0} s", wall.elapsed().as_secs_f64());
    }
    if let Some(c) = bench.cols.iter().find(|c| c.broker.is_err()) {
        eprintln!("note: {} did not run: see 'Not measured' above", c.label);
    }
    let _ = &bench.pki;
    drop(scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_samples() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn tollgate_runs_with_the_allocator_policy_of_the_systemd_unit() {
        let unit = include_str!("../../systemd/tollgate.service");
        let line = unit
            .lines()
            .find(|l| l.starts_with("Environment=") && l.contains("MIMALLOC_"))
            .expect("the unit sets the allocator policy");
        for (key, value) in broker::TOLLGATE_UNIT_ENV {
            assert!(line.contains(&format!("{key}={value}")), "{line}");
        }
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("--qos"), "--qos");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
