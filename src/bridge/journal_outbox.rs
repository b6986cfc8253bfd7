//! [`JournalOutbox`]: the bridge's [`Outbox`] on the on-disk journal (`crate::journal`),
//! in `<broker.data_dir>/bridge/<name>/`. An append resolves once the record is fsynced
//! (`SyncMode::Batch`), so a message whose PUBACK was released survives an uplink
//! outage, a `kill -9` and a power cut; acknowledgements are fsynced lazily, so a crash
//! can bring back acknowledged records (duplicates, which QoS 1 allows).
//!
//! Record encoding (version 1): `u8 version (1) | u8 qos | u8 retain (0/1) |
//! u16 topic length (LE) | topic (UTF-8) | payload`. A record that does not decode (a
//! later version, damage the checksums missed) is logged, acknowledged and skipped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::config::Overflow;
use super::outbox::{Outbox, OutboxCounters, OutboxError, OutboxRecord, Seq, StoredRecord};
use crate::broker::codec::QoS;
use crate::component::BoxFuture;
use crate::journal::{
    record_cost, Journal, JournalConfig, JournalError, Recovery, DEFAULT_SEGMENT_BYTES,
};

/// Current record format version.
const VERSION: u8 = 1;
/// Bytes before the topic.
const HEADER: usize = 5;
/// Payload bytes one `pending` call reads at most (at least one record is returned).
const READ_BYTES: usize = 1024 * 1024;
/// How often a blocked append retries when no acknowledgement woke it (space comes
/// back a whole segment at a time, after the writer deleted it).
const RETRY: Duration = Duration::from_millis(100);

/// Encode `record` (format in the module comment).
pub fn encode(record: &OutboxRecord) -> Vec<u8> {
    let topic = record.topic.as_bytes();
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER + topic.len() + record.payload.len());
    out.push(VERSION);
    out.push(match record.qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    });
    out.push(u8::from(record.retain));
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(&topic[..usize::from(topic_len)]);
    out.extend_from_slice(&record.payload);
    out
}

/// Decode a record written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<OutboxRecord, String> {
    if bytes.len() < HEADER {
        return Err(format!("record of {} bytes is too short", bytes.len()));
    }
    if bytes[0] != VERSION {
        return Err(format!("unknown record version {}", bytes[0]));
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
    let topic_len = usize::from(u16::from_le_bytes([bytes[3], bytes[4]]));
    let rest = &bytes[HEADER..];
    if rest.len() < topic_len {
        return Err(format!(
            "topic length {topic_len} past the end of the record"
        ));
    }
    let topic = std::str::from_utf8(&rest[..topic_len])
        .map_err(|_| "topic is not UTF-8".to_string())?
        .to_string();
    Ok(OutboxRecord {
        topic,
        payload: Bytes::copy_from_slice(&rest[topic_len..]),
        qos,
        retain,
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
    fn append(&self, record: OutboxRecord) -> BoxFuture<Result<Seq, OutboxError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let bytes = encode(&record);
            let cost = record_cost(bytes.len());
            if cost > inner.max_bytes {
                return Err(OutboxError::TooLarge(cost));
            }
            let mut counted = false;
            loop {
                let room = inner.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                match inner.journal.append(&bytes) {
                    Ok(durable) => {
                        if counted && inner.full.swap(false, Ordering::Relaxed) {
                            info!(bridge = %inner.name, "Bridge journal has room again; held local acknowledgements are being released.");
                        }
                        return durable
                            .await
                            .map_err(|e| OutboxError::Storage(e.to_string()));
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
                tokio::select! {
                    _ = room => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        })
    }

    fn ack(&self, seq: Seq) {
        if let Err(e) = self.inner.journal.ack(seq) {
            warn!(bridge = %self.inner.name, reason = %e, "Bridge journal: acknowledgement not stored.");
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
            },
            record("", "x"),
        ] {
            let bytes = encode(&r);
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode(&bytes).expect("decodes"), r);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 1, 0, 0, 0]).is_err(), "unknown version");
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
