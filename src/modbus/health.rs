//! Health of a bus and its devices, as counters the bus task updates after every
//! exchange and a JSON document it publishes (`<prefix>/status` and
//! `$SYS/tollgate/modbus/<name>/state`): per device online/offline, latency p50/p99
//! over the last exchanges, requests, timeouts, CRC errors, exceptions by code, stray
//! frames and the last error; per bus the share of time the wire was busy and, for RTU,
//! the kernel's UART error counts (framing, overrun, parity, break: `uart`, "unsupported"
//! on a pty).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

/// Latency samples kept per device (a ring: memory does not grow with uptime).
const SAMPLES: usize = 256;

/// One device's counters.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    /// Answered the last exchange (None: not tried yet).
    pub online: Option<bool>,
    /// Exchanges attempted.
    pub requests: u64,
    /// Exchanges without a reply in time.
    pub timeouts: u64,
    /// Replies with a bad CRC.
    pub crc_errors: u64,
    /// Exception replies, by code.
    pub exceptions: BTreeMap<u8, u64>,
    /// Frames skipped as not answering the request (other unit, old transaction).
    pub stray_frames: u64,
    /// Polls completed.
    pub polls: u64,
    /// Last error, as text.
    pub last_error: Option<String>,
    latencies: VecDeque<Duration>,
}

impl DeviceHealth {
    /// Record an answered exchange's latency.
    pub fn latency(&mut self, d: Duration) {
        if self.latencies.len() == SAMPLES {
            self.latencies.pop_front();
        }
        self.latencies.push_back(d);
    }

    /// The `q` quantile (0..=1) of recent latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.latencies.iter().copied().collect();
        sorted.sort();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[index].as_secs_f64() * 1000.0)
    }

    fn to_json(&self) -> serde_json::Value {
        let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        json!({
            "online": self.online,
            "polls": self.polls,
            "requests": self.requests,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "exceptions": self.exceptions.iter().map(|(k, v)| (format!("0x{k:02x}"), json!(v))).collect::<serde_json::Map<_, _>>(),
            "stray_frames": self.stray_frames,
            "latency_ms_p50": round(self.quantile_ms(0.5)),
            "latency_ms_p99": round(self.quantile_ms(0.99)),
            "last_error": self.last_error,
        })
    }
}

/// The bus's counters.
#[derive(Debug)]
pub struct BusHealth {
    /// Per device, by name.
    pub devices: BTreeMap<String, DeviceHealth>,
    /// Whether the port/connection is open.
    pub connected: bool,
    /// Times it was (re)opened.
    pub opens: u64,
    /// Last open error.
    pub open_error: Option<String>,
    /// RTU: the kernel's UART error counters of the port (None for TCP).
    pub uart: Option<crate::uart::KernelCounters>,
    busy: Duration,
    window_start: Instant,
    utilisation: f64,
}

impl BusHealth {
    /// Counters for `devices`.
    pub fn new<'a>(devices: impl Iterator<Item = &'a str>) -> Self {
        BusHealth {
            devices: devices
                .map(|d| (d.to_string(), DeviceHealth::default()))
                .collect(),
            connected: false,
            opens: 0,
            open_error: None,
            uart: None,
            busy: Duration::ZERO,
            window_start: Instant::now(),
            utilisation: 0.0,
        }
    }

    /// A reload's device list: counters of devices that stay are kept, others dropped.
    pub fn retain_devices<'a>(&mut self, devices: impl Iterator<Item = &'a str>) {
        let mut old = std::mem::take(&mut self.devices);
        self.devices = devices
            .map(|d| (d.to_string(), old.remove(d).unwrap_or_default()))
            .collect();
    }

    /// The wire was busy for `d` (an exchange, including waiting for its reply).
    pub fn busy(&mut self, d: Duration) {
        self.busy += d;
    }

    /// Close the utilisation window ending `now`.
    pub fn roll(&mut self, now: Instant) {
        let span = now.duration_since(self.window_start);
        if !span.is_zero() {
            self.utilisation = (self.busy.as_secs_f64() / span.as_secs_f64()).min(1.0);
        }
        self.busy = Duration::ZERO;
        self.window_start = now;
    }

    /// The status document.
    pub fn to_json(&self, bus: &str) -> String {
        let mut doc = json!({
            "bus": bus,
            "connected": self.connected,
            "opens": self.opens,
            "open_error": self.open_error,
            "utilisation": (self.utilisation * 10_000.0).round() / 10_000.0,
            "devices": self.devices.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
            "ts": crate::timestamp::rfc3339(std::time::SystemTime::now()),
        });
        if let Some(uart) = &self.uart {
            doc["uart"] = uart.to_json();
        }
        doc.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_a_bounded_ring() {
        let mut d = DeviceHealth::default();
        assert_eq!(d.quantile_ms(0.5), None);
        for ms in 1..=1000u64 {
            d.latency(Duration::from_millis(ms));
        }
        // Only the last 256 samples (745..=1000 ms) are kept.
        assert_eq!(d.quantile_ms(0.0), Some(745.0));
        assert_eq!(d.quantile_ms(0.5), Some(873.0));
        assert_eq!(d.quantile_ms(0.99), Some(997.0));
    }

    #[test]
    fn utilisation_is_busy_time_over_the_window() {
        let mut b = BusHealth::new(["a"].into_iter());
        let start = b.window_start;
        b.busy(Duration::from_millis(250));
        b.roll(start + Duration::from_secs(1));
        let doc: serde_json::Value = serde_json::from_str(&b.to_json("plant")).expect("JSON");
        assert_eq!(doc["utilisation"], 0.25);
        assert_eq!(doc["devices"]["a"]["timeouts"], 0);
        assert!(doc.get("uart").is_none(), "a TCP bus has no UART: {doc}");
        b.uart = Some(crate::uart::KernelCounters::new(std::path::Path::new(
            "/dev/ttyUSB0",
        )));
        let doc: serde_json::Value = serde_json::from_str(&b.to_json("plant")).expect("JSON");
        assert_eq!(
            doc["uart"],
            serde_json::Value::Null,
            "not opened yet: {doc}"
        );
    }
}
