//! The pin seam: [`PinBackend`] is all the GPIO adapter asks of hardware (claim an
//! input with its pull and watch its edges, read its level, claim an output and set
//! its level, release a pin). `rppal` implements it on a Raspberry Pi (feature `gpio`);
//! [`FakePins`] implements it in memory so that debounce, edge selection, counting,
//! timed outputs and the safe state are tested on any machine, through the real broker;
//! [`Unavailable`] stands in when the build has no GPIO support. Levels here are
//! electrical (`true` is high); inversion is the adapter's business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::Pull;

/// A level change seen on an input (electrical: `true` is high).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeEvent {
    /// The level after the change.
    pub level: bool,
    /// When it happened.
    pub at: Instant,
}

/// What a pin backend provides. Calls are short and never block on the pin's state.
pub trait PinBackend: Send + Sync + 'static {
    /// Claim `pin` as an input with `pull`, and send every level change to `edges`
    /// (dropped when `edges` is full: the adapter re-reads the level once it settles).
    fn input(&self, pin: u8, pull: Pull, edges: mpsc::Sender<EdgeEvent>) -> Result<(), String>;
    /// Current level of a claimed pin.
    fn read(&self, pin: u8) -> Result<bool, String>;
    /// Claim `pin` as an output driven to `level` at once.
    fn output(&self, pin: u8, level: bool) -> Result<(), String>;
    /// Drive a claimed output.
    fn write(&self, pin: u8, level: bool) -> Result<(), String>;
    /// Release `pin` (an output keeps its last level).
    fn release(&self, pin: u8);
}

/// The backend of builds without GPIO support: every claim fails and says why.
#[derive(Debug, Default)]
pub struct Unavailable;

const NOT_BUILT: &str = "this tollgate was built without GPIO support (cargo feature \"gpio\")";

impl PinBackend for Unavailable {
    fn input(&self, _: u8, _: Pull, _: mpsc::Sender<EdgeEvent>) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    fn read(&self, _: u8) -> Result<bool, String> {
        Err(NOT_BUILT.into())
    }
    fn output(&self, _: u8, _: bool) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    fn write(&self, _: u8, _: bool) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    fn release(&self, _: u8) {}
}

/// The backend for the gateway's own `[gpio]` section (`backend = "rppal"`): the Pi's
/// GPIO, opened on the first claim (building components, `tollgate check` included,
/// touches nothing) and shared by every pin for the life of the process.
pub fn default_backend() -> Arc<dyn PinBackend> {
    Arc::new(Pi)
}

/// The process's one GPIO backend, opened on first use.
struct Pi;

impl Pi {
    fn get() -> &'static dyn PinBackend {
        static BACKEND: std::sync::OnceLock<Box<dyn PinBackend>> = std::sync::OnceLock::new();
        BACKEND
            .get_or_init(|| {
                #[cfg(feature = "gpio")]
                {
                    match super::rppal::Rppal::new() {
                        Ok(b) => Box::new(b) as Box<dyn PinBackend>,
                        Err(e) => Box::new(Failed(e)),
                    }
                }
                #[cfg(not(feature = "gpio"))]
                {
                    Box::new(Unavailable)
                }
            })
            .as_ref()
    }
}

impl PinBackend for Pi {
    fn input(&self, pin: u8, pull: Pull, edges: mpsc::Sender<EdgeEvent>) -> Result<(), String> {
        Pi::get().input(pin, pull, edges)
    }
    fn read(&self, pin: u8) -> Result<bool, String> {
        Pi::get().read(pin)
    }
    fn output(&self, pin: u8, level: bool) -> Result<(), String> {
        Pi::get().output(pin, level)
    }
    fn write(&self, pin: u8, level: bool) -> Result<(), String> {
        Pi::get().write(pin, level)
    }
    fn release(&self, pin: u8) {
        Pi::get().release(pin)
    }
}

/// A backend that could not start (no /dev/gpiomem, not a Pi): every claim says why.
#[derive(Debug)]
pub struct Failed(pub String);

