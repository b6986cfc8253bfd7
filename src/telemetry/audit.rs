//! The audit trail: one [`Event`] type for every authentication, authorization, session
//! and configuration decision. An event has a [`Kind`] (its name, level, sentence and
//! rate-limit class), optional fields, and a counter per kind that counts every event
//! whether or not its line is written. Each event is exactly one line (target `audit`, so
//! `journalctl -t tollgate-audit` shows the trail alone), with client-supplied text
//! escaped and truncated by [`LogStr`]. It must never log a password or a payload.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::limit::{self, LogStr};
use crate::auth::{AuthMethod, Identity};

/// What happened. Names (`event = "..."` in each line) are stable: scripts grep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A CONNECT's credentials were accepted.
    AuthSucceeded,
    /// A CONNECT's credentials were refused (bad password, throttled, not authorized).
    AuthRefused,
    /// A CONNECT refused by authentication, as the connection saw it (counted here; the
    /// authenticator's own line says why).
    ConnectRefused,
    /// A CONNECT refused because its will may not be published.
    WillDenied,
    /// A client is connected and its session attached.
    ClientConnected,
    /// A CONNECT asked for a session that belongs to another identity.
    SessionOwnerMismatch,
    /// A live session was ended because its credentials no longer hold (reload).
    SessionRevoked,
    /// A PUBLISH, SUBSCRIBE or will was refused by the ACL.
    AclDenied,
    /// A delivery to a subscriber was withheld by the ACL's read rules.
    DeliveryDenied,
    /// A client certificate failed verification during the TLS handshake.
    CertificateRejected,
    /// A verified client certificate carries no usable identity.
    CertificateNoIdentity,
    /// A configuration reload was applied.
    ConfigReloaded,
    /// A configuration reload was refused; the running configuration stays.
    ConfigReloadRefused,
    /// A write to a field device (Modbus or GPIO `.../set`, serial `.../send`) was
    /// executed, with its outcome.
    FieldWrite,
    /// A write to a field device was refused before reaching it (not writable, out of
    /// bounds, rate limit, expired, malformed).
    FieldWriteRefused,
}

const KINDS: usize = 15;

static COUNTS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

/// How a kind's line is rate-limited (its event is always counted here).
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// Never limited (rare, operator-caused, or successes that must stay complete).
    None,
    /// Counted by the limiter and limited (`limit::event`).
    Event(limit::Kind),
    /// A second line about an event the limiter already counted (`limit::line`).
    Line(limit::Kind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Debug,
    Info,
    Warn,
}

impl Kind {
    /// Every kind, in counter order.
    pub const ALL: [Kind; KINDS] = [
        Kind::AuthSucceeded,
        Kind::AuthRefused,
        Kind::ConnectRefused,
        Kind::WillDenied,
        Kind::ClientConnected,
        Kind::SessionOwnerMismatch,
        Kind::SessionRevoked,
        Kind::AclDenied,
        Kind::DeliveryDenied,
        Kind::CertificateRejected,
        Kind::CertificateNoIdentity,
        Kind::ConfigReloaded,
        Kind::ConfigReloadRefused,
        Kind::FieldWrite,
        Kind::FieldWriteRefused,
    ];

