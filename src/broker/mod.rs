//! The broker core: codec wrapper, router (subscription trie, retained store,
//! session table), one task per connection, and the in-process client API used by
//! adapters and the bridge. It must never panic on client input and must hold
//! nothing for clients or topics that are no longer live.
//!
//! Layout:
//! - `codec`: panic-free MQTT 3.1.1/5 codec; 3.1.1 is mapped onto the v5 packet model.
//! - `connection`: one task per socket: CONNECT + authentication within the connect
//!   deadline, then batched decode → validate → authorize → one router message per
//!   read, and one write + flush per batch of outgoing packets. Keepalive, inbound
//!   topic aliases and inbound Receive Maximum live here.
//! - `router`: the single owner of routing state (trie, retained store, sessions,
//!   offline queues, inflight windows, wills, timers, durable hold-backs).
//! - `trie`: subscription trie with shared-subscription groups, pruned on removal.
//! - `retained`: retained messages in a topic tree, matched against filters.
//! - `internal`: in-process clients (`Broker::connect_internal`).
//! - `fasthash`: cheap hasher for integer-keyed tables on the per-message path.
//! - `stats`: counters behind `Broker::stats()` and `$SYS/broker/...`.
//!
//! Revalidation after a reload (`Broker::revalidate`): the caller hands over a check
//! that every live network connection runs once against its own `SessionCredentials`
//! (identity, listener, peer, verified client chain). A connection the check rejects
//! is ended by the server: v5 DISCONNECT with the verdict's reason code (0x87 for
//! credentials, 0x8C for certificates) and reason string, a plain close for 3.1.1, and
//! an audit event. Its will is *not* published (the client is no longer trusted to
//! speak), its session is kept until it expires like any other (a client refused at
//! CONNECT cannot resume it). In-process clients are not revalidated. The check is
//! broadcast through a `watch` channel, so idle connections cost nothing until it
//! changes. A connection whose TLS handshake began before the reload and whose
//! `serve` starts after `revalidate` is not checked; the TLS layer hands it the
//! configuration it was accepted with.

mod aliases;
pub mod codec;
mod connection;
mod fasthash;
pub mod fuzz_router;
mod internal;
mod link;
mod retained;
mod router;
mod stats;
mod trie;

// The wire codec and topic rules used by the core (one place to switch implementations).
use crate::topic as topics;
use codec as wire;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::Authorizer;
use crate::auth::{Authenticator, Identity};
use crate::telemetry::limit::{self as log_limit, LogLimitSettings, LogLimits};

pub use internal::{Delivery, DeliveryAck, InternalClient, InternalOptions};
pub use link::QueueOverflow;
pub use stats::BrokerStats;

/// Tunables of the broker core, built by `app` from `[broker]` in the config.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Largest packet accepted from or sent to a client, in bytes.
    pub max_packet_size: u32,
    /// Time allowed between accepting a socket and a complete CONNECT (TLS handshake included).
    pub connect_timeout: Duration,
    /// Largest keep alive a client may ask for; v5 clients asking more get Server Keep Alive.
    pub max_keepalive: u16,
    /// Largest session expiry interval granted to v5 clients, in seconds.
    pub max_session_expiry: u32,
    /// Messages queued for an offline persistent session before the overflow policy applies.
    pub max_offline_messages: usize,
    /// Bytes queued for an offline persistent session before the overflow policy applies.
    pub max_offline_bytes: usize,
    /// QoS 1/2 messages the broker accepts unacknowledged from one client (v5 Receive Maximum).
    pub receive_maximum: u16,
    /// QoS 1/2 messages in flight towards a client when it sets no Receive Maximum (v3.1.1).
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Most levels a topic name or filter may have (PUBLISH, will, SUBSCRIBE,
    /// UNSUBSCRIBE, in-process clients): bounds every walk over topic levels.
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold; more are refused (SUBACK 0x97 / 0x80).
    pub max_subscriptions_per_client: usize,
    /// Retained messages stored; new topics beyond it are delivered, not retained.
    pub max_retained_messages: usize,
    /// Bytes of retained messages (topic, payload, properties) stored at most.
    pub max_retained_bytes: usize,
    /// Sessions with a non-zero expiry; a CONNECT creating one more is refused (0x97).
    pub max_persistent_sessions: usize,
    /// How often `$SYS/broker/...` statistics are published; zero disables them.
    pub sys_interval: Duration,
    /// Rate limits of the log lines clients can cause (`[log] rate_limit`).
    pub log_limits: LogLimitSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_packet_size: 1_048_576,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 65_535,
            max_session_expiry: 7 * 24 * 3600,
            max_offline_messages: 1000,
            max_offline_bytes: 10 * 1024 * 1024,
            receive_maximum: 100,
            max_inflight: 100,
            topic_alias_maximum: 32,
            max_topic_levels: 64,
            max_subscriptions_per_client: 1_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_persistent_sessions: 10_000,
            sys_interval: Duration::from_secs(10),
            log_limits: LogLimitSettings::default(),
        }
    }
}

