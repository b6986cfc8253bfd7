//! The durable journal: an append-only log of opaque records in segment files, shared by
//! the bridge (QoS 1/2 messages stored before the local publisher is acknowledged,
//! removed when the cloud acknowledged them) and later by durable broker state.
//!
//! It owns one directory: segment files `<first seq>.seg` holding checksummed record
//! frames, and beside each an ack file `<first seq>.ack` listing acknowledged records
//! (format in `format.rs`, rules in docs/journal.md). All file I/O and every fsync run on
//! one dedicated writer thread; the async handle [`Journal`] only encodes records, sends
//! them over a channel and waits on oneshot replies, so it never blocks the reactor.
//!
//! It must never report a record durable before it is (per [`SyncMode`]), never load a
//! record that was not written whole, never drop a pending record without being asked
//! ([`Journal::drop_oldest`]), and never use more than `max_bytes` of disk. It knows
//! nothing of MQTT: what a record means is the caller's business.

mod format;
mod recover;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

pub use format::{ACK_ENTRY_BYTES, RECORD_HEADER_BYTES};

use writer::Command;

/// Default size of one segment file; space is reclaimed a whole segment at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Default disk budget of a journal.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Largest payload of one record.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// When an append is reported durable, and what survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One fsync per append, reported after it: the slowest, the baseline.
    Always,
    /// Group commit: appends that arrive while a sync runs share the next one; each is
    /// reported after the fsync that covers it. Survives power cuts like `Always`.
    #[default]
    Batch,
    /// Reported once written to the kernel; fsync every interval. Survives a process
    /// crash (`kill -9`); a power cut can lose the appends of the last interval
    /// (what is loaded is still a prefix).
    Interval(Duration),
}

/// How a journal is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// When appends are reported durable.
    pub sync: SyncMode,
    /// Size at which the writer starts a new segment (a larger record gets one of its own).
    pub segment_bytes: u64,
    /// Disk budget: segment files plus ack files never exceed it; an append that would
    /// is refused with [`JournalError::Full`].
    pub max_bytes: u64,
    /// How often written acknowledgements are fsynced; a power cut loses at most this
    /// much of them, which only means duplicates after restart (QoS 1 allows them).
    pub ack_sync_interval: Duration,
    /// Most bytes one group commit writes before its fsync, bounding its latency.
    pub max_batch_bytes: usize,
    /// Bytes of the newest pending records kept in memory (0: none), so that a reader
    /// following the writer (the bridge's uplink) gets them from [`Journal::read`]
    /// without a disk read and without waiting for the writer thread; older records
    /// are read from disk.
    pub tail_bytes: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            sync: SyncMode::Batch,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            ack_sync_interval: Duration::from_secs(1),
            max_batch_bytes: 4 * 1024 * 1024,
            tail_bytes: 0,
        }
    }
}

/// Everything that can go wrong in the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed; appends it covered are not stored.
    #[error("journal {}: cannot {action} {}: {source}; check that the directory is writable by the service user and the disk is not full", dir.display(), path.display())]
    Io {
        /// The journal directory.
        dir: PathBuf,
        /// What the writer was doing (`write`, `fsync`, `create`, ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The error from the OS (shared by every append the operation covered).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The disk budget is used up; the caller's overflow policy decides.
    #[error("journal {}: full: {used} of max_bytes {max_bytes} bytes in use and the record needs {needed}; drop the oldest records (drop_oldest), wait for acknowledgements or raise max_bytes", dir.display())]
    Full {
        /// The journal directory.
        dir: PathBuf,
        /// Bytes the record needs (frame plus its ack entry).
        needed: u64,
        /// Bytes in use or reserved.
        used: u64,
        /// The budget.
        max_bytes: u64,
    },
    /// A record larger than any journal can hold.
    #[error("journal {}: a record of {len} bytes is larger than the {max} bytes a record may have; split it or reject it", dir.display())]
    TooLarge {
        /// The journal directory.
        dir: PathBuf,
        /// Its length.
        len: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The configuration cannot work.
    #[error("journal {}: invalid configuration: {reason}", dir.display())]
    Config {
        /// The journal directory.
        dir: PathBuf,
        /// What is wrong and what to set instead.
        reason: String,
    },
    /// Another process, or a previous handle in this process, has the journal open.
    #[error("journal {}: {reason}", dir.display())]
    Locked {
        /// The journal directory.
        dir: PathBuf,
        /// Who holds it and what to do.
        reason: String,
    },
    /// The writer thread is gone (closed, or stopped after a panic).
    #[error("journal {}: closed; the writer thread has stopped, so nothing more can be stored (reopen the journal)", dir.display())]
    Closed {
        /// The journal directory.
        dir: PathBuf,
    },
}

/// What recovery found wrong at open; the caller logs it and counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Records dropped as damaged or torn (plus intact-looking ones after damage in the
    /// same segment); a zero-filled tail counts no record.
    pub records: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// Each damaged segment, with where its intact part ends and what was wrong there.
    pub segments: Vec<SegmentLoss>,
}

