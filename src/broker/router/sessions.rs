//! The session table: attaching a connection to a session (new, resumed or taken
//! over, refused by quota or by owner), detaching it, wills and their delay, session
//! expiry timers, and the end of a session (its subscriptions removed, unacknowledged
//! shared-subscription messages handed to another member). It must keep nothing for
//! a session that ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::deliver::{build_publish, deliver, readable, refill};
use super::*;
use crate::broker::reason::ReasonCode;

impl Router {
    /// Attach a connection to its session: refused by the persistent-session quota or
    /// because the client id holds another identity's session; otherwise the session
    /// is taken over (if attached elsewhere), ended (clean start) or resumed, or
    /// created, and the connection attached to it.
    pub(super) fn connect(&mut self, req: ConnectRequest) {
        if self.over_session_quota(&req) {
            refuse(req, ReasonCode::QuotaExceeded, SESSION_QUOTA_REASON);
            return;
        }
        let mut resumed = None;
        if let Some(&key) = self.by_client.get(&req.identity.client_id) {
            if self.owned_by_another(key, &req) {
                refuse(req, ReasonCode::NotAuthorized, SESSION_OWNER_REASON);
                return;
            }
            self.take_over(key, req.clean_start);
            if req.clean_start {
                self.end_session(key);
            } else {
                resumed = Some(key);
            }
        }
        let key = match resumed {
            Some(key) => key,
            None => self.create_session(&req),
        };
        self.attach(key, req, resumed.is_some());
    }