mod keepalive;
pub use keepalive::{KeepAliveGrant, KeepAlivePolicy};

/// What a connection task knows about the listener it came in on. `Default` is a
/// nameless listener that admits nobody anonymously, with default policies.
#[derive(Debug, Clone, Default)]
pub struct ListenerContext {
    /// `[[listener]] name`, used in identities, logs and audit events.
    pub name: Arc<str>,
    /// Whether anonymous clients are admitted on this listener.
    pub allow_anonymous: bool,
    /// Whether CONNECT username/password is accepted on this listener.
    pub password_auth: bool,
    /// Whether the transport is TLS (for logs and `$SYS`).
    pub tls: bool,
    /// Minimum / zero MQTT keep alive accepted at CONNECT on this listener.
    pub keep_alive: KeepAlivePolicy,
    /// What a full session queue of a client on this listener does.
    pub queue_overflow: QueueOverflow,
}

/// Per-connection facts known before the first MQTT byte is read.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// Listener the socket was accepted on.
    pub listener: Arc<ListenerContext>,
    /// Identity from a verified client certificate, if any.
    pub certificate_identity: Option<String>,
    /// The verified client certificate chain, leaf first (`tls::peer_chain`); `None`
    /// for plain TCP or a TLS client without a certificate. Kept for revalidation.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// CONNECT must be complete before this instant (set by the listener at accept time).
    pub connect_deadline: tokio::time::Instant,
}

/// What a live network session was admitted with, as shown to a revalidation check.
#[derive(Debug, Clone)]
pub struct SessionCredentials {
    /// The identity established at CONNECT.
    pub identity: Identity,
    /// Listener the connection came in on.
    pub listener: Arc<str>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Verified client certificate chain, leaf first, if the client presented one.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Why a revalidation check ends a session; carries the v5 DISCONNECT reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevalidateVerdict {
    code: u8,
    reason: String,
}

impl RevalidateVerdict {
    /// Credentials no longer valid (user removed, password changed, identity no
    /// longer allowed on the listener): v5 reason 0x87 Not authorized.
    pub fn credentials_revoked(reason: impl Into<String>) -> Self {
        RevalidateVerdict {
            code: 0x87,
            reason: reason.into(),
        }
    }

    /// Client certificate no longer valid (revoked by the CRL, expired, CA no longer
    /// trusted): v5 reason 0x8C Bad authentication method.
    pub fn certificate_rejected(reason: impl Into<String>) -> Self {
        RevalidateVerdict {
            code: 0x8C,
            reason: reason.into(),
        }
    }

    /// The v5 DISCONNECT reason code (0x87 or 0x8C).
    pub fn reason_code(&self) -> u8 {
        self.code
    }

