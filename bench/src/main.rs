//! `tollgate-bench`: starts tollgate and Debian's Mosquitto side by side on
//! loopback with equivalent configs (same certificates, same password and
//! ACL files), drives both with the same load generator and prints
//! throughput with zero loss, broker CPU per message, latency, connect rates
//! and memory per idle TLS connection, with ratios against the targets of
//! issues 2 and 3. It is a measuring tool, not a test: it must never judge
//! pass/fail by exit code, and must never touch processes it did not start.

mod args;
mod bridge;
mod broker;
mod conn;
mod durable;
mod load;
mod measure;
mod report;
mod setup;
mod state;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;

use args::Args;
use broker::{Broker, Flavor};
use measure::{Bench, Column};
use setup::{AuthFiles, Pki, Ports, Scratch};

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
    if args.state_startup {
        let scratch = Scratch::new(args.keep)?;
        let bench = state::StateBench {
            tollgate: args.tollgate.clone().unwrap_or_else(default_tollgate),
            retained: args.state_retained,
            sessions: args.state_sessions,
            queued_per_session: args.state_queued,
        };
        return state::run(bench, &scratch.dir).await;
    }
    // Shown as the cargo command documented in README.md (Performance).
    let command_line = std::iter::once("cargo run --release -p tollgate-bench --".to_string())
        .chain(std::env::args().skip(1).map(|a| shell_quote(&a)))
        .collect::<Vec<_>>()
        .join(" ");
    args.check()?;
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
    let subject = Subject::of(&args);
    let (cols, notes) = start_columns(&args, &subject, &dir, &pki, auth.as_ref()).await?;
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
    measure_all(&mut bench, &args, &subject, &dir).await;
    print_report(&bench, &args, &subject, command_line, wall)?;
    if let Some(c) = bench.cols.iter().find(|c| c.broker.is_err()) {
        eprintln!("note: {} did not run: see 'Not measured' above", c.label);
    }
    let _ = &bench.pki;
    drop(scratch);
    Ok(())
}

/// The broker in the first column: tollgate, or with `--baseline-only` a second Mosquitto.
struct Subject {
    flavor: Flavor,
    label: &'static str,
    exe: PathBuf,
}

impl Subject {
    fn of(args: &Args) -> Self {
        let tollgate_exe = args.tollgate.clone().unwrap_or_else(default_tollgate);
        let flavor = if args.baseline_only {
            Flavor::Mosquitto
        } else {
            Flavor::Tollgate
        };
        let label = if args.baseline_only {
            "mosquitto-A"
        } else {
            "tollgate"
        };
        let exe = if args.baseline_only {
            args.mosquitto.clone()
        } else {
            tollgate_exe.clone()
        };
        Subject { flavor, label, exe }
    }
}

