//! The router: the single owner of all routing state (subscription trie, retained
//! store, session table with offline queues, inflight windows and packet ids, wills,
//! timers, shared-subscription groups and durable hold-backs). Connection tasks and
//! in-process clients talk to it over channels only; it never does I/O itself, never
//! blocks, and keeps nothing for a client or topic that is no longer live.
//!
//! Overlapping subscriptions: a message matching several subscriptions of one session
//! is delivered once, at the highest QoS granted among them, carrying all their
//! subscription identifiers (what Mosquitto does by default). No Local excludes the
//! subscriptions that set it; Retain As Published applies if any matching one sets it.
//!
//! Offline / slow-consumer queue policy: QoS 1/2 messages that cannot be sent (client
//! offline, or its Receive Maximum window full) queue per session up to
//! `max_offline_messages` and `max_offline_bytes`; beyond that the *oldest* queued
//! message is dropped, counted in `BrokerStats::dropped_queue_overflow` and logged
//! once per burst. QoS 0 messages are never queued for offline sessions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::checks::valid_unsubscribe_filter;
use super::codec::{v5, QoS};
use super::fasthash::{IntMap, IntSet};
use super::link::{
    refusal_properties, Ack, Backlog, BrokerError, ConnId, ConnectRequest, Inbound, Message,
    OutPublish, OutTx, Outgoing, PublishReply, QueueOverflow, RouterMsg, WillSpec,
};
use super::retained::RetainedStore;
use super::settings::BrokerSettings;
use super::shared::Shared;
use super::stats::StatsCounters;
use super::trie::{SessionKey, SharedRef, SubOptions, SubscriptionTrie};
use crate::acl::{Access, Authorizer};
use crate::auth::Identity;
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};
use crate::topic;

struct Queued {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<usize>,
    hold: Option<u64>,
    /// `hold` is a block-publishers hold: released (as success) when the message
    /// leaves the queue for the client, not when the client acknowledges it.
    release_on_send: bool,
    /// Delivered only through this shared subscription: handed to another member
    /// if this session ends before acknowledging it.
    share: Option<Arc<SharedRef>>,
}

#[derive(PartialEq, Eq)]
enum InflightState {
    AwaitAck,
    AwaitComp,
}

struct Inflight {
    pkid: u16,
    queued: Queued,
    state: InflightState,
}

struct Link {
    conn: ConnId,
    tx: OutTx,
    receive_maximum: u16,
    max_packet_size: Option<u32>,
    out: Vec<Outgoing>,
    /// Size of the last batch sent (capacity of the next one).
    out_hint: usize,
    /// Message bytes in `out`.
    out_bytes: usize,
    backlog: Arc<Backlog>,
    /// MQTT v5 connection (negative acknowledgements possible).
    v5: bool,
    /// QoS 0 messages dropped in the current slow-consumer burst (logged once per burst).
    slow_dropped: u64,
}

struct Session {
    client_id: String,
    identity: Identity,
    /// Full filter (including `$share/g/`) → options.
    subscriptions: HashMap<String, SubOptions>,
    link: Option<Link>,
    expiry: u32,
    will: Option<WillSpec>,
    inflight: VecDeque<Inflight>,
    pending: VecDeque<Queued>,
    /// Weight of `pending` and of the messages in `inflight`: both count against
    /// `max_offline_bytes`.
    pending_bytes: usize,
    inflight_bytes: usize,
    overflow: QueueOverflow,
    next_pkid: u16,
    /// Packet ids of `inflight` (kept in step with it).
    pkids_in_use: IntSet<u16>,
    incoming_qos2: IntSet<u16>,
    /// Inbound QoS 1/2 packet ids whose acknowledgement a durable subscriber holds
    /// (pkid → hold id): a resend of one is neither routed again nor acked early.
    held: IntMap<u16, u64>,
    generation: u64,
    durable: bool,
    dropped_burst: u64,
}

/// Who is waiting for a durable subscriber's acknowledgement.
enum HoldTarget {
    /// Acked on whatever connection the session has when the hold completes: the
    /// packet id stays reserved in the session until then (MQTT 4.3.2/4.3.3).
    Network {
        key: SessionKey,
        pkid: u16,
        qos: QoS,
    },
    Internal(PublishReply),
}

struct Hold {
    remaining: usize,
    target: HoldTarget,
    /// A durable subscriber lost the message before storing it.
    lost: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Will,
    Expiry,
}

