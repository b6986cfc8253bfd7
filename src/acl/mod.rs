//! Authorization: what an identity may read, write and subscribe to. Owns the
//! `Authorizer` seam every PUBLISH, SUBSCRIBE and delivery passes through, the
//! rule model, the mosquitto `acl_file` parser, the compiled matcher and
//! `tollgate acl explain`. It must never allow what no rule grants once ACLs are
//! configured, and never allocate or lock on the check path.
//!
//! # Semantics (design decision 3)
//! - **Rule sets.** `topic` lines before any `user` line (and inline rules with
//!   neither `user` nor `pattern`) are the anonymous rules; `topic` lines after
//!   `user NAME` belong to NAME, exactly as mosquitto scopes them (so a trailing
//!   `topic deny #` belongs to the last user: [`Acl::warnings`] says so).
//!   `pattern` lines apply to every identity wherever they are written.
//! - **Who uses what.** An identity with `via == Anonymous` (its username, if any,
//!   is ignored as unauthenticated) or without a username uses the anonymous
//!   rules; any other identity (password, certificate, `Internal` such as
//!   `adapter:modbus1`) uses the block of its username. Patterns apply to all.
//! - **Placeholders.** `%u`/`%c` are substituted wherever they appear inside a
//!   level of a `pattern` rule (`devices/%u/#`, but also `dev-%c`), as mosquitto
//!   does, so its files load unchanged. The substituted value never crosses or
//!   widens a level: it is used only if it is non-empty and free of `+`, `#`,
//!   `/` and NUL, and it is compared as literal text. An identity whose username or
//!   client id contains one of those gets no grant from any pattern rule. A
//!   placeholder that cannot be filled (anonymous `%u`, empty or dangerous
//!   values) never grants; in a *deny* pattern it counts as `+`, so denials err
//!   wide rather than vanish.
//! - **Decision.** Any matching deny rule wins; otherwise a rule granting the
//!   access (read/readwrite for Read and Subscribe, write/readwrite for Write)
//!   allows; otherwise deny. The decision names the earliest such rule.
//! - **Subscribe** checks the filter (a `$share/<group>/` prefix is stripped here
//!   too; a second one inside is refused): granted only if one read rule *covers* it (every topic the filter can
//!   match is matched by that rule: `sensors/#` covers `sensors/+/temp`,
//!   `sensors/+` does not cover `sensors/#`); refused if one deny rule covers it.
//!   A deny that covers only part of the filter (deny `a/b`, subscribe `a/+`) does
//!   not refuse the subscription: the broker re-checks every delivery with Read,
//!   where that deny bites.
//! - **`$` topics** (`$SYS/...`) are matched only by rules whose first level
//!   starts with `$`: `#` and `+/...` never grant or cover them.
//! - Matching is case-sensitive and exact per level; `a/b/` (empty last level)
//!   is not `a/b`; `a/#` also matches `a`; `+` matches one level, empty included.
//!   Invalid topics or filters are denied without a rule.
//!
//! # Cost and caching
//! Rules compile into tries (anonymous, one per user, patterns), so a check is
//! one hash lookup for the user plus a walk of at most the topic's depth per
//! trie, whatever the number of rules (wildcard-heavy rule sets branch, but a
//! walk never visits a trie node twice); it never allocates or locks. Measured
//! (`cargo bench --bench acl`) at about 120 to 130 ns per check from 10 to
//! 100,000 rules. The matcher itself keeps no cache: nothing to invalidate on
//! reload (the owner swaps the whole `Acl`) and nothing shared between connection
//! tasks. Each connection task remembers its own recent PUBLISH decisions
//! (`broker::connection`), keyed by the authorizer in force. [`Authorizer::allows`]
//! is the allocation-free form; [`Authorizer::check`] also copies the deciding
//! rule's label for audit logs.

mod explain;
mod matcher;
mod rules;

pub mod bench;

use std::path::PathBuf;

pub use explain::{explain, run, AccessArg, AclCommand, ExplainArgs, Explanation};
pub use matcher::{Acl, AclStats, RuleId, RuleMatch, Verdict};
pub use rules::{
    AccessSpec, AclConfig, AclProblem, InlineRule, Origin, Rule, RuleLevel, Scope, Template,
    TemplatePart,
};

use crate::auth::{AuthMethod, Identity};

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

    /// Same decision without naming the rule; implementations make it allocation-free
    /// for the per-delivery path.
    fn allows(&self, identity: &Identity, access: Access, topic: &str) -> bool {
        self.check(identity, access, topic).is_allowed()
    }
}

/// Authorizer used while no ACL is configured: allows everything.
#[derive(Debug, Default, Clone)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn check(&self, _identity: &Identity, _access: Access, _topic: &str) -> AclDecision {
        AclDecision::Allow { rule: None }
    }
}

