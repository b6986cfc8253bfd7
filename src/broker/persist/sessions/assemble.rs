//! The second pass of a session log load: the decoded records (`Scan`) assembled into
//! sessions with their deliveries in queue order, packet ids, QoS 2 receive state and
//! wills, each live record remembered for compaction. It must never keep a record of a
//! session that ended or expired, nor two sessions of one client id.

use super::*;

impl SessionLog {
    /// Sessions with their messages; stale records (ended, expired, orphaned, one
    /// client id twice) go to `scan.stale`.
    pub(super) fn assemble(
        &mut self,
        scan: &mut Scan,
    ) -> (Vec<StoredSession>, usize, Vec<(Identity, StoredWill)>) {
        let now_wall = now_ms();
        let now = Instant::now();
        let mut expired = 0;
        let mut wills_due = Vec::new();
        let mut kept: HashMap<u64, StoredSession> = HashMap::new();
        let mut by_client: HashMap<String, u64> = HashMap::new();
        let mut all: Vec<(u64, SessionRecord)> = scan.sessions.drain().map(|(_, v)| v).collect();
        all.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, s) in all {
            let expires_at = match s.offline_until_ms {
                _ if s.expiry == u32::MAX => None,
                None => Some(now + Duration::from_secs(u64::from(s.expiry))),
                Some(NEVER) => None,
                Some(ms) if ms <= now_wall => {
                    expired += 1;
                    scan.stale.push(seq);
                    // Its will is due at the latest when the session ends.
                    if let Some(will) = scan.wills.remove(&s.id) {
                        self.remember(will.record, Live::Will { id: s.id }, scan);
                        wills_due.push((s.identity, will));
                    }
                    continue;
                }
                Some(ms) => Some(now + Duration::from_millis(ms - now_wall)),
            };
            // One session per client id: the later one wins.
            if let Some(old) = by_client.insert(s.identity.client_id.clone(), s.id) {
                if let Some(o) = kept.remove(&old) {
                    scan.stale.push(o.record);
                }
            }
            kept.insert(
                s.id,
                StoredSession {
                    record: seq,
                    session: s,
                    expires_at,
                    messages: Vec::new(),
                    received: Vec::new(),
                    will: None,
                },
            );
        }
        let copies = newest_copies(scan);
        for (seq, (id, mut m, _)) in std::mem::take(&mut scan.messages) {
            let pkid = scan.pkids.remove(&seq);
            if copies.get(&(id, m.order)) != Some(&seq) {
                // An older copy of a delivery compaction wrote again.
                scan.stale.push(seq);
                scan.stale.extend(pkid.map(|(_, _, r)| r));
                continue;
            }
            let expired_msg = m.msg.expires_at.is_some_and(|at| at <= now);
            match kept.get_mut(&id) {
                Some(s) if !expired_msg => {
                    if let Some((pkid, released, record)) = pkid {
                        m.pkid = Some((pkid, released, record));
                        self.remember(record, Live::Pkid { id, message: seq }, scan);
                    }
                    self.remember(seq, Live::Message { id }, scan);
                    s.messages.push(m);
                }
                _ => {
                    scan.stale.push(seq);
                    scan.stale.extend(pkid.map(|(_, _, r)| r));
                }
            }
        }
        // Packet ids of messages that are gone.
        scan.stale
            .extend(scan.pkids.drain().map(|(_, (_, _, r))| r));
        let mut received: Vec<((u64, u16), u64)> = scan.received.drain().collect();
        received.sort_unstable_by_key(|(_, seq)| *seq);
        for ((id, pkid), seq) in received {
            match kept.get_mut(&id) {
                Some(s) => {
                    self.remember(seq, Live::Received { id, pkid }, scan);
                    s.received.push((pkid, seq));
                }
                None => scan.stale.push(seq),
            }
        }
        for (id, will) in std::mem::take(&mut scan.wills) {
            match kept.get_mut(&id) {
                Some(s) => {
                    self.remember(will.record, Live::Will { id }, scan);
                    s.will = Some(will);
                }
                None => scan.stale.push(will.record),
            }
        }
        self.assemble_online_wills(scan, &mut kept, &mut wills_due);
        let mut sessions: Vec<StoredSession> = kept.into_values().collect();
        sessions.sort_unstable_by_key(|s| s.record);
        for s in &mut sessions {
            // Queue order, not log order: compaction moves messages forward.
            s.messages.sort_by_key(|m| m.order);
        }
        for s in &sessions {
            self.remember(s.record, Live::Session { id: s.session.id }, scan);
        }
        (sessions, expired, wills_due)
    }
}

/// The record to keep of each delivery (session, place in its queue): compaction writes
/// a live message again (a `moved` record with the same place) and then acknowledges
/// the old one, so a crash between the two leaves both, and the delivery would come
/// twice. The newest copy wins; an in-flight packet id recorded for an older copy goes
/// to it when it has none.
fn newest_copies(scan: &mut Scan) -> HashMap<(u64, u64), u64> {
    let mut newest: HashMap<(u64, u64), u64> = HashMap::new();
    for (&seq, (id, m, _)) in &scan.messages {
        let kept = newest.entry((*id, m.order)).or_insert(seq);
        *kept = (*kept).max(seq);
    }
    for (&seq, (id, m, _)) in &scan.messages {
        let winner = newest[&(*id, m.order)];
        if winner != seq && !scan.pkids.contains_key(&winner) {
            if let Some(p) = scan.pkids.remove(&seq) {
                scan.pkids.insert(winner, p);
            }
        }
    }
    newest
}
