//! Persistent sessions on the journal engine, in `<data_dir>/state/sessions/`: a log
//! of its own beside the retained one, because its records live a different life
//! (queued messages are acknowledged within milliseconds when their subscriber is
//! online, session records for days) and a damaged tail of one must not cost the
//! other. The router owns a [`SessionLog`] in its delivery context and writes:
//!
//! - a `session` record when a session with an expiry (v3.1.1: clean session off)
//!   attaches, detaches, subscribes or unsubscribes: its id (one per incarnation),
//!   owning identity, protocol version, expiry and, once offline, the wall-clock
//!   moment it expires, overflow policy and subscriptions with their options. Each
//!   one supersedes (acknowledges) the previous record of its session;
//! - an `end` record when it ends, kept until the acknowledgement of what it ended
//!   is synced (the retained log's `clear` rule: an ended session never comes back);
//! - a `message` record for every QoS 1/2 delivery queued or put in flight for it,
//!   before the publisher's PUBACK/PUBREC (held until the record is durable);
//!   acknowledged when the subscriber acknowledges it or it is dropped (overflow,
//!   message expiry, session end);
//!   Compaction writes a live message again as a `moved` record that keeps the
//!   sequence number of its first record: a load orders a session's deliveries by
//!   that, so a message copied forward does not overtake the ones queued after it;
//! - a `packet id` record when a message goes in flight (its id and whether the
//!   subscriber already sent PUBREC), so a restart re-sends it with DUP and that id;
//! - a `received` record when the session's client publishes a QoS 2 message (the
//!   packet id it was PUBRECed under), appended after that message's deliveries and
//!   before the PUBREC goes out, acknowledged at its PUBREL: a resend after a restart
//!   is acknowledged again, not delivered twice, and its PUBREL gets PUBCOMP;
//! - a `will` record when the session goes offline with a delayed will (its message
//!   and wall-clock deadline), acknowledged when the will is published or cancelled:
//!   a restart publishes it when the deadline comes, or at once if it passed;
//! - an `online will` record for every network client that connects with a will
//!   (stored session or not: it carries the identity), acknowledged when its
//!   connection ends; one live at a load was open at a crash (`wills.rs`).
//!
//! Durability follows append order (one writer, fsyncs cover everything before
//! them): a message record that is durable has its session record durable too.
//! Retain Handling is not stored: it applies only at the moment of a SUBSCRIBE.
//! It must never load a message for a session that ended or expired, nor a record
//! that failed its checksum.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    now_ms, open_journal, qos_byte, qos_from, PersistenceSettings, Pressure, LOAD_BYTES,
    LOAD_RECORDS, VERSION,
};
use crate::auth::Identity;
use crate::broker::codec::{v5, QoS};
use crate::broker::link::{Message, QueueOverflow};
use crate::journal::{self, Durable, Journal, JournalError};

const KIND_SESSION: u8 = 1;
const KIND_END: u8 = 2;
const KIND_MESSAGE: u8 = 3;
const KIND_PKID: u8 = 4;
const KIND_RECEIVED: u8 = 5;
const KIND_WILL: u8 = 6;
/// A `message` record written again by compaction: it carries the sequence number of
/// the delivery's first record, its place in its session's queue.
const KIND_MOVED: u8 = 7;
/// The will of a client connected when written (`wills.rs`).
const KIND_ONLINE_WILL: u8 = 8;

mod assemble;
mod identity;
mod wills;

use identity::{via_byte, via_from};

/// Session deadline: online when written (its expiry starts at the next load).
const ONLINE: u64 = 0;
/// Session deadline: never expires.
const NEVER: u64 = u64::MAX;

/// Directory of the session log under `data_dir`.
pub fn sessions_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("sessions")
}

/// One subscription as stored (the filter with its `$share/<group>/` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSubscription {
    pub path: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<usize>,
}

/// What a `session` record says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionRecord {
    /// One per incarnation of a client id's session (messages name it).
    pub id: u64,
    pub identity: Identity,
    pub v5: bool,
    /// Session expiry in seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// Wall-clock deadline once offline: `None` while online (the expiry then counts
    /// from the next start).
    pub offline_until_ms: Option<u64>,
    pub overflow: QueueOverflow,
    pub subscriptions: Vec<StoredSubscription>,
}