    /// The reason string sent to v5 clients and logged.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A revalidation check: `Some(verdict)` ends the session, `None` keeps it.
pub type RevalidateCheck =
    Arc<dyn Fn(&SessionCredentials) -> Option<RevalidateVerdict> + Send + Sync>;

/// Errors of the in-process client API.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The router has stopped (shutdown).
    #[error("broker is shutting down")]
    Closed,
    /// The request was refused; the string says why (reason code name and context).
    #[error("refused: {0}")]
    Refused(String),
}

/// State shared by the `Broker` handle, connection tasks and the router.
pub(crate) struct Shared {
    /// Tunables, fixed for the broker's lifetime.
    pub(crate) settings: BrokerSettings,
    /// Authenticator and authorizer, swapped together on reload.
    auth: RwLock<(Arc<dyn Authenticator>, Arc<dyn Authorizer>)>,
    /// Connection/in-process clients → router (bounded: back-pressure on publishers).
    pub(crate) router_tx: mpsc::Sender<link::RouterMsg>,
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
}

impl Shared {
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

/// Cloneable handle to a running broker core.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// Start the router. It stops when `shutdown` is cancelled; connections then get
    /// v5 DISCONNECT 0x8B (server shutting down) and are closed.
    pub fn start(
        settings: BrokerSettings,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
        shutdown: CancellationToken,
    ) -> Broker {
        let (router_tx, router_rx) = mpsc::channel(4096);
        let log_limits = Arc::new(LogLimits::new(settings.log_limits.clone()));
        let shared = Arc::new(Shared {
            settings,
            auth: RwLock::new((authenticator, authorizer)),
            router_tx,
            stats: stats::StatsCounters::default(),
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            revalidate: watch::channel(None).0,
            log_limits,
        });
        let router = router::Router::new(shared.clone(), router_rx);
        let limits = shared.log_limits.clone();
        shared
            .tracker
            .spawn(log_limit::scope(limits, None, router.run(shutdown.clone())));
        let tracker = shared.tracker.clone();
        // Closing the tracker at shutdown lets `drained()` resolve once tasks finish.
        shared.tracker.spawn(async move {
            shutdown.cancelled().await;
            tracker.close();
        });
        Broker { shared }
    }

    /// Serve one client connection (plain TCP or an accepted TLS stream) until it ends.
    pub async fn serve<S>(&self, stream: S, info: ConnectionInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let shared = self.shared.clone();
        // The connection's log window lives in its task (no lock); its peer's is shared.
        let (limits, peer) = (shared.log_limits.clone(), Some(info.peer.ip()));
        self.shared
            .tracker
            .track_future(log_limit::scope(
                limits,
                peer,
                connection::run(shared, stream, info),
            ))
            .await
    }

    /// Replace the authenticator and authorizer (SIGHUP reload). New CONNECTs and
    /// every later ACL check (deliveries on existing subscriptions included) use the
    /// new ones; to end live sessions whose credentials no longer hold, follow with
    /// [`Broker::revalidate`].
    pub fn reload_auth(
        &self,
        authenticator: Arc<dyn Authenticator>,
        authorizer: Arc<dyn Authorizer>,
    ) {
        let mut guard = match self.shared.auth.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = (authenticator, authorizer);
    }

    /// Re-check every live network session with `check` (after a reload of the
    /// password file, ACLs, CA or CRL). Each connection runs it once against its own
    /// credentials; a `Some(verdict)` disconnects that client (v5 DISCONNECT with the
    /// verdict's reason code and string, close for 3.1.1, audit event, no will).
    /// Returns at once; the checks run on the connection tasks.
    pub fn revalidate(&self, check: RevalidateCheck) {
        self.shared.revalidate.send_replace(Some(check));
    }

    /// Health probe: one round trip through the router without creating a session.
    /// When it returns, every message routed before it is in its connections' queues.
    /// Returns how long the router took to answer.
    pub async fn ping(&self) -> Result<Duration, BrokerError> {
        let started = tokio::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.shared
            .router_tx
            .send(link::RouterMsg::Ping(tx))
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?;
        Ok(started.elapsed())
    }

    /// Attach an in-process client (adapter, bridge) to the router: same semantics
    /// and the same authorization checks as a network client, without a socket.
    pub async fn connect_internal(
        &self,
        options: InternalOptions,
    ) -> Result<InternalClient, BrokerError> {
        internal::connect(self.shared.clone(), options).await
    }

    /// Current counters (the same figures the `$SYS/broker/...` topics carry).
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            audit: self.shared.log_limits.stats(),
            ..self.shared.stats.snapshot(self.shared.started)
        }
    }

    /// Resolves when the broker has been shut down and every connection task and the
    /// router have finished.
    pub async fn drained(&self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}
