//! The first pass of a session log load: every record decoded and sorted by kind, the
//! superseded ones set aside as stale, before `SessionLog::assemble` builds the
//! sessions. It holds what one load read, and must never decide what is live across
//! kinds (a message of an ended session is `assemble`'s call).

use super::*;

/// Everything decoded, before the sessions are assembled.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) sessions: HashMap<u64, (u64, SessionRecord)>,
    pub(super) ended: HashSet<u64>,
    pub(super) messages: BTreeMap<u64, (u64, StoredMessage, Option<u64>)>,
    /// Message record → (packet id, released, its record).
    pub(super) pkids: HashMap<u64, (u16, bool, u64)>,
    /// (session id, QoS 2 packet id received) → its record.
    pub(super) received: HashMap<(u64, u16), u64>,
    /// Session id → its delayed will.
    pub(super) wills: HashMap<u64, StoredWill>,
    /// Wills of connected clients: (record, will).
    pub(super) online_wills: Vec<(u64, OnlineWill)>,
    pub(super) stale: Vec<u64>,
    pub(super) max_id: u64,
    pub(super) costs: HashMap<u64, u64>,
}

impl Scan {
    pub(super) fn add(&mut self, seq: u64, record: Record) {
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
