//! Listeners: bind the sockets, accept connections, enforce the global connection
//! limit before any TLS work, run the TLS handshake under the connect deadline, and
//! hand each stream to the broker core in a tracked task. The per-listener state
//! (TLS server config, anonymous/password flags) is swapped atomically on reload:
//! new handshakes use the new state, existing connections keep theirs (a reload then asks
//! the broker to re-check live sessions, see [`super::revalidate`]).
//! Every accepted socket gets TCP keepalive probes (unless the listener turns them
//! off), so a peer that vanished without a FIN is closed by the kernel even when its
//! MQTT keep alive is 0. On `ws`/`wss` listeners the WebSocket upgrade (after TLS, if
//! any) runs under the same connect deadline.
//! It must never crash on accept errors, never block the accept loop on a client,
//! and never look at MQTT bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use super::core::Core;
pub use super::stream::ClientStream;
use crate::broker::{ConnectionInfo, ListenerContext};
use crate::edge::metrics::{ListenerCounters, OpenConnection};
use crate::edge::rate::{ConnectLimiter, ConnectRate};
use crate::edge::ws::{self, UpgradeError, WebSocketSettings};
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::tls::{self, IdentitySource, ReloadableServerConfig};

/// TLS part of a listener's state.
#[derive(Clone)]
pub struct TlsState {
    /// Server config used for new handshakes; also re-checks live client chains after a reload.
    pub server: Arc<ReloadableServerConfig>,
    /// Certificate field that becomes the identity.
    pub identity: IdentitySource,
}

/// What a new connection on a listener is served with; replaced as a whole on reload.
#[derive(Clone)]
pub struct ListenerState {
    /// Facts passed to the broker with every connection.
    pub context: Arc<ListenerContext>,
    /// `None` for plain TCP.
    pub tls: Option<TlsState>,
    /// The WebSocket upgrade's checks; `None` for MQTT straight on the socket.
    pub websocket: Option<Arc<WebSocketSettings>>,
    /// Keepalive probes set on each accepted socket; `None` leaves the kernel default (off).
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Connection attempts per source address, checked before TLS; `None`: not limited.
    pub connect_rate: Option<ConnectRate>,
}

/// Kernel TCP keepalive for an accepted socket: after `idle` without traffic the
/// kernel sends a probe every `interval`; after `count` unanswered probes it resets
/// the connection, and the connection task sees the error and ends (will included).
/// A dead peer is noticed after about `idle + interval * count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Silence before the first probe (TCP_KEEPIDLE).
    pub idle: Duration,
    /// Time between unanswered probes (TCP_KEEPINTVL).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub count: u32,
}

impl Default for TcpKeepalive {
    /// A vanished peer is dropped after 60 s + 5 x 10 s = 110 s (Linux's own default,
    /// 2 h + 9 x 75 s, is far too long for devices behind NATs and on flaky links).
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 5,
        }
    }
}

/// Turn on SO_KEEPALIVE with the given idle time, interval and probe count.
pub fn set_tcp_keepalive(socket: &TcpStream, keepalive: &TcpKeepalive) -> io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.count);
    socket2::SockRef::from(socket).set_tcp_keepalive(&params)
}

/// Atomically swappable listener state (read once per accepted connection).
pub type StateSlot = Arc<RwLock<Arc<ListenerState>>>;