/// A delivery as stored: the message and what this subscriber was granted.
#[derive(Debug)]
pub(crate) struct StoredMessage {
    /// Its record (acknowledged when the delivery is done).
    pub record: u64,
    /// Its place in the session's queue: the sequence number of its first record.
    pub order: u64,
    pub msg: Message,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<usize>,
    /// In flight when stored: packet id, PUBREC received, and the id's record.
    pub pkid: Option<(u16, bool, u64)>,
}

/// A delayed will as stored.
#[derive(Debug)]
pub(crate) struct StoredWill {
    /// Its record (acknowledged when the will is published or cancelled).
    pub record: u64,
    pub msg: Message,
    /// Will Delay Interval, seconds (as the client set it).
    pub delay: u32,
    /// Wall-clock moment it is due, ms since the epoch.
    pub due_ms: u64,
}

/// A session as loaded, with its deliveries in the order they were queued.
#[derive(Debug)]
pub(crate) struct StoredSession {
    /// Its live `session` record.
    pub record: u64,
    pub session: SessionRecord,
    /// When it expires (offline from the load on); `None`: never.
    pub expires_at: Option<Instant>,
    pub messages: Vec<StoredMessage>,
    /// QoS 2 packet ids its client published and has not released: (id, record).
    pub received: Vec<(u16, u64)>,
    /// Its delayed will, if it was offline with one.
    pub will: Option<StoredWill>,
}

/// What a live record is (for compaction: the router writes it again from memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    Session {
        id: u64,
    },
    Message {
        id: u64,
    },
    Pkid {
        id: u64,
        message: u64,
    },
    Received {
        id: u64,
        pkid: u16,
    },
    Will {
        id: u64,
    },
    /// The will of a connected client (`id`: its stored session, 0 for none).
    OnlineWill {
        id: u64,
    },
}

/// What an `online will` record says.
#[derive(Debug)]
struct OnlineWill {
    /// Its stored session's id, 0 for a client whose session is not stored.
    id: u64,
    identity: Identity,
    delay: u32,
    msg: Message,
}

enum Record {
    Session(SessionRecord),
    End {
        id: u64,
    },
    Message {
        id: u64,
        /// `moved` records: the sequence number of the first record.
        order: Option<u64>,
        msg: Message,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<usize>,
        expires_ms: Option<u64>,
    },
    Pkid {
        message: u64,
        pkid: u16,
        released: bool,
    },
    Received {
        id: u64,
        pkid: u16,
    },
    Will {
        id: u64,
        msg: Message,
        delay: u32,
        due_ms: u64,
    },
    OnlineWill(OnlineWill),
}

fn header(out: &mut BytesMut, kind: u8, id: u64) {
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u64(id);
}

fn put_str(out: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// `[via][username present + str][listener str][client id str]`: who a session or an
/// online will belongs to.
fn put_identity(out: &mut BytesMut, identity: &Identity) {
    out.put_u8(via_byte(identity.via));
    match &identity.username {
        Some(u) => {
            out.put_u8(1);
            put_str(out, u);
        }
        None => out.put_u8(0),
    }
    put_str(out, &identity.listener);
    put_str(out, &identity.client_id);
}

/// What [`put_identity`] wrote. A token's grant is not stored: a token identity
/// restored without it is allowed nothing (its claim may have been narrower than the
/// ACL file), until its client logs in again.
fn get_identity(b: &mut Bytes) -> Result<Identity, String> {
    need(b, 2, "identity kind and user name flag")?;
    let via = via_from(b.get_u8())?;
    let username = match b.get_u8() {
        0 => None,
        _ => Some(get_str(b, "user name")?),
    };
    let listener = get_str(b, "listener")?;
    let client_id = get_str(b, "client id")?;
    Ok(Identity {
        username,
        client_id,
        via,
        listener: Arc::from(listener.as_str()),
        jwt: None,
    })
}

fn overflow_byte(o: QueueOverflow) -> u8 {
    match o {
        QueueOverflow::DropOldest => 0,
        QueueOverflow::DropNew => 1,
        QueueOverflow::BlockPublishers => 2,
    }
}

/// `[v][1][id u64][deadline ms u64][expiry u32][v5][overflow][via][username present +
/// str][listener str][client id str][count u32] then per subscription `[path str][qos]
/// [flags: 1 no-local, 2 retain-as-published][id u32, 0 = none]`.
pub(crate) fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(64 + s.subscriptions.len() * 32);
    header(&mut out, KIND_SESSION, s.id);
    out.put_u64(match s.offline_until_ms {
        None => ONLINE,
        Some(ms) => ms.max(1),
    });
    out.put_u32(s.expiry);
    out.put_u8(u8::from(s.v5));
    out.put_u8(overflow_byte(s.overflow));
    put_identity(&mut out, &s.identity);
    out.put_u32(s.subscriptions.len() as u32);
    for sub in &s.subscriptions {
        put_str(&mut out, &sub.path);
        out.put_u8(qos_byte(sub.qos));
        out.put_u8(u8::from(sub.no_local) | (u8::from(sub.retain_as_published) << 1));
        out.put_u32(sub.id.map_or(0, |id| id.min(u32::MAX as usize) as u32));
    }
    out.to_vec()
}

