//! The writer thread: the only code that writes, fsyncs or deletes journal files. It
//! takes commands from one channel in rounds: everything queued when it wakes (up to
//! `max_batch_bytes` of appends) is one round, written with one `write` and covered by
//! one fsync (group commit), then acknowledgements, drops, reads and syncs are served.
//!
//! It must never reply `Ok` to an append before the fsync covering it returned (in
//! `Always` and `Batch` modes), never write into a new segment before the previous one
//! is synced (the rule that makes damage in a non-last segment mean media damage, not a
//! crash), and never leave bytes of a failed append where a later append could follow
//! them (it truncates them away, or abandons the segment when it cannot).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::oneshot;

use super::format::{self, ACK_ENTRY_BYTES, RECORD_HEADER_BYTES};
use super::{time_from_ms, DropReport, JournalConfig, JournalError, Record, Shared, SyncMode};

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

/// Messages from the handle to the writer thread.
pub(super) enum Command {
    /// Store a frame (from `format::encode_frame`) under `seq`; `cost` bytes of the disk
    /// budget were reserved for it.
    Append {
        seq: u64,
        frame: Vec<u8>,
        cost: u64,
        reply: Reply<u64>,
    },
    /// A wake-up: take the acknowledgements queued in `Shared::queued_acks`.
    Ack,
    /// The overflow policy: drop oldest records until `bytes_needed` fit.
    DropOldest {
        bytes_needed: u64,
        reply: Reply<DropReport>,
    },
    /// Read pending records from a cursor.
    Read {
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
        reply: Reply<Vec<Record>>,
    },
    /// Make everything so far durable.
    Sync { reply: Reply<()> },
    /// Sync and stop.
    Close { reply: Reply<()> },
}

/// Bytes one disk read of pending records takes at most (a larger frame is read alone).
const READ_SPAN: u64 = 256 * 1024;
/// Acknowledged bytes between two pending frames read through rather than split the span.
const READ_GAP: u64 = 4096;

/// What the writer remembers of one record.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
    pub appended_ms: u64,
    pub pending: bool,
}

/// One segment file and its ack file.
#[derive(Debug)]
pub(super) struct Segment {
    pub first_seq: u64,
    /// Bytes of the segment file (for the active segment, where the next frame goes).
    pub len: u64,
    /// Disk budget it holds: its file bytes, an ack entry per record, and any excess
    /// of the ack file beyond that.
    pub charged: u64,
    pub records: Vec<Meta>,
    pub pending: u64,
    /// Index of the first record that may still be pending (advanced lazily).
    pub first_pending: usize,
    pub ack_len: u64,
    pub ack_file: Option<File>,
    /// Acknowledged since the last flush, not yet written to the ack file.
    pub ack_queue: Vec<u64>,
    pub ack_unsynced: bool,
}

impl Segment {
    pub fn new(first_seq: u64) -> Segment {
        Segment {
            first_seq,
            len: 0,
            charged: 0,
            records: Vec::new(),
            pending: 0,
            first_pending: 0,
            ack_len: 0,
            ack_file: None,
            ack_queue: Vec::new(),
            ack_unsynced: false,
        }
    }

    /// Mark a record no longer pending; its payload length if it was.
    fn settle(&mut self, seq: u64) -> Option<u32> {
        let index = self.records.binary_search_by_key(&seq, |m| m.seq).ok()?;
        let meta = &mut self.records[index];
        if !meta.pending {
            return None;
        }
        meta.pending = false;
        self.pending -= 1;
        self.ack_queue.push(seq);
        Some(meta.len)
    }

    fn oldest_pending(&mut self) -> Option<&Meta> {
        while self
            .records
            .get(self.first_pending)
            .is_some_and(|m| !m.pending)
        {
            self.first_pending += 1;
        }
        self.records.get(self.first_pending)
    }
}

pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

pub(super) fn ack_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.ack"))
}

struct PendingAppend {
    seq: u64,
    frame: Vec<u8>,
    cost: u64,
    reply: Reply<u64>,
}

/// An append whose frame is in `Writer::buf`, not yet written.
struct Staged {
    meta: Meta,
    cost: u64,
    reply: Reply<u64>,
    /// The frame again, for the in-memory tail (when it is enabled).
    frame: Option<Vec<u8>>,
}

