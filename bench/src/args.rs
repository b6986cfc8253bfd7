//! The command line of `tollgate-bench`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use crate::load;

/// Side-by-side benchmark of tollgate against Mosquitto on loopback.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// tollgate executable (default: `tollgate` next to this binary).
    #[arg(long)]
    pub tollgate: Option<PathBuf>,
    /// Mosquitto executable.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,
    /// Self-test: run a second Mosquitto in the tollgate column (ratios ≈ 1.0).
    #[arg(long)]
    pub baseline_only: bool,
    /// Plain TCP for the message load instead of TLS.
    #[arg(long)]
    pub plain: bool,
    /// MQTT over WebSocket over TLS (RSA-2048, `/mqtt`) for the message load instead of
    /// TLS: QoS 1 fan-in over WSS with `--wss --qos 1 --skip memory,connect,storm`.
    #[arg(long, conflicts_with = "plain")]
    pub wss: bool,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Subscriber connections (each subscribes to every message).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// QoS levels to measure throughput for, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,0")]
    pub qos: Vec<u8>,
    /// Payload size in bytes (at least 14: the time/sequence stamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per throughput run (all publishers together).
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Paced QoS 1 rate (msg/s, all publishers) for the latency run.
    #[arg(long, default_value_t = 2_000.0)]
    pub latency_rate: f64,
    /// Duration of the latency run in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub latency_secs: f64,
    /// Connects per connect-rate row.
    #[arg(long, default_value_t = 1_000)]
    pub connects: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 16)]
    pub connect_concurrency: usize,
    /// Interleaved rounds per throughput row (the median is shown; loss is summed).
    #[arg(long, default_value_t = 3)]
    pub load_rounds: usize,
    /// Interleaved rounds per connect-rate row (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also measure TLS connects with an ECDSA P-256 certificate.
    #[arg(long)]
    pub ecdsa: bool,
    /// Idle TLS connections for the memory row.
    #[arg(long, default_value_t = 2_000)]
    pub idle_conns: usize,
    /// Passwords + ACLs on both brokers (same mosquitto_passwd and acl files),
    /// plus the power-cut reconnect storm.
    #[arg(long)]
    pub auth: bool,
    /// Devices in the power-cut storm (--auth).
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Device handshakes in flight during the storm.
    #[arg(long, default_value_t = 100)]
    pub storm_concurrency: usize,
    /// Extra non-matching ACL rules for the bench user, ahead of its grant (--auth).
    #[arg(long, default_value_t = 10)]
    pub acl_rules: usize,
    /// Also measure the cloud bridge (after every other section; 1-2 min):
    /// 4 publishers -> gateway -> bridge over mTLS -> a Mosquitto "cloud" (client
    /// certificates required, the gateway confined to site/gw1/#) -> 1 subscriber there,
    /// QoS 1, through tollgate (journal on disk) and through a Mosquitto bridge (in
    /// memory). Bridge only: `--bridge --skip memory,connect,throughput,latency`.
    #[arg(long)]
    pub bridge: bool,
    /// Messages per bridge throughput run (all publishers together).
    #[arg(long, default_value_t = 100_000)]
    pub bridge_messages: usize,
    /// tollgate bridge's `max_inflight` (QoS 1 PUBLISHes in flight to the cloud; its
    /// default is 1000). Mosquitto's bridge in this section has no such limit
    /// (`max_inflight_messages 0`).
    #[arg(long)]
    pub bridge_inflight: Option<u16>,
    /// Paced QoS 1 rate (msg/s, all publishers) of the bridge latency runs; below what
    /// both bridges sustain, or the figure is queueing (runs last --latency-secs).
    #[arg(long, default_value_t = 500.0)]
    pub bridge_latency_rate: f64,
    /// Also measure QoS 1 fan-in to persistent subscribers (clean session off) through
    /// tollgate with [persistence] on and off and Mosquitto with `persistence true`
    /// (three brokers of its own, after the other sections; --messages per run).
    #[arg(long)]
    pub persistence: bool,
    /// Skip sections: memory, connect, throughput, latency, storm, bridge, persistence.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Give tollgate only the fixed-schema keys (its default session queue and
    /// inflight bounds) instead of bounds raised like Mosquitto's.
    #[arg(long)]
    pub tollgate_defaults: bool,
    /// Seconds to watch each broker's RSS after the throughput burst (RSS after a
    /// burst / idle RSS).
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Source commit of the tollgate under test, recorded in the output (default:
    /// `git rev-parse --short HEAD` in the current directory).
    #[arg(long)]
    pub commit: Option<String>,
    /// Render a `--json` result file as the README's Markdown tables and exit
    /// (measures nothing).
    #[arg(long, value_name = "FILE.json")]
    pub markdown: Option<PathBuf>,
    /// Only measure tollgate's startup with a large durable state (fills it over MQTT,
    /// restarts, prints the time to "Broker state loaded" and the RSS; no Mosquitto).
    #[arg(long)]
    pub state_startup: bool,
    /// Retained messages of the --state-startup state.
    #[arg(long, default_value_t = 100_000)]
    pub state_retained: usize,
    /// Persistent sessions of the --state-startup state.
    #[arg(long, default_value_t = 1_000)]
    pub state_sessions: usize,
    /// Queued QoS 1 messages per session of the --state-startup state.
    #[arg(long, default_value_t = 10)]
    pub state_queued: usize,
    /// Keep the scratch directory (configs, certs, broker logs).
    #[arg(long)]
    pub keep: bool,
}

impl Args {
    /// The message load's transport, as the rows name it.
    pub fn transport(&self) -> &'static str {
        if self.plain {
            "plain"
        } else if self.wss {
            "WSS"
        } else {
            "TLS"
        }
    }

    /// Refuses option values the bench cannot run with, and an open-files limit too low
    /// for the idle-connection row.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.payload < load::STAMP_LEN {
            bail!(
                "--payload must be at least {} bytes (time and sequence stamp)",
                load::STAMP_LEN
            );
        }
        if self.publishers == 0 || self.subscribers == 0 || self.publishers > usize::from(u16::MAX)
        {
            bail!("--publishers and --subscribers must be at least 1 (publishers at most 65535)");
        }
        if self.bridge && self.bridge_messages < self.publishers {
            bail!("--bridge-messages must be at least --publishers (one message each)");
        }
        if let Some(q) = self.qos.iter().find(|&&q| q > 2) {
            bail!("--qos {q}: only 0, 1 and 2 exist");
        }
        let need_fds = (self.idle_conns.max(self.devices) + 200) as u64;
        if let Some(limit) = open_files_limit() {
            if limit < need_fds && !self.skip.iter().any(|s| s == "memory") {
                bail!(
                    "open-files limit is {limit}, the idle-connection test needs about {need_fds}: \
                     run `ulimit -n {}` first (hard limit: `ulimit -Hn`), or lower --idle-conns",
                    need_fds.max(8192)
                );
            }
        }
        Ok(())
    }
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
