//! The outbox: where a bridge keeps outgoing QoS 1/2 messages between the local
//! acknowledgement and the cloud's. [`Outbox`] is the seam: `append` resolves once the
//! record is stored as durably as the implementation can (the local publisher's
//! PUBACK is released only then), `ack` forgets a record after the cloud's PUBACK or
//! PUBCOMP, `pending` replays what is left in order. [`MemoryOutbox`] keeps records in
//! memory (they survive an outage of the cloud, not a restart of tollgate; used by unit
//! tests and by disabled bridges); [`super::journal_outbox::JournalOutbox`]
//! implements the same trait on the on-disk journal (`src/journal`), the default. An outbox never
//! holds more than `max_bytes` and applies the configured overflow policy, counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::Overflow;
use crate::broker::codec::QoS;
use crate::component::BoxFuture;

/// Position of a record, increasing in append order.
pub type Seq = u64;

/// One outgoing message as it will be published upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Remote topic (prefixes already mapped).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS upstream (1 or 2).
    pub qos: QoS,
    /// RETAIN upstream.
    pub retain: bool,
    /// MQTT 5 properties carried across the bridge (`None` for most messages).
    pub properties: Option<Box<MessageProperties>>,
}

/// The MQTT 5 PUBLISH properties a bridge carries (topic aliases and subscription
/// identifiers belong to one connection and are not carried).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    /// Payload Format Indicator (1: UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// When the message expires, in milliseconds since the Unix epoch (from the Message
    /// Expiry Interval at intake; the remaining interval is sent).
    pub expires_at_ms: Option<u64>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic, already mapped to the far side.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Bytes of the variable-length fields (for the outbox's accounting).
    pub fn size(&self) -> usize {
        self.content_type.as_ref().map_or(0, String::len)
            + self.response_topic.as_ref().map_or(0, String::len)
            + self.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 16
    }
}

impl OutboxRecord {
    /// Bytes it counts against `max_bytes` (topic, payload, properties, and a fixed
    /// overhead).
    pub fn size(&self) -> u64 {
        let properties = self.properties.as_ref().map_or(0, |p| p.size());
        (self.topic.len() + self.payload.len() + properties + 16) as u64
    }
}

/// A stored record with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Its position.
    pub seq: Seq,
    /// The message.
    pub record: OutboxRecord,
}

/// Why `append` did not store a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// Full, with the `refuse-new` policy.
    #[error("the bridge journal is full (journal.max_bytes reached, overflow = refuse-new)")]
    Full,
    /// Larger than the whole outbox.
    #[error("the message ({0} bytes) is larger than journal.max_bytes")]
    TooLarge(u64),
    /// The storage failed (disk error); nothing was stored.
    #[error("the bridge journal cannot store: {0}")]
    Storage(String),
}

/// What an outbox holds and has done, for `$SYS` and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounters {
    /// Records stored and not yet acknowledged upstream.
    pub queued_messages: u64,
    /// Their bytes ([`OutboxRecord::size`]).
    pub queued_bytes: u64,
    /// Age of the oldest stored record.
    pub oldest_age: Option<Duration>,
    /// Records appended since start.
    pub appended: u64,
    /// Records acknowledged upstream since start.
    pub acked: u64,
    /// Records discarded by the `drop-oldest` policy.
    pub dropped_overflow: u64,
    /// Appends that had to wait for room (`block-publishers`).
    pub blocked: u64,
}

/// What resolves once an accepted record is stored durably (see [`Outbox::enqueue`]).
pub type Stored = BoxFuture<Result<Seq, OutboxError>>;

