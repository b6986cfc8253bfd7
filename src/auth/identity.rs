//! The identity of a connection, adapter or bridge: what ACLs and audit events speak about.

use std::sync::Arc;

/// Name prefix of the broker's own in-process identities (`tollgate:certs`).
pub const BROKER_IDENTITY_PREFIX: &str = "tollgate:";

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
    /// A JWT in the CONNECT password, verified against `[auth.jwt]` keys.
    Jwt,
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
    /// For `via == Jwt`: the token's expiry and the ACL claim that narrows the ACL.
    pub jwt: Option<Arc<crate::auth::jwt::JwtGrant>>,
}

impl Identity {
    /// Whether this is one of the broker's own in-process publishers (`tollgate:...`,
    /// e.g. the certificate expiry watch): the only identities that may write under
    /// `$SYS/`. No network client can have `via == Internal`.
    pub fn is_broker(&self) -> bool {
        self.via == AuthMethod::Internal
            && self
                .username
                .as_deref()
                .is_some_and(|u| u.starts_with(BROKER_IDENTITY_PREFIX))
    }

    /// Whether `other` is the same principal, so it may resume or take over a session
    /// this identity created (design decision 11): the same authenticated user name
    /// (a password login and a certificate with that name share ACL rules, so they
    /// share sessions), or both anonymous; an in-process component is never the same
    /// principal as a network client, whatever the names.
    pub fn same_principal(&self, other: &Identity) -> bool {
        let anonymous = |i: &Identity| i.via == AuthMethod::Anonymous || i.username.is_none();
        let internal = |i: &Identity| i.via == AuthMethod::Internal;
        if internal(self) != internal(other) || anonymous(self) != anonymous(other) {
            return false;
        }
        anonymous(self) || self.username == other.username
    }

    /// Identity for an in-process component such as `adapter:modbus1` or `bridge:cloud`.
    pub fn internal(name: &str) -> Self {
        Identity {
            username: Some(name.to_string()),
            client_id: name.to_string(),
            via: AuthMethod::Internal,
            listener: Arc::from("internal"),
            jwt: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(username: Option<&str>, via: AuthMethod) -> Identity {
        Identity {
            username: username.map(str::to_string),
            client_id: "dev".into(),
            via,
            listener: Arc::from("l"),
            jwt: None,
        }
    }

    #[test]
    fn same_principal_needs_the_same_user_and_kind() {
        let alice = id(Some("alice"), AuthMethod::Password);
        assert!(alice.same_principal(&id(Some("alice"), AuthMethod::Certificate)));
        assert!(!alice.same_principal(&id(Some("bob"), AuthMethod::Password)));
        assert!(!alice.same_principal(&id(None, AuthMethod::Anonymous)));
        // An anonymous client's unverified username is no principal.
        assert!(!alice.same_principal(&id(Some("alice"), AuthMethod::Anonymous)));
        assert!(id(None, AuthMethod::Anonymous).same_principal(&id(None, AuthMethod::Anonymous)));
        assert!(!id(Some("alice"), AuthMethod::Internal).same_principal(&alice));
        assert!(
            Identity::internal("bridge:cloud").same_principal(&Identity::internal("bridge:cloud"))
        );
    }
}
