//! The router's side of the session log (`super::super::persist::SessionLog`): which
//! sessions are stored (network sessions with an expiry), writing their records as
//! they attach, detach, subscribe and end, storing each QoS 1/2 delivery for them
//! and holding the publisher's acknowledgement until it is durable, their packet ids
//! in flight, the QoS 2 packet ids their clients published and have not released
//! (the PUBREC waits for it), their delayed wills while offline, restoring them at
//! start, and copying old records forward (compaction).
//! Like the rest of the router it never waits: durability is awaited on a task that
//! reports back with `RouterMsg::StateStored`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use super::super::link::WillSpec;
use super::super::persist::{Live, SessionRecord, StoredSession, StoredSubscription};
use super::sessions::set_expiry;
use super::*;
use crate::auth::AuthMethod;
use crate::journal::Durable;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The record of `session` as it is now.
fn session_record(session: &Session, stored: &StoredRef) -> SessionRecord {
    let mut subscriptions: Vec<StoredSubscription> = session
        .subscriptions
        .iter()
        .map(|(path, o)| StoredSubscription {
            path: path.clone(),
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            id: o.id,
        })
        .collect();
    subscriptions.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    SessionRecord {
        id: stored.id,
        identity: (*session.identity).clone(),
        v5: stored.v5,
        expiry: session.expiry,
        offline_until_ms: stored.offline_until_ms,
        overflow: session.overflow,
        subscriptions,
    }
}

impl Session {
    /// Whether inbound QoS 2 packet id `pkid` is one restored from the log that a new
    /// PUBLISH (`dup` unset: not a resend, MQTT-3.3.1-1) shows was released already.
    pub(super) fn stale_restored_qos2(&self, pkid: u16, dup: bool) -> bool {
        !dup && self
            .stored
            .as_ref()
            .is_some_and(|s| s.restored_qos2.contains(&pkid))
            && self.incoming_qos2.contains_key(&pkid)
    }
}

impl Ctx {
    /// Inbound QoS 2 packet id `pkid` is done (PUBREL, or its flow refused): it leaves
    /// `incoming` and its stored record goes. Returns whether it was known.
    pub(super) fn qos2_done(&mut self, incoming: &mut IntMap<u16, u64>, pkid: u16) -> bool {
        let Some(record) = incoming.remove(&pkid) else {
            return false;
        };
        if let Some(log) = self.sessions_log.as_mut() {
            log.ack(record);
        }
        true
    }

    /// The delayed will of `session` was published or cancelled: its record goes.
    pub(super) fn will_done(&mut self, session: &mut Session) {
        let Some(stored) = session.stored.as_mut() else {
            return;
        };
        let record = std::mem::take(&mut stored.will_record);
        if let Some(log) = self.sessions_log.as_mut() {
            log.ack(record);
        }
    }

