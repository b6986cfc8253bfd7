//! The protocol state of one network connection: decode what the client sent,
//! validate and authorize it into router items (topic aliases, inbound Receive
//! Maximum, the per-connection cache of PUBLISH decisions), and encode what the
//! router sends back (outbound aliases, Maximum Packet Size, reason strings). It
//! does no I/O and must never panic on client input.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::acl::Access;
use crate::auth::Identity;
use crate::broker::aliases::{InboundAliases, OutboundAliases};
use crate::broker::checks::{check_filter, publish_topic, violation, Violation};
use crate::broker::codec::{self, v5, ProtocolVersion, QoS};
use crate::broker::fasthash::IntSet;
use crate::broker::link::{Inbound, Outgoing};
use crate::broker::reason::ReasonCode;
use crate::broker::shared::Shared;
use crate::broker::stats::ListenerTraffic;
use crate::edge::rate::{OnExcess, PublishLimiter};
use crate::telemetry::limit::LogStr;
use crate::topic;

/// Why the main loop ended; decides whether the will is published.
pub(super) enum End {
    /// Normal DISCONNECT from the client.
    Disconnect {
        send_will: bool,
        session_expiry: Option<u32>,
    },
    /// Socket error, EOF, keepalive timeout or protocol violation: the will fires.
    Abnormal,
    /// Broker shutdown or session takeover.
    Server,
    /// A revalidation check rejected the session's credentials: no will (the
    /// client is no longer trusted).
    Revoked,
}

pub(super) struct ConnState {
    pub(super) shared: Arc<Shared>,
    pub(super) codec: codec::Codec,
    /// The same as the router's session (shared).
    pub(super) identity: Arc<Identity>,
    pub(super) peer: std::net::SocketAddr,
    pub(super) session_expiry: u32,
    /// v5 Request Problem Information: reason strings allowed on acks.
    pub(super) problem_info: bool,
    /// Topic aliases the client set (v5).
    pub(super) aliases: InboundAliases,
    /// Topic aliases the broker assigns towards a v5 client that allows them.
    pub(super) out_aliases: OutboundAliases,
    /// QoS 1/2 packet ids received and not yet completed (inbound Receive Maximum).
    pub(super) inbound_qos: IntSet<u16>,
    /// v3.1.1 only: QoS 1/2 packet ids not yet answered with PUBACK/PUBREC (the
    /// back-pressure window; a QoS 2 id waiting for PUBREL must not stall reading,
    /// or the PUBREL behind the next PUBLISH would never be read).
    pub(super) awaiting_ack: IntSet<u16>,
    pub(super) wbuf: BytesMut,
    /// Recent PUBLISH authorization decisions of this connection.
    pub(super) write_decisions: WriteDecisions,
    /// The listener's `max_qos` (`None`: 2, nothing to check).
    pub(super) max_qos: Option<QoS>,
    /// The listener's `publish_rate` buckets of this client (`None`: not limited).
    pub(super) rate: Option<Box<PublishLimiter>>,
    /// Set when `process` stopped before a PUBLISH the rate does not allow yet: the
    /// socket is not read before this instant (throttle).
    pub(super) throttled_until: Option<Instant>,
    /// PUBLISH packets decoded since the session loop last counted them.
    pub(super) publishes: u64,
    /// The listener's message and rate-control counters.
    pub(super) traffic: Arc<ListenerTraffic>,
    /// A session that connected with the Authentication Method `jwt` (the only kind
    /// that may re-authenticate): its re-authentication budget and pending token.
    pub(super) reauth: Option<Box<Reauth>>,
}

/// Re-authentications a connection may make per [`WINDOW`].
pub(super) const BUDGET: u32 = 6;
/// The re-authentication budget's window.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// What a session that connected with the Authentication Method `jwt` keeps for
/// re-authentication (`reauth.rs`).
#[derive(Debug, Default)]
pub(super) struct Reauth {
    /// Start of the current budget window (`None` before the first AUTH).
    window_start: Option<Instant>,
    /// Re-authentications in the current window.
    used: u32,
    /// The token of an AUTH decoded and not yet verified.
    pub(super) pending: Option<Bytes>,
}

