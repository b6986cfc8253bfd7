//! `--persistence`: QoS 1 fan-in to persistent subscribers (clean session off, so
//! every delivery is a stored one), through tollgate with `[persistence]` on and off
//! and through Mosquitto with `persistence true` (its file in the scratch directory),
//! each broker of its own, rounds interleaved: throughput without loss and broker CPU
//! per message. The target of issue 11: tollgate with persistence on at least twice
//! Mosquitto's throughput. The load average is noted with the figures (a busy
//! machine moves them). It starts and stops only its own brokers.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;

use crate::broker::{Broker, Flavor};
use crate::load::{self, Endpoint, LoadSpec};
use crate::measure::Bench;
use crate::report::{self, cell, cell_note, Measured};
use crate::setup::{self, Ports};
use crate::{median, progress};

/// The three brokers of the section: label, flavor, persistence on.
const SETUPS: [(&str, Flavor, bool); 3] = [
    ("tollgate-persist", Flavor::Tollgate, true),
    ("tollgate-memory", Flavor::Tollgate, false),
    ("mosquitto-persist", Flavor::Mosquitto, true),
];

/// `/proc/loadavg`'s first three figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Start one broker of the section, with its state in the scratch directory.
async fn start(
    bench: &Bench,
    tollgate: &Path,
    dir: &Path,
    (label, flavor, persist): (&str, Flavor, bool),
) -> Result<Broker, String> {
    let ports = Ports::pick().map_err(|e| e.to_string())?;
    let state = dir.join(format!("{label}-state"));
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    let (conf, exe) = match flavor {
        Flavor::Mosquitto => {
            let base = setup::mosquitto_conf(&bench.pki, ports, None);
            let on = format!(
                "persistence true\npersistence_location {}/\n",
                state.display()
            );
            let text = base.replace("persistence false\n", &on);
            let p = dir.join(format!("{label}.conf"));
            setup::write(&p, &text).map_err(|e| e.to_string())?;
            (p, bench.args.mosquitto.clone())
        }
        Flavor::Tollgate => {
            let mut text = setup::tollgate_conf(&state, &bench.pki, ports, None, true);
            text.push_str(&format!("\n[persistence]\nenabled = {persist}\n"));
            let p = dir.join(format!("{label}.toml"));
            setup::write(&p, &text).map_err(|e| e.to_string())?;
            (p, tollgate.to_path_buf())
        }
    };
    Broker::start(label, flavor, &exe, &conf, ports, dir)
        .await
        .map_err(|e| e.to_string())
}