fn encode_end(id: u64) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(10);
    header(&mut out, KIND_END, id);
    out.to_vec()
}

/// `[v][3][id u64][qos granted][retain][sub id count u16][ids u32...][message qos]
/// [expires ms u64, 0 = none][topic str][properties][payload]`; a `moved` record
/// (`order`: the first record's sequence number) is `[v][7][id u64][order u64]` and
/// the same fields.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_message(
    id: u64,
    order: Option<u64>,
    msg: &Message,
    qos: QoS,
    retain: bool,
    sub_ids: &[usize],
    now: Instant,
) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(message_len(msg, sub_ids));
    put_message(&mut out, id, order, msg, (qos, retain, sub_ids), now);
    out.to_vec()
}

/// About the bytes of a `message` record (its buffer's capacity).
fn message_len(msg: &Message, sub_ids: &[usize]) -> usize {
    msg.weight() + 56 + 4 * sub_ids.len()
}

/// [`encode_message`] into `out` (the journal's frame buffer); `grant`: QoS granted,
/// retain flag and subscription identifiers of this delivery.
fn put_message(
    out: &mut BytesMut,
    id: u64,
    order: Option<u64>,
    msg: &Message,
    (qos, retain, sub_ids): (QoS, bool, &[usize]),
    now: Instant,
) {
    match order {
        None => header(out, KIND_MESSAGE, id),
        Some(order) => {
            header(out, KIND_MOVED, id);
            out.put_u64(order);
        }
    }
    out.put_u8(qos_byte(qos));
    out.put_u8(u8::from(retain));
    let ids = &sub_ids[..sub_ids.len().min(usize::from(u16::MAX))];
    out.put_u16(ids.len() as u16);
    for sid in ids {
        out.put_u32((*sid).min(u32::MAX as usize) as u32);
    }
    out.put_u8(qos_byte(msg.qos));
    out.put_u64(msg.expires_at.map_or(0, |at| {
        now_ms()
            .saturating_add(at.saturating_duration_since(now).as_millis() as u64)
            .max(1)
    }));
    put_topic_properties_payload(out, msg);
}

/// Bytes of a `packet id` record.
const PKID_LEN: usize = 21;

fn put_pkid(out: &mut BytesMut, id: u64, message: u64, pkid: u16, released: bool) {
    header(out, KIND_PKID, id);
    out.put_u64(message);
    out.put_u16(pkid);
    out.put_u8(u8::from(released));
}

fn encode_received(id: u64, pkid: u16) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(12);
    header(&mut out, KIND_RECEIVED, id);
    out.put_u16(pkid);
    out.to_vec()
}

/// `[topic str][properties, v5 encoding with its length][payload]`.
fn put_topic_properties_payload(out: &mut BytesMut, msg: &Message) {
    out.put_u16(msg.topic.len().min(usize::from(u16::MAX)) as u16);
    out.put_slice(&msg.topic[..msg.topic.len().min(usize::from(u16::MAX))]);
    match &msg.properties {
        // Cannot fail: writing into a growable buffer.
        Some(p) => {
            let _ = p.write(out);
        }
        None => out.put_u8(0),
    }
    out.put_slice(&msg.payload);
}

