//! The Raspberry Pi backend (feature `gpio`): rppal's `Gpio` (the GPIO character device
//! and /dev/gpiomem). Only the rppal calls live here; everything they feed is the
//! adapter's tested logic. Edge interrupts run on rppal's thread and are handed to the
//! adapter's bounded channel without waiting.

use std::collections::HashMap;
use std::sync::Mutex;

use rppal::gpio::{Gpio, InputPin, Level, OutputPin, Trigger};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backend::{EdgeEvent, PinBackend};
use super::config::Pull;

enum Claimed {
    Input(InputPin),
    Output(OutputPin),
}

/// rppal's GPIO.
pub struct Rppal {
    gpio: Gpio,
    pins: Mutex<HashMap<u8, Claimed>>,
}

impl Rppal {
    /// Open the Pi's GPIO (fails off a Pi, or without access to /dev/gpiomem).
    pub fn new() -> Result<Rppal, String> {
        let gpio = Gpio::new().map_err(|e| format!("GPIO cannot be opened: {e}"))?;
        Ok(Rppal {
            gpio,
            pins: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u8, Claimed>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PinBackend for Rppal {
    fn input(&self, pin: u8, pull: Pull, edges: mpsc::Sender<EdgeEvent>) -> Result<(), String> {
        let p = self.gpio.get(pin).map_err(|e| format!("GPIO {pin}: {e}"))?;
        let mut input = match pull {
            Pull::None => p.into_input(),
            Pull::Up => p.into_input_pullup(),
            Pull::Down => p.into_input_pulldown(),
        };
        // Debounce is the adapter's (it re-reads the level once settled): no kernel debounce.
        input
            .set_async_interrupt(Trigger::Both, None, move |event| {
                let level = event.trigger == Trigger::RisingEdge;
                let _ = edges.try_send(EdgeEvent {
                    level,
                    at: Instant::now(),
                });
            })
            .map_err(|e| format!("GPIO {pin} interrupts: {e}"))?;
        self.lock().insert(pin, Claimed::Input(input));
        Ok(())
    }

    fn read(&self, pin: u8) -> Result<bool, String> {
        match self.lock().get(&pin) {
            Some(Claimed::Input(p)) => Ok(p.read() == Level::High),
            Some(Claimed::Output(p)) => Ok(p.is_set_high()),
            None => Err(format!("GPIO {pin} is not claimed")),
        }
    }

    fn output(&self, pin: u8, level: bool) -> Result<(), String> {
        let p = self.gpio.get(pin).map_err(|e| format!("GPIO {pin}: {e}"))?;
        let mut output = if level {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        // The safe state written on shutdown must stay after the process ends.
        output.set_reset_on_drop(false);
        self.lock().insert(pin, Claimed::Output(output));
        Ok(())
    }

    fn write(&self, pin: u8, level: bool) -> Result<(), String> {
        match self.lock().get_mut(&pin) {
            Some(Claimed::Output(p)) => {
                p.write(if level { Level::High } else { Level::Low });
                Ok(())
            }
            _ => Err(format!("GPIO {pin} is not an output")),
        }
    }

    fn release(&self, pin: u8) {
        self.lock().remove(&pin);
    }
}
