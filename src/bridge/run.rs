//! The running bridge: two tasks joined by channels.
//!
//! - **intake** owns the in-process client `bridge:<name>` (durable: the local
//!   publisher's PUBACK waits for it). It receives what the out rules subscribe to,
//!   stores QoS 1/2 messages in the outbox and acknowledges the delivery only once the
//!   outbox resolved the append; QoS 0 goes to the uplink best effort. It also
//!   publishes what the cloud sends in, as `bridge:<name>`, so the local ACL decides,
//!   and its local subscriptions use No Local, so nothing it brought in goes back out.
//! - **uplink** owns the rumqttc connection: failover over the addresses, jittered
//!   backoff, birth/will on `status_topic`, remote subscriptions of the in rules, and
//!   per connection a `session::Session`: a window of at most `max_inflight` records
//!   (lowered to the cloud's Receive Maximum) taken from the outbox in order, with
//!   packet ids and DUP chosen by the bridge, outbox acks on PUBACK/PUBCOMP, a
//!   reconnect when the oldest in-flight message waits longer than `ack_timeout`
//!   (its records are resent on the next connection with DUP=1), and a backlog paced
//!   by `journal.replay_rate`.
//!
//! Neither task blocks the other: the uplink never awaits the intake (a full journal
//! with `block-publishers` waits for acks that only the uplink can bring).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rand::SeedableRng;
use rustls::ClientConfig;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::config::BridgeConfig;
use super::outbox::{Outbox, OutboxError, OutboxRecord, Seq, Stored};
use super::props;
use super::rules::{route_in, route_out, Rule};
use super::session::Session;
use super::state::{Counters, LinkState, StatusBoard};
use super::uplink::{Incoming, Uplink, UplinkEvent, OFFLINE};
use crate::auth::Identity;
use crate::broker::codec::{v5, QoS};
use crate::broker::{Delivery, InternalClient, InternalOptions};
use crate::component::{BoxFuture, Connector};

/// QoS 0 messages waiting for the uplink at most (best effort beyond that).
const QOS0_QUEUE: usize = 1000;
/// Messages from the cloud waiting for the intake at most.
const INGRESS_QUEUE: u64 = 10_000;
/// Deliveries being written to the outbox at once (their fsyncs shared).
pub(super) const INTAKE_WINDOW: usize = 512;
/// Pause before storing a message again after a storage error (a full disk).
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the cloud to acknowledge what is in flight.
const FLUSH_TIME: Duration = Duration::from_secs(2);

/// A message from the cloud on its way into the local broker.
struct Ingress {
    id: u64,
    topic: String,
    payload: bytes::Bytes,
    qos: u8,
    retain: bool,
    properties: Option<v5::PublishProperties>,
}

/// Everything both tasks share.
pub(super) struct Shared {
    pub config: Arc<BridgeConfig>,
    pub rules: Arc<[Rule]>,
    pub outbox: Arc<dyn Outbox>,
    pub board: Arc<StatusBoard>,
    pub shutdown: CancellationToken,
    /// Signalled after every append (the uplink fills its window).
    pub appended: Notify,
    /// Whether the outbox survives a restart (the journal).
    pub durable: bool,
    /// The last record recovered from the journal at start: records up to it may have
    /// been sent before the restart (resent with DUP=1).
    pub recovered_up_to: Option<Seq>,
    /// Permits for deliveries being written ([`INTAKE_WINDOW`]).
    pub window: Arc<tokio::sync::Semaphore>,
    /// Deliveries whose storage failed and is being retried (intake pauses).
    pub stalled: AtomicU64,
    /// Each rule's `rate`.
    pub rates: super::pacer::RuleRates,
}

impl Shared {
    /// Whether `rule` may forward a message of `bytes` payload bytes now; counts and
    /// logs (at powers of two) one that it may not.
    fn within_rate(&self, rule: &Rule, bytes: usize) -> bool {
        if self.rates.allow(rule.index, bytes) {
            return true;
        }
        let counter = &self.board.counters.dropped_rate_limited;
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(bridge = %self.config.name, rule = rule.index, dropped = n, "Messages over the rule's rate are not forwarded.");
        }
        false
    }
}