    /// The `event` field of its line.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    fn describe(self) -> (&'static str, Level, Limit, &'static str) {
        use limit::Kind as L;
        match self {
            Kind::AuthSucceeded => (
                "auth_succeeded",
                Level::Info,
                Limit::None,
                "Authentication succeeded.",
            ),
            Kind::AuthRefused => (
                "auth_refused",
                Level::Warn,
                Limit::Line(L::AuthRefused),
                "Authentication refused.",
            ),
            Kind::ConnectRefused => (
                "connect_refused",
                Level::Warn,
                Limit::Event(L::AuthRefused),
                "Connection refused by authentication.",
            ),
            Kind::WillDenied => (
                "will_denied",
                Level::Warn,
                Limit::Line(L::AclDenied),
                "Connection refused: not authorized to publish the will.",
            ),
            Kind::ClientConnected => (
                "client_connected",
                Level::Info,
                Limit::None,
                "Client connected.",
            ),
            Kind::SessionOwnerMismatch => (
                "session_owner_mismatch",
                Level::Warn,
                Limit::Event(L::AuthRefused),
                "Connection refused: the client id holds a session of another identity.",
            ),
            Kind::SessionRevoked => (
                "session_revoked",
                Level::Warn,
                Limit::None,
                "Client disconnected: credentials no longer valid after reload.",
            ),
            Kind::AclDenied => (
                "acl_denied",
                Level::Info,
                Limit::Event(L::AclDenied),
                "Access denied by ACL.",
            ),
            Kind::DeliveryDenied => (
                "delivery_denied",
                Level::Debug,
                Limit::None,
                "Delivery denied by ACL.",
            ),
            Kind::CertificateRejected => (
                "certificate_rejected",
                Level::Warn,
                Limit::Event(L::AuthRefused),
                "Client certificate rejected.",
            ),
            Kind::CertificateNoIdentity => (
                "certificate_without_identity",
                Level::Warn,
                Limit::Event(L::AuthRefused),
                "Client certificate has no usable identity; closing.",
            ),
            Kind::ConfigReloaded => (
                "config_reloaded",
                Level::Info,
                Limit::None,
                "Configuration reloaded.",
            ),
            Kind::ConfigReloadRefused => (
                "config_reload_refused",
                Level::Warn,
                Limit::None,
                "Configuration reload refused; the running configuration stays in force.",
            ),
            Kind::FieldWrite => (
                "field_write",
                Level::Info,
                Limit::None,
                "Field device write executed.",
            ),
            Kind::FieldWriteRefused => (
                "field_write_refused",
                Level::Warn,
                Limit::Event(L::AclDenied),
                "Field device write refused.",
            ),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many events of `kind` happened since start (lines written or not).
pub fn count(kind: Kind) -> u64 {
    COUNTS[kind.index()].load(Ordering::Relaxed)
}

/// An audit event under construction: `Event::new(Kind::AclDenied).identity(&id)
/// .topic(t).rule(r).emit()`. Unset fields are left out of the line.
#[must_use = "an audit event does nothing until emit()"]
pub struct Event<'a> {
    kind: Kind,
    listener: Option<&'a str>,
    peer: Option<Peer>,
    client_id: Option<&'a str>,
    username: Option<&'a str>,
    certificate_identity: Option<&'a str>,
    via: Option<AuthMethod>,
    method: Option<&'static str>,
    outcome: Option<&'static str>,
    access: Option<&'a dyn fmt::Debug>,
    topic: Option<&'a str>,
    rule: Option<&'a str>,
    reason: Option<&'a str>,
    error: Option<&'a dyn fmt::Display>,
    config: Option<&'a str>,
    problems: Option<usize>,
    owner: Option<&'a Identity>,
    code: Option<u8>,
}

/// A peer: a socket address, or a word such as `in-process`.
enum Peer {
    Addr(SocketAddr),
    Named(&'static str),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Addr(a) => a.fmt(f),
            Peer::Named(n) => f.write_str(n),
        }
    }
}

impl<'a> Event<'a> {
    /// An event of `kind` with no fields yet.
    pub fn new(kind: Kind) -> Self {
        Event {
            kind,
            listener: None,
            peer: None,
            client_id: None,
            username: None,
            certificate_identity: None,
            via: None,
            method: None,
            outcome: None,
            access: None,
            topic: None,
            rule: None,
            reason: None,
            error: None,
            config: None,
            problems: None,
            owner: None,
            code: None,
        }
    }

    /// Listener, user name, client id and authentication method of `identity`.
    pub fn identity(mut self, identity: &'a Identity) -> Self {
        self.listener = Some(&identity.listener);
        self.username = identity.username.as_deref();
        self.client_id = Some(&identity.client_id);
        self.via = Some(identity.via);
        self
    }

    /// The listener's name.
    pub fn listener(mut self, listener: &'a str) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The peer's address; `None` is written as `in-process`.
    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = Some(peer.map_or(Peer::Named("in-process"), Peer::Addr));
        self
    }

