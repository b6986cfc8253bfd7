//! Application lifecycle: `Config -> App::build() -> App::run(shutdown)`. Builds every
//! component from a validated `Config` (TLS configs, development PKI, security,
//! broker core), binds the listeners, tells systemd when it is ready, reloads on
//! SIGHUP (validate everything first, then swap atomically) and drains on shutdown
//! within the grace period. It must never run with a half-applied configuration and
//! never spawn a task it does not track.

mod certs;
mod components;
mod core;
mod hints;
pub mod listener;
mod metrics;
mod revalidate;
mod security;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use self::certs::{watched_certificates, CertificateWatch, CERT_WATCH_IDENTITY};
use self::components::Components;
use self::core::CoreConnector;
pub use self::core::{BoxFuture, BrokerCore, Core};
pub use self::listener::{set_tcp_keepalive, ClientStream, TcpKeepalive};
use self::listener::{AcceptLoop, Admission, ListenerState, StateSlot, TlsState};
pub use self::security::{
    build_security, log_security, password_file_warning, security_warnings, Security,
};

use crate::acl::Authorizer;
use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerSettings, ListenerContext};
use crate::component::{grant_table, Component, HealthBoard, READY_WAIT};
use crate::config::{self, Config, LoadedConfig};
use crate::edge::metrics::{ListenerCounters, ListenerView};
use crate::edge::ws::WebSocketSettings;
use crate::pki::{self, DevPki};
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::telemetry::notify;
use crate::tls::{self, ReloadableServerConfig};

/// Why the application could not start (or run).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Certificates, keys or security files are present but unusable; one line each.
    #[error("{}", .0.join("\n"))]
    Setup(Vec<String>),
    /// The development PKI could not be created.
    #[error("cannot create the development PKI in {dir}: {message} (set [broker] data_dir to a writable directory, or configure cert and key)")]
    DevPki {
        /// Directory tried.
        dir: std::path::PathBuf,
        /// What failed.
        message: String,
    },
    /// A listener could not bind its address.
    #[error("listener {listener}: cannot bind {addr}: {source} (is another broker running there? ports below 1024 need CAP_NET_BIND_SERVICE)")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

impl AppError {
    /// Process exit code: 64 when the configuration's content is at fault, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Setup(_) => 64,
            _ => 1,
        }
    }
}

/// Build the TLS and listener state of every listener. With `create_dev_pki == false`
/// (used by `tollgate check`) listeners on the development PKI are skipped, so checking
/// never writes files.
fn build_states(
    config: &Config,
    create_dev_pki: bool,
) -> Result<(HashMap<String, ListenerState>, Option<DevPki>), AppError> {
    let mut dev_pki = None;
    if create_dev_pki && config.listeners.iter().any(|l| l.uses_dev_pki()) {
        let dir = config.broker.data_dir.join("dev-pki");
        let pki = pki::ensure_dev_pki(&dir).map_err(|e| AppError::DevPki {
            dir: dir.clone(),
            message: e.to_string(),
        })?;
        if pki.created {
            warn!(dir = %dir.display(), ca = %pki.ca_cert.display(), device_cert = %pki.device_cert.display(), "Created a development PKI (CA, localhost server certificate, device certificate `dev-device`): for development only.");
        } else {
            info!(dir = %dir.display(), "Using the development PKI: for development only.");
        }
        dev_pki = Some(pki);
    }
    let label = config.source.label();
    let mut states = HashMap::new();
    let mut problems = Vec::new();
    for l in &config.listeners {
        let i = l.index;
        let context = Arc::new(ListenerContext {
            name: Arc::from(l.name.as_str()),
            allow_anonymous: l.allow_anonymous,
            password_auth: l.password_auth,
            jwt_auth: l.jwt_auth,
            tls: l.transport.is_tls(),
            keep_alive: l.keep_alive_policy(),
            queue_overflow: l.queue_overflow,
            max_qos: l.max_qos_limit(),
            publish_rate: l.publish_rate,
        });
        let tls = if l.transport.is_tls() {
            let files = match (&l.cert, &l.key, &dev_pki) {
                (Some(cert), Some(key), _) => Some((cert.clone(), key.clone())),
                (None, None, Some(pki)) => Some((pki.server_cert.clone(), pki.server_key.clone())),
                _ => None,
            };
            let Some((cert, key)) = files else { continue };
            let settings = match l.tls_settings(&cert, &key) {
                // On the development PKI, client certificates without client_ca are the dev CA's.
                Ok(mut settings) => {
                    if let (None, true, Some(pki)) = (
                        &settings.client_ca,
                        settings.client_certs != tls::ClientCertMode::Off,
                        &dev_pki,
                    ) {
                        settings.client_ca = Some(pki.ca_cert.clone());
                    }
                    settings
                }
                Err(e) => {
                    problems.push(format!("{label}: listener[{i}]: TLS setup failed: {e}"));
                    continue;
                }
            };
            // Every problem of the listener at once (cert, key, CA, CRL, pairing).
            let errors = tls::check_server_settings(&settings);
            if !errors.is_empty() {
                for e in errors {
                    problems.push(format!("{label}: listener[{i}]: TLS setup failed: {e}"));
                }
                continue;
            }
            match ReloadableServerConfig::new(&settings) {
                Ok(server) => Some(TlsState {
                    server: Arc::new(server),
                    identity: l.identity,
                }),
                Err(e) => {
                    problems.push(format!("{label}: listener[{i}]: TLS setup failed: {e}"));
                    continue;
                }
            }
        } else {
            None
        };
        states.insert(
            l.name.clone(),
            ListenerState {
                context,
                tls,
                websocket: l.transport.is_websocket().then(|| {
                    Arc::new(WebSocketSettings::new(
                        l.websocket_path(),
                        &l.allowed_origins,
                        config.broker.max_packet_size,
                    ))
                }),
                tcp_keepalive: l.tcp_keepalive_settings(),
                connect_rate: l.connect_rate,
            },
        );
    }
    if problems.is_empty() {
        Ok((states, dev_pki))
    } else {
        Err(AppError::Setup(problems))
    }
}