/// Router state other than sessions and trie, split out so delivery code can borrow
/// a session mutably alongside it.
struct Ctx {
    shared: Arc<Shared>,
    authorizer: Arc<dyn Authorizer>,
    holds: IntMap<u64, Hold>,
    next_hold: u64,
    /// Hold targets to acknowledge; `true` = the message was lost (refuse it).
    completed: Vec<(HoldTarget, bool)>,
    /// While `route` delivers one message: who waits for its acknowledgement (taken
    /// when the first hold is made) and the hold made for it, if any.
    route_target: Option<HoldTarget>,
    route_hold: Option<u64>,
    dirty: Vec<SessionKey>,
    now: Instant,
}

pub(crate) struct Router {
    ctx: Ctx,
    rx: mpsc::Receiver<RouterMsg>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
    sessions: IntMap<SessionKey, Session>,
    by_client: HashMap<String, SessionKey>,
    by_conn: IntMap<ConnId, SessionKey>,
    next_key: SessionKey,
    subscription_count: usize,
    /// Weight of every retained message (bounded by `max_retained_bytes`).
    retained_bytes: usize,
    /// The retained store refused a message since it last had room (logged once).
    retained_full: bool,
    /// Sessions with a non-zero expiry (bounded by `max_persistent_sessions`).
    persistent_sessions: usize,
    timers: BinaryHeap<Reverse<(Instant, SessionKey, u64, TimerKind)>>,
    scratch: Vec<(SessionKey, SubOptions)>,
}

fn settings(ctx: &Ctx) -> &BrokerSettings {
    &ctx.shared.settings
}

fn stats(ctx: &Ctx) -> &StatsCounters {
    &ctx.shared.stats
}

