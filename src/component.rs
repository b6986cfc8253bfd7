//! The component seam: long-running parts of the gateway beside the broker core (the
//! certificate expiry watch today; the cloud bridge and the field adapters next). A
//! component is built from the configuration without side effects, declares the
//! built-in grants its in-process clients need, is started by `app` before the
//! listeners accept, with a [`ComponentContext`] (in-process clients, its own shutdown
//! token and task tracker, a health slot, a [`Readiness`] to hold READY while it
//! attaches), is compared by name and settings on SIGHUP
//! (unchanged ones keep running) and is drained in [`Stage`] order on shutdown.
//! A component must never spawn a task outside its tracker, never block the router
//! (it talks to the broker through in-process clients only) and never hold policy of
//! its own beyond its grants: every message it publishes goes through the ACL.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::Access;
use crate::broker::{InternalClient, InternalOptions};

/// A boxed, sendable future (cores and connectors are used as trait objects).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a component sits in the shutdown order. On SIGTERM the listeners stop accepting
/// first (inputs), then every stage drains in this order, then the broker disconnects
/// its clients and stops: adapters stop feeding data, the bridge flushes what they and
/// the clients published, the gateway's own services go last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Field adapters (Modbus, serial lines, GPIO): data sources, stopped first.
    Adapter,
    /// Cloud bridges: flush their journal after the adapters stopped.
    Bridge,
    /// The gateway's own services (certificate expiry watch): stopped last.
    Service,
}

impl Stage {
    /// Every stage, in drain order.
    pub const DRAIN_ORDER: [Stage; 3] = [Stage::Adapter, Stage::Bridge, Stage::Service];
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Adapter => "adapter",
            Stage::Bridge => "bridge",
            Stage::Service => "service",
        })
    }
}

/// One built-in permission of an internal identity: `identity` (an in-process client's
/// user name such as `tollgate:certs`, `bridge:cloud`, `adapter:plant`) may `access`
/// topics matching `filter`, whatever the ACL file says. The grant table is the only
/// place such permissions come from; network clients can never hold these identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The in-process client's user name.
    pub identity: String,
    /// Read (subscribe and receive) or write (publish).
    pub access: Access,
    /// Topic filter the grant covers (`+`/`#` wildcards).
    pub filter: String,
}

impl Grant {
    /// [`sys_identity`]`(kind, name)` may write under `$SYS/tollgate/<kind>/<name>/`.
    pub fn sys_state(kind: &str, name: &str) -> Grant {
        Grant {
            identity: sys_identity(kind, name),
            access: Access::Write,
            filter: format!("$SYS/tollgate/{kind}/{name}/#"),
        }
    }
}

/// Identity of the in-process client that publishes the `$SYS` state of component
/// `name` of `kind` (`bridge`, `modbus`, `serial`, `gpio`): `tollgate:<kind>:<name>`.
pub fn sys_identity(kind: &str, name: &str) -> String {
    format!("tollgate:{kind}:{name}")
}

/// How a component is doing, as shown in the systemd STATUS line and on `$SYS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Started, not yet reporting.
    Starting,
    /// Working; the text is a short summary ("3 devices polled").
    Ok(String),
    /// Working with a problem (an uplink down, a device not answering).
    Degraded(String),
    /// Stopped working until something changes (a reload, a device plugged back in).
    Failed(String),
}

/// The shared table of component health, written by components, read by the health loop.
#[derive(Debug, Clone, Default)]
pub struct HealthBoard {
    entries: Arc<Mutex<BTreeMap<String, Health>>>,
}

impl HealthBoard {
    /// The slot component `name` reports into (starts as [`Health::Starting`]).
    pub fn reporter(&self, name: &str) -> HealthReporter {
        self.lock().insert(name.to_string(), Health::Starting);
        HealthReporter {
            board: self.clone(),
            name: name.to_string(),
        }
    }

