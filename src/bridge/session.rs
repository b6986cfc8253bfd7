//! One upstream connection's send state: the window of QoS 1/2 PUBLISHes in flight
//! (at most the cloud's Receive Maximum), the packet ids the bridge gives them (chosen
//! among the free ones, so rumqttc never meets a collision), the DUP flag of what may
//! have gone out before, the acknowledgement deadline of the oldest in-flight
//! message (`ack_timeout`), and the `replay_rate` pacing of a backlog.
//!
//! Outbound topic aliases (v5): the first `Topic Alias Maximum` distinct topics of a
//! connection get an alias for its whole life (reset with every new connection). A
//! gateway's topics are a mostly fixed set of points published over and over, so a
//! fixed assignment costs one hash lookup per message and never sends a full topic
//! again for an aliased one; an LRU would only help when more distinct topics than
//! aliases take turns, and then it re-sends a full topic on every reassignment. QoS 0
//! messages go through rumqttc's request channel, which it writes only after its
//! pending queue (where the records are), so a QoS 0 message could overtake the record
//! that sets an alias, or be overtaken: they always carry their full topic and no alias.
//!
//! What counts as a backlog (pacing): everything taken from the outbox after a CONNACK
//! until the uplink first finds the outbox empty beyond what it has sent. Live traffic
//! after that is not paced (it is limited by the cloud's Receive Maximum only), so a
//! gateway that keeps up is never slowed to `replay_rate`, and a reconnect after an
//! outage drains the backlog at `replay_rate` at most, live messages queued behind it
//! included (they keep their order).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::outbox::{OutboxRecord, Seq, StoredRecord};
use super::pacer::Pacer;
use super::props;
use super::run::{qos_level, Shared};
use super::state::Counters;
use super::uplink::{Incoming, Uplink, UplinkEvent, ONLINE};
use crate::broker::codec::v5;
use crate::telemetry::limit::LogStr;

/// Records read from the outbox at once, in windows (`max_inflight` or the cloud's
/// Receive Maximum); the outbox also caps a read in bytes.
const READ_AHEAD: usize = 4;

/// A record that is not sent (expired, too large for the cloud): already counted.
#[derive(Debug)]
pub(super) struct Dropped;

/// A QoS 1/2 PUBLISH handed to the connection and not acknowledged yet.
#[derive(Debug)]
struct InFlight {
    /// The outbox record; `None` for the status message.
    seq: Option<Seq>,
    /// Unique per send: tells an entry of `order` from a later use of the same id.
    send: u64,
    /// Topic and payload bytes, counted against `max_inflight_bytes`.
    bytes: usize,
}

/// Per-connection state of the uplink.
pub(super) struct Session {
    /// By packet id.
    inflight: HashMap<u16, InFlight>,
    /// Sends in order with their time (entries acknowledged since are skipped lazily).
    order: VecDeque<(u16, u64, Instant)>,
    sends: u64,
    last_pkid: u16,
    /// In-flight limit of this connection (0 until the CONNACK).
    window: u16,
    /// Topic and payload bytes in flight, and their limit (`max_inflight_bytes`, set at
    /// the CONNACK): one message always goes, however large.
    inflight_bytes: usize,
    max_inflight_bytes: usize,
    /// The cloud's Maximum Packet Size, if it set one.
    max_packet_size: Option<u32>,
    /// Outbound topic aliases of this connection: the first `topic_alias_max` distinct
    /// topics of QoS 1/2 records, fixed for the connection (see the module comment).
    aliases: HashMap<String, u16>,
    /// The cloud's Topic Alias Maximum (0: none).
    topic_alias_max: u16,
    /// The last record handed to this connection.
    pub cursor: Option<Seq>,
    /// Records read from the outbox and not handed to the connection yet (one journal
    /// read serves many sends: a read waits for the writer's current fsync).
    ahead: VecDeque<StoredRecord>,
    /// The last record read from the outbox (`ahead`'s last, or `cursor`).
    read_cursor: Option<Seq>,
    /// Records up to this one may have gone out before (an earlier connection, or
    /// before a restart): they are sent with DUP=1.
    maybe_sent: Option<Seq>,
    /// `Some` while a backlog is drained (see the module comment).
    pacer: Option<Pacer>,
    /// When the pacer allows the next record (the uplink calls `fill` then).
    pub paced_until: Option<Instant>,
    /// No more records are taken (shutdown flush).
    stop_filling: bool,
    pub connected_at: Option<Instant>,
    pub waiting_acks: HashMap<u64, Box<Incoming>>,
    /// Records the cloud acknowledged in this turn, forgotten by the outbox together
    /// ([`Session::release_acks`]): one journal command per turn, not per PUBACK.
    acked: Vec<Seq>,
}

