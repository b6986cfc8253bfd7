//! The one place in tollgate with `unsafe` code (the gateway crate forbids it): the
//! kernel's per-UART error counters, read with the `TIOCGICOUNT` ioctl into
//! `struct serial_icounter_struct` (linux/serial.h). Each `unsafe` block is one system
//! call or one borrow of a descriptor, with the reason it is sound beside it. It must
//! never hand out a descriptor it does not own for longer than the borrow of its owner,
//! and never let the kernel write past the struct it was given.
//!
//! Drivers without counters (ptys, USB adapters whose driver keeps none) answer
//! `ENOTTY` or `EINVAL`: [`is_unsupported`] tells those apart from a port that failed.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod allocator;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::c_int;

/// `struct serial_icounter_struct` exactly as linux/serial.h declares it: 20 `int`s.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SerialIcounterStruct {
    cts: c_int,
    dsr: c_int,
    rng: c_int,
    dcd: c_int,
    rx: c_int,
    tx: c_int,
    frame: c_int,
    overrun: c_int,
    parity: c_int,
    brk: c_int,
    buf_overrun: c_int,
    reserved: [c_int; 9],
}

/// The counters a UART driver keeps since it was loaded (not since the port was opened).
/// The kernel counts in `int`s that wrap; they are given here as `u32` so that
/// [`ICount::since`] can subtract across a wrap.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ICount {
    /// CTS changes.
    pub cts: u32,
    /// DSR changes.
    pub dsr: u32,
    /// Ring indicator changes.
    pub rng: u32,
    /// DCD changes.
    pub dcd: u32,
    /// Characters received.
    pub rx: u32,
    /// Characters sent.
    pub tx: u32,
    /// Framing errors (a stop bit was not where it should be: wrong baud or noise).
    pub frame: u32,
    /// Hardware overruns (the UART's FIFO filled before the driver read it).
    pub overrun: u32,
    /// Parity errors.
    pub parity: u32,
    /// Breaks received.
    pub brk: u32,
    /// Characters lost because the tty's buffer was full (software overrun).
    pub buf_overrun: u32,
}

impl ICount {
    /// What was counted between `earlier` and `self` (wrapping, like the kernel's ints).
    pub fn since(&self, earlier: &ICount) -> ICount {
        ICount {
            cts: self.cts.wrapping_sub(earlier.cts),
            dsr: self.dsr.wrapping_sub(earlier.dsr),
            rng: self.rng.wrapping_sub(earlier.rng),
            dcd: self.dcd.wrapping_sub(earlier.dcd),
            rx: self.rx.wrapping_sub(earlier.rx),
            tx: self.tx.wrapping_sub(earlier.tx),
            frame: self.frame.wrapping_sub(earlier.frame),
            overrun: self.overrun.wrapping_sub(earlier.overrun),
            parity: self.parity.wrapping_sub(earlier.parity),
            brk: self.brk.wrapping_sub(earlier.brk),
            buf_overrun: self.buf_overrun.wrapping_sub(earlier.buf_overrun),
        }
    }
}

impl From<SerialIcounterStruct> for ICount {
    fn from(raw: SerialIcounterStruct) -> Self {
        // `as u32` keeps the bits: a wrapped (negative) int is the same count modulo 2^32.
        ICount {
            cts: raw.cts as u32,
            dsr: raw.dsr as u32,
            rng: raw.rng as u32,
            dcd: raw.dcd as u32,
            rx: raw.rx as u32,
            tx: raw.tx as u32,
            frame: raw.frame as u32,
            overrun: raw.overrun as u32,
            parity: raw.parity as u32,
            brk: raw.brk as u32,
            buf_overrun: raw.buf_overrun as u32,
        }
    }
}

/// The UART counters of the tty open on `fd`.
///
/// Errors: `ENOTTY`/`EINVAL` when the driver keeps none (see [`is_unsupported`]), or
/// what the port answers (`EIO` once a USB adapter is gone).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn serial_icount(fd: BorrowedFd<'_>) -> io::Result<ICount> {
    let mut raw = SerialIcounterStruct::default();
    // SAFETY: `fd` is a live descriptor for the whole call (the BorrowedFd's lifetime).
    // TIOCGICOUNT writes one `struct serial_icounter_struct` through the pointer and
    // nothing else; `raw` is that struct (repr(C), 20 ints, size checked in the tests),
    // exclusively borrowed and valid for writes for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGICOUNT,
            &mut raw as *mut SerialIcounterStruct,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(raw.into())
}