/// Damage in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLoss {
    /// The segment file.
    pub path: PathBuf,
    /// Length of its intact prefix.
    pub valid_len: u64,
    /// Bytes after it.
    pub bytes: u64,
    /// Records lost with them.
    pub records: u64,
    /// What was found at the cut: `zero-filled tail`, `torn header`, `torn body`,
    /// `bad header`, `bad payload`.
    pub damage: &'static str,
}

/// A pending record as listed at open: enough to plan the replay without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRecord {
    /// Sequence number.
    pub seq: u64,
    /// When it was appended.
    pub appended_at: SystemTime,
    /// Payload bytes.
    pub len: u32,
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged records in append order.
    pub pending: Vec<PendingRecord>,
    /// What was damaged and dropped.
    pub lost: LossReport,
}

/// A record read back for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, to acknowledge it with.
    pub seq: u64,
    /// When it was appended.
    pub appended_at: SystemTime,
    /// The bytes appended.
    pub payload: Vec<u8>,
}

/// What [`Journal::drop_oldest`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropReport {
    /// Pending records dropped (counted in [`JournalCounters::dropped`]).
    pub records: u64,
    /// Their frame bytes.
    pub bytes: u64,
    /// Disk budget freed by deleting whole segments.
    pub freed_bytes: u64,
}

/// A snapshot of the journal's counters (for `$SYS` and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalCounters {
    /// Records appended durably and not yet acknowledged or dropped.
    pub pending_records: u64,
    /// Their payload bytes.
    pub pending_bytes: u64,
    /// Age of the oldest pending record (by its stored append time).
    pub oldest_pending_age: Option<Duration>,
    /// Appends reported durable since open.
    pub appended: u64,
    /// Appends that failed with an I/O error since open.
    pub append_errors: u64,
    /// Appends refused as [`JournalError::Full`] since open.
    pub refused_full: u64,
    /// Records acknowledged since open.
    pub acked: u64,
    /// Records dropped by [`Journal::drop_oldest`] since open.
    pub dropped: u64,
    /// Records lost to damage found at open.
    pub lost_at_open: u64,
    /// Bytes lost to damage found at open.
    pub lost_bytes_at_open: u64,
    /// Data fsyncs performed since open.
    pub syncs: u64,
    /// Bytes of segment and ack files on disk.
    pub disk_bytes: u64,
    /// Bytes in use or reserved against `max_bytes`; always at least `disk_bytes`.
    pub used_bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Segment files on disk.
    pub segments: u64,
}

/// Counters and the disk budget, shared by the handle and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// Whether the in-memory tail is on ([`JournalConfig::tail_bytes`] > 0): without
    /// it, acks and reads skip its lock.
    has_tail: bool,
    /// Bytes in use or reserved: every record's frame plus one ack entry from the
    /// moment its append is accepted until its segment is deleted.
    used: AtomicU64,
    pending_records: AtomicU64,
    pending_bytes: AtomicU64,
    /// Append time (ms) of the oldest pending record, 0 when none is pending.
    oldest_pending_ms: AtomicU64,
    appended: AtomicU64,
    append_errors: AtomicU64,
    refused_full: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    lost_records: AtomicU64,
    lost_bytes: AtomicU64,
    syncs: AtomicU64,
    disk_bytes: AtomicU64,
    segments: AtomicU64,
    /// The newest pending records ([`JournalConfig::tail_bytes`]), kept by the writer.
    tail: Mutex<Tail>,
    /// Acknowledgements not yet taken by the writer: one command wakes it for all
    /// those queued before it runs (an ack per cloud PUBACK would be a wake-up each).
    queued_acks: Mutex<QueuedAcks>,
    /// The writer is blocked on its channel: only then does a queued acknowledgement
    /// need a wake-up (a busy writer takes the queue with its next round, an idle one
    /// checks it after setting this; see [`Journal::queue_acks`]).
    writer_waiting: std::sync::atomic::AtomicBool,
    /// Every append with a lower sequence number was sent to the writer.
    assigned: AtomicU64,
    /// Every append with a lower sequence number was resolved: reported durable (per
    /// the [`SyncMode`]) or failed.
    resolved: AtomicU64,
}

