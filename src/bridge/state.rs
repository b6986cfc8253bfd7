//! What a bridge shows: its link state (connected, connecting, backoff, disabled) with
//! the last error, its counters, and the outbox's, kept on a [`StatusBoard`] that the
//! running tasks write and one task publishes, retained, on
//! `$SYS/tollgate/bridge/<name>/state` as JSON. Only `tollgate:*` identities may write
//! `$SYS` (design decision 11), so that task uses its own in-process client
//! `tollgate:bridge:<name>`, whose single built-in grant is that subtree; the bridge's
//! own identity `bridge:<name>` never writes there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::outbox::Outbox;
use crate::auth::Identity;
use crate::broker::codec::QoS;
use crate::broker::InternalOptions;
use crate::component::{Connector, Health, HealthReporter};

/// How often the counters are looked at between state changes (published only when
/// they changed: counters are bumped on the message path without a notification).
const REFRESH: Duration = Duration::from_secs(1);

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Trying an address.
    Connecting,
    /// Connected; forwarding.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// Configured off, or stopped.
    Disabled,
}

impl LinkState {
    fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
            LinkState::Disabled => "disabled",
        }
    }
}

/// Counters of one bridge (the outbox keeps its own).
#[derive(Debug, Default)]
pub struct Counters {
    /// PUBLISH packets written to a cloud connection (QoS 0, status messages and resends
    /// included), counted when rumqttc encodes them for the socket: one written just
    /// before a connection broke counts, though the cloud may not have read it.
    pub sent: AtomicU64,
    /// QoS 1/2 messages the cloud acknowledged.
    pub acked: AtomicU64,
    /// QoS 0 messages dropped while the cloud was unreachable (queue full).
    pub dropped_qos0: AtomicU64,
    /// Messages the cloud refused (v5 reason code ≥ 0x80); not retried.
    pub dropped_refused: AtomicU64,
    /// Messages from the cloud the local ACL refused to `bridge:<name>`.
    pub dropped_ingress_denied: AtomicU64,
    /// Messages larger than the outbox.
    pub dropped_too_large: AtomicU64,
    /// Messages from the cloud published locally.
    pub received: AtomicU64,
    /// Connections lost after a CONNACK.
    pub reconnects: AtomicU64,
    /// Messages refused by a full journal (`overflow = refuse-new`).
    pub dropped_full: AtomicU64,
    /// Messages larger than the cloud's Maximum Packet Size (v5 CONNACK): not sent.
    pub dropped_remote_max_packet: AtomicU64,
    /// Messages whose Message Expiry Interval ran out in the outbox: not sent.
    pub dropped_expired: AtomicU64,
    /// Messages over their rule's `rate` (either way): not forwarded.
    pub dropped_rate_limited: AtomicU64,
    /// Journal records found damaged and dropped when the bridge started.
    pub lost_at_open: AtomicU64,
    /// Journal records waiting for the cloud when the bridge started (per start).
    pub recovered_at_open: AtomicU64,
    /// Records stored by earlier runs (the journal counts since its own open).
    pub stored_before: AtomicU64,
    /// Records dropped by `drop-oldest` in earlier runs.
    pub overflow_before: AtomicU64,
}

impl Counters {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters kept across restarts, by name (`lost_at_open` is per start).
    fn persistent(&self) -> [(&'static str, &AtomicU64); 12] {
        [
            ("sent", &self.sent),
            ("acked", &self.acked),
            ("received", &self.received),
            ("reconnects", &self.reconnects),
            ("dropped_qos0", &self.dropped_qos0),
            ("dropped_refused", &self.dropped_refused),
            ("dropped_ingress_denied", &self.dropped_ingress_denied),
            ("dropped_too_large", &self.dropped_too_large),
            ("dropped_full", &self.dropped_full),
            ("dropped_remote_max_packet", &self.dropped_remote_max_packet),
            ("dropped_expired", &self.dropped_expired),
            ("dropped_rate_limited", &self.dropped_rate_limited),
        ]
    }

    /// Add the values of a snapshot written by an earlier run (unknown names ignored).
    pub fn restore(&self, saved: &CounterSnapshot) {
        for (name, counter) in self.persistent() {
            if let Some(v) = saved.values.get(name) {
                counter.fetch_add(*v, Ordering::Relaxed);
            }
        }
        self.stored_before
            .fetch_add(saved.stored, Ordering::Relaxed);
        self.overflow_before
            .fetch_add(saved.dropped_overflow, Ordering::Relaxed);
    }
}

/// What survives a restart: the bridge's counters and the outbox's totals, as written
/// to `counters.json` in the journal directory (see `persist`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CounterSnapshot {
    /// Bridge counters by name.
    pub values: std::collections::BTreeMap<String, u64>,
    /// Records stored, all runs.
    pub stored: u64,
    /// Records dropped by `drop-oldest`, all runs.
    pub dropped_overflow: u64,
}

#[derive(Debug, Clone)]
struct Status {
    state: LinkState,
    address: Option<String>,
    last_error: Option<String>,
}

/// Shared between the bridge's tasks and its state publisher.
pub struct StatusBoard {
    name: String,
    status: Mutex<Status>,
    changed: Notify,
    health: HealthReporter,
    /// The bridge's counters.
    pub counters: Counters,
    outbox: RwLock<Arc<dyn Outbox>>,
}

