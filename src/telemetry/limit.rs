//! Log flood protection (issue 7): counts every audit-worthy event a client can cause
//! (ACL denials, authentication refusals, invalid CONNECTs, protocol violations, timeouts)
//! and rate-limits the *lines* written about them, per connection, per peer address and
//! for the whole broker; and [`LogStr`], which truncates and escapes client-supplied text
//! (client ids, user names, topics, reason strings) so a client can neither forge log lines
//! nor fill the disk. It must never drop a count: a suppressed line is still counted in
//! [`AuditStats`] and reported by the next summary line of the scope that suppressed it.
//!
//! # Scopes and defaults
//! - **Connection** ([`DEFAULT_PER_CONNECTION`] lines per [`DEFAULT_INTERVAL`]): owned by the
//!   connection task through a task-local ([`scope`]), so the check takes no lock. A device
//!   that misbehaves in a loop says so ten times a minute, which is enough to diagnose it.
//! - **Peer** ([`DEFAULT_PER_PEER`] lines per interval per IPv4 address or IPv6 /64): one
//!   attacker opening many connections. A fixed table of [`PEER_TABLE_SETS`] ×
//!   [`PEER_TABLE_WAYS`] slots, allocated on first use and never grown: when the set of a new
//!   peer is full, the oldest window is evicted, its pending suppressed counts move to the
//!   broker scope's next summary, and [`AuditStats::log_peers_evicted`] counts it.
//! - **Broker** ([`DEFAULT_PER_BROKER`] lines per interval): many addresses at once. This is what
//!   bounds disk usage whatever the number of attackers (about 1,000 lines of at most a few
//!   KiB each per minute).
//!
//! A summary line (`event = "log_lines_suppressed"`, target `audit`) is written when a scope
//! with suppressed lines sees its next event after its interval ended, and for a connection
//! also when the connection ends. Events outside any scope (in-process clients, tests that
//! call an authenticator directly) are logged without limit and are not counted here.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines per connection per interval: a looping device is diagnosed from ten lines.
pub const DEFAULT_PER_CONNECTION: u32 = 10;
/// Lines per peer address (IPv6: per /64) per interval: five connections' worth.
pub const DEFAULT_PER_PEER: u32 = 50;
/// Lines per broker per interval: bounds the disk whatever the number of peers.
pub const DEFAULT_PER_BROKER: u32 = 1000;
/// Length of one limiting window; also how often a scope may write its summary.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Sets in the per-peer table (a power of two).
pub const PEER_TABLE_SETS: usize = 512;
/// Slots per set: 512 × 4 = 2,048 peers tracked at most (192 KiB: six counters of
/// suppressed lines per slot, one per [`Kind`]).
pub const PEER_TABLE_WAYS: usize = 4;
/// Bytes of a client-supplied string written to a log line; the rest is counted, not shown.
pub const MAX_LOGGED_BYTES: usize = 256;

/// What a rate-limited log line is about (one counter each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PUBLISH, SUBSCRIBE or will refused by the ACL.
    AclDenied,
    /// CONNECT refused by the authenticator (bad credentials, throttled, not authorized)
    /// or because its client id holds a session of another identity.
    AuthRefused,
    /// CONNECT that could not be decoded or is outside the broker's policy.
    InvalidConnect,
    /// A client broke the protocol after connecting (or sent something refused as invalid).
    ProtocolViolation,
    /// Connect timeout or keep alive timeout.
    Timeout,
    /// A listener's rate control acted (`connect_rate`, `publish_rate`, `max_qos`).
    RateLimited,
}

const KINDS: usize = 6;

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
}

/// Limits in force (`[log.rate_limit]`); [`Default`] gives the documented defaults.
/// A limit of 0 writes no line of that scope, only its summaries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogLimitSettings {
    /// Lines per connection per interval.
    pub per_connection: u32,
    /// Lines per peer address (IPv6: per /64) per interval, over all its connections.
    pub per_peer: u32,
    /// Lines per broker per interval, over all peers.
    pub per_broker: u32,
    /// Window length, and how often each scope may write a summary.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub interval: Duration,
}