/// What `tollgate check` found beyond `config::load`.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// Problems that would stop `run` (one line each, with the key concerned).
    pub problems: Vec<String>,
    /// Accepted but probably unintended (ACL lines shadowed by deny rules, ...).
    pub warnings: Vec<String>,
}

/// Deep checks for `tollgate check` beyond `config::load`: certificates and keys are
/// parsed and matched, the password file and ACL are loaded. Writes nothing.
pub fn preflight(config: &Config) -> Preflight {
    let mut report = Preflight::default();
    if let Err(e) = build_states(config, false) {
        report
            .problems
            .extend(e.to_string().lines().map(str::to_string));
    }
    let grants = grant_table(&builtin_components(config, None));
    match build_security(config, None, grants) {
        Ok(security) => report.warnings = security_warnings(&security),
        Err(problems) => report.problems.extend(problems),
    }
    report.warnings.extend(password_file_warning(config));
    report
}

/// How long start waits for the broker to load its durable state before serving.
const STATE_WAIT: Duration = Duration::from_secs(120);

/// Outcome of an accepted reload.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Changes that only take effect after a restart (listener set, binds, `[broker]`, `[log]`).
    pub ignored_until_restart: Vec<String>,
}

/// A refused reload: every problem, one line each. The running configuration stays.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reload refused: {}", .problems.join("; "))]
pub struct ReloadFailed {
    /// What is wrong.
    pub problems: Vec<String>,
}

type ReloadRequest = oneshot::Sender<Result<ReloadReport, ReloadFailed>>;

/// Triggers the same reload as SIGHUP (for tests and embedding) and returns its outcome.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<ReloadRequest>,
}