/// Acknowledgements queued outside the command channel. They may reach the writer
/// before appends sent earlier (a wake-up already in the channel takes them all), so
/// they carry `barrier`: the writer applies them only once it took every append below
/// it. A caller that writes a record again and then acknowledges the old one (the
/// broker's compaction) must never find the old one gone, its segment deleted, before
/// the new one is on disk.
#[derive(Debug, Default)]
struct QueuedAcks {
    seqs: Vec<u64>,
    /// `assigned` when the last of them was queued.
    barrier: u64,
}

/// The newest durable pending records, in memory: every durable pending record with
/// `seq >= start` is in `records`, in order, and nothing else.
#[derive(Debug, Default)]
struct Tail {
    /// Budget in payload bytes (0: disabled; `start` then never moves).
    cap: usize,
    /// Reads from here on are answered from memory.
    start: u64,
    records: std::collections::VecDeque<TailRecord>,
    bytes: usize,
}

#[derive(Debug)]
struct TailRecord {
    seq: u64,
    appended_ms: u64,
    /// The record's frame (header and payload), as written.
    frame: Vec<u8>,
}

impl Tail {
    /// A record just made durable (in sequence order): kept, evicting the oldest to
    /// stay within the budget (reads before the evicted ones go to disk).
    fn push(&mut self, seq: u64, appended_ms: u64, frame: Vec<u8>) {
        let len = frame.len() - RECORD_HEADER_BYTES;
        if len > self.cap {
            self.records.clear();
            self.bytes = 0;
            self.start = seq + 1;
            return;
        }
        while self.bytes + len > self.cap {
            let old = self.records.pop_front().expect("invariant: bytes > 0");
            self.bytes -= old.frame.len() - RECORD_HEADER_BYTES;
            self.start = old.seq + 1;
        }
        self.bytes += len;
        self.records.push_back(TailRecord {
            seq,
            appended_ms,
            frame,
        });
    }

    /// A record acknowledged or dropped: no longer pending. Acknowledgements come
    /// mostly in order, the oldest first: that one is taken from the front.
    fn remove(&mut self, seq: u64) {
        if self.records.front().is_some_and(|r| r.seq == seq) {
            let r = self.records.pop_front().expect("invariant: front checked");
            self.bytes -= r.frame.len() - RECORD_HEADER_BYTES;
        } else if let Ok(i) = self.records.binary_search_by_key(&seq, |r| r.seq) {
            let r = self.records.remove(i).expect("invariant: index found");
            self.bytes -= r.frame.len() - RECORD_HEADER_BYTES;
        }
    }

    /// [`Journal::read`] from memory; `None` when records before `from_seq` may have
    /// been evicted (read from disk).
    fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Option<Vec<Record>> {
        if self.cap == 0 || from_seq < self.start {
            return None;
        }
        let from = self.records.partition_point(|r| r.seq < from_seq);
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.records.range(from..) {
            let len = r.frame.len() - RECORD_HEADER_BYTES;
            if out.len() >= max_records || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(Record {
                seq: r.seq,
                appended_at: time_from_ms(r.appended_ms),
                payload: r.frame[RECORD_HEADER_BYTES..].to_vec(),
            });
        }
        Some(out)
    }
}

impl Shared {
    fn closed(&self) -> JournalError {
        JournalError::Closed {
            dir: self.dir.clone(),
        }
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Every critical section leaves the tail consistent (single pushes and removes).
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued_acks(&self) -> std::sync::MutexGuard<'_, QueuedAcks> {
        self.queued_acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of appends: sequence numbers are assigned under this lock so the
/// channel carries appends in sequence order.
struct AppendSide {
    tx: mpsc::Sender<Command>,
    next_seq: u64,
}

struct Inner {
    shared: Arc<Shared>,
    append: Mutex<AppendSide>,
    /// Acks, reads and control commands; ordered after any append the caller saw.
    control: mpsc::Sender<Command>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held while the journal is open: one process per directory (`lock_dir`).
    _lock: Arc<std::fs::File>,
}

/// Handle to an open journal; clones share it. Dropping the last clone lets the writer
/// finish what was sent and stop; [`Journal::close`] does that and waits for it.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.shared.dir)
            .finish_non_exhaustive()
    }
}

