//! [`JournalOutbox`]: the bridge's [`Outbox`] on the on-disk journal (`crate::journal`),
//! in `<broker.data_dir>/bridge/<name>/`. An append resolves once the record is fsynced
//! (`SyncMode::Batch`), so a message whose PUBACK was released survives an uplink
//! outage, a `kill -9` and a power cut; acknowledgements are fsynced lazily, so a crash
//! can bring back acknowledged records (duplicates, which QoS 1 allows).
//!
//! Record encoding, version 1 (a message without MQTT 5 properties, and every record
//! written before properties were carried): `u8 version (1) | u8 qos | u8 retain (0/1) |
//! u16 topic length (LE) | topic (UTF-8) | payload`. Version 2 (a message with
//! properties): the same header with version 2, then after the topic `u32 properties
//! length (LE) | properties | payload`, the properties being `u8 flags` (bit 0 payload
//! format indicator, 1 expiry, 2 content type, 3 response topic, 4 correlation data,
//! 5 user properties) followed by the present fields in that order: `u8`, `u64 expiry
//! deadline in ms since the Unix epoch (LE)`, then `u16 length (LE) | bytes` for each
//! string or binary field, and `u32 count (LE)` followed by that many key, value pairs
//! of such strings. Both versions are read; a record that does not decode (a later
//! version, damage the checksums missed) is logged, acknowledged and skipped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::config::Overflow;
use super::outbox::{
    MessageProperties, Outbox, OutboxCounters, OutboxError, OutboxRecord, Seq, Stored, StoredRecord,
};
use crate::broker::codec::QoS;
use crate::component::BoxFuture;
use crate::journal::{
    record_cost, Journal, JournalConfig, JournalError, Recovery, DEFAULT_SEGMENT_BYTES,
};

/// Record format without properties.
const VERSION: u8 = 1;
/// Record format with properties.
const VERSION_PROPERTIES: u8 = 2;
/// Bytes before the topic.
const HEADER: usize = 5;
/// Payload bytes one `pending` call reads at most (at least one record is returned).
const READ_BYTES: usize = 1024 * 1024;
/// Newest records the journal keeps in memory for the uplink (`JournalConfig::tail_bytes`):
/// live traffic is sent without reading the disk or waiting for the writer thread (a
/// read there waits for the fsync in progress); a backlog beyond it is read from disk.
const TAIL_BYTES: u64 = 4 * 1024 * 1024;
/// How often a blocked append retries when no acknowledgement woke it (space comes
/// back a whole segment at a time, after the writer deleted it).
const RETRY: Duration = Duration::from_millis(100);

/// Encode `record` (format in the module comment).
pub fn encode(record: &OutboxRecord) -> Vec<u8> {
    let topic = record.topic.as_bytes();
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER + topic.len() + record.payload.len());
    out.push(match record.properties {
        None => VERSION,
        Some(_) => VERSION_PROPERTIES,
    });
    out.push(match record.qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    });
    out.push(u8::from(record.retain));
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(&topic[..usize::from(topic_len)]);
    if let Some(p) = &record.properties {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_properties(p, &mut out);
        let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&record.payload);
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // MQTT strings and binary data are at most 65,535 bytes.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn encode_properties(p: &MessageProperties, out: &mut Vec<u8>) {
    let flags = u8::from(p.payload_format_indicator.is_some())
        | u8::from(p.expires_at_ms.is_some()) << 1
        | u8::from(p.content_type.is_some()) << 2
        | u8::from(p.response_topic.is_some()) << 3
        | u8::from(p.correlation_data.is_some()) << 4
        | u8::from(!p.user_properties.is_empty()) << 5;
    out.push(flags);
    if let Some(f) = p.payload_format_indicator {
        out.push(f);
    }
    if let Some(at) = p.expires_at_ms {
        out.extend_from_slice(&at.to_le_bytes());
    }
    for text in [&p.content_type, &p.response_topic].into_iter().flatten() {
        put_bytes(out, text.as_bytes());
    }
    if let Some(data) = &p.correlation_data {
        put_bytes(out, data);
    }
    if !p.user_properties.is_empty() {
        let count = u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (k, v) in p.user_properties.iter().take(count as usize) {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
    }
}