impl Session {
    /// A session whose records up to `maybe_sent` may have been sent before.
    pub fn new(maybe_sent: Option<Seq>) -> Self {
        Session {
            inflight: HashMap::new(),
            order: VecDeque::new(),
            sends: 0,
            last_pkid: 0,
            window: 0,
            inflight_bytes: 0,
            max_inflight_bytes: 0,
            max_packet_size: None,
            aliases: HashMap::new(),
            topic_alias_max: 0,
            cursor: None,
            ahead: VecDeque::new(),
            read_cursor: None,
            maybe_sent,
            pacer: None,
            paced_until: None,
            stop_filling: false,
            connected_at: None,
            waiting_acks: HashMap::new(),
            acked: Vec::new(),
        }
    }

    /// QoS 1/2 PUBLISHes in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn has_room(&self) -> bool {
        self.inflight.len() < usize::from(self.window)
    }

    /// Whether a message of `bytes` fits the byte budget: within it, or alone.
    fn fits(&self, bytes: usize) -> bool {
        self.inflight.is_empty() || self.inflight_bytes + bytes <= self.max_inflight_bytes
    }

    /// A free packet id in `1..=window` (call only with room in the window).
    fn free_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = if self.last_pkid >= self.window {
                1
            } else {
                self.last_pkid + 1
            };
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn track(&mut self, seq: Option<Seq>, bytes: usize) -> u16 {
        let pkid = self.free_pkid();
        self.sends += 1;
        self.inflight_bytes += bytes;
        self.inflight.insert(
            pkid,
            InFlight {
                seq,
                send: self.sends,
                bytes,
            },
        );
        self.order.push_back((pkid, self.sends, Instant::now()));
        // Acknowledged entries behind a slow one stay until it is: keep them bounded.
        if self.order.len() > 4 * usize::from(self.window) + 16 {
            let inflight = &self.inflight;
            self.order
                .retain(|(p, send, _)| inflight.get(p).is_some_and(|f| f.send == *send));
        }
        pkid
    }

    /// When the oldest in-flight message has waited `ack_timeout`; `None` when
    /// nothing is in flight. Also reports which record that is (seq, pkid).
    pub fn ack_deadline(&mut self, ack_timeout: Duration) -> Option<(Instant, u16)> {
        while let Some(&(pkid, send, at)) = self.order.front() {
            if self.inflight.get(&pkid).is_some_and(|f| f.send == send) {
                return Some((at + ack_timeout, pkid));
            }
            self.order.pop_front();
        }
        None
    }

    /// The record in flight under `pkid`, if any (for logs).
    pub fn seq_of(&self, pkid: u16) -> Option<Seq> {
        self.inflight.get(&pkid).and_then(|f| f.seq)
    }

    /// Whether the window is due a refill: at most half of it in flight, in messages
    /// and in bytes (see [`Session::fill`]).
    fn refill_due(&self) -> bool {
        self.inflight.len() <= usize::from(self.window / 2)
            && self.inflight_bytes <= self.max_inflight_bytes / 2
    }

    /// Take records from the outbox until the window is full (or the pacer says wait),
    /// once at most half of the window is in flight. Refilled on every acknowledgement,
    /// a busy window sent one or two PUBLISHes per write (one TLS record, one `writev`
    /// and one wake-up of the cloud each); refilled by halves, the PUBLISHes go out
    /// together. A quiet bridge is not delayed: with little in flight every record goes
    /// at once, and a busy one refills when the acknowledgements it waits for arrive.
    pub async fn fill(&mut self, up: &mut Uplink, shared: &Shared) {
        if self.stop_filling || self.paced_until.is_some() || !self.refill_due() {
            return;
        }
        while self.has_room() {
            let Some(r) = self.next_record(shared).await else {
                if self.pacer.take().is_some() {
                    debug!(bridge = %shared.config.name, "Backlog drained; live messages are no longer paced.");
                }
                return;
            };
            let bytes = r.record.topic.len() + r.record.payload.len();
            if !self.fits(bytes) {
                self.ahead.push_front(r);
                return;
            }
            if let Some(p) = &mut self.pacer {
                if let Err(wait) = p.take(r.record.payload.len(), Instant::now()) {
                    self.paced_until = Some(Instant::now() + wait);
                    self.ahead.push_front(r);
                    return;
                }
            }
            let rec = r.record;
            let Ok(properties) = self.prepare(shared, &rec) else {
                // Never sendable on this connection: forgotten, not retried.
                shared.outbox.ack(r.seq);
                self.cursor = Some(r.seq);
                continue;
            };
            let dup = self.maybe_sent.is_some_and(|m| r.seq <= m);
            let pkid = self.track(Some(r.seq), bytes);
            let (topic, properties) = self.alias(&rec.topic, properties);
            up.send(
                pkid,
                topic,
                rec.payload,
                qos_level(rec.qos),
                rec.retain,
                dup,
                properties,
            );
            self.cursor = Some(r.seq);
        }
    }

    /// The next record to send: read ahead of the window (up to `READ_AHEAD` windows,
    /// fewer while paced), `None` when the outbox has nothing beyond what was read.
    async fn next_record(&mut self, shared: &Shared) -> Option<StoredRecord> {
        if self.ahead.is_empty() {
            let mut limit = READ_AHEAD * usize::from(self.window);
            if let Some(p) = &mut self.pacer {
                limit = limit.min(p.available_msgs(Instant::now()).max(1));
            }
            let after = self.read_cursor.max(self.cursor);
            self.ahead = shared.outbox.pending(after, limit).await.into();
            self.read_cursor = self.ahead.back().map(|r| r.seq).or(after);
        }
        self.ahead.pop_front()
    }

    /// The topic to send and the properties with the topic alias for `topic`: an
    /// alias already set on this connection (empty topic), a new one while fewer than
    /// the cloud's Topic Alias Maximum are set (topic and alias), or none.
    fn alias<'t>(
        &mut self,
        topic: &'t str,
        properties: Option<v5::PublishProperties>,
    ) -> (&'t str, Option<v5::PublishProperties>) {
        if self.topic_alias_max == 0 {
            return (topic, properties);
        }
        let (sent, alias) = match self.aliases.get(topic) {
            Some(&alias) => ("", alias),
            None if self.aliases.len() < usize::from(self.topic_alias_max) => {
                let alias = self.aliases.len() as u16 + 1;
                self.aliases.insert(topic.to_string(), alias);
                (topic, alias)
            }
            None => return (topic, properties),
        };
        let mut properties = properties.unwrap_or_default();
        properties.topic_alias = Some(alias);
        (sent, Some(properties))
    }

    /// What goes out for `rec`: its upstream properties; `Err` when it must not be
    /// sent (expired in the outbox, or over the cloud's Maximum Packet Size), counted
    /// and logged once.
    pub fn prepare(
        &self,
        shared: &Shared,
        rec: &OutboxRecord,
    ) -> Result<Option<v5::PublishProperties>, Dropped> {
        let properties = match &rec.properties {
            None => None,
            Some(p) => match props::upstream(p, props::now_ms()) {
                Ok(p) => Some(p),
                Err(props::Expired) => {
                    Counters::bump(&shared.board.counters.dropped_expired);
                    debug!(bridge = %shared.config.name, topic = %LogStr(&rec.topic), "Message expired before it could be sent upstream (dropped; counted as expired).");
                    return Err(Dropped);
                }
            },
        };
        let Some(max) = self.max_packet_size else {
            return Ok(properties);
        };
        // A topic alias (set by `alias` after this check) adds up to 4 bytes.
        let alias_len = if self.topic_alias_max > 0 { 4 } else { 0 };
        let props_len = properties.as_ref().map_or(0, props::encoded_len) + alias_len;
        let size = publish_size(
            rec.topic.len(),
            rec.payload.len(),
            qos_level(rec.qos),
            props_len,
        );
        if size <= max as usize {
            return Ok(properties);
        }
        Counters::bump(&shared.board.counters.dropped_remote_max_packet);
        warn!(bridge = %shared.config.name, topic = %LogStr(&rec.topic), size, max, "Message larger than the cloud's Maximum Packet Size not sent (dropped; counted as remote_max_packet).");
        Err(Dropped)
    }

    /// The pacer's wait is over: take more records.
    pub async fn paced(&mut self, up: &mut Uplink, shared: &Shared) {
        self.paced_until = None;
        self.fill(up, shared).await;
    }

    /// Send a retained QoS 1 status message; `false` when the window is full.
    pub fn control(&mut self, up: &mut Uplink, topic: &str, payload: &'static str) -> bool {
        let bytes = topic.len() + payload.len();
        if !self.has_room() || !self.fits(bytes) {
            return false;
        }
        let pkid = self.track(None, bytes);
        up.send(
            pkid,
            topic,
            bytes::Bytes::from_static(payload.as_bytes()),
            1,
            true,
            false,
            None,
        );
        true
    }

    /// Hand the records acknowledged since the last call to the outbox (after every
    /// turn of the uplink that handled events).
    pub fn release_acks(&mut self, shared: &Shared) {
        if !self.acked.is_empty() {
            shared.outbox.ack_many(std::mem::take(&mut self.acked));
        }
    }

    /// Take no more records (what is in flight may still be acknowledged).
    pub fn stop_filling(&mut self) {
        self.stop_filling = true;
    }

    /// Account for an event; returns a message that must go to the intake.
    pub async fn on_event(
        &mut self,
        event: UplinkEvent,
        up: &mut Uplink,
        shared: &Shared,
    ) -> Option<Box<Incoming>> {
        let counters = &shared.board.counters;
        match event {
            UplinkEvent::Connected {
                session_present,
                window,
                max_packet_size,
                topic_alias_max,
            } => {
                self.connected_at = Some(Instant::now());
                self.window = window;
                self.max_inflight_bytes =
                    usize::try_from(shared.config.max_inflight_bytes).unwrap_or(usize::MAX);
                self.max_packet_size = max_packet_size;
                self.topic_alias_max = topic_alias_max;
                self.pacer = Some(Pacer::new(
                    &shared.config.journal.replay_rate,
                    Instant::now(),
                ));
                debug!(bridge = %shared.config.name, session_present, window, "Connected upstream.");
                if let Some(status) = &shared.config.status_topic {
                    self.control(up, status, ONLINE);
                }
                self.fill(up, shared).await;
            }
            UplinkEvent::Sent { .. } => Counters::bump(&counters.sent),
            UplinkEvent::Acked { pkid, refused } => {
                let done = self.inflight.remove(&pkid);
                if let Some(f) = &done {
                    self.inflight_bytes -= f.bytes;
                }
                if let Some(InFlight { seq: Some(seq), .. }) = done {
                    self.acked.push(seq);
                    match refused {
                        None => Counters::bump(&counters.acked),
                        Some(reason) => {
                            Counters::bump(&counters.dropped_refused);
                            warn!(bridge = %shared.config.name, %reason, "The cloud refused a message; it is not retried.");
                        }
                    }
                }
                self.fill(up, shared).await;
            }
            UplinkEvent::Message(m) => return Some(m),
            UplinkEvent::Other => {}
        }
        None
    }
}