/// Attach the intake client and subscribe the out rules locally.
pub(super) async fn attach(
    config: &BridgeConfig,
    rules: &[Rule],
    board: &StatusBoard,
    broker: &Arc<dyn Connector>,
) -> Result<InternalClient, String> {
    let identity = config.identity();
    let mut options = InternalOptions::new(Identity::internal(&identity));
    options.durable = true;
    let client = broker.connect_internal(options).await?;
    for rule in rules.iter().filter(|r| r.is_out()) {
        let filter = rule.local_filter();
        let code = client
            .subscribe_filter(v5::Filter {
                path: filter.clone(),
                qos: qos(rule.qos),
                // What this bridge publishes locally (in rules) never goes back out.
                nolocal: true,
                preserve_retain: true,
                retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
            })
            .await
            .map_err(|e| format!("cannot subscribe {filter:?}: {e}"))?;
        if !matches!(code, v5::SubscribeReasonCode::Success(_)) {
            warn!(bridge = %config.name, %filter, ?code, "Out rule not subscribed: the ACL does not let {identity} read it; add `user {identity}` with `topic read {filter}` to the ACL.");
            board.set(
                LinkState::Connecting,
                None,
                Some(format!("the ACL does not let {identity} read {filter}")),
            );
        }
    }
    Ok(client)
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_level(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Channels between the intake and the uplink.
pub(super) struct Links {
    qos0_tx: mpsc::Sender<OutboxRecord>,
    qos0_rx: mpsc::Receiver<OutboxRecord>,
    ingress_tx: mpsc::UnboundedSender<Ingress>,
    ingress_rx: mpsc::UnboundedReceiver<Ingress>,
    done_tx: mpsc::UnboundedSender<u64>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    ingress_queued: Arc<AtomicU64>,
}

impl Links {
    pub fn new() -> Self {
        let (qos0_tx, qos0_rx) = mpsc::channel(QOS0_QUEUE);
        let (ingress_tx, ingress_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Links {
            qos0_tx,
            qos0_rx,
            ingress_tx,
            ingress_rx,
            done_tx,
            done_rx,
            ingress_queued: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Run both halves until shutdown.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: InternalClient,
    tls: Arc<ClientConfig>,
    tracker: TaskTracker,
) {
    let links = Links::new();
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let acker = tracker.spawn(acknowledge(shared.clone(), written_rx, tracker.clone()));
    let intake = tracker.spawn(intake(
        shared.clone(),
        client,
        links.qos0_tx,
        written_tx,
        links.ingress_rx,
        links.done_tx,
        links.ingress_queued.clone(),
    ));
    uplink(
        shared.clone(),
        tls,
        links.qos0_rx,
        links.ingress_tx,
        links.done_rx,
        links.ingress_queued,
    )
    .await;
    let _ = intake.await;
    // The intake is gone with its sender: the acker finishes what was accepted.
    let _ = acker.await;
}

/// A delivery whose record the outbox accepted, to acknowledge locally once stored.
struct Written {
    stored: Stored,
    record: OutboxRecord,
    ack: Option<crate::broker::DeliveryAck>,
    /// Its place in [`INTAKE_WINDOW`], given back after the local acknowledgement.
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Acknowledges accepted deliveries locally once stored, in the order they were
/// accepted. One task for all: the journal stores records in order and reports a group
/// commit at once, so this task wakes about once per fsync (a task per message cost a
/// spawn and a wake-up each), and every delivery of a group commit that is already
/// stored is acknowledged in one message to the router ([`DeliveryAck::ack_all`]; one
/// per delivery was the next cost in the profile). A delivery whose storage failed is
/// retried in a task of its own on `tracker`, as before, so that the others are not held
/// behind its retries (a failed group commit fails hundreds at once); the ones stored
/// before it are acknowledged first. The channel holds at most [`INTAKE_WINDOW`]
/// entries (the permits).
///
/// [`DeliveryAck::ack_all`]: crate::broker::DeliveryAck::ack_all
async fn acknowledge(
    shared: Arc<Shared>,
    mut written: mpsc::UnboundedReceiver<Written>,
    tracker: TaskTracker,
) {
    let mut stored = Acks::default();
    let mut next = None;
    loop {
        let mut w = match next.take() {
            Some(w) => w,
            None => match written.recv().await {
                Some(w) => w,
                None => break,
            },
        };
        let result = (&mut w.stored).await;
        match result {
            Ok(_) => stored.push(w),
            Err(OutboxError::Storage(_)) => {
                stored.flush(&shared.appended).await;
                let shared = shared.clone();
                tracker.spawn(async move {
                    stored_then_ack(&shared, w.record, result, w.ack).await;
                    drop(w.permit);
                });
            }
            Err(_) => {
                stored.flush(&shared.appended).await;
                stored_then_ack(&shared, w.record, result, w.ack).await;
                drop(w.permit);
            }
        }
        // The rest of the same group commit is stored already: take it without waiting.
        while let Ok(mut w) = written.try_recv() {
            match (&mut w.stored).now_or_never() {
                Some(Ok(_)) => stored.push(w),
                Some(result) => {
                    w.stored = Box::pin(std::future::ready(result));
                    next = Some(w);
                    break;
                }
                None => {
                    next = Some(w);
                    break;
                }
            }
        }
        stored.flush(&shared.appended).await;
    }
    stored.flush(&shared.appended).await;
}

/// Deliveries stored and not yet acknowledged locally, in order.
#[derive(Default)]
struct Acks {
    acks: Vec<crate::broker::DeliveryAck>,
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Acks {
    fn push(&mut self, w: Written) {
        self.acks.extend(w.ack);
        self.permits.push(w.permit);
    }

    /// Tell the uplink that records were stored (once for all of them), acknowledge
    /// them in one message to the router, then give their window places back.
    async fn flush(&mut self, appended: &Notify) {
        if self.permits.is_empty() {
            return;
        }
        appended.notify_one();
        if !self.acks.is_empty() {
            let acks = std::mem::replace(&mut self.acks, Vec::with_capacity(self.permits.len()));
            let _ = crate::broker::DeliveryAck::ack_all(acks).await;
        }
        self.permits.clear();
    }
}

/// The intake half (see the module comment).
async fn intake(
    shared: Arc<Shared>,
    mut client: InternalClient,
    qos0_tx: mpsc::Sender<OutboxRecord>,
    written_tx: mpsc::UnboundedSender<Written>,
    mut ingress_rx: mpsc::UnboundedReceiver<Ingress>,
    done_tx: mpsc::UnboundedSender<u64>,
    ingress_queued: Arc<AtomicU64>,
) {
    let name = shared.config.name.clone();
    let counters = &shared.board.counters;
    // A delivery being stored: local deliveries wait while it is (block-publishers).
    let mut storing: Option<BoxFuture<()>> = None;
    // One wait for shutdown across the rounds (a fresh one per round registered and
    // removed a waiter each time, per message).
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            _ = async { storing.as_mut().expect("guarded").await }, if storing.is_some() => {
                storing = None;
            }
            Some(m) = ingress_rx.recv() => {
                ingress_queued.fetch_sub(1, Ordering::Relaxed);
                match client.publish_with(&m.topic, m.payload, qos(m.qos), m.retain, m.properties).await {
                    Ok(()) => Counters::bump(&counters.received),
                    Err(e) => {
                        // The refusal itself is on the audit target (authorize_write).
                        Counters::bump(&counters.dropped_ingress_denied);
                        info!(bridge = %name, topic = %m.topic, reason = %e, "Message from the cloud not published locally.");
                    }
                }
                let _ = done_tx.send(m.id);
            }
            // One delivery at a time waits for its place (a write permit, no storage
            // error being retried, room in the journal): `storing` (take_delivery).
            delivery = client.recv(), if storing.is_none() => {
                let Some(d) = delivery else {
                    if !shared.shutdown.is_cancelled() {
                        warn!(bridge = %name, "The bridge's in-process session ended; nothing more is forwarded.");
                    }
                    break;
                };
                storing = take_delivery(&shared, d, &qos0_tx, &written_tx);
            }
        }
    }
    // Stop intake: what is not stored yet stays unacknowledged (redelivered or 0x97).
    drop(storing);
    client.disconnect().await;
}

/// Route one local delivery; returns the store-then-ack future for QoS 1/2.
fn take_delivery(
    shared: &Arc<Shared>,
    mut d: Delivery,
    qos0_tx: &mpsc::Sender<OutboxRecord>,
    written_tx: &mpsc::UnboundedSender<Written>,
) -> Option<BoxFuture<()>> {
    let ack = d.take_ack();
    let release = |ack: Option<crate::broker::DeliveryAck>| {
        ack.map(|a| -> BoxFuture<()> {
            Box::pin(async move {
                let _ = a.ack().await;
            })
        })
    };
    let Some((rule, remote)) = route_out(&shared.rules, &d.topic) else {
        // Covered by a subscription but by no rule's mapping: cannot happen with valid rules.
        return release(ack);
    };
    if !shared.within_rate(rule, d.payload.len()) {
        return release(ack);
    }
    let level = qos_level(d.qos).min(rule.qos);
    let record = OutboxRecord {
        topic: remote,
        payload: d.payload,
        qos: qos(level),
        retain: rule.retain && d.retain,
        properties: props::outgoing(d.properties, &shared.rules, props::now_ms),
    };
    if level == 0 {
        if qos0_tx.try_send(record).is_err() {
            Counters::bump(&shared.board.counters.dropped_qos0);
        }
        return release(ack);
    }
    let shared = shared.clone();
    let written_tx = written_tx.clone();
    Some(Box::pin(async move {
        // At most INTAKE_WINDOW deliveries being written, none while a storage error is
        // retried (so the retried ones keep their order as far as possible).
        let Ok(permit) = shared.window.clone().acquire_owned().await else {
            return;
        };
        while shared.stalled.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Accepted: its place in the journal is fixed, the next delivery may follow while
        // this one is written (one fsync for many). Waiting for room (block-publishers)
        // happens here, so intake stops while the journal is full.
        let stored = match shared.outbox.enqueue(&record).await {
            Ok(stored) => stored,
            Err(e) => {
                refused(&shared, e, ack).await;
                return;
            }
        };
        // The acker outlives the intake (it ends when every sender is gone).
        let _ = written_tx.send(Written {
            stored,
            record,
            ack,
            permit,
        });
    }))
}

/// After the write of an accepted delivery: acknowledge it locally once stored. A
/// storage error (a full disk, an I/O error) is retried every [`STORE_RETRY`] until it
/// is stored, its local PUBACK held meanwhile (publishers back-pressured) and intake
/// paused; the messages being written when the error came may then reach the cloud
/// after later ones.
async fn stored_then_ack(
    shared: &Arc<Shared>,
    record: OutboxRecord,
    mut result: Result<Seq, OutboxError>,
    ack: Option<crate::broker::DeliveryAck>,
) {
    let mut failures = 0u32;
    loop {
        match result {
            Ok(_) => {
                if failures > 0 {
                    shared.stalled.fetch_sub(1, Ordering::Relaxed);
                    info!(bridge = %shared.config.name, failures, "Message stored for the cloud after storage errors; intake resumes.");
                }
                shared.appended.notify_one();
                if let Some(a) = ack {
                    let _ = a.ack().await;
                }
                return;
            }
            Err(OutboxError::Storage(e)) => {
                if failures == 0 {
                    shared.stalled.fetch_add(1, Ordering::Relaxed);
                    warn!(bridge = %shared.config.name, reason = %e, retry_s = STORE_RETRY.as_secs(), "Message not stored for the cloud; retrying, its publisher's acknowledgement is held until it is stored.");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => {
                        shared.stalled.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
                result = shared.outbox.append(record.clone()).await;
            }
            Err(e) => {
                if failures > 0 {
                    shared.stalled.fetch_sub(1, Ordering::Relaxed);
                }
                refused(shared, e, ack).await;
                return;
            }
        }
    }
}

/// A delivery the outbox did not take.
async fn refused(shared: &Shared, error: OutboxError, ack: Option<crate::broker::DeliveryAck>) {
    match error {
        OutboxError::TooLarge(size) => {
            Counters::bump(&shared.board.counters.dropped_too_large);
            warn!(bridge = %shared.config.name, size, "Message larger than journal.max_bytes not forwarded.");
            if let Some(a) = ack {
                let _ = a.ack().await;
            }
        }
        OutboxError::Full => {
            // refuse-new: not stored, and the publisher is told so (v5: 0x97; 3.1.1,
            // which has no negative acknowledgement: a PUBACK, the drop is counted).
            Counters::bump(&shared.board.counters.dropped_full);
            warn!(bridge = %shared.config.name, "Bridge journal full (overflow = refuse-new): message refused (v5 publishers get 0x97 Quota exceeded).");
            if let Some(a) = ack {
                let _ = a.refuse().await;
            }
        }
        OutboxError::Storage(e) => {
            // Not accepted at all (the journal is closed): not acknowledged.
            warn!(bridge = %shared.config.name, reason = %e, "Message not stored for the cloud.");
        }
    }
}

enum Ended {
    Shutdown,
    Lost {
        connected_for: Option<Duration>,
        error: String,
    },
}

/// The channels the uplink half owns.
struct UplinkLinks {
    qos0_rx: mpsc::Receiver<OutboxRecord>,
    ingress_tx: mpsc::UnboundedSender<Ingress>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    ingress_queued: Arc<AtomicU64>,
    next_id: u64,
}

/// The uplink half (see the module comment).
async fn uplink(
    shared: Arc<Shared>,
    tls: Arc<ClientConfig>,
    qos0_rx: mpsc::Receiver<OutboxRecord>,
    ingress_tx: mpsc::UnboundedSender<Ingress>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    ingress_queued: Arc<AtomicU64>,
) {
    let config = shared.config.clone();
    let mut links = UplinkLinks {
        qos0_rx,
        ingress_tx,
        done_rx,
        ingress_queued,
        next_id: 0,
    };
    let mut backoff = Backoff::new(config.backoff.clone());
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut index = 0usize;
    // Records up to here may have gone out already: resent with DUP=1.
    let mut maybe_sent = shared.recovered_up_to;
    loop {
        let address = config.address[index % config.address.len()].clone();
        shared
            .board
            .set(LinkState::Connecting, Some(&address), None);
        let ended = match Uplink::new(&config, &address, tls.clone(), &shared.rules) {
            Err(error) => Ended::Lost {
                connected_for: None,
                error,
            },
            Ok(mut up) => {
                let mut session = Session::new(maybe_sent);
                let ended = serve(&shared, &mut up, &mut session, &mut links, &address).await;
                maybe_sent = maybe_sent.max(session.cursor);
                ended
            }
        };
        let (connected_for, error) = match ended {
            Ended::Shutdown => return,
            Ended::Lost {
                connected_for,
                error,
            } => (connected_for, error),
        };
        let delay = match connected_for {
            Some(uptime) => {
                Counters::bump(&shared.board.counters.reconnects);
                warn!(bridge = %config.name, %address, reason = %error, "Bridge lost its cloud connection.");
                backoff.disconnected_after(uptime);
                index = 0;
                Some(backoff.failed(&mut rng))
            }
            None => {
                warn!(bridge = %config.name, %address, reason = %error, "Bridge cannot connect to the cloud.");
                index += 1;
                // Next address at once; after the last one, back off.
                if index.is_multiple_of(config.address.len()) {
                    index = 0;
                    Some(backoff.failed(&mut rng))
                } else {
                    None
                }
            }
        };
        if let Some(delay) = delay {
            shared.board.set(LinkState::Backoff, None, Some(error));
            debug!(bridge = %config.name, delay_ms = delay.as_millis() as u64, "Bridge backing off.");
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        } else {
            shared.board.set(LinkState::Connecting, None, Some(error));
        }
    }
}

/// Drive one connection until it ends: events, the outbox, QoS 0, ingress acks, the
/// ack timeout and the replay pacing.
async fn serve(
    shared: &Shared,
    up: &mut Uplink,
    session: &mut Session,
    links: &mut UplinkLinks,
    address: &str,
) -> Ended {
    let config = &shared.config;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let ack_timer = tokio::time::sleep_until(far);
    let pace_timer = tokio::time::sleep_until(far);
    tokio::pin!(ack_timer, pace_timer);
    let mut ack_armed: Option<Instant> = None;
    let mut pace_armed: Option<Instant> = None;
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // Re-arm the timers only when their deadline moved (not once per event).
        let deadline = session.ack_deadline(config.ack_timeout);
        let ack_at = deadline.map(|(at, _)| at);
        if ack_at != ack_armed {
            ack_timer.as_mut().reset(ack_at.unwrap_or(far));
            ack_armed = ack_at;
        }
        if session.paced_until != pace_armed {
            pace_timer
                .as_mut()
                .reset(session.paced_until.unwrap_or(far));
            pace_armed = session.paced_until;
        }
        let connected = session.connected_at.is_some();
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                flush(up, session, shared).await;
                return Ended::Shutdown;
            }
            event = up.poll() => match event {
                Err(error) => {
                    // Acknowledgements read with the end of the connection still
                    // count (without them the message is sent twice), and so do
                    // PUBLISHes written before it (`sent`). Nothing more is handed to
                    // the dead connection.
                    session.stop_filling();
                    for event in up.events_before_the_end() {
                        session.on_event(event, up, shared).await;
                    }
                    session.release_acks(shared);
                    return Ended::Lost {
                        connected_for: session.connected_at.map(|t| t.elapsed()),
                        error,
                    };
                }
                Ok(event) => turn(shared, up, session, links, address, event).await,
            },
            _ = &mut ack_timer, if ack_armed.is_some() => {
                let pkid = deadline.map(|(_, p)| p).unwrap_or_default();
                let waited = config.ack_timeout;
                warn!(bridge = %config.name, %address, pkid, seq = ?session.seq_of(pkid), waited_ms = waited.as_millis() as u64, in_flight = session.in_flight(), "No acknowledgement from the cloud within ack_timeout; dropping the connection to resend.");
                return Ended::Lost {
                    connected_for: session.connected_at.map(|t| t.elapsed()),
                    error: format!("no acknowledgement from the cloud within ack_timeout ({})", crate::duration::format(waited)),
                };
            }
            _ = &mut pace_timer, if pace_armed.is_some() => {
                session.paced(up, shared).await;
            }
            _ = shared.appended.notified(), if connected => {
                session.fill(up, shared).await;
            }
            Some(r) = links.qos0_rx.recv(), if connected => {
                if let Ok(properties) = session.prepare(shared, &r) {
                    if !up.publish(&r.topic, r.payload, 0, r.retain, properties) {
                        Counters::bump(&shared.board.counters.dropped_qos0);
                    }
                }
            }
            Some(id) = links.done_rx.recv() => {
                if let Some(m) = session.waiting_acks.remove(&id) {
                    up.ack(&m);
                }
            }
        }
    }
}

/// Handle `event` and every event rumqttc queued with it (the rest of one read's
/// PUBACKs, the `Sent` of one write's PUBLISHes) in one turn, then hand the
/// acknowledged records to the outbox at once: a `select!` round, a fresh poll future
/// and a journal command per event were the uplink's largest costs after TLS.
async fn turn(
    shared: &Shared,
    up: &mut Uplink,
    session: &mut Session,
    links: &mut UplinkLinks,
    address: &str,
    event: UplinkEvent,
) {
    let config = &shared.config;
    let mut next = Some(event);
    while let Some(event) = next.take() {
        match event {
            UplinkEvent::Connected {
                session_present,
                window,
                max_packet_size,
                topic_alias_max,
            } => {
                info!(bridge = %config.name, %address, session_present, window, ?max_packet_size, topic_alias_max, "Bridge connected to the cloud.");
                session
                    .on_event(
                        UplinkEvent::Connected {
                            session_present,
                            window,
                            max_packet_size,
                            topic_alias_max,
                        },
                        up,
                        shared,
                    )
                    .await;
                shared.board.set(LinkState::Connected, Some(address), None);
            }
            event => {
                if let Some(m) = session.on_event(event, up, shared).await {
                    links.next_id += 1;
                    ingress(
                        shared,
                        up,
                        session,
                        m,
                        links.next_id,
                        &links.ingress_tx,
                        &links.ingress_queued,
                    );
                }
            }
        }
        next = up.queued();
    }
    session.release_acks(shared);
}

/// Hand a message from the cloud to the intake (or drop it when no rule maps it).
fn ingress(
    shared: &Shared,
    up: &Uplink,
    session: &mut Session,
    m: Box<Incoming>,
    id: u64,
    ingress_tx: &mpsc::UnboundedSender<Ingress>,
    ingress_queued: &AtomicU64,
) {
    let Some((rule, local)) = route_in(&shared.rules, &m.topic) else {
        debug!(bridge = %shared.config.name, topic = %m.topic, "Message from the cloud matches no in rule; dropped.");
        up.ack(&m);
        return;
    };
    if !shared.within_rate(rule, m.payload.len()) {
        up.ack(&m);
        return;
    }
    if ingress_queued.load(Ordering::Relaxed) >= INGRESS_QUEUE {
        // Not acknowledged: the cloud resends it after the next reconnect.
        warn!(bridge = %shared.config.name, "Messages from the cloud arrive faster than they can be published locally; one was dropped.");
        return;
    }
    ingress_queued.fetch_add(1, Ordering::Relaxed);
    let item = Ingress {
        id,
        topic: local,
        payload: m.payload.clone(),
        qos: m.qos.min(rule.qos),
        retain: rule.retain && m.retain,
        properties: props::incoming(m.properties.clone(), &shared.rules),
    };
    if m.qos > 0 {
        session.waiting_acks.insert(id, m);
    }
    let _ = ingress_tx.send(item);
}

/// Shutdown: say offline, let what is in flight be acknowledged for up to
/// [`FLUSH_TIME`] (the rest stays in the outbox), then DISCONNECT (normal
/// disconnection: the cloud discards the will).
async fn flush(up: &mut Uplink, session: &mut Session, shared: &Shared) {
    if session.connected_at.is_none() {
        return;
    }
    session.fill(up, shared).await;
    session.stop_filling();
    let mut offline = shared.config.status_topic.clone();
    let deadline = Instant::now() + FLUSH_TIME;
    loop {
        if let Some(status) = &offline {
            if session.control(up, status, OFFLINE) {
                offline = None;
            }
        }
        if offline.is_none() && session.in_flight() == 0 {
            break;
        }
        match tokio::time::timeout_at(deadline, up.poll()).await {
            Ok(Ok(event)) => {
                if let Some(m) = session.on_event(event, up, shared).await {
                    // Intake has stopped: not acknowledged, the cloud keeps it.
                    drop(m);
                }
                session.release_acks(shared);
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let left = shared.outbox.counters().queued_messages;
    if left > 0 {
        if shared.durable {
            info!(bridge = %shared.config.name, left, "Bridge stopped with messages not yet acknowledged by the cloud; they stay in its journal and are sent after the restart.");
        } else {
            warn!(bridge = %shared.config.name, left, "Bridge stopped with messages not yet acknowledged by the cloud (kept in memory only: lost).");
        }
    }
    up.disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while up.poll().await.is_ok() {}
    })
    .await;
}