impl Ctx {
    /// One more part of the message being routed that the publisher's
    /// acknowledgement waits for; `None` when nobody waits (QoS 0, wills, `$SYS`).
    fn hold_route(&mut self) -> Option<u64> {
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

    fn release_hold(&mut self, hold: Option<u64>, lost: bool) {
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
    fn discard(&mut self, queued: Queued) {
        self.release_hold(queued.hold, false);
    }

    /// A delivery dropped before the subscriber had it (overflow, session end, too
    /// large): a durable hold on it completes as a failure (v5 0x97 to the publisher).
    fn lose(&mut self, queued: Queued) {
        self.release_hold(queued.hold, true);
    }

    fn push_out(&mut self, key: SessionKey, link: &mut Link, packet: v5::Packet) {
        self.push_item(key, link, Outgoing::packet(packet));
    }

    fn push_item(&mut self, key: SessionKey, link: &mut Link, item: Outgoing) {
        if link.out.is_empty() {
            self.dirty.push(key);
            // Sized like the last batch, so a busy link's batch does not regrow
            // (and copy its large packets) from empty every time.
            link.out.reserve(link.out_hint);
        }
        link.out.push(item);
    }
}

/// The next free packet id; `in_use` holds the ids of `inflight` (O(1) per id
/// instead of a scan of the whole window per delivery).
fn next_pkid(next: &mut u16, in_use: &IntSet<u16>) -> u16 {
    loop {
        let id = *next;
        *next = if *next == u16::MAX { 1 } else { *next + 1 };
        if id != 0 && !in_use.contains(&id) {
            return id;
        }
    }
}

fn build_publish(q: &Queued, pkid: u16, dup: bool, now: Instant) -> Option<OutPublish> {
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
fn try_send(
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
        ctx.lose(q);
        return Ok(());
    };
    if let Some(max) = link.max_packet_size {
        let size = publish.to_publish(link.v5).size();
        if size > max as usize {
            stats(ctx).dropped_oversize.fetch_add(1, Ordering::Relaxed);
            debug!(client_id = %LogStr(&session.client_id), size, max, "Message not delivered: larger than the client's Maximum Packet Size.");
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
        session.inflight.push_back(Inflight {
            pkid,
            queued: q,
            state: InflightState::AwaitAck,
        });
    }
    Ok(())
}

fn enqueue(ctx: &mut Ctx, session: &mut Session, mut q: Queued) {
    let max_messages = settings(ctx).max_offline_messages;
    let max_bytes = settings(ctx).max_offline_bytes;
    let weight = q.msg.weight();
    let fits = |s: &Session| {
        s.pending.len() < max_messages && s.pending_bytes + s.inflight_bytes + weight <= max_bytes
    };
    if fits(session) {
        if session.dropped_burst > 0 {
            warn!(client_id = %LogStr(&session.client_id), affected = session.dropped_burst, policy = ?session.overflow, "Session queue overflow ended.");
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
fn overflow_accounted(ctx: &Ctx, session: &mut Session, dropped: u64, policy: QueueOverflow) {
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
        warn!(client_id = %LogStr(&session.client_id), queued = session.pending.len(), queued_bytes = session.pending_bytes, inflight_bytes = session.inflight_bytes, max_messages, max_bytes, ?policy, "Session queue full: applying the overflow policy until it drains.");
    }
    session.dropped_burst += dropped.max(u64::from(blocked));
}

fn deliver(ctx: &mut Ctx, key: SessionKey, session: &mut Session, q: Queued) {
    if session.link.is_none() && q.qos == QoS::AtMostOnce {
        // QoS 0 is never queued for an offline session.
        ctx.discard(q);
        return;
    }
    if q.qos == QoS::AtMostOnce {
        if let Some(link) = session.link.as_mut() {
            // Packets handed to the connection and not yet written, in count and bytes.
            let (handed, handed_bytes) = link.backlog.pending();
            let backlog = handed + link.out.len();
            let backlog_bytes = handed_bytes + link.out_bytes;
            let limit = settings(ctx).max_offline_messages.max(1000);
            let limit_bytes = settings(ctx).max_offline_bytes;
            if backlog > limit || backlog_bytes + q.msg.weight() > limit_bytes {
                if link.slow_dropped == 0 {
                    warn!(client_id = %LogStr(&session.client_id), backlog, backlog_bytes, limit, limit_bytes, "Client reads too slowly: dropping QoS 0 messages until it catches up.");
                }
                link.slow_dropped += 1;
                stats(ctx)
                    .dropped_slow_consumer
                    .fetch_add(1, Ordering::Relaxed);
                ctx.discard(q);
                return;
            }
            if link.slow_dropped > 0 {
                warn!(client_id = %LogStr(&session.client_id), dropped = link.slow_dropped, "Client caught up; QoS 0 messages were dropped meanwhile.");
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
fn readable(ctx: &Ctx, session: &Session, q: &Queued) -> bool {
    let topic = q.msg.topic_str();
    if ctx
        .authorizer
        .allows(&session.identity, Access::Read, topic)
    {
        return true;
    }
    debug!(client_id = %LogStr(&session.client_id), topic = %LogStr(topic), "Queued message dropped: no longer readable by this identity.");
    false
}

/// Move queued messages into the inflight window while it has room.
fn refill(ctx: &mut Ctx, key: SessionKey, session: &mut Session) {
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
        warn!(client_id = %LogStr(&session.client_id), dropped = session.dropped_burst, "Session queue overflow ended; messages were dropped.");
        session.dropped_burst = 0;
    }
}

fn split_shared(path: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(path) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, path),
    }
}

fn max_qos(a: QoS, b: QoS) -> QoS {
    if (b as u8) > (a as u8) {
        b
    } else {
        a
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (b as u8) < (a as u8) {
        b
    } else {
        a
    }
}

impl Router {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<RouterMsg>) -> Router {
        let authorizer = shared.authorizer();
        Router {
            ctx: Ctx {
                shared,
                authorizer,
                holds: IntMap::default(),
                next_hold: 1,
                completed: Vec::new(),
                route_target: None,
                route_hold: None,
                dirty: Vec::new(),
                now: Instant::now(),
            },
            rx,
            trie: SubscriptionTrie::default(),
            retained: RetainedStore::default(),
            sessions: IntMap::default(),
            by_client: HashMap::new(),
            by_conn: IntMap::default(),
            next_key: 1,
            subscription_count: 0,
            retained_bytes: 0,
            retained_full: false,
            persistent_sessions: 0,
            timers: BinaryHeap::new(),
            scratch: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let sys_interval = self.ctx.shared.settings.sys_interval;
        let mut sys = (!sys_interval.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + sys_interval, sys_interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let next_timer = self.timers.peek().map(|Reverse(t)| t.0);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.ctx.now = Instant::now();
                    self.ctx.authorizer = self.ctx.shared.authorizer();
                    self.handle(msg);
                    for _ in 0..1024 {
                        match self.rx.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)).await }, if next_timer.is_some() => {
                    self.ctx.now = Instant::now();
                    self.fire_timers();
                }
                _ = async { sys.as_mut().map(|i| i.tick()).expect("guarded by is_some").await }, if sys.is_some() => {
                    self.ctx.now = Instant::now();
                    self.publish_sys();
                }
            }
            self.flush();
            self.update_stats();
        }
        debug!("Router stopped.");
    }

    fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connect(req) => self.connect(*req),
            RouterMsg::Inbound { conn, items } => {
                let Some(&key) = self.by_conn.get(&conn) else {
                    // Connection already detached (taken over); answer internal waiters.
                    for item in items {
                        fail_reply(item);
                    }
                    return;
                };
                for item in items {
                    self.inbound(key, item);
                }
            }
            RouterMsg::Closed {
                conn,
                send_will,
                session_expiry,
            } => self.closed(conn, send_will, session_expiry),
            RouterMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        self.complete_targets();
    }

    fn connect(&mut self, req: ConnectRequest) {
        let client_id = req.identity.client_id.clone();
        let existing = self
            .by_client
            .get(&client_id)
            .and_then(|key| self.sessions.get(key));
        let creates = existing.is_none() || req.clean_start;
        let frees = usize::from(existing.is_some_and(|s| req.clean_start && s.expiry > 0));
        let max_persistent = settings(&self.ctx).max_persistent_sessions;
        if creates
            && req.session_expiry > 0
            && self.persistent_sessions - frees >= max_persistent
            && existing.map_or(true, |s| s.identity.same_principal(&req.identity))
        {
            warn!(client_id = %LogStr(&client_id), persistent = self.persistent_sessions, max = max_persistent, "Connection refused: the broker holds the most persistent sessions allowed (broker.max_persistent_sessions).");
            stats(&self.ctx)
                .refused_session_quota
                .fetch_add(1, Ordering::Relaxed);
            refuse(
                req,
                v5::ConnectReturnCode::QuotaExceeded,
                SESSION_QUOTA_REASON,
            );
            return;
        }
        let mut resumed = None;
        if let Some(&key) = self.by_client.get(&client_id) {
            if let Some(owner) = self.sessions.get(&key).map(|s| &s.identity) {
                if !owner.same_principal(&req.identity) {
                    // Sessions belong to identities (design decision 11): neither its
                    // messages nor its live connection go to another one.
                    if log_limit::event(Kind::AuthRefused) {
                        warn!(target: "audit", event = "session_owner_mismatch", client_id = %LogStr(&client_id), listener = %req.identity.listener, username = %LogStr::opt(req.identity.username.as_deref()), via = ?req.identity.via, owner = %LogStr::opt(owner.username.as_deref()), owner_via = ?owner.via, "Connection refused: the client id holds a session of another identity.");
                    }
                    stats(&self.ctx)
                        .refused_session_owner
                        .fetch_add(1, Ordering::Relaxed);
                    refuse(
                        req,
                        v5::ConnectReturnCode::NotAuthorized,
                        SESSION_OWNER_REASON,
                    );
                    return;
                }
            }
            let mut fire_will = None;
            if let Some(session) = self.sessions.get_mut(&key) {
                if let Some(mut old) = session.link.take() {
                    self.by_conn.remove(&old.conn);
                    info!(client_id = %LogStr(&client_id), "Session taken over by a new connection.");
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
                    old.backlog.handed(old.out.len(), old.out_bytes);
                    let _ = old.tx.send(std::mem::take(&mut old.out));
                    // The old connection ended abnormally: its will goes out now unless
                    // it has a delay and the session continues (then it is cancelled).
                    if let Some(will) = session.will.take() {
                        if req.clean_start || will.delay == 0 {
                            fire_will = Some((will, session.identity.clone()));
                        }
                    }
                }
                session.generation += 1;
            }
            if let Some((will, identity)) = fire_will {
                self.publish_will(will, &identity);
            }
            if req.clean_start {
                self.end_session(key);
            } else {
                resumed = Some(key);
            }
        }
        let key = match resumed {
            Some(key) => key,
            None => {
                let key = self.next_key;
                self.next_key += 1;
                self.by_client.insert(client_id.clone(), key);
                self.sessions.insert(
                    key,
                    Session {
                        client_id: client_id.clone(),
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
                        incoming_qos2: IntSet::default(),
                        held: IntMap::default(),
                        generation: 0,
                        durable: false,
                        dropped_burst: 0,
                    },
                );
                key
            }
        };
        let session = self
            .sessions
            .get_mut(&key)
            .expect("invariant: session was just found or created");
        let pending_will = session.will.take();
        if let Some(will) = pending_will {
            // A delayed will is cancelled by the client coming back.
            debug!(client_id = %LogStr(&client_id), delay = will.delay, "Delayed will cancelled: client reconnected.");
        }
        session.identity = req.identity;
        set_expiry(&mut self.persistent_sessions, session, req.session_expiry);
        session.will = req.will;
        let was_durable = session.durable;
        session.durable = req.durable;
        session.overflow = req.overflow;
        session.generation += 1;
        let mut connack = req.connack;
        connack.session_present = resumed.is_some();
        let mut link = Link {
            conn: req.conn,
            tx: req.tx,
            receive_maximum: req.receive_maximum.clamp(1, 65_000),
            max_packet_size: req.max_packet_size,
            out: vec![Outgoing::packet(v5::Packet::ConnAck(connack))],
            out_hint: 4,
            out_bytes: 0,
            backlog: req.backlog,
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
        // Re-send what the client never acknowledged, with DUP set, if it may still
        // read it and it has not expired (a PUBREL of a message it already has goes
        // out regardless). Dropped ones free their packet id and window slot.
        let mut kept = VecDeque::with_capacity(session.inflight.len());
        for f in std::mem::take(&mut session.inflight) {
            let item = match f.state {
                InflightState::AwaitComp => Outgoing::Ack(Ack::Pubrel(f.pkid)),
                InflightState::AwaitAck => {
                    let publish = readable(&self.ctx, session, &f.queued)
                        .then(|| build_publish(&f.queued, f.pkid, true, self.ctx.now))
                        .flatten();
                    let Some(publish) = publish else {
                        session.pkids_in_use.remove(&f.pkid);
                        session.inflight_bytes -= f.queued.msg.weight();
                        self.ctx.lose(f.queued);
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
        session.link = Some(link);
        self.by_conn.insert(req.conn, key);
        refill(&mut self.ctx, key, session);
    }

    fn closed(&mut self, conn: ConnId, send_will: bool, session_expiry: Option<u32>) {
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
    fn prune_timers(&mut self) {
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

    fn end_session(&mut self, key: SessionKey) {
        let Some(mut session) = self.sessions.remove(&key) else {
            return;
        };
        set_expiry(&mut self.persistent_sessions, &mut session, 0);
        if self.by_client.get(&session.client_id) == Some(&key) {
            self.by_client.remove(&session.client_id);
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
        debug!(client_id = %LogStr(&session.client_id), "Session ended.");
    }

    /// Hand an unacknowledged shared-subscription message of an ended session to
    /// another member of the group (MQTT v5 4.8.2), keeping its durable hold.
    fn redeliver_shared(&mut self, q: Queued) {
        let Some(share) = q.share.clone() else {
            self.ctx.lose(q);
            return;
        };
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
        };
        deliver(&mut self.ctx, key, session, moved);
    }

    fn fire_timers(&mut self) {
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
                TimerKind::Will => {
                    if let Some(will) = session.will.take() {
                        let identity = session.identity.clone();
                        self.publish_will(will, &identity);
                    }
                }
                TimerKind::Expiry => self.end_session(key),
            }
        }
        self.complete_targets();
    }

    fn publish_will(&mut self, will: WillSpec, identity: &Identity) {
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

    fn inbound(&mut self, key: SessionKey, item: Inbound) {
        match item {
            Inbound::Publish {
                publish,
                expires_at,
                reply,
            } => self.inbound_publish(key, publish, expires_at, reply),
            Inbound::PubAck(pkid) => self.ack(key, pkid, InflightState::AwaitAck),
            Inbound::PubRec { pkid, failed } => {
                if failed {
                    self.ack(key, pkid, InflightState::AwaitAck);
                    return;
                }
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                if let Some(f) = session.inflight.iter_mut().find(|f| f.pkid == pkid) {
                    f.state = InflightState::AwaitComp;
                }
                let found = session.inflight.iter().any(|f| f.pkid == pkid);
                if let Some(link) = session.link.as_mut() {
                    let reason = if found {
                        v5::PubRelReason::Success
                    } else {
                        v5::PubRelReason::PacketIdentifierNotFound
                    };
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::PubRel(v5::PubRel {
                            pkid,
                            reason,
                            properties: None,
                        }),
                    );
                }
            }
            Inbound::PubComp(pkid) => self.ack(key, pkid, InflightState::AwaitComp),
            Inbound::InternalAck(pkid) => {
                self.ack(key, pkid, InflightState::AwaitAck);
                self.ack(key, pkid, InflightState::AwaitComp);
            }
            Inbound::PubRel(pkid) => {
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                let known = session.incoming_qos2.remove(&pkid);
                if let Some(link) = session.link.as_mut() {
                    let reason = if known {
                        v5::PubCompReason::Success
                    } else {
                        v5::PubCompReason::PacketIdentifierNotFound
                    };
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::PubComp(v5::PubComp {
                            pkid,
                            reason,
                            properties: None,
                        }),
                    );
                }
            }
            Inbound::Subscribe {
                pkid,
                id,
                filters,
                reply,
            } => self.subscribe(key, pkid, id, filters, reply),
            Inbound::Unsubscribe {
                pkid,
                filters,
                reply,
            } => self.unsubscribe(key, pkid, filters, reply),
        }
    }

    fn ack(&mut self, key: SessionKey, pkid: u16, state: InflightState) {
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
            self.ctx.discard(f.queued);
        }
        refill(&mut self.ctx, key, session);
    }

    fn inbound_publish(
        &mut self,
        key: SessionKey,

        publish: v5::Publish,
        expires_at: Option<Instant>,
        reply: Option<PublishReply>,
    ) {
        stats(&self.ctx)
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let qos = publish.qos;
        let pkid = publish.pkid;
        if qos != QoS::AtMostOnce && reply.is_none() {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            if let Some(id) = session.held.get(&pkid) {
                if self.ctx.holds.contains_key(id) {
                    // A resend of a message still held for a durable subscriber.
                    return;
                }
                session.held.remove(&pkid);
            }
        }
        if qos == QoS::ExactlyOnce && reply.is_none() {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            if !session.incoming_qos2.insert(pkid) {
                // Duplicate before PUBREL: acknowledge again, deliver nothing.
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(key, link, pubrec(pkid));
                }
                return;
            }
        }
        let message = Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(key),
        });
        let target = match (qos, reply) {
            (QoS::AtMostOnce, Some(reply)) => {
                let _ = reply.send(Ok(()));
                None
            }
            (QoS::AtMostOnce, None) => None,
            (_, Some(reply)) => Some(HoldTarget::Internal(reply)),
            (qos, None) => Some(HoldTarget::Network { key, pkid, qos }),
        };
        if let Some(hold) = self.route(message, target) {
            if qos != QoS::AtMostOnce {
                if let Some(session) = self.sessions.get_mut(&key) {
                    session.held.insert(pkid, hold);
                }
            }
        }
    }

    /// Deliver `msg` to every matching session (and update the retained store).
    /// Returns the hold id when a durable subscriber now holds the acknowledgement.
    fn route(&mut self, msg: Arc<Message>, target: Option<HoldTarget>) -> Option<u64> {
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        {
            let sessions = &self.sessions;
            self.trie.matches(msg.topic_str(), &mut matches, &|k| {
                sessions.get(&k).is_some_and(|s| s.link.is_some())
            });
        }
        // Whatever outlives this call (queues, in-flight windows, channels to slow
        // readers, the retained store) holds a compact copy, never the read buffer.
        let keep = !matches.is_empty() || (msg.retain && !msg.payload.is_empty());
        let msg = if keep { Arc::new(msg.compacted()) } else { msg };
        let topic = msg.topic_str();
        if msg.retain {
            if msg.payload.is_empty() {
                self.retain_clear(topic);
            } else {
                self.retain_store(&msg);
            }
        }
        self.ctx.route_target = target;
        self.ctx.route_hold = None;
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
                    debug!(target: "audit", client_id = %LogStr(&session.client_id), topic = %LogStr(topic), "Delivery denied by ACL.");
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
                };
                deliver(&mut self.ctx, key, session, q);
            }
        }
        self.scratch = matches;
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
    fn retained_at(&self, topic: &str) -> Option<Arc<Message>> {
        let mut found = Vec::new();
        self.retained.matching(topic, &mut found);
        found.pop()
    }

    /// Store `msg` as its topic's retained message, within `max_retained_messages`
    /// and `max_retained_bytes`; refused (logged once per burst, counted) beyond them.
    fn retain_store(&mut self, msg: &Arc<Message>) {
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
            return;
        }
        self.retained_bytes = bytes;
        self.retained.insert(topic, msg.clone());
    }