/// Not Linux: there is no TIOCGICOUNT.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn serial_icount(_fd: BorrowedFd<'_>) -> io::Result<ICount> {
    Err(io::Error::from_raw_os_error(libc::ENOTTY))
}

/// The UART counters of an open serial port.
pub fn port_icount(port: &tokio_serial::SerialStream) -> io::Result<ICount> {
    // SAFETY: a `SerialStream` owns its descriptor from open to drop and never closes it
    // while it lives, so the descriptor stays open for as long as `port` is borrowed,
    // which bounds the BorrowedFd's lifetime.
    let fd = unsafe { BorrowedFd::borrow_raw(port.as_raw_fd()) };
    serial_icount(fd)
}

/// Whether `error` means "no UART counters here" rather than a failing port: the
/// driver keeps none (a pty, some USB serial drivers: ENOTTY, EINVAL, EOPNOTSUPP), or the
/// ioctl is not known at all (ENOSYS: qemu-user, which the cross tests run under).
pub fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    ) || error.kind() == io::ErrorKind::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn the_struct_is_the_kernels_twenty_ints() {
        // linux/serial.h: int cts, dsr, rng, dcd, rx, tx, frame, overrun, parity, brk,
        // buf_overrun, reserved[9]; an int is 4 bytes on every Linux target.
        assert_eq!(std::mem::size_of::<SerialIcounterStruct>(), 20 * 4);
        assert_eq!(std::mem::size_of::<SerialIcounterStruct>(), 80);
        assert_eq!(std::mem::align_of::<SerialIcounterStruct>(), 4);
    }

    #[test]
    fn deltas_wrap_like_the_kernels_ints() {
        let earlier = ICount::from(SerialIcounterStruct {
            overrun: i32::MAX,
            frame: -1,
            ..Default::default()
        });
        let later = ICount::from(SerialIcounterStruct {
            overrun: i32::MIN.wrapping_add(2),
            frame: 4,
            ..Default::default()
        });
        let d = later.since(&earlier);
        assert_eq!(d.overrun, 3);
        assert_eq!(d.frame, 5);
        assert_eq!(d.parity, 0);
    }

    #[test]
    fn a_file_that_is_no_tty_is_unsupported() {
        let null = File::open("/dev/null").expect("/dev/null");
        let e = serial_icount(null.as_fd()).expect_err("/dev/null keeps no UART counters");
        assert!(is_unsupported(&e), "{e:?}");
    }

    #[test]
    fn a_pty_is_unsupported() {
        let Ok(master) = OpenOptions::new().read(true).write(true).open("/dev/ptmx") else {
            println!("skipped: /dev/ptmx does not open here");
            return;
        };
        let e = serial_icount(master.as_fd()).expect_err("a pty keeps no UART counters");
        assert!(is_unsupported(&e), "{e:?}");
    }

    #[test]
    fn a_closed_descriptor_is_a_failure_not_unsupported() {
        let e = io::Error::from_raw_os_error(libc::EIO);
        assert!(!is_unsupported(&e));
        assert!(is_unsupported(&io::Error::from_raw_os_error(libc::ENOTTY)));
        assert!(is_unsupported(&io::Error::from_raw_os_error(libc::EINVAL)));
    }

    /// The 8250 driver keeps counters: `/dev/ttyS0` (present on most VMs) reads them.
    /// Opening it needs root or the dialout group; skipped with the reason otherwise.
    #[test]
    fn ttys0_answers_with_real_counters() {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open("/dev/ttyS0")
        {
            Ok(f) => f,
            Err(e) => {
                println!("skipped: /dev/ttyS0 does not open here: {e}");
                return;
            }
        };
        match serial_icount(file.as_fd()) {
            Ok(count) => println!("/dev/ttyS0 counters: {count:?}"),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                // The 8250 driver registers ttyS0..3 even without a UART behind them.
                println!("skipped: /dev/ttyS0 has no UART behind it: {e}");
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                println!("skipped: the ioctl is not passed through here (qemu-user): {e}");
            }
            Err(e) => panic!("the 8250 driver keeps counters, got {e:?}"),
        }
    }

    #[tokio::test]
    async fn an_open_port_of_a_pty_is_unsupported() {
        // A pty pair opened the way the adapters open ports (serialport's openpty).
        let (a, _b) = match tokio_serial::SerialStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                println!("skipped: no pty pair: {e}");
                return;
            }
        };
        let e = port_icount(&a).expect_err("a pty keeps no UART counters");
        assert!(is_unsupported(&e), "{e:?}");
    }
}
