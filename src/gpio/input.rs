//! A digital input at run time: edges from the backend start a settle timer; when the
//! level has held for `debounce` it is read again and, if it differs from the published
//! state, becomes the new state (a bounce that returns to the old level is only
//! counted as a glitch). The selected changes (`edge`) are published retained on
//! `<prefix>/<name>` as `on`/`off` and counted on `<prefix>/<name>/count`; the state is
//! also published every `interval` when set. The `$SYS` document has the counters.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backend::PinBackend;
use super::config::{Edge, InputConfig};
use super::Outlet;
use crate::component::{Health, HealthReporter};

/// Edges buffered between the backend and the task (more are dropped: the level is
/// read again when it settles, so only pulse counts can miss them).
const EDGE_QUEUE: usize = 1024;
/// How often the `$SYS` document is refreshed.
const SYS_INTERVAL: Duration = Duration::from_secs(10);

/// What the task counts.
#[derive(Debug, Default)]
struct Counters {
    /// Raw edges seen.
    edges: u64,
    /// Settled level changes.
    changes: u64,
    /// Edges that settled back to the published state (bounce, glitches).
    glitches: u64,
    /// The pulse counter (selected changes).
    count: u64,
}

/// `on`/`off`.
pub fn word(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Whether a change to `on` is selected by `edge`.
pub fn selected(edge: Edge, on: bool) -> bool {
    match edge {
        Edge::Both => true,
        Edge::Rising => on,
        Edge::Falling => !on,
    }
}

/// Run input `config` until `shutdown`.
pub(super) async fn run(
    config: InputConfig,
    topic: String,
    backend: Arc<dyn PinBackend>,
    out: Outlet,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let pin = config.pin as u8;
    let (tx, mut edges) = mpsc::channel(EDGE_QUEUE);
    if let Err(e) = backend.input(pin, config.pull, tx) {
        warn!(input = %config.name, pin, error = %e, "GPIO input not started.");
        health.set(Health::Failed(e));
        return;
    }
    let read = |b: &Arc<dyn PinBackend>| b.read(pin).map(|high| high != config.inverted);
    let mut state = match read(&backend) {
        Ok(on) => on,
        Err(e) => {
            warn!(input = %config.name, pin, error = %e, "GPIO input cannot be read.");
            health.set(Health::Failed(e));
            backend.release(pin);
            return;
        }
    };
    info!(input = %config.name, pin, state = word(state), "GPIO input started.");
    health.set(Health::Ok(format!("GPIO {pin} {}", word(state))));
    let count_topic = format!("{topic}/count");
    let mut c = Counters::default();
    out.data(&topic, word(state), true).await;
    if config.count {
        out.data(&count_topic, "0", true).await;
    }
    let mut settle: Option<Instant> = None;
    let mut next_interval = (!config.interval.is_zero()).then(|| Instant::now() + config.interval);
    let mut next_sys = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(edge) = edges.recv() => {
                c.edges += 1;
                settle = Some(edge.at + config.debounce);
            }
            _ = sleep_until(settle.unwrap_or_else(Instant::now)), if settle.is_some() => {
                settle = None;
                let on = match read(&backend) {
                    Ok(on) => on,
                    Err(e) => {
                        warn!(input = %config.name, pin, error = %e, "GPIO input cannot be read.");
                        continue;
                    }
                };
                if on == state {
                    c.glitches += 1;
                    out.sys(&doc(&config, state, &c)).await;
                    continue;
                }
                state = on;
                c.changes += 1;
                health.set(Health::Ok(format!("GPIO {pin} {}", word(state))));
                if selected(config.edge, on) {
                    out.data(&topic, word(on), true).await;
                    if config.count {
                        c.count += 1;
                        out.data(&count_topic, &c.count.to_string(), true).await;
                    }
                }
                out.sys(&doc(&config, state, &c)).await;
            }
            _ = sleep_until(next_interval.unwrap_or_else(Instant::now)), if next_interval.is_some() => {
                out.data(&topic, word(state), true).await;
                next_interval = Some(Instant::now() + config.interval);
            }
            _ = sleep_until(next_sys) => {
                out.sys(&doc(&config, state, &c)).await;
                next_sys = Instant::now() + SYS_INTERVAL;
            }
        }
    }
    backend.release(pin);
    out.sys(&doc(&config, state, &c)).await;
    info!(input = %config.name, pin, "GPIO input stopped.");
}

fn doc(config: &InputConfig, state: bool, c: &Counters) -> String {
    json!({
        "input": config.name,
        "pin": config.pin,
        "state": word(state),
        "edges": c.edges,
        "changes": c.changes,
        "glitches": c.glitches,
        "count": c.count,
        "ts": crate::timestamp::rfc3339(std::time::SystemTime::now()),
    })
    .to_string()
}