    /// Forget component `name` (stopped or removed by a reload).
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Every component's health, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Health> {
        self.lock().clone()
    }

    /// One line naming the components that are not healthy; empty when all are.
    pub fn problems(&self) -> String {
        self.lock()
            .iter()
            .filter_map(|(name, health)| match health {
                Health::Degraded(why) => Some(format!("{name} degraded: {why}")),
                Health::Failed(why) => Some(format!("{name} failed: {why}")),
                Health::Starting | Health::Ok(_) => None,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Health>> {
        // A panic while holding this lock leaves a consistent map (single inserts).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A component's handle on its health slot.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    board: HealthBoard,
    name: String,
}

impl HealthReporter {
    /// Report the component's current health.
    pub fn set(&self, health: Health) {
        self.board.lock().insert(self.name.clone(), health);
    }
}

/// How a component reaches the broker: in-process clients, authorized like any other.
pub trait Connector: Send + Sync + 'static {
    /// Attach an in-process client with `options` (its identity, session, limits).
    fn connect_internal(
        &self,
        options: InternalOptions,
    ) -> BoxFuture<Result<InternalClient, String>>;

    /// A barrier: resolves once everything the router did before the call is in its
    /// clients' queues (e.g. the retained messages of a subscription just acknowledged,
    /// so that "none arrived" means "there are none"). Without a router: at once.
    fn settled(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Lets a component hold back the gateway's readiness while it attaches (a bridge
/// subscribing its `out` rules, an adapter opening its bus): the listeners start
/// accepting and systemd hears READY=1 only when every hold taken during
/// [`Component::start`] is dropped, or after [`READY_WAIT`]. A hold can only be taken
/// while `start` runs; one dropped by a failing task releases readiness as well, so
/// a component can delay the gateway but never stop it from starting.
#[derive(Debug, Clone)]
pub struct Readiness(tokio::sync::mpsc::WeakSender<()>);

/// How long the gateway waits for components' readiness holds before it serves anyway.
pub const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Held while a component attaches (see [`Readiness`]); drop it when attached.
#[derive(Debug)]
pub struct ReadyHold(#[allow(dead_code)] Option<tokio::sync::mpsc::Sender<()>>);

impl Readiness {
    /// A new readiness with the runner's side: `start` may take holds until the runner
    /// drops its sender; the receiver ends when the last hold is dropped.
    pub fn new() -> (
        Readiness,
        tokio::sync::mpsc::Sender<()>,
        tokio::sync::mpsc::Receiver<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (Readiness(tx.downgrade()), tx, rx)
    }

    /// Hold the gateway's readiness until the returned value is dropped (a no-op hold
    /// once `start` has returned).
    pub fn hold(&self) -> ReadyHold {
        ReadyHold(self.0.upgrade())
    }
}

/// What a started component gets from the application.
pub struct ComponentContext {
    /// In-process clients for this component (identity `bridge:<name>`, `adapter:<name>`, ...).
    pub broker: Arc<dyn Connector>,
    /// Cancelled when the component must stop: shutdown, removal, or a restart by reload.
    pub shutdown: CancellationToken,
    /// Every task of the component is spawned here; the application waits for it to drain.
    pub tracker: TaskTracker,
    /// Where the component reports its health.
    pub health: HealthReporter,
    /// Hold the gateway's READY until attached (see [`Readiness`]).
    pub readiness: Readiness,
}

/// Settings of a component, compared on reload (equal settings: the running instance is
/// kept untouched). Implemented for every `PartialEq + Debug` type.
pub trait Settings: Any + fmt::Debug + Send + Sync {
    /// Whether `other` holds the same settings.
    fn same_as(&self, other: &dyn Settings) -> bool;
    /// For downcasting to the concrete settings type in [`Component::reload`].
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + PartialEq + fmt::Debug + Send + Sync> Settings for T {
    fn same_as(&self, other: &dyn Settings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A long-running part of the gateway. Built from the configuration by the application
/// (no side effects before `start`), started once, then either reloaded, stopped (its
/// shutdown token cancelled, its tracker awaited) or replaced.
pub trait Component: Send + 'static {
    /// Unique and stable across reloads: `certs`, `bridge:cloud`, `adapter:plant`.
    fn name(&self) -> &str;

    /// Its place in the drain order.
    fn stage(&self) -> Stage;

    /// Its settings, compared on reload.
    fn settings(&self) -> &dyn Settings;

    /// Built-in grants for its in-process clients (collected into the one grant table).
    fn grants(&self) -> Vec<Grant> {
        Vec::new()
    }

    /// Start its tasks on `ctx.tracker`; they must end, after flushing, once
    /// `ctx.shutdown` is cancelled. An error is logged and the gateway runs without it.
    fn start(&mut self, ctx: ComponentContext) -> Result<(), String>;

    /// Whether a reload's `next` settings (same name, different settings) can be applied
    /// to the running instance. If not (the default), the application drains this
    /// instance completely, with its old grants, and then starts the new one.
    fn can_reload(&self, _next: &dyn Settings) -> bool {
        false
    }

    /// Apply `next` (called only when [`Component::can_reload`] said yes, after the new
    /// grants are in force).
    fn reload(&mut self, _next: Box<dyn Component>) {}
}

/// The grant table of `components` (every component's grants, in order).
pub fn grant_table(components: &[Box<dyn Component>]) -> Vec<Grant> {
    components.iter().flat_map(|c| c.grants()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_compare_by_value_and_type() {
        let a: Box<dyn Settings> = Box::new(vec![1u8, 2]);
        let b: Box<dyn Settings> = Box::new(vec![1u8, 2]);
        let c: Box<dyn Settings> = Box::new(vec![1u8, 3]);
        let other_type: Box<dyn Settings> = Box::new(String::from("x"));
        assert!(a.same_as(b.as_ref()));
        assert!(!a.same_as(c.as_ref()));
        assert!(!a.same_as(other_type.as_ref()));
    }

    #[test]
    fn the_health_board_names_only_unhealthy_components() {
        let board = HealthBoard::default();
        let bridge = board.reporter("bridge:cloud");
        let adapter = board.reporter("adapter:plant");
        assert_eq!(board.problems(), "");
        bridge.set(Health::Degraded("uplink down".into()));
        adapter.set(Health::Ok("3 devices".into()));
        assert_eq!(board.problems(), "bridge:cloud degraded: uplink down");
        board.remove("bridge:cloud");
        assert_eq!(board.problems(), "");
        assert_eq!(board.snapshot().len(), 1);
    }

    #[test]
    fn stages_drain_adapters_then_bridges_then_services() {
        let mut sorted = vec![Stage::Service, Stage::Adapter, Stage::Bridge];
        sorted.sort();
        assert_eq!(sorted, Stage::DRAIN_ORDER);
    }
}