/// The store-and-forward seam of a bridge.
pub trait Outbox: Send + Sync + 'static {
    /// Store `record`, in two steps: resolves once the outbox has accepted it (its place
    /// in the order fixed) to what resolves to its sequence number once it is stored
    /// (durably, for an on-disk implementation). With `block-publishers` a full outbox
    /// accepts only when room is made by `ack`; the caller stops waiting by dropping
    /// the future. Accepting the next record while earlier ones are still being
    /// written is how many records share one fsync (group commit). Borrowed: the
    /// journal only encodes it, and the caller keeps it for a retry after a storage
    /// error (a copy per message before).
    fn enqueue(&self, record: &OutboxRecord) -> BoxFuture<Result<Stored, OutboxError>>;

    /// [`Outbox::enqueue`] and wait until stored.
    fn append(&self, record: OutboxRecord) -> BoxFuture<Result<Seq, OutboxError>> {
        let accepted = self.enqueue(&record);
        Box::pin(async move { accepted.await?.await })
    }

    /// The cloud acknowledged record `seq`: forget it (unknown numbers are ignored).
    fn ack(&self, seq: Seq);

    /// [`Outbox::ack`] for several records at once (those of one turn of the uplink).
    fn ack_many(&self, seqs: Vec<Seq>) {
        for seq in seqs {
            self.ack(seq);
        }
    }

    /// Up to `limit` stored records after `after` (from the first when `None`), in order
    /// (async: the journal reads them on its writer thread).
    fn pending(&self, after: Option<Seq>, limit: usize) -> BoxFuture<Vec<StoredRecord>>;

    /// Current counters.
    fn counters(&self) -> OutboxCounters;
}

/// An [`Outbox`] in memory, bounded by bytes.
#[derive(Debug, Clone)]
pub struct MemoryOutbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_bytes: u64,
    overflow: Overflow,
    state: Mutex<State>,
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    records: VecDeque<(StoredRecord, Instant)>,
    bytes: u64,
    next_seq: Seq,
    counters: OutboxCounters,
}