impl StatusBoard {
    /// A board for bridge `name` starting in `Connecting`.
    pub fn new(name: &str, health: HealthReporter, outbox: Arc<dyn Outbox>) -> Self {
        StatusBoard {
            name: name.to_string(),
            status: Mutex::new(Status {
                state: LinkState::Connecting,
                address: None,
                last_error: None,
            }),
            changed: Notify::new(),
            health,
            counters: Counters::default(),
            outbox: RwLock::new(outbox),
        }
    }

    /// Show the counters of `outbox` from now on (the journal, once it is open).
    pub fn set_outbox(&self, outbox: Arc<dyn Outbox>) {
        *self.outbox.write().unwrap_or_else(|e| e.into_inner()) = outbox;
        self.changed.notify_one();
    }

    fn outbox_counters(&self) -> super::outbox::OutboxCounters {
        self.outbox
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .counters()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enter `state` (at `address`, with `error` as the latest problem if any).
    pub fn set(&self, state: LinkState, address: Option<&str>, error: Option<String>) {
        {
            let mut s = self.lock();
            s.state = state;
            if address.is_some() {
                s.address = address.map(str::to_string);
            }
            if error.is_some() {
                s.last_error = error;
            }
            let queued = self.outbox_counters().queued_messages;
            let at = s.address.clone().unwrap_or_default();
            self.health.set(match state {
                LinkState::Connected => Health::Ok(format!("connected to {at}, {queued} queued")),
                LinkState::Disabled => Health::Ok("disabled".into()),
                LinkState::Connecting | LinkState::Backoff => Health::Degraded(format!(
                    "cloud not connected ({}), {queued} queued: {}",
                    state.as_str(),
                    s.last_error.as_deref().unwrap_or("connecting")
                )),
            });
        }
        self.changed.notify_one();
    }

    /// The counters to persist now (the bridge's and the outbox's totals, all runs).
    pub fn snapshot(&self) -> CounterSnapshot {
        let o = self.outbox_counters();
        let c = &self.counters;
        CounterSnapshot {
            values: c
                .persistent()
                .iter()
                .map(|(name, v)| (name.to_string(), v.load(Ordering::Relaxed)))
                .collect(),
            stored: c.stored_before.load(Ordering::Relaxed) + o.appended,
            dropped_overflow: c.overflow_before.load(Ordering::Relaxed) + o.dropped_overflow,
        }
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.lock().state
    }

    /// The JSON published on the state topic.
    pub fn payload(&self) -> String {
        let s = self.lock().clone();
        let o = self.outbox_counters();
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "state": s.state.as_str(),
            "address": s.address,
            "last_error": s.last_error,
            "queued_messages": o.queued_messages,
            "queued_bytes": o.queued_bytes,
            "oldest_age_ms": o.oldest_age.map(|d| d.as_millis() as u64),
            "stored": get(&c.stored_before) + o.appended,
            "blocked": o.blocked,
            "sent": get(&c.sent),
            "acked": get(&c.acked),
            "received": get(&c.received),
            "reconnects": get(&c.reconnects),
            "lost_at_open": get(&c.lost_at_open),
            "recovered_at_open": get(&c.recovered_at_open),
            "dropped": {
                "overflow": get(&c.overflow_before) + o.dropped_overflow,
                "qos0": get(&c.dropped_qos0),
                "refused_upstream": get(&c.dropped_refused),
                "ingress_denied": get(&c.dropped_ingress_denied),
                "too_large": get(&c.dropped_too_large),
                "full": get(&c.dropped_full),
                "remote_max_packet": get(&c.dropped_remote_max_packet),
                "expired": get(&c.dropped_expired),
                "rate_limited": get(&c.dropped_rate_limited),
            },
        })
        .to_string()
    }

    /// The state topic of bridge `name`.
    pub fn topic(name: &str) -> String {
        format!("$SYS/tollgate/bridge/{name}/state")
    }

    /// Publish the state on every change and every [`REFRESH`], until `shutdown`; the
    /// last message says `disabled` (the bridge stopped).
    pub async fn publish_loop(
        self: Arc<Self>,
        broker: Arc<dyn Connector>,
        shutdown: CancellationToken,
    ) {
        let identity = crate::component::sys_identity("bridge", &self.name);
        let client = match broker
            .connect_internal(InternalOptions::new(Identity::internal(&identity)))
            .await
        {
            Ok(c) => c,
            Err(reason) => {
                warn!(bridge = %self.name, %reason, "Bridge state cannot be published: no in-process connection.");
                return;
            }
        };
        let topic = Self::topic(&self.name);
        let mut last = String::new();
        loop {
            let payload = self.payload();
            if payload != last {
                if let Err(e) = client
                    .publish(&topic, payload.clone(), QoS::AtMostOnce, true)
                    .await
                {
                    warn!(bridge = %self.name, reason = %e, "Bridge state not published.");
                }
                last = payload;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
        self.set(LinkState::Disabled, None, Some("stopped".into()));
        let _ = client
            .publish(&topic, self.payload(), QoS::AtMostOnce, true)
            .await;
        client.disconnect().await;
    }
}
