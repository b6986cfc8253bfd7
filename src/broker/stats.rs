//! Broker statistics: lock-free counters written by the router and connection tasks
//! and read by `Broker::stats()` and the `$SYS/broker/...` publisher. It only counts;
//! it never holds per-client or per-topic entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A snapshot of the broker's counters (the same figures as `$SYS/broker/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Time since `Broker::start`.
    pub uptime: Duration,
    /// Attached connections, network and in-process (`$SYS/broker/clients/connected`).
    pub clients_connected: u64,
    /// PUBLISH packets received from clients (`$SYS/broker/messages/received`).
    pub messages_received: u64,
    /// PUBLISH packets sent to clients (`$SYS/broker/messages/sent`).
    pub messages_sent: u64,
    /// Bytes read from client sockets (`$SYS/broker/bytes/received`).
    pub bytes_received: u64,
    /// Bytes written to client sockets (`$SYS/broker/bytes/sent`).
    pub bytes_sent: u64,
    /// Subscriptions over all sessions (`$SYS/broker/subscriptions/count`).
    pub subscriptions: u64,
    /// Retained messages stored (`$SYS/broker/retained messages/count`).
    pub retained_messages: u64,
    /// Sessions in the session table, online and offline.
    pub sessions: u64,
    /// Nodes in the subscription trie (memory follows live subscriptions).
    pub subscription_trie_nodes: u64,
    /// Publisher acknowledgements held back for durable subscribers right now.
    pub durable_holds: u64,
    /// Queued messages dropped by the session queue overflow policy (oldest first).
    pub dropped_queue_overflow: u64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub dropped_oversize: u64,
    /// QoS 0 messages dropped because the client does not read fast enough.
    pub dropped_slow_consumer: u64,
    /// CONNECTs refused because their client id holds a session of another identity.
    pub refused_session_owner: u64,
    /// QoS 1/2 messages accepted beyond a full queue whose publisher's acknowledgement
    /// was held back (overflow policy block-publishers).
    pub publishers_blocked: u64,
    /// SUBSCRIBE filters refused by `max_subscriptions_per_client`.
    pub refused_subscription_quota: u64,
    /// Retained messages not stored because of `max_retained_messages`/`_bytes`.
    pub dropped_retained_quota: u64,
    /// CONNECTs refused because `max_persistent_sessions` sessions exist.
    pub refused_session_quota: u64,
    /// Bytes held by retained messages.
    pub retained_bytes: u64,
    /// Retained messages in the durable state log (`[persistence]`).
    pub state_retained: u64,
    /// Persistent sessions in the durable session log.
    pub state_sessions: u64,
    /// Live records of the session log (sessions, queued messages, packet ids).
    pub state_session_records: u64,
    /// Disk bytes of the live records of the durable state logs (both).
    pub state_bytes: u64,
    /// Queued QoS 1/2 messages dropped because their Message Expiry passed first.
    pub dropped_expired: u64,
    /// Changes of the durable state that could not be stored (full, disk errors, a
    /// state directory that could not be opened).
    pub state_failures: u64,
    /// Records of the durable state lost to damage at the last start.
    pub state_lost_at_open: u64,
    /// Audit-worthy events by kind and the log lines the rate limits suppressed
    /// (`telemetry::limit`): complete even when the lines about them were summarised.
    pub audit: crate::telemetry::limit::AuditStats,
    /// Messages held for sessions, queued or in flight (the `max_offline_*` bounds
    /// count both), summed twice a second.
    pub queued_messages: u64,
    /// Bytes of those messages.
    pub queued_bytes: u64,
    /// CONNECT authentications and MQTT 5 re-authentications by method
    /// ([`AUTH_METHODS`]) and outcome reason ([`AUTH_REASONS`]; `accepted` is the
    /// success), zeros included.
    pub auth: Vec<(&'static str, &'static str, u64)>,
}

/// How a network client authenticated (or tried to), as the metrics label it.
pub const AUTH_METHODS: [&str; 5] = ["password", "jwt", "certificate", "anonymous", "other"];
/// Why an authentication ended so: `accepted`, or the reason it was refused.
pub const AUTH_REASONS: [&str; 6] = [
    "accepted",
    "bad_credentials",
    "not_authorized",
    "throttled",
    "unavailable",
    "timeout",
];

