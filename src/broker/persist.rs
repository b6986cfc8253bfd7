//! Durable broker state (issue 11), on the journal engine of `crate::journal` (the
//! bridge's: one engine, chosen once; see docs/journal.md), in two logs under
//! `<broker.data_dir>/state/`: `retained/` (this file) and `sessions/` (persistent
//! sessions, their queued and in-flight messages: `persist/sessions.rs`). Two logs, not
//! one with more record kinds, because their records live different lives (a retained
//! message for months, a queued message for milliseconds while its subscriber is
//! online), so each compacts on its own terms and a damaged tail of one costs nothing
//! of the other. `[persistence] max_bytes` is the budget of both: half each.
//!
//! The retained log is a sequence of `set` and `clear` records. The router owns a
//! [`RetainedLog`] and calls it as it changes its retained store: a `set` is appended
//! (and the publisher's PUBACK/PUBREC held until it is durable), the record it replaces
//! is acknowledged (removed). A `clear` is kept until the acknowledgement of the record
//! it removes is itself on disk (acks are fsynced at most every second): acknowledging
//! both at once could bring the old message back after a crash. Old segments are kept
//! small by copying their still-live records forward (compaction), from the router's
//! in-memory copy, so the disk use stays within about twice the live retained bytes.
//!
//! Crash consistency is the journal's: after `kill -9` or a power cut what loads is a
//! prefix of what was appended, checksummed; a damaged tail is logged and skipped.
//! It must never report a retained message durable before the journal did, and never
//! load a record that failed its checksum.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{info, warn};

use super::codec::{v5, QoS};
use super::link::Message;
use crate::journal::{self, Durable, Journal, JournalConfig, JournalError, SyncMode};

mod sessions;

pub(crate) use sessions::{
    Live, SessionLog, SessionRecord, StoredSession, StoredSubscription, StoredWill,
};

/// Record format version (first byte of every record).
const VERSION: u8 = 1;
const KIND_SET: u8 = 1;
const KIND_CLEAR: u8 = 2;

/// `[persistence]`: durable broker state.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceSettings {
    /// Keep the broker's state (retained messages, persistent sessions) in
    /// `<data_dir>/state/`.
    pub enabled: bool,
    /// When a change is reported durable (and a held PUBACK released).
    pub sync: SyncSetting,
    /// fsync period of `sync = "interval"`.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub interval: Duration,
    /// Disk budget of the state logs, in bytes (half for retained messages, half for
    /// sessions).
    pub max_bytes: u64,
}

/// `[persistence] sync`: the guarantee of each mode is in the README ("Durable state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    /// One fsync per change, before its acknowledgement.
    Always,
    /// Group commit: changes arriving together share one fsync, each acknowledged after
    /// the fsync that covers it (survives power cuts, like `always`).
    Batch,
    /// Acknowledged once written to the kernel, fsync every `interval`: survives
    /// `kill -9`; a power cut may lose the last `interval` of changes.
    Interval,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        PersistenceSettings {
            enabled: true,
            sync: SyncSetting::Batch,
            interval: Duration::from_millis(100),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl PersistenceSettings {
    /// No persistence: the programmatic default of [`super::BrokerSettings`] (tests,
    /// embedding). The configuration file's `[persistence]` is on by default.
    pub fn off() -> Self {
        PersistenceSettings {
            enabled: false,
            ..PersistenceSettings::default()
        }
    }

    /// The journal settings of each state log (retained, sessions): half the budget,
    /// segments of 8 MiB, smaller when that half is small (a quarter of it), so
    /// compaction has whole segments to free.
    fn journal_config(&self) -> JournalConfig {
        let max_bytes = self.max_bytes / 2;
        JournalConfig {
            segment_bytes: journal::DEFAULT_SEGMENT_BYTES.min(max_bytes / 4),
            sync: match self.sync {
                SyncSetting::Always => SyncMode::Always,
                SyncSetting::Batch => SyncMode::Batch,
                SyncSetting::Interval => SyncMode::Interval(self.interval),
            },
            max_bytes,
            ..JournalConfig::default()
        }
    }
}

/// Directory of the retained-message log under `data_dir`.
pub fn retained_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("retained")
}

