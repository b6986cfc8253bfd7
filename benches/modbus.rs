//! Modbus adapter figures against the pymodbus TCP simulator: `cargo bench --bench modbus`.
//!
//! One device with 1,000 holding registers, each a `u16` point reported on every poll
//! (8 coalesced reads of 125 registers per poll). Prints, side by side:
//! - a pymodbus poller (Python, `ModbusTcpClient`) reading the same registers back to back:
//!   registers/s and mean time per request, i.e. what the simulator itself sustains;
//! - the gateway (in this process) polling every 10 ms and publishing every point to a
//!   `mosquitto_sub` subscriber (another process): registers/s read, point updates/s
//!   published, the gateway's CPU per point update (this process's CPU / updates), and its
//!   request latency p50/p99 (from the bus health document) next to the simulator's own.
//!
//! Needs the pymodbus venv that scripts/test-all.sh makes (target/modbus-venv, or
//! `TOLLGATE_MODBUS_PYTHON`) and `mosquitto_sub`. `TOLLGATE_BENCH_SECONDS` sets each
//! run's length (default 5).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::app::App;
use tollgate::config::{load_with_env, ConfigSource};

const REGISTERS: usize = 1000;

fn python() -> PathBuf {
    std::env::var_os("TOLLGATE_MODBUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/modbus-venv/bin/python")
        })
}

/// Process CPU time (user + system) from /proc/self/stat (USER_HZ is 100 on Linux).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

const POLLER: &str = r#"
import sys, time
from pymodbus.client import ModbusTcpClient
port, secs, total = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
c = ModbusTcpClient("127.0.0.1", port=port); c.connect()
start = time.monotonic(); requests = 0; registers = 0
while time.monotonic() - start < secs:
    for a in range(0, total, 125):
        r = c.read_holding_registers(a, count=min(125, total - a), device_id=1)
        registers += len(r.registers); requests += 1
elapsed = time.monotonic() - start
print(f"{registers / elapsed:.0f} {elapsed / requests * 1000:.3f}")
"#;

fn main() {
    let seconds: u64 = std::env::var("TOLLGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let python = python();
    let dir = tempfile::tempdir().expect("bench dir");
    let spec = serde_json::json!({"devices": {"1": {"hr": {"0": (0..REGISTERS).map(|i| i as u16).collect::<Vec<_>>()}}}});
    std::fs::write(dir.path().join("spec.json"), spec.to_string()).expect("spec");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_sim.py");
    std::fs::create_dir_all(dir.path().join("control")).expect("control");
    let mut sim = Command::new(&python)
        .arg(&script)
        .arg(dir.path().join("spec.json"))
        .args(["tcp", &port.to_string()])
        .arg(dir.path().join("requests.log"))
        .arg(dir.path().join("control"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/test-all.sh installs pymodbus)",
                python.display()
            )
        });
    let mut ready = String::new();
    BufReader::new(sim.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("sim output");
    assert_eq!(ready.trim(), "ready", "simulator did not start");

    // The simulator alone, driven by pymodbus's own client.
    let out = Command::new(&python)
        .args([
            "-c",
            POLLER,
            &port.to_string(),
            &seconds.to_string(),
            &REGISTERS.to_string(),
        ])
        .output()
        .expect("pymodbus poller");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let py_regs: f64 = it
        .next()
        .and_then(|s| s.parse().ok())
        .expect("poller figures");
    let py_ms: f64 = it
        .next()
        .and_then(|s| s.parse().ok())
        .expect("poller figures");

    let mut points = String::new();
    for i in 0..REGISTERS {
        points.push_str(&format!(
            "[[modbus.device.point]]\nname = \"r{i}\"\nkind = \"holding\"\naddress = {i}\nreport = \"interval\"\n"
        ));
    }
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = \"state\"\nsys_interval = \"0\"\nmax_offline_messages = 100000\n\
             [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
             [[modbus]]\nname = \"bench\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntopic_prefix = \"bench\"\nstatus_interval = \"1s\"\n\
             [[modbus.device]]\nname = \"d\"\nunit = 1\npoll = \"10ms\"\n{points}"
        ),
    )
    .expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (gw_regs, updates, cpu_per_update, status) = runtime.block_on(async {
        let loaded = load_with_env(&ConfigSource::File(config.clone()), &HashMap::new())
            .expect("config valid");
        let app = App::build(loaded).await.expect("gateway builds");
        let addr = app.local_addr("local").expect("listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let mut sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-t",
                "bench/d/+",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian mosquitto-clients)");
        let lines = Arc::new(AtomicU64::new(0));
        let counter = lines.clone();
        let stdout = sub.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = dir.path().join("requests.log");
        let count_reads = || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        let (reads0, lines0, cpu0, t0) = (
            count_reads(),
            lines.load(Ordering::Relaxed),
            cpu(),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let reads = (count_reads() - reads0) as f64;
        let updates = (lines.load(Ordering::Relaxed) - lines0) as f64;
        let cpu_used = (cpu() - cpu0).as_secs_f64();
        let status = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-t",
                "bench/status",
                "-C",
                "1",
            ])
            .output()
            .expect("status");
        let _ = sub.kill();
        let _ = sub.wait();
        let _ = stop.send(());
        let _ = running.await;
        (
            reads * 125.0 / elapsed,
            updates / elapsed,
            cpu_used / updates.max(1.0),
            String::from_utf8_lossy(&status.stdout).into_owned(),
        )
    });
    let _ = sim.kill();
    let _ = sim.wait();
    let doc: serde_json::Value = serde_json::from_str(status.trim()).unwrap_or_default();
    let p50 = doc["devices"]["d"]["latency_ms_p50"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let p99 = doc["devices"]["d"]["latency_ms_p99"]
        .as_f64()
        .unwrap_or(f64::NAN);
    println!("modbus bench, {REGISTERS} u16 points in one device, {seconds} s per run, pymodbus TCP simulator");
    println!("| poller | registers/s read | point updates/s published | CPU per point update | time per 125-register request |");
    println!("|---|---|---|---|---|");
    println!("| pymodbus client, back to back | {py_regs:.0} | - | - | {py_ms:.2} ms (mean) |");
    println!(
        "| tollgate, poll 10 ms | {gw_regs:.0} | {updates:.0} | {:.1} µs | {p50:.2} ms p50, {p99:.2} ms p99 |",
        cpu_per_update * 1e6
    );
}
