//! The checks both endpoints apply to what a client sends before it reaches the
//! router: topic names of PUBLISH and wills, SUBSCRIBE and UNSUBSCRIBE filters
//! (syntax, shared-subscription form, level limit, authorization) and the
//! `Violation` that ends a connection. Network connections and in-process clients
//! call the same functions, so a rule cannot differ between them. It decides, and
//! must never send, log a connection's lines or touch routing state (a refusal by
//! ACL is audited here, once, like every ACL denial).

use super::codec::v5;
use super::reason::ReasonCode;
use crate::acl::Access;
use crate::auth::Identity;
use crate::topic;

/// A protocol violation: v5 clients get DISCONNECT with this reason code.
pub(crate) struct Violation {
    pub(crate) code: ReasonCode,
    pub(crate) reason: String,
}

pub(crate) fn violation(code: ReasonCode, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// The topic name of an incoming PUBLISH (after alias resolution), validated.
pub(crate) fn publish_topic(raw: &[u8]) -> Result<&str, Violation> {
    // Printable ASCII without wildcards is valid as it is: one pass for the common case.
    let plain = !raw.is_empty()
        && raw.len() <= topic::MAX_TOPIC_LEN
        && raw
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'+' && b != b'#');
    if plain {
        if let Ok(topic) = std::str::from_utf8(raw) {
            return Ok(topic);
        }
    }
    let topic = topic::topic_from_bytes(raw).map_err(|e| {
        violation(
            ReasonCode::TopicNameInvalid,
            format!("invalid topic name: {e}"),
        )
    })?;
    topic::validate_topic_name(topic).map_err(|e| {
        violation(
            ReasonCode::TopicNameInvalid,
            format!("invalid topic name: {e}"),
        )
    })?;
    Ok(topic)
}

/// A will's topic name: valid UTF-8, no wildcards, at most `max_levels` levels. The
/// error is the reason to log (the client is told 0x90).
pub(crate) fn will_topic(raw: &[u8], max_levels: usize) -> Result<(), String> {
    topic::topic_from_bytes(raw)
        .map_err(|e| e.to_string())
        .and_then(|t| {
            topic::validate_topic_name(t)
                .and_then(|()| topic::check_levels(t, max_levels))
                .map_err(|e| format!("will {e}"))
        })
}

/// Validate and authorize one SUBSCRIBE filter. The outer error is a protocol
/// violation; the inner one a per-filter refusal code.
pub(crate) fn check_filter(
    f: &v5::Filter,
    identity: &Identity,
    authorizer: &dyn crate::acl::Authorizer,
    peer: Option<std::net::SocketAddr>,
    max_levels: usize,
) -> Result<Result<(), v5::SubscribeReasonCode>, Violation> {
    let inner = match topic::parse_shared(&f.path) {
        Err(_) => return Ok(Err(v5::SubscribeReasonCode::TopicFilterInvalid)),
        Ok(Some(shared)) => {
            if f.nolocal {
                return Err(violation(
                    ReasonCode::ProtocolError,
                    "No Local set on a shared subscription",
                ));
            }
            shared.filter
        }
        Ok(None) => f.path.as_str(),
    };
    if topic::check_levels(inner, max_levels).is_err()
        || topic::validate_topic_filter(inner).is_err()
    {
        return Ok(Err(v5::SubscribeReasonCode::TopicFilterInvalid));
    }
    let decision = authorizer.check(identity, Access::Subscribe, inner);
    if !decision.is_allowed() {
        crate::acl::audit_denied(identity, Access::Subscribe, inner, &decision, peer);
        return Ok(Err(v5::SubscribeReasonCode::NotAuthorized));
    }
    Ok(Ok(()))
}

/// Whether an UNSUBSCRIBE filter is well formed and within `max_levels`: one that
/// could never have been subscribed is answered 0x8F, not looked up.
pub(crate) fn valid_unsubscribe_filter(filter: &str, max_levels: usize) -> bool {
    let inner = match topic::parse_shared(filter) {
        Ok(Some(shared)) => shared.filter,
        Ok(None) => filter,
        Err(_) => return false,
    };
    topic::check_levels(inner, max_levels).is_ok() && topic::validate_topic_filter(inner).is_ok()
}