impl Default for LogLimitSettings {
    fn default() -> Self {
        LogLimitSettings {
            per_connection: DEFAULT_PER_CONNECTION,
            per_peer: DEFAULT_PER_PEER,
            per_broker: DEFAULT_PER_BROKER,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// Counts of audit-worthy events and of log lines not written (`Broker::stats()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Accesses refused by the ACL (publish, subscribe, will).
    pub acl_denied: u64,
    /// CONNECTs refused by authentication, or because their client id holds a session
    /// of another identity.
    pub auth_refused: u64,
    /// CONNECTs refused as invalid or outside policy.
    pub invalid_connect: u64,
    /// Connections closed for a protocol violation, and packets refused as invalid.
    pub protocol_violation: u64,
    /// Connect and keep alive timeouts.
    pub timeout: u64,
    /// Log lines not written because a rate limit was reached (their events are counted above).
    pub log_lines_suppressed: u64,
    /// Peers evicted from the full per-peer table while their window was still running.
    pub log_peers_evicted: u64,
}

/// One limiting window of one scope.
#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    lines: u32,
    suppressed: [u64; KINDS],
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            started: now,
            lines: 0,
            suppressed: [0; KINDS],
        }
    }

    fn expired(&self, now: Instant, interval: Duration) -> bool {
        now.saturating_duration_since(self.started) >= interval
    }

    /// Starts a new window if the interval has passed; returns what the old one suppressed.
    fn roll(&mut self, now: Instant, interval: Duration) -> Option<[u64; KINDS]> {
        if !self.expired(now, interval) {
            return None;
        }
        let old = std::mem::replace(self, Window::new(now));
        old.suppressed
            .iter()
            .any(|&n| n > 0)
            .then_some(old.suppressed)
    }

    /// Takes one line of the budget, or records the line as suppressed.
    fn admit(&mut self, kind: Kind, limit: u32) -> bool {
        if self.lines < limit {
            self.lines += 1;
            true
        } else {
            self.suppressed[kind.index()] += 1;
            false
        }
    }
}

/// A peer address as the limiter keys it: IPv4 as is, IPv6 by its /64 (one host's share).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
struct PeerSlot {
    key: IpAddr,
    window: Window,
}

/// State shared by every connection of one broker (behind one short mutex).
struct SharedState {
    /// `PEER_TABLE_SETS * PEER_TABLE_WAYS` slots once the first peer is seen.
    peers: Vec<Option<PeerSlot>>,
    /// The broker-wide window; it also carries the suppressed counts of evicted peers
    /// into its next summary.
    global: Window,
}

/// A summary to write once the lock is released.
struct Summary {
    scope: &'static str,
    peer: Option<IpAddr>,
    suppressed: [u64; KINDS],
}

/// The per-broker limiter: counters, the peer table and the broker-wide window.
pub struct LogLimits {
    settings: LogLimitSettings,
    counts: [AtomicU64; KINDS],
    suppressed: AtomicU64,
    peers_evicted: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    state: Mutex<SharedState>,
}

impl fmt::Debug for LogLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimits")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits::new(LogLimitSettings::default())
    }
}

impl LogLimits {
    /// A limiter with `settings`; the peer table is allocated on first use.
    pub fn new(settings: LogLimitSettings) -> Self {
        LogLimits {
            settings,
            counts: Default::default(),
            suppressed: AtomicU64::new(0),
            peers_evicted: AtomicU64::new(0),
            hasher: Default::default(),
            state: Mutex::new(SharedState {
                peers: Vec::new(),
                global: Window::new(Instant::now()),
            }),
        }
    }

    /// The limits in force.
    pub fn settings(&self) -> &LogLimitSettings {
        &self.settings
    }

    /// Current counts.
    pub fn stats(&self) -> AuditStats {
        let get = |k: Kind| self.counts[k.index()].load(Ordering::Relaxed);
        AuditStats {
            acl_denied: get(Kind::AclDenied),
            auth_refused: get(Kind::AuthRefused),
            invalid_connect: get(Kind::InvalidConnect),
            protocol_violation: get(Kind::ProtocolViolation),
            timeout: get(Kind::Timeout),
            log_lines_suppressed: self.suppressed.load(Ordering::Relaxed),
            log_peers_evicted: self.peers_evicted.load(Ordering::Relaxed),
        }
    }