impl ReloadHandle {
    /// Re-read and apply the configuration file; see `App` for what changes live.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadFailed> {
        let stopped = || ReloadFailed {
            problems: vec!["the gateway is not running".to_string()],
        };
        let (reply, outcome) = oneshot::channel();
        self.requests.send(reply).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// Builds the core from the broker settings, the security state and the shutdown token.
pub trait MakeCore:
    FnOnce(
    BrokerSettings,
    Arc<dyn Authenticator>,
    Arc<dyn Authorizer>,
    CancellationToken,
) -> Arc<dyn Core>
{
}

impl<F> MakeCore for F where
    F: FnOnce(
        BrokerSettings,
        Arc<dyn Authenticator>,
        Arc<dyn Authorizer>,
        CancellationToken,
    ) -> Arc<dyn Core>
{
}

/// Builds extra components from each configuration (embedding and tests; the gateway's
/// own components come from [`builtin_components`]).
pub type ComponentSource = Arc<dyn Fn(&Config) -> Vec<Box<dyn Component>> + Send + Sync>;

/// The gateway's own components for `config`: THE place where a new kind of component
/// (bridge, adapter) is added, in start order.
pub fn builtin_components(config: &Config, dev_pki: Option<&DevPki>) -> Vec<Box<dyn Component>> {
    let mut components: Vec<Box<dyn Component>> =
        vec![Box::new(CertificateWatch::from_config(config, dev_pki))];
    components.extend(crate::bridge::Bridge::all(
        &config.bridges,
        &config.broker.data_dir,
    ));
    components.extend(crate::modbus::Modbus::all(&config.modbus));
    components.extend(crate::serial::Serial::all(&config.serial));
    components.extend(crate::gpio::Gpio::builtin(&config.gpio));
    components
}

struct BoundListener {
    name: Arc<str>,
    socket: TcpListener,
    addr: SocketAddr,
    slot: StateSlot,
    counters: Arc<ListenerCounters>,
}

/// A built gateway: listeners bound, broker core started, not yet accepting.
pub struct App {
    /// Configuration the listeners and the core were started with (restart-only diff base).
    started: Config,
    /// Configuration currently applied (listener state, security, grace period).
    current: Config,
    listeners: Vec<BoundListener>,
    /// The Prometheus endpoint's socket (`[metrics] bind`), served by `run`.
    metrics: Option<TcpListener>,
    /// The certificates the endpoint reports, replaced on reload (files re-read per scrape).
    certificates: metrics::WatchedCertificates,
    slots: HashMap<String, StateSlot>,
    addrs: Vec<(String, SocketAddr)>,
    dev_pki: Option<DevPki>,
    core: Arc<dyn Core>,
    /// Authenticator and ACL in force (the base of the next reload).
    security: Security,
    /// Every task `run` spawns (accept loops, connections, health, components' stops).
    tasks: TaskTracker,
    /// Extra component sources besides [`builtin_components`], asked again on reload.
    sources: Vec<ComponentSource>,
    /// Built by `build`, started by `run` before the listeners accept.
    unstarted: Vec<Box<dyn Component>>,
    /// The started components.
    components: Components,
    /// Components' health, shown in the systemd STATUS line.
    health: HealthBoard,
    admission: Arc<Admission>,
    /// Cancelled on shutdown: the broker disconnects clients (v5 reason 0x8B).
    broker_shutdown: CancellationToken,
    reload_requests: mpsc::Sender<ReloadRequest>,
    reload_inbox: mpsc::Receiver<ReloadRequest>,
}

impl App {
    /// Build the gateway around tollgate's broker core.
    pub async fn build(loaded: LoadedConfig) -> Result<App, AppError> {
        App::build_with_components(loaded, Vec::new()).await
    }

    /// Build the gateway around any `Core` (tests use fakes that need no MQTT).
    pub async fn build_with_core<F: MakeCore>(
        loaded: LoadedConfig,
        make_core: F,
    ) -> Result<App, AppError> {
        App::build_with_parts(loaded, make_core, Vec::new()).await
    }

    /// Build the gateway around tollgate's broker core with extra components (each
    /// source is asked for its components at start and again on every reload).
    pub async fn build_with_components(
        loaded: LoadedConfig,
        sources: Vec<ComponentSource>,
    ) -> Result<App, AppError> {
        App::build_with_parts(
            loaded,
            |settings, authn, authz, token| {
                Arc::new(BrokerCore::new(Broker::start(
                    settings, authn, authz, token,
                ))) as Arc<dyn Core>
            },
            sources,
        )
        .await
    }

