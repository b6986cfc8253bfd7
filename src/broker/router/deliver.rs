//! Delivery: what happens to one message on its way to sessions. `route` matches it
//! against the trie, merges overlapping subscriptions, checks read rules and updates
//! the retained store; `deliver` puts it in flight or in the session's queue under
//! the Receive Maximum window, the queue bounds and the overflow policy; `refill`
//! moves the queue into the window as acknowledgements free it; durable hold-backs
//! are made and completed here. It never does I/O (batches go out in `flush`) and
//! never blocks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};

use super::*;

impl Ctx {
    /// One more part of the message being routed that the publisher's
    /// acknowledgement waits for; `None` when nobody waits (QoS 0, wills, `$SYS`).
    pub(super) fn hold_route(&mut self) -> Option<u64> {
        if self.route_hold.is_none() {
            let target = self.route_target.take()?;
            let id = self.next_hold;
            self.next_hold += 1;
            self.holds.insert(
                id,
                Hold {
                    remaining: 0,
                    target,
                    lost: false,
                },
            );
            self.route_hold = Some(id);
        }
        let id = self.route_hold?;
        let hold = self.holds.get_mut(&id)?;
        hold.remaining += 1;
        Some(id)
    }

    pub(super) fn release_hold(&mut self, hold: Option<u64>, lost: bool) {
        let Some(id) = hold else { return };
        if let Some(h) = self.holds.get_mut(&id) {
            h.remaining = h.remaining.saturating_sub(1);
            h.lost |= lost;
            if h.remaining == 0 {
                if let Some(h) = self.holds.remove(&id) {
                    self.completed.push((h.target, h.lost));
                }
            }
        }
    }

    /// Done with a delivery (acknowledged, expired, or QoS 0).
    pub(super) fn discard(&mut self, queued: Queued) {
        self.forget_delivery(&queued);
        self.release_hold(queued.hold, false);
    }

    /// A delivery dropped before the subscriber had it (overflow, session end, too
    /// large): a durable hold on it completes as a failure (v5 0x97 to the publisher).
    pub(super) fn lose(&mut self, queued: Queued) {
        self.forget_delivery(&queued);
        self.release_hold(queued.hold, true);
    }

    pub(super) fn push_out(&mut self, key: SessionKey, link: &mut Link, packet: v5::Packet) {
        self.push_item(key, link, Outgoing::packet(packet));
    }

    pub(super) fn push_item(&mut self, key: SessionKey, link: &mut Link, item: Outgoing) {
        if link.out.is_empty() {
            self.dirty.push(key);
            // Sized like the last batch, so a busy link's batch does not regrow
            // (and copy its large packets) from empty every time; a spare one when
            // there is one.
            if link.out.capacity() == 0 {
                link.out = pool::OUTGOING.take(link.out_hint);
            } else {
                link.out.reserve(link.out_hint);
            }
        }
        link.out.push(item);
    }
}

/// The next free packet id; `in_use` holds the ids of `inflight` (O(1) per id
/// instead of a scan of the whole window per delivery).
pub(super) fn next_pkid(next: &mut u16, in_use: &IntSet<u16>) -> u16 {
    loop {
        let id = *next;
        *next = if *next == u16::MAX { 1 } else { *next + 1 };
        if id != 0 && !in_use.contains(&id) {
            return id;
        }
    }
}

pub(super) fn build_publish(q: &Queued, pkid: u16, dup: bool, now: Instant) -> Option<OutPublish> {
    let expiry = match q.msg.expires_at {
        None => None,
        Some(expires_at) => {
            let left = expires_at.checked_duration_since(now)?;
            Some(left.as_secs().max(1).min(u32::MAX as u64) as u32)
        }
    };
    Some(OutPublish {
        msg: q.msg.clone(),
        pkid,
        qos: q.qos,
        retain: q.retain,
        dup,
        sub_ids: q.sub_ids.clone(),
        expiry,
    })
}