impl PinBackend for Failed {
    fn input(&self, _: u8, _: Pull, _: mpsc::Sender<EdgeEvent>) -> Result<(), String> {
        Err(self.0.clone())
    }
    fn read(&self, _: u8) -> Result<bool, String> {
        Err(self.0.clone())
    }
    fn output(&self, _: u8, _: bool) -> Result<(), String> {
        Err(self.0.clone())
    }
    fn write(&self, _: u8, _: bool) -> Result<(), String> {
        Err(self.0.clone())
    }
    fn release(&self, _: u8) {}
}

#[derive(Debug, Default)]
struct FakePin {
    /// Claimed as input (with its pull) or output.
    mode: Option<Result<Pull, ()>>,
    level: bool,
    edges: Option<mpsc::Sender<EdgeEvent>>,
    /// Every level an output was driven to, in order.
    writes: Vec<bool>,
    /// Set by a test: writes to the pin fail with this error.
    fault: Option<String>,
}

/// Pins in memory, driven by a test: [`FakePins::set`] changes an input's level (an
/// edge), [`FakePins::writes`] shows what an output was driven to.
#[derive(Debug, Default, Clone)]
pub struct FakePins {
    pins: Arc<Mutex<HashMap<u8, FakePin>>>,
}

impl FakePins {
    /// No pin claimed, every level low.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u8, FakePin>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drive input `pin` to `level` (as the outside world): an edge if it changed.
    pub fn set(&self, pin: u8, level: bool) {
        let mut pins = self.lock();
        let p = pins.entry(pin).or_default();
        if p.level != level {
            p.level = level;
            if let Some(tx) = &p.edges {
                let _ = tx.try_send(EdgeEvent {
                    level,
                    at: Instant::now(),
                });
            }
        }
    }

    /// Contact bounce: `levels` one after the other, as fast as they come.
    pub fn bounce(&self, pin: u8, levels: &[bool]) {
        for &l in levels {
            self.set(pin, l);
        }
    }

    /// Every level output `pin` was driven to (the claim's level first).
    pub fn writes(&self, pin: u8) -> Vec<bool> {
        self.lock()
            .get(&pin)
            .map(|p| p.writes.clone())
            .unwrap_or_default()
    }

    /// Make writes to output `pin` fail with `error` (a driver error, a pin taken by
    /// another process), or succeed again with `None`.
    pub fn fault(&self, pin: u8, error: Option<&str>) {
        self.lock().entry(pin).or_default().fault = error.map(str::to_string);
    }

    /// The current level of `pin`.
    pub fn level(&self, pin: u8) -> bool {
        self.lock().get(&pin).is_some_and(|p| p.level)
    }

    /// Whether `pin` is claimed, and with which pull if it is an input.
    pub fn claimed(&self, pin: u8) -> Option<Result<Pull, ()>> {
        self.lock().get(&pin).and_then(|p| p.mode)
    }
}

impl PinBackend for FakePins {
    fn input(&self, pin: u8, pull: Pull, edges: mpsc::Sender<EdgeEvent>) -> Result<(), String> {
        let mut pins = self.lock();
        let p = pins.entry(pin).or_default();
        if p.mode.is_some() {
            return Err(format!("GPIO {pin} is busy"));
        }
        p.mode = Some(Ok(pull));
        if pull == Pull::Up && p.edges.is_none() && p.writes.is_empty() {
            // An open contact with a pull-up reads high.
            p.level = true;
        }
        p.edges = Some(edges);
        Ok(())
    }

    fn read(&self, pin: u8) -> Result<bool, String> {
        Ok(self.level(pin))
    }

    fn output(&self, pin: u8, level: bool) -> Result<(), String> {
        let mut pins = self.lock();
        let p = pins.entry(pin).or_default();
        if p.mode.is_some() {
            return Err(format!("GPIO {pin} is busy"));
        }
        p.mode = Some(Err(()));
        p.level = level;
        p.writes.push(level);
        Ok(())
    }

    fn write(&self, pin: u8, level: bool) -> Result<(), String> {
        let mut pins = self.lock();
        let p = pins
            .get_mut(&pin)
            .filter(|p| p.mode == Some(Err(())))
            .ok_or(format!("GPIO {pin} is not an output"))?;
        if let Some(e) = &p.fault {
            return Err(e.clone());
        }
        p.level = level;
        p.writes.push(level);
        Ok(())
    }

    fn release(&self, pin: u8) {
        if let Some(p) = self.lock().get_mut(&pin) {
            p.mode = None;
            p.edges = None;
        }
    }
}