/// The message of a `message` or `will` record from its topic on.
fn get_topic_properties_payload(b: &mut Bytes, qos: QoS, retain: bool) -> Result<Message, String> {
    let topic = get_bytes(b, "topic")?;
    if std::str::from_utf8(&topic).is_err() {
        return Err("topic is not UTF-8".into());
    }
    let properties =
        v5::PublishProperties::read(b).map_err(|e| format!("invalid properties: {e:?}"))?;
    Ok(Message {
        topic,
        payload: std::mem::take(b),
        qos,
        retain,
        properties,
        expires_at: None,
        publisher: None,
        origin: None,
    })
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<(), String> {
    if b.remaining() < n {
        return Err(format!("{what} longer than the record"));
    }
    Ok(())
}

fn get_bytes(b: &mut Bytes, what: &str) -> Result<Bytes, String> {
    need(b, 2, what)?;
    let len = usize::from(b.get_u16());
    need(b, len, what)?;
    Ok(b.split_to(len))
}

fn get_str(b: &mut Bytes, what: &str) -> Result<String, String> {
    let raw = get_bytes(b, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn decode_session(b: &mut Bytes, id: u64) -> Result<SessionRecord, String> {
    need(b, 8 + 4 + 4, "session fields")?;
    let deadline = b.get_u64();
    let expiry = b.get_u32();
    let v5 = b.get_u8() != 0;
    let overflow = match b.get_u8() {
        0 => QueueOverflow::DropOldest,
        1 => QueueOverflow::DropNew,
        2 => QueueOverflow::BlockPublishers,
        o => return Err(format!("invalid overflow policy {o}")),
    };
    let identity = get_identity(b)?;
    need(b, 4, "subscription count")?;
    let count = b.get_u32() as usize;
    // Each subscription takes at least 8 bytes: a count beyond that is damage.
    need(b, count.saturating_mul(8), "subscriptions")?;
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        let path = get_str(b, "filter")?;
        need(b, 6, "subscription options")?;
        let qos = qos_from(b.get_u8())?;
        let flags = b.get_u8();
        let sid = b.get_u32();
        subscriptions.push(StoredSubscription {
            path,
            qos,
            no_local: flags & 1 != 0,
            retain_as_published: flags & 2 != 0,
            id: (sid != 0).then_some(sid as usize),
        });
    }
    Ok(SessionRecord {
        id,
        identity,
        v5,
        expiry,
        offline_until_ms: (deadline != ONLINE).then_some(deadline),
        overflow,
        subscriptions,
    })
}

fn decode_message(b: &mut Bytes, id: u64, moved: bool) -> Result<Record, String> {
    let order = if moved {
        need(b, 8, "queue position")?;
        Some(b.get_u64())
    } else {
        None
    };
    need(b, 4, "message fields")?;
    let qos = qos_from(b.get_u8())?;
    let retain = b.get_u8() != 0;
    let count = usize::from(b.get_u16());
    need(b, count * 4, "subscription identifiers")?;
    let sub_ids = (0..count).map(|_| b.get_u32() as usize).collect();
    need(b, 9, "message fields")?;
    let msg_qos = qos_from(b.get_u8())?;
    let expires_ms = Some(b.get_u64()).filter(|&ms| ms != 0);
    let msg = get_topic_properties_payload(b, msg_qos, false)?;
    Ok(Record::Message {
        id,
        order,
        msg,
        qos,
        retain,
        sub_ids,
        expires_ms,
    })
}

fn decode(bytes: Bytes) -> Result<Record, String> {
    let mut b = bytes;
    need(&b, 10, "header")?;
    let version = b.get_u8();
    if version != VERSION {
        return Err(format!("unknown record version {version}"));
    }
    let kind = b.get_u8();
    let id = b.get_u64();
    match kind {
        KIND_SESSION => decode_session(&mut b, id).map(Record::Session),
        KIND_END => Ok(Record::End { id }),
        KIND_MESSAGE => decode_message(&mut b, id, false),
        KIND_MOVED => decode_message(&mut b, id, true),
        KIND_PKID => {
            need(&b, 11, "packet id fields")?;
            Ok(Record::Pkid {
                message: b.get_u64(),
                pkid: b.get_u16(),
                released: b.get_u8() != 0,
            })
        }
        KIND_RECEIVED => {
            need(&b, 2, "packet id")?;
            Ok(Record::Received {
                id,
                pkid: b.get_u16(),
            })
        }
        KIND_WILL => Record::decode_will(&mut b, id),
        KIND_ONLINE_WILL => Record::decode_online_will(&mut b, id),
        k => Err(format!("unknown record kind {k}")),
    }
}

/// What [`SessionLog::open`] found.
pub(crate) struct LoadedSessions {
    pub sessions: Vec<StoredSession>,
    /// Records lost to damage (logged at open).
    pub lost_records: u64,
    /// Sessions that expired while the broker was down (not loaded).
    pub expired: usize,
    /// The delayed wills of those sessions, due now (their records stay live until the
    /// router published them and acknowledges them).
    pub wills_due: Vec<(Identity, StoredWill)>,
}

/// The session log, owned by the router's delivery context.
pub(crate) struct SessionLog {
    journal: Journal,
    /// Live records by age: sequence number → (what it is, disk cost).
    by_seq: BTreeMap<u64, (Live, u64)>,
    live_bytes: u64,
    /// Live `session` records.
    sessions: usize,
    /// `end` records waiting for the next sync of acknowledgements.
    ends: Vec<u64>,
    last_sync: Instant,
    /// Next session id (ids are never reused: above every id loaded).
    next_id: u64,
    /// Appends refused (full, too large, closed) since open.
    pub failed: u64,
    segment_bytes: u64,
    /// Appended since compaction was last looked at (`pressure_due`).
    pressure: Pressure,
}

/// Everything decoded, before the sessions are assembled.
#[derive(Default)]
struct Scan {
    sessions: HashMap<u64, (u64, SessionRecord)>,
    ended: HashSet<u64>,
    messages: BTreeMap<u64, (u64, StoredMessage, Option<u64>)>,
    /// Message record → (packet id, released, its record).
    pkids: HashMap<u64, (u16, bool, u64)>,
    /// (session id, QoS 2 packet id received) → its record.
    received: HashMap<(u64, u16), u64>,
    /// Session id → its delayed will.
    wills: HashMap<u64, StoredWill>,
    /// Wills of connected clients: (record, will).
    online_wills: Vec<(u64, OnlineWill)>,
    stale: Vec<u64>,
    max_id: u64,
    costs: HashMap<u64, u64>,
}

impl Scan {
    fn add(&mut self, seq: u64, record: Record) {
        match record {
            Record::Session(s) => {
                self.max_id = self.max_id.max(s.id);
                if self.ended.contains(&s.id) {
                    self.stale.push(seq);
                } else if let Some((old, _)) = self.sessions.insert(s.id, (seq, s)) {
                    self.stale.push(old);
                }
            }
            Record::End { id } => {
                self.max_id = self.max_id.max(id);
                self.ended.insert(id);
                if let Some((old, _)) = self.sessions.remove(&id) {
                    self.stale.push(old);
                }
                self.stale.push(seq);
            }
            Record::Message {
                id,
                order,
                mut msg,
                qos,
                retain,
                sub_ids,
                expires_ms,
            } => {
                msg.expires_at = expires_ms
                    .map(|ms| Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms())));
                let stored = StoredMessage {
                    record: seq,
                    order: order.unwrap_or(seq),
                    msg,
                    qos,
                    retain,
                    sub_ids,
                    pkid: None,
                };
                self.messages.insert(seq, (id, stored, expires_ms));
            }
            Record::Pkid {
                message,
                pkid,
                released,
            } => {
                if let Some((_, _, old)) = self.pkids.insert(message, (pkid, released, seq)) {
                    self.stale.push(old);
                }
            }
            Record::Received { id, pkid } => {
                if let Some(old) = self.received.insert((id, pkid), seq) {
                    self.stale.push(old);
                }
            }
            Record::Will {
                id,
                msg,
                delay,
                due_ms,
            } => {
                let will = StoredWill {
                    record: seq,
                    msg,
                    delay,
                    due_ms,
                };
                if let Some(old) = self.wills.insert(id, will) {
                    self.stale.push(old.record);
                }
            }
            Record::OnlineWill(will) => self.online_wills.push((seq, will)),
        }
    }
}