/// Reads the fields of a record, refusing any length past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("{what} past the end of the record"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u16(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn u32(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u16(what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("{what} is not UTF-8"))
    }
}

fn decode_properties(bytes: &[u8]) -> Result<MessageProperties, String> {
    let mut r = Reader { bytes };
    let flags = r.take(1, "property flags")?[0];
    if flags >> 6 != 0 {
        return Err(format!("unknown property flags {flags:#04x}"));
    }
    let mut p = MessageProperties::default();
    if flags & 1 != 0 {
        p.payload_format_indicator = Some(r.take(1, "payload format indicator")?[0]);
    }
    if flags & 2 != 0 {
        let b = r.take(8, "expiry")?;
        let mut at = [0; 8];
        at.copy_from_slice(b);
        p.expires_at_ms = Some(u64::from_le_bytes(at));
    }
    if flags & 4 != 0 {
        p.content_type = Some(r.string("content type")?);
    }
    if flags & 8 != 0 {
        p.response_topic = Some(r.string("response topic")?);
    }
    if flags & 16 != 0 {
        let len = r.u16("correlation data")?;
        p.correlation_data = Some(Bytes::copy_from_slice(r.take(len, "correlation data")?));
    }
    if flags & 32 != 0 {
        let count = r.u32("user property count")?;
        // Each pair takes at least 4 bytes: a count past that is damage, not a size.
        if count > r.bytes.len() / 4 {
            return Err(format!(
                "{count} user properties past the end of the record"
            ));
        }
        for _ in 0..count {
            let k = r.string("user property name")?;
            let v = r.string("user property value")?;
            p.user_properties.push((k, v));
        }
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the properties", r.bytes.len()));
    }
    Ok(p)
}

/// Decode a record written by [`encode`] (either version).
pub fn decode(bytes: &[u8]) -> Result<OutboxRecord, String> {
    if bytes.len() < HEADER {
        return Err(format!("record of {} bytes is too short", bytes.len()));
    }
    let version = bytes[0];
    if version != VERSION && version != VERSION_PROPERTIES {
        return Err(format!("unknown record version {version}"));
    }
    let qos = match bytes[1] {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        q => return Err(format!("bad qos {q}")),
    };
    let retain = match bytes[2] {
        0 => false,
        1 => true,
        r => return Err(format!("bad retain flag {r}")),
    };
    let mut r = Reader {
        bytes: &bytes[HEADER - 2..],
    };
    let topic_len = r.u16("topic length")?;
    let topic = std::str::from_utf8(r.take(topic_len, "topic")?)
        .map_err(|_| "topic is not UTF-8".to_string())?
        .to_string();
    let properties = if version == VERSION_PROPERTIES {
        let len = r.u32("properties length")?;
        Some(Box::new(decode_properties(r.take(len, "properties")?)?))
    } else {
        None
    };
    Ok(OutboxRecord {
        topic,
        payload: Bytes::copy_from_slice(r.bytes),
        qos,
        retain,
        properties,
    })
}

/// The journal directory of bridge `name`.
pub fn journal_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("bridge").join(name)
}

/// An [`Outbox`] on the disk journal; clones share it.
#[derive(Debug, Clone)]
pub struct JournalOutbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    max_bytes: u64,
    overflow: Overflow,
    room: Notify,
    blocked: AtomicU64,
    /// Set while appends wait for room (`block-publishers`), so that a full journal is
    /// logged once when it fills and once when it has room again, not per message.
    full: std::sync::atomic::AtomicBool,
    name: String,
}