/// The commands of one round.
#[derive(Default)]
struct Round {
    appends: Vec<PendingAppend>,
    append_bytes: usize,
    drops: Vec<(u64, Reply<DropReport>)>,
    reads: Vec<(u64, usize, usize, Reply<Vec<Record>>)>,
    syncs: Vec<Reply<()>>,
    close: Option<Reply<()>>,
}

/// The state of the writer thread.
pub(super) struct Writer {
    pub dir: PathBuf,
    /// The directory itself, fsynced after a segment is created or deleted.
    pub dir_file: File,
    pub config: JournalConfig,
    pub shared: Arc<Shared>,
    /// Live segments, oldest first; the last is the active one when `active` is set.
    pub segments: VecDeque<Segment>,
    /// The open file of the last segment, when appends may go there.
    pub active: Option<File>,
    /// Highest sequence number written.
    pub last_seq: u64,
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// Written but not fsynced (interval mode).
    pub dirty: bool,
    /// The last append failed (a full disk, typically): reclaim as under budget
    /// pressure, so a fully acknowledged active segment gives its space back. Without
    /// it a disk smaller than `max_bytes` stayed full for ever, since only sealed
    /// segments are deleted (found by tests/bridge_faults.rs's disk-full test).
    pub append_failed: bool,
    pub next_interval_sync: Option<Instant>,
    pub next_ack_sync: Option<Instant>,
    pub buf: Vec<u8>,
    pub read_cache: Option<(u64, File)>,
    /// One past the highest append taken from the channel.
    pub taken_next: u64,
    /// Queued acknowledgements waiting for the appends below their barrier.
    pub waiting_acks: Vec<(Vec<u64>, u64)>,
}

impl Writer {
    fn io(&self, action: &'static str, path: PathBuf, source: std::io::Error) -> JournalError {
        JournalError::Io {
            dir: self.dir.clone(),
            action,
            path,
            source: Arc::new(source),
        }
    }