impl SessionLog {
    /// Open (or create) the log under `data_dir` and load it: called once, by the
    /// router task before it handles anything.
    pub async fn open(
        data_dir: &Path,
        settings: &PersistenceSettings,
    ) -> Result<(SessionLog, LoadedSessions), JournalError> {
        let dir = sessions_dir(data_dir);
        let started = std::time::Instant::now();
        let (journal, segment_bytes, lost_records) = open_journal(
            &dir,
            settings,
            "Session state",
            "Session state: records lost to damage (sessions, queued messages or packet ids); the intact ones are loaded.",
        )
        .await?;
        let mut scan = Scan::default();
        let mut from = 0;
        loop {
            let batch = journal.read(from, LOAD_RECORDS, LOAD_BYTES).await?;
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            for record in batch {
                scan.costs
                    .insert(record.seq, journal::record_cost(record.payload.len()));
                match decode(Bytes::from(record.payload)) {
                    Err(reason) => {
                        warn!(seq = record.seq, %reason, "Session state: a record cannot be read; it is dropped.");
                        scan.stale.push(record.seq);
                    }
                    Ok(r) => scan.add(record.seq, r),
                }
            }
        }
        let mut log = SessionLog {
            journal,
            by_seq: BTreeMap::new(),
            live_bytes: 0,
            sessions: 0,
            ends: Vec::new(),
            last_sync: Instant::now(),
            next_id: scan.max_id + 1,
            failed: 0,
            segment_bytes,
            pressure: Pressure::default(),
        };
        let (sessions, expired, wills_due) = log.assemble(&mut scan);
        if !scan.stale.is_empty() {
            log.journal.ack_many(std::mem::take(&mut scan.stale))?;
        }
        let messages: usize = sessions.iter().map(|s| s.messages.len()).sum();
        info!(dir = %dir.display(), sessions = sessions.len(), messages, expired, live_bytes = log.live_bytes, ms = started.elapsed().as_millis() as u64, "Session state loaded.");
        Ok((
            log,
            LoadedSessions {
                sessions,
                lost_records,
                expired,
                wills_due,
            },
        ))
    }

