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
//!
//! Layout, by role: this file holds the routing state types and the loop (receive,
//! handle, flush); `sessions` attaches and ends sessions (takeover, wills, expiry),
//! `requests` applies what attached clients ask (PUBLISH, acks, SUBSCRIBE,
//! UNSUBSCRIBE), `deliver` routes one message to its sessions (trie, windows,
//! queues, retained store, durable holds) and `sys` publishes `$SYS/...`.

mod deliver;
mod requests;
mod sessions;
mod state;
mod stored;
mod sys;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::checks::valid_unsubscribe_filter;
use super::codec::{v5, QoS};
use super::fasthash::{IntMap, IntSet};
use super::link::{
    pool, refusal_properties, Ack, BrokerError, ConnId, ConnectRequest, Inbound, Message,
    OutPublish, OutTx, Outgoing, PublishReply, QueueOverflow, RouterMsg, WillSpec,
};
use super::retained::RetainedStore;
use super::settings::BrokerSettings;
use super::shared::Shared;
use super::stats::StatsCounters;
use super::trie::{SessionKey, SharedRef, SubOptions, SubscriptionTrie};
use crate::acl::{Access, Authorizer};
use crate::auth::Identity;
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::telemetry::limit::LogStr;
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
    /// Its record in the session log (0: not stored), acknowledged when it is done.
    record: u64,
    /// Its place in the session log's queue order: its first record's sequence number
    /// (kept when compaction writes it again).
    order: u64,
    /// The record of its packet id while in flight (0: none).
    pkid_record: u64,
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
    /// MQTT v5 connection (negative acknowledgements possible).
    v5: bool,
    /// QoS 0 messages dropped in the current slow-consumer burst (logged once per burst).
    slow_dropped: u64,
}

struct Session {
    /// Its client id is the session's (`by_client` maps it here).
    identity: Arc<Identity>,
    /// Full filter (including `$share/g/`) → options.
    subscriptions: HashMap<String, SubOptions>,
    link: Option<Link>,
    expiry: u32,
    /// Boxed: most sessions have none, and a will is a few hundred bytes.
    will: Option<Box<WillSpec>>,
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
    /// Inbound QoS 2 packet ids PUBRECed (or about to be) and not yet released → their
    /// `received` record in the session log (0: not stored).
    incoming_qos2: IntMap<u16, u64>,
    /// Inbound QoS 1/2 packet ids whose acknowledgement a durable subscriber holds
    /// (pkid → hold id): a resend of one is neither routed again nor acked early.
    held: IntMap<u16, u64>,
    generation: u64,
    durable: bool,
    dropped_burst: u64,
    /// Where the session log keeps it (`[persistence]`, sessions with an expiry).
    stored: Option<Box<StoredRef>>,
    /// The session log's record of the will of its open connection (0: none).
    online_will: u64,
}

/// A session's place in the session log.
struct StoredRef {
    /// Its id in the log (one per incarnation).
    id: u64,
    /// Its live `session` record.
    record: u64,
    /// Wall-clock deadline once offline (ms since the epoch; `u64::MAX`: never).
    offline_until_ms: Option<u64>,
    /// MQTT v5 client.
    v5: bool,
    /// Inbound QoS 2 packet ids restored from the log: a PUBLISH under one of them
    /// without DUP is a new message (the acknowledgement of the old one's PUBREL may
    /// not have reached the disk before the stop), one with DUP a resend.
    restored_qos2: IntSet<u16>,
    /// The record of its delayed will while offline (0: none) and when it is due
    /// (wall clock, ms since the epoch; kept when compaction writes it again).
    will_record: u64,
    will_due_ms: u64,
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
    /// The persistent sessions' log (`[persistence]`), once opened.
    sessions_log: Option<super::persist::SessionLog>,
    /// The last delivery stored while routing one message: the publisher's
    /// acknowledgement waits for it (durability follows append order).
    session_durable: Option<crate::journal::Durable>,
    /// QoS 1 deliveries sent whose packet id record waits for their message record to
    /// be durable: (session, packet id, message record). See `stored.rs`.
    deferred_pkids: Vec<(SessionKey, u16, u64)>,
    /// The lowest message record in `deferred_pkids` (`u64::MAX` when empty): a router
    /// turn before that record is durable has nothing to write and skips the list.
    deferred_min: u64,
    /// The task that reports held acknowledgements durable, per state log (retained,
    /// sessions), started at first use. See `stored.rs`.
    durable_holds: [Option<tokio::sync::mpsc::UnboundedSender<(crate::journal::Durable, u64)>>; 2],
}

