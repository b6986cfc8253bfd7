//! Opening a journal directory: read every segment, keep its intact prefix, apply its
//! ack file, and hand the writer thread a consistent state. It must never load a record
//! that fails its checksum or breaks the sequence order, and never hide a loss: every
//! dropped byte is in the [`LossReport`].
//!
//! Rules (docs/journal.md): in each segment, records are kept up to the first damaged
//! one and the rest of that segment is lost. The last segment is truncated there so new
//! records follow the intact prefix. Later segments are still loaded: the writer fsyncs
//! a segment before it writes anything to the next, so damage before the last segment
//! is never a torn write from a crash but media damage (or tampering), and the records
//! after it are as valid as any.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::format::{self, Damage};
use super::writer::{ack_path, recovered_charge, segment_path, Meta, Segment, Writer};
use super::{
    time_from_ms, JournalConfig, JournalError, LossReport, PendingRecord, Recovery, SegmentLoss,
    Shared,
};

/// Recover `dir`; returns the writer, what was found, and the next sequence number.
pub(super) fn recover(
    dir: &Path,
    config: JournalConfig,
    shared: Arc<Shared>,
) -> Result<(Writer, Recovery, u64), JournalError> {
    let io = |action: &'static str, path: &Path, source: std::io::Error| JournalError::Io {
        dir: dir.to_path_buf(),
        action,
        path: path.to_path_buf(),
        source: Arc::new(source),
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory", dir, e))?;
    let dir_file = File::open(dir).map_err(|e| io("open the directory", dir, e))?;

    let (segment_ids, ack_ids) = list_files(dir).map_err(|e| io("list", dir, e))?;

    let mut lost = LossReport::default();
    let mut segments = VecDeque::new();
    let mut last_seq = 0u64;
    let mut disk_bytes = 0u64;
    let mut used = 0u64;
    for (index, &first_seq) in segment_ids.iter().enumerate() {
        let is_last = index + 1 == segment_ids.len();
        let path = segment_path(dir, first_seq);
        let bytes = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
        let scan = format::scan_segment(&bytes, last_seq.max(first_seq.saturating_sub(1)));
        let mut file_len = bytes.len() as u64;
        if let Some(loss) = scan.loss {
            lost.records += loss.records;
            lost.bytes += loss.bytes;
            lost.segments.push(SegmentLoss {
                path: path.clone(),
                valid_len: scan.valid_len,
                bytes: loss.bytes,
                records: loss.records,
                damage: damage_name(loss.damage),
            });
            tracing::warn!(path = %path.display(), valid_len = scan.valid_len, bytes = loss.bytes, records = loss.records, damage = damage_name(loss.damage), "Journal segment damaged; keeping its intact prefix.");
            if is_last {
                // New records must follow the intact prefix, not the damage.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("open", &path, e))?;
                file.set_len(scan.valid_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("truncate the damaged tail of", &path, e))?;
                file_len = scan.valid_len;
            }
        }
        drop(bytes);
        let mut segment = Segment::new(first_seq);
        segment.len = file_len;
        segment.records = scan
            .records
            .iter()
            .map(|r| Meta {
                seq: r.header.seq,
                offset: r.offset,
                len: r.header.len,
                appended_ms: r.header.appended_ms,
                pending: true,
            })
            .collect();
        if let Some(record) = segment.records.last() {
            last_seq = record.seq;
        }
        segment.ack_len = apply_ack_file(dir, &mut segment);
        segment.pending = segment.records.iter().filter(|m| m.pending).count() as u64;
        segment.charged = recovered_charge(file_len, segment.ack_len, segment.records.len());
        disk_bytes += file_len + segment.ack_len;
        used += segment.charged;
        segments.push_back(segment);
    }
    for id in ack_ids {
        if segment_ids.binary_search(&id).is_err() {
            // The segment was deleted and a crash came before its ack file went.
            let _ = std::fs::remove_file(ack_path(dir, id));
        }
    }

    let active = match segments.back() {
        Some(segment) => {
            let path = segment_path(dir, segment.first_seq);
            Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| io("open", &path, e))?,
            )
        }
        None => None,
    };
    let next_seq = (last_seq + 1).max(segments.back().map_or(1, |s| s.first_seq));

    let pending: Vec<PendingRecord> = segments
        .iter()
        .flat_map(|s| s.records.iter())
        .filter(|m| m.pending)
        .map(|m| PendingRecord {
            seq: m.seq,
            appended_at: time_from_ms(m.appended_ms),
            len: m.len,
        })
        .collect();
    let pending_bytes = pending.iter().map(|p| u64::from(p.len)).sum();

    shared.used.store(used, Ordering::Release);
    shared.disk_bytes.store(disk_bytes, Ordering::Release);
    shared
        .segments
        .store(segments.len() as u64, Ordering::Release);
    shared.lost_records.store(lost.records, Ordering::Release);
    shared.lost_bytes.store(lost.bytes, Ordering::Release);

    let mut writer = Writer {
        dir: dir.to_path_buf(),
        dir_file,
        config,
        shared,
        segments,
        active,
        last_seq: next_seq - 1,
        pending_records: pending.len() as u64,
        pending_bytes,
        dirty: false,
        append_failed: false,
        next_interval_sync: None,
        next_ack_sync: None,
        buf: Vec::with_capacity(64 * 1024),
        read_cache: None,
        taken_next: next_seq,
        waiting_acks: Vec::new(),
    };
    // Segments whose records were all acknowledged before the restart.
    writer.reclaim(false);
    writer.publish();
    Ok((writer, Recovery { pending, lost }, next_seq))
}

/// The first sequence numbers of the segment files (sorted) and of the ack files in `dir`.
fn list_files(dir: &Path) -> std::io::Result<(Vec<u64>, Vec<u64>)> {
    let mut segment_ids = Vec::new();
    let mut ack_ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let parsed = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|stem| stem.len() == 20)
                .and_then(|stem| stem.parse::<u64>().ok())
        };
        if let Some(id) = parsed(".seg") {
            segment_ids.push(id);
        } else if let Some(id) = parsed(".ack") {
            ack_ids.push(id);
        }
    }
    segment_ids.sort_unstable();
    Ok((segment_ids, ack_ids))
}

/// Apply a segment's ack file; returns the length of its intact part (a torn entry at
/// the end is cut off, costing at most a duplicate).
fn apply_ack_file(dir: &Path, segment: &mut Segment) -> u64 {
    let path = ack_path(dir, segment.first_seq);
    let Ok(bytes) = std::fs::read(&path) else {
        return 0;
    };
    let (ranges, valid_len) = format::decode_acks(&bytes);
    if valid_len < bytes.len() as u64 {
        let truncated = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(valid_len));
        if let Err(e) = truncated {
            tracing::warn!(error = %e, path = %path.display(), "Journal could not cut a torn ack entry.");
            return bytes.len() as u64;
        }
    }
    for (first, count) in ranges {
        let end = first.saturating_add(u64::from(count));
        let from = segment.records.partition_point(|m| m.seq < first);
        for meta in segment.records[from..]
            .iter_mut()
            .take_while(|m| m.seq < end)
        {
            meta.pending = false;
        }
    }
    valid_len
}

fn damage_name(damage: Damage) -> &'static str {
    match damage {
        Damage::ZeroTail => "zero-filled tail",
        Damage::TornHeader => "torn header",
        Damage::TornBody => "torn body",
        Damage::BadHeader => "bad header",
        Damage::BadPayload => "bad payload",
    }
}