impl Reauth {
    /// Count one attempt; false when the budget of the window is spent.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= BUDGET {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Most recent PUBLISH topics whose decision a connection remembers.
const WRITE_DECISIONS: usize = 8;

/// Per-connection cache of PUBLISH authorization decisions (design decision 3): a device
/// publishes to a handful of topics over and over. Entries belong to the authorizer they
/// came from; a reload installs a new one, which empties the cache. Holding that `Arc`
/// keeps its address from being reused, so `ptr_eq` cannot confuse two authorizers.
/// Nothing is allocated until the first PUBLISH.
#[derive(Default)]
pub(super) struct WriteDecisions {
    authorizer: Option<Arc<dyn crate::acl::Authorizer>>,
    /// (topic, allowed), most recently used first.
    entries: Vec<(Bytes, bool)>,
}

impl WriteDecisions {
    fn allowed(
        &mut self,
        authorizer: &Arc<dyn crate::acl::Authorizer>,
        identity: &Identity,
        topic: &str,
    ) -> bool {
        if !self
            .authorizer
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, authorizer))
        {
            self.authorizer = Some(authorizer.clone());
            self.entries.clear();
        }
        if let Some(i) = self
            .entries
            .iter()
            .position(|(t, _)| t.as_ref() == topic.as_bytes())
        {
            let entry = self.entries.remove(i);
            let allowed = entry.1;
            self.entries.insert(0, entry);
            return allowed;
        }
        let allowed = crate::acl::write_allowed(&**authorizer, identity, topic);
        self.entries.truncate(WRITE_DECISIONS - 1);
        self.entries
            .insert(0, (Bytes::copy_from_slice(topic.as_bytes()), allowed));
        allowed
    }
}

/// Whether the next packet in `rbuf` is a QoS 1/2 PUBLISH (counts against the
/// inbound Receive Maximum).
pub(super) fn next_is_qos_publish(rbuf: &[u8]) -> bool {
    rbuf.first()
        .is_some_and(|&b| b >> 4 == 3 && (b >> 1) & 0x03 != 0)
}

impl ConnState {
    pub(super) fn v5(&self) -> bool {
        self.codec.version == ProtocolVersion::V5
    }

    /// A v3.1.1 client has as many QoS 1/2 publications unacknowledged as the broker
    /// accepts (`receive_maximum`): the next one waits in the socket. v5 clients know
    /// the limit and are disconnected (0x93) when they exceed it.
    pub(super) fn inbound_full(&self) -> bool {
        !self.v5() && self.awaiting_ack.len() >= usize::from(self.shared.settings.receive_maximum)
    }