/// Errors loading or using ACL rules.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The acl_file could not be read.
    #[error("cannot read ACL file {}: {source}; check `[acl] file` and that tollgate may read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One or more rules are invalid; every problem is listed.
    #[error("{} problem(s) in the ACL rules, nothing was loaded:\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Each problem with its `file:line` or `acl.rule[N]`.
        problems: Vec<AclProblem>,
    },
    /// The config file given to `acl explain -c` could not be used.
    #[error("cannot use config {}: {reason}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `acl explain` was called with contradictory or missing arguments.
    #[error("acl explain: {0}")]
    Usage(String),
}

/// Whether `topic` is reserved for the broker's own statistics (`$SYS` and below).
/// Only the broker's own publishers ([`Identity::is_broker`]) write there, whatever
/// the ACL says.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Rule label of the built-in `$SYS` write protection, as audit lines show it.
pub const SYS_WRITE_RULE: &str = "built-in: $SYS topics are written by the broker only";

/// The allocation-free write decision (design decision 11): `$SYS` protection, then
/// the ACL. Every write path (network PUBLISH and retained writes, wills at CONNECT
/// and when sent, in-process clients, bridge ingress, adapters) decides through this
/// function, either directly via [`authorize_write`] or through a per-connection
/// cache of its answers.
pub fn write_allowed(authorizer: &dyn Authorizer, identity: &Identity, topic: &str) -> bool {
    (identity.is_broker() || !is_sys_topic(topic))
        && authorizer.allows(identity, Access::Write, topic)
}

/// The deciding rule of a refused write, for the audit line (denials are rare).
pub fn write_denial(authorizer: &dyn Authorizer, identity: &Identity, topic: &str) -> AclDecision {
    if is_sys_topic(topic) && !identity.is_broker() {
        AclDecision::Deny {
            rule: Some(SYS_WRITE_RULE.into()),
        }
    } else {
        authorizer.check(identity, Access::Write, topic)
    }
}

/// The one write-authorization function: [`write_allowed`], and an audit line for a
/// refusal (with `peer` when the writer has a socket).
pub fn authorize_write(
    authorizer: &dyn Authorizer,
    identity: &Identity,
    topic: &str,
    peer: Option<std::net::SocketAddr>,
) -> bool {
    if write_allowed(authorizer, identity, topic) {
        return true;
    }
    let decision = write_denial(authorizer, identity, topic);
    audit_denied(identity, Access::Write, topic, &decision, peer);
    false
}

/// Record a refused access on the `audit` target with the rule that decided
/// (never the payload). The broker adds the peer address if it has one. Every call is
/// counted (`BrokerStats::audit.acl_denied`); inside a connection task the line itself is
/// rate-limited and client strings are escaped (`telemetry::limit`).
pub fn audit_denied(
    identity: &Identity,
    access: Access,
    topic: &str,
    decision: &AclDecision,
    peer: Option<std::net::SocketAddr>,
) {
    use crate::telemetry::audit::{Event, Kind};
    if let AclDecision::Deny { rule } = decision {
        // Counted always; the line is rate-limited per connection and peer.
        Event::new(Kind::AclDenied)
            .identity(identity)
            .peer(peer)
            .access(&access)
            .topic(topic)
            .rule(rule.as_deref().unwrap_or("none matched: default deny"))
            .emit();
    }
}

/// Fuzz entry point: parse arbitrary bytes as an acl_file and run checks with
/// topics taken from the same bytes. Must never panic.
pub fn fuzz_acl_file(data: &[u8]) {
    let Ok(set) = rules::parse_all(Some(("fuzz", data)), &[]) else {
        return;
    };
    let acl = Acl::compile(set);
    let _ = acl.warnings();
    let text = String::from_utf8_lossy(data);
    let identities = [
        Identity {
            username: Some("u".into()),
            client_id: "c".into(),
            via: AuthMethod::Password,
            listener: "fuzz".into(),
            jwt: None,
        },
        Identity {
            username: None,
            client_id: "anon".into(),
            via: AuthMethod::Anonymous,
            listener: "fuzz".into(),
            jwt: None,
        },
        Identity {
            username: Some("a/#".into()),
            client_id: "+".into(),
            via: AuthMethod::Certificate,
            listener: "fuzz".into(),
            jwt: None,
        },
    ];
    for line in text.lines().take(64) {
        let topic = line.rsplit(' ').next().unwrap_or_default();
        for identity in &identities {
            for access in [Access::Read, Access::Write, Access::Subscribe] {
                let _ = acl.check(identity, access, topic);
            }
        }
    }
}
