//! Modbus peers: the pymodbus 3.x device simulator (`tests/peers/modbus_sim.py`) over
//! TCP or RTU, and socat pty pairs standing in for an RS-485 adapter. The simulator
//! logs every request it receives (to count requests on the wire) and is steered
//! through files (`mute` units, `corrupt` replies). Python is the venv that
//! scripts/test-all.sh makes under target/ (or `TOLLGATE_MODBUS_PYTHON`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::net::free_port;
use super::peers::{require_peer, skip_unless_required, LineChild};
use super::wait::WAIT;

/// The Python that has pymodbus ≥ 3.10 (SimDevice), or `None` (after the skip notice).
pub fn require_pymodbus() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/modbus-venv/bin/python");
    let python = std::env::var_os("TOLLGATE_MODBUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        });
    let ok = Command::new(&python)
        .args([
            "-c",
            "from pymodbus.simulator import SimDevice, SimData; import serial",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else {
        skip_unless_required(&format!(
            "pymodbus >= 3.10 with pyserial is not importable by {} (scripts/test-all.sh installs it)",
            python.display()
        ));
        None
    }
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRequest {
    pub unit: u8,
    pub function: u8,
    pub address: u16,
    pub count: u16,
}

/// A running simulator; killed when dropped.
pub struct Sim {
    _child: LineChild,
    pub log: PathBuf,
    pub control: PathBuf,
    /// TCP port (tcp mode).
    pub port: u16,
}

impl Sim {
    fn start(
        python: &Path,
        dir: &Path,
        name: &str,
        spec: &serde_json::Value,
        mode: &str,
        target: &str,
    ) -> Sim {
        let spec_path = dir.join(format!("{name}-spec.json"));
        std::fs::write(&spec_path, spec.to_string()).expect("write spec");
        let log = dir.join(format!("{name}-requests.log"));
        let control = dir.join(format!("{name}-control"));
        std::fs::create_dir_all(&control).expect("control dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_sim.py");
        let child = LineChild::spawn(
            Command::new(python)
                .arg(script)
                .arg(&spec_path)
                .arg(mode)
                .arg(target)
                .arg(&log)
                .arg(&control)
                .stderr(Stdio::null()),
        );
        child.wait_for_line("ready", WAIT, "the Modbus simulator reports ready");
        Sim {
            _child: child,
            log,
            control,
            port: target.parse().unwrap_or(0),
        }
    }

    /// A Modbus TCP simulator on a free loopback port.
    pub fn tcp(python: &Path, dir: &Path, spec: &serde_json::Value) -> Sim {
        let port = free_port();
        Sim::start(python, dir, "tcp", spec, "tcp", &port.to_string())
    }

    /// A Modbus RTU simulator on serial device `pty` (19200 8N1: a pty refuses parity).
    pub fn rtu(python: &Path, dir: &Path, name: &str, spec: &serde_json::Value, pty: &Path) -> Sim {
        Sim::start(python, dir, name, spec, "rtu", &pty.display().to_string())
    }

    /// A bare RTU responder on `pty` that timestamps each request's arrival and its reply
    /// (`rtu-timing` in the script): see [`Sim::timings`].
    pub fn rtu_timing(python: &Path, dir: &Path, spec: &serde_json::Value, pty: &Path) -> Sim {
        Sim::start(
            python,
            dir,
            "timing",
            spec,
            "rtu-timing",
            &pty.display().to_string(),
        )
    }

    /// `rtu-timing` only: per request, (monotonic seconds its first byte arrived, seconds
    /// its reply was written), in arrival order.
    pub fn timings(&self) -> Vec<(f64, f64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["rx"].as_f64()?, v["tx"].as_f64()?)))
            .collect()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SimRequest> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| SimRequest {
                unit: v["unit"].as_u64().unwrap_or(0) as u8,
                function: v["fc"].as_u64().unwrap_or(0) as u8,
                address: v["address"].as_u64().unwrap_or(0) as u16,
                count: v["count"].as_u64().unwrap_or(0) as u16,
            })
            .collect()
    }

    /// Units that stop answering (empty: all answer).
    pub fn mute(&self, units: &[u8]) {
        let text: Vec<String> = units.iter().map(u8::to_string).collect();
        std::fs::write(self.control.join("mute"), text.join("\n")).expect("write mute");
    }

    /// Send the next `n` replies `ms` milliseconds late.
    pub fn delay(&self, ms: u64, n: u32) {
        std::fs::write(self.control.join("delay"), format!("{ms} {n}")).expect("write delay");
    }

    /// Damage the last byte of the next `n` replies.
    pub fn corrupt(&self, n: u32) {
        std::fs::write(self.control.join("corrupt"), n.to_string()).expect("write corrupt");
    }
}

/// A socat pty pair: `device` for the gateway, `line` for the simulator; killed when dropped
/// (the link paths disappear like an unplugged USB adapter's).
pub struct PtyPair {
    child: std::process::Child,
    pub device: PathBuf,
    pub line: PathBuf,
}