    /// Peers currently tracked (at most `PEER_TABLE_SETS * PEER_TABLE_WAYS`).
    pub fn tracked_peers(&self) -> usize {
        self.lock().peers.iter().filter(|s| s.is_some()).count()
    }

    fn count(&self, kind: Kind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn suppress(&self) -> bool {
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer and broker limits; writes due summaries after releasing the lock.
    fn admit_shared(&self, kind: Kind, peer: Option<IpAddr>, now: Instant) -> bool {
        let interval = self.settings.interval;
        let mut summaries: [Option<Summary>; 2] = [None, None];
        let admitted = {
            let mut state = self.lock();
            let peer_ok = match peer {
                None => true,
                Some(ip) => {
                    let key = peer_key(ip);
                    let slot = self.peer_slot(&mut state, key, now);
                    if let Some(suppressed) = slot.window.roll(now, interval) {
                        summaries[0] = Some(Summary {
                            scope: "peer",
                            peer: Some(key),
                            suppressed,
                        });
                    }
                    slot.window.admit(kind, self.settings.per_peer)
                }
            };
            peer_ok && {
                if let Some(suppressed) = state.global.roll(now, interval) {
                    summaries[1] = Some(Summary {
                        scope: "broker",
                        peer: None,
                        suppressed,
                    });
                }
                state.global.admit(kind, self.settings.per_broker)
            }
        };
        for s in summaries.into_iter().flatten() {
            write_summary(&s, interval);
        }
        admitted || self.suppress()
    }

    /// The slot of `key`, taking an empty, expired or the oldest slot of its set.
    fn peer_slot<'s>(
        &self,
        state: &'s mut SharedState,
        key: IpAddr,
        now: Instant,
    ) -> &'s mut PeerSlot {
        if state.peers.is_empty() {
            state.peers = vec![None; PEER_TABLE_SETS * PEER_TABLE_WAYS];
        }
        let set = (self.hasher.hash_one(key) as usize) & (PEER_TABLE_SETS - 1);
        let base = set * PEER_TABLE_WAYS;
        let ways = base..base + PEER_TABLE_WAYS;
        let found = ways
            .clone()
            .find(|&i| state.peers[i].as_ref().is_some_and(|s| s.key == key));
        let index = found.unwrap_or_else(|| {
            let victim = ways
                .min_by_key(|&i| match &state.peers[i] {
                    None => (0, None),
                    Some(s) => (1, Some(s.window.started)),
                })
                .expect("a set has ways");
            if let Some(old) = state.peers[victim].take() {
                for (e, s) in state
                    .global
                    .suppressed
                    .iter_mut()
                    .zip(old.window.suppressed)
                {
                    *e += s;
                }
                if !old.window.expired(now, self.settings.interval) {
                    self.peers_evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            state.peers[victim] = Some(PeerSlot {
                key,
                window: Window::new(now),
            });
            victim
        });
        state.peers[index]
            .as_mut()
            .expect("slot just found or filled")
    }
}

fn write_summary(s: &Summary, interval: Duration) {
    let total: u64 = s.suppressed.iter().sum();
    if total == 0 {
        return;
    }
    let [acl_denied, auth_refused, invalid_connect, protocol_violation, timeout, rate_limited] =
        s.suppressed;
    let peer = match s.peer {
        Some(IpAddr::V6(p)) => format!("{p}/64"),
        Some(p) => p.to_string(),
        None => "any".to_string(),
    };
    tracing::warn!(
        target: "audit",
        event = "log_lines_suppressed",
        scope = s.scope,
        %peer,
        suppressed = total,
        acl_denied,
        auth_refused,
        invalid_connect,
        protocol_violation,
        timeout,
        rate_limited,
        interval_secs = interval.as_secs(),
        "Log lines suppressed by the rate limit; every event is still counted in the broker statistics."
    );
}

/// The limiter state of one connection task.
struct ConnectionScope {
    limits: Arc<LogLimits>,
    peer: Option<IpAddr>,
    /// The connection's own window; `None` for a task that is not a connection (the router).
    window: Option<RefCell<Window>>,
}

impl ConnectionScope {
    fn admit(&self, kind: Kind, count: bool, now: Instant) -> bool {
        if count {
            self.limits.count(kind);
        }
        let interval = self.limits.settings.interval;
        if let Some(window) = &self.window {
            let (rolled, admitted) = {
                let mut window = window.borrow_mut();
                let rolled = window.roll(now, interval);
                (
                    rolled,
                    window.admit(kind, self.limits.settings.per_connection),
                )
            };
            self.summary(rolled);
            if !admitted {
                return self.limits.suppress();
            }
        }
        self.limits.admit_shared(kind, self.peer, now)
    }

    fn summary(&self, suppressed: Option<[u64; KINDS]>) {
        if let Some(suppressed) = suppressed {
            let summary = Summary {
                scope: "connection",
                peer: self.peer,
                suppressed,
            };
            write_summary(&summary, self.limits.settings.interval);
        }
    }
}

impl Drop for ConnectionScope {
    /// What the last window suppressed is reported when the connection ends.
    fn drop(&mut self) {
        if let Some(window) = self.window.as_mut() {
            let suppressed = window.get_mut().suppressed;
            self.summary(Some(suppressed));
        }
    }
}

tokio::task_local! {
    static CONNECTION: ConnectionScope;
}

/// Runs `task` under `limits`: [`event()`] and [`line()`] inside it are counted and limited.
/// With `peer`, `task` is a connection task with its own window and its peer's; without,
/// (the router) only the broker-wide window applies.
pub fn scope<F: Future>(
    limits: Arc<LogLimits>,
    peer: Option<IpAddr>,
    task: F,
) -> impl Future<Output = F::Output> {
    let window = peer.map(|_| RefCell::new(Window::new(Instant::now())));
    CONNECTION.scope(
        ConnectionScope {
            limits,
            peer,
            window,
        },
        task,
    )
}

/// Counts one event of `kind` and says whether its log line may be written:
/// `if limit::event(Kind::AclDenied) { info!(...) }`. Outside a [`scope`] it is always true.
pub fn event(kind: Kind) -> bool {
    CONNECTION
        .try_with(|s| s.admit(kind, true, Instant::now()))
        .unwrap_or(true)
}

/// Whether one more line about an event already counted by [`event`] may be written
/// (a second component logging the same refusal). Outside a [`scope`] it is always true.
pub fn line(kind: Kind) -> bool {
    CONNECTION
        .try_with(|s| s.admit(kind, false, Instant::now()))
        .unwrap_or(true)
}

/// A client-supplied string made safe for a log line: at most [`MAX_LOGGED_BYTES`] bytes of
/// it (cut on a character boundary, then `…(+N bytes)`), with control characters, line and
/// paragraph separators, invisible format characters, double quotes and backslashes escaped
/// as Rust's `escape_debug` does, and in double quotes when it contains whitespace or `=`
/// (logfmt style), so it can neither start a new line, colour a terminal nor pass for more
/// fields of its line. Plain values stay unquoted, so journald fields keep their text:
/// `client_id = %LogStr(&client_id)`. `{:?}` always quotes.
#[derive(Clone, Copy)]
pub struct LogStr<'a>(pub &'a str);

impl<'a> LogStr<'a> {
    /// For optional values: `None` is written as the empty string.
    pub fn opt(value: Option<&'a str>) -> Self {
        LogStr(value.unwrap_or(""))
    }