    /// Whether `req` would create one persistent session more than allowed (logged
    /// and counted when so).
    fn over_session_quota(&self, req: &ConnectRequest) -> bool {
        let client_id = &req.identity.client_id;
        let existing = self
            .by_client
            .get(client_id)
            .and_then(|key| self.sessions.get(key));
        let creates = existing.is_none() || req.clean_start;
        let frees = usize::from(existing.is_some_and(|s| req.clean_start && s.expiry > 0));
        let max_persistent = settings(&self.ctx).max_persistent_sessions;
        let over = creates
            && req.session_expiry > 0
            && self.persistent_sessions - frees >= max_persistent
            && existing.is_none_or(|s| s.identity.same_principal(&req.identity));
        if over {
            warn!(client_id = %LogStr(client_id), persistent = self.persistent_sessions, max = max_persistent, "Connection refused: the broker holds the most persistent sessions allowed (broker.max_persistent_sessions).");
            stats(&self.ctx)
                .refused_session_quota
                .fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Whether session `key` belongs to another identity than `req`'s (audited and
    /// counted when so): sessions belong to identities (design decision 11), neither
    /// its messages nor its live connection go to another one.
    fn owned_by_another(&self, key: SessionKey, req: &ConnectRequest) -> bool {
        let Some(owner) = self.sessions.get(&key).map(|s| &s.identity) else {
            return false;
        };
        if owner.same_principal(&req.identity) {
            return false;
        }
        Event::new(AuditKind::SessionOwnerMismatch)
            .identity(&req.identity)
            .owner(owner)
            .emit();
        stats(&self.ctx)
            .refused_session_owner
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A new connection for session `key`: the old connection, if any, is told
    /// (DISCONNECT 0x8E) and closed, and its will goes out now unless it has a delay
    /// and the session continues (then it is cancelled).
    fn take_over(&mut self, key: SessionKey, clean_start: bool) {
        let mut fire_will = None;
        if let Some(session) = self.sessions.get_mut(&key) {
            if let Some(mut old) = session.link.take() {
                self.by_conn.remove(&old.conn);
                info!(client_id = %LogStr(&session.identity.client_id), "Session taken over by a new connection.");
                old.out
                    .push(Outgoing::packet(v5::Packet::Disconnect(v5::Disconnect {
                        reason_code: v5::DisconnectReasonCode::SessionTakenOver,
                        properties: Some(v5::DisconnectProperties {
                            session_expiry_interval: None,
                            reason_string: Some(
                                "session taken over by another connection with the same client id"
                                    .into(),
                            ),
                            user_properties: vec![],
                            server_reference: None,
                        }),
                    })));
                old.out.push(Outgoing::Close);
                old.tx.backlog().handed(old.out.len(), old.out_bytes);
                let _ = old.tx.send(std::mem::take(&mut old.out));
                // The old connection ended abnormally: its will goes out now unless
                // it has a delay and the session continues (then it is cancelled).
                if let Some(will) = session.will.take() {
                    if clean_start || will.delay == 0 {
                        fire_will = Some((will, session.identity.clone()));
                    }
                }
            }
            session.generation += 1;
        }
        if let Some((will, identity)) = fire_will {
            self.publish_will(will, &identity);
        }
        self.online_will_done(key);
    }

    /// A new, empty session for `req`'s client id.
    fn create_session(&mut self, req: &ConnectRequest) -> SessionKey {
        let key = self.next_key;
        self.next_key += 1;
        self.by_client.insert(req.identity.client_id.clone(), key);
        self.sessions.insert(
            key,
            Box::new(Session {
                identity: req.identity.clone(),
                subscriptions: HashMap::new(),
                link: None,
                expiry: 0,
                will: None,
                inflight: VecDeque::new(),
                pending: VecDeque::new(),
                pending_bytes: 0,
                inflight_bytes: 0,
                overflow: req.overflow,
                next_pkid: 1,
                pkids_in_use: IntSet::default(),
                incoming_qos2: IntMap::default(),
                held: IntMap::default(),
                generation: 0,
                durable: false,
                dropped_burst: 0,
                stored: None,
                online_will: 0,
            }),
        );
        key
    }

    /// Attach `req`'s connection to session `key`: the session takes the request's
    /// terms, the CONNACK goes out first, then what the client never acknowledged
    /// and what is queued.
    fn attach(&mut self, key: SessionKey, req: ConnectRequest, session_present: bool) {
        let session = self
            .sessions
            .get_mut(&key)
            .expect("invariant: session was just found or created");
        let pending_will = session.will.take();
        if let Some(will) = pending_will {
            // A delayed will is cancelled by the client coming back.
            debug!(client_id = %LogStr(&session.identity.client_id), delay = will.delay, "Delayed will cancelled: client reconnected.");
            self.ctx.will_done(session);
        }
        session.identity = req.identity;
        let v5 = req.v5;
        set_expiry(&mut self.persistent_sessions, session, req.session_expiry);
        session.will = req.will.map(Box::new);
        let was_durable = session.durable;
        session.durable = req.durable;
        session.overflow = req.overflow;
        session.generation += 1;
        let mut connack = req.connack;
        connack.session_present = session_present;
        let mut link = Link {
            conn: req.conn,
            tx: req.tx,
            receive_maximum: req.receive_maximum.clamp(1, 65_000),
            max_packet_size: req.max_packet_size,
            out: vec![Outgoing::packet(v5::Packet::ConnAck(connack))],
            out_hint: 4,
            out_bytes: 0,
            v5: req.v5,
            slow_dropped: 0,
        };
        self.ctx.dirty.push(key);
        // A durable session taken over by a connection that is not durable: what it
        // holds for publishers was not stored, so their holds complete as lost.
        if was_durable && !session.durable {
            for q in session
                .inflight
                .iter_mut()
                .map(|f| &mut f.queued)
                .chain(session.pending.iter_mut())
            {
                self.ctx.release_hold(q.hold.take(), true);
            }
        }
        resend_inflight(&mut self.ctx, session, &mut link);
        session.link = Some(link);
        self.by_conn.insert(req.conn, key);
        // Stored before the queue moves: its deliveries are written for the session.
        self.store_attached(key, v5);
        self.store_online_will(key);
        if let Some(session) = self.sessions.get_mut(&key) {
            refill(&mut self.ctx, key, session);
        }
    }

    pub(super) fn closed(&mut self, conn: ConnId, send_will: bool, session_expiry: Option<u32>) {
        let Some(key) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        session.link = None;
        session.generation += 1;
        if let Some(expiry) = session_expiry {
            let expiry = expiry.min(self.ctx.shared.settings.max_session_expiry);
            set_expiry(&mut self.persistent_sessions, session, expiry);
        }
        let will = session.will.take();
        let generation = session.generation;
        let expiry = session.expiry;
        let identity = session.identity.clone();
        let mut fire = None;
        if let (true, Some(will)) = (send_will, will) {
            if will.delay == 0 || expiry == 0 {
                fire = Some(will);
            } else if will.delay < expiry {
                let at = self.ctx.now + std::time::Duration::from_secs(u64::from(will.delay));
                self.timers
                    .push(Reverse((at, key, generation, TimerKind::Will)));
                session.will = Some(will);
            } else {
                // Fires when the session ends (expiry timer below).
                session.will = Some(will);
            }
        }
        if let Some(will) = fire {
            self.publish_will(will, &identity);
        }
        if expiry != 0 {
            self.store_offline(key);
            self.store_will(key);
        }
        // After the will went out or was stored offline: a crash between keeps it.
        self.online_will_done(key);
        if expiry == 0 {
            self.end_session(key);
        } else if expiry != u32::MAX {
            let at = self.ctx.now + std::time::Duration::from_secs(u64::from(expiry));
            self.timers
                .push(Reverse((at, key, generation, TimerKind::Expiry)));
        }
        self.prune_timers();
    }

    /// Drop timers made stale by reconnects so the heap stays proportional to the
    /// offline sessions (a client reconnecting all week must not grow it).
    pub(super) fn prune_timers(&mut self) {
        if self.timers.len() <= 2 * self.sessions.len() + 1024 {
            return;
        }
        let sessions = &self.sessions;
        self.timers.retain(|Reverse((_, key, generation, _))| {
            sessions
                .get(key)
                .is_some_and(|s| s.generation == *generation && s.link.is_none())
        });
    }

    pub(super) fn end_session(&mut self, key: SessionKey) {
        let Some(mut session) = self.sessions.remove(&key) else {
            return;
        };
        set_expiry(&mut self.persistent_sessions, &mut session, 0);
        self.ctx.end_stored(&mut session);
        if self.by_client.get(&session.identity.client_id) == Some(&key) {
            self.by_client.remove(&session.identity.client_id);
        }
        if let Some(link) = &session.link {
            self.by_conn.remove(&link.conn);
        }
        for path in session.subscriptions.keys() {
            let (group, filter) = split_shared(path);
            self.trie.remove(filter, group, key);
        }
        self.subscription_count -= session.subscriptions.len();
        let mut orphans = Vec::new();
        session.pkids_in_use.clear();
        session.inflight_bytes = 0;
        session.pending_bytes = 0;
        for f in session.inflight.drain(..) {
            if f.state == InflightState::AwaitAck && f.queued.share.is_some() {
                orphans.push(f.queued);
            } else {
                self.ctx.lose(f.queued);
            }
        }
        for q in session.pending.drain(..) {
            if q.share.is_some() {
                orphans.push(q);
            } else {
                self.ctx.lose(q);
            }
        }
        for q in orphans {
            self.redeliver_shared(q);
        }
        if session.link.is_none() {
            if let Some(will) = session.will.take() {
                self.publish_will(will, &session.identity);
            }
        }
        debug!(client_id = %LogStr(&session.identity.client_id), "Session ended.");
    }

    /// Hand an unacknowledged shared-subscription message of an ended session to
    /// another member of the group (MQTT v5 4.8.2), keeping its durable hold.
    pub(super) fn redeliver_shared(&mut self, q: Queued) {
        let Some(share) = q.share.clone() else {
            self.ctx.lose(q);
            return;
        };
        // Its record named the ended session: the new member stores it anew.
        self.ctx.forget_delivery(&q);
        let picked = {
            let sessions = &self.sessions;
            self.trie.pick_shared(&share, &|k| {
                sessions.get(&k).is_some_and(|s| s.link.is_some())
            })
        };
        let Some((key, options)) = picked else {
            self.ctx.lose(q);
            return;
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            self.ctx.lose(q);
            return;
        };
        // The hold follows the message only to another durable member: a member that
        // does not store what it acknowledges must not release the publisher's ack.
        let hold = if session.durable {
            q.hold
        } else {
            self.ctx.release_hold(q.hold, true);
            None
        };
        let moved = Queued {
            qos: min_qos(q.msg.qos, options.qos),
            retain: false,
            sub_ids: options.id.into_iter().collect(),
            hold,
            release_on_send: false,
            share: Some(share),
            msg: q.msg,
            record: 0,
            order: 0,
            pkid_record: 0,
        };
        deliver(&mut self.ctx, key, session, moved);
    }

    pub(super) fn fire_timers(&mut self) {
        while let Some(Reverse((at, key, generation, kind))) = self.timers.peek().copied() {
            if at > self.ctx.now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get_mut(&key) else {
                continue;
            };
            if session.generation != generation || session.link.is_some() {
                continue;
            }
            match kind {
                TimerKind::Will => self.fire_will(key),
                TimerKind::Expiry => self.end_session(key),
            }
        }
        self.complete_targets();
    }

    /// Publish the delayed will of offline session `key` now (its delay passed).
    pub(super) fn fire_will(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(will) = session.will.take() else {
            return;
        };
        let identity = session.identity.clone();
        self.publish_will(will, &identity);
        // Its stored copy goes once it was routed (a crash between: published twice).
        if let Some(session) = self.sessions.get_mut(&key) {
            self.ctx.will_done(session);
        }
    }

    pub(super) fn publish_will(&mut self, will: Box<WillSpec>, identity: &Identity) {
        let topic = will.message.topic_str();
        if !crate::acl::authorize_write(&*self.ctx.authorizer, identity, topic, None) {
            debug!(client_id = %LogStr(&identity.client_id), topic = %LogStr(topic), "Will message not published.");
            return;
        }
        debug!(client_id = %LogStr(&identity.client_id), topic = %LogStr(topic), "Publishing will message.");
        let mut message = will.message;
        // The will's Message Expiry Interval counts from when it is published.
        message.expires_at = message
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| self.ctx.now + std::time::Duration::from_secs(u64::from(s)));
        self.route(Arc::new(message), None);
    }
}

/// Why a CONNECT for a session of another identity is refused (v5 0x87).
pub(super) const SESSION_OWNER_REASON: &str =
    "not authorized (0x87): this client id holds a session of another identity";

/// Why a CONNECT that would create one persistent session too many is refused.
pub(super) const SESSION_QUOTA_REASON: &str =
    "quota exceeded (0x97): the broker holds the most persistent sessions allowed";

/// Set a session's expiry, keeping the count of persistent sessions in step.
pub(super) fn set_expiry(persistent: &mut usize, session: &mut Session, expiry: u32) {
    if session.expiry > 0 {
        *persistent -= 1;
    }
    if expiry > 0 {
        *persistent += 1;
    }
    session.expiry = expiry;
}

/// Answer a CONNECT with a failure CONNACK (v5 `code`, the matching 3.1.1 return
/// code) and close.
pub(super) fn refuse(req: ConnectRequest, code: ReasonCode, reason: &str) {
    let connack = v5::ConnAck {
        session_present: false,
        code: code.connect_return_code(),
        properties: req.v5.then(|| refusal_properties(reason)),
    };
    let batch = vec![
        Outgoing::packet(v5::Packet::ConnAck(connack)),
        Outgoing::Close,
    ];
    req.tx.backlog().handed(batch.len(), 0);
    let _ = req.tx.send(batch);
}

/// Re-send what the client never acknowledged, with DUP set, if it may still read it
/// and it has not expired (a PUBREL of a message it already has goes out
/// regardless). Dropped ones free their packet id and window slot.
fn resend_inflight(ctx: &mut Ctx, session: &mut Session, link: &mut Link) {
    let mut kept = VecDeque::with_capacity(session.inflight.len());
    for f in std::mem::take(&mut session.inflight) {
        let item = match f.state {
            InflightState::AwaitComp => Outgoing::Ack(Ack::Pubrel(f.pkid)),
            InflightState::AwaitAck => {
                let publish = readable(ctx, session, &f.queued)
                    .then(|| build_publish(&f.queued, f.pkid, true, ctx.now))
                    .flatten();
                let Some(publish) = publish else {
                    session.pkids_in_use.remove(&f.pkid);
                    session.inflight_bytes -= f.queued.msg.weight();
                    ctx.lose(f.queued);
                    continue;
                };
                link.out_bytes += f.queued.msg.weight();
                Outgoing::Publish(publish)
            }
        };
        link.out.push(item);
        kept.push_back(f);
    }
    session.inflight = kept;
}