/// The pending durability of one append: resolves to its sequence number once the
/// record is durable (per the journal's [`SyncMode`]), or to the error that lost it.
/// Dropping it does not cancel the append.
#[derive(Debug)]
pub struct Durable {
    seq: u64,
    reply: oneshot::Receiver<Result<u64, JournalError>>,
    /// For the error when the writer is gone (a reference count, not a path copy).
    shared: Arc<Shared>,
    /// Disk budget the record takes ([`record_cost`]).
    cost: u64,
}

impl Durable {
    /// The sequence number the record was given; valid before it is durable, for
    /// forwarding it early and acknowledging it by number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Disk budget the record takes ([`record_cost`] of its payload).
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

impl Future for Durable {
    type Output = Result<u64, JournalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|reply| reply.unwrap_or_else(|_| Err(self.shared.closed())))
    }
}

/// Disk budget one record takes: its frame plus the ack entry reserved for it.
pub fn record_cost(payload_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + ACK_ENTRY_BYTES + payload_len) as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time_from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Journal {
    /// Open (or create) the journal in `dir` on a blocking thread: recover every
    /// segment, drop damaged tails (reported in [`Recovery::lost`]), start the writer.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: JournalConfig,
    ) -> Result<(Journal, Recovery), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        let fallback = dir.clone();
        tokio::task::spawn_blocking(move || Journal::open_blocking(&dir, config))
            .await
            .unwrap_or_else(|_| Err(JournalError::Closed { dir: fallback }))
    }

    /// [`Journal::open`] for callers outside a runtime (tests, tools).
    pub fn open_blocking(
        dir: impl AsRef<Path>,
        config: JournalConfig,
    ) -> Result<(Journal, Recovery), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        validate(&dir, &config)?;
        let lock = lock_dir(&dir)?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_bytes: config.max_bytes,
            has_tail: config.tail_bytes > 0,
            ..Shared::default()
        });
        let tail_bytes = config.tail_bytes;
        let (writer, recovery, next_seq) = recover::recover(&dir, config, shared.clone())?;
        shared.assigned.store(next_seq, Ordering::Release);
        shared.resolved.store(next_seq, Ordering::Release);
        // Recovered records are read from disk; the tail starts with the next append.
        *shared.tail() = Tail {
            cap: tail_bytes,
            start: next_seq,
            ..Tail::default()
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| JournalError::Io {
                dir: dir.clone(),
                action: "start the writer thread for",
                path: dir.clone(),
                source: Arc::new(e),
            })?;
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                append: Mutex::new(AppendSide {
                    tx: tx.clone(),
                    next_seq,
                }),
                control: tx,
                writer: Mutex::new(Some(thread)),
                _lock: lock,
            }),
        };
        Ok((journal, recovery))
    }

    /// Append a record. Refused at once with [`JournalError::Full`] when the disk budget
    /// cannot hold it, [`JournalError::TooLarge`] or [`JournalError::Closed`]; otherwise
    /// it is queued in order (its sequence number is fixed now) and the returned
    /// [`Durable`] resolves when it is durable.
    pub fn append(&self, payload: &[u8]) -> Result<Durable, JournalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(self.too_large(payload.len()));
        }
        self.submit(format::encode_frame(payload, now_ms()))
    }

    /// [`Journal::append`] of the payload `encode` writes into the buffer it is given
    /// (`payload_len`: about how many bytes it will write): the record is encoded in
    /// place, behind its frame header, not built apart and copied.
    pub fn append_with(
        &self,
        payload_len: usize,
        encode: impl FnOnce(&mut bytes::BytesMut),
    ) -> Result<Durable, JournalError> {
        let mut frame = format::start_frame(payload_len);
        encode(&mut frame);
        let len = frame.len() - RECORD_HEADER_BYTES;
        if len > MAX_RECORD_BYTES {
            return Err(self.too_large(len));
        }
        self.submit(format::finish_frame(frame, now_ms()))
    }

    fn too_large(&self, len: usize) -> JournalError {
        JournalError::TooLarge {
            dir: self.inner.shared.dir.clone(),
            len,
            max: MAX_RECORD_BYTES,
        }
    }

    /// Reserve the disk budget of an encoded frame and queue it for the writer.
    fn submit(&self, frame: Vec<u8>) -> Result<Durable, JournalError> {
        let shared = &self.inner.shared;
        let cost = record_cost(frame.len() - RECORD_HEADER_BYTES);
        let reserved = shared
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + cost <= shared.max_bytes).then_some(used + cost)
            });
        if let Err(used) = reserved {
            shared.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(JournalError::Full {
                dir: shared.dir.clone(),
                needed: cost,
                used,
                max_bytes: shared.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        let mut side = self
            .inner
            .append
            .lock()
            .expect("invariant: no panic under lock");
        let seq = side.next_seq;
        let sent = side.tx.send(Command::Append {
            seq,
            frame,
            cost,
            reply,
        });
        if sent.is_err() {
            drop(side);
            shared.release(cost);
            return Err(shared.closed());
        }
        side.next_seq += 1;
        shared.assigned.store(side.next_seq, Ordering::Release);
        Ok(Durable {
            seq,
            reply: rx,
            shared: shared.clone(),
            cost,
        })
    }

    /// Append and wait until durable: `append(payload)?.await`.
    pub async fn append_durable(&self, payload: &[u8]) -> Result<u64, JournalError> {
        self.append(payload)?.await
    }

    /// Acknowledge a record: it is no longer pending and its space is reclaimed with its
    /// segment. Unknown or already acknowledged numbers are ignored. Acknowledgements are
    /// written at once but fsynced lazily (`ack_sync_interval`): after a power cut a
    /// record can come back, a duplicate that QoS 1 allows.
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        self.untail(&[seq]);
        self.queue_acks(std::iter::once(seq))
    }

    /// Take acknowledged records out of the in-memory tail at once: a read after the
    /// acknowledgement does not return them.
    fn untail(&self, seqs: &[u64]) {
        if self.inner.shared.has_tail {
            let mut tail = self.inner.shared.tail();
            for &seq in seqs {
                tail.remove(seq);
            }
        }
    }

    /// Queue acknowledgements for the writer, waking it only when it waits on its
    /// channel and nothing was queued before (that one's wake-up takes these too): a
    /// writer in a round (writing, fsyncing) takes the queue with its next round, and
    /// one about to wait checks the queue after raising `writer_waiting`. A wake-up per
    /// cloud PUBACK batch was a context switch each (8% of a busy bridge's samples).
    fn queue_acks(&self, seqs: impl IntoIterator<Item = u64>) -> Result<(), JournalError> {
        let shared = &self.inner.shared;
        let mut queued = shared.queued_acks();
        let was_empty = queued.seqs.is_empty();
        queued.seqs.extend(seqs);
        queued.barrier = shared.assigned.load(Ordering::Acquire);
        // Read under the lock the writer checks the queue under (see `Writer::run`).
        if !was_empty || !shared.writer_waiting.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.send(Command::Ack).inspect_err(|_| queued.seqs.clear())
    }

    /// Acknowledge several records at once.
    pub fn ack_many(&self, seqs: Vec<u64>) -> Result<(), JournalError> {
        self.untail(&seqs);
        self.queue_acks(seqs)
    }

    /// The overflow policy "drop oldest": drop the oldest pending records (counted as
    /// dropped, not acked) until an append of `bytes_needed` (see [`record_cost`]) fits
    /// in `max_bytes`, deleting segments that hold no pending record; or until nothing
    /// is pending.
    pub async fn drop_oldest(&self, bytes_needed: u64) -> Result<DropReport, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DropOldest {
            bytes_needed,
            reply,
        })?;
        rx.await.map_err(|_| self.inner.shared.closed())?
    }

    /// Read pending records with `seq >= from_seq` in order, at most `max_records` and
    /// about `max_bytes` of payload (always at least one record if any is pending):
    /// the sender's cursor, continued with the last seq + 1. Only durable records are
    /// returned.
    pub async fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let shared = &self.inner.shared;
        if let Some(records) = shared
            .has_tail
            .then(|| shared.tail().read(from_seq, max_records, max_bytes))
            .flatten()
        {
            return Ok(records);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read {
            from_seq,
            max_records,
            max_bytes,
            reply,
        })?;
        rx.await.map_err(|_| self.inner.shared.closed())?
    }

    /// Make everything sent so far durable, acknowledgements included.
    pub async fn sync(&self) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Sync { reply })?;
        rx.await.map_err(|_| self.inner.shared.closed())?
    }

    /// Finish what was sent, sync it, stop the writer thread and wait for it. Other
    /// clones get [`JournalError::Closed`] afterwards.
    pub async fn close(&self) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { reply })?;
        let result = rx.await.map_err(|_| self.inner.shared.closed())?;
        let thread = self
            .inner
            .writer
            .lock()
            .expect("invariant: no panic under lock")
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> JournalCounters {
        let s = &self.inner.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        let oldest = get(&s.oldest_pending_ms);
        JournalCounters {
            pending_records: get(&s.pending_records),
            pending_bytes: get(&s.pending_bytes),
            oldest_pending_age: (oldest != 0).then(|| {
                SystemTime::now()
                    .duration_since(time_from_ms(oldest))
                    .unwrap_or_default()
            }),
            appended: get(&s.appended),
            append_errors: get(&s.append_errors),
            refused_full: get(&s.refused_full),
            acked: get(&s.acked),
            dropped: get(&s.dropped),
            lost_at_open: get(&s.lost_records),
            lost_bytes_at_open: get(&s.lost_bytes),
            syncs: get(&s.syncs),
            disk_bytes: get(&s.disk_bytes),
            used_bytes: get(&s.used),
            max_bytes: s.max_bytes,
            segments: get(&s.segments),
        }
    }

    /// Every append with a lower sequence number has been resolved: durable (per the
    /// [`SyncMode`]) or failed. A lock-free look, for callers that act on what is
    /// durable without waiting on each append.
    pub fn resolved_below(&self) -> u64 {
        self.inner.shared.resolved.load(Ordering::Acquire)
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.inner
            .append
            .lock()
            .expect("invariant: no panic under lock")
            .next_seq
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    fn send(&self, command: Command) -> Result<(), JournalError> {
        self.inner
            .control
            .send(command)
            .map_err(|_| self.inner.shared.closed())
    }
}

