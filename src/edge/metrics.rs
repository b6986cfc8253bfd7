//! The Prometheus endpoint (`[metrics] bind`): `GET /metrics` answers the text exposition
//! format 0.0.4 with the broker's counters (the `$SYS` figures), the per-listener
//! counters kept here (connections, bytes, TLS handshake failures and WebSocket refusals
//! by reason), audit events by kind, certificate expiry and the process's RSS and CPU.
//! The HTTP side is deliberately tiny: one request per connection, the request head
//! bounded to [`MAX_REQUEST`] bytes and read within [`READ_DEADLINE`], at most
//! [`MAX_SCRAPES`] connections at once, everything but `GET /metrics` answered 404 and
//! closed. It must never hold a scraper's bytes beyond those bounds, nor block the broker:
//! it reads counters only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::broker::{BrokerStats, ListenerTraffic};

/// Largest request head (request line and headers) read from a scraper.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper gets to send its request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Time a scraper gets to take the answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Scrapes served at once; further connections are closed at once.
pub const MAX_SCRAPES: usize = 4;

/// `[metrics]`: the Prometheus endpoint; off unless `bind` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint, e.g. `"127.0.0.1:9883"`; none = no endpoint.
    pub bind: Option<String>,
}

impl MetricsConfig {
    /// The bind address, if configured; the error completes "bind ...".
    pub fn bind_addr(&self) -> Option<Result<SocketAddr, String>> {
        self.bind.as_ref().map(|b| {
            b.parse().map_err(|_| {
                format!("{b:?} is not a socket address (write e.g. \"127.0.0.1:9883\")")
            })
        })
    }
}

/// Why a TLS handshake failed, as a bounded label set.
pub const TLS_FAILURE_REASONS: [&str; 8] = [
    "timeout",
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "bad_key_usage",
    "other",
];

/// Why a WebSocket upgrade failed, as a bounded label set.
pub const WS_REFUSAL_REASONS: [&str; 5] = ["path", "origin", "subprotocol", "invalid", "timeout"];