    fn retain_clear(&mut self, topic: &str) {
        if let Some(old) = self.retained_at(topic) {
            self.retained_bytes -= old.weight();
            self.retained.remove(topic);
            self.retained_full = false;
        }
    }

    fn complete_targets(&mut self) {
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
                            session.incoming_qos2.remove(&pkid);
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
                            session.incoming_qos2.remove(&pkid);
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

    fn subscribe(
        &mut self,
        key: SessionKey,
        pkid: u16,
        id: Option<usize>,
        filters: Vec<(v5::Filter, Option<v5::SubscribeReasonCode>)>,
        reply: Option<oneshot::Sender<Vec<v5::SubscribeReasonCode>>>,
    ) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        let mut send_retained: Vec<(String, SubOptions)> = Vec::new();
        let max_subscriptions = settings(&self.ctx).max_subscriptions_per_client;
        for (filter, refused) in filters {
            if let Some(code) = refused {
                codes.push(code);
                continue;
            }
            if session.subscriptions.len() >= max_subscriptions
                && !session.subscriptions.contains_key(&filter.path)
            {
                stats(&self.ctx)
                    .refused_subscription_quota
                    .fetch_add(1, Ordering::Relaxed);
                warn!(client_id = %LogStr(&session.client_id), subscriptions = session.subscriptions.len(), max = max_subscriptions, "Subscription refused: the client has the most subscriptions allowed (broker.max_subscriptions_per_client).");
                codes.push(v5::SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let (group, plain) = split_shared(&filter.path);
            let options = SubOptions {
                qos: filter.qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                id,
                share: group.map(|g| {
                    Arc::new(SharedRef {
                        group: g.into(),
                        filter: plain.into(),
                    })
                }),
            };
            let is_new = self.trie.insert(plain, group, key, options.clone());
            if session
                .subscriptions
                .insert(filter.path.clone(), options.clone())
                .is_none()
            {
                self.subscription_count += 1;
            }
            codes.push(v5::SubscribeReasonCode::Success(filter.qos));
            let wanted = match filter.retain_forward_rule {
                v5::RetainForwardRule::OnEverySubscribe => true,
                v5::RetainForwardRule::OnNewSubscribe => is_new,
                v5::RetainForwardRule::Never => false,
            };
            if group.is_none() && wanted {
                send_retained.push((plain.to_string(), options));
            }
        }
        match reply {
            Some(reply) => {
                let _ = reply.send(codes);
            }
            None => {
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::SubAck(v5::SubAck {
                            pkid,
                            return_codes: codes,
                            properties: None,
                        }),
                    );
                }
            }
        }
        let mut expired = Vec::new();
        for (filter, options) in send_retained {
            let mut found: Vec<Arc<Message>> = Vec::new();
            self.retained.matching(&filter, &mut found);
            for msg in found {
                let topic = msg.topic_str();
                if msg.expires_at.is_some_and(|e| e <= self.ctx.now) {
                    expired.push(topic.to_string());
                    continue;
                }
                if !self
                    .ctx
                    .authorizer
                    .allows(&session.identity, Access::Read, topic)
                {
                    continue;
                }
                let q = Queued {
                    qos: min_qos(msg.qos, options.qos),
                    retain: true,
                    sub_ids: options.id.into_iter().collect(),
                    hold: None,
                    release_on_send: false,
                    share: None,
                    msg,
                };
                deliver(&mut self.ctx, key, session, q);
            }
        }
        for topic in expired {
            self.retain_clear(&topic);
        }
    }