/// Send `q` now if the link allows it; returns it back when it has to wait.
pub(super) fn try_send(
    ctx: &mut Ctx,
    key: SessionKey,
    session: &mut Session,
    q: Queued,
) -> Result<(), Queued> {
    let Some(link) = session.link.as_mut() else {
        return Err(q);
    };
    if q.qos != QoS::AtMostOnce && session.inflight.len() >= usize::from(link.receive_maximum) {
        return Err(q);
    }
    let pkid = if q.qos == QoS::AtMostOnce {
        0
    } else {
        next_pkid(&mut session.next_pkid, &session.pkids_in_use)
    };
    let Some(publish) = build_publish(&q, pkid, false, ctx.now) else {
        // Expired while queued: the subscriber never had it (a durable hold fails).
        stats(ctx).dropped_expired.fetch_add(1, Ordering::Relaxed);
        ctx.lose(q);
        return Ok(());
    };
    if let Some(max) = link.max_packet_size {
        let size = publish.to_publish(link.v5).size();
        if size > max as usize {
            stats(ctx).dropped_oversize.fetch_add(1, Ordering::Relaxed);
            debug!(client_id = %LogStr(&session.identity.client_id), size, max, "Message not delivered: larger than the client's Maximum Packet Size.");
            ctx.lose(q);
            return Ok(());
        }
    }
    stats(ctx).messages_sent.fetch_add(1, Ordering::Relaxed);
    link.out_bytes += q.msg.weight();
    ctx.push_item(key, link, Outgoing::Publish(publish));
    let mut q = q;
    if q.release_on_send {
        // A block-publishers hold ends when the message leaves the queue.
        q.release_on_send = false;
        ctx.release_hold(q.hold.take(), false);
    }
    if q.qos == QoS::AtMostOnce {
        ctx.discard(q);
    } else {
        session.inflight_bytes += q.msg.weight();
        session.pkids_in_use.insert(pkid);
        ctx.store_pkid(key, session, &mut q, pkid, false);
        session.inflight.push_back(Inflight {
            pkid,
            queued: q,
            state: InflightState::AwaitAck,
        });
    }
    Ok(())
}

pub(super) fn enqueue(ctx: &mut Ctx, session: &mut Session, mut q: Queued) {
    let max_messages = settings(ctx).max_offline_messages;
    let max_bytes = settings(ctx).max_offline_bytes;
    let weight = q.msg.weight();
    let fits = |s: &Session| {
        s.pending.len() < max_messages && s.pending_bytes + s.inflight_bytes + weight <= max_bytes
    };
    if fits(session) {
        if session.dropped_burst > 0 {
            warn!(client_id = %LogStr(&session.identity.client_id), affected = session.dropped_burst, policy = ?session.overflow, "Session queue overflow ended.");
            session.dropped_burst = 0;
        }
        session.pending_bytes += weight;
        session.pending.push_back(q);
        return;
    }
    let mut policy = session.overflow;
    if policy == QueueOverflow::BlockPublishers {
        // Accepted beyond the bound; the publisher's ack waits until the message leaves
        // the queue (a durable hold already waits longer: for the subscriber's ack).
        if q.hold.is_none() {
            q.hold = ctx.hold_route();
            q.release_on_send = q.hold.is_some();
        }
        if q.hold.is_none() {
            policy = QueueOverflow::DropOldest;
        }
    }
    let mut dropped = 0u64;
    let keep = match policy {
        QueueOverflow::BlockPublishers => true,
        QueueOverflow::DropNew => false,
        QueueOverflow::DropOldest => {
            while !fits(session) {
                let Some(old) = session.pending.pop_front() else {
                    break;
                };
                session.pending_bytes -= old.msg.weight();
                ctx.lose(old);
                dropped += 1;
            }
            // Still too large: bigger than the whole bound, or the in-flight window fills it.
            fits(session)
        }
    };
    if keep {
        session.pending_bytes += weight;
        session.pending.push_back(q);
    } else {
        ctx.lose(q);
        dropped += 1;
    }
    overflow_accounted(ctx, session, dropped, policy);
}