    pub(super) fn encode(&mut self, packet: &v5::Packet) {
        if !self.v5() && matches!(packet, v5::Packet::Disconnect(_)) {
            return;
        }
        match packet {
            v5::Packet::PubAck(a) => {
                self.inbound_qos.remove(&a.pkid);
                self.awaiting_ack.remove(&a.pkid);
            }
            v5::Packet::PubComp(c) => {
                self.inbound_qos.remove(&c.pkid);
            }
            v5::Packet::PubRec(r) => {
                self.awaiting_ack.remove(&r.pkid);
                if !matches!(
                    r.reason,
                    v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers
                ) {
                    self.inbound_qos.remove(&r.pkid);
                }
            }
            _ => {}
        }
        if self.v5() && self.problem_info {
            if let Some(explained) = explain_refusal(packet) {
                if let Err(e) = self.codec.encode(&explained, &mut self.wbuf) {
                    warn!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, error = %e, "Packet not sent: encoding failed.");
                }
                return;
            }
        }
        if let Err(e) = self.codec.encode(packet, &mut self.wbuf) {
            warn!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, error = %e, "Packet not sent: encoding failed.");
        }
    }

    /// Give back the write buffer and the capacity of empty per-connection tables after
    /// a quiet spell (an idle connection should hold no buffers).
    pub(super) fn release_idle_memory(&mut self) {
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        if self.inbound_qos.is_empty() {
            self.inbound_qos.shrink_to_fit();
        }
        if self.awaiting_ack.is_empty() {
            self.awaiting_ack.shrink_to_fit();
        }
    }

    /// Encode a router batch; returns true when the router asked to close.
    pub(super) fn encode_batch(&mut self, mut batch: Vec<Outgoing>) -> bool {
        let mut at = 0;
        let close = self.encode_from(&mut batch, &mut at, usize::MAX);
        crate::broker::link::pool::OUTGOING.give(batch);
        close
    }

    /// Encode the items of `batch` from `*at` on (each taken out of it) until the
    /// write buffer holds `limit` bytes or the batch ends; true when the router's
    /// `Close` comes (the items after it are not encoded).
    pub(super) fn encode_from(
        &mut self,
        batch: &mut [Outgoing],
        at: &mut usize,
        limit: usize,
    ) -> bool {
        let mut sent = 0u64;
        let mut close = false;
        while *at < batch.len() && self.wbuf.len() < limit {
            let item = std::mem::replace(&mut batch[*at], Outgoing::Close);
            *at += 1;
            match item {
                Outgoing::Publish(p) => {
                    sent += 1;
                    let mut publish = p.to_publish(self.v5());
                    self.out_aliases.apply(&mut publish);
                    self.encode(&v5::Packet::Publish(publish))
                }
                Outgoing::Ack(a) => self.encode(&a.to_packet()),
                Outgoing::Packet(p) => self.encode(&p),
                Outgoing::Close => {
                    close = true;
                    break;
                }
            }
        }
        if sent > 0 {
            self.traffic
                .messages_sent
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
        close
    }

    /// The `publish_rate` check before the next packet, a PUBLISH: `Ok(true)` when it must
    /// wait (throttle: `throttled_until` is set), `Err` when the client is to be
    /// disconnected for it.
    fn over_rate(&mut self) -> Result<bool, Violation> {
        let Some(rate) = self.rate.as_deref() else {
            return Ok(false);
        };
        if !rate.exhausted() {
            return Ok(false);
        }
        match rate.on_excess() {
            OnExcess::Throttle => {
                self.throttled_until = Some(rate.ready_at());
                Ok(true)
            }
            OnExcess::Disconnect => Err(violation(
                ReasonCode::MessageRateTooHigh,
                format!(
                    "more than {} messages or {} bytes per second (publish_rate)",
                    rate.rate().msgs,
                    rate.rate().bytes
                ),
            )),
        }
    }

    /// Decode and handle every complete packet in `rbuf`.
    pub(super) fn process(
        &mut self,
        rbuf: &mut BytesMut,
        items: &mut Vec<Inbound>,
    ) -> Result<Option<End>, Violation> {
        let authorizer = self.shared.authorizer();
        if let Some(rate) = self.rate.as_deref_mut() {
            rate.refill(Instant::now());
        }
        loop {
            if self.inbound_full() && next_is_qos_publish(rbuf) {
                return Ok(None);
            }
            if self.rate.is_some()
                && rbuf.first().is_some_and(|b| b >> 4 == 3)
                && self.over_rate()?
            {
                return Ok(None);
            }
            let packet = match self.codec.decode(rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => return Err(violation(e.reason(), e.to_string())),
            };
            match packet {
                v5::Packet::Publish(p) => self.publish(p, &authorizer, items)?,
                v5::Packet::PubAck(a) => items.push(Inbound::PubAck(a.pkid)),
                v5::Packet::PubRec(r) => items.push(Inbound::PubRec {
                    pkid: r.pkid,
                    failed: !matches!(
                        r.reason,
                        v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers
                    ),
                }),
                v5::Packet::PubRel(r) => items.push(Inbound::PubRel(r.pkid)),
                v5::Packet::PubComp(c) => items.push(Inbound::PubComp(c.pkid)),
                v5::Packet::Subscribe(s) => self.subscribe(s, &*authorizer, items)?,
                v5::Packet::Unsubscribe(u) => items.push(Inbound::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters,
                    reply: None,
                }),
                v5::Packet::PingReq(_) => self.encode(&v5::Packet::PingResp(v5::PingResp)),
                v5::Packet::Disconnect(d) => {
                    let send_will =
                        d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage;
                    let expiry = d.properties.and_then(|p| p.session_expiry_interval);
                    if self.session_expiry == 0 && expiry.is_some_and(|e| e > 0) {
                        return Err(violation(
                            ReasonCode::ProtocolError,
                            "session expiry set at DISCONNECT after connecting with 0",
                        ));
                    }
                    debug!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, "Client sent DISCONNECT.");
                    return Ok(Some(End::Disconnect {
                        send_will,
                        session_expiry: expiry,
                    }));
                }
                v5::Packet::Connect(..) => {
                    return Err(violation(
                        ReasonCode::ProtocolError,
                        "second CONNECT on one connection",
                    ))
                }
                v5::Packet::Auth(a) => {
                    // Decoding stops here: the token is verified before the packets
                    // behind it, which then see the new grant.
                    self.auth_packet(&a)?;
                    return Ok(None);
                }
                _ => {
                    return Err(violation(
                        ReasonCode::ProtocolError,
                        "packet type not allowed from a client",
                    ))
                }
            }
        }
    }

    fn publish(
        &mut self,
        mut p: v5::Publish,
        authorizer: &Arc<dyn crate::acl::Authorizer>,
        items: &mut Vec<Inbound>,
    ) -> Result<(), Violation> {
        self.publishes += 1;
        if let Some(rate) = self.rate.as_deref_mut() {
            rate.take(p.topic.len() + p.payload.len());
        }
        if self.max_qos.is_some_and(|max| p.qos as u8 > max as u8) {
            self.traffic
                .qos_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(violation(
                ReasonCode::QoSNotSupported,
                format!(
                    "PUBLISH at QoS {} above the listener's maximum QoS {}",
                    p.qos as u8,
                    self.max_qos.map_or(2, |q| q as u8)
                ),
            ));
        }
        let settings = &self.shared.settings;
        let alias = p.properties.as_mut().and_then(|pp| pp.topic_alias.take());
        // Set only once the PUBLISH carrying it has been accepted (valid, authorized).
        let mut new_alias = None;
        if let Some(alias) = alias {
            if alias == 0 || alias > settings.topic_alias_maximum {
                return Err(violation(
                    ReasonCode::TopicAliasInvalid,
                    format!(
                        "topic alias {alias} outside 1..={}",
                        settings.topic_alias_maximum
                    ),
                ));
            }
            if p.topic.is_empty() {
                match self.aliases.get(alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(violation(
                            ReasonCode::ProtocolError,
                            format!("topic alias {alias} used before it was set"),
                        ))
                    }
                }
            } else {
                new_alias = Some(alias);
            }
        }
        if p.topic.is_empty() {
            return Err(violation(
                ReasonCode::ProtocolError,
                "zero-length topic name without topic alias",
            ));
        }
        let topic = publish_topic(&p.topic)?;
        if let Some(pp) = p.properties.as_mut() {
            pp.subscription_identifiers.clear();
        }
        if p.qos != QoS::AtMostOnce
            && self.v5()
            && !self.inbound_qos.contains(&p.pkid)
            && self.inbound_qos.len() >= usize::from(settings.receive_maximum)
        {
            return Err(violation(
                ReasonCode::ReceiveMaximumExceeded,
                format!(
                    "more than {} unacknowledged QoS 1/2 publications",
                    settings.receive_maximum
                ),
            ));
        }
        if let Err(e) = topic::check_levels(topic, settings.max_topic_levels) {
            let reason = format!("topic name invalid: {e}");
            if !self.v5() {
                // v3.1.1 has no negative acknowledgement: the connection is closed.
                return Err(violation(ReasonCode::TopicNameInvalid, reason));
            }
            debug!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, %reason, "PUBLISH refused: too many topic levels.");
            self.refuse_publish(
                &p,
                v5::PubAckReason::TopicNameInvalid,
                v5::PubRecReason::TopicNameInvalid,
                reason,
            );
            return Ok(());
        }
        if !self
            .write_decisions
            .allowed(authorizer, &self.identity, topic)
        {
            // Denials are rare: ask again for the deciding rule, for the audit line.
            let decision = crate::acl::write_denial(&**authorizer, &self.identity, topic);
            crate::acl::audit_denied(
                &self.identity,
                Access::Write,
                topic,
                &decision,
                Some(self.peer),
            );
            if self.v5() {
                self.refuse_publish(
                    &p,
                    v5::PubAckReason::NotAuthorized,
                    v5::PubRecReason::NotAuthorized,
                    "not authorized to publish to this topic".into(),
                );
            } else {
                // v3.1.1 completes the flow as if accepted; a QoS 2 PUBREL gets its
                // PUBCOMP from the router.
                self.refuse_publish(
                    &p,
                    v5::PubAckReason::Success,
                    v5::PubRecReason::Success,
                    String::new(),
                );
            }
            return Ok(());
        }
        if let Some(alias) = new_alias {
            self.aliases
                .set(alias, &p.topic)
                .map_err(|reason| violation(ReasonCode::QuotaExceeded, reason))?;
        }
        if p.qos != QoS::AtMostOnce {
            self.inbound_qos.insert(p.pkid);
            if !self.v5() {
                self.awaiting_ack.insert(p.pkid);
            }
        }
        let expires_at = p
            .properties
            .as_ref()
            .and_then(|pp| pp.message_expiry_interval)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        items.push(Inbound::Publish {
            publish: p,
            expires_at,
            reply: None,
        });
        Ok(())
    }

    /// Answer a PUBLISH that is not routed: PUBACK/PUBREC with `puback`/`pubrec` for
    /// QoS 1/2 (with `reason` as reason string on v5 when the client wants them),
    /// nothing for QoS 0.
    fn refuse_publish(
        &mut self,
        p: &v5::Publish,
        puback: v5::PubAckReason,
        pubrec: v5::PubRecReason,
        reason: String,
    ) {
        let reason = (self.v5() && self.problem_info && !reason.is_empty()).then_some(reason);
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.encode(&v5::Packet::PubAck(v5::PubAck {
                pkid: p.pkid,
                reason: puback,
                properties: reason.map(|r| v5::PubAckProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })),
            QoS::ExactlyOnce => self.encode(&v5::Packet::PubRec(v5::PubRec {
                pkid: p.pkid,
                reason: pubrec,
                properties: reason.map(|r| v5::PubRecProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })),
        }
    }

    fn subscribe(
        &mut self,
        s: v5::Subscribe,
        authorizer: &dyn crate::acl::Authorizer,
        items: &mut Vec<Inbound>,
    ) -> Result<(), Violation> {
        let id = s.properties.and_then(|p| p.id);
        if id == Some(0) {
            return Err(violation(
                ReasonCode::ProtocolError,
                "subscription identifier 0",
            ));
        }
        let mut filters = Vec::with_capacity(s.filters.len());
        for mut f in s.filters {
            if let Some(max) = self.max_qos.filter(|max| f.qos as u8 > *max as u8) {
                // Granted at most max_qos (SUBACK says which), as the spec lets a server do.
                f.qos = max;
                self.traffic
                    .qos_downgraded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let refused = match check_filter(
                &f,
                &self.identity,
                authorizer,
                Some(self.peer),
                self.shared.settings.max_topic_levels,
            )? {
                Ok(()) => None,
                Err(code) => {
                    // A refusal by ACL is audited by `check_filter` itself.
                    debug!(client_id = %LogStr(&self.identity.client_id), filter = %LogStr(&f.path), ?code, "Subscribe refused.");
                    Some(code)
                }
            };
            filters.push((f, refused));
        }
        items.push(Inbound::Subscribe {
            pkid: s.pkid,
            id,
            filters,
            reply: None,
        });
        Ok(())
    }
}

/// A copy of a refusing v5 ack with a reason string added, or `None` when `packet`
/// is not a refusal (or already explains itself).
fn explain_refusal(packet: &v5::Packet) -> Option<v5::Packet> {
    match packet {
        v5::Packet::PubAck(a)
            if a.properties.is_none() && a.reason == v5::PubAckReason::NotAuthorized =>
        {
            let mut a = a.clone();
            a.properties = Some(v5::PubAckProperties {
                reason_string: Some("not authorized to publish to this topic".into()),
                user_properties: vec![],
            });
            Some(v5::Packet::PubAck(a))
        }
        v5::Packet::PubRec(r)
            if r.properties.is_none() && r.reason == v5::PubRecReason::NotAuthorized =>
        {
            let mut r = r.clone();
            r.properties = Some(v5::PubRecProperties {
                reason_string: Some("not authorized to publish to this topic".into()),
                user_properties: vec![],
            });
            Some(v5::Packet::PubRec(r))
        }
        v5::Packet::SubAck(s)
            if s.properties.is_none()
                && s.return_codes
                    .iter()
                    .any(|c| !matches!(c, v5::SubscribeReasonCode::Success(_))) =>
        {
            let refused: Vec<String> = s
                .return_codes
                .iter()
                .enumerate()
                .filter(|(_, c)| !matches!(c, v5::SubscribeReasonCode::Success(_)))
                .map(|(i, c)| format!("filter {i}: {c:?}"))
                .collect();
            let mut s = s.clone();
            s.properties = Some(v5::SubAckProperties {
                reason_string: Some(format!("refused {}", refused.join(", "))),
                user_properties: vec![],
            });
            Some(v5::Packet::SubAck(s))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AclDecision, Authorizer};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Allows topics under `ok/` and counts how often it was asked.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Authorizer for Counting {
        fn check(&self, _: &Identity, _: Access, topic: &str) -> AclDecision {
            self.0.fetch_add(1, Ordering::Relaxed);
            if topic.starts_with("ok/") {
                AclDecision::Allow { rule: None }
            } else {
                AclDecision::Deny { rule: None }
            }
        }
    }

    fn asked(a: &Arc<Counting>) -> usize {
        a.0.load(Ordering::Relaxed)
    }

    #[test]
    fn publish_decisions_are_cached_per_connection_and_dropped_on_reload() {
        let identity = Identity::internal("device");
        let first = Arc::new(Counting::default());
        let first_dyn: Arc<dyn Authorizer> = first.clone();
        let mut cache = WriteDecisions::default();
        for _ in 0..5 {
            assert!(cache.allowed(&first_dyn, &identity, "ok/a"));
            assert!(!cache.allowed(&first_dyn, &identity, "no/a"));
        }
        assert_eq!(asked(&first), 2, "one check per topic, then cached");
        // A reload installs another authorizer: nothing of the old one is reused.
        let second = Arc::new(Counting::default());
        let second_dyn: Arc<dyn Authorizer> = second.clone();
        assert!(cache.allowed(&second_dyn, &identity, "ok/a"));
        assert_eq!(asked(&second), 1);
        assert_eq!(asked(&first), 2);
    }

    #[test]
    fn publish_decision_cache_is_bounded() {
        let identity = Identity::internal("device");
        let counting = Arc::new(Counting::default());
        let authorizer: Arc<dyn Authorizer> = counting.clone();
        let mut cache = WriteDecisions::default();
        for i in 0..100 {
            cache.allowed(&authorizer, &identity, &format!("ok/{i}"));
        }
        assert_eq!(cache.entries.len(), WRITE_DECISIONS);
        // The most recent topics are the ones kept.
        let before = asked(&counting);
        assert!(cache.allowed(&authorizer, &identity, "ok/99"));
        assert_eq!(asked(&counting), before);
        assert!(cache.allowed(&authorizer, &identity, "ok/0"));
        assert_eq!(asked(&counting), before + 1);
    }
}