    async fn build_with_parts<F: MakeCore>(
        loaded: LoadedConfig,
        make_core: F,
        sources: Vec<ComponentSource>,
    ) -> Result<App, AppError> {
        let config = loaded.config;
        let (mut states, dev_pki) = build_states(&config, true)?;
        let unstarted = all_components(&config, dev_pki.as_ref(), &sources);
        let security =
            build_security(&config, None, grant_table(&unstarted)).map_err(AppError::Setup)?;
        log_security(&config, &security, "Start");

        let mut listeners = Vec::new();
        let mut slots = HashMap::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let addr = l
                .bind_addr()
                .map_err(|e| AppError::Setup(vec![format!("listener {}: {e}", l.name)]))?;
            let socket = listener::bind(addr).map_err(|source| AppError::Bind {
                listener: l.name.clone(),
                addr,
                source,
            })?;
            let local = socket.local_addr().map_err(|source| AppError::Bind {
                listener: l.name.clone(),
                addr,
                source,
            })?;
            let state = states
                .remove(&l.name)
                .expect("invariant: build_states made a state for every listener");
            let slot: StateSlot = Arc::new(RwLock::new(Arc::new(state)));
            slots.insert(l.name.clone(), slot.clone());
            addrs.push((l.name.clone(), local));
            listeners.push(BoundListener {
                name: Arc::from(l.name.as_str()),
                socket,
                addr: local,
                slot,
                counters: Arc::default(),
            });
        }
        let metrics = bind_metrics(&config)?;

        let broker_shutdown = CancellationToken::new();
        let core = make_core(
            crate::broker::BrokerSettings {
                log_limits: config.log.rate_limit.clone(),
                ..config.broker.clone()
            },
            Arc::new(security.authenticator.clone()),
            security.authorizer.clone(),
            broker_shutdown.clone(),
        );
        let (reload_requests, reload_inbox) = mpsc::channel(4);
        let tasks = TaskTracker::new();
        let health = HealthBoard::default();
        Ok(App {
            components: Components::new(Arc::new(CoreConnector(core.clone())), health.clone()),
            health,
            sources,
            unstarted,
            admission: Arc::new(Admission::new(config.broker.max_connections)),
            started: config.clone(),
            current: config,
            listeners,
            metrics,
            certificates: Default::default(),
            slots,
            addrs,
            dev_pki,
            core,
            security,
            tasks,
            broker_shutdown,
            reload_requests,
            reload_inbox,
        })
    }

    /// The address listener `name` is bound to (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The development PKI in use, if any listener relies on it.
    pub fn dev_pki(&self) -> Option<&DevPki> {
        self.dev_pki.as_ref()
    }

    /// The components' health (what the systemd STATUS line summarises).
    pub fn component_health(&self) -> HealthBoard {
        self.health.clone()
    }