/// Count and log (once per burst) what the overflow policy did.
pub(super) fn overflow_accounted(
    ctx: &Ctx,
    session: &mut Session,
    dropped: u64,
    policy: QueueOverflow,
) {
    let s = stats(ctx);
    let blocked = policy == QueueOverflow::BlockPublishers;
    if dropped > 0 {
        s.dropped_queue_overflow
            .fetch_add(dropped, Ordering::Relaxed);
    }
    if blocked {
        s.publishers_blocked.fetch_add(1, Ordering::Relaxed);
    }
    if session.dropped_burst == 0 {
        let max_messages = settings(ctx).max_offline_messages;
        let max_bytes = settings(ctx).max_offline_bytes;
        warn!(client_id = %LogStr(&session.identity.client_id), queued = session.pending.len(), queued_bytes = session.pending_bytes, inflight_bytes = session.inflight_bytes, max_messages, max_bytes, ?policy, "Session queue full: applying the overflow policy until it drains.");
    }
    session.dropped_burst += dropped.max(u64::from(blocked));
}

pub(super) fn deliver(ctx: &mut Ctx, key: SessionKey, session: &mut Session, mut q: Queued) {
    if session.link.is_none() && q.qos == QoS::AtMostOnce {
        // QoS 0 is never queued for an offline session.
        ctx.discard(q);
        return;
    }
    if q.qos != QoS::AtMostOnce && q.record == 0 {
        ctx.store_delivery(session, &mut q);
    }
    if q.qos == QoS::AtMostOnce {
        if let Some(link) = session.link.as_mut() {
            // Packets handed to the connection and not yet written, in count and bytes.
            let (handed, handed_bytes) = link.tx.backlog().pending();
            let backlog = handed + link.out.len();
            let backlog_bytes = handed_bytes + link.out_bytes;
            let limit = settings(ctx).max_offline_messages.max(1000);
            let limit_bytes = settings(ctx).max_offline_bytes;
            if backlog > limit || backlog_bytes + q.msg.weight() > limit_bytes {
                if link.slow_dropped == 0 {
                    warn!(client_id = %LogStr(&session.identity.client_id), backlog, backlog_bytes, limit, limit_bytes, "Client reads too slowly: dropping QoS 0 messages until it catches up.");
                }
                link.slow_dropped += 1;
                stats(ctx)
                    .dropped_slow_consumer
                    .fetch_add(1, Ordering::Relaxed);
                ctx.discard(q);
                return;
            }
            if link.slow_dropped > 0 {
                warn!(client_id = %LogStr(&session.identity.client_id), dropped = link.slow_dropped, "Client caught up; QoS 0 messages were dropped meanwhile.");
                link.slow_dropped = 0;
            }
        }
    }
    if !session.pending.is_empty() && q.qos != QoS::AtMostOnce {
        // Keep order: earlier messages are still waiting for the window.
        enqueue(ctx, session, q);
        return;
    }
    if let Err(q) = try_send(ctx, key, session, q) {
        enqueue(ctx, session, q);
    }
}

/// Whether the session's identity may still read `q`: what a session holds is
/// re-checked before it is sent, since a reload may have narrowed the rules since
/// it was queued.
pub(super) fn readable(ctx: &Ctx, session: &Session, q: &Queued) -> bool {
    let topic = q.msg.topic_str();
    if ctx
        .authorizer
        .allows(&session.identity, Access::Read, topic)
    {
        return true;
    }
    debug!(client_id = %LogStr(&session.identity.client_id), topic = %LogStr(topic), "Queued message dropped: no longer readable by this identity.");
    false
}

/// Move queued messages into the inflight window while it has room.
pub(super) fn refill(ctx: &mut Ctx, key: SessionKey, session: &mut Session) {
    while let Some(q) = session.pending.pop_front() {
        session.pending_bytes -= q.msg.weight();
        if !readable(ctx, session, &q) {
            ctx.lose(q);
            continue;
        }
        if let Err(q) = try_send(ctx, key, session, q) {
            session.pending_bytes += q.msg.weight();
            session.pending.push_front(q);
            break;
        }
    }
    if session.pending.is_empty() && session.dropped_burst > 0 {
        warn!(client_id = %LogStr(&session.identity.client_id), dropped = session.dropped_burst, "Session queue overflow ended; messages were dropped.");
        session.dropped_burst = 0;
    }
}