/// Counters of one listener, shared by its accept loop, its connections and the endpoint.
/// Relaxed atomics: one add per accept, per socket read and per socket write.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted (past the connection limit).
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` was reached.
    pub refused_limit: AtomicU64,
    /// Connections ended (so open = accepted - closed).
    pub closed: AtomicU64,
    /// MQTT bytes read from clients.
    pub bytes_received: AtomicU64,
    /// MQTT bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// TLS handshake failures by [`TLS_FAILURE_REASONS`].
    pub tls_failures: [AtomicU64; TLS_FAILURE_REASONS.len()],
    /// WebSocket upgrade refusals by [`WS_REFUSAL_REASONS`].
    pub ws_refusals: [AtomicU64; WS_REFUSAL_REASONS.len()],
    /// Messages and rate-control actions, kept by the connection tasks.
    pub traffic: Arc<ListenerTraffic>,
}

impl ListenerCounters {
    /// Count a TLS handshake failure under its reason label.
    pub fn tls_failure(&self, reason: &str) {
        count_label(&self.tls_failures, &TLS_FAILURE_REASONS, reason);
    }

    /// Count a WebSocket refusal under its reason label.
    pub fn ws_refusal(&self, reason: &str) {
        count_label(&self.ws_refusals, &WS_REFUSAL_REASONS, reason);
    }
}

fn count_label(counters: &[AtomicU64], labels: &[&str], label: &str) {
    let i = labels
        .iter()
        .position(|l| *l == label)
        .unwrap_or(labels.len() - 1);
    counters[i].fetch_add(1, Ordering::Relaxed);
}

/// Holds one open connection in its listener's counters until dropped.
pub struct OpenConnection(Arc<ListenerCounters>);

impl OpenConnection {
    /// Count an accepted connection as open.
    pub fn new(counters: Arc<ListenerCounters>) -> Self {
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        OpenConnection(counters)
    }

    /// The listener's counters.
    pub fn counters(&self) -> &Arc<ListenerCounters> {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One listener as the endpoint shows it.
#[derive(Clone)]
pub struct ListenerView {
    /// `[[listener]] name`.
    pub name: Arc<str>,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
    /// Its counters.
    pub counters: Arc<ListenerCounters>,
}

/// Everything one scrape shows, gathered by the caller.
pub struct Snapshot {
    /// The broker's counters, if the core has them.
    pub broker: Option<BrokerStats>,
    /// Every listener.
    pub listeners: Vec<ListenerView>,
    /// Audit events by kind name.
    pub audit: Vec<(&'static str, u64)>,
    /// Watched certificates: label and `notAfter` (Unix seconds), or why it is unreadable.
    pub certificates: Vec<(String, Result<i64, String>)>,
    /// Now, Unix seconds.
    pub now: i64,
}

/// Text exposition format 0.0.4 with HELP and TYPE lines.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition of `s` plus the process's own figures.
pub fn render(s: &Snapshot) -> String {
    let mut out = Exposition(String::with_capacity(8 * 1024));
    if let Some(b) = &s.broker {
        broker_families(&mut out, b);
    }
    listener_families(&mut out, &s.listeners);
    out.family(
        "tollgate_audit_events_total",
        "counter",
        "Audit events by kind: authentication outcomes (auth_succeeded, auth_refused, connect_refused), ACL denials (acl_denied, delivery_denied), certificate rejections, reloads, field writes.",
    );
    for (kind, n) in &s.audit {
        out.sample("tollgate_audit_events_total", &[("kind", kind)], n);
    }
    out.family(
        "tollgate_certificate_expiry_seconds",
        "gauge",
        "Seconds until a watched certificate's notAfter (negative once expired).",
    );
    for (label, not_after) in &s.certificates {
        if let Ok(t) = not_after {
            out.sample(
                "tollgate_certificate_expiry_seconds",
                &[("certificate", label)],
                t - s.now,
            );
        }
    }
    out.family(
        "tollgate_certificate_read_errors",
        "gauge",
        "1 for a watched certificate that cannot be read or parsed.",
    );
    for (label, not_after) in &s.certificates {
        if not_after.is_err() {
            out.sample(
                "tollgate_certificate_read_errors",
                &[("certificate", label)],
                1,
            );
        }
    }
    process_families(&mut out);
    out.0
}

fn broker_families(out: &mut Exposition, b: &BrokerStats) {
    out.single(
        "tollgate_uptime_seconds",
        "gauge",
        "Time since the broker started.",
        b.uptime.as_secs(),
    );
    out.single(
        "tollgate_clients_connected",
        "gauge",
        "Attached connections, network and in-process.",
        b.clients_connected,
    );
    out.single(
        "tollgate_messages_received_total",
        "counter",
        "PUBLISH packets received from clients.",
        b.messages_received,
    );
    out.single(
        "tollgate_messages_sent_total",
        "counter",
        "PUBLISH packets sent to clients.",
        b.messages_sent,
    );
    out.single(
        "tollgate_received_bytes_total",
        "counter",
        "Bytes read from client sockets, all listeners.",
        b.bytes_received,
    );
    out.single(
        "tollgate_sent_bytes_total",
        "counter",
        "Bytes written to client sockets, all listeners.",
        b.bytes_sent,
    );
    out.single(
        "tollgate_subscriptions",
        "gauge",
        "Subscriptions over all sessions.",
        b.subscriptions,
    );
    out.single(
        "tollgate_sessions",
        "gauge",
        "Sessions, online and offline.",
        b.sessions,
    );
    out.single(
        "tollgate_retained_messages",
        "gauge",
        "Retained messages stored.",
        b.retained_messages,
    );
    out.single(
        "tollgate_retained_bytes",
        "gauge",
        "Bytes held by retained messages.",
        b.retained_bytes,
    );
    out.single(
        "tollgate_durable_holds",
        "gauge",
        "Publisher acknowledgements held back for durable subscribers now.",
        b.durable_holds,
    );
    out.single(
        "tollgate_queued_messages",
        "gauge",
        "Messages held for sessions, online and offline: queued or in flight and not yet acknowledged (summed twice a second).",
        b.queued_messages,
    );
    out.single(
        "tollgate_queued_bytes",
        "gauge",
        "Bytes of the messages held for sessions, queued or in flight (summed twice a second).",
        b.queued_bytes,
    );
    out.single("tollgate_publishers_blocked_total", "counter", "QoS 1/2 messages whose publisher's acknowledgement was held back by a full queue (block-publishers).", b.publishers_blocked);
    out.family(
        "tollgate_messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
    );
    for (reason, n) in [
        ("queue_overflow", b.dropped_queue_overflow),
        ("oversize", b.dropped_oversize),
        ("slow_consumer", b.dropped_slow_consumer),
        ("retained_quota", b.dropped_retained_quota),
        ("expired", b.dropped_expired),
    ] {
        out.sample("tollgate_messages_dropped_total", &[("reason", reason)], n);
    }
    auth_family(out, b);
    out.family(
        "tollgate_refusals_total",
        "counter",
        "CONNECTs and SUBSCRIBE filters refused by a quota or session ownership, by reason.",
    );
    for (reason, n) in [
        ("session_owner", b.refused_session_owner),
        ("session_quota", b.refused_session_quota),
        ("subscription_quota", b.refused_subscription_quota),
    ] {
        out.sample("tollgate_refusals_total", &[("reason", reason)], n);
    }
    out.single(
        "tollgate_protocol_violations_total",
        "counter",
        "Connections closed for a protocol violation and packets refused as invalid.",
        b.audit.protocol_violation,
    );
    out.single(
        "tollgate_timeouts_total",
        "counter",
        "Connect and keep alive timeouts.",
        b.audit.timeout,
    );
    out.single(
        "tollgate_log_lines_suppressed_total",
        "counter",
        "Log lines not written because a rate limit was reached.",
        b.audit.log_lines_suppressed,
    );
    out.single(
        "tollgate_state_retained_messages",
        "gauge",
        "Retained messages in the durable state log.",
        b.state_retained,
    );
    out.single(
        "tollgate_state_sessions",
        "gauge",
        "Persistent sessions in the durable session log.",
        b.state_sessions,
    );
    out.single(
        "tollgate_state_bytes",
        "gauge",
        "Disk bytes of the live records of the durable state logs.",
        b.state_bytes,
    );
    out.single(
        "tollgate_state_failures_total",
        "counter",
        "Durable state changes that could not be stored.",
        b.state_failures,
    );
}

/// `tollgate_auth_total`: every CONNECT authentication and MQTT 5 re-authentication by
/// method, outcome and reason.
fn auth_family(out: &mut Exposition, b: &BrokerStats) {
    out.family(
        "tollgate_auth_total",
        "counter",
        "CONNECT authentications and MQTT 5 re-authentications (AUTH) by method (password, jwt, certificate, anonymous, other), outcome (success, refused) and reason (accepted, bad_credentials, not_authorized, throttled, unavailable, timeout).",
    );
    for (method, reason, n) in &b.auth {
        let outcome = if *reason == "accepted" {
            "success"
        } else {
            "refused"
        };
        out.sample(
            "tollgate_auth_total",
            &[("method", method), ("outcome", outcome), ("reason", reason)],
            n,
        );
    }
}

fn listener_families(out: &mut Exposition, listeners: &[ListenerView]) {
    type Get = fn(&ListenerCounters) -> u64;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let simple: [(&str, &str, &str, Get); 9] = [
        (
            "tollgate_listener_connections_accepted_total",
            "counter",
            "Connections accepted by the listener.",
            |c| c.accepted.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_connections_refused_total",
            "counter",
            "Connections closed at once because max_connections was reached.",
            |c| c.refused_limit.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_connections_open",
            "gauge",
            "Connections open on the listener (handshakes included).",
            |c| {
                c.accepted
                    .load(Ordering::Relaxed)
                    .saturating_sub(c.closed.load(Ordering::Relaxed))
            },
        ),
        (
            "tollgate_listener_received_bytes_total",
            "counter",
            "MQTT bytes read from the listener's clients.",
            |c| c.bytes_received.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_sent_bytes_total",
            "counter",
            "MQTT bytes written to the listener's clients.",
            |c| c.bytes_sent.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_messages_received_total",
            "counter",
            "PUBLISH packets received from the listener's clients.",
            |c| c.traffic.messages_received.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_messages_sent_total",
            "counter",
            "PUBLISH packets sent to the listener's clients.",
            |c| c.traffic.messages_sent.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_subscriptions_downgraded_total",
            "counter",
            "SUBSCRIBE filters granted a lower QoS than asked because of max_qos.",
            |c| c.traffic.qos_downgraded.load(Ordering::Relaxed),
        ),
        (
            "tollgate_listener_throttled_total",
            "counter",
            "Times a client's socket was left unread because it exceeded publish_rate.",
            |c| c.traffic.publish_throttled.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in simple {
        out.family(name, kind, help);
        for l in listeners {
            let labels = [("listener", &*l.name), ("transport", l.transport)];
            out.sample(name, &labels, get(&l.counters));
        }
    }
    out.family(
        "tollgate_rate_limited_total",
        "counter",
        "Connections closed or refused by a listener's rate controls, by action: connect_rate (closed before TLS), publish_rate (disconnected), max_qos (PUBLISH or will above it).",
    );
    for l in listeners {
        let t = &l.counters.traffic;
        for (action, n) in [
            ("connect_rate", t.connects_refused.load(Ordering::Relaxed)),
            (
                "publish_rate",
                t.publish_rate_disconnects.load(Ordering::Relaxed),
            ),
            ("max_qos", t.qos_refused.load(Ordering::Relaxed)),
        ] {
            out.sample(
                "tollgate_rate_limited_total",
                &[("listener", &l.name), ("action", action)],
                n,
            );
        }
    }
    out.family(
        "tollgate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed, by listener and reason.",
    );
    for l in listeners
        .iter()
        .filter(|l| l.transport == "tls" || l.transport == "wss")
    {
        for (reason, n) in TLS_FAILURE_REASONS.iter().zip(&l.counters.tls_failures) {
            out.sample(
                "tollgate_tls_handshake_failures_total",
                &[("listener", &l.name), ("reason", reason)],
                load(n),
            );
        }
    }
    out.family(
        "tollgate_websocket_upgrades_refused_total",
        "counter",
        "WebSocket upgrades refused, by listener and reason.",
    );
    for l in listeners
        .iter()
        .filter(|l| l.transport == "ws" || l.transport == "wss")
    {
        for (reason, n) in WS_REFUSAL_REASONS.iter().zip(&l.counters.ws_refusals) {
            out.sample(
                "tollgate_websocket_upgrades_refused_total",
                &[("listener", &l.name), ("reason", reason)],
                load(n),
            );
        }
    }
}

/// Linux's fixed unit of CPU times in /proc (USER_HZ).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn process_families(out: &mut Exposition) {
    // /proc/self/stat: the fields after the parenthesised command name.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    // Field numbers of proc(5) minus 3 (pid and comm are gone): utime 14, stime 15, vsize 23, rss 24.
    if let (Some(utime), Some(stime)) = (field(11), field(12)) {
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process.",
            (utime + stime) as f64 / CLOCK_TICKS_PER_SECOND,
        );
    }
    if let Some(vsize) = field(20) {
        out.single(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size.",
            vsize,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = rss_kib {
        out.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            kib * 1024,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.count(),
        );
    }
}

/// Serve `GET /metrics` on `socket` until `stop`; each scrape calls `snapshot` on the
/// blocking pool (it reads certificate files) and renders it.
pub async fn serve(
    socket: TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    if let Ok(addr) = socket.local_addr() {
        info!(%addr, "Serving Prometheus metrics at /metrics.");
    }
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(reason = %e, "Metrics endpoint: accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            warn!(%peer, max = MAX_SCRAPES, "Metrics endpoint: too many scrapes at once; closing this one.");
            continue;
        };
        let snapshot = snapshot.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = answer(stream, peer, snapshot) => {}
            }
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    Other,
}

/// Parse a complete request head; `Ok(None)` while incomplete.
fn parse(head: &[u8]) -> Result<Option<Request>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Ok(Some(
                if request.method == Some("GET") && path == "/metrics" {
                    Request::Metrics
                } else {
                    Request::Other
                },
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a complete request".to_string());
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(request) = parse(&head)? {
                return Ok(request);
            }
            if head.len() > MAX_REQUEST {
                return Err(format!("request head over {MAX_REQUEST} bytes"));
            }
        }
    })
    .await;
    let response = match read {
        Err(_) => {
            warn!(%peer, deadline_s = READ_DEADLINE.as_secs(), "Metrics endpoint: no complete request in time; closing.");
            return;
        }
        Ok(Err(reason)) => {
            warn!(%peer, %reason, "Metrics endpoint: bad request; closing.");
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        Ok(Ok(Request::Other)) => {
            debug!(%peer, "Metrics endpoint: not GET /metrics; 404.");
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".to_vec()
        }
        Ok(Ok(Request::Metrics)) => {
            let body = match tokio::task::spawn_blocking(move || render(&snapshot())).await {
                Ok(body) => body,
                Err(e) => {
                    warn!(%peer, reason = %e, "Metrics endpoint: gathering the figures failed.");
                    return;
                }
            };
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(body.as_bytes());
            response
        }
    };
    let written = tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!(%peer, "Metrics endpoint: the answer could not be sent in time.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served_and_a_partial_head_waits() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Request::Metrics))
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Ok(Some(Request::Metrics))
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Ok(Some(Request::Other)));
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Ok(Some(Request::Other))
        );
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Ok(None));
        assert!(parse(b"\x00\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let counters = Arc::new(ListenerCounters::default());
        counters.tls_failure("unknown_ca");
        counters.tls_failure("something new");
        let text = render(&Snapshot {
            broker: Some(BrokerStats::default()),
            listeners: vec![ListenerView {
                name: Arc::from("devices"),
                transport: "wss",
                counters,
            }],
            audit: vec![("acl_denied", 3)],
            certificates: vec![
                ("devices-server".to_string(), Ok(1_000)),
                ("gone".to_string(), Err("x".to_string())),
            ],
            now: 400,
        });
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().expect("name").to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                assert!(typed.contains(name), "{name} sampled before its TYPE");
            }
        }
        assert!(text.contains(
            "tollgate_tls_handshake_failures_total{listener=\"devices\",reason=\"unknown_ca\"} 1\n"
        ));
        assert!(text.contains(
            "tollgate_tls_handshake_failures_total{listener=\"devices\",reason=\"other\"} 1\n"
        ));
        assert!(text
            .contains("tollgate_certificate_expiry_seconds{certificate=\"devices-server\"} 600\n"));
        assert!(text.contains("tollgate_certificate_read_errors{certificate=\"gone\"} 1\n"));
        assert!(text.contains("tollgate_audit_events_total{kind=\"acl_denied\"} 3\n"));
    }
}