    /// A handle that triggers reloads like SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            requests: self.reload_requests.clone(),
        }
    }

    /// Serve until `shutdown` resolves (SIGTERM/SIGINT in `main`), reloading on SIGHUP,
    /// then drain: stop accepting, disconnect clients, wait up to the grace period.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(AppError::Signal)?;
        let tracker = self.tasks.clone();
        let stop_accepting = CancellationToken::new();
        // The router answers once its durable state (retained messages) is loaded, so
        // READY means the last known state is served.
        if tokio::time::timeout(STATE_WAIT, self.core.health())
            .await
            .is_err()
        {
            warn!(wait_s = STATE_WAIT.as_secs(), "The broker did not answer in time (loading its state?); serving anyway: clients wait until it is loaded.");
        }
        // Components attach before the listeners accept: a bridge's subscriptions are in
        // place before the first device can publish (nothing published is missed).
        let waits: Vec<_> = std::mem::take(&mut self.unstarted)
            .into_iter()
            .map(|c| self.components.start(c))
            .collect();
        Components::ready(waits, tokio::time::Instant::now() + READY_WAIT).await;
        self.serve_metrics(&tracker, &stop_accepting);
        for l in std::mem::take(&mut self.listeners) {
            self.core
                .register_listener(l.name.clone(), l.counters.traffic.clone());
            info!(listener = %l.name, addr = %l.addr, transport = current_transport(&l.slot), "Listening.");
            tracker.spawn(
                AcceptLoop {
                    name: l.name,
                    socket: l.socket,
                    state: l.slot,
                    admission: self.admission.clone(),
                    counters: l.counters,
                    core: self.core.clone(),
                    connect_timeout: self.started.broker.connect_timeout,
                    stop_accepting: stop_accepting.clone(),
                    shutdown: self.broker_shutdown.clone(),
                    tracker: tracker.clone(),
                }
                .run(),
            );
        }
        self.announce_ready();
        tracker.spawn(health_loop(
            self.core.clone(),
            self.admission.clone(),
            self.health.clone(),
            self.broker_shutdown.clone(),
            notify::watchdog_interval(),
        ));

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hangup.recv() => {
                    info!(config = %self.current.source.label(), "SIGHUP received: reloading the configuration.");
                    let _ = self.reload().await;
                }
                Some(reply) = self.reload_inbox.recv() => {
                    let _ = reply.send(self.reload().await);
                }
            }
        }
        self.drain(tracker, stop_accepting).await;
        Ok(())
    }

    /// Start the Prometheus endpoint, if configured, with every listener's counters.
    fn serve_metrics(&mut self, tracker: &TaskTracker, stop: &CancellationToken) {
        let Some(socket) = self.metrics.take() else {
            return;
        };
        let views = self
            .listeners
            .iter()
            .zip(&self.started.listeners)
            .map(|(bound, l)| ListenerView {
                name: bound.name.clone(),
                transport: match l.transport {
                    config::Transport::Tcp => "tcp",
                    config::Transport::Tls => "tls",
                    config::Transport::Ws => "ws",
                    config::Transport::Wss => "wss",
                },
                counters: bound.counters.clone(),
            })
            .collect();
        *metrics::write(&self.certificates) =
            watched_certificates(&self.started, self.dev_pki.as_ref());
        let snapshot =
            metrics::snapshot_source(self.core.clone(), views, self.certificates.clone());
        tracker.spawn(crate::edge::metrics::serve(
            socket,
            snapshot,
            stop.clone(),
            tracker.clone(),
        ));
    }

    fn announce_ready(&self) {
        let summary: Vec<String> = self
            .started
            .listeners
            .iter()
            .zip(&self.addrs)
            .map(|(l, (_, addr))| format!("{} {addr} ({})", l.name, l.transport))
            .collect();
        notify::ready();
        notify::status(&format!("Ready: {}", summary.join(", ")));
        info!(listeners = %summary.join(", "), "tollgate is ready.");

        let lines: Vec<String> = self
            .started
            .listeners
            .iter()
            .zip(&self.addrs)
            .flat_map(|(l, (_, addr))| hints::client_commands(l, *addr, self.dev_pki.as_ref()))
            .collect();
        if std::io::stdout().is_terminal() {
            println!("Connect with:");
            for line in &lines {
                println!("  {line}");
            }
        } else {
            for line in &lines {
                info!(command = %line, "Connect with this command.");
            }
        }
    }

    /// Validate the configuration file completely, then swap; on any problem nothing changes.
    async fn reload(&mut self) -> Result<ReloadReport, ReloadFailed> {
        notify::reloading();
        let outcome = self.try_reload().await;
        match &outcome {
            Ok(report) => {
                for change in &report.ignored_until_restart {
                    warn!(change = %change, "Configuration change ignored until restart.");
                }
                Event::new(AuditKind::ConfigReloaded)
                    .config(&self.current.source.label())
                    .emit();
                notify::status("Configuration reloaded; serving.");
            }
            Err(failed) => {
                for problem in &failed.problems {
                    error!(problem = %problem, "Reload refused: configuration problem.");
                }
                Event::new(AuditKind::ConfigReloadRefused)
                    .config(&self.current.source.label())
                    .problems(failed.problems.len())
                    .emit();
                notify::status(&format!(
                    "Reload refused ({} problems, see log); running configuration unchanged.",
                    failed.problems.len()
                ));
            }
        }
        notify::ready();
        outcome
    }

    /// Build everything from the file first (nothing changes on a problem), then drain
    /// the components the reload removes or replaces (with their old grants), swap the
    /// listener and security state, and start or live-reload the rest.
    async fn try_reload(&mut self) -> Result<ReloadReport, ReloadFailed> {
        let fail = |problems: Vec<String>| ReloadFailed { problems };
        let loaded = config::load(&self.current.source).map_err(|e| fail(e.problems()))?;
        for w in &loaded.warnings {
            warn!(warning = %w, "Configuration warning.");
        }
        let new = loaded.config;
        let (mut states, _) = build_states(&new, true).map_err(|e| match e {
            AppError::Setup(problems) => fail(problems),
            other => fail(vec![other.to_string()]),
        })?;
        let components = all_components(&new, self.dev_pki.as_ref(), &self.sources);
        let security =
            build_security(&new, Some(&self.security), grant_table(&components)).map_err(fail)?;
        let ignored = restart_only_changes(&self.started, &new);
        let (stopping, pending) = self.components.begin_reload(components);
        let deadline = tokio::time::Instant::now() + new.shutdown.grace_period;
        stopping.finished(deadline, &self.tasks).await;

        // Everything is built: swap. Listeners whose transport changed keep their old
        // state (a TLS port must never turn into plain text without a restart).
        for l in &self.started.listeners {
            let same_transport = new
                .listeners
                .iter()
                .any(|n| n.name == l.name && n.transport == l.transport);
            if let (true, Some(slot), Some(state)) = (
                same_transport,
                self.slots.get(&l.name),
                states.remove(&l.name),
            ) {
                listener::replace(slot, state);
            }
        }
        self.core.reload_auth(
            Arc::new(security.authenticator.clone()),
            security.authorizer.clone(),
        );
        log_security(&new, &security, "Reload");
        let old = std::mem::replace(&mut self.security, security);
        *metrics::write(&self.certificates) = watched_certificates(&new, self.dev_pki.as_ref());
        self.current = new;
        self.components.finish_reload(pending);
        // New CA/CRL, passwords and listener flags in force: end the sessions whose
        // credentials no longer hold.
        self.core.revalidate(revalidate::session_check(
            &self.slots,
            &old.authenticator,
            &self.security.authenticator,
        ));
        Ok(ReloadReport {
            ignored_until_restart: ignored,
        })
    }

    /// Shutdown in the stated order: stop accepting (inputs), drain the components stage
    /// by stage (adapters, bridges, services), then the broker disconnects its clients
    /// (v5 0x8B) and stops; all within the grace period.
    async fn drain(mut self, tracker: TaskTracker, stop_accepting: CancellationToken) {
        let grace = self.current.shutdown.grace_period;
        let deadline = tokio::time::Instant::now() + grace;
        notify::stopping();
        notify::status("Stopping: draining connections.");
        info!(
            open_connections = self.admission.open_connections(),
            grace_period_ms = grace.as_millis() as u64,
            "Shutting down: no longer accepting, asking clients to disconnect."
        );
        stop_accepting.cancel();
        self.components.drain(deadline).await;
        // A round trip through the router: everything the components published while
        // draining has been handed to the connections, which write it before their
        // DISCONNECT.
        let _ = tokio::time::timeout_at(deadline, self.core.health()).await;
        self.broker_shutdown.cancel();
        tracker.close();
        let core = self.core.clone();
        let drained = async move {
            tracker.wait().await;
            core.drained().await;
        };
        match tokio::time::timeout_at(deadline, drained).await {
            Ok(()) => info!("All connections closed; exiting."),
            Err(_) => warn!(
                open_connections = self.admission.open_connections(),
                "Grace period over with connections still open; exiting anyway."
            ),
        }
    }
}