    /// Count a failed write of the session log (logged by the caller).
    fn session_log_failed(&self) {
        stats(self).state_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Store a QoS 1/2 delivery for a stored session; the message being routed (if
    /// any) waits for it. One that cannot be stored stays in memory only, and its
    /// publisher is told it was not stored (v5 0x97; 3.1.1 has no negative ack).
    pub(super) fn store_delivery(&mut self, session: &Session, q: &mut Queued) {
        let Some(stored) = session.stored.as_deref() else {
            return;
        };
        let Some(log) = self.sessions_log.as_mut() else {
            return;
        };
        match log.append_message(
            stored.id, None, &q.msg, q.qos, q.retain, &q.sub_ids, self.now,
        ) {
            Ok(durable) => {
                q.record = durable.seq();
                q.order = q.record;
                self.session_durable = Some(durable);
            }
            Err(e) => {
                let failed = log.failed;
                self.session_log_failed();
                // Logged at the 1st, 2nd, 4th, 8th ... failure: a full disk is not a flood.
                if failed.is_power_of_two() {
                    warn!(client_id = %LogStr(&session.identity.client_id), reason = %e, failed, "Queued message not stored: it is kept in memory only and lost at a restart (counted in $SYS/tollgate/state/failures).");
                }
                if let Some(hold) = self.hold_route() {
                    self.release_hold(Some(hold), true);
                }
            }
        }
    }

    /// A delivery is done (acknowledged, dropped, expired): its records go.
    pub(super) fn forget_delivery(&mut self, q: &Queued) {
        if q.record == 0 && q.pkid_record == 0 {
            return;
        }
        if let Some(log) = self.sessions_log.as_mut() {
            log.ack(q.record);
            log.ack(q.pkid_record);
        }
    }

    /// A stored delivery of session `key` went in flight as `pkid`. At QoS 1 its packet
    /// id record waits until the message record is durable (`store_deferred_pkids`):
    /// a delivery acknowledged by then never needs one, and most are (one record less
    /// per message). Until it is written a crash re-sends the message under a new
    /// packet id without DUP: a duplicate, which QoS 1 allows. At QoS 2 the record is
    /// written at once (the subscriber deduplicates by packet id).
    pub(super) fn store_pkid(
        &mut self,
        key: SessionKey,
        session: &Session,
        q: &mut Queued,
        pkid: u16,
        released: bool,
    ) {
        let id = session.stored.as_ref().map_or(0, |s| s.id);
        if q.qos == QoS::AtLeastOnce && q.record != 0 && id != 0 && self.sessions_log.is_some() {
            self.deferred_pkids.push((key, pkid, q.record));
            self.deferred_min = self.deferred_min.min(q.record);
            return;
        }
        self.write_pkid(id, q, pkid, released);
    }

    /// The subscriber sent PUBREC for stored delivery `q` (`pkid`): after a restart
    /// the PUBREL is sent, not the message again.
    pub(super) fn store_released(&mut self, id: u64, q: &mut Queued, pkid: u16) {
        self.write_pkid(id, q, pkid, true);
    }

    fn write_pkid(&mut self, id: u64, q: &mut Queued, pkid: u16, released: bool) {
        if q.record == 0 || id == 0 {
            return;
        }
        let Some(log) = self.sessions_log.as_mut() else {
            return;
        };
        match log.set_pkid(id, q.record, pkid, released, q.pkid_record) {
            Ok(seq) => q.pkid_record = seq,
            // Without it the message is re-sent under a new packet id: QoS 1 allows it.
            Err(_) => self.session_log_failed(),
        }
    }

    /// Session ended: its log record goes (an `end` record keeps it from coming back),
    /// with its QoS 2 packet ids and delayed will.
    pub(super) fn end_stored(&mut self, session: &mut Session) {
        if let Some(log) = self.sessions_log.as_mut() {
            log.ack(std::mem::take(&mut session.online_will));
        }
        if let (Some(stored), Some(log)) = (session.stored.take(), self.sessions_log.as_mut()) {
            for (_, record) in session.incoming_qos2.drain() {
                log.ack(record);
            }
            log.ack(stored.will_record);
            log.end_session(stored.record, stored.id);
        }
    }
}

/// The state log a held acknowledgement waits for.
#[derive(Debug, Clone, Copy)]
pub(super) enum DurableLog {
    Retained = 0,
    Sessions = 1,
}

impl Ctx {
    /// Release `hold` once `durable` resolves (as a failure if it failed), through
    /// `RouterMsg::StateStored`. One task per log waits for them all in append order
    /// (a log resolves in that order): a task spawned per held message cost more CPU
    /// than the rest of the wait, and woke once per message instead of once per fsync.
    pub(super) fn release_when_durable(&mut self, log: DurableLog, durable: Durable, hold: u64) {
        let router = &self.shared.router_tx;
        let waiter = self.durable_holds[log as usize].get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Durable, u64)>();
            let router = router.clone();
            tokio::spawn(async move {
                while let Some((durable, hold)) = rx.recv().await {
                    let ok = durable.await.is_ok();
                    if router
                        .send(RouterMsg::StateStored { hold, ok })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            tx
        });
        if let Err(returned) = waiter.send((durable, hold)) {
            // The task is gone (only when the router stops): report it from here.
            self.durable_holds[log as usize] = None;
            let (durable, hold) = returned.0;
            let router = router.clone();
            tokio::spawn(async move {
                let ok = durable.await.is_ok();
                let _ = router.send(RouterMsg::StateStored { hold, ok }).await;
            });
        }
    }
}

/// Deferred QoS 1 packet ids held before they are written whatever the journal says
/// (a journal that stopped resolving appends must not grow the list without bound).
const MAX_DEFERRED_PKIDS: usize = 65_536;

impl Router {
    /// Write the packet id records of deferred QoS 1 deliveries (`Ctx::store_pkid`)
    /// whose message record is now durable and that are still in flight; all of them
    /// when `all` (clean shutdown) or when too many wait. Called after each router turn.
    pub(super) fn store_deferred_pkids(&mut self, all: bool) {
        if self.ctx.deferred_pkids.is_empty() {
            return;
        }
        let Some(log) = self.ctx.sessions_log.as_ref() else {
            self.ctx.deferred_pkids.clear();
            self.ctx.deferred_min = u64::MAX;
            return;
        };
        let all = all || self.ctx.deferred_pkids.len() >= MAX_DEFERRED_PKIDS;
        let durable_below = if all { u64::MAX } else { log.resolved_below() };
        if self.ctx.deferred_min >= durable_below {
            // Nothing waiting is durable yet: no scan on this turn.
            return;
        }
        let mut deferred = std::mem::take(&mut self.ctx.deferred_pkids);
        self.ctx.deferred_min = u64::MAX;
        let mut kept_min = u64::MAX;
        deferred.retain(|&(key, pkid, record)| {
            if record >= durable_below {
                kept_min = kept_min.min(record);
                return true;
            }
            let Some(session) = self.sessions.get_mut(&key) else {
                return false;
            };
            // Acknowledged meanwhile (its id free, or taken by a later delivery).
            if !session.pkids_in_use.contains(&pkid) {
                return false;
            }
            let id = session.stored.as_ref().map_or(0, |s| s.id);
            let found = session
                .inflight
                .iter_mut()
                .rev()
                .find(|f| f.pkid == pkid && f.queued.record == record);
            if let Some(f) = found {
                if f.queued.pkid_record == 0 {
                    let released = f.state == InflightState::AwaitComp;
                    self.ctx.write_pkid(id, &mut f.queued, pkid, released);
                }
            }
            false
        });
        // Those still waiting, before any deferred during this call (none: the router
        // does not deliver from here), keeping the list's allocation.
        deferred.append(&mut self.ctx.deferred_pkids);
        self.ctx.deferred_pkids = deferred;
        self.ctx.deferred_min = self.ctx.deferred_min.min(kept_min);
    }

    /// After a route: the publisher's acknowledgement waits for the last delivery it
    /// stored (the log is durable in append order, so that covers all of them).
    pub(super) fn hold_for_stored_deliveries(&mut self) {
        self.store_received();
        let Some(durable) = self.ctx.session_durable.take() else {
            return;
        };
        let Some(hold) = self.ctx.hold_route() else {
            return;
        };
        self.ctx
            .release_when_durable(DurableLog::Sessions, durable, hold);
    }

    /// The message being routed is a QoS 2 PUBLISH of a stored session: its packet id
    /// is stored after its deliveries (so a crash never keeps the id without them) and
    /// its PUBREC waits for that record.
    fn store_received(&mut self) {
        let target = match (&self.ctx.route_target, self.ctx.route_hold) {
            (Some(t), _) => Some(t),
            (None, Some(id)) => self.ctx.holds.get(&id).map(|h| &h.target),
            (None, None) => None,
        };
        let Some(&HoldTarget::Network {
            key,
            pkid,
            qos: QoS::ExactlyOnce,
        }) = target
        else {
            return;
        };
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        let (Some(stored), Some(record)) = (
            session.stored.as_ref(),
            session.incoming_qos2.get_mut(&pkid),
        ) else {
            return;
        };
        if *record != 0 {
            return;
        }
        match log.set_received(stored.id, pkid) {
            Ok(durable) => {
                *record = durable.seq();
                self.ctx.session_durable = Some(durable);
            }
            Err(e) => {
                let failed = log.failed;
                self.ctx.session_log_failed();
                if failed.is_power_of_two() {
                    warn!(client_id = %LogStr(&session.identity.client_id), pkid, reason = %e, failed, "QoS 2 packet id not stored: a resend after a restart would be delivered again (counted in $SYS/tollgate/state/failures).");
                }
            }
        }
    }

    /// Session `key` went offline keeping a delayed will: it is stored with the wall
    /// time it is due (its delay, or the session's end if that comes first).
    pub(super) fn store_will(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get(&key) else {
            return;
        };
        let Some(will) = session.will.as_ref() else {
            return;
        };
        let wait = will.delay.min(session.expiry);
        self.write_will(key, now_ms().saturating_add(u64::from(wait) * 1000));
    }

    /// Write the delayed will of session `key`, due at `due_ms`, superseding its record.
    fn write_will(&mut self, key: SessionKey, due_ms: u64) {
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        let (Some(stored), Some(will)) = (session.stored.as_mut(), session.will.as_ref()) else {
            return;
        };
        match log.set_will(stored.id, &will.message, will.delay, due_ms) {
            Ok(seq) => {
                log.ack(std::mem::replace(&mut stored.will_record, seq));
                stored.will_due_ms = due_ms;
                debug!(client_id = %LogStr(&session.identity.client_id), delay = will.delay, due_ms, "Delayed will stored.");
            }
            Err(e) => {
                stats(&self.ctx)
                    .state_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(client_id = %LogStr(&session.identity.client_id), reason = %e, "Delayed will not stored: it is lost if the broker stops before it is due.");
            }
        }
    }

    /// Session `key`'s new connection has a will: it is stored until the connection
    /// ends, so a crash meanwhile counts as the connection dropping (published after
    /// the restart). The CONNACK does not wait for it (the next group commit).
    pub(super) fn store_online_will(&mut self, key: SessionKey) {
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        // The old record goes only once the new one is written (compaction rewrites).
        let old = std::mem::take(&mut session.online_will);
        let Some(will) = session.will.as_ref() else {
            log.ack(old);
            return;
        };
        if session.identity.via == AuthMethod::Internal {
            log.ack(old);
            return;
        }
        let id = session.stored.as_ref().map_or(0, |s| s.id);
        match log.set_online_will(id, &session.identity, &will.message, will.delay) {
            Ok(seq) => {
                log.ack(old);
                session.online_will = seq;
                debug!(client_id = %LogStr(&session.identity.client_id), delay = will.delay, "Will of a connected client stored.");
            }
            Err(e) => {
                session.online_will = old;
                let failed = log.failed;
                self.ctx.session_log_failed();
                if failed.is_power_of_two() {
                    warn!(client_id = %LogStr(&session.identity.client_id), reason = %e, failed, "Will not stored: it is lost if the broker crashes while the client is connected (counted in $SYS/tollgate/state/failures).");
                }
            }
        }
    }

    /// Session `key`'s connection ended (its will published, stored offline or
    /// dropped): the record of its will goes.
    pub(super) fn online_will_done(&mut self, key: SessionKey) {
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        let seq = std::mem::take(&mut session.online_will);
        if seq != 0 {
            log.ack(seq);
            debug!(client_id = %LogStr(&session.identity.client_id), "Will record of an ended connection removed.");
        }
    }

    /// A connection attached to session `key`: a network session with an expiry is
    /// stored (online); one whose expiry became 0 leaves the log.
    pub(super) fn store_attached(&mut self, key: SessionKey, v5: bool) {
        let Some(log) = self.ctx.sessions_log.as_mut() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let wanted =
            session.expiry > 0 && !session.durable && session.identity.via != AuthMethod::Internal;
        if !wanted {
            self.ctx.end_stored(session);
            return;
        }
        let stored = session.stored.get_or_insert_with(|| {
            Box::new(StoredRef {
                id: log.new_id(),
                record: 0,
                offline_until_ms: None,
                v5,
                restored_qos2: IntSet::default(),
                will_record: 0,
                will_due_ms: 0,
            })
        });
        stored.v5 = v5;
        stored.offline_until_ms = None;
        self.store_session(key);
    }

    /// Session `key` went offline: its expiry counts from now, in wall time.
    pub(super) fn store_offline(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let expiry = session.expiry;
        let Some(stored) = session.stored.as_mut() else {
            return;
        };
        stored.offline_until_ms = Some(if expiry == u32::MAX {
            u64::MAX
        } else {
            now_ms() + u64::from(expiry) * 1000
        });
        self.store_session(key);
    }

    /// Write session `key`'s record as it is now (if it is stored).
    pub(super) fn store_session(&mut self, key: SessionKey) {
        let Some(log) = self.ctx.sessions_log.as_mut() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(stored) = session.stored.as_deref() else {
            return;
        };
        let record = session_record(session, stored);
        match log.write_session(stored.record, &record) {
            Ok(seq) => {
                if let Some(stored) = session.stored.as_mut() {
                    stored.record = seq;
                }
            }
            Err(e) => {
                stats(&self.ctx)
                    .state_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(client_id = %LogStr(&session.identity.client_id), reason = %e, "Session change not stored: a restart restores its previous state.");
            }
        }
    }

    /// Clean shutdown: online sessions are written offline from now, so their expiry
    /// counts from the stop rather than from the next start.
    pub(super) fn store_all_offline(&mut self) {
        let online: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.link.is_some() && s.stored.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in online {
            self.store_offline(key);
        }
        // A clean stop closes connections without their wills (as a server close
        // always did): their records go.
        let online_wills: Vec<u64> = self
            .sessions
            .values_mut()
            .map(|s| std::mem::take(&mut s.online_will))
            .filter(|&seq| seq != 0)
            .collect();
        if let Some(log) = self.ctx.sessions_log.as_mut() {
            for seq in online_wills {
                log.ack(seq);
            }
        }
    }

    /// Put the loaded sessions back: offline, with their subscriptions, queue, in-flight
    /// messages (re-sent with DUP and their packet id when the client returns), QoS 2
    /// packet ids received, expiry timer and delayed will (its timer in wall time).
    /// Returns the sessions whose will came due while the broker was down.
    pub(super) fn restore_sessions(&mut self, loaded: Vec<StoredSession>) -> Vec<SessionKey> {
        let mut wills_due = Vec::new();
        let now_wall = now_ms();
        for s in loaded {
            let key = self.next_key;
            self.next_key += 1;
            let record = s.session;
            let mut session = Box::new(Session {
                identity: Arc::new(record.identity),
                subscriptions: HashMap::new(),
                link: None,
                expiry: 0,
                will: None,
                inflight: VecDeque::new(),
                pending: VecDeque::new(),
                pending_bytes: 0,
                inflight_bytes: 0,
                overflow: record.overflow,
                next_pkid: 1,
                pkids_in_use: IntSet::default(),
                incoming_qos2: s.received.iter().copied().collect(),
                held: IntMap::default(),
                generation: 0,
                durable: false,
                dropped_burst: 0,
                stored: Some(Box::new(StoredRef {
                    id: record.id,
                    record: s.record,
                    offline_until_ms: record.offline_until_ms,
                    v5: record.v5,
                    restored_qos2: s.received.iter().map(|(pkid, _)| *pkid).collect(),
                    will_record: s.will.as_ref().map_or(0, |w| w.record),
                    will_due_ms: s.will.as_ref().map_or(0, |w| w.due_ms),
                })),
                online_will: 0,
            });
            if let Some(will) = s.will {
                if will.due_ms <= now_wall {
                    wills_due.push(key);
                } else {
                    let at = self.ctx.now + Duration::from_millis(will.due_ms - now_wall);
                    self.timers
                        .push(Reverse((at, key, session.generation, TimerKind::Will)));
                }
                session.will = Some(Box::new(WillSpec {
                    message: will.msg,
                    delay: will.delay,
                }));
            }
            set_expiry(&mut self.persistent_sessions, &mut session, record.expiry);
            for sub in record.subscriptions {
                let (group, plain) = split_shared(&sub.path);
                let options = SubOptions {
                    qos: sub.qos,
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    id: sub.id,
                    share: group.map(|g| {
                        Arc::new(SharedRef {
                            group: g.into(),
                            filter: plain.into(),
                        })
                    }),
                };
                self.trie.insert(plain, group, key, options.clone());
                if session
                    .subscriptions
                    .insert(sub.path.clone(), options)
                    .is_none()
                {
                    self.subscription_count += 1;
                }
            }
            for m in s.messages {
                let weight = m.msg.weight();
                let queued = Queued {
                    msg: Arc::new(m.msg),
                    qos: m.qos,
                    retain: m.retain,
                    sub_ids: m.sub_ids,
                    hold: None,
                    release_on_send: false,
                    share: None,
                    record: m.record,
                    order: m.order,
                    pkid_record: m.pkid.map_or(0, |p| p.2),
                };
                match m.pkid {
                    Some((pkid, released, _)) if session.pkids_in_use.insert(pkid) => {
                        session.inflight_bytes += weight;
                        session.next_pkid = pkid.wrapping_add(1).max(1);
                        session.inflight.push_back(Inflight {
                            pkid,
                            queued,
                            state: if released {
                                InflightState::AwaitComp
                            } else {
                                InflightState::AwaitAck
                            },
                        });
                    }
                    _ => {
                        session.pending_bytes += weight;
                        session.pending.push_back(queued);
                    }
                }
            }
            if let Some(at) = s.expires_at {
                self.timers
                    .push(Reverse((at, key, session.generation, TimerKind::Expiry)));
            }
            self.by_client
                .insert(session.identity.client_id.clone(), key);
            self.sessions.insert(key, session);
        }
        wills_due
    }

    /// Copy the oldest live records of the session log forward from memory when the
    /// log holds more than twice its live bytes (about one segment per call).
    pub(super) fn compact_sessions(&mut self) {
        let due = match self.ctx.sessions_log.as_ref() {
            Some(log) => log.compaction_due(),
            None => return,
        };
        if due.is_empty() {
            return;
        }
        let by_id: HashMap<u64, SessionKey> = self
            .sessions
            .iter()
            .filter_map(|(k, s)| s.stored.as_ref().map(|st| (st.id, *k)))
            .collect();
        let mut online_wills: Option<HashMap<u64, SessionKey>> = None;
        for (seq, live) in due {
            if let Live::OnlineWill { .. } = live {
                let by_record = online_wills.get_or_insert_with(|| {
                    self.sessions
                        .iter()
                        .filter(|(_, s)| s.online_will != 0)
                        .map(|(k, s)| (s.online_will, *k))
                        .collect()
                });
                match by_record.get(&seq) {
                    // Written again from memory; the old record is acknowledged.
                    Some(&key) => self.store_online_will(key),
                    None => {
                        if let Some(log) = self.ctx.sessions_log.as_mut() {
                            log.ack(seq);
                        }
                    }
                }
                continue;
            }
            let id = match live {
                Live::Session { id }
                | Live::Message { id }
                | Live::Pkid { id, .. }
                | Live::Received { id, .. }
                | Live::Will { id } => id,
                Live::OnlineWill { .. } => continue,
            };
            let Some(&key) = by_id.get(&id) else {
                if let Some(log) = self.ctx.sessions_log.as_mut() {
                    log.ack(seq);
                }
                continue;
            };
            match live {
                Live::Session { .. } => self.store_session(key),
                Live::Message { .. } | Live::Pkid { .. } => self.move_delivery(key, id, seq, live),
                Live::Received { pkid, .. } => self.move_received(key, id, seq, pkid),
                Live::Will { .. } => self.move_will(key, seq),
                Live::OnlineWill { .. } => {}
            }
        }
    }

    /// Write the will record `seq` of session `key` again, due when it was.
    fn move_will(&mut self, key: SessionKey, seq: u64) {
        let current = self
            .sessions
            .get(&key)
            .and_then(|s| s.stored.as_ref())
            .filter(|st| st.will_record == seq)
            .map(|st| st.will_due_ms);
        match current {
            Some(due_ms) => self.write_will(key, due_ms),
            None => {
                if let Some(log) = self.ctx.sessions_log.as_mut() {
                    log.ack(seq);
                }
            }
        }
    }

    /// Write the `received` record `seq` (QoS 2 packet id `pkid`) of session `key` again.
    fn move_received(&mut self, key: SessionKey, id: u64, seq: u64, pkid: u16) {
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        match session.incoming_qos2.get_mut(&pkid) {
            Some(record) if *record == seq => {
                if let Ok(durable) = log.set_received(id, pkid) {
                    *record = durable.seq();
                    log.ack(seq);
                }
            }
            _ => log.ack(seq),
        }
    }

    /// Write a stored delivery of session `key` again (its message record `seq`, or
    /// the packet id record `seq`), acknowledging the old record.
    fn move_delivery(&mut self, key: SessionKey, id: u64, seq: u64, live: Live) {
        let (Some(log), Some(session)) =
            (self.ctx.sessions_log.as_mut(), self.sessions.get_mut(&key))
        else {
            return;
        };
        let now = self.ctx.now;
        let found = session
            .inflight
            .iter_mut()
            .map(|f| {
                (
                    &mut f.queued,
                    Some((f.pkid, f.state == InflightState::AwaitComp)),
                )
            })
            .chain(session.pending.iter_mut().map(|q| (q, None)))
            .find(|(q, _)| match live {
                Live::Pkid { message, .. } => q.record == message && q.pkid_record == seq,
                _ => q.record == seq,
            });
        let Some((q, pkid)) = found else {
            // Not in memory any more (done meanwhile): nothing to keep.
            log.ack(seq);
            return;
        };
        if matches!(live, Live::Message { .. }) {
            let order = if q.order == 0 { q.record } else { q.order };
            match log.append_message(id, Some(order), &q.msg, q.qos, q.retain, &q.sub_ids, now) {
                Ok(durable) => {
                    log.ack(q.record);
                    q.record = durable.seq();
                }
                Err(_) => return,
            }
        }
        if let Some((pkid, released)) = pkid {
            if let Ok(new) = log.set_pkid(id, q.record, pkid, released, q.pkid_record) {
                q.pkid_record = new;
            }
        }
    }
}