impl JournalOutbox {
    /// Open (or create) the journal in `dir` with budget `max_bytes` and policy
    /// `overflow`; the recovery report says what was pending and what was lost.
    pub async fn open(
        dir: &Path,
        name: &str,
        max_bytes: u64,
        overflow: Overflow,
    ) -> Result<(JournalOutbox, Recovery), JournalError> {
        let min_segment = record_cost(0) * 4;
        let config = JournalConfig {
            segment_bytes: (max_bytes / 4).clamp(min_segment, DEFAULT_SEGMENT_BYTES),
            max_bytes,
            tail_bytes: TAIL_BYTES.min(max_bytes / 4) as usize,
            ..JournalConfig::default()
        };
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            return Err(JournalError::Io {
                dir: dir.to_path_buf(),
                action: "create",
                path: dir.to_path_buf(),
                source: Arc::new(e),
            });
        }
        let (journal, recovery) = Journal::open(dir, config).await?;
        Ok((
            JournalOutbox {
                inner: Arc::new(Inner {
                    journal,
                    max_bytes,
                    overflow,
                    room: Notify::new(),
                    blocked: AtomicU64::new(0),
                    full: std::sync::atomic::AtomicBool::new(false),
                    name: name.to_string(),
                }),
            },
            recovery,
        ))
    }

    /// Sync and close the journal (shutdown).
    pub async fn close(&self) -> Result<(), JournalError> {
        self.inner.journal.close().await
    }
}