/// The built-in components plus those of every extra source, for `config`.
fn all_components(
    config: &Config,
    dev_pki: Option<&DevPki>,
    sources: &[ComponentSource],
) -> Vec<Box<dyn Component>> {
    let mut all = builtin_components(config, dev_pki);
    for source in sources {
        all.extend(source(config));
    }
    all
}

/// The endpoint's socket, when `[metrics] bind` is set.
fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, AppError> {
    let Some(addr) = config.metrics.bind_addr() else {
        return Ok(None);
    };
    let addr = addr.map_err(|e| AppError::Setup(vec![format!("metrics.bind: {e}")]))?;
    listener::bind(addr)
        .map(Some)
        .map_err(|source| AppError::Bind {
            listener: "metrics".to_string(),
            addr,
            source,
        })
}

fn current_transport(slot: &StateSlot) -> &'static str {
    let state = listener::current(slot);
    match (state.tls.is_some(), state.websocket.is_some()) {
        (false, false) => "tcp",
        (true, false) => "tls",
        (false, true) => "ws",
        (true, true) => "wss",
    }
}

/// Differences between the configuration the process started with and a reloaded one
/// that only a restart applies.
fn restart_only_changes(started: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if started.metrics != new.metrics {
        changes.push(format!(
            "[metrics] bind {:?} -> {:?}",
            started.metrics.bind, new.metrics.bind
        ));
    }
    for old in &started.listeners {
        match new.listeners.iter().find(|l| l.name == old.name) {
            None => changes.push(format!("listener {:?} was removed", old.name)),
            Some(l) => {
                if l.bind != old.bind {
                    changes.push(format!(
                        "listener {:?} bind {} -> {}",
                        old.name, old.bind, l.bind
                    ));
                }
                if l.transport != old.transport {
                    changes.push(format!(
                        "listener {:?} transport {} -> {} (keeps its current TLS/plain state)",
                        old.name, old.transport, l.transport
                    ));
                }
            }
        }
    }
    for l in &new.listeners {
        if !started.listeners.iter().any(|o| o.name == l.name) {
            changes.push(format!("listener {:?} was added", l.name));
        }
    }
    if started.broker != new.broker {
        changes.push("[broker] settings changed".to_string());
    }
    if started.log != new.log {
        changes.push("[log] settings changed".to_string());
    }
    changes
}