impl Router {
    /// Deliver `msg` to every matching session (and update the retained store).
    /// Returns the hold id when a durable subscriber now holds the acknowledgement.
    pub(super) fn route(&mut self, msg: Arc<Message>, target: Option<HoldTarget>) -> Option<u64> {
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        {
            let sessions = &self.sessions;
            self.trie.matches(msg.topic_str(), &mut matches, &|k| {
                sessions.get(&k).is_some_and(|s| s.link.is_some())
            });
        }
        // `msg` owns its bytes (never a connection's read buffer): the codec copies a
        // network PUBLISH out of it, wills and in-process publishes are compacted
        // (`own_bytes`) where they enter, so what outlives this call
        // (queues, in-flight windows, channels to slow readers, the retained store)
        // shares it as it is.
        let topic = msg.topic_str();
        self.ctx.route_target = target;
        self.ctx.route_hold = None;
        self.ctx.session_durable = None;
        if msg.retain {
            if msg.payload.is_empty() {
                self.retain_clear(topic);
            } else if self.retain_store(&msg) {
                self.persist_retained(&msg, true);
            }
        }
        if !matches.is_empty() {
            matches.sort_unstable_by_key(|(k, _)| *k);
            let mut i = 0;
            while i < matches.len() {
                let key = matches[i].0;
                let mut granted: Option<QoS> = None;
                let mut sub_ids = Vec::new();
                let mut rap = false;
                let mut contributing = 0;
                let mut share = None;
                while i < matches.len() && matches[i].0 == key {
                    let o = &matches[i].1;
                    i += 1;
                    if o.no_local && msg.publisher == Some(key) {
                        continue;
                    }
                    contributing += 1;
                    share = o.share.clone();
                    granted = Some(granted.map_or(o.qos, |g| max_qos(g, o.qos)));
                    if let Some(id) = o.id {
                        if !sub_ids.contains(&id) {
                            sub_ids.push(id);
                        }
                    }
                    rap |= o.retain_as_published;
                }
                let Some(granted) = granted else { continue };
                let Some(session) = self.sessions.get_mut(&key) else {
                    continue;
                };
                if !self
                    .ctx
                    .authorizer
                    .allows(&session.identity, Access::Read, topic)
                {
                    Event::new(AuditKind::DeliveryDenied)
                        .client_id(&session.identity.client_id)
                        .topic(topic)
                        .emit();
                    continue;
                }
                let qos = min_qos(msg.qos, granted);
                let hold = if session.durable && qos != QoS::AtMostOnce {
                    self.ctx.hold_route()
                } else {
                    None
                };
                let q = Queued {
                    msg: msg.clone(),
                    qos,
                    retain: rap && msg.retain,
                    sub_ids,
                    hold,
                    release_on_send: false,
                    share: if contributing == 1 { share } else { None },
                    record: 0,
                    order: 0,
                    pkid_record: 0,
                };
                deliver(&mut self.ctx, key, session, q);
            }
        }
        self.scratch = matches;
        self.hold_for_stored_deliveries();
        if let Some(t) = self.ctx.route_target.take() {
            // Nobody holds it back: acknowledged now.
            self.ctx.completed.push((t, false));
        }
        self.ctx
            .route_hold
            .take()
            .filter(|id| self.ctx.holds.contains_key(id))
    }

    /// The retained message of a topic, if any (an exact-topic walk).
    pub(super) fn retained_at(&self, topic: &str) -> Option<Arc<Message>> {
        let mut found = Vec::new();
        self.retained.matching(topic, &mut found);
        found.pop()
    }

    /// Store `msg` as its topic's retained message, within `max_retained_messages`
    /// and `max_retained_bytes`; refused (logged once per burst, counted) beyond them.
    /// Returns whether it was stored.
    pub(super) fn retain_store(&mut self, msg: &Arc<Message>) -> bool {
        let topic = msg.topic_str();
        let old = self.retained_at(topic).map_or(0, |m| m.weight());
        let max_messages = settings(&self.ctx).max_retained_messages;
        let max_bytes = settings(&self.ctx).max_retained_bytes;
        let over_count = old == 0 && self.retained.len() >= max_messages;
        let bytes = self.retained_bytes - old + msg.weight();
        if over_count || bytes > max_bytes {
            stats(&self.ctx)
                .dropped_retained_quota
                .fetch_add(1, Ordering::Relaxed);
            if !self.retained_full {
                warn!(retained = self.retained.len(), retained_bytes = self.retained_bytes, max_messages, max_bytes, "Retained store full: new retained messages are delivered but not retained until it has room.");
                self.retained_full = true;
            }
            return false;
        }
        self.retained_bytes = bytes;
        self.retained.insert(topic, msg.clone());
        true
    }

