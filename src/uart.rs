//! Serial ports for the field adapters: the one place a port is opened by path with its
//! line settings (Modbus RTU buses and `[[serial]]` lines both open theirs here), and
//! where the kernel's own error counters of the UART behind it (framing, overrun,
//! parity, break, buffer overrun: `TIOCGICOUNT`, read by `tollgate-sys`) become counts
//! since the adapter started. A leaf module: it knows nothing of Modbus or line framing.
//! It must never block (the counters are one ioctl) and never repeat that a driver
//! keeps no counters (a pty, some USB adapters): that is said once per port.

use std::io;
use std::path::Path;

use serde_json::json;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tollgate_sys::ICount;
use tracing::{debug, info, warn};

/// Parity on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Flow control on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// How to open a port: its path and line settings (validated by the adapter's config).
#[derive(Debug, Clone, Copy)]
pub struct LineSettings<'a> {
    /// Device path (a by-id path survives re-enumeration).
    pub path: &'a Path,
    /// Bits per second.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// 5 to 8 (anything else is taken as 8).
    pub data_bits: u8,
    /// 1 or 2 (anything else is taken as 1).
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

/// Open the port at `line.path` with its line settings, for async reads and writes.
pub fn open(line: &LineSettings<'_>) -> io::Result<SerialStream> {
    tokio_serial::new(line.path.to_string_lossy(), line.baud)
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(match line.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .stop_bits(if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match line.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
        .map_err(io::Error::from)
}

/// Whether the port's driver keeps counters, as far as known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    /// No port opened yet.
    Unknown,
    /// The driver answers `TIOCGICOUNT`.
    Yes,
    /// It answered ENOTTY/EINVAL: a pty, or a driver without counters.
    No,
}

/// The kernel's error counters of one port as counts since the adapter started: a
/// baseline is read at each open (the kernel counts from driver load, and a USB adapter
/// plugged back may start again at 0), and each update adds what changed since the last
/// reading. New errors are logged, at most once per update (the status interval).
#[derive(Debug)]
pub struct KernelCounters {
    /// The port, for log lines.
    port: String,
    support: Support,
    /// The last reading of the port open now (None while closed or unreadable).
    last: Option<ICount>,
    /// Counted since the adapter started, over every open.
    totals: ICount,
    /// A read failed other than "unsupported" since the last open (logged once per open).
    failed: bool,
}

impl KernelCounters {
    /// Counters of the port at `port` (nothing read yet).
    pub fn new(port: &Path) -> Self {
        KernelCounters {
            port: port.display().to_string(),
            support: Support::Unknown,
            last: None,
            totals: ICount::default(),
            failed: false,
        }
    }

    /// The port was (re)opened: read the baseline.
    pub fn opened(&mut self, port: &SerialStream) {
        self.last = None;
        self.failed = false;
        self.last = self.read(port);
    }

    /// Add what the kernel counted since the last reading.
    pub fn update(&mut self, port: &SerialStream) {
        let Some(now) = self.read(port) else {
            return;
        };
        let Some(last) = self.last.replace(now) else {
            // No baseline (the first read after open failed): this one is it.
            return;
        };
        let d = now.since(&last);
        add(&mut self.totals, &d);
        if d.frame + d.overrun + d.parity + d.buf_overrun + d.brk > 0 {
            warn!(
                port = %self.port,
                frame = d.frame,
                overrun = d.overrun,
                parity = d.parity,
                brk = d.brk,
                buf_overrun = d.buf_overrun,
                "UART errors counted by the kernel since the last status (framing and parity: wrong line settings or noise; overruns: bytes lost)."
            );
        }
    }

    /// The port was closed: the next open takes a new baseline.
    pub fn closed(&mut self) {
        self.last = None;
    }

    /// Whether the driver is known to keep no counters.
    pub fn unsupported(&self) -> bool {
        self.support == Support::No
    }

    /// The counts since the adapter started, or `null` before the first open, or
    /// `"unsupported"` when the driver keeps none.
    pub fn to_json(&self) -> serde_json::Value {
        let t = &self.totals;
        match self.support {
            Support::Unknown => serde_json::Value::Null,
            Support::No => json!("unsupported"),
            Support::Yes => json!({
                "rx": t.rx,
                "tx": t.tx,
                "frame": t.frame,
                "overrun": t.overrun,
                "parity": t.parity,
                "brk": t.brk,
                "buf_overrun": t.buf_overrun,
            }),
        }
    }

    fn read(&mut self, port: &SerialStream) -> Option<ICount> {
        if self.support == Support::No {
            return None;
        }
        match tollgate_sys::port_icount(port) {
            Ok(count) => {
                self.support = Support::Yes;
                Some(count)
            }
            Err(e) if tollgate_sys::is_unsupported(&e) => {
                self.support = Support::No;
                info!(port = %self.port, reason = %e, "The port's driver keeps no UART error counters (a pty or some USB adapters); they are reported as unsupported.");
                None
            }
            Err(e) => {
                if !self.failed {
                    self.failed = true;
                    debug!(port = %self.port, error = %e, "UART error counters not readable on this open.");
                }
                None
            }
        }
    }
}

fn add(total: &mut ICount, d: &ICount) {
    total.cts = total.cts.wrapping_add(d.cts);
    total.dsr = total.dsr.wrapping_add(d.dsr);
    total.rng = total.rng.wrapping_add(d.rng);
    total.dcd = total.dcd.wrapping_add(d.dcd);
    total.rx = total.rx.wrapping_add(d.rx);
    total.tx = total.tx.wrapping_add(d.tx);
    total.frame = total.frame.wrapping_add(d.frame);
    total.overrun = total.overrun.wrapping_add(d.overrun);
    total.parity = total.parity.wrapping_add(d.parity);
    total.brk = total.brk.wrapping_add(d.brk);
    total.buf_overrun = total.buf_overrun.wrapping_add(d.buf_overrun);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_reported_before_the_first_open() {
        let k = KernelCounters::new(Path::new("/dev/ttyX"));
        assert_eq!(k.to_json(), serde_json::Value::Null);
        assert!(!k.unsupported());
    }

    #[tokio::test]
    async fn a_pty_is_unsupported_and_stays_so_across_reopens() {
        let (a, _b) = match SerialStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                println!("skipped: no pty pair: {e}");
                return;
            }
        };
        let mut k = KernelCounters::new(Path::new("/dev/pts/x"));
        k.opened(&a);
        assert!(k.unsupported());
        assert_eq!(k.to_json(), json!("unsupported"));
        k.update(&a);
        k.closed();
        k.opened(&a);
        assert_eq!(k.to_json(), json!("unsupported"));
    }

    /// The 8250 driver keeps counters: a port opened on `/dev/ttyS0` (most VMs have one;
    /// root or the dialout group) reports them. Skipped with the reason otherwise.
    #[tokio::test]
    async fn ttys0_reports_counts_since_open() {
        let line = LineSettings {
            path: Path::new("/dev/ttyS0"),
            baud: 115_200,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            flow_control: FlowControl::None,
        };
        let port = match open(&line) {
            Ok(p) => p,
            Err(e) => {
                println!("skipped: /dev/ttyS0 does not open here: {e}");
                return;
            }
        };
        let mut k = KernelCounters::new(line.path);
        k.opened(&port);
        k.update(&port);
        let doc = k.to_json();
        if !doc.is_object() {
            // null: not readable (EIO: no UART behind it); "unsupported": qemu-user.
            println!("skipped: /dev/ttyS0 opened but its counters are not readable: {doc}");
            return;
        }
        println!("/dev/ttyS0: {doc}");
        // Counts since the open: a quiet line has counted no errors in between.
        assert_eq!(doc["frame"], 0, "{doc}");
        assert_eq!(doc["parity"], 0, "{doc}");
        assert!(doc["overrun"].is_u64(), "{doc}");
    }

    #[test]
    fn totals_add_the_deltas_of_every_open() {
        let mut total = ICount::default();
        add(
            &mut total,
            &ICount {
                frame: 2,
                ..Default::default()
            },
        );
        add(
            &mut total,
            &ICount {
                frame: 3,
                overrun: 1,
                ..Default::default()
            },
        );
        assert_eq!(total.frame, 5);
        assert_eq!(total.overrun, 1);
    }
}