impl MemoryOutbox {
    /// An empty outbox of at most `max_bytes` with policy `overflow`.
    pub fn new(max_bytes: u64, overflow: Overflow) -> Self {
        MemoryOutbox {
            inner: Arc::new(Inner {
                max_bytes,
                overflow,
                state: Mutex::new(State {
                    next_seq: 1,
                    ..State::default()
                }),
                room: Notify::new(),
            }),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent (single pushes and pops).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store now if the policy allows; `None`: wait for room.
    fn try_append(&self, record: &OutboxRecord) -> Option<Result<Seq, OutboxError>> {
        let size = record.size();
        if size > self.max_bytes {
            return Some(Err(OutboxError::TooLarge(size)));
        }
        let mut s = self.lock();
        while s.bytes + size > self.max_bytes {
            match self.overflow {
                Overflow::DropOldest => {
                    let Some((old, _)) = s.records.pop_front() else {
                        break;
                    };
                    s.bytes -= old.record.size();
                    s.counters.dropped_overflow += 1;
                }
                Overflow::RefuseNew => return Some(Err(OutboxError::Full)),
                Overflow::BlockPublishers => return None,
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.bytes += size;
        s.counters.appended += 1;
        s.records.push_back((
            StoredRecord {
                seq,
                record: record.clone(),
            },
            Instant::now(),
        ));
        Some(Ok(seq))
    }
}

impl Outbox for MemoryOutbox {
    fn enqueue(&self, record: &OutboxRecord) -> BoxFuture<Result<Stored, OutboxError>> {
        let inner = self.inner.clone();
        let record = record.clone();
        Box::pin(async move {
            let mut counted = false;
            loop {
                let room = inner.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if let Some(result) = inner.try_append(&record) {
                    // In memory: stored as soon as accepted.
                    return result.map(|seq| -> Stored { Box::pin(std::future::ready(Ok(seq))) });
                }
                if !counted {
                    counted = true;
                    inner.lock().counters.blocked += 1;
                }
                room.await;
            }
        })
    }

    fn ack(&self, seq: Seq) {
        let mut s = self.inner.lock();
        if let Ok(i) = s.records.binary_search_by_key(&seq, |(r, _)| r.seq) {
            if let Some((r, _)) = s.records.remove(i) {
                s.bytes -= r.record.size();
                s.counters.acked += 1;
            }
            drop(s);
            self.inner.room.notify_waiters();
        }
    }

    fn pending(&self, after: Option<Seq>, limit: usize) -> BoxFuture<Vec<StoredRecord>> {
        let s = self.inner.lock();
        let start = match after {
            None => 0,
            Some(after) => s.records.partition_point(|(r, _)| r.seq <= after),
        };
        let records: Vec<StoredRecord> = s
            .records
            .iter()
            .skip(start)
            .take(limit)
            .map(|(r, _)| r.clone())
            .collect();
        Box::pin(std::future::ready(records))
    }

    fn counters(&self) -> OutboxCounters {
        let s = self.inner.lock();
        OutboxCounters {
            queued_messages: s.records.len() as u64,
            queued_bytes: s.bytes,
            oldest_age: s.records.front().map(|(_, at)| at.elapsed()),
            ..s.counters.clone()
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A QoS 1 record (shared with the journal outbox's tests).
    pub(in crate::bridge) fn record(topic: &str, payload: &'static str) -> OutboxRecord {
        OutboxRecord {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
        }
    }

    fn topics(records: &[StoredRecord]) -> Vec<&str> {
        records.iter().map(|r| r.record.topic.as_str()).collect()
    }

    #[tokio::test]
    async fn records_replay_in_order_until_acked() {
        let o = MemoryOutbox::new(1 << 20, Overflow::BlockPublishers);
        let a = o.append(record("a", "1")).await.expect("stored");
        let b = o.append(record("b", "2")).await.expect("stored");
        let c = o.append(record("c", "3")).await.expect("stored");
        assert!(a < b && b < c);
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "b", "c"]);
        assert_eq!(topics(&o.pending(Some(a), 1).await), ["b"]);
        o.ack(b);
        o.ack(b);
        assert_eq!(topics(&o.pending(None, 10).await), ["a", "c"]);
        assert_eq!(topics(&o.pending(Some(a), 10).await), ["c"]);
        let n = o.counters();
        assert_eq!((n.queued_messages, n.appended, n.acked), (2, 3, 1));
        assert_eq!(n.queued_bytes, 2 * record("a", "1").size());
    }

    #[tokio::test]
    async fn drop_oldest_makes_room_and_counts() {
        let size = record("a", "1").size();
        let o = MemoryOutbox::new(size * 2, Overflow::DropOldest);
        for t in ["a", "b", "c"] {
            o.append(record(t, "1")).await.expect("stored");
        }
        assert_eq!(topics(&o.pending(None, 10).await), ["b", "c"]);
        assert_eq!(o.counters().dropped_overflow, 1);
    }

    #[tokio::test]
    async fn block_publishers_waits_for_an_ack() {
        let size = record("a", "1").size();
        let o = MemoryOutbox::new(size, Overflow::BlockPublishers);
        let first = o.append(record("a", "1")).await.expect("stored");
        let waiting = tokio::spawn({
            let o = o.clone();
            async move { o.append(record("b", "1")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a full outbox holds the append back"
        );
        assert_eq!(o.counters().blocked, 1);
        o.ack(first);
        let second = waiting.await.expect("task").expect("stored after the ack");
        assert!(second > first);
        assert_eq!(topics(&o.pending(None, 10).await), ["b"]);
    }

    #[tokio::test]
    async fn refuse_new_refuses_when_full_and_stores_again_after_an_ack() {
        let size = record("a", "1").size();
        let o = MemoryOutbox::new(size, Overflow::RefuseNew);
        let first = o.append(record("a", "1")).await.expect("stored");
        assert_eq!(o.append(record("b", "1")).await, Err(OutboxError::Full));
        o.ack(first);
        o.append(record("c", "1")).await.expect("room again");
        assert_eq!(topics(&o.pending(None, 10).await), ["c"]);
    }

    #[tokio::test]
    async fn a_record_larger_than_the_outbox_is_refused() {
        let o = MemoryOutbox::new(10, Overflow::BlockPublishers);
        assert!(matches!(
            o.append(record("topic", "payload")).await,
            Err(OutboxError::TooLarge(_))
        ));
    }
}