pub(crate) struct Router {
    ctx: Ctx,
    rx: mpsc::Receiver<RouterMsg>,
    trie: SubscriptionTrie,
    retained: RetainedStore,
    /// Boxed: the table's spare slots (up to half of it after it grows) then cost a
    /// pointer each, not a whole session.
    sessions: IntMap<SessionKey, Box<Session>>,
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
    /// Pings answered after this round's flush (a ping is a sync point).
    pings: Vec<oneshot::Sender<()>>,
    /// The durable state (`[persistence]`), once opened.
    state: Option<super::persist::RetainedLog>,
    /// When the queue depths (a walk over every session) were last summed.
    queues_summed: Instant,
    /// Turns happened since that sum (the gauges may be behind).
    queues_stale: bool,
}

fn settings(ctx: &Ctx) -> &BrokerSettings {
    &ctx.shared.settings
}

fn stats(ctx: &Ctx) -> &StatsCounters {
    &ctx.shared.stats
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
                sessions_log: None,
                session_durable: None,
                deferred_pkids: Vec::new(),
                deferred_min: u64::MAX,
                durable_holds: [None, None],
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
            pings: Vec::new(),
            state: None,
            queues_summed: Instant::now(),
            queues_stale: false,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let sys_interval = self.ctx.shared.settings.sys_interval;
        let mut sys = (!sys_interval.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + sys_interval, sys_interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // Loaded before the first request: clients wait in the channel meanwhile.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.open_state() => {}
        }
        let mut upkeep = tokio::time::interval(std::time::Duration::from_secs(1));
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                // A sum skipped by the last turns is done when its interval is over.
                _ = async { tokio::time::sleep_until(self.queues_summed + QUEUE_SUM_INTERVAL).await }, if self.queues_stale => {}
                _ = upkeep.tick(), if self.state.is_some() || self.ctx.sessions_log.is_some() => {
                    self.ctx.now = Instant::now();
                    self.state_upkeep();
                }
            }
            self.state_pressure();
            self.flush();
            for ping in self.pings.drain(..) {
                let _ = ping.send(());
            }
            self.update_stats();
            self.sum_queues();
        }
        self.close_state().await;
        debug!("Router stopped.");
    }

    fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connect(req) => self.connect(*req),
            RouterMsg::Inbound { conn, mut items } => {
                match self.by_conn.get(&conn) {
                    Some(&key) => {
                        for item in items.drain(..) {
                            self.inbound(key, item);
                        }
                    }
                    // Connection already detached (taken over); answer internal waiters.
                    None => items.drain(..).for_each(fail_reply),
                }
                pool::INBOUND.give(items);
            }
            RouterMsg::Closed {
                conn,
                send_will,
                session_expiry,
            } => self.closed(conn, send_will, session_expiry),
            RouterMsg::Ping(reply) => self.pings.push(reply),
            RouterMsg::StateStored { hold, ok } => self.state_stored(hold, ok),
        }
        self.complete_targets();
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
            link.tx
                .backlog()
                .handed(out.len(), std::mem::take(&mut link.out_bytes));
            let _ = link.tx.send(out);
        }
    }

    /// Messages and bytes held for all sessions, queued or in flight (gauges), summed at most once per
    /// [`QUEUE_SUM_INTERVAL`]: a walk over every session, kept off each router turn.
    fn sum_queues(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.queues_summed) < QUEUE_SUM_INTERVAL {
            self.queues_stale = true;
            return;
        }
        self.queues_summed = now;
        self.queues_stale = false;
        let (messages, bytes) = self.sessions.values().fold((0u64, 0u64), |(m, b), s| {
            (
                m + (s.pending.len() + s.inflight.len()) as u64,
                b + (s.pending_bytes + s.inflight_bytes) as u64,
            )
        });
        let s = stats(&self.ctx);
        s.queued_messages.store(messages, Ordering::Relaxed);
        s.queued_bytes.store(bytes, Ordering::Relaxed);
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
}

/// How often the queue depth gauges are summed (see `Router::sum_queues`).
const QUEUE_SUM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Upper bound of the capacity reserved for a link's next outgoing batch.
const MAX_BATCH_HINT: usize = 256;

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

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every session (offline ones too) costs its `Session` box, and the table a
    /// pointer per slot: keep the rarely used parts (the will) boxed.
    #[test]
    fn a_session_stays_small() {
        let session = std::mem::size_of::<Session>();
        eprintln!(
            "Session {session} B, Link {} B",
            std::mem::size_of::<Link>()
        );
        assert!(session <= 384, "Session is {session} B");
    }
}