    /// The client id (client-supplied: escaped).
    pub fn client_id(mut self, client_id: &'a str) -> Self {
        self.client_id = Some(client_id);
        self
    }

    /// The user name (client-supplied: escaped); `None` leaves it out.
    pub fn username(mut self, username: Option<&'a str>) -> Self {
        self.username = username;
        self
    }

    /// The verified certificate's identity, if any.
    pub fn certificate_identity(mut self, identity: Option<&'a str>) -> Self {
        self.certificate_identity = identity;
        self
    }

    /// How the client authenticated (`password`, `certificate`, `anonymous`).
    pub fn method(mut self, method: &'static str) -> Self {
        self.method = Some(method);
        self
    }

    /// `success` or `failure`, for decisions that can go both ways.
    pub fn outcome(mut self, outcome: &'static str) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// The access checked (`Read`, `Write`, `Subscribe`).
    pub fn access(mut self, access: &'a dyn fmt::Debug) -> Self {
        self.access = Some(access);
        self
    }

    /// The topic or filter (client-supplied: escaped).
    pub fn topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }

    /// The ACL rule that decided.
    pub fn rule(mut self, rule: &'a str) -> Self {
        self.rule = Some(rule);
        self
    }

    /// Why, in a few words (may quote client input: escaped).
    pub fn reason(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The error that decided (escaped).
    pub fn error(mut self, error: &'a dyn fmt::Display) -> Self {
        self.error = Some(error);
        self
    }

    /// The configuration file concerned.
    pub fn config(mut self, config: &'a str) -> Self {
        self.config = Some(config);
        self
    }

    /// How many problems were found.
    pub fn problems(mut self, problems: usize) -> Self {
        self.problems = Some(problems);
        self
    }

    /// The identity that owns what was asked for (a session held by someone else).
    pub fn owner(mut self, owner: &'a Identity) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The MQTT reason code sent to the client.
    pub fn code(mut self, code: u8) -> Self {
        self.code = Some(code);
        self
    }

    /// Count the event and write its line (unless its rate limit says no).
    pub fn emit(self) {
        COUNTS[self.kind.index()].fetch_add(1, Ordering::Relaxed);
        let (name, level, limit, message) = self.kind.describe();
        let write = match limit {
            Limit::None => true,
            Limit::Event(k) => limit::event(k),
            Limit::Line(k) => limit::line(k),
        };
        if !write {
            return;
        }
        let e = &self;
        // Formatted only for a line that is written (the limit said yes).
        let error = e.error.map(ToString::to_string);
        macro_rules! write_line {
            ($macro:ident) => {
                tracing::$macro!(
                    target: super::AUDIT_TARGET,
                    event = name,
                    listener = e.listener.map(display),
                    peer = e.peer.as_ref().map(display),
                    client_id = e.client_id.map(|c| display(LogStr(c))),
                    username = e.username.map(|u| display(LogStr(u))),
                    certificate_identity = e.certificate_identity.map(|c| display(LogStr(c))),
                    via = e.via.map(debug),
                    method = e.method,
                    outcome = e.outcome,
                    access = e.access.map(debug),
                    topic = e.topic.map(|t| display(LogStr(t))),
                    rule = e.rule,
                    reason = e.reason.map(|r| display(LogStr(r))),
                    error = error.as_deref().map(|r| display(LogStr(r))),
                    config = e.config,
                    problems = e.problems,
                    owner = e.owner.and_then(|o| o.username.as_deref()).map(|u| display(LogStr(u))),
                    owner_via = e.owner.map(|o| debug(o.via)),
                    code = e.code,
                    "{message}"
                )
            };
        }
        match level {
            Level::Debug => write_line!(debug),
            Level::Info => write_line!(info),
            Level::Warn => write_line!(warn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name_and_counter() {
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS);
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
    }

    #[test]
    fn an_event_is_counted_even_when_no_subscriber_writes_it() {
        let before = count(Kind::ConfigReloaded);
        Event::new(Kind::ConfigReloaded).config("t.toml").emit();
        assert!(count(Kind::ConfigReloaded) > before);
    }
}