    fn remember(&mut self, seq: u64, live: Live, scan: &Scan) {
        let cost = scan.costs.get(&seq).copied().unwrap_or(0);
        self.track(seq, live, cost);
    }

    fn track(&mut self, seq: u64, live: Live, cost: u64) {
        if matches!(live, Live::Session { .. }) {
            self.sessions += 1;
        }
        self.live_bytes += cost;
        self.by_seq.insert(seq, (live, cost));
    }

    /// A new session id (never one used before).
    pub fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn append(&mut self, record: &[u8], live: Live) -> Result<Durable, JournalError> {
        self.append_with(record.len(), |out| out.extend_from_slice(record), live)
    }

    /// [`SessionLog::append`] of the record `encode` writes in place (`len`: about its
    /// size), into the journal's frame buffer: no copy of a record built apart.
    fn append_with(
        &mut self,
        len: usize,
        encode: impl FnOnce(&mut BytesMut),
        live: Live,
    ) -> Result<Durable, JournalError> {
        let durable = self
            .journal
            .append_with(len, encode)
            .inspect_err(|_| self.failed += 1)?;
        let cost = durable.cost();
        self.pressure.appended(cost);
        self.track(durable.seq(), live, cost);
        Ok(durable)
    }

    /// Every record with a lower sequence number is durable (or failed to be).
    pub fn resolved_below(&self) -> u64 {
        self.journal.resolved_below()
    }

    /// Whether a quarter segment was appended since the last call (see `Pressure`).
    pub fn pressure_due(&mut self) -> bool {
        self.pressure.due(self.segment_bytes)
    }

    /// Acknowledge live record `seq` (0 and records not live are ignored).
    pub fn ack(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        if let Some((live, cost)) = self.by_seq.remove(&seq) {
            self.live_bytes -= cost;
            if matches!(live, Live::Session { .. }) {
                self.sessions -= 1;
            }
            let _ = self.journal.ack(seq);
        }
    }

