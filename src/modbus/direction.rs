//! RS-485 direction control through the serial port's RTS line: the transceiver's driver
//! is enabled before a frame (then `delay_before`), and released once the frame is on
//! the wire (its computed time from the write, then `delay_after`), so the device's reply
//! finds the line free. The time on the wire is computed rather than asked of the kernel
//! (`tcdrain` blocks a runtime thread for the whole frame), which is why USB adapters that
//! buffer may need a `delay_after`. A port that refuses RTS (a pty, some adapters) is
//! said once per opened port and then used without direction control; this module never
//! fails an exchange.

use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use tracing::warn;

use super::config::{Rs485Config, RtsMode};

/// Something with an RTS line (the serial port; a recording fake in tests).
pub trait RtsLine {
    /// Assert (`true`) or release (`false`) RTS.
    fn set_rts(&mut self, asserted: bool) -> Result<(), String>;
}

impl RtsLine for tokio_serial::SerialStream {
    fn set_rts(&mut self, asserted: bool) -> Result<(), String> {
        tokio_serial::SerialPort::write_request_to_send(self, asserted).map_err(|e| e.to_string())
    }
}

/// Direction control of one opened port.
#[derive(Debug)]
pub struct Direction {
    settings: Rs485Config,
    /// The port refused RTS: said once, then left alone.
    unsupported: bool,
    /// For the log line.
    port: String,
}

impl Direction {
    /// Control per `settings` of the port at `port` (for log lines).
    pub fn new(settings: Rs485Config, port: String) -> Self {
        Direction {
            settings,
            unsupported: false,
            port,
        }
    }

    /// RTS level while sending, or `None` when not switched.
    fn sending_level(&self) -> Option<bool> {
        match self.settings.rts {
            _ if self.unsupported => None,
            RtsMode::None => None,
            RtsMode::HighWhileSending => Some(true),
            RtsMode::LowWhileSending => Some(false),
        }
    }

    fn set(&mut self, line: &mut impl RtsLine, level: bool) {
        if let Err(e) = line.set_rts(level) {
            self.unsupported = true;
            warn!(port = %self.port, error = %e, "The serial port refuses to set RTS: RS-485 direction control ([modbus.rs485] rts) is off for this port; frames are sent without it.");
        }
    }

    /// Before writing a frame: enable the driver and wait `delay_before`.
    pub async fn before_send(&mut self, line: &mut impl RtsLine) {
        if let Some(level) = self.sending_level() {
            self.set(line, level);
            if !self.unsupported && !self.settings.delay_before.is_zero() {
                sleep(self.settings.delay_before).await;
            }
        }
    }

    /// After writing a frame at `written` that takes `on_wire` to send: wait until it is
    /// out plus `delay_after`, then release the driver to receive.
    pub async fn after_send(
        &mut self,
        line: &mut impl RtsLine,
        written: Instant,
        on_wire: Duration,
    ) {
        if let Some(level) = self.sending_level() {
            sleep_until(written + on_wire + self.settings.delay_after).await;
            self.set(line, !level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each RTS change with the (paused) time since the start.
    struct Fake {
        start: Instant,
        changes: Vec<(bool, Duration)>,
        refuse: bool,
        attempts: u32,
    }

    impl Fake {
        fn new(refuse: bool) -> Self {
            Fake {
                start: Instant::now(),
                changes: Vec::new(),
                refuse,
                attempts: 0,
            }
        }
    }

    impl RtsLine for Fake {
        fn set_rts(&mut self, asserted: bool) -> Result<(), String> {
            self.attempts += 1;
            if self.refuse {
                return Err("Inappropriate ioctl for device".into());
            }
            self.changes.push((asserted, self.start.elapsed()));
            Ok(())
        }
    }

    fn settings(rts: RtsMode, before_ms: u64, after_ms: u64) -> Rs485Config {
        Rs485Config {
            rts,
            delay_before: Duration::from_millis(before_ms),
            delay_after: Duration::from_millis(after_ms),
        }
    }

    /// One frame as the transport sends it: returns when the byte write happened.
    async fn frame(direction: &mut Direction, line: &mut Fake, on_wire: Duration) -> Duration {
        direction.before_send(line).await;
        let written = Instant::now();
        let at = line.start.elapsed();
        direction.after_send(line, written, on_wire).await;
        at
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_is_on_from_delay_before_the_frame_until_delay_after_it() {
        let ms = Duration::from_millis;
        let mut line = Fake::new(false);
        let mut d = Direction::new(settings(RtsMode::HighWhileSending, 2, 3), "fake".into());
        // About 8 bytes at 9600 8E1 (whole milliseconds: tokio's timer resolution).
        let on_wire = ms(9);
        let written = frame(&mut d, &mut line, on_wire).await;
        assert_eq!(written, ms(2), "bytes leave delay_before after RTS");
        assert_eq!(
            line.changes,
            vec![(true, ms(0)), (false, ms(2) + on_wire + ms(3))]
        );
        let mut line = Fake::new(false);
        let mut d = Direction::new(settings(RtsMode::LowWhileSending, 0, 0), "fake".into());
        frame(&mut d, &mut line, on_wire).await;
        assert_eq!(line.changes, vec![(false, ms(0)), (true, on_wire)]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_rts_mode_leaves_the_line_alone() {
        let mut line = Fake::new(false);
        let mut d = Direction::new(settings(RtsMode::None, 0, 0), "fake".into());
        let written = frame(&mut d, &mut line, Duration::from_millis(5)).await;
        assert_eq!((line.attempts, written), (0, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_refuses_rts_is_tried_once_and_then_used_without() {
        let mut line = Fake::new(true);
        let mut d = Direction::new(settings(RtsMode::HighWhileSending, 2, 3), "fake".into());
        let first = frame(&mut d, &mut line, Duration::from_millis(5)).await;
        let second = frame(&mut d, &mut line, Duration::from_millis(5)).await;
        assert_eq!(line.attempts, 1, "one refusal, then no more attempts");
        // No delays either: without the driver switched they would only slow the bus.
        assert_eq!((first, second), (Duration::ZERO, Duration::ZERO));
    }
}
