//! Capture what tracing writes, as its text format writes it, for assertions on log and
//! audit lines. One global subscriber per test binary (tracing caches per-callsite
//! interest process-wide), installed by `global`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Collected output; cheap to clone (all clones share one buffer).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }

    /// A subscriber writing into this buffer (no colours, targets shown).
    pub fn subscriber(&self, filter: &str) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .finish()
    }
}

/// The process-wide capture, installed on first use with `filter` (later calls return
/// the same buffer whatever filter they name).
pub fn global(filter: &str) -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        tracing::subscriber::set_global_default(captured.subscriber(filter))
            .expect("one global subscriber");
        captured
    })
}
