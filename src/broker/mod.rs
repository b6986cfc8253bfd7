//! The broker core: codec wrapper, router (subscription trie, retained store,
//! session table), one task per connection, and the in-process client API used by
//! adapters and the bridge. It must never panic on client input and must hold
//! nothing for clients or topics that are no longer live.

pub mod codec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::acl::Authorizer;
use crate::auth::{Authenticator, Identity};

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
    /// How often `$SYS/broker/...` statistics are published; zero disables them.
    pub sys_interval: Duration,
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
            sys_interval: Duration::from_secs(10),
        }
    }
}

/// What a connection task knows about the listener it came in on.
#[derive(Debug, Clone)]
pub struct ListenerContext {
    /// `[[listener]] name`, used in identities, logs and audit events.
    pub name: Arc<str>,
    /// Whether anonymous clients are admitted on this listener.
    pub allow_anonymous: bool,
    /// Whether CONNECT username/password is accepted on this listener.
    pub password_auth: bool,
    /// Whether the transport is TLS (for logs and `$SYS`).
    pub tls: bool,
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
    /// CONNECT must be complete before this instant (set by the listener at accept time).
    pub connect_deadline: tokio::time::Instant,
}

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

/// Cloneable handle to a running broker core.
#[derive(Clone)]
pub struct Broker {
    _private: (),
}

impl Broker {
    /// Start the router. It stops when `shutdown` is cancelled; connections then get
    /// v5 DISCONNECT 0x8B (server shutting down) and are closed.
    pub fn start(
        _settings: BrokerSettings,
        _authenticator: Arc<dyn Authenticator>,
        _authorizer: Arc<dyn Authorizer>,
        _shutdown: CancellationToken,
    ) -> Broker {
        todo!("broker core")
    }

    /// Serve one client connection (plain TCP or an accepted TLS stream) until it ends.
    pub async fn serve<S>(&self, _stream: S, _info: ConnectionInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        todo!("broker core")
    }

    /// Replace the authenticator and authorizer (SIGHUP reload); existing sessions
    /// are re-checked by the caller's policy.
    pub fn reload_auth(
        &self,
        _authenticator: Arc<dyn Authenticator>,
        _authorizer: Arc<dyn Authorizer>,
    ) {
        todo!("broker core")
    }

    /// Identity-carrying in-process attach point for adapters and the bridge.
    pub fn internal_identity_hint(identity: &Identity) -> String {
        identity.client_id.clone()
    }
}