#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub subscriptions: AtomicU64,
    pub retained: AtomicU64,
    pub sessions: AtomicU64,
    pub trie_nodes: AtomicU64,
    pub holds: AtomicU64,
    pub dropped_queue_overflow: AtomicU64,
    pub dropped_oversize: AtomicU64,
    pub dropped_slow_consumer: AtomicU64,
    pub refused_session_owner: AtomicU64,
    pub publishers_blocked: AtomicU64,
    pub refused_subscription_quota: AtomicU64,
    pub dropped_retained_quota: AtomicU64,
    pub refused_session_quota: AtomicU64,
    pub retained_bytes: AtomicU64,
    pub state_retained: AtomicU64,
    pub state_sessions: AtomicU64,
    pub state_session_records: AtomicU64,
    pub state_bytes: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub state_failures: AtomicU64,
    pub state_lost_at_open: AtomicU64,
    pub auth: [[AtomicU64; AUTH_REASONS.len()]; AUTH_METHODS.len()],
    pub queued_messages: AtomicU64,
    pub queued_bytes: AtomicU64,
}

impl StatsCounters {
    pub fn snapshot(&self, started: Instant) -> BrokerStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BrokerStats {
            uptime: started.elapsed(),
            clients_connected: get(&self.clients_connected),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            subscriptions: get(&self.subscriptions),
            retained_messages: get(&self.retained),
            sessions: get(&self.sessions),
            subscription_trie_nodes: get(&self.trie_nodes),
            durable_holds: get(&self.holds),
            dropped_queue_overflow: get(&self.dropped_queue_overflow),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_slow_consumer: get(&self.dropped_slow_consumer),
            refused_session_owner: get(&self.refused_session_owner),
            publishers_blocked: get(&self.publishers_blocked),
            refused_subscription_quota: get(&self.refused_subscription_quota),
            dropped_retained_quota: get(&self.dropped_retained_quota),
            refused_session_quota: get(&self.refused_session_quota),
            retained_bytes: get(&self.retained_bytes),
            state_retained: get(&self.state_retained),
            state_sessions: get(&self.state_sessions),
            state_session_records: get(&self.state_session_records),
            state_bytes: get(&self.state_bytes),
            dropped_expired: get(&self.dropped_expired),
            state_failures: get(&self.state_failures),
            state_lost_at_open: get(&self.state_lost_at_open),
            audit: Default::default(),
            queued_messages: get(&self.queued_messages),
            queued_bytes: get(&self.queued_bytes),
            auth: AUTH_METHODS
                .iter()
                .zip(&self.auth)
                .flat_map(|(method, row)| {
                    AUTH_REASONS
                        .iter()
                        .zip(row)
                        .map(|(reason, n)| (*method, *reason, get(n)))
                })
                .collect(),
        }
    }

    /// Count one authentication; unknown labels count as the last method or reason.
    pub fn auth(&self, method: &str, reason: &str) {
        let m = AUTH_METHODS
            .iter()
            .position(|x| *x == method)
            .unwrap_or(AUTH_METHODS.len() - 1);
        let r = AUTH_REASONS
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(AUTH_REASONS.len() - 1);
        self.auth[m][r].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one listener that its connection tasks keep: messages both ways and the
/// rate-control actions (shown by the metrics endpoint per listener, kept across reloads).
/// Relaxed atomics, added to once per socket read or written batch, not per packet.
#[derive(Debug, Default)]
pub struct ListenerTraffic {
    /// PUBLISH packets received from the listener's clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to the listener's clients.
    pub messages_sent: AtomicU64,
    /// Connection attempts closed at accept because their address exceeded `connect_rate`.
    pub connects_refused: AtomicU64,
    /// Times a client's socket was left unread because it exceeded `publish_rate`.
    pub publish_throttled: AtomicU64,
    /// Clients disconnected for exceeding `publish_rate` (`on_excess = "disconnect"`).
    pub publish_rate_disconnects: AtomicU64,
    /// SUBSCRIBE filters granted a lower QoS than asked because of `max_qos`.
    pub qos_downgraded: AtomicU64,
    /// PUBLISH packets and wills above `max_qos` (the client was disconnected or refused).
    pub qos_refused: AtomicU64,
}

/// The `outcome` label of `tollgate_auth_total` for a verdict awaited under a time limit.
pub(crate) fn auth_outcome<T>(
    verdict: &Result<Result<T, crate::auth::AuthError>, tokio::time::error::Elapsed>,
) -> &'static str {
    match verdict {
        Err(_) => "timeout",
        Ok(Ok(_)) => "accepted",
        Ok(Err(crate::auth::AuthError::BadCredentials)) => "bad_credentials",
        Ok(Err(crate::auth::AuthError::NotAuthorized(_))) => "not_authorized",
        Ok(Err(crate::auth::AuthError::Throttled)) => "throttled",
        Ok(Err(crate::auth::AuthError::Unavailable(_))) => "unavailable",
    }
}