/// Bytes of an MQTT 5 PUBLISH whose properties take `props_len` bytes, fixed header
/// included (what the cloud's Maximum Packet Size limits).
pub(super) fn publish_size(
    topic_len: usize,
    payload_len: usize,
    qos: u8,
    props_len: usize,
) -> usize {
    // Topic length prefix, topic, packet id (QoS > 0), property length, properties, payload.
    let remaining = 2
        + topic_len
        + if qos > 0 { 2 } else { 0 }
        + varint_len(props_len)
        + props_len
        + payload_len;
    1 + varint_len(remaining) + remaining
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5 as p5;
    use rumqttc::v5::mqttbytes::QoS;

    use std::sync::Arc;

    use crate::bridge::config::{tests::bridge, Overflow};
    use crate::bridge::outbox::{tests::record, MemoryOutbox, Outbox};
    use crate::bridge::rules::Rule;
    use crate::bridge::state::StatusBoard;
    use crate::component::HealthBoard;

    fn shared(dir: &std::path::Path, outbox: Arc<dyn Outbox>) -> Shared {
        let mut config = bridge(dir);
        config.status_topic = None;
        let rules: Arc<[Rule]> = config
            .topic
            .iter()
            .enumerate()
            .map(|(i, t)| Rule::from_config(i, t))
            .collect();
        Shared {
            config: Arc::new(config),
            rules,
            outbox: outbox.clone(),
            board: Arc::new(StatusBoard::new(
                "cloud",
                HealthBoard::default().reporter("bridge:cloud"),
                outbox,
            )),
            shutdown: Default::default(),
            appended: Default::default(),
            durable: false,
            recovered_up_to: None,
            window: Arc::new(tokio::sync::Semaphore::new(1)),
            stalled: Default::default(),
            rates: crate::bridge::pacer::RuleRates::new(&[]),
        }
    }

    /// A fresh session on an unconnected uplink after a CONNACK with a window of 10
    /// (which fills the window from the outbox).
    async fn connected(shared: &Shared) -> (Uplink, Session) {
        let mut up = Uplink::unconnected(10);
        let mut session = Session::new(None);
        let connack = UplinkEvent::Connected {
            session_present: false,
            window: 10,
            max_packet_size: None,
            topic_alias_max: 0,
        };
        session.on_event(connack, &mut up, shared).await;
        (up, session)
    }

    fn acked(pkid: u16) -> UplinkEvent {
        UplinkEvent::Acked {
            pkid,
            refused: None,
        }
    }

    #[tokio::test]
    async fn a_busy_window_is_refilled_by_halves_and_a_quiet_one_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Arc::new(MemoryOutbox::new(1 << 20, Overflow::BlockPublishers));
        for i in 0..30 {
            outbox
                .append(record(&format!("site/gw1/t{i}"), "v"))
                .await
                .expect("stored");
        }
        let shared = shared(dir.path(), outbox);
        let (mut up, mut session) = connected(&shared).await;
        assert_eq!(
            up.take_sent(),
            (1..=10).collect::<Vec<_>>(),
            "the window filled"
        );

        // Acknowledgements while more than half the window is in flight send nothing
        // (one PUBLISH per acknowledgement before).
        for pkid in 1..=4 {
            session.on_event(acked(pkid), &mut up, &shared).await;
            assert_eq!(up.take_sent(), Vec::<u16>::new(), "after the ack of {pkid}");
        }
        assert_eq!(session.in_flight(), 6);
        // At half, the window is filled again in one go.
        session.on_event(acked(5), &mut up, &shared).await;
        assert_eq!(up.take_sent(), [1, 2, 3, 4, 5]);
        assert_eq!(session.in_flight(), 10);

        // Acknowledge everything that goes out until the outbox is drained.
        let mut sent = 15;
        let mut to_ack: VecDeque<u16> = (6..=10).chain(1..=5).collect();
        while let Some(pkid) = to_ack.pop_front() {
            session.on_event(acked(pkid), &mut up, &shared).await;
            let refill = up.take_sent();
            assert!(
                refill.is_empty() || refill.len() == 5,
                "refilled by halves: {refill:?}"
            );
            sent += refill.len();
            to_ack.extend(refill);
        }
        assert_eq!((sent, session.in_flight()), (30, 0));

        // A quiet bridge (little in flight) sends each new record at once.
        for i in 0..2 {
            let topic = format!("site/gw1/late{i}");
            shared
                .outbox
                .append(record(&topic, "v"))
                .await
                .expect("stored");
            session.fill(&mut up, &shared).await;
            assert_eq!(up.take_sent().len(), 1, "late record {i} sent at once");
        }
        assert_eq!(session.in_flight(), 2);
    }

    #[tokio::test]
    async fn bytes_in_flight_stay_within_max_inflight_bytes_and_one_large_message_goes_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Arc::new(MemoryOutbox::new(1 << 20, Overflow::BlockPublishers));
        // Eight records of 100 topic + payload bytes, then one of 1,000.
        let sized = |topic: String, bytes: usize| OutboxRecord {
            payload: bytes::Bytes::from(vec![b'v'; bytes - topic.len()]),
            ..record(&topic, "")
        };
        for i in 0..8 {
            outbox
                .append(sized(format!("site/gw1/t{i}"), 100))
                .await
                .expect("stored");
        }
        outbox
            .append(sized("site/gw1/big".into(), 1000))
            .await
            .expect("stored");
        let mut shared = shared(dir.path(), outbox);
        let mut config = (*shared.config).clone();
        config.max_inflight_bytes = 300;
        shared.config = Arc::new(config);
        let (mut up, mut session) = connected(&shared).await;
        assert_eq!(up.take_sent(), [1, 2, 3], "300 bytes: three records");
        // 200 bytes still in flight: above half the budget, nothing goes.
        session.on_event(acked(1), &mut up, &shared).await;
        assert_eq!(up.take_sent(), Vec::<u16>::new());
        // 100 in flight: refilled up to the budget.
        session.on_event(acked(2), &mut up, &shared).await;
        assert_eq!(up.take_sent(), [4, 5]);
        for pkid in [3, 4, 5] {
            session.on_event(acked(pkid), &mut up, &shared).await;
        }
        assert_eq!(up.take_sent(), [6, 7]);
        session.on_event(acked(6), &mut up, &shared).await;
        assert_eq!(up.take_sent(), [8], "the big one would pass the budget");
        session.on_event(acked(7), &mut up, &shared).await;
        assert_eq!(up.take_sent(), Vec::<u16>::new(), "the big one waits");
        session.on_event(acked(8), &mut up, &shared).await;
        assert_eq!(up.take_sent(), [9], "larger than the budget, it goes alone");
        assert_eq!(session.in_flight(), 1);
    }

    #[test]
    fn publish_size_is_what_the_codec_writes() {
        let with = p5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("site/gw1/cmd/replies".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"1234")),
            user_properties: vec![("k".into(), "v".repeat(200))],
            ..Default::default()
        };
        for (topic, payload, qos) in [
            ("a", 0, QoS::AtMostOnce),
            ("site/gw1/sensors/t", 100, QoS::AtLeastOnce),
            ("t", 122, QoS::AtLeastOnce),
            ("t", 123, QoS::ExactlyOnce),
            ("x/y", 20_000, QoS::AtLeastOnce),
            ("x/y", 3_000_000, QoS::AtMostOnce),
        ] {
            for properties in [None, Some(with.clone())] {
                let props_len = properties.as_ref().map_or(0, props::encoded_len);
                let mut p = p5::Publish::new(topic, qos, vec![0u8; payload], properties);
                p.pkid = u16::from(qos != QoS::AtMostOnce);
                let mut out = bytes::BytesMut::new();
                let written = p5::Packet::Publish(p)
                    .write(&mut out, None)
                    .expect("encodes");
                assert_eq!(written, out.len());
                assert_eq!(
                    publish_size(topic.len(), payload, qos as u8, props_len),
                    out.len(),
                    "{topic} {payload} {qos:?} properties: {props_len}"
                );
            }
        }
    }
}
