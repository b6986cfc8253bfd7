//! Broker processes under test: spawn with a generated config, wait until the
//! listeners accept, read CPU time and RSS from /proc, stop. It must never
//! signal a process it did not start.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::setup::Ports;

/// Errors while running a broker process.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The executable could not be started.
    #[error(
        "cannot start {name} ({exe}): {source}; pass the right path with --tollgate/--mosquitto"
    )]
    Spawn {
        name: String,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The process exited before its listeners came up.
    #[error("{name} exited during startup ({status}); it refused the generated config {config}.\n    last log lines ({log}):\n{tail}")]
    Exited {
        name: String,
        status: String,
        config: PathBuf,
        log: PathBuf,
        tail: String,
    },
    /// The listeners did not accept within the startup limit.
    #[error("{name} did not accept on 127.0.0.1:{port} within {secs} s; log: {log}")]
    NotListening {
        name: String,
        port: u16,
        secs: u64,
        log: PathBuf,
    },
    /// /proc could not be read.
    #[error("cannot read /proc/{pid}/{file} of {name}: {detail}")]
    Proc {
        name: String,
        pid: u32,
        file: &'static str,
        detail: String,
    },
}

/// Which broker software a column runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Tollgate,
    Mosquitto,
}

/// A running broker.
pub struct Broker {
    pub name: String,
    pub ports: Ports,
    pub log: PathBuf,
    child: Child,
}

/// Clock ticks per second for /proc/PID/stat (`getconf CLK_TCK`, 100 if unknown).
/// Environment that systemd/tollgate.service gives tollgate (the allocator policy).
pub const TOLLGATE_UNIT_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "100"),
];

pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Broker {
    /// Start `exe` with `config` and wait (up to 15 s) until every listener
    /// in `ports` accepts TCP connections.
    pub async fn start(
        name: &str,
        flavor: Flavor,
        exe: &Path,
        config: &Path,
        ports: Ports,
        dir: &Path,
    ) -> Result<Self, BrokerError> {
        let log = dir.join(format!("{name}.log"));
        let spawn_err = |source| BrokerError::Spawn {
            name: name.to_string(),
            exe: exe.to_path_buf(),
            source,
        };
        let out = File::create(&log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(exe);
        match flavor {
            Flavor::Tollgate => {
                cmd.arg("run").arg("-c").arg(config);
                // The allocator policy of systemd/tollgate.service, unless the caller set one.
                for (key, value) in TOLLGATE_UNIT_ENV {
                    if std::env::var_os(key).is_none() {
                        cmd.env(key, value);
                    }
                }
            }
            Flavor::Mosquitto => {
                cmd.arg("-c").arg(config);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_err)?;
        let mut broker = Self {
            name: name.to_string(),
            ports,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in [ports.plain, ports.tls_rsa, ports.tls_ec, ports.wss] {
            loop {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    return Err(BrokerError::Exited {
                        name: name.to_string(),
                        status: status.to_string(),
                        config: config.to_path_buf(),
                        log: broker.log.clone(),
                        tail: tail(&broker.log, 15),
                    });
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BrokerError::NotListening {
                        name: name.to_string(),
                        port,
                        secs: 15,
                        log: broker.log.clone(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Let the broker log and forget the probe connections.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(broker)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state != "Z" && state != "X")
    }

    /// utime + stime of the whole process (all threads) in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64, BrokerError> {
        self.cpu_ticks_split().map(|(user, system)| user + system)
    }

    /// (utime, stime) of the whole process (all threads) in clock ticks: user space and
    /// the kernel working for it (system calls such as fsync).
    pub fn cpu_ticks_split(&self) -> Result<(u64, u64), BrokerError> {
        let pid = self.pid();
        let proc_err = |detail: String| BrokerError::Proc {
            name: self.name.clone(),
            pid,
            file: "stat",
            detail,
        };
        let stat =
            fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| proc_err(e.to_string()))?;
        // Fields after the `(comm)` which may contain spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| proc_err("no ')' in stat".into()))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime 15.
        let get = |i: usize| -> Result<u64, BrokerError> {
            fields
                .get(i - 3)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| proc_err(format!("field {i} missing")))
        };
        Ok((get(14)?, get(15)?))
    }

    /// Resident set size in KiB (VmRSS).
    pub fn rss_kib(&self) -> Result<u64, BrokerError> {
        let pid = self.pid();
        let proc_err = |detail: String| BrokerError::Proc {
            name: self.name.clone(),
            pid,
            file: "status",
            detail,
        };
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| proc_err(e.to_string()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| proc_err("no VmRSS line".into()))
    }

    /// Stop the broker: SIGTERM through `kill PID`, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