/// One run against `broker`: its result and the broker's CPU ticks over it.
async fn run_once(
    bench: &Bench,
    broker: &Broker,
    tag: String,
) -> Result<(load::LoadResult, u64), String> {
    let port = if bench.args.plain {
        broker.ports.plain
    } else {
        broker.ports.tls_rsa
    };
    let at = Endpoint {
        port,
        tls: (!bench.args.plain).then(|| bench.tls.clone()),
        login: None,
        ws: false,
    };
    let spec = LoadSpec {
        publish_to: at.clone(),
        subscribe_at: at,
        publish_prefix: "bench/".into(),
        subscribe_filter: "bench/#".into(),
        publishers: bench.args.publishers,
        subscribers: bench.args.subscribers,
        qos: QoS::AtLeastOnce,
        payload: bench.args.payload,
        per_publisher: (bench.args.messages / bench.args.publishers.max(1)).max(1),
        rate: None,
        stall: Duration::from_secs(3),
        limit: Duration::from_secs(90),
        tag,
        persistent: true,
    };
    let ticks = Arc::new(Mutex::new((0u64, 0u64)));
    let (t1, t2) = (ticks.clone(), ticks.clone());
    let result = load::run(
        &spec,
        || {
            if let Ok(t) = broker.cpu_ticks() {
                t1.lock().expect("invariant: lock not poisoned").0 = t;
            }
        },
        || {
            if let Ok(t) = broker.cpu_ticks() {
                t2.lock().expect("invariant: lock not poisoned").1 = t;
            }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let (a, b) = *ticks.lock().expect("invariant: lock not poisoned");
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((result, b.saturating_sub(a)))
}

/// Rate and CPU µs per delivered message of a broker's runs (medians), a loss note.
fn figures(runs: &Result<Vec<(load::LoadResult, u64)>, String>, tck: u64) -> [Measured; 2] {
    let runs = match runs {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return [Err("no run".into()), Err("no run".into())],
        Err(e) => return [Err(e.clone()), Err(e.clone())],
    };
    let rate = median(runs.iter().map(|(r, _)| r.rate()).collect());
    let cpu = median(
        runs.iter()
            .map(|(r, t)| *t as f64 / tck.max(1) as f64 * 1e6 / r.received.max(1) as f64)
            .collect(),
    );
    let lost: u64 = runs.iter().map(|(r, _)| r.lost).sum();
    let dup: u64 = runs.iter().map(|(r, _)| r.duplicates).sum();
    if lost > 0 || dup > 0 {
        let note = format!("LOSS {lost} DUP {dup}");
        [cell_note(rate, note.clone()), cell_note(cpu, note)]
    } else {
        [cell(rate), cell(cpu)]
    }
}

/// The section: three brokers, `--load-rounds` interleaved rounds, four rows.
pub async fn run(bench: &mut Bench, tollgate: &Path, dir: &Path) {
    let json = bench.args.json;
    let load_before = load_average();
    let mut brokers = Vec::new();
    for setup in SETUPS {
        progress(json, &format!("persistence: starting {}", setup.0));
        brokers.push(start(bench, tollgate, dir, setup).await);
    }
    let mut runs: Vec<Result<Vec<_>, String>> = brokers
        .iter()
        .map(|b| b.as_ref().map(|_| Vec::new()).map_err(Clone::clone))
        .collect();
    for round in 0..bench.args.load_rounds.max(1) {
        for (i, b) in brokers.iter().enumerate() {
            let Ok(b) = b else { continue };
            progress(
                json,
                &format!(
                    "persistence: QoS 1 to persistent subscribers, {} round {}",
                    SETUPS[i].0,
                    round + 1
                ),
            );
            let tag = format!("durable-{i}-{round}");
            let outcome = run_once(bench, b, tag).await;
            if let Ok(v) = runs[i].as_mut() {
                match outcome {
                    Ok(r) => v.push(r),
                    Err(e) => runs[i] = Err(e),
                }
            }
        }
    }
    for b in brokers.iter_mut().flatten() {
        b.stop();
    }
    let tck = bench.tck;
    let [on_rate, on_cpu] = figures(&runs[0], tck);
    let [off_rate, off_cpu] = figures(&runs[1], tck);
    let [mq_rate, mq_cpu] = figures(&runs[2], tck);
    let wire = if bench.args.plain { "TCP" } else { "TLS" };
    let what = format!("QoS 1 fan-in {wire}, persistent subscribers");
    bench.push(
        format!("{what}, persistence on (vs Mosquitto persistence true)"),
        "msg/s",
        0,
        on_rate,
        mq_rate.clone(),
        report::Target::RatioAtLeast(2.0),
    );
    bench.push(
        format!("{what}, persistence on: CPU per message"),
        "µs",
        1,
        on_cpu,
        mq_cpu.clone(),
        report::Target::None,
    );
    bench.push(
        format!("{what}, persistence off (vs Mosquitto persistence true)"),
        "msg/s",
        0,
        off_rate,
        mq_rate,
        report::Target::None,
    );
    bench.push(
        format!("{what}, persistence off: CPU per message"),
        "µs",
        1,
        off_cpu,
        mq_cpu,
        report::Target::None,
    );
    bench.notes.push(format!(
        "persistence section: load average {load_before} before, {} after (2 shared cores)",
        load_average()
    ));
}