    /// Write `session` (superseding record `old`, 0 = none); its new record.
    pub fn write_session(
        &mut self,
        old: u64,
        session: &SessionRecord,
    ) -> Result<u64, JournalError> {
        let durable = self.append(&encode_session(session), Live::Session { id: session.id })?;
        self.ack(old);
        Ok(durable.seq())
    }

    /// Session `id` (live record `old`) ended: it is not loaded again.
    pub fn end_session(&mut self, old: u64, id: u64) {
        match self.journal.append(&encode_end(id)) {
            Ok(durable) => self.ends.push(durable.seq()),
            Err(e) => {
                self.failed += 1;
                warn!(reason = %e, "Session end not stored: the session may come back after a restart.");
            }
        }
        self.ack(old);
    }

    /// Store a delivery for session `id` (`order`: when compaction writes it again,
    /// the sequence number of its first record); resolves when it is durable.
    #[allow(clippy::too_many_arguments)]
    pub fn append_message(
        &mut self,
        id: u64,
        order: Option<u64>,
        msg: &Message,
        qos: QoS,
        retain: bool,
        sub_ids: &[usize],
        now: Instant,
    ) -> Result<Durable, JournalError> {
        self.append_with(
            message_len(msg, sub_ids),
            |out| put_message(out, id, order, msg, (qos, retain, sub_ids), now),
            Live::Message { id },
        )
    }

    /// Message record `message` of session `id` went in flight as `pkid` (or its
    /// PUBREC came: `released`); supersedes packet id record `old`.
    pub fn set_pkid(
        &mut self,
        id: u64,
        message: u64,
        pkid: u16,
        released: bool,
        old: u64,
    ) -> Result<u64, JournalError> {
        let durable = self.append_with(
            PKID_LEN,
            |out| put_pkid(out, id, message, pkid, released),
            Live::Pkid { id, message },
        )?;
        self.ack(old);
        Ok(durable.seq())
    }

    /// Session `id`'s client published QoS 2 packet id `pkid`: stored until its PUBREL
    /// (the PUBREC waits for the returned durability).
    pub fn set_received(&mut self, id: u64, pkid: u16) -> Result<Durable, JournalError> {
        self.append(&encode_received(id, pkid), Live::Received { id, pkid })
    }

    /// Periodic upkeep: hand the waiting `end` records to a sync (they go only after
    /// the acks of what they ended are on disk).
    pub fn upkeep(&mut self, now: Instant) {
        if !self.ends.is_empty() && now.duration_since(self.last_sync) >= Duration::from_secs(1) {
            self.last_sync = now;
            let ends = std::mem::take(&mut self.ends);
            let journal = self.journal.clone();
            tokio::spawn(async move {
                if journal.sync().await.is_ok() {
                    let _ = journal.ack_many(ends);
                }
            });
        }
    }

    /// The oldest live records to write again when the log holds more than twice the
    /// live bytes (about one segment's worth per call); empty when none is due.
    pub fn compaction_due(&self) -> Vec<(u64, Live)> {
        let used = self.journal.counters().used_bytes;
        let slack = self.segment_bytes;
        if used <= 2 * self.live_bytes + 2 * slack {
            return Vec::new();
        }
        let mut moved = 0u64;
        self.by_seq
            .iter()
            .take_while(|(_, (_, cost))| {
                moved += cost;
                moved <= slack
            })
            .map(|(seq, (live, _))| (*seq, *live))
            .collect()
    }

    /// Live sessions, live records and their disk cost (for `$SYS` and tests).
    pub fn live(&self) -> (usize, usize, u64) {
        (self.sessions, self.by_seq.len(), self.live_bytes)
    }

    /// Flush everything and close (clean shutdown).
    pub async fn close(self) {
        let ends = self.ends;
        if self.journal.sync().await.is_ok() && !ends.is_empty() {
            let _ = self.journal.ack_many(ends);
        }
        if let Err(e) = self.journal.close().await {
            warn!(reason = %e, "Session state not closed cleanly; it is recovered at the next start.");
        }
    }

    #[cfg(test)]
    pub(crate) async fn sync(&self) {
        self.journal.sync().await.expect("sync");
    }
}

#[cfg(test)]
mod tests;