impl Outbox for JournalOutbox {
    fn enqueue(&self, record: &OutboxRecord) -> BoxFuture<Result<Stored, OutboxError>> {
        let inner = self.inner.clone();
        let bytes = encode(record);
        Box::pin(async move {
            let cost = record_cost(bytes.len());
            if cost > inner.max_bytes {
                return Err(OutboxError::TooLarge(cost));
            }
            let mut counted = false;
            // The wait for room is registered only once the journal was found full (a
            // waiter registered and removed per message cost two locks of the Notify);
            // the append is tried again after registering, so no `ack` is missed.
            let mut room = None;
            loop {
                match inner.journal.append(&bytes) {
                    Ok(durable) => {
                        if counted && inner.full.swap(false, Ordering::Relaxed) {
                            info!(bridge = %inner.name, "Bridge journal has room again; held local acknowledgements are being released.");
                        }
                        return Ok(Box::pin(async move {
                            durable
                                .await
                                .map_err(|e| OutboxError::Storage(e.to_string()))
                        }) as Stored);
                    }
                    Err(JournalError::Full { .. }) => {}
                    Err(JournalError::TooLarge { .. }) => return Err(OutboxError::TooLarge(cost)),
                    Err(e) => return Err(OutboxError::Storage(e.to_string())),
                }
                match inner.overflow {
                    Overflow::RefuseNew => return Err(OutboxError::Full),
                    Overflow::DropOldest => {
                        let report = inner
                            .journal
                            .drop_oldest(cost)
                            .await
                            .map_err(|e| OutboxError::Storage(e.to_string()))?;
                        if report.records > 0 || report.freed_bytes > 0 {
                            continue;
                        }
                        // Nothing droppable (appends in flight hold the space): wait.
                    }
                    Overflow::BlockPublishers => {
                        if !counted {
                            counted = true;
                            inner.blocked.fetch_add(1, Ordering::Relaxed);
                            // A full journal was silent before: logged once per episode.
                            if !inner.full.swap(true, Ordering::Relaxed) {
                                warn!(bridge = %inner.name, max_bytes = inner.max_bytes, "Bridge journal full (overflow = block-publishers): local publishers' acknowledgements are held until the cloud acknowledges stored messages.");
                            }
                        }
                    }
                }
                let Some(waiting) = room.as_mut() else {
                    let mut waiting = Box::pin(inner.room.notified());
                    waiting.as_mut().enable();
                    room = Some(waiting);
                    continue;
                };
                tokio::select! {
                    _ = waiting.as_mut() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
                room = None;
            }
        })
    }

    fn ack(&self, seq: Seq) {
        if let Err(e) = self.inner.journal.ack(seq) {
            warn!(bridge = %self.inner.name, reason = %e, "Bridge journal: acknowledgement not stored.");
        }
        self.inner.room.notify_waiters();
    }

    /// One command (one wake-up of the writer thread) for them all.
    fn ack_many(&self, seqs: Vec<Seq>) {
        if seqs.is_empty() {
            return;
        }
        if let Err(e) = self.inner.journal.ack_many(seqs) {
            warn!(bridge = %self.inner.name, reason = %e, "Bridge journal: acknowledgements not stored.");
        }
        self.inner.room.notify_waiters();
    }

    fn pending(&self, after: Option<Seq>, limit: usize) -> BoxFuture<Vec<StoredRecord>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if limit == 0 {
                return Vec::new();
            }
            let from = after.map_or(0, |s| s + 1);
            let records = match inner.journal.read(from, limit, READ_BYTES).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(bridge = %inner.name, reason = %e, "Bridge journal: cannot read pending records.");
                    return Vec::new();
                }
            };
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                match decode(&r.payload) {
                    Ok(record) => out.push(StoredRecord { seq: r.seq, record }),
                    Err(reason) => {
                        warn!(bridge = %inner.name, seq = r.seq, %reason, "Bridge journal: undecodable record skipped (acknowledged).");
                        let _ = inner.journal.ack(r.seq);
                    }
                }
            }
            out
        })
    }

    fn counters(&self) -> OutboxCounters {
        let c = self.inner.journal.counters();
        OutboxCounters {
            queued_messages: c.pending_records,
            queued_bytes: c.pending_bytes,
            oldest_age: c.oldest_pending_age,
            appended: c.appended,
            acked: c.acked,
            dropped_overflow: c.dropped,
            blocked: self.inner.blocked.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bridge::outbox::tests::record;

    fn topics(records: &[StoredRecord]) -> Vec<String> {
        records.iter().map(|r| r.record.topic.clone()).collect()
    }

    #[test]
    fn records_round_trip() {
        for r in [
            record("a/b", "payload"),
            OutboxRecord {
                topic: "ü/+x".into(),
                payload: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: None,
            },
            OutboxRecord {
                properties: Some(Box::new(MessageProperties {
                    payload_format_indicator: Some(1),
                    expires_at_ms: Some(1_800_000_000_123),
                    content_type: Some("application/json".into()),
                    response_topic: Some("site/gw1/cmd/replies/ü".into()),
                    correlation_data: Some(Bytes::from_static(&[0, 1, 255])),
                    user_properties: vec![("a".into(), "1".into()), ("a".into(), "".into())],
                })),
                ..record("a/b", "with properties")
            },
            OutboxRecord {
                properties: Some(Box::new(MessageProperties::default())),
                ..record("e", "")
            },
            record("", "x"),
        ] {
            let bytes = encode(&r);
            let version = if r.properties.is_some() {
                VERSION_PROPERTIES
            } else {
                VERSION
            };
            assert_eq!(bytes[0], version);
            assert_eq!(decode(&bytes).expect("decodes"), r);
            // Every truncation is refused or decodes to a shorter payload, never panics.
            for cut in 0..bytes.len() {
                if let Ok(d) = decode(&bytes[..cut]) {
                    assert_eq!(d.topic, r.topic);
                    assert_eq!(d.properties, r.properties);
                }
            }
        }
        // A version 1 record as written before properties were carried still opens.
        let v1 = [1, 1, 0, 3, 0, b'a', b'/', b'b', b'h', b'i'];
        let d = decode(&v1).expect("version 1 decodes");
        assert_eq!(
            (d.topic.as_str(), &d.payload[..], d.properties),
            ("a/b", &b"hi"[..], None)
        );
        assert!(decode(&[]).is_err());
        assert!(decode(&[3, 1, 0, 0, 0]).is_err(), "unknown version");
        assert!(
            decode(&[2, 1, 0, 0, 0, 1, 0, 0, 0, 0x40]).is_err(),
            "unknown property flag"
        );
        assert!(
            decode(&[1, 1, 0, 9, 0, b'a']).is_err(),
            "topic past the end"
        );
        assert!(decode(&[1, 3, 0, 0, 0]).is_err(), "bad qos");
    }

    #[tokio::test]
    async fn records_survive_reopen_in_order_until_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_dir(dir.path(), "cloud");
        let (o, rec) = JournalOutbox::open(&path, "cloud", 1 << 20, Overflow::BlockPublishers)
            .await
            .expect("open");
        assert!(rec.pending.is_empty());
        let a = o.append(record("a", "1")).await.expect("stored");
        let b = o.append(record("b", "2")).await.expect("stored");
        let c = o.append(record("c", "3")).await.expect("stored");
        assert!(a < b && b < c);
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "b", "c"]);
        assert_eq!(topics(&o.pending(Some(a), 1).await), ["b"]);
        o.ack(b);
        o.ack(b);
        assert_eq!(topics(&o.pending(Some(a), 10).await), ["c"]);
        // The writer thread counts acks; a sync is served after them.
        o.inner.journal.sync().await.expect("sync");
        let n = o.counters();
        assert_eq!((n.queued_messages, n.appended, n.acked), (2, 3, 1));
        o.close().await.expect("close");
        drop(o);
        let (o, rec) = JournalOutbox::open(&path, "cloud", 1 << 20, Overflow::BlockPublishers)
            .await
            .expect("reopen");
        assert_eq!(rec.pending.len(), 2);
        assert_eq!(rec.lost.records, 0);
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "c"]);
        let d = o.append(record("d", "4")).await.expect("stored");
        assert!(d > c);
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "c", "d"]);
    }

    #[tokio::test]
    async fn records_acknowledged_together_are_forgotten_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_dir(dir.path(), "cloud");
        let (o, _) = JournalOutbox::open(&path, "cloud", 1 << 20, Overflow::BlockPublishers)
            .await
            .expect("open");
        let a = o.append(record("a", "1")).await.expect("stored");
        let b = o.append(record("b", "2")).await.expect("stored");
        let c = o.append(record("c", "3")).await.expect("stored");
        o.ack_many(Vec::new());
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "b", "c"]);
        o.ack_many(vec![a, c]);
        assert_eq!(topics(&o.pending(None, 10).await), ["b"]);
        o.inner.journal.sync().await.expect("sync");
        let n = o.counters();
        assert_eq!((n.queued_messages, n.acked), (1, 2));
        o.close().await.expect("close");
        drop(o);
        let (o, rec) = JournalOutbox::open(&path, "cloud", 1 << 20, Overflow::BlockPublishers)
            .await
            .expect("reopen");
        assert_eq!(rec.pending.len(), 1);
        let left = o.pending(None, 10).await;
        assert_eq!(topics(&left), ["b"]);
        assert_eq!(left[0].seq, b);
    }

    #[tokio::test]
    async fn overflow_policies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 65_536;
        let big: &'static str = Box::leak("x".repeat(4000).into_boxed_str());
        // refuse-new: Full once the budget is used.
        let (o, _) = JournalOutbox::open(&dir.path().join("r"), "r", max, Overflow::RefuseNew)
            .await
            .expect("open");
        let mut refused = false;
        for _ in 0..40 {
            match o.append(record("t", big)).await {
                Ok(_) => {}
                Err(OutboxError::Full) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(refused, "refuse-new refuses when full");
        // drop-oldest: appends keep succeeding, the oldest go.
        let (o, _) = JournalOutbox::open(&dir.path().join("d"), "d", max, Overflow::DropOldest)
            .await
            .expect("open");
        for _ in 0..40 {
            o.append(record("t", big)).await.expect("stored");
        }
        assert!(o.counters().dropped_overflow > 0);
        // block-publishers: waits until acks free a segment.
        let (o, _) =
            JournalOutbox::open(&dir.path().join("b"), "b", max, Overflow::BlockPublishers)
                .await
                .expect("open");
        let mut seqs = Vec::new();
        let waiting = loop {
            let f = o.append(record("t", big));
            match tokio::time::timeout(Duration::from_millis(300), f).await {
                Ok(r) => seqs.push(r.expect("stored")),
                Err(_) => break o.append(record("t", big)),
            }
            assert!(seqs.len() < 40, "block-publishers must block when full");
        };
        let waiting = tokio::spawn(waiting);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        assert!(o.counters().blocked >= 1);
        for s in seqs {
            o.ack(s);
        }
        waiting.await.expect("task").expect("stored after the acks");
    }
}