/// Read the current state; a poisoned lock still holds a complete `Arc`, so use it.
pub fn current(slot: &StateSlot) -> Arc<ListenerState> {
    slot.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Replace the state used for new connections.
pub fn replace(slot: &StateSlot, state: ListenerState) {
    *slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
}

/// Bind a listening socket with SO_REUSEADDR (restarts do not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// State shared by every accept loop: the global connection limit and its refusals.
pub struct Admission {
    limit: Arc<Semaphore>,
    max: u32,
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// Refusals are logged at most once per this interval, with a count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Admission {
    /// Admission control for at most `max` simultaneous connections.
    pub fn new(max: u32) -> Self {
        Admission {
            limit: Arc::new(Semaphore::new(max as usize)),
            max,
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// Connections currently holding a permit.
    pub fn open_connections(&self) -> usize {
        (self.max as usize).saturating_sub(self.limit.available_permits())
    }

    fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.clone().try_acquire_owned().ok()
    }

    fn refuse(&self, listener: &str, peer: SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            *last = Some(now);
            warn!(
                listener,
                %peer,
                max_connections = self.max,
                refused_total = refused,
                "Connection limit reached: closing new connections before the TLS handshake."
            );
        }
    }
}

/// Everything an accept loop needs.
pub struct AcceptLoop {
    /// Listener name for logs.
    pub name: Arc<str>,
    /// The bound socket.
    pub socket: TcpListener,
    /// Current listener state.
    pub state: StateSlot,
    /// Global connection limit.
    pub admission: Arc<Admission>,
    /// This listener's counters (kept across reloads; shown by the metrics endpoint).
    pub counters: Arc<ListenerCounters>,
    /// Broker core that serves connections.
    pub core: Arc<dyn Core>,
    /// TLS handshake + CONNECT budget.
    pub connect_timeout: Duration,
    /// Cancelled to stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when the broker shuts down (abandons handshakes in progress).
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Accept errors that concern one connection only; the next accept is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl AcceptLoop {
    /// Accept until `stop_accepting` is cancelled. Resource errors (EMFILE, ENOBUFS, ...)
    /// are logged and backed off (10 ms doubling to 1 s), never fatal.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(10);
        let mut attempts = ConnectLimiter::default();
        loop {
            let accepted = tokio::select! {
                _ = self.stop_accepting.cancelled() => break,
                accepted = self.socket.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(e) if is_connection_error(&e) => {
                    debug!(listener = %self.name, reason = %e, "Accept failed for one connection.");
                    continue;
                }
                Err(e) => {
                    error!(
                        listener = %self.name,
                        reason = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Accept failed (out of file descriptors or memory?); backing off."
                    );
                    tokio::select! {
                        _ = self.stop_accepting.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if !self.within_connect_rate(&mut attempts, peer).await {
                drop(socket);
                continue;
            }
            let Some(permit) = self.admission.try_admit() else {
                self.admission.refuse(&self.name, peer);
                self.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
                drop(socket);
                continue;
            };
            let connection = Connection {
                peer,
                state: current(&self.state),
                core: self.core.clone(),
                deadline: Instant::now() + self.connect_timeout,
                shutdown: self.shutdown.clone(),
                open: OpenConnection::new(self.counters.clone()),
                _permit: permit,
            };
            self.tracker.spawn(connection.serve(socket));
        }
        debug!(listener = %self.name, "Stopped accepting connections.");
    }

    /// The listener's `connect_rate` for `peer`'s address: false (counted, logged under
    /// the peer's log limit) when the attempt is to be closed at once, before TLS.
    async fn within_connect_rate(&self, attempts: &mut ConnectLimiter, peer: SocketAddr) -> bool {
        let state = current(&self.state);
        let Some(rate) = &state.connect_rate else {
            return true;
        };
        if attempts.admit(rate, peer.ip(), Instant::now()) {
            return true;
        }
        self.counters
            .traffic
            .connects_refused
            .fetch_add(1, Ordering::Relaxed);
        limited(&self.core, peer, || {
            if crate::telemetry::limit::event(crate::telemetry::limit::Kind::RateLimited) {
                warn!(listener = %self.name, %peer, per_second = rate.per_second, burst = rate.burst, "Connection refused: too many attempts from this address (connect_rate); closed before the TLS handshake.");
            }
        })
        .await;
        false
    }
}

/// One accepted socket on its way to the broker core (the socket itself is passed to
/// [`Connection::serve`]).
struct Connection {
    peer: SocketAddr,
    state: Arc<ListenerState>,
    core: Arc<dyn Core>,
    deadline: Instant,
    shutdown: CancellationToken,
    /// Counted open for the connection's lifetime.
    open: OpenConnection,
    /// Held for the connection's lifetime: this is the connection limit.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// The connection's task: establish the stream, then hand it to the broker core.
    /// The TLS handshake and WebSocket upgrade run in a boxed future freed once they
    /// end, so the task of a long-lived connection holds only this small future and
    /// the core's (the inline establishment made every connection's task 3.9 KB).
    async fn serve(self, socket: TcpStream) {
        let Some((stream, info)) = Box::pin(self.establish(socket)).await else {
            return;
        };
        self.core.serve(stream, info).await;
    }

    /// TCP options, TLS handshake and WebSocket upgrade under the connect deadline;
    /// `None` (logged) when the connection is to be closed.
    async fn establish(&self, socket: TcpStream) -> Option<(ClientStream, ConnectionInfo)> {
        let peer = self.peer;
        let listener = self.state.context.name.clone();
        if let Err(e) = socket.set_nodelay(true) {
            debug!(%listener, %peer, reason = %e, "Could not set TCP_NODELAY.");
        }
        if let Some(keepalive) = &self.state.tcp_keepalive {
            if let Err(e) = set_tcp_keepalive(&socket, keepalive) {
                warn!(%listener, %peer, reason = %e, "Could not turn on TCP keepalive; a vanished peer is only noticed by MQTT keep alive.");
            }
        }
        let mut info = ConnectionInfo {
            peer,
            listener: self.state.context.clone(),
            certificate_identity: None,
            peer_certificates: None,
            connect_deadline: self.deadline,
            traffic: self.open.counters().traffic.clone(),
        };
        let stream = match &self.state.tls {
            None => ClientStream::tcp(socket),
            Some(tls) => {
                let handshake = tls_handshake(
                    tls,
                    socket,
                    &mut info,
                    &self.core,
                    self.deadline,
                    &self.shutdown,
                    self.open.counters(),
                );
                match handshake.await {
                    Some(stream) => stream,
                    None => return None,
                }
            }
        };
        let stream = match &self.state.websocket {
            None => stream,
            Some(settings) => {
                let upgrade = websocket_upgrade(
                    settings,
                    stream,
                    &info,
                    &self.core,
                    self.deadline,
                    &self.shutdown,
                    self.open.counters(),
                );
                match upgrade.await {
                    Some(stream) => stream,
                    None => return None,
                }
            }
        };
        let stream = stream.counted(self.open.counters().clone());
        Some((stream, info))
    }
}

/// The TLS handshake under the connect deadline; fills in the certificate identity.
/// `None` (logged) when the connection is to be closed.
async fn tls_handshake(
    tls: &TlsState,
    socket: TcpStream,
    info: &mut ConnectionInfo,
    core: &Arc<dyn Core>,
    deadline: Instant,
    shutdown: &CancellationToken,
    counters: &ListenerCounters,
) -> Option<ClientStream> {
    let peer = info.peer;
    let listener = info.listener.name.clone();
    // Boxed so the handshake state is freed once it completes: an idle connection's
    // task then holds only this small future and the broker's. `LeanTlsStream` holds
    // no TLS buffer while the connection is quiet (see `tls::lean`).
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        tls::LeanTlsStream::accept(tls.server.current(), socket),
    ));
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return None,
        result = handshake => result,
    };
    let stream = match handshake {
        Err(_) => {
            counters.tls_failure("timeout");
            debug!(%listener, %peer, "TLS handshake not completed within connect_timeout; closing.");
            return None;
        }
        Ok(Err(e)) => {
            let reason = limited(core, peer, || {
                tls::log_handshake_failure(&listener, peer, &e)
            })
            .await;
            counters.tls_failure(tls_failure_label(&reason));
            return None;
        }
        Ok(Ok(stream)) => stream,
    };
    match tls::peer_identity(stream.connection(), tls.identity) {
        Ok(identity) => {
            info.certificate_identity = identity;
            info.peer_certificates = tls::peer_chain(stream.connection()).map(Arc::new);
        }
        Err(e) => {
            limited(core, peer, || {
                Event::new(AuditKind::CertificateNoIdentity)
                    .listener(&listener)
                    .peer(Some(peer))
                    .reason(&e.to_string())
                    .emit();
            })
            .await;
            return None;
        }
    }
    Some(ClientStream::tls(stream))
}

/// The WebSocket upgrade under the (remaining) connect deadline. `None` (logged) when
/// the connection is to be closed.
async fn websocket_upgrade(
    settings: &WebSocketSettings,
    stream: ClientStream,
    info: &ConnectionInfo,
    core: &Arc<dyn Core>,
    deadline: Instant,
    shutdown: &CancellationToken,
    counters: &ListenerCounters,
) -> Option<ClientStream> {
    let peer = info.peer;
    let listener = &info.listener.name;
    let upgrade = Box::pin(tokio::time::timeout_at(
        deadline,
        ws::accept(stream, settings),
    ));
    let upgrade = tokio::select! {
        _ = shutdown.cancelled() => return None,
        result = upgrade => result,
    };
    match upgrade {
        Err(_) => {
            counters.ws_refusal("timeout");
            limited(core, peer, || {
                warn!(%listener, %peer, "WebSocket upgrade not completed within connect_timeout; closing.");
            })
            .await;
            None
        }
        Ok(Err(e)) => {
            counters.ws_refusal(match &e {
                UpgradeError::Refused { status: 404, .. } => "path",
                UpgradeError::Refused { status: 403, .. } => "origin",
                UpgradeError::Refused { status: 400, .. } => "subprotocol",
                _ => "invalid",
            });
            limited(core, peer, || {
                warn!(%listener, %peer, reason = %e, "WebSocket upgrade refused; closing.");
            })
            .await;
            None
        }
        Ok(Ok(stream)) => Some(ClientStream::ws(stream)),
    }
}

/// The metrics label of a TLS handshake failure.
fn tls_failure_label(reason: &tls::CertRejection) -> &'static str {
    match reason {
        tls::CertRejection::NoCertificate => "no_certificate",
        tls::CertRejection::UnknownCa => "unknown_ca",
        tls::CertRejection::Expired => "expired",
        tls::CertRejection::NotYetValid => "not_yet_valid",
        tls::CertRejection::Revoked => "revoked",
        tls::CertRejection::BadKeyUsage => "bad_key_usage",
        tls::CertRejection::Other(_) => "other",
    }
}