    /// For client bytes that should be UTF-8 (invalid sequences become U+FFFD).
    pub fn lossy(value: &'a [u8]) -> LogBytes<'a> {
        LogBytes(value)
    }
}

/// Writes `text` escaped, then the truncation marker if `omitted > 0`; quoted when `quote`
/// is set or when the value has whitespace or `=` (so a value cannot pass for more fields).
fn write_safe(f: &mut fmt::Formatter<'_>, text: &str, omitted: usize, quote: bool) -> fmt::Result {
    let quote = quote
        || text
            .chars()
            .any(|c| c == '=' || (c.is_whitespace() && c.escape_debug().len() == 1));
    if quote {
        f.write_str("\"")?;
    }
    for c in text.chars() {
        match c {
            // Readable as is, and unambiguous inside double quotes.
            '\'' => f.write_str("'")?,
            // Backslash, double quote, controls, line and paragraph separators, bidi
            // overrides and other invisible characters: `\n`, `\"`, `\u{1b}`, ...
            _ => fmt::Display::fmt(&c.escape_debug(), f)?,
        }
    }
    if omitted > 0 {
        write!(f, "…(+{omitted} bytes)")?;
    }
    if quote {
        f.write_str("\"")?;
    }
    Ok(())
}

impl LogStr<'_> {
    fn parts(&self) -> (&str, usize) {
        let s = self.0;
        let mut cut = s.len().min(MAX_LOGGED_BYTES);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        (&s[..cut], s.len() - cut)
    }
}

impl fmt::Display for LogStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, omitted) = self.parts();
        write_safe(f, text, omitted, false)
    }
}

