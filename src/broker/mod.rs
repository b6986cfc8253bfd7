//! The broker core: codec wrapper, router (subscription trie, retained store,
//! session table), one task per connection, and the in-process client API used by
//! adapters and the bridge. It must never panic on client input and must hold
//! nothing for clients or topics that are no longer live.
//!
//! Layout (no module imports this one: it only holds the `Broker` handle and the
//! public re-exports; `scripts/check-imports.py` keeps the files free of cycles):
//! - `codec`: panic-free MQTT 3.1.1/5 codec (`decode`, `encode`); 3.1.1 is mapped
//!   onto the v5 packet model.
//! - `link`: the messages endpoints and the router exchange, with the endpoints side
//!   by side: `link/network` (one task per socket: read CONNECT → admit → session
//!   loop; keepalive, inbound topic aliases and Receive Maximum live there) and
//!   `link/internal` (in-process clients: `Broker::connect_internal`, used by the
//!   bridge and adapters).
//! - `checks`: what both endpoints check before the router (topics, filters, ACL on
//!   SUBSCRIBE, the `Violation` that ends a connection).
//! - `router`: the single owner of routing state (trie, retained store, sessions,
//!   offline queues, inflight windows, wills, timers, durable hold-backs), split by
//!   role into `router/{sessions,requests,deliver,sys}`.
//! - `trie`: subscription trie with shared-subscription groups, pruned on removal.
//! - `retained`: retained messages in a topic tree, matched against filters.
//! - `reason`: `ReasonCode`, the v5 reason codes and their 3.1.1 mappings.
//! - `shared`, `settings`, `revalidate`, `keepalive`: shared state, configuration,
//!   revalidation types and the keep alive policy.
//! - `aliases`, `fasthash`, `stats`: topic aliases, cheap integer hashing on the
//!   per-message path, and the counters behind `Broker::stats()` and `$SYS`.
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
mod checks;
pub mod codec;
mod fasthash;
pub mod fuzz_router;
mod keepalive;
mod link;
mod persist;
mod reason;
mod retained;
mod revalidate;
mod router;
mod settings;
mod shared;
mod stats;
mod trie;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::acl::Authorizer;
use crate::auth::Authenticator;
use crate::telemetry::limit as log_limit;
use shared::Shared;

pub use keepalive::{KeepAliveGrant, KeepAlivePolicy};
pub use link::internal::{Delivery, DeliveryAck, InternalClient, InternalOptions};
pub use link::pool::release as release_spare_batches;
pub use link::{BrokerError, QueueOverflow};
pub use persist::{PersistenceSettings, SyncSetting};
pub use reason::ReasonCode;
pub use revalidate::{RevalidateCheck, RevalidateVerdict, SessionCredentials};
pub use settings::{BrokerSettings, ConnectionInfo, ListenerContext, DEFAULT_DATA_DIR};
pub use stats::{BrokerStats, ListenerTraffic};

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
        let (shared, router_rx) =
            Shared::new(settings, authenticator, authorizer, shutdown.clone());
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
    /// A plain function returning the connection's future (not an `async fn`): an async
    /// wrapper would store the stream and the connection facts a second time in every
    /// connection's memory.
    pub fn serve<S>(
        &self,
        stream: S,
        info: ConnectionInfo,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        // The connection's log window lives in its task (no lock); its peer's is shared.
        let (limits, peer) = (shared.log_limits.clone(), Some(info.peer.ip()));
        self.shared.tracker.track_future(log_limit::scope(
            limits,
            peer,
            link::network::run(shared, stream, info),
        ))
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
        self.shared.set_auth(authenticator, authorizer);
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
        link::internal::connect(self.shared.clone(), options).await
    }

    /// The log rate limits in force, so lines written outside the broker about its
    /// clients (a TLS handshake refused by a listener) share their windows.
    pub fn log_limits(&self) -> std::sync::Arc<crate::telemetry::limit::LogLimits> {
        self.shared.log_limits.clone()
    }

    /// Publish a listener's counters under `$SYS/tollgate/listener/<name>/...` (once per
    /// listener; a second registration of the name replaces the first).
    pub fn register_listener(&self, name: Arc<str>, traffic: Arc<ListenerTraffic>) {
        let mut listeners = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners.retain(|(n, _)| *n != name);
        listeners.push((name, traffic));
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