    /// The thread's main loop: rounds until closed or every handle is gone.
    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let first = match rx.try_recv() {
                Ok(command) => command,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => match self.wait(&rx) {
                    Some(Ok(command)) => command,
                    Some(Err(())) => break,
                    None => continue,
                },
            };
            let mut round = Round::default();
            self.take(first, &mut round);
            // Acknowledgements queued while the writer was busy sent no wake-up.
            self.take_queued_acks();
            // Always mode: one append per round, so each gets its own fsync.
            let one_append_per_round = self.config.sync == SyncMode::Always;
            while round.close.is_none()
                && round.append_bytes < self.config.max_batch_bytes
                && (!one_append_per_round || round.appends.is_empty())
            {
                match rx.try_recv() {
                    Ok(command) => self.take(command, &mut round),
                    Err(_) => break,
                }
            }
            if self.finish(round) {
                self.stopped();
                return;
            }
        }
        // Every handle dropped without close(): finish as close() would.
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "Journal could not sync on shutdown.");
        }
        self.stopped();
    }

    /// The thread ends: acknowledgements from now on try the channel, whose closing
    /// reports the journal closed (the queue has no one to take it).
    fn stopped(&self) {
        self.shared.writer_waiting.store(true, Ordering::SeqCst);
    }

    /// Wait for a command with `writer_waiting` raised, after checking the ack queue
    /// (an ack queued before the flag was raised sent no wake-up: taken here instead).
    /// `None` after the timers ran or for queued acks; `Some(Err)` when every sender is
    /// gone.
    fn wait(&mut self, rx: &mpsc::Receiver<Command>) -> Option<Result<Command, ()>> {
        self.shared.writer_waiting.store(true, Ordering::SeqCst);
        if !self.shared.queued_acks().seqs.is_empty() {
            self.shared.writer_waiting.store(false, Ordering::SeqCst);
            return Some(Ok(Command::Ack));
        }
        let got = match self.deadline() {
            None => rx.recv().map_err(|_| ()),
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(command) => Ok(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.shared.writer_waiting.store(false, Ordering::SeqCst);
                    self.timers();
                    return None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
            },
        };
        self.shared.writer_waiting.store(false, Ordering::SeqCst);
        Some(got)
    }

    /// Take the acknowledgements queued by `Journal::ack`/`ack_many`: applied once the
    /// appends sent before them are taken (`QueuedAcks`).
    fn take_queued_acks(&mut self) {
        let queued = std::mem::take(&mut *self.shared.queued_acks());
        if !queued.seqs.is_empty() {
            self.waiting_acks.push((queued.seqs, queued.barrier));
        }
    }

    fn take(&mut self, command: Command, round: &mut Round) {
        match command {
            Command::Append {
                seq,
                frame,
                cost,
                reply,
            } => {
                round.append_bytes += frame.len();
                self.taken_next = self.taken_next.max(seq + 1);
                round.appends.push(PendingAppend {
                    seq,
                    frame,
                    cost,
                    reply,
                });
            }
            Command::Ack => self.take_queued_acks(),
            Command::DropOldest {
                bytes_needed,
                reply,
            } => round.drops.push((bytes_needed, reply)),
            Command::Read {
                from_seq,
                max_records,
                max_bytes,
                reply,
            } => round.reads.push((from_seq, max_records, max_bytes, reply)),
            Command::Sync { reply } => round.syncs.push(reply),
            Command::Close { reply } => round.close = Some(reply),
        }
    }

    /// Serve a round; true when the journal was closed.
    fn finish(&mut self, round: Round) -> bool {
        self.commit(round.appends);
        // After the commit, so an ack of a record appended in this round finds it.
        let mut acks = Vec::new();
        let taken = self.taken_next;
        self.waiting_acks.retain_mut(|(seqs, barrier)| {
            if *barrier > taken {
                return true;
            }
            acks.append(seqs);
            false
        });
        for seq in acks {
            if self.settle(seq) {
                self.shared.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut drop_replies = Vec::new();
        for (bytes_needed, reply) in round.drops {
            let report = self.drop_oldest(bytes_needed);
            drop_replies.push((reply, report));
        }
        let syncing = !round.syncs.is_empty() || round.close.is_some();
        self.flush_acks(syncing);
        let pressure = self.append_failed
            || self.shared.used.load(Ordering::Acquire) + self.config.segment_bytes
                > self.config.max_bytes;
        self.reclaim(pressure);
        self.publish();
        for (from_seq, max_records, max_bytes, reply) in round.reads {
            let _ = reply.send(self.read(from_seq, max_records, max_bytes));
        }
        for (reply, report) in drop_replies {
            let _ = reply.send(Ok(report));
        }
        if !round.syncs.is_empty() {
            let result = self.sync_active();
            for reply in round.syncs {
                let _ = reply.send(result.clone());
            }
        }
        self.timers();
        self.publish();
        match round.close {
            Some(reply) => {
                let _ = reply.send(self.shutdown());
                true
            }
            None => false,
        }
    }

    /// Write the round's appends, rolling segments as they fill, and fsync per the mode.
    fn commit(&mut self, appends: Vec<PendingAppend>) {
        if appends.is_empty() {
            return;
        }
        let sync = !matches!(self.config.sync, SyncMode::Interval(_));
        let mut staged: Vec<Staged> = Vec::with_capacity(appends.len());
        let mut failure: Option<JournalError> = None;
        for append in appends {
            if let Some(error) = &failure {
                self.fail(append.cost, append.reply, error.clone());
                continue;
            }
            let frame_len = append.frame.len() as u64;
            let fits = match (self.segments.back(), &self.active) {
                (Some(segment), Some(_)) => {
                    let used = segment.len + self.buf.len() as u64;
                    used == 0 || used + frame_len <= self.config.segment_bytes
                }
                _ => false,
            };
            if !fits {
                let rolled = self
                    .seal_active(&mut staged)
                    .and_then(|()| self.start_segment(append.seq));
                if let Err(error) = rolled {
                    self.fail(append.cost, append.reply, error.clone());
                    failure = Some(error);
                    continue;
                }
            }
            let segment = self
                .segments
                .back()
                .expect("invariant: active segment exists");
            let offset = segment.len + self.buf.len() as u64;
            let mut frame = append.frame;
            format::seal_frame(&mut frame, append.seq);
            let appended_ms =
                u64::from_le_bytes(frame[16..24].try_into().expect("invariant: 8 bytes"));
            self.buf.extend_from_slice(&frame);
            let keep = self.config.tail_bytes > 0;
            staged.push(Staged {
                frame: keep.then_some(frame),
                meta: Meta {
                    seq: append.seq,
                    offset,
                    len: (frame_len - RECORD_HEADER_BYTES as u64) as u32,
                    appended_ms,
                    pending: true,
                },
                cost: append.cost,
                reply: append.reply,
            });
        }
        if !staged.is_empty() {
            // Errors were replied to each append inside.
            let _ = self.write_staged(&mut staged, sync);
        }
    }

    fn fail(&self, cost: u64, reply: Reply<u64>, error: JournalError) {
        self.shared.release(cost);
        self.shared.append_errors.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(error));
    }

    /// Write `buf` at the end of the active segment, fsync it when `sync`, and reply to
    /// the staged appends: `Ok` only after the write (and fsync) returned.
    fn write_staged(&mut self, staged: &mut Vec<Staged>, sync: bool) -> Result<(), JournalError> {
        let first_seq = self
            .segments
            .back()
            .expect("invariant: active segment")
            .first_seq;
        let start = self.segments.back().expect("invariant: active segment").len;
        let file = self.active.as_ref().expect("invariant: active file");
        let path = segment_path(&self.dir, first_seq);
        let written = file
            .write_all_at(&self.buf, start)
            .map_err(|e| ("write", e))
            .and_then(|()| {
                if sync {
                    file.sync_data().map_err(|e| ("fsync", e))
                } else {
                    Ok(())
                }
            });
        let bytes = self.buf.len() as u64;
        self.buf.clear();
        match written {
            Ok(()) => {
                if sync {
                    self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                    self.dirty = false;
                } else {
                    self.dirty = true;
                    if let SyncMode::Interval(every) = self.config.sync {
                        self.next_interval_sync
                            .get_or_insert_with(|| Instant::now() + every);
                    }
                }
                self.append_failed = false;
                let segment = self.segments.back_mut().expect("invariant: active segment");
                segment.len += bytes;
                for s in staged.iter() {
                    segment.records.push(s.meta);
                    segment.pending += 1;
                    segment.charged += s.cost;
                    self.pending_records += 1;
                    self.pending_bytes += u64::from(s.meta.len);
                    self.last_seq = s.meta.seq;
                }
                if self.config.tail_bytes > 0 {
                    // Durable now: readers may have them from memory.
                    let mut tail = self.shared.tail();
                    for s in staged.iter_mut() {
                        if let Some(frame) = s.frame.take() {
                            tail.push(s.meta.seq, s.meta.appended_ms, frame);
                        }
                    }
                }
                self.shared.disk_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.shared
                    .appended
                    .fetch_add(staged.len() as u64, Ordering::Relaxed);
                // Counters first, so a caller woken by its reply sees its record counted.
                self.publish();
                self.shared
                    .resolved
                    .store(self.last_seq + 1, Ordering::Release);
                for s in staged.drain(..) {
                    let _ = s.reply.send(Ok(s.meta.seq));
                }
                Ok(())
            }
            Err((action, source)) => {
                self.append_failed = true;
                let error = self.io(action, path, source);
                tracing::warn!(error = %error, records = staged.len(), "Journal append failed; the records are not stored.");
                for s in staged.drain(..) {
                    self.fail(s.cost, s.reply, error.clone());
                }
                self.roll_back(start);
                Err(error)
            }
        }
    }

    /// Remove the bytes of a failed write from the active segment; if that fails too,
    /// abandon the segment (its tail is garbage the next open reports) and start a new
    /// one at the next append.
    fn roll_back(&mut self, start: u64) {
        let file = self.active.as_ref().expect("invariant: active file");
        let truncated = file.set_len(start).and_then(|()| file.sync_data());
        if let Err(e) = truncated {
            let actual = file.metadata().map_or(start, |m| m.len().max(start));
            let segment = self.segments.back_mut().expect("invariant: active segment");
            tracing::warn!(error = %e, segment = segment.first_seq, "Journal could not truncate a failed write; abandoning the segment.");
            let garbage = actual - start;
            segment.len = actual;
            segment.charged += garbage;
            self.shared.used.fetch_add(garbage, Ordering::AcqRel);
            self.shared.disk_bytes.fetch_add(garbage, Ordering::Relaxed);
            self.active = None;
        }
    }

    /// Write what is staged and fsync the active segment (also written-but-unsynced data
    /// of interval mode): the roll rule, before anything goes to a newer segment.
    fn seal_active(&mut self, staged: &mut Vec<Staged>) -> Result<(), JournalError> {
        if self.active.is_none() {
            return Ok(());
        }
        if !staged.is_empty() {
            return self.write_staged(staged, true);
        }
        self.sync_active()
    }

    /// Fsync the active segment if anything written is not yet synced.
    fn sync_active(&mut self) -> Result<(), JournalError> {
        if !self.dirty {
            return Ok(());
        }
        let Some(file) = &self.active else {
            return Ok(());
        };
        match file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                self.next_interval_sync = None;
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let first_seq = self.segments.back().map_or(0, |s| s.first_seq);
                Err(self.io("fsync", segment_path(&self.dir, first_seq), e))
            }
        }
    }

    /// Create the segment for `first_seq` and make its directory entry durable before
    /// any record goes into it.
    fn start_segment(&mut self, first_seq: u64) -> Result<(), JournalError> {
        let path = segment_path(&self.dir, first_seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| self.io("create", path.clone(), e))?;
        if let Err(e) = self.dir_file.sync_all() {
            let _ = std::fs::remove_file(&path);
            return Err(self.io("fsync the directory after creating", path, e));
        }
        self.segments.push_back(Segment::new(first_seq));
        self.active = Some(file);
        self.dirty = false;
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Mark a record acknowledged (or dropped); true when it was pending.
    fn settle(&mut self, seq: u64) -> bool {
        let index = self.segments.partition_point(|s| s.first_seq <= seq);
        let Some(segment) = index.checked_sub(1).and_then(|i| self.segments.get_mut(i)) else {
            return false;
        };
        match segment.settle(seq) {
            Some(len) => {
                self.pending_records -= 1;
                self.pending_bytes -= u64::from(len);
                if self.config.tail_bytes > 0 {
                    self.shared.tail().remove(seq);
                }
                true
            }
            None => false,
        }
    }

    fn drop_oldest(&mut self, bytes_needed: u64) -> DropReport {
        let mut report = DropReport::default();
        let used_before = self.shared.used.load(Ordering::Acquire);
        while self.shared.used.load(Ordering::Acquire) + bytes_needed > self.config.max_bytes {
            // Space comes back a whole segment at a time: drop the oldest segment's records.
            let Some(segment) = self.segments.iter().find(|s| s.pending > 0) else {
                break;
            };
            let seqs: Vec<u64> = segment
                .records
                .iter()
                .filter(|m| m.pending)
                .map(|m| m.seq)
                .collect();
            for seq in seqs {
                let before = self.pending_bytes;
                if self.settle(seq) {
                    report.records += 1;
                    report.bytes += RECORD_HEADER_BYTES as u64 + (before - self.pending_bytes);
                }
            }
            self.flush_acks(false);
            self.reclaim(true);
        }
        report.freed_bytes = used_before.saturating_sub(self.shared.used.load(Ordering::Acquire));
        self.shared
            .dropped
            .fetch_add(report.records, Ordering::Relaxed);
        if report.records > 0 {
            tracing::warn!(
                records = report.records,
                bytes = report.bytes,
                "Journal dropped the oldest records to make room."
            );
        }
        report
    }

    /// Write queued acknowledgements to the ack files; fsync those when `sync` or when
    /// the ack sync interval has passed.
    fn flush_acks(&mut self, sync: bool) {
        let mut entries = Vec::new();
        for index in 0..self.segments.len() {
            let segment = &mut self.segments[index];
            if segment.ack_queue.is_empty() {
                continue;
            }
            entries.clear();
            for (first, count) in format::coalesce(&mut segment.ack_queue) {
                format::encode_ack(&mut entries, first, count);
            }
            segment.ack_queue.clear();
            let path = ack_path(&self.dir, segment.first_seq);
            if segment.ack_file.is_none() {
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                {
                    Ok(file) => segment.ack_file = Some(file),
                    Err(e) => {
                        tracing::warn!(error = %e, path = %path.display(), "Journal could not open an ack file; these acks come back as duplicates after a restart.");
                        continue;
                    }
                }
            }
            let file = segment.ack_file.as_ref().expect("invariant: opened above");
            match file.write_all_at(&entries, segment.ack_len) {
                Ok(()) => {
                    segment.ack_len += entries.len() as u64;
                    segment.ack_unsynced = true;
                    self.shared
                        .disk_bytes
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    self.next_ack_sync
                        .get_or_insert_with(|| Instant::now() + self.config.ack_sync_interval);
                }
                Err(e) => {
                    // A partial entry fails its CRC at open; truncate it away if possible.
                    let _ = file.set_len(segment.ack_len);
                    tracing::warn!(error = %e, path = %path.display(), "Journal could not write acks; these come back as duplicates after a restart.");
                }
            }
        }
        let due = self.next_ack_sync.is_some_and(|at| at <= Instant::now());
        if sync || due {
            self.sync_acks();
        }
    }

    fn sync_acks(&mut self) {
        for segment in self.segments.iter_mut().filter(|s| s.ack_unsynced) {
            if let Some(file) = &segment.ack_file {
                match file.sync_data() {
                    Ok(()) => segment.ack_unsynced = false,
                    Err(e) => {
                        tracing::warn!(error = %e, segment = segment.first_seq, "Journal could not fsync an ack file.")
                    }
                }
            }
        }
        self.next_ack_sync = None;
    }

    /// Delete segments that hold no pending record. The active one goes too when
    /// `pressure` says its space is needed; a fresh empty segment replaces it so the
    /// sequence numbers stay monotonic across restarts.
    pub fn reclaim(&mut self, pressure: bool) {
        let retire = pressure
            && self.active.is_some()
            && self
                .segments
                .back()
                .is_some_and(|s| s.pending == 0 && s.len > 0);
        if retire {
            let mut nothing = Vec::new();
            let next = self.last_seq + 1;
            if let Err(e) = self
                .seal_active(&mut nothing)
                .and_then(|()| self.start_segment(next))
            {
                tracing::warn!(error = %e, "Journal could not start a new segment; keeping the active one.");
            }
        }
        let last = self.segments.len().saturating_sub(1);
        let has_active = self.active.is_some();
        let doomed: Vec<usize> = (0..self.segments.len())
            .filter(|&i| self.segments[i].pending == 0 && !(i == last && has_active))
            .collect();
        if doomed.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for &i in &doomed {
            let segment = &self.segments[i];
            let path = segment_path(&self.dir, segment.first_seq);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(i),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(i),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "Journal could not delete an acknowledged segment; its space stays in use.")
                }
            }
        }
        // The segment deletions become durable before their ack files go, so a crash
        // never brings back a segment without its acks.
        if let Err(e) = self.dir_file.sync_all() {
            tracing::warn!(error = %e, "Journal could not fsync its directory after deleting segments.");
        }
        for &i in removed.iter().rev() {
            let segment = self.segments.remove(i).expect("invariant: index in range");
            drop(segment.ack_file);
            let _ = std::fs::remove_file(ack_path(&self.dir, segment.first_seq));
            if self
                .read_cache
                .as_ref()
                .is_some_and(|(seq, _)| *seq == segment.first_seq)
            {
                self.read_cache = None;
            }
            self.shared.release(segment.charged);
            self.shared
                .disk_bytes
                .fetch_sub(segment.len + segment.ack_len, Ordering::Relaxed);
            self.shared.segments.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Pending records from `from_seq` on, at most `max_records` and about `max_bytes`
    /// (at least one). The frames of one segment are read in spans of adjacent frames
    /// (acknowledged ones between them read and skipped while the gap is small), one
    /// `pread` per span instead of one per record: a backlog beyond the in-memory tail
    /// drains from disk at a syscall per [`READ_SPAN`] bytes.
    fn read(
        &mut self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = self
            .segments
            .partition_point(|s| s.first_seq <= from_seq)
            .saturating_sub(1);
        let last = self.segments.len().saturating_sub(1);
        let mut chosen: Vec<Meta> = Vec::new();
        for index in start..self.segments.len() {
            let segment = &self.segments[index];
            let from = segment.records.partition_point(|m| m.seq < from_seq);
            chosen.clear();
            let mut full = false;
            for meta in segment.records[from..].iter().filter(|m| m.pending) {
                let taken = out.len() + chosen.len();
                if taken >= max_records || (taken > 0 && bytes + meta.len as usize > max_bytes) {
                    full = true;
                    break;
                }
                bytes += meta.len as usize;
                chosen.push(*meta);
            }
            if !chosen.is_empty() {
                let (first_seq, path) = (
                    segment.first_seq,
                    segment_path(&self.dir, segment.first_seq),
                );
                self.read_frames(first_seq, index == last, &path, &chosen, &mut out)?;
            }
            if full {
                break;
            }
        }
        Ok(out)
    }

    /// Read the frames of `chosen` (records of the segment starting at `first_seq`, in
    /// order) in spans, check each against its checksums and push it to `out`.
    fn read_frames(
        &mut self,
        first_seq: u64,
        active: bool,
        path: &Path,
        chosen: &[Meta],
        out: &mut Vec<Record>,
    ) -> Result<(), JournalError> {
        let file = match (&self.active, active) {
            (Some(active), true) => active,
            _ => {
                if !matches!(&self.read_cache, Some((seq, _)) if *seq == first_seq) {
                    let file =
                        File::open(path).map_err(|e| self.io("open", path.to_path_buf(), e))?;
                    self.read_cache = Some((first_seq, file));
                }
                &self.read_cache.as_ref().expect("invariant: cached above").1
            }
        };
        let end_of = |m: &Meta| m.offset + (RECORD_HEADER_BYTES + m.len as usize) as u64;
        let mut span = Vec::new();
        let mut i = 0;
        while i < chosen.len() {
            // The span: from chosen[i] on while the next frame starts close to where
            // this one ends and the span stays within READ_SPAN (or holds one frame).
            let begin = chosen[i].offset;
            let mut j = i + 1;
            while j < chosen.len()
                && chosen[j].offset >= end_of(&chosen[j - 1])
                && chosen[j].offset - end_of(&chosen[j - 1]) <= READ_GAP
                && end_of(&chosen[j]) - begin <= READ_SPAN
            {
                j += 1;
            }
            span.resize((end_of(&chosen[j - 1]) - begin) as usize, 0);
            if let Err(e) = file.read_exact_at(&mut span, begin) {
                return Err(self.io("read", path.to_path_buf(), e));
            }
            for meta in &chosen[i..j] {
                let at = (meta.offset - begin) as usize;
                let frame = &span[at..at + RECORD_HEADER_BYTES + meta.len as usize];
                let intact = format::decode_header(frame)
                    .filter(|h| h.seq == meta.seq)
                    .is_some_and(|h| format::payload_matches(&h, &frame[RECORD_HEADER_BYTES..]));
                if !intact {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("record {} at offset {} fails its checksum (damaged since it was written; acknowledge it to skip it)", meta.seq, meta.offset),
                    );
                    return Err(self.io("read", path.to_path_buf(), error));
                }
                out.push(Record {
                    seq: meta.seq,
                    appended_at: time_from_ms(meta.appended_ms),
                    payload: frame[RECORD_HEADER_BYTES..].to_vec(),
                });
            }
            i = j;
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.next_interval_sync, self.next_ack_sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run what is due: the interval fsync and the lazy ack fsync.
    fn timers(&mut self) {
        let now = Instant::now();
        if self.next_interval_sync.is_some_and(|at| at <= now) {
            self.next_interval_sync = None;
            if let Err(e) = self.sync_active() {
                tracing::warn!(error = %e, "Journal interval fsync failed; retrying at the next interval.");
                if let SyncMode::Interval(every) = self.config.sync {
                    self.next_interval_sync = Some(now + every);
                }
            }
        }
        if self.next_ack_sync.is_some_and(|at| at <= now) {
            self.sync_acks();
        }
        self.publish();
    }

    /// Sync everything: on close and when the last handle is dropped.
    fn shutdown(&mut self) -> Result<(), JournalError> {
        self.flush_acks(true);
        let result = self.sync_active();
        self.publish();
        result
    }

    /// Copy the writer's figures into the shared counters.
    pub fn publish(&mut self) {
        let oldest = self
            .segments
            .iter_mut()
            .find(|s| s.pending > 0)
            .and_then(|s| s.oldest_pending().map(|m| m.appended_ms.max(1)))
            .unwrap_or(0);
        let shared = &self.shared;
        shared
            .pending_records
            .store(self.pending_records, Ordering::Release);
        shared
            .pending_bytes
            .store(self.pending_bytes, Ordering::Release);
        shared.oldest_pending_ms.store(oldest, Ordering::Release);
    }
}

/// Bytes of the disk budget a recovered segment holds.
pub(super) fn recovered_charge(file_len: u64, ack_len: u64, records: usize) -> u64 {
    file_len + ack_len.max((ACK_ENTRY_BYTES * records) as u64)
}

#[cfg(test)]
mod tests;
