//! The identity of a connection, adapter or bridge: what ACLs and audit events speak about.

use std::sync::Arc;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// CONNECT username and password checked against the password file.
    Password,
    /// Verified client certificate (CN or chosen SAN).
    Certificate,
    /// No credentials, on a listener with `allow_anonymous = true`.
    Anonymous,
    /// In-process component (adapter, bridge) attached without a socket.
    Internal,
}

/// Who is on the other end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Authenticated user name (certificate identity or CONNECT username); `None` for anonymous.
    pub username: Option<String>,
    /// MQTT client id (assigned by the broker when the client sent an empty one).
    pub client_id: String,
    /// How the identity was established.
    pub via: AuthMethod,
    /// Listener name, or `"internal"` for in-process clients.
    pub listener: Arc<str>,
}

impl Identity {
    /// Identity for an in-process component such as `adapter:modbus1` or `bridge:cloud`.
    pub fn internal(name: &str) -> Self {
        Identity {
            username: Some(name.to_string()),
            client_id: name.to_string(),
            via: AuthMethod::Internal,
            listener: Arc::from("internal"),
        }
    }
}
