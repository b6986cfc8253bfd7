//! The wire of one bus: a Modbus TCP connection or an RTU serial port, and one
//! exchange (request → reply) at a time over it. RTU keeps the 3.5-character silence
//! before each frame, clears the input before sending and after a timeout (a late
//! reply can never be taken for the next one), and skips frames from another unit;
//! TCP numbers its transactions and skips replies to earlier ones. It never retries:
//! the scheduler decides that.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};

use super::config::{ModbusConfig, Parity, Rs485Config, TransportKind};
use super::direction::Direction;
use super::frame::{self, FrameError, Request, Response};
use crate::uart;

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// No (complete) reply within the timeout.
    Timeout,
    /// A reply arrived and was wrong: exception, CRC, mismatch.
    Frame(FrameError),
    /// The port or connection failed: it is closed and must be reopened.
    Io(io::Error),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("timeout"),
            ExchangeError::Frame(e) => e.fmt(f),
            ExchangeError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// How to open the bus.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port`.
    Tcp(String),
    /// A serial device and its line settings.
    Rtu {
        /// Device path.
        path: PathBuf,
        /// Bits per second.
        baud: u32,
        /// Parity.
        parity: Parity,
        /// 7 or 8.
        data_bits: u8,
        /// 1 or 2.
        stop_bits: u8,
        /// RS-485 direction control.
        rs485: Rs485Config,
    },
}

impl Endpoint {
    /// The endpoint of a validated bus.
    pub fn of(bus: &ModbusConfig) -> Endpoint {
        match bus.transport {
            TransportKind::Tcp => Endpoint::Tcp(bus.address.clone().unwrap_or_default()),
            TransportKind::Rtu => Endpoint::Rtu {
                path: bus.port.clone().unwrap_or_default(),
                baud: bus.baud,
                parity: bus.parity,
                data_bits: bus.data_bits,
                stop_bits: bus.stop_bits,
                rs485: bus.rs485,
            },
        }
    }

    /// Time on the wire of one character (start, data, parity, stop bits); zero for TCP.
    pub fn char_time(&self) -> Duration {
        match self {
            Endpoint::Tcp(_) => Duration::ZERO,
            Endpoint::Rtu {
                baud,
                parity,
                data_bits,
                stop_bits,
                ..
            } => {
                let bits = 1
                    + u32::from(*data_bits)
                    + u32::from(*stop_bits)
                    + u32::from(*parity != Parity::None);
                Duration::from_nanos(u64::from(bits) * 1_000_000_000 / u64::from((*baud).max(1)))
            }
        }
    }

    /// The silent interval between RTU frames: 3.5 characters, 1.75 ms above 19200 baud.
    pub fn silence(&self) -> Duration {
        match self {
            Endpoint::Rtu { baud, .. } if *baud > 19_200 => Duration::from_micros(1750),
            _ => self.char_time() * 7 / 2,
        }
    }

    /// Where it is, for log lines.
    pub fn label(&self) -> String {
        match self {
            Endpoint::Tcp(a) => a.clone(),
            Endpoint::Rtu { path, .. } => path.display().to_string(),
        }
    }
}

/// An open bus.
pub enum Link {
    /// Modbus TCP.
    Tcp {
        /// The connection.
        stream: TcpStream,
        /// Next transaction id.
        next: u16,
    },
    /// Modbus RTU.
    Rtu {
        /// The port.
        port: SerialStream,
        /// Silent interval.
        silence: Duration,
        /// Time per character.
        char_time: Duration,
        /// End of the last frame on the wire.
        quiet_since: Instant,
        /// RTS switching of an RS-485 transceiver.
        direction: Direction,
    },
}