/// Directories this process holds the lock of (see [`lock_dir`]).
static LOCKED: std::sync::LazyLock<
    Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<std::fs::File>>>,
> = std::sync::LazyLock::new(Default::default);

/// Take the directory's `lock` file (an exclusive advisory lock, released by the kernel
/// when the process dies): a second process opening the same journal, such as a
/// `tollgate run` by hand beside the service, is refused instead of interleaving its
/// writes with the first one's. Within the process, a directory whose previous handle
/// is still alive (a bridge replaced by a reload while its old instance still drains)
/// is refused the same way, so the caller retries; the crate's unit tests share the
/// lock instead, since reopening with the old handle alive is how they play a crash.
fn lock_dir(dir: &Path) -> Result<Arc<std::fs::File>, JournalError> {
    let path = dir.join("lock");
    let io = |action: &'static str, e: std::io::Error| JournalError::Io {
        dir: dir.to_path_buf(),
        action,
        path: path.clone(),
        source: Arc::new(e),
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let key = std::fs::canonicalize(dir).map_err(|e| io("resolve the directory of", e))?;
    let mut locked = LOCKED.lock().unwrap_or_else(|e| e.into_inner());
    locked.retain(|_, held| held.strong_count() > 0);
    if let Some(held) = locked.get(&key).and_then(std::sync::Weak::upgrade) {
        if cfg!(test) {
            return Ok(held);
        }
        return Err(JournalError::Locked {
            dir: dir.to_path_buf(),
            reason: "is still open in this process (a previous instance, e.g. of a bridge replaced by a reload, has not finished closing it); retry once it has".into(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io("open", e))?;
    match file.try_lock() {
        Ok(()) => {
            let file = Arc::new(file);
            locked.insert(key, Arc::downgrade(&file));
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            dir: dir.to_path_buf(),
            reason: format!(
                "{} is locked by another process: is another tollgate running with the same data_dir? Stop it, or give this one its own data_dir",
                path.display()
            ),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io("lock", e)),
    }
}

fn validate(dir: &Path, config: &JournalConfig) -> Result<(), JournalError> {
    let fail = |reason: String| {
        Err(JournalError::Config {
            dir: dir.to_path_buf(),
            reason,
        })
    };
    let min_segment = record_cost(0) * 4;
    if config.segment_bytes < min_segment {
        return fail(format!(
            "segment_bytes {} is too small; use at least {min_segment} (default {DEFAULT_SEGMENT_BYTES})",
            config.segment_bytes
        ));
    }
    if config.max_bytes < config.segment_bytes {
        return fail(format!(
            "max_bytes {} is smaller than segment_bytes {}; make max_bytes at least one segment (a few are better)",
            config.max_bytes, config.segment_bytes
        ));
    }
    if let SyncMode::Interval(d) = config.sync {
        if d.is_zero() {
            return fail("the sync interval is zero; use sync = \"batch\" instead".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
