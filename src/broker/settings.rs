//! What the broker core is configured with: the broker-wide tunables
//! (`BrokerSettings`, from `[broker]`), what a listener tells its connections
//! (`ListenerContext`) and the per-connection facts known before the first MQTT byte
//! (`ConnectionInfo`). Plain data: it must never hold state or do I/O.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::codec::QoS;
use super::keepalive::KeepAlivePolicy;
use super::link::QueueOverflow;
use super::stats::ListenerTraffic;
use crate::edge::rate::PublishRate;
use crate::telemetry::limit::LogLimitSettings;

/// Default state directory, also the signal for the unprivileged fallback.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tollgate";

/// The `[broker]` section: the broker core's tunables, deserialized as they are used (one
/// type for the file and the runtime; `config` validates the ranges).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// State directory (development PKI, bridge journals, the durable state).
    pub data_dir: PathBuf,
    /// `[persistence]` (a section of its own in the file, copied here by the loader);
    /// off in the programmatic default (tests, embedding).
    #[serde(skip)]
    pub persistence: super::persist::PersistenceSettings,
    /// Connections accepted at once over all listeners; more are closed before TLS.
    pub max_connections: u32,
    /// Largest packet accepted from or sent to a client, in bytes.
    pub max_packet_size: u32,
    /// Time allowed between accepting a socket and a complete CONNECT (TLS handshake included).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
    /// Largest keep alive a client may ask for; v5 clients asking more get Server Keep Alive.
    pub max_keepalive: u16,
    /// Largest session expiry interval granted to v5 clients, in seconds (a duration in
    /// the file: `"7d"`).
    #[serde(deserialize_with = "crate::duration::deserialize_secs_u32")]
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
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub sys_interval: Duration,
    /// Rate limits of the log lines clients can cause (from `[log] rate_limit`, not `[broker]`).
    #[serde(skip)]
    pub log_limits: LogLimitSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            persistence: super::persist::PersistenceSettings::off(),
            max_connections: 10_000,
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
    /// Accept a JWT as the CONNECT password (`[auth.jwt]`).
    pub jwt_auth: bool,
    /// Whether the transport is TLS (for logs and `$SYS`).
    pub tls: bool,
    /// Minimum / zero MQTT keep alive accepted at CONNECT on this listener.
    pub keep_alive: KeepAlivePolicy,
    /// What a full session queue of a client on this listener does.
    pub queue_overflow: QueueOverflow,
    /// Highest QoS of PUBLISH, will and subscription on this listener; `None`: 2.
    pub max_qos: Option<QoS>,
    /// PUBLISH messages and bytes per second per client; `None`: not limited.
    pub publish_rate: Option<PublishRate>,
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
    /// The listener's message and rate-control counters.
    pub traffic: Arc<ListenerTraffic>,
}