impl fmt::Debug for LogStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, omitted) = self.parts();
        write_safe(f, text, omitted, true)
    }
}

/// [`LogStr`] for bytes: the first [`MAX_LOGGED_BYTES`] bytes, decoded lossily, escaped.
#[derive(Clone, Copy)]
pub struct LogBytes<'a>(pub &'a [u8]);

impl fmt::Display for LogBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.len().min(MAX_LOGGED_BYTES);
        let text = String::from_utf8_lossy(&self.0[..cut]);
        write_safe(f, &text, self.0.len() - cut, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned();
            text.lines().map(str::to_string).collect()
        }
    }

    /// Runs `f` with a thread-local subscriber that records every line.
    fn capture<T>(f: impl FnOnce() -> T) -> (T, Captured) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        (out, captured)
    }

    fn limits(per_connection: u32, per_peer: u32, per_broker: u32) -> Arc<LogLimits> {
        Arc::new(LogLimits::new(LogLimitSettings {
            per_connection,
            per_peer,
            per_broker,
            interval: Duration::from_secs(60),
        }))
    }

    fn connection(limits: &Arc<LogLimits>, peer: &str, now: Instant) -> ConnectionScope {
        ConnectionScope {
            limits: limits.clone(),
            peer: Some(peer.parse().expect("ip")),
            window: Some(RefCell::new(Window::new(now))),
        }
    }

    #[test]
    fn first_lines_pass_then_suppressed_then_summary_after_the_interval() {
        let limits = limits(10, 1000, 10_000);
        let t0 = Instant::now();
        let conn = connection(&limits, "192.0.2.1", t0);
        let (passed, log) = capture(|| {
            let passed = (0..100)
                .filter(|_| conn.admit(Kind::AclDenied, true, t0))
                .count();
            // Three more of another kind, still inside the window.
            for _ in 0..3 {
                assert!(!conn.admit(Kind::ProtocolViolation, true, t0));
            }
            passed
        });
        assert_eq!(passed, 10);
        assert!(
            log.lines().is_empty(),
            "no summary before the interval ends"
        );
        let stats = limits.stats();
        assert_eq!(stats.acl_denied, 100);
        assert_eq!(stats.protocol_violation, 3);
        assert_eq!(stats.log_lines_suppressed, 93);

        // The first event after the interval writes the summary and passes itself.
        let later = t0 + Duration::from_secs(61);
        let (passed, log) = capture(|| conn.admit(Kind::AclDenied, true, later));
        assert!(passed);
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let summary = &lines[0];
        assert!(summary.contains("log_lines_suppressed"), "{summary}");
        assert!(summary.contains("scope=\"connection\""), "{summary}");
        assert!(summary.contains("suppressed=93"), "{summary}");
        assert!(summary.contains("acl_denied=90"), "{summary}");
        assert!(summary.contains("protocol_violation=3"), "{summary}");
        assert!(summary.contains("peer=192.0.2.1"), "{summary}");
    }

    #[test]
    fn connection_end_reports_what_its_last_window_suppressed() {
        let limits = limits(2, 1000, 10_000);
        let t0 = Instant::now();
        let ((), log) = capture(|| {
            let conn = connection(&limits, "192.0.2.2", t0);
            for _ in 0..7 {
                conn.admit(Kind::AuthRefused, true, t0);
            }
            drop(conn);
        });
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("suppressed=5"), "{}", lines[0]);
        assert!(lines[0].contains("auth_refused=5"), "{}", lines[0]);
        // Nothing suppressed: nothing to say.
        let ((), log) = capture(|| drop(connection(&limits, "192.0.2.3", t0)));
        assert!(log.lines().is_empty());
    }

    #[test]
    fn peer_limit_spans_connections_and_broker_limit_spans_peers() {
        let limits = limits(10, 5, 8);
        let t0 = Instant::now();
        let ((), log) = capture(|| {
            // Three connections from one address: 5 lines between them.
            let passed = (0..3)
                .map(|_| connection(&limits, "192.0.2.4", t0))
                .map(|c| {
                    (0..4)
                        .filter(|_| c.admit(Kind::InvalidConnect, true, t0))
                        .count()
                })
                .sum::<usize>();
            assert_eq!(passed, 5);
            // Another address: its own 5, but the broker allows only 3 more.
            let other = connection(&limits, "192.0.2.5", t0);
            let passed = (0..5)
                .filter(|_| other.admit(Kind::Timeout, true, t0))
                .count();
            assert_eq!(passed, 3);
            std::mem::forget(other);
        });
        assert!(log
            .lines()
            .iter()
            .all(|l| !l.contains("scope=\"connection\"")));
        let stats = limits.stats();
        assert_eq!(stats.invalid_connect, 12);
        assert_eq!(stats.timeout, 5);
        assert_eq!(stats.log_lines_suppressed, 12 - 5 + 2);
        // After the interval the peer and the broker say what they suppressed.
        let later = t0 + Duration::from_secs(60);
        let conn = connection(&limits, "192.0.2.4", later);
        let (passed, log) = capture(|| conn.admit(Kind::InvalidConnect, true, later));
        assert!(passed);
        let lines = log.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("scope=\"peer\"") && lines[0].contains("suppressed=7"));
        assert!(lines[1].contains("scope=\"broker\"") && lines[1].contains("timeout=2"));
    }

    #[test]
    fn peer_table_is_bounded_under_many_distinct_addresses() {
        let limits = limits(10, 5, u32::MAX);
        let t0 = Instant::now();
        let capacity = PEER_TABLE_SETS * PEER_TABLE_WAYS;
        for i in 0..(4 * capacity as u32) {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            assert!(limits.admit_shared(Kind::AuthRefused, Some(ip), t0));
        }
        assert!(limits.tracked_peers() <= capacity);
        let evicted = limits.stats().log_peers_evicted;
        assert!(evicted >= 3 * capacity as u64 - 1, "evicted {evicted}");
    }

    #[test]
    fn evicted_peers_suppressed_counts_reach_the_broker_summary() {
        let limits = limits(10, 1, u32::MAX);
        let t0 = Instant::now();
        let capacity = PEER_TABLE_SETS * PEER_TABLE_WAYS;
        let ((), log) = capture(|| {
            for i in 0..(4 * capacity as u32) {
                let ip = IpAddr::V4((0x0a00_0000 + i).into());
                limits.admit_shared(Kind::AuthRefused, Some(ip), t0);
                limits.admit_shared(Kind::AuthRefused, Some(ip), t0);
            }
        });
        assert!(log.lines().is_empty());
        let later = t0 + Duration::from_secs(60);
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        let (_, log) = capture(|| limits.admit_shared(Kind::AuthRefused, Some(ip), later));
        // One per peer was suppressed; those still in the table report on their next event.
        let reported: u64 = log
            .lines()
            .iter()
            .filter(|l| l.contains("scope=\"broker\""))
            .filter_map(|l| l.split("suppressed=").nth(1))
            .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
            .sum();
        let tracked = limits.tracked_peers() as u64;
        assert_eq!(reported + tracked - 1, 4 * capacity as u64);
    }

    #[test]
    fn peer_table_memory_is_as_documented() {
        let bytes = PEER_TABLE_SETS * PEER_TABLE_WAYS * std::mem::size_of::<Option<PeerSlot>>();
        assert!(bytes <= 192 * 1024, "{bytes} bytes");
    }

    #[test]
    fn ipv6_peers_are_limited_per_64() {
        let limits = limits(10, 2, u32::MAX);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limits.admit_shared(Kind::AclDenied, Some(a), t0));
        assert!(limits.admit_shared(Kind::AclDenied, Some(b), t0));
        assert!(!limits.admit_shared(Kind::AclDenied, Some(a), t0));
        assert!(limits.admit_shared(Kind::AclDenied, Some(c), t0));
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert_eq!(peer_key(mapped), "192.0.2.9".parse::<IpAddr>().expect("ip"));
    }

    #[tokio::test]
    async fn scopes_limit_and_count_and_nothing_is_limited_outside_them() {
        assert!((0..1000).all(|_| event(Kind::AclDenied)));
        let limits = limits(3, 1000, 5);
        let peer = Some("192.0.2.8".parse().expect("ip"));
        let passed = scope(limits.clone(), peer, async {
            (0..10).filter(|_| event(Kind::AclDenied)).count()
        })
        .await;
        assert_eq!(passed, 3);
        assert_eq!(limits.stats().acl_denied, 10);
        // `line` limits without counting again.
        scope(limits.clone(), peer, async { line(Kind::AclDenied) }).await;
        assert_eq!(limits.stats().acl_denied, 10);
        // A task that is not a connection (the router) has only the broker-wide window.
        let passed = scope(limits.clone(), None, async {
            (0..10).filter(|_| event(Kind::AclDenied)).count()
        })
        .await;
        assert_eq!(passed, 5 - 4);
        assert_eq!(limits.stats().acl_denied, 20);
    }

    #[test]
    fn escapes_newlines_ansi_and_nul() {
        let forged = "dev\nINFO audit: Client connected. client_id=admin";
        assert_eq!(
            LogStr(forged).to_string(),
            "\"dev\\nINFO audit: Client connected. client_id=admin\""
        );
        assert_eq!(LogStr("a\nb").to_string(), "a\\nb");
        assert_eq!(
            LogStr("\x1b[31mred\x1b[0m").to_string(),
            "\\u{1b}[31mred\\u{1b}[0m"
        );
        assert_eq!(LogStr("a\0b\r\t").to_string(), "a\\0b\\r\\t");
        assert_eq!(LogStr("q\"uo'te\\").to_string(), "q\\\"uo'te\\\\");
        // A value cannot pass for more fields: whitespace or `=` means quotes.
        assert_eq!(LogStr("x rule=allow").to_string(), "\"x rule=allow\"");
        assert_eq!(LogStr("").to_string(), "");
        // Bidi overrides could reorder what a reader sees.
        assert_eq!(LogStr("a\u{202e}b").to_string(), "a\\u{202e}b");
        // Unicode line/paragraph separators and C1 controls cannot break a line either.
        assert_eq!(LogStr("a\u{2028}b\u{85}").to_string(), "a\\u{2028}b\\u{85}");
        // Printable non-ASCII text stays readable.
        assert_eq!(LogStr("Zähler-7/温度").to_string(), "Zähler-7/温度");
        for c in LogStr("\x07\x08\x0b\x0c\x7f\u{9b}").to_string().chars() {
            assert!(!c.is_control(), "{c:?} reached the line raw");
        }
    }

    #[test]
    fn truncates_long_strings_with_a_marker() {
        let long = "x".repeat(10_000);
        let shown = LogStr(&long).to_string();
        assert_eq!(
            shown,
            format!("{}…(+{} bytes)", "x".repeat(256), 10_000 - 256)
        );
        assert_eq!(LogStr(&"y".repeat(256)).to_string(), "y".repeat(256));
        assert_eq!(format!("{:?}", LogStr("a\nb")), "\"a\\nb\"");
        assert_eq!(LogStr::opt(None).to_string(), "");
    }

    #[test]
    fn truncation_respects_multibyte_characters() {
        // 255 ASCII bytes, then a 3-byte character straddling the 256-byte limit.
        let s = format!("{}€tail", "a".repeat(255));
        let shown = LogStr(&s).to_string();
        assert_eq!(
            shown,
            format!("{}…(+{} bytes)", "a".repeat(255), s.len() - 255)
        );
        // A 4-byte character exactly at the end of the limit is kept whole.
        let s = format!("{}🦀", "b".repeat(252));
        assert_eq!(LogStr(&s).to_string(), s);
        // Invalid UTF-8 from the wire is shown lossily, escaped and truncated too.
        let bytes = [b"to\npic\xff".as_slice(), &[b'z'; 300]].concat();
        let shown = LogStr::lossy(&bytes).to_string();
        assert!(shown.starts_with("to\\npic\u{fffd}zz"), "{shown}");
        assert!(
            shown.ends_with(&format!("…(+{} bytes)", bytes.len() - 256)),
            "{shown}"
        );
    }
}
