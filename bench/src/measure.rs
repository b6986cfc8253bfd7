//! The measurement sections of a bench run (memory, connects, throughput, settling,
//! latency, power-cut storm): each drives both columns and appends its rows to the
//! report.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;

use crate::args::Args;
use crate::broker::Broker;
use crate::conn::{self, Login, Target};
use crate::load::{self, Endpoint, LoadResult, LoadSpec};
use crate::report::{self, cell, cell_note, Measured, Row};
use crate::setup::{self, Pki, Ports};
use crate::{median, progress};

/// Per column of a connect row: rates, CPU µs per connect and a failure
/// note over the rounds, or why the column has no figure.
type ConnectAcc = Result<(Vec<f64>, Vec<f64>, Option<String>), String>;

/// Per column of a throughput row: every round's result and broker CPU ticks, or why
/// the column has none.
type ColumnRuns = Result<Vec<(LoadResult, u64)>, String>;

/// One column: a broker under test, or why it is not running.
pub struct Column {
    pub label: String,
    pub broker: Result<Broker, String>,
}

impl Column {
    pub fn running(&self) -> Result<&Broker, String> {
        match &self.broker {
            Ok(b) if b.alive() => Ok(b),
            Ok(b) => Err(format!("{} exited; see {}", b.name, b.log.display())),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The state of a bench run: its options, both columns and the rows measured so far.
pub struct Bench {
    pub args: Args,
    pub pki: Pki,
    pub tls: Arc<rustls::ClientConfig>,
    pub tck: u64,
    pub cols: [Column; 2],
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Each column's RSS in KiB before any load (the idle figure bursts are compared to).
    pub idle_rss: [Option<u64>; 2],
}

impl Bench {
    pub fn skip(&self, section: &str) -> bool {
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
            ws: false,
        }
    }

    pub fn push(
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

    pub async fn memory(&mut self) {
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
    pub async fn connect_row(
        &mut self,
        label: &str,
        which: fn(&Ports) -> u16,
        tls: bool,
        target: report::Target,
        cpu_row: bool,
    ) {
        self.connect_row_over(label, which, tls, false, target, cpu_row)
            .await
    }

    /// [`Bench::connect_row`], over WebSocket (on TLS) when `ws`.
    pub async fn connect_row_over(
        &mut self,
        label: &str,
        which: fn(&Ports) -> u16,
        tls: bool,
        ws: bool,
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
                    let t = Target {
                        ws,
                        ..self.target(which(&b.ports), tls)
                    };
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
        let at = Endpoint {
            port,
            tls: (!self.args.plain).then(|| self.tls.clone()),
            ws: self.args.wss,
            login: self
                .args
                .auth
                .then(|| (setup::BENCH_USER.to_string(), setup::BENCH_PASS.to_string())),
        };
        LoadSpec {
            publish_to: at.clone(),
            subscribe_at: at,
            publish_prefix: "bench/".into(),
            subscribe_filter: "bench/#".into(),
            publishers: self.args.publishers,
            subscribers: self.args.subscribers,
            qos,
            payload: self.args.payload,
            per_publisher: (self.args.messages / self.args.publishers.max(1)).max(1),
            rate: None,
            stall: Duration::from_secs(3),
            limit: Duration::from_secs(90),
            tag,
            persistent: false,
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

    pub async fn throughput(&mut self, qos_level: u8) {
        let qos = match qos_level {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let (runs, ports) = self.throughput_runs(qos, qos_level).await;
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
            self.throughput_notes(i, qos_level, &col_runs);
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
            let paced = self
                .paced_after_loss(i, qos, qos_level, ports[i], unpaced, total_lost)
                .await;
            rate.push(paced);
        }
        self.push_throughput_rows(qos_level, [rate, cpu, lost, lat]);
    }

    /// The `--load-rounds` interleaved throughput runs of both columns, and the port each
    /// column was loaded on.
    async fn throughput_runs(&mut self, qos: QoS, qos_level: u8) -> ([ColumnRuns; 2], [u16; 2]) {
        let transport = self.args.transport();
        let rounds = self.args.load_rounds.max(1);
        // Per column: every round's result and broker CPU ticks, or why not.
        let mut runs: [ColumnRuns; 2] = [Ok(Vec::new()), Ok(Vec::new())];
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
                    Ok(b) if self.args.wss => b.ports.wss,
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
        (runs, ports)
    }

    /// Notes for column `i`'s runs that saw duplicates, hit the time limit or had client
    /// errors.
    fn throughput_notes(&mut self, i: usize, qos_level: u8, col_runs: &[(LoadResult, u64)]) {
        let label = self.cols[i].label.clone();
        for (r, _) in col_runs {
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
    }

    /// The rate cell of column `i` after its runs lost messages: reports the loss; for
    /// QoS 0 looks for a paced rate without loss.
    async fn paced_after_loss(
        &mut self,
        i: usize,
        qos: QoS,
        qos_level: u8,
        port: u16,
        unpaced: f64,
        total_lost: u64,
    ) -> Measured {
        let label = self.cols[i].label.clone();
        let mut found = None;
        if qos == QoS::AtMostOnce {
            for factor in [0.8, 0.6, 0.4] {
                let mut paced = self.load_spec(
                    port,
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
        match found {
            Some(x) => cell_note(
                x,
                format!("paced; unpaced LOSS {total_lost} at {unpaced:.0}/s"),
            ),
            None => cell_note(unpaced, format!("LOSS {total_lost}")),
        }
    }

    /// The four throughput rows of one QoS level from the per-column cells
    /// (rate, CPU per message, messages lost, latency p50).
    fn push_throughput_rows(&mut self, qos_level: u8, cells: [Vec<Measured>; 4]) {
        let two =
            |v: Vec<Measured>| -> [Measured; 2] { v.try_into().expect("invariant: two columns") };
        let [rate, cpu, lost, lat] = cells;
        let [ra, rb] = two(rate);
        let [ca, cb] = two(cpu);
        let [la, lb] = two(lost);
        let [pa, pb] = two(lat);
        let transport = self.args.transport();
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
    pub fn sample_idle_rss(&mut self) {
        for i in 0..2 {
            if self.idle_rss[i].is_none() {
                self.idle_rss[i] = self.cols[i].running().ok().and_then(|b| b.rss_kib().ok());
            }
        }
    }

    /// After the throughput burst (its connections closed): sample both brokers' RSS every
    /// second for `--settle-secs` and report the last sample against the idle RSS.
    pub async fn settle(&mut self) {
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

    pub async fn latency(&mut self) {
        let transport = self.args.transport();
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
                } else if self.args.wss {
                    b.ports.wss
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
    pub async fn storm(&mut self, key: &str, port: fn(&setup::Ports) -> u16) {
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
    pub async fn auth_sanity(&mut self) {
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