/// One decoded record.
#[derive(Debug, PartialEq)]
enum Record {
    Set {
        topic: Bytes,
        payload: Bytes,
        qos: QoS,
        properties: Option<v5::PublishProperties>,
        /// Wall-clock expiry, ms since the epoch (message expiry keeps counting).
        expires_ms: Option<u64>,
    },
    Clear {
        topic: Bytes,
    },
}

fn qos_byte(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos_from(byte: u8) -> Result<QoS, String> {
    match byte {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        q => Err(format!("invalid QoS {q}")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `[version][kind][topic len u16][topic]` then, for a set: `[qos][expires ms u64, 0 =
/// none][properties, v5 encoding with its length][payload]`.
#[cfg(test)]
fn encode_set(msg: &Message, now: Instant) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(msg.weight() + 32);
    put_set(&mut out, msg, now);
    out.to_vec()
}

/// [`encode_set`] into `out` (the journal's frame buffer).
fn put_set(out: &mut BytesMut, msg: &Message, now: Instant) {
    out.put_u8(VERSION);
    out.put_u8(KIND_SET);
    out.put_u16(msg.topic.len() as u16);
    out.put_slice(&msg.topic);
    out.put_u8(qos_byte(msg.qos));
    let expires_ms = msg.expires_at.map_or(0, |at| {
        now_ms()
            .saturating_add(at.saturating_duration_since(now).as_millis() as u64)
            .max(1)
    });
    out.put_u64(expires_ms);
    match &msg.properties {
        // Cannot fail: writing into a growable buffer.
        Some(p) => {
            let _ = p.write(out);
        }
        None => out.put_u8(0),
    }
    out.put_slice(&msg.payload);
}

fn encode_clear(topic: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + 4);
    out.push(VERSION);
    out.push(KIND_CLEAR);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
    out
}

fn decode(bytes: Bytes) -> Result<Record, String> {
    let mut b = bytes;
    if b.remaining() < 4 {
        return Err("record shorter than its header".into());
    }
    let version = b.get_u8();
    if version != VERSION {
        return Err(format!("unknown record version {version}"));
    }
    let kind = b.get_u8();
    let topic_len = usize::from(b.get_u16());
    if b.remaining() < topic_len {
        return Err("topic longer than the record".into());
    }
    let topic = b.split_to(topic_len);
    match kind {
        KIND_CLEAR => Ok(Record::Clear { topic }),
        KIND_SET => {
            if b.remaining() < 9 {
                return Err("set record shorter than its fields".into());
            }
            let qos = qos_from(b.get_u8())?;
            let expires_ms = Some(b.get_u64()).filter(|&ms| ms != 0);
            let properties = v5::PublishProperties::read(&mut b)
                .map_err(|e| format!("invalid properties: {e:?}"))?;
            Ok(Record::Set {
                topic,
                payload: b,
                qos,
                properties,
                expires_ms,
            })
        }
        k => Err(format!("unknown record kind {k}")),
    }
}

/// What [`RetainedLog::open`] found on disk.
pub(crate) struct Loaded {
    /// Records lost to damage (logged at open).
    pub lost_records: u64,
}

/// One change of the retained store replayed at open, in log order: the router applies
/// them as they are read, so loading holds no second copy of the store (a map and a
/// list of 100,000 messages cost tens of MiB that the allocator kept afterwards).
pub(crate) enum Replay {
    /// `msg` is its topic's retained message (a later `Set` or `Clear` may follow).
    Set(Arc<Message>),
    /// The topic has no retained message (cleared, or its last message expired).
    Clear(Bytes),
}

/// The retained-message log, owned by the router.
pub(crate) struct RetainedLog {
    journal: Journal,
    /// Topic → sequence number of its live `set` record.
    live: HashMap<Bytes, u64>,
    /// Live records by age (for compaction): sequence number → (topic, disk cost).
    by_seq: BTreeMap<u64, (Bytes, u64)>,
    /// Disk cost of the live records.
    live_bytes: u64,
    /// `clear` records waiting for the next sync of acknowledgements.
    clears: Vec<u64>,
    /// When `clears` were last handed to a sync.
    last_sync: Instant,
    /// Appends refused (full, too large, closed) since open.
    pub failed: u64,
    /// Segment size (the unit compaction frees).
    segment_bytes: u64,
    /// Appended since compaction was last looked at (`pressure_due`).
    pressure: Pressure,
}

/// Records and bytes per read while a state log is loaded: bounded batches, whatever
/// the log holds.
pub(super) const LOAD_RECORDS: usize = 4096;
pub(super) const LOAD_BYTES: usize = 16 * 1024 * 1024;

/// Open the journal of one state log in `dir` and log what damage cost it: a line per
/// damaged segment (`what` names the log) and `lost` once. Returns the journal, its
/// segment size (the unit compaction frees) and the count of records lost.
pub(super) async fn open_journal(
    dir: &Path,
    settings: &PersistenceSettings,
    what: &str,
    lost: &str,
) -> Result<(Journal, u64, u64), JournalError> {
    let config = settings.journal_config();
    let segment_bytes = config.segment_bytes;
    let (journal, recovery) = Journal::open(dir, config).await?;
    let damage = &recovery.lost;
    if damage.records > 0 || damage.bytes > 0 {
        for s in &damage.segments {
            warn!(segment = %s.path.display(), valid_len = s.valid_len, bytes = s.bytes, records = s.records, damage = s.damage, "{what}: damaged segment; its tail was dropped.");
        }
        warn!(records = damage.records, bytes = damage.bytes, "{lost}");
    }
    let lost_records = damage.records;
    Ok((journal, segment_bytes, lost_records))
}

impl RetainedLog {
    /// Open (or create) the log under `data_dir` and load it: called once, by the
    /// router task before it handles anything (clients wait in its channel).
    pub async fn open(
        data_dir: &Path,
        settings: &PersistenceSettings,
        mut apply: impl FnMut(Replay),
    ) -> Result<(RetainedLog, Loaded), JournalError> {
        let dir = retained_dir(data_dir);
        let started = std::time::Instant::now();
        let (journal, segment_bytes, lost_records) = open_journal(
            &dir,
            settings,
            "Broker state",
            "Broker state: retained-message records lost to damage; the intact ones are loaded.",
        )
        .await?;
        let mut log = RetainedLog {
            journal,
            live: HashMap::new(),
            by_seq: BTreeMap::new(),
            live_bytes: 0,
            clears: Vec::new(),
            last_sync: Instant::now(),
            failed: 0,
            segment_bytes,
            pressure: Pressure::default(),
        };
        let mut stale = Vec::new();
        let mut from = 0;
        loop {
            let batch = log.journal.read(from, LOAD_RECORDS, LOAD_BYTES).await?;
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            let now = Instant::now();
            for record in batch {
                let cost = journal::record_cost(record.payload.len());
                let (topic, message) = match decode(Bytes::from(record.payload)) {
                    Err(reason) => {
                        warn!(seq = record.seq, %reason, "Broker state: a record cannot be read; it is dropped.");
                        stale.push(record.seq);
                        continue;
                    }
                    Ok(Record::Clear { topic }) => (topic, None),
                    Ok(Record::Set {
                        topic,
                        payload,
                        qos,
                        properties,
                        expires_ms,
                    }) => {
                        let message = Message {
                            topic: topic.clone(),
                            payload,
                            qos,
                            retain: true,
                            properties,
                            expires_at: expires_ms
                                .map(|ms| now + Duration::from_millis(ms.saturating_sub(now_ms()))),
                            publisher: None,
                            origin: None,
                        };
                        (topic, Some(message))
                    }
                };
                // What it replaces is superseded.
                if let Some(old) = log.live.get(&topic).copied() {
                    stale.push(old);
                    log.forget(old);
                }
                match message {
                    // Expired while the broker was down: not loaded, removed.
                    Some(m) if m.expires_at.is_none_or(|at| at > now) => {
                        log.remember(topic, record.seq, cost);
                        apply(Replay::Set(Arc::new(m)));
                    }
                    _ => {
                        stale.push(record.seq);
                        apply(Replay::Clear(topic));
                    }
                }
            }
        }
        // Superseded records and clears are acknowledged once the load is final.
        if !stale.is_empty() {
            log.journal.ack_many(stale)?;
        }
        info!(dir = %dir.display(), retained = log.live.len(), live_bytes = log.live_bytes, ms = started.elapsed().as_millis() as u64, "Retained state loaded.");
        Ok((log, Loaded { lost_records }))
    }

    fn remember(&mut self, topic: Bytes, seq: u64, cost: u64) {
        self.live.insert(topic.clone(), seq);
        self.by_seq.insert(seq, (topic, cost));
        self.live_bytes += cost;
    }

    /// Forget live record `seq` (it was superseded or cleared).
    fn forget(&mut self, seq: u64) {
        if let Some((topic, cost)) = self.by_seq.remove(&seq) {
            self.live_bytes -= cost;
            if self.live.get(&topic) == Some(&seq) {
                self.live.remove(&topic);
            }
        }
    }

    /// `msg` is now its topic's retained message. Returns what resolves when that is
    /// durable, or `None` when it could not be stored (counted, logged by the caller).
    pub fn set(&mut self, msg: &Message, now: Instant) -> Result<Durable, JournalError> {
        let durable = self
            .journal
            .append_with(msg.weight() + 32, |out| put_set(out, msg, now))
            .inspect_err(|_| self.failed += 1)?;
        let cost = durable.cost();
        self.pressure.appended(cost);
        if let Some(old) = self.live.get(&msg.topic).copied() {
            self.forget(old);
            let _ = self.journal.ack(old);
        }
        self.remember(msg.topic.clone(), durable.seq(), cost);
        Ok(durable)
    }

    /// The retained message of `topic` was cleared (empty payload, expiry, or the store
    /// refused its replacement). Returns the durability of the clear, if one was written.
    pub fn clear(&mut self, topic: &[u8]) -> Result<Option<Durable>, JournalError> {
        let Some(old) = self.live.get(topic).copied() else {
            return Ok(None);
        };
        let durable = self.append(&encode_clear(topic))?;
        self.forget(old);
        let _ = self.journal.ack(old);
        self.clears.push(durable.seq());
        Ok(Some(durable))
    }

    fn append(&mut self, record: &[u8]) -> Result<Durable, JournalError> {
        let durable = self
            .journal
            .append(record)
            .inspect_err(|_| self.failed += 1)?;
        self.pressure.appended(journal::record_cost(record.len()));
        Ok(durable)
    }

    /// Whether a quarter segment was appended since the last call (see
    /// `SessionLog::pressure_due`): then upkeep runs at once.
    pub fn pressure_due(&mut self) -> bool {
        self.pressure.due(self.segment_bytes)
    }

    /// Periodic upkeep (the router calls it on its `$SYS` tick and after bursts): hand
    /// the waiting clears to a sync, and copy the oldest live records forward when the
    /// log holds more than twice the live bytes. `current` gives the router's message
    /// for a topic (the copy written forward).
    pub fn upkeep(&mut self, now: Instant, current: impl Fn(&[u8]) -> Option<Arc<Message>>) {
        if !self.clears.is_empty() && now.duration_since(self.last_sync) >= Duration::from_secs(1) {
            self.last_sync = now;
            let clears = std::mem::take(&mut self.clears);
            let journal = self.journal.clone();
            // The clears go only after the acks of what they removed are on disk.
            tokio::spawn(async move {
                if journal.sync().await.is_ok() {
                    let _ = journal.ack_many(clears);
                }
            });
        }
        let used = self.journal.counters().used_bytes;
        let slack = self.segment_bytes;
        if used <= 2 * self.live_bytes + 2 * slack {
            return;
        }
        // Copy forward the oldest live records, about one segment's worth per call.
        let mut moved = 0u64;
        let oldest: Vec<(u64, Bytes)> = self
            .by_seq
            .iter()
            .take_while(|(_, (_, cost))| {
                moved += cost;
                moved <= slack
            })
            .map(|(seq, (topic, _))| (*seq, topic.clone()))
            .collect();
        for (seq, topic) in oldest {
            let Some(msg) = current(&topic) else {
                // Not in the router's store (refused by its limits): drop the record.
                self.forget(seq);
                let _ = self.journal.ack(seq);
                continue;
            };
            if self.set(&msg, now).is_err() {
                return;
            }
        }
    }

    /// Live records and their disk cost (for `$SYS` and tests).
    pub fn live(&self) -> (usize, u64) {
        (self.live.len(), self.live_bytes)
    }

    /// Flush everything and close (clean shutdown).
    pub async fn close(self) {
        let clears = self.clears;
        if self.journal.sync().await.is_ok() && !clears.is_empty() {
            let _ = self.journal.ack_many(clears);
        }
        if let Err(e) = self.journal.close().await {
            warn!(reason = %e, "Broker state not closed cleanly; it is recovered at the next start.");
        }
    }
}

/// Disk cost a state log appended since compaction was last looked at: once a quarter
/// segment has come, compaction is looked at again at once, not only on the
/// once-a-second upkeep, so a small log under a fast stream makes room before it is full.
#[derive(Debug, Default)]
struct Pressure {
    since_check: u64,
}

impl Pressure {
    fn appended(&mut self, cost: u64) {
        self.since_check += cost;
    }

    /// Whether a quarter of `segment_bytes` was appended since the last `true`.
    fn due(&mut self, segment_bytes: u64) -> bool {
        if self.since_check < segment_bytes / 4 {
            return false;
        }
        self.since_check = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str, expires_in: Option<Duration>) -> Message {
        Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: expires_in.map(|d| Instant::now() + d),
            publisher: None,
            origin: None,
        }
    }

    fn settings() -> PersistenceSettings {
        PersistenceSettings::default()
    }

    async fn reopen(dir: &Path) -> Vec<(String, String)> {
        let mut store: BTreeMap<String, String> = BTreeMap::new();
        let (log, _) = RetainedLog::open(dir, &settings(), |r| match r {
            Replay::Set(m) => {
                store.insert(
                    m.topic_str().to_string(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                );
            }
            Replay::Clear(topic) => {
                store.remove(std::str::from_utf8(&topic).expect("UTF-8"));
            }
        })
        .await
        .expect("open");
        log.close().await;
        store.into_iter().collect()
    }

    #[test]
    fn records_round_trip_with_properties_and_expiry() {
        let mut m = message("a/b", "payload", Some(Duration::from_secs(3600)));
        m.qos = QoS::ExactlyOnce;
        m.properties = Some(v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            topic_alias: None,
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            subscription_identifiers: vec![],
            content_type: Some("text/plain".into()),
        });
        let Record::Set {
            topic,
            payload,
            qos,
            properties,
            expires_ms,
        } = decode(Bytes::from(encode_set(&m, Instant::now()))).expect("decodes")
        else {
            panic!("a set record");
        };
        assert_eq!(topic, m.topic);
        assert_eq!(payload, m.payload);
        assert_eq!(qos, QoS::ExactlyOnce);
        assert_eq!(properties, m.properties);
        let left = expires_ms.expect("expiry kept") - now_ms();
        assert!((3_590_000..=3_600_000).contains(&left), "{left}");
        assert_eq!(
            decode(Bytes::from(encode_clear(b"a/b"))).expect("decodes"),
            Record::Clear {
                topic: Bytes::from_static(b"a/b")
            }
        );
        // Truncated or unknown records are refused, never misread.
        let full = encode_set(&m, Instant::now());
        for len in 0..full.len().min(40) {
            let _ = decode(Bytes::copy_from_slice(&full[..len]));
        }
        assert!(decode(Bytes::from_static(&[9, 1, 0, 0])).is_err());
        assert!(decode(Bytes::from_static(&[VERSION, 7, 0, 0])).is_err());
    }

    #[tokio::test]
    async fn sets_replacements_and_clears_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut replayed = 0;
        let (mut log, _) = RetainedLog::open(dir.path(), &settings(), |_| replayed += 1)
            .await
            .expect("open");
        assert_eq!(replayed, 0);
        let now = Instant::now();
        log.set(&message("a", "1", None), now)
            .expect("set")
            .await
            .expect("durable");
        log.set(&message("b", "1", None), now)
            .expect("set")
            .await
            .expect("durable");
        log.set(&message("a", "2", None), now)
            .expect("set")
            .await
            .expect("durable");
        log.clear(b"b")
            .expect("clear")
            .expect("written")
            .await
            .expect("durable");
        assert!(log.clear(b"never-set").expect("nothing to clear").is_none());
        log.set(&message("gone", "x", Some(Duration::from_millis(50))), now)
            .expect("set")
            .await
            .expect("durable");
        assert_eq!(log.live().0, 2);
        log.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The expired one is not loaded; a clear and a replacement hold across restarts.
        assert_eq!(reopen(dir.path()).await, vec![("a".into(), "2".into())]);
        assert_eq!(reopen(dir.path()).await, vec![("a".into(), "2".into())]);
    }

    #[tokio::test]
    async fn a_clear_without_a_synced_ack_does_not_resurrect_the_old_message() {
        // Dropped without close: the acks of the last second may not be on disk, and the
        // clear record is still pending, so the old value stays cleared.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RetainedLog::open(dir.path(), &settings(), |_| {})
            .await
            .expect("open");
        let now = Instant::now();
        log.set(&message("t", "old", None), now)
            .expect("set")
            .await
            .expect("durable");
        log.clear(b"t")
            .expect("clear")
            .expect("written")
            .await
            .expect("durable");
        log.journal.sync().await.expect("sync");
        drop(log);
        assert!(reopen(dir.path()).await.is_empty());
    }

    #[tokio::test]
    async fn compaction_keeps_every_live_message_and_bounds_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RetainedLog::open(dir.path(), &settings(), |_| {})
            .await
            .expect("open");
        let now = Instant::now();
        let payload = "x".repeat(1000);
        // Many updates of one hot topic, with a long-lived topic set now and then: without
        // compaction each 8 MiB segment would stay for its one live cold record.
        let mut current: HashMap<Bytes, Arc<Message>> = HashMap::new();
        let mut last = None;
        for i in 0..60_000 {
            if i % 6000 == 0 {
                let m = message(&format!("cold/{}", i / 6000), &payload, None);
                drop(log.set(&m, now).expect("set"));
                current.insert(m.topic.clone(), Arc::new(m));
            }
            let m = message("hot", &format!("{i}{payload}"), None);
            last = Some(log.set(&m, now).expect("set"));
            current.insert(m.topic.clone(), Arc::new(m));
            if i % 5000 == 0 {
                log.upkeep(now, |t| current.get(t).cloned());
            }
        }
        last.expect("appended").await.expect("durable");
        // Upkeep rounds until the disk is within its bound: the writer deletes a segment
        // once its last record is acked, which may come after a sync's reply (loaded
        // machines showed it, twice). Without compaction the disk never gets there (~60 MB).
        let live = log.live().1;
        let bound = 2 * live + 3 * journal::DEFAULT_SEGMENT_BYTES;
        let mut used = u64::MAX;
        // Waited for up to 30 s (a busy CI machine): a bound, not a timing.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            log.upkeep(now, |t| current.get(t).cloned());
            log.journal.sync().await.expect("sync");
            used = log.journal.counters().disk_bytes;
            if used <= bound {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(log.live().0, 11);
        assert!(used <= bound, "disk {used} bytes for {live} live bytes");
        log.close().await;
        let loaded = reopen(dir.path()).await;
        assert_eq!(loaded.len(), 11);
        assert!(loaded
            .iter()
            .any(|(t, p)| t == "hot" && p.starts_with("59999")));
    }
}
