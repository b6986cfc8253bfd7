//! The state every part of the broker core shares: settings, the swappable
//! authenticator and authorizer, the channel to the router, counters, the shutdown
//! token and task tracker, and the revalidation broadcast. It owns no routing state
//! and must never be used to reach a connection or a session directly (that is the
//! router's, over `link` messages).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::link::{self, RouterMsg};
use super::revalidate::RevalidateCheck;
use super::settings::BrokerSettings;
use super::stats;
use crate::acl::Authorizer;
use crate::auth::Authenticator;
use crate::telemetry::limit::LogLimits;

/// State shared by the `Broker` handle, connection tasks and the router.
pub(crate) struct Shared {
    /// Tunables, fixed for the broker's lifetime.
    pub(crate) settings: BrokerSettings,
    /// Authenticator and authorizer, swapped together on reload.
    auth: RwLock<(Arc<dyn Authenticator>, Arc<dyn Authorizer>)>,
    /// Connection/in-process clients → router (bounded: back-pressure on publishers).
    pub(crate) router_tx: mpsc::Sender<RouterMsg>,
    /// Counters behind `Broker::stats()` and `$SYS`.
    pub(crate) stats: stats::StatsCounters,
    /// Cancelled when the broker shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Every task the broker runs, including `serve` futures.
    pub(crate) tracker: TaskTracker,
    /// Source of connection ids.
    pub(crate) next_conn: AtomicU64,
    /// When the broker started (uptime).
    pub(crate) started: tokio::time::Instant,
    /// The latest revalidation check; connection tasks watch it.
    pub(crate) revalidate: watch::Sender<Option<RevalidateCheck>>,
    /// Audit event counters and the per-peer and broker-wide log rate limits.
    pub(crate) log_limits: Arc<LogLimits>,
    /// The listeners' message and rate-control counters, for `$SYS/tollgate/listener/...`
    /// (registered once per listener by its owner).
    pub(crate) listeners: std::sync::Mutex<Vec<(Arc<str>, Arc<stats::ListenerTraffic>)>>,
}

impl Shared {
    /// The shared state of a new broker and the receiving end of its router channel.
    pub(crate) fn new(
        settings: BrokerSettings,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
        shutdown: CancellationToken,
    ) -> (Arc<Shared>, mpsc::Receiver<RouterMsg>) {
        let (router_tx, router_rx) = mpsc::channel(4096);
        let log_limits = Arc::new(LogLimits::new(settings.log_limits.clone()));
        let shared = Arc::new(Shared {
            settings,
            auth: RwLock::new((authenticator, authorizer)),
            router_tx,
            stats: stats::StatsCounters::default(),
            listeners: Default::default(),
            shutdown,
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            revalidate: watch::channel(None).0,
            log_limits,
        });
        (shared, router_rx)
    }

    /// Swap the authenticator and authorizer together (reload).
    pub(crate) fn set_auth(
        &self,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
    ) {
        let mut guard = match self.auth.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = (authenticator, authorizer);
    }

    pub(crate) fn authenticator(&self) -> Arc<dyn Authenticator> {
        match self.auth.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    pub(crate) fn authorizer(&self) -> Arc<dyn Authorizer> {
        match self.auth.read() {
            Ok(g) => g.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    pub(crate) fn new_conn_id(&self) -> link::ConnId {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