/// Writes each column's configuration and starts its broker (a column that does not start
/// says why); notes a tollgate that only ran with its fixed-schema keys.
async fn start_columns(
    args: &Args,
    subject: &Subject,
    dir: &Path,
    pki: &Pki,
    auth: Option<&AuthFiles>,
) -> anyhow::Result<(Vec<Column>, Vec<String>)> {
    let mut cols = Vec::new();
    let mut notes = Vec::new();
    for (label, flavor, exe) in [
        (subject.label, subject.flavor, subject.exe.clone()),
        ("mosquitto", Flavor::Mosquitto, args.mosquitto.clone()),
    ] {
        let ports = Ports::pick()?;
        let (conf, fallback) = match flavor {
            Flavor::Mosquitto => {
                let p = dir.join(format!("{label}.conf"));
                setup::write(&p, &setup::mosquitto_conf(pki, ports, auth))?;
                (p, None)
            }
            Flavor::Tollgate => {
                let data = dir.join(format!("{label}-data"));
                std::fs::create_dir_all(&data)
                    .with_context(|| format!("creating {}", data.display()))?;
                let p = dir.join(format!("{label}.toml"));
                setup::write(
                    &p,
                    &setup::tollgate_conf(&data, pki, ports, auth, !args.tollgate_defaults),
                )?;
                let minimal = dir.join(format!("{label}-fixed-keys.toml"));
                setup::write(
                    &minimal,
                    &setup::tollgate_conf(&data, pki, ports, auth, false),
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
        let mut broker = Broker::start(label, flavor, &exe, &conf, ports, dir).await;
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
                broker = Broker::start(label, flavor, &exe, minimal, ports, dir).await;
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
    Ok((cols, notes))
}

/// Every section not skipped, in order; then stops both brokers, notes a tollgate
/// build that ignored `--auth`, and runs the bridge section (its own processes).
async fn measure_all(bench: &mut Bench, args: &Args, subject: &Subject, dir: &Path) {
    let a_flavor = subject.flavor;
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
        bench
            .connect_row_over(
                &format!("connect WSS RSA-2048{auth}"),
                |p| p.wss,
                true,
                true,
                report::Target::None,
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
    if args.persistence && !bench.skip("persistence") && a_flavor == Flavor::Tollgate {
        durable::run(bench, &subject.exe, dir).await;
    }
    if args.bridge && !bench.skip("bridge") {
        let gateways = [
            bridge::GatewaySpec {
                label: subject.label.to_string(),
                flavor: subject.flavor,
                exe: subject.exe.clone(),
            },
            bridge::GatewaySpec {
                label: "mosquitto".into(),
                flavor: Flavor::Mosquitto,
                exe: args.mosquitto.clone(),
            },
        ];
        bridge::run(bench, gateways, dir).await;
    }
}

/// What the report says about the run besides the rows.
struct Header {
    command_line: String,
    commit: String,
    setup_line: String,
    machine: String,
    a_version: String,
    m_version: String,
}

/// Prints the result: JSON with `--json`, else the table and its notes.
fn print_report(
    bench: &Bench,
    args: &Args,
    subject: &Subject,
    command_line: String,
    wall: Instant,
) -> anyhow::Result<()> {
    let a_flavor = subject.flavor;
    let a_label = subject.label;
    let a_version = version_of(
        &subject.exe,
        if a_flavor == Flavor::Tollgate {
            "--version"
        } else {
            "-h"
        },
    );
    let m_version = version_of(&args.mosquitto, "-h");
    let transport = if args.plain {
        "plain TCP"
    } else if args.wss {
        "MQTT over WebSocket over TLS (RSA-2048, TLS 1.3)"
    } else {
        "TLS (RSA-2048, TLS 1.3)"
    };
    let mut setup_line = format!(
        "{transport}, {} B payload, {} publishers -> {} subscribers, {} messages per run, auth+ACL {}",
        args.payload,
        args.publishers,
        args.subscribers,
        args.messages,
        if args.auth { "on" } else { "off" }
    );
    if args.bridge && !bench.skip("bridge") {
        setup_line.push_str(&format!(
            "; bridge: {} messages per run, 1 subscriber at the cloud",
            args.bridge_messages
        ));
    }
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    let b_label = bench.cols[1].label.clone();
    let commit = args.commit.clone().unwrap_or_else(source_commit);
    let header = Header {
        command_line,
        commit,
        setup_line,
        machine,
        a_version,
        m_version,
    };
    if args.json {
        let meta = json!({
            "command": header.command_line,
            "commit": header.commit,
            "date": utc_now(),
            "setup": header.setup_line,
            "machine": header.machine,
            "versions": { a_label: header.a_version, "mosquitto": header.m_version },
            "clk_tck": bench.tck,
            "wall_seconds": wall.elapsed().as_secs_f64(),
            "notes": bench.notes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&bench.rows, a_label, &b_label, meta))?
        );
    } else {
        print_text(bench, args, subject, &b_label, &header, wall);
    }
    Ok(())
}

/// The table and its notes (without `--json`).
fn print_text(
    bench: &Bench,
    args: &Args,
    subject: &Subject,
    b_label: &str,
    header: &Header,
    wall: Instant,
) {
    let a_label = subject.label;
    let Header {
        command_line,
        commit,
        setup_line,
        machine,
        a_version,
        m_version,
    } = header;
    println!("$ {command_line}");
    println!("setup:    {setup_line}");
    println!("machine:  {machine}");
    println!("brokers:  {a_label} = {a_version} (commit {commit}); mosquitto = {m_version}");
    println!();
    print!("{}", report::table(&bench.rows, a_label, b_label));
    println!();
    println!("Notes:");
    println!(
        "  * ratio = {a_label}/mosquitto. Throughput: publishers send a fixed count as fast as the"
    );
    println!("    QoS 1 inflight window (100) allows; time runs from release to the subscriber holding every");
    println!("    message. A run that lost messages is marked LOSS; QoS 0 then retries paced.");
    println!("  * The load generator shares the machine's cores with the broker, so rates and latencies are");
    println!("    disturbed by it; broker CPU per message (utime+stime from /proc/PID/stat, CLK_TCK {}) is", bench.tck);
    println!("    the least disturbed figure.");
    println!("  * Connects are full handshakes (no TLS resumption) with CONNECT/CONNACK/DISCONNECT, {} in flight.", args.connect_concurrency);
    println!("  * RSS per idle connection = (VmRSS with N idle TLS clients - VmRSS before) / N.");
    println!(
        "  * RSS after the burst: the throughput runs' clients have disconnected; VmRSS is sampled"
    );
    println!("    every second for --settle-secs and the last sample divided by the idle RSS (before any load).");
    if subject.flavor == Flavor::Tollgate {
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