    /// Clear the retained message of `topic` (and its stored copy).
    pub(super) fn retain_clear(&mut self, topic: &str) {
        if let Some(old) = self.retained_at(topic) {
            self.retained_bytes -= old.weight();
            self.retained.remove(topic);
            self.retained_full = false;
            self.persist_retained(&old, false);
        }
    }

    pub(super) fn complete_targets(&mut self) {
        if self.ctx.completed.is_empty() {
            return;
        }
        // In completion order, so acknowledgements keep the order of the PUBLISHes.
        let mut completed = std::mem::take(&mut self.ctx.completed);
        for (target, lost) in completed.drain(..) {
            match target {
                HoldTarget::Internal(reply) => {
                    let _ = reply.send(if lost {
                        Err(BrokerError::Refused(LOST_REASON.into()))
                    } else {
                        Ok(())
                    });
                }
                HoldTarget::Network { key, pkid, qos } => {
                    let Some(session) = self.sessions.get_mut(&key) else {
                        continue;
                    };
                    session.held.remove(&pkid);
                    let Some(link) = session.link.as_mut() else {
                        // Offline: the client resends on reconnect and is acked then.
                        // A lost QoS 2 message must be routed again then, not taken
                        // for a duplicate of the one that was lost.
                        if lost {
                            self.ctx.qos2_done(&mut session.incoming_qos2, pkid);
                        }
                        continue;
                    };
                    // v3.1.1 has no negative acknowledgement: it is acked either way.
                    let refuse = lost && link.v5;
                    let properties = refuse.then(|| LOST_REASON.to_string());
                    let packet = match (qos, refuse) {
                        (QoS::ExactlyOnce, false) => pubrec(pkid),
                        (QoS::ExactlyOnce, true) => {
                            // The flow ends here; no PUBREL will come for this id.
                            self.ctx.qos2_done(&mut session.incoming_qos2, pkid);
                            v5::Packet::PubRec(v5::PubRec {
                                pkid,
                                reason: v5::PubRecReason::QuotaExceeded,
                                properties: properties.map(|r| v5::PubRecProperties {
                                    reason_string: Some(r),
                                    user_properties: vec![],
                                }),
                            })
                        }
                        (_, refuse) => v5::Packet::PubAck(v5::PubAck {
                            pkid,
                            reason: if refuse {
                                v5::PubAckReason::QuotaExceeded
                            } else {
                                v5::PubAckReason::Success
                            },
                            properties: properties.map(|r| v5::PubAckProperties {
                                reason_string: Some(r),
                                user_properties: vec![],
                            }),
                        }),
                    };
                    self.ctx.push_out(key, link, packet);
                }
            }
        }
        // Keep the allocation (nothing completes while acknowledgements are sent).
        self.ctx.completed = completed;
    }

    pub(super) fn ack(&mut self, key: SessionKey, pkid: u16, state: InflightState) {
        self.settle(key, pkid, state, false);
    }

    /// The delivery `pkid` in `state` is done: acknowledged, or (`refused`) refused by
    /// an in-process subscriber, which completes a hold on it as a failure (v5 0x97).
    pub(super) fn settle(
        &mut self,
        key: SessionKey,
        pkid: u16,
        state: InflightState,
        refused: bool,
    ) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(pos) = session
            .inflight
            .iter()
            .position(|f| f.pkid == pkid && f.state == state)
        else {
            return;
        };
        if let Some(f) = session.inflight.remove(pos) {
            session.pkids_in_use.remove(&f.pkid);
            session.inflight_bytes -= f.queued.msg.weight();
            if refused {
                self.ctx.lose(f.queued);
            } else {
                self.ctx.discard(f.queued);
            }
        }
        refill(&mut self.ctx, key, session);
    }
}

/// Why a held publication is refused (v5 0x97) or an in-process publish fails.
pub(super) const LOST_REASON: &str =
    "quota exceeded (0x97): a durable subscriber lost or refused the message before storing it";

pub(super) fn pubrec(pkid: u16) -> v5::Packet {
    v5::Packet::PubRec(v5::PubRec {
        pkid,
        reason: v5::PubRecReason::Success,
        properties: None,
    })
}