impl PtyPair {
    /// `None` when socat is missing (after the skip notice).
    pub fn start(dir: &Path, name: &str) -> Option<PtyPair> {
        if !require_peer("socat") {
            return None;
        }
        let device = dir.join(format!("{name}-dev"));
        let line = dir.join(format!("{name}-line"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .arg(format!("pty,raw,echo=0,link={}", line.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs");
        let deadline = std::time::Instant::now() + WAIT;
        while !(device.exists() && line.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "socat made no pty pair"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(PtyPair {
            child,
            device,
            line,
        })
    }

    /// Unplug: end socat (only this child, by its id).
    pub fn unplug(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    /// A Modbus TCP simulator on loopback port `port` (a device restarted at its address);
    /// its request log and control files are named `name` in `dir`.
    pub fn tcp_on(
        python: &Path,
        dir: &Path,
        name: &str,
        spec: &serde_json::Value,
        port: u16,
    ) -> Sim {
        Sim::start(python, dir, name, spec, "tcp", &port.to_string())
    }
}

/// The big-endian bytes `be` as they sit in registers in `order` (the letters name the
/// big-endian bytes in wire order): the simulator's side of every byte and word order.
pub fn place(be: &[u8], order: &str) -> Vec<u16> {
    let mut regs: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order == "BADC" || order == "DCBA" {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order == "CDAB" || order == "DCBA" {
        regs.reverse();
    }
    regs
}

/// Holding registers from 0 holding one value of every register type in every order the
/// type takes, the `[[modbus.device.point]]` tables that read them, and the value each
/// point must publish: per order u16, i16, u32, i32, f32, u64, i64, f64 (24 registers
/// from `i * 24`), then `string(5)` in ABCD and BADC and two `bit(n)` of one register.
pub fn every_type_and_order() -> (Vec<u16>, String, Vec<(String, serde_json::Value)>) {
    use serde_json::json;
    let mut holding: Vec<u16> = Vec::new();
    let mut points = String::new();
    let mut expected = Vec::new();
    for (i, order) in ["ABCD", "CDAB", "BADC", "DCBA"].iter().enumerate() {
        let base = i * 24;
        let values: [(&str, Vec<u8>, serde_json::Value); 8] = [
            ("u16", 0xABCDu16.to_be_bytes().to_vec(), json!(0xABCD)),
            ("i16", (-2i16).to_be_bytes().to_vec(), json!(-2)),
            (
                "u32",
                0x1122_3344u32.to_be_bytes().to_vec(),
                json!(0x1122_3344u32),
            ),
            ("i32", (-123_456i32).to_be_bytes().to_vec(), json!(-123_456)),
            ("f32", 12.5f32.to_be_bytes().to_vec(), json!(12.5)),
            (
                "u64",
                0x0102_0304_0506_0708u64.to_be_bytes().to_vec(),
                json!(0x0102_0304_0506_0708u64),
            ),
            (
                "i64",
                (-9_876_543_210i64).to_be_bytes().to_vec(),
                json!(-9_876_543_210i64),
            ),
            ("f64", (-0.1f64).to_be_bytes().to_vec(), json!(-0.1)),
        ];
        let mut offset = 0;
        for (t, be, value) in values {
            let name = format!("{t}_{order}");
            points.push_str(&format!(
                "[[modbus.device.point]]\nname = \"{name}\"\nkind = \"holding\"\naddress = {}\ntype = \"{t}\"\norder = \"{order}\"\n",
                base + offset
            ));
            offset += be.len() / 2;
            holding.extend(place(&be, order));
            expected.push((name, value));
        }
        holding.resize(base + 24, 0);
    }
    // 96..: "Hello" as written (ABCD) and byte-swapped (BADC), flags 0b1000.
    let start = holding.len();
    holding.extend(place(b"Hello\0", "ABCD"));
    holding.extend(place(b"Hello\0", "BADC"));
    holding.push(0b1000);
    points.push_str(&format!(
        "[[modbus.device.point]]\nname = \"text_ABCD\"\nkind = \"holding\"\naddress = {}\ntype = \"string(5)\"\n\
         [[modbus.device.point]]\nname = \"text_BADC\"\nkind = \"holding\"\naddress = {}\ntype = \"string(5)\"\norder = \"BADC\"\n\
         [[modbus.device.point]]\nname = \"flag3\"\nkind = \"holding\"\naddress = {}\ntype = \"bit(3)\"\n\
         [[modbus.device.point]]\nname = \"flag2\"\nkind = \"holding\"\naddress = {}\ntype = \"bit(2)\"\n",
        start,
        start + 3,
        start + 6,
        start + 6
    ));
    expected.extend([
        ("text_ABCD".to_string(), json!("Hello")),
        ("text_BADC".to_string(), json!("Hello")),
        ("flag3".to_string(), json!(true)),
        ("flag2".to_string(), json!(false)),
    ]);
    (holding, points, expected)
}