/// Write a line about `peer` under the core's log rate limits (its peer's window and the
/// broker-wide one), so a flood of bad handshakes cannot flood the log.
async fn limited<T>(core: &Arc<dyn Core>, peer: SocketAddr, write: impl FnOnce() -> T) -> T {
    match core.log_limits() {
        Some(limits) => {
            crate::telemetry::limit::scope(limits, Some(peer.ip()), async { write() }).await
        }
        None => write(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair over loopback: (client side, accepted side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn keepalive_sets_so_keepalive_idle_interval_and_count() {
        let (_client, accepted) = pair().await;
        let sock = socket2::SockRef::from(&accepted);
        assert!(!sock.keepalive().expect("read SO_KEEPALIVE"), "off before");
        let wanted = TcpKeepalive {
            idle: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            count: 3,
        };
        set_tcp_keepalive(&accepted, &wanted).expect("set");
        assert!(sock.keepalive().expect("read SO_KEEPALIVE"));
        assert_eq!(sock.tcp_keepalive_time().expect("idle"), wanted.idle);
        assert_eq!(
            sock.tcp_keepalive_interval().expect("interval"),
            wanted.interval
        );
        assert_eq!(sock.tcp_keepalive_retries().expect("count"), wanted.count);
    }

    #[tokio::test]
    async fn default_keepalive_drops_a_dead_peer_within_two_minutes() {
        let (_client, accepted) = pair().await;
        let d = TcpKeepalive::default();
        set_tcp_keepalive(&accepted, &d).expect("set");
        let sock = socket2::SockRef::from(&accepted);
        assert_eq!(sock.tcp_keepalive_time().expect("idle"), d.idle);
        assert!(d.idle + d.interval * d.count <= Duration::from_secs(120));
    }

    /// A core that serves nothing: only the shape of the connection task matters here.
    struct NoCore;

    impl Core for NoCore {
        fn serve(&self, _: ClientStream, _: ConnectionInfo) -> super::super::core::BoxFuture<()> {
            Box::pin(async {})
        }
        fn reload_auth(
            &self,
            _: Arc<dyn crate::auth::Authenticator>,
            _: Arc<dyn crate::acl::Authorizer>,
        ) {
        }
        fn drained(&self) -> super::super::core::BoxFuture<()> {
            Box::pin(async {})
        }
        fn health(&self) -> super::super::core::BoxFuture<Result<String, String>> {
            Box::pin(async { Ok(String::new()) })
        }
    }

    #[tokio::test]
    async fn a_connection_task_holds_none_of_the_handshake() {
        // Every open connection keeps its task for life. With the TLS handshake and
        // the WebSocket upgrade inline, the task was 3.9 KB (heaptrack, 1,000 idle TLS
        // connections): a third of an idle connection's memory.
        let (_client, accepted) = pair().await;
        let state = Arc::new(ListenerState {
            context: Arc::new(ListenerContext::default()),
            tls: None,
            websocket: Some(Arc::new(WebSocketSettings::new("/mqtt", &[], 1 << 20))),
            tcp_keepalive: None,
            connect_rate: None,
        });
        let connection = Connection {
            peer: accepted.peer_addr().expect("peer"),
            state,
            core: Arc::new(NoCore),
            deadline: Instant::now(),
            shutdown: CancellationToken::new(),
            open: OpenConnection::new(Arc::new(ListenerCounters::default())),
            _permit: Arc::new(Semaphore::new(1))
                .try_acquire_owned()
                .expect("permit"),
        };
        let task = connection.serve(accepted);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "the connection task's future is {size} bytes");
    }
}