impl Link {
    /// Open (connect, or open the device and set the line).
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> io::Result<Link> {
        match endpoint {
            Endpoint::Tcp(address) => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(address.as_str()))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                stream.set_nodelay(true)?;
                Ok(Link::Tcp { stream, next: 1 })
            }
            Endpoint::Rtu {
                path,
                baud,
                parity,
                data_bits,
                stop_bits,
                rs485,
            } => {
                let port = uart::open(&uart::LineSettings {
                    path,
                    baud: *baud,
                    parity: match parity {
                        Parity::None => uart::Parity::None,
                        Parity::Even => uart::Parity::Even,
                        Parity::Odd => uart::Parity::Odd,
                    },
                    data_bits: *data_bits,
                    stop_bits: *stop_bits,
                    flow_control: uart::FlowControl::None,
                })?;
                port.clear(ClearBuffer::All).map_err(io::Error::from)?;
                Ok(Link::Rtu {
                    port,
                    silence: endpoint.silence(),
                    char_time: endpoint.char_time(),
                    quiet_since: Instant::now(),
                    direction: Direction::new(*rs485, path.display().to_string()),
                })
            }
        }
    }

    /// The serial port of an RTU bus (its kernel counters are read from it).
    pub fn serial_port(&self) -> Option<&SerialStream> {
        match self {
            Link::Rtu { port, .. } => Some(port),
            Link::Tcp { .. } => None,
        }
    }

    /// Send `request` to `unit` and wait up to `timeout` for its reply. Replies to
    /// other units or earlier transactions are skipped and counted in `stray`.
    pub async fn exchange(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
        stray: &mut u64,
    ) -> Result<Response, ExchangeError> {
        match self {
            Link::Tcp { stream, next } => {
                let transaction = *next;
                *next = next.wrapping_add(1);
                let adu = frame::tcp_frame(transaction, unit, &request.pdu());
                stream.write_all(&adu).await.map_err(ExchangeError::Io)?;
                let deadline = Instant::now() + timeout;
                loop {
                    let mut header = [0u8; 7];
                    read_exact_by(stream, &mut header, deadline).await?;
                    // From here on a failure leaves the stream mid-frame: only a new
                    // connection is in sync again, so it is reported as an I/O error.
                    let (tid, from, len) =
                        frame::mbap(&header).map_err(|e| desync(&e.to_string()))?;
                    let mut pdu = vec![0u8; len];
                    read_exact_by(stream, &mut pdu, deadline)
                        .await
                        .map_err(|e| desync(&format!("reply cut short: {e}")))?;
                    if tid != transaction || from != unit {
                        *stray += 1;
                        continue;
                    }
                    return request.parse_response(&pdu).map_err(ExchangeError::Frame);
                }
            }
            Link::Rtu {
                port,
                silence,
                char_time,
                quiet_since,
                direction,
            } => {
                tokio::time::sleep_until(*quiet_since + *silence).await;
                port.clear(ClearBuffer::Input)
                    .map_err(|e| ExchangeError::Io(e.into()))?;
                let adu = frame::rtu_frame(unit, &request.pdu());
                direction.before_send(port).await;
                let written = Instant::now();
                port.write_all(&adu).await.map_err(ExchangeError::Io)?;
                let on_wire = *char_time * adu.len() as u32;
                direction.after_send(port, written, on_wire).await;
                let deadline = Instant::now().max(written + on_wire) + timeout;
                let result = rtu_reply(port, unit, request, deadline, stray).await;
                if matches!(
                    result,
                    Err(ExchangeError::Timeout | ExchangeError::Frame(FrameError::Crc))
                ) {
                    // Whatever is still coming belongs to this failed exchange.
                    let _ = port.clear(ClearBuffer::Input);
                }
                *quiet_since = Instant::now();
                result
            }
        }
    }
}

fn desync(why: &str) -> ExchangeError {
    ExchangeError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Modbus TCP stream out of sync ({why}); reconnecting"),
    ))
}

async fn read_exact_by<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ExchangeError> {
    match timeout_at(deadline, reader.read_exact(buf)).await {
        Err(_) => Err(ExchangeError::Timeout),
        Ok(Err(e)) => Err(ExchangeError::Io(e)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Read RTU frames until one from `unit` is complete (others are skipped).
async fn rtu_reply(
    port: &mut SerialStream,
    unit: u8,
    request: &Request,
    deadline: Instant,
    stray: &mut u64,
) -> Result<Response, ExchangeError> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(len) = frame::rtu_reply_len(&buf) {
            if buf.len() >= len {
                let result = frame::rtu_check(unit, &buf[..len]);
                match result {
                    Ok(pdu) => return request.parse_response(pdu).map_err(ExchangeError::Frame),
                    Err(FrameError::Mismatch(_)) => {
                        *stray += 1;
                        buf.drain(..len);
                        continue;
                    }
                    Err(e) => return Err(ExchangeError::Frame(e)),
                }
            }
        }
        if buf.len() > 512 {
            return Err(ExchangeError::Frame(FrameError::Mismatch(
                "reply longer than any Modbus frame".into(),
            )));
        }
        match timeout_at(deadline, port.read(&mut chunk)).await {
            Err(_) => return Err(ExchangeError::Timeout),
            Ok(Err(e)) => return Err(ExchangeError::Io(e)),
            Ok(Ok(0)) => return Err(ExchangeError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
