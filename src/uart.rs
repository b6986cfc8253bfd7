//! Serial ports for the field adapters: the one place a port is opened by path with its
//! line settings (Modbus RTU buses and `[[serial]]` lines both open theirs here). A leaf
//! module: it knows nothing of Modbus or line framing.

use std::io;
use std::path::Path;

use tokio_serial::{SerialPortBuilderExt, SerialStream};

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
