//! A digital input at run time: edges from the backend start a settle timer; when the
//! level has held for `debounce` it is read again and, if it differs from the published
//! state, becomes the new state (a bounce that returns to the old level is only
//! counted as a glitch). The selected changes (`edge`) are published retained on
//! `<prefix>/<name>` as `on`/`off` and counted on `<prefix>/<name>/count`; the state is
//! also published every `interval` when set. The `$SYS` document has the counters.
//!
//! A pulse count goes on from where it was: at start the input reads its own retained
//! count (the broker's retained store outlives restarts when `data_dir` persists it)
//! and counts on from it. A count published by anyone but the adapter is not taken,
//! nor one that is not a number; then, or with no retained count, it starts at 0.

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
use crate::auth::Identity;
use crate::broker::codec::{v5, QoS};
use crate::broker::InternalOptions;
use crate::component::{Connector, Health, HealthReporter};
use crate::telemetry::limit::LogStr;

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

/// The count to go on from: the retained message on `count_topic`, read under the
/// adapter's `identity` (so the ACL must let it read its count topic), if the adapter
/// published it (or the broker restored it from disk, where publishers are not kept).
pub(super) async fn restored_count(
    broker: &dyn Connector,
    identity: &Identity,
    count_topic: &str,
    input: &str,
) -> u64 {
    let reader = Identity {
        client_id: format!("{}:restore", identity.client_id),
        ..identity.clone()
    };
    let mut client = match broker.connect_internal(InternalOptions::new(reader)).await {
        Ok(c) => c,
        Err(reason) => {
            warn!(%input, %reason, "GPIO pulse count starts at 0: no in-process connection to read the retained count.");
            return 0;
        }
    };
    let found = match client.subscribe(count_topic, QoS::AtMostOnce).await {
        Ok(v5::SubscribeReasonCode::Success(_)) => {
            broker.settled().await;
            // Settled: a retained count is in the client's queue now, or there is none.
            tokio::task::unconstrained(async {
                tokio::select! {
                    biased;
                    d = client.recv() => d,
                    _ = std::future::ready(()) => None,
                }
            })
            .await
        }
        other => {
            warn!(%input, topic = %count_topic, result = ?other, "GPIO pulse count starts at 0: the ACL does not let the adapter read its count topic.");
            None
        }
    };
    client.disconnect().await;
    let Some(d) = found else {
        info!(%input, topic = %count_topic, "GPIO pulse count starts at 0: no retained count.");
        return 0;
    };
    let own = d
        .publisher
        .as_deref()
        .is_none_or(|p| p.username == identity.username);
    let value = std::str::from_utf8(&d.payload)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match (own, value) {
        (true, Some(n)) => {
            info!(%input, count = n, "GPIO pulse count restored from its retained topic.");
            n
        }
        (false, _) => {
            warn!(%input, topic = %count_topic, publisher = ?d.publisher.as_deref().map(|p| &p.client_id), "GPIO pulse count starts at 0: the retained count was not published by the adapter (grant write on the count topic to the adapter only).");
            0
        }
        (true, None) => {
            warn!(%input, topic = %count_topic, payload = %LogStr(&String::from_utf8_lossy(&d.payload[..d.payload.len().min(64)])), "GPIO pulse count starts at 0: the retained count is not a number.");
            0
        }
    }
}

/// Run input `config` until `shutdown`, counting pulses on from `count`.
pub(super) async fn run(
    config: InputConfig,
    topic: String,
    count: u64,
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
    let mut c = Counters {
        count,
        ..Counters::default()
    };
    out.data(&topic, word(state), true).await;
    if config.count {
        out.data(&count_topic, &c.count.to_string(), true).await;
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