/// Periodic round trip through the core: pings the systemd watchdog only while the
/// router answers, and keeps the STATUS line current.
async fn health_loop(
    core: Arc<dyn Core>,
    admission: Arc<Admission>,
    components: HealthBoard,
    shutdown: CancellationToken,
    watchdog: Option<Duration>,
) {
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match tokio::time::timeout(period, core.health()).await {
            Ok(Ok(detail)) => {
                if watchdog.is_some() {
                    notify::watchdog_ping();
                }
                let open = admission.open_connections();
                let mut line = if detail.is_empty() {
                    format!("Serving {open} connections.")
                } else {
                    format!("Serving {open} connections; {detail}")
                };
                let problems = components.problems();
                if !problems.is_empty() {
                    line.push_str(&format!(" Components: {problems}."));
                }
                notify::status(&line);
            }
            Ok(Err(reason)) => {
                warn!(%reason, "Health check failed: the router reported an error; withholding the watchdog ping.")
            }
            Err(_) => warn!(
                timeout_ms = period.as_millis() as u64,
                "Health check failed: the router did not answer in time; withholding the watchdog ping."
            ),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (logging which), for `App::run` in `main`.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            error!(reason = %e, "Cannot install SIGTERM/SIGINT handlers; stop with SIGKILL only.");
            return std::future::pending().await;
        }
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "Shutdown requested.");
}

/// Configurations for the unit tests of `app`'s modules.
#[cfg(test)]
pub(crate) mod testing {
    use crate::config::{load_with_env, Config, ConfigSource};

    /// One anonymous plain TCP listener on loopback.
    pub(crate) const LOCAL: &str = "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n";

    /// `body` written to a file in a fresh directory and loaded (the directory lives as
    /// long as the returned guard).
    pub(crate) fn config(body: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, body).expect("write");
        let loaded =
            load_with_env(&ConfigSource::File(path), &Default::default()).expect("valid config");
        (dir, loaded.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_with_env, ConfigSource, Transport};

    fn embedded() -> Config {
        let env = [("HOME".to_string(), "/nonexistent".to_string())].into();
        load_with_env(&ConfigSource::Embedded, &env)
            .expect("default config is valid")
            .config
    }

    #[test]
    fn identical_configs_need_no_restart() {
        assert!(restart_only_changes(&embedded(), &embedded()).is_empty());
    }

    #[test]
    fn listener_set_binds_transport_and_broker_changes_need_a_restart() {
        let old = embedded();
        let mut new = embedded();
        new.listeners[0].bind = "127.0.0.1:1884".to_string();
        new.listeners[1].transport = Transport::Tcp;
        new.listeners[1].name = "renamed".to_string();
        new.broker.max_connections = 5;
        let changes = restart_only_changes(&old, &new).join("\n");
        assert!(
            changes.contains("\"local\" bind 127.0.0.1:1883 -> 127.0.0.1:1884"),
            "{changes}"
        );
        assert!(changes.contains("\"devices\" was removed"), "{changes}");
        assert!(changes.contains("\"renamed\" was added"), "{changes}");
        assert!(changes.contains("[broker]"), "{changes}");
    }

    #[test]
    fn anonymous_and_password_flags_apply_without_restart() {
        let old = embedded();
        let mut new = embedded();
        new.listeners[0].allow_anonymous = false;
        new.listeners[1].password_auth = false;
        new.shutdown.grace_period = Duration::from_secs(1);
        let changes = restart_only_changes(&old, &new);
        assert!(changes.is_empty(), "{changes:?}");
    }
}