    fn unsubscribe(
        &mut self,
        key: SessionKey,
        pkid: u16,
        filters: Vec<String>,
        reply: Option<oneshot::Sender<Vec<v5::UnsubAckReason>>>,
    ) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let mut reasons = Vec::with_capacity(filters.len());
        let max_levels = settings(&self.ctx).max_topic_levels;
        for path in filters {
            if !valid_unsubscribe_filter(&path, max_levels) {
                reasons.push(v5::UnsubAckReason::TopicFilterInvalid);
                continue;
            }
            let (group, plain) = split_shared(&path);
            self.trie.remove(plain, group, key);
            if session.subscriptions.remove(&path).is_some() {
                self.subscription_count -= 1;
                reasons.push(v5::UnsubAckReason::Success);
            } else {
                reasons.push(v5::UnsubAckReason::NoSubscriptionExisted);
            }
        }
        match reply {
            Some(reply) => {
                let _ = reply.send(reasons);
            }
            None => {
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::UnsubAck(v5::UnsubAck {
                            pkid,
                            reasons,
                            properties: None,
                        }),
                    );
                }
            }
        }
    }

    fn flush(&mut self) {
        self.complete_targets();
        for key in std::mem::take(&mut self.ctx.dirty) {
            let Some(session) = self.sessions.get_mut(&key) else {
                continue;
            };
            let Some(link) = session.link.as_mut() else {
                continue;
            };
            if link.out.is_empty() {
                continue;
            }
            let out = std::mem::take(&mut link.out);
            link.out_hint = out.len().min(MAX_BATCH_HINT);
            link.backlog
                .handed(out.len(), std::mem::take(&mut link.out_bytes));
            let _ = link.tx.send(out);
        }
    }

    fn update_stats(&self) {
        let s = stats(&self.ctx);
        s.clients_connected
            .store(self.by_conn.len() as u64, Ordering::Relaxed);
        s.sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        s.subscriptions
            .store(self.subscription_count as u64, Ordering::Relaxed);
        s.retained
            .store(self.retained.len() as u64, Ordering::Relaxed);
        s.retained_bytes
            .store(self.retained_bytes as u64, Ordering::Relaxed);
        s.trie_nodes
            .store(self.trie.node_count() as u64, Ordering::Relaxed);
        s.holds
            .store(self.ctx.holds.len() as u64, Ordering::Relaxed);
    }

    fn publish_sys(&mut self) {
        self.update_stats();
        let snapshot = self.ctx.shared.stats.snapshot(self.ctx.shared.started);
        let audit = self.ctx.shared.log_limits.stats();
        let values: [(&str, String); 24] = [
            (
                "$SYS/broker/version",
                format!("tollgate {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", snapshot.uptime.as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                snapshot.clients_connected.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                snapshot.messages_received.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                snapshot.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                snapshot.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", snapshot.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                snapshot.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                snapshot.retained_messages.to_string(),
            ),
            // What the bounds did (design decision 12: a counter for every limit).
            (
                "$SYS/tollgate/retained/bytes",
                snapshot.retained_bytes.to_string(),
            ),
            (
                "$SYS/tollgate/sessions/count",
                snapshot.sessions.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/queue_overflow",
                snapshot.dropped_queue_overflow.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/slow_consumer",
                snapshot.dropped_slow_consumer.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/oversize",
                snapshot.dropped_oversize.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/retained_quota",
                snapshot.dropped_retained_quota.to_string(),
            ),
            (
                "$SYS/tollgate/publishers_blocked",
                snapshot.publishers_blocked.to_string(),
            ),
            (
                "$SYS/tollgate/refused/session_owner",
                snapshot.refused_session_owner.to_string(),
            ),
            (
                "$SYS/tollgate/refused/session_quota",
                snapshot.refused_session_quota.to_string(),
            ),
            (
                "$SYS/tollgate/refused/subscription_quota",
                snapshot.refused_subscription_quota.to_string(),
            ),
            (
                "$SYS/tollgate/audit/acl_denied",
                audit.acl_denied.to_string(),
            ),
            (
                "$SYS/tollgate/audit/auth_refused",
                audit.auth_refused.to_string(),
            ),
            (
                "$SYS/tollgate/audit/invalid_connect",
                audit.invalid_connect.to_string(),
            ),
            (
                "$SYS/tollgate/audit/protocol_violation",
                audit.protocol_violation.to_string(),
            ),
            ("$SYS/tollgate/audit/timeout", audit.timeout.to_string()),
        ];
        for (topic, value) in values {
            self.route(
                Arc::new(Message {
                    topic: Bytes::from_static(topic.as_bytes()),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: None,
                    expires_at: None,
                    publisher: None,
                }),
                None,
            );
        }
        self.complete_targets();
    }
}

