//! Will records of the session log: a delayed will of an offline session (`will`,
//! with its wall-clock due time), and the will of a connected client (`online will`,
//! written as it connects, acknowledged when its connection ends however it ends).
//! An online will still live at a load is a connection that was open at a crash: the
//! crash counts as that connection dropping at the restart. Its will is due
//! `min(delay, session expiry)` after the load for a restored session (cancelled if
//! the client comes back first), at once otherwise. It must never publish the will of
//! a client that was superseded by a later connection of the same client id.

use std::collections::HashMap;

use super::*;

/// `[v][6][id u64][due ms u64][delay u32][qos][retain][topic str][properties][payload]`.
pub(super) fn encode_will(id: u64, msg: &Message, delay: u32, due_ms: u64) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(msg.weight() + 40);
    header(&mut out, KIND_WILL, id);
    out.put_u64(due_ms);
    out.put_u32(delay);
    out.put_u8(qos_byte(msg.qos));
    out.put_u8(u8::from(msg.retain));
    put_topic_properties_payload(&mut out, msg);
    out.to_vec()
}

impl Record {
    pub(super) fn decode_will(b: &mut Bytes, id: u64) -> Result<Record, String> {
        need(b, 14, "will fields")?;
        let due_ms = b.get_u64();
        let delay = b.get_u32();
        let qos = qos_from(b.get_u8())?;
        let retain = b.get_u8() != 0;
        let msg = get_topic_properties_payload(b, qos, retain)?;
        Ok(Record::Will {
            id,
            msg,
            delay,
            due_ms,
        })
    }
}

/// `[v][8][id u64][delay u32][via][username present + str][listener str]
/// [client id str][qos][retain][topic str][properties][payload]`.
pub(super) fn encode_online_will(
    id: u64,
    identity: &Identity,
    msg: &Message,
    delay: u32,
) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(msg.weight() + identity.client_id.len() + 64);
    header(&mut out, KIND_ONLINE_WILL, id);
    out.put_u32(delay);
    put_identity(&mut out, identity);
    out.put_u8(qos_byte(msg.qos));
    out.put_u8(u8::from(msg.retain));
    put_topic_properties_payload(&mut out, msg);
    out.to_vec()
}

impl Record {
    pub(super) fn decode_online_will(b: &mut Bytes, id: u64) -> Result<Record, String> {
        need(b, 4, "online will fields")?;
        let delay = b.get_u32();
        let identity = get_identity(b)?;
        need(b, 2, "will qos and retain")?;
        let qos = qos_from(b.get_u8())?;
        let retain = b.get_u8() != 0;
        let msg = get_topic_properties_payload(b, qos, retain)?;
        Ok(Record::OnlineWill(OnlineWill {
            id,
            identity,
            delay,
            msg,
        }))
    }
}

impl SessionLog {
    /// Session `id` went offline with a delayed will, due at `due_ms` (wall clock);
    /// its record (acknowledged when the will is published or cancelled).
    pub fn set_will(
        &mut self,
        id: u64,
        msg: &Message,
        delay: u32,
        due_ms: u64,
    ) -> Result<u64, JournalError> {
        let durable = self.append(&encode_will(id, msg, delay, due_ms), Live::Will { id })?;
        Ok(durable.seq())
    }

    /// The wills of connections open when the log was last written (see the module
    /// comment): the latest per client id is kept, as the delayed will of its restored
    /// session or as due now; older ones (a later connection superseded them) go.
    pub(super) fn assemble_online_wills(
        &mut self,
        scan: &mut Scan,
        kept: &mut HashMap<u64, StoredSession>,
        wills_due: &mut Vec<(Identity, StoredWill)>,
    ) {
        let now_wall = now_ms();
        let mut latest: HashMap<String, (u64, OnlineWill)> = HashMap::new();
        for (seq, will) in std::mem::take(&mut scan.online_wills) {
            let client_id = will.identity.client_id.clone();
            if let Some((old, _)) = latest.insert(client_id, (seq, will)) {
                scan.stale.push(old);
            }
        }
        // Sessions by client id: one stored later than the will is a later connection.
        let by_client: HashMap<&str, (u64, u64)> = kept
            .values()
            .map(|s| {
                (
                    s.session.identity.client_id.as_str(),
                    (s.session.id, s.record),
                )
            })
            .collect();
        let mut restored = Vec::new();
        let mut due = Vec::new();
        for (client_id, (seq, will)) in latest {
            match by_client.get(client_id.as_str()) {
                Some(&(id, _)) if will.id != 0 && id == will.id => restored.push((seq, will)),
                Some(&(_, record)) if record > seq => scan.stale.push(seq),
                _ if will.id != 0 && scan.ended.contains(&will.id) => scan.stale.push(seq),
                _ => due.push((seq, will)),
            }
        }
        for (seq, will) in restored {
            let Some(s) = kept.get_mut(&will.id) else {
                continue;
            };
            // An offline will stored after it wins (it cannot normally coexist).
            if s.will.as_ref().is_some_and(|w| w.record > seq) {
                scan.stale.push(seq);
                continue;
            }
            if let Some(old) = s.will.take() {
                self.ack(old.record);
            }
            let wait = will.delay.min(s.session.expiry);
            self.remember(seq, Live::Will { id: will.id }, scan);
            s.will = Some(StoredWill {
                record: seq,
                msg: will.msg,
                delay: will.delay,
                due_ms: now_wall.saturating_add(u64::from(wait) * 1000),
            });
        }
        for (seq, will) in due {
            self.remember(seq, Live::Will { id: will.id }, scan);
            wills_due.push((
                will.identity,
                StoredWill {
                    record: seq,
                    msg: will.msg,
                    delay: will.delay,
                    due_ms: now_wall,
                },
            ));
        }
    }

    /// A client connected with a will: stored (`id`: its stored session, 0 for none)
    /// until its connection ends; its record.
    pub fn set_online_will(
        &mut self,
        id: u64,
        identity: &Identity,
        msg: &Message,
        delay: u32,
    ) -> Result<u64, JournalError> {
        let record = encode_online_will(id, identity, msg, delay);
        let durable = self.append(&record, Live::OnlineWill { id })?;
        Ok(durable.seq())
    }
}
