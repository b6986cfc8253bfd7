//! Authorization: what an identity may read, write and subscribe to. Owns the
//! `Authorizer` seam every PUBLISH, SUBSCRIBE and delivery passes through.
//! It must never allow what no rule grants once ACLs are configured.

use crate::auth::Identity;

/// The kind of access being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receiving a message on a concrete topic (every delivery).
    Read,
    /// Publishing to a concrete topic.
    Write,
    /// Subscribing to a filter (may contain wildcards; `$share/g/` already stripped).
    Subscribe,
}

/// Result of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclDecision {
    /// Allowed; `rule` names the granting rule when ACLs are configured.
    Allow { rule: Option<String> },
    /// Denied; `rule` names the deny rule, or `None` when nothing matched (default deny).
    Deny { rule: Option<String> },
}

impl AclDecision {
    /// True when access is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, AclDecision::Allow { .. })
    }
}

/// The seam called for every PUBLISH (Write), SUBSCRIBE filter (Subscribe) and
/// delivery (Read). Must be cheap: it runs on connection tasks' hot path.
pub trait Authorizer: Send + Sync + 'static {
    /// Decide whether `identity` may perform `access` on `topic`.
    fn check(&self, identity: &Identity, access: Access, topic: &str) -> AclDecision;
}

/// Authorizer used while no ACL is configured: allows everything.
#[derive(Debug, Default, Clone)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn check(&self, _identity: &Identity, _access: Access, _topic: &str) -> AclDecision {
        AclDecision::Allow { rule: None }
    }
}