/// Upper bound of the capacity reserved for a link's next outgoing batch.
const MAX_BATCH_HINT: usize = 256;

/// Why a held publication is refused (v5 0x97) or an in-process publish fails.
const LOST_REASON: &str =
    "quota exceeded (0x97): a durable subscriber lost the message before storing it";

/// Why a CONNECT for a session of another identity is refused (v5 0x87).
const SESSION_OWNER_REASON: &str =
    "not authorized (0x87): this client id holds a session of another identity";

/// Why a CONNECT that would create one persistent session too many is refused.
const SESSION_QUOTA_REASON: &str =
    "quota exceeded (0x97): the broker holds the most persistent sessions allowed";

/// Set a session's expiry, keeping the count of persistent sessions in step.
fn set_expiry(persistent: &mut usize, session: &mut Session, expiry: u32) {
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
fn refuse(req: ConnectRequest, code: v5::ConnectReturnCode, reason: &str) {
    let connack = v5::ConnAck {
        session_present: false,
        code,
        properties: req.v5.then(|| refusal_properties(reason)),
    };
    let batch = vec![
        Outgoing::packet(v5::Packet::ConnAck(connack)),
        Outgoing::Close,
    ];
    req.backlog.handed(batch.len(), 0);
    let _ = req.tx.send(batch);
}

fn pubrec(pkid: u16) -> v5::Packet {
    v5::Packet::PubRec(v5::PubRec {
        pkid,
        reason: v5::PubRecReason::Success,
        properties: None,
    })
}

fn fail_reply(item: Inbound) {
    match item {
        Inbound::Publish {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(Err(BrokerError::Closed));
        }
        Inbound::Subscribe { reply: Some(r), .. } => drop(r),
        _ => {}
    }
}
