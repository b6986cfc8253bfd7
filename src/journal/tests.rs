//! Unit tests of the journal through its handle, with a look at the files where the
//! behaviour is about them (segments deleted, accounting against file sizes).

use std::path::Path;
use std::time::Duration;

use super::*;

fn small(sync: SyncMode) -> JournalConfig {
    JournalConfig {
        sync,
        segment_bytes: 1024,
        max_bytes: 64 * 1024,
        ..JournalConfig::default()
    }
}

fn open(dir: &Path, config: JournalConfig) -> (Journal, Recovery) {
    Journal::open_blocking(dir, config).expect("open journal")
}

fn payload(i: u64) -> Vec<u8> {
    format!("record number {i:05}").into_bytes()
}

async fn append_n(journal: &Journal, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let mut pending = Vec::new();
    for i in range {
        pending.push(journal.append(&payload(i)).expect("append accepted"));
    }
    let mut seqs = Vec::new();
    for durable in pending {
        seqs.push(durable.await.expect("durable"));
    }
    seqs
}

fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

#[tokio::test]
async fn appended_records_are_replayed_in_order_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, recovery) = open(dir.path(), small(SyncMode::Batch));
    assert!(recovery.pending.is_empty());
    let seqs = append_n(&journal, 1..=100).await;
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    journal.close().await.expect("close");

    let (journal, recovery) = open(dir.path(), small(SyncMode::Batch));
    let listed: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
    assert_eq!(listed, seqs);
    assert_eq!(recovery.lost, LossReport::default());
    let records = journal.read(1, usize::MAX, usize::MAX).await.expect("read");
    for (record, i) in records.iter().zip(1..) {
        assert_eq!(record.seq, i);
        assert_eq!(record.payload, payload(i));
    }
    assert_eq!(records.len(), 100);
    assert_eq!(
        append_n(&journal, 1..=1).await,
        vec![101],
        "numbers continue"
    );
}

#[tokio::test]
async fn acked_records_are_not_replayed_and_acks_may_come_out_of_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    append_n(&journal, 1..=10).await;
    journal.ack_many(vec![7, 2, 9, 3]).expect("ack");
    journal.ack(5).expect("ack");
    journal.ack(5).expect("a second ack is ignored");
    journal.ack(999).expect("an unknown ack is ignored");
    journal.close().await.expect("close");
    assert_eq!(journal.counters().acked, 5);

    let (journal, recovery) = open(dir.path(), small(SyncMode::Batch));
    let listed: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
    assert_eq!(listed, vec![1, 4, 6, 8, 10]);
    let read: Vec<u64> = journal
        .read(0, 10, usize::MAX)
        .await
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(read, listed);
}

#[tokio::test]
async fn segment_is_deleted_once_all_its_records_are_acked_in_any_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    // 19-byte payloads: 47-byte frames, 21 per 1024-byte segment.
    append_n(&journal, 1..=60).await;
    let segments = files(dir.path(), ".seg");
    assert_eq!(segments.len(), 3, "{segments:?}");
    // Ack the whole second segment backwards, and all but one of the first.
    journal.ack_many((22..=42).rev().collect()).expect("ack");
    journal.ack_many((2..=21).collect()).expect("ack");
    journal.sync().await.expect("sync");
    let left = files(dir.path(), ".seg");
    assert_eq!(left.len(), 2, "second segment reclaimed: {left:?}");
    assert_eq!(left[0], segments[0], "first still holds record 1");
    assert_eq!(
        files(dir.path(), ".ack").len(),
        1,
        "ack file went with its segment"
    );
    journal.ack(1).expect("ack");
    journal.sync().await.expect("sync");
    assert_eq!(files(dir.path(), ".seg"), vec![segments[2].clone()]);
    assert_eq!(journal.counters().segments, 1);
}

#[tokio::test]
async fn read_from_a_cursor_returns_pending_records_in_order_within_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    append_n(&journal, 1..=50).await;
    journal.ack_many(vec![3, 4, 30]).expect("ack");
    let mut cursor = 1;
    let mut seen = Vec::new();
    loop {
        let batch = journal.read(cursor, 7, usize::MAX).await.expect("read");
        let Some(last) = batch.last() else { break };
        assert!(batch.len() <= 7);
        cursor = last.seq + 1;
        seen.extend(batch.iter().map(|r| r.seq));
    }
    let expected: Vec<u64> = (1..=50).filter(|s| ![3, 4, 30].contains(s)).collect();
    assert_eq!(seen, expected);
    let one = journal.read(1, 100, 1).await.expect("read");
    assert_eq!(one.len(), 1, "at least one record even over max_bytes");
    let two = journal.read(1, 100, 40).await.expect("read");
    assert_eq!(two.len(), 2, "19-byte payloads: two fit in 40 bytes");
}

#[tokio::test]
async fn budget_accounts_every_file_byte_and_refuses_with_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        max_bytes: 4096,
        ..small(SyncMode::Batch)
    };
    let (journal, _) = open(dir.path(), config);
    let cost = record_cost(payload(0).len());
    let fit = 4096 / cost;
    append_n(&journal, 1..=fit).await;
    match journal.append(&payload(0)) {
        Err(JournalError::Full {
            needed,
            used,
            max_bytes,
            ..
        }) => {
            assert_eq!((needed, used, max_bytes), (cost, fit * cost, 4096));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let counters = journal.counters();
    assert_eq!(counters.refused_full, 1);
    assert_eq!(counters.used_bytes, fit * cost);
    assert_eq!(counters.disk_bytes, bytes_on_disk(dir.path()));
    assert!(counters.disk_bytes <= counters.used_bytes);
    // Every record acked: the ack files grow by at most their reservation.
    journal.ack_many((1..=fit).collect()).expect("ack");
    journal.sync().await.expect("sync");
    let counters = journal.counters();
    assert_eq!(counters.disk_bytes, bytes_on_disk(dir.path()));
    assert!(counters.disk_bytes <= counters.used_bytes);
    assert!(counters.used_bytes <= 4096);
    // The full segments were reclaimed; appends fit again.
    append_n(&journal, 1..=3).await;
}

#[tokio::test]
async fn drop_oldest_frees_whole_segments_and_counts_the_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        max_bytes: 4096,
        ..small(SyncMode::Batch)
    };
    let (journal, _) = open(dir.path(), config);
    let cost = record_cost(payload(0).len());
    let fit = 4096 / cost;
    append_n(&journal, 1..=fit).await;
    assert!(matches!(
        journal.append(&payload(0)),
        Err(JournalError::Full { .. })
    ));
    let report = journal.drop_oldest(cost).await.expect("drop");
    assert_eq!(report.records, 21, "the first segment's 21 records");
    assert_eq!(report.bytes, 21 * 47);
    assert!(report.freed_bytes >= cost);
    let counters = journal.counters();
    assert_eq!((counters.dropped, counters.acked), (21, 0));
    assert_eq!(counters.pending_records, fit - 21);
    let seq = journal.append_durable(&payload(0)).await.expect("room now");
    assert_eq!(seq, fit + 1);
    journal.close().await.expect("close");
    let (_, recovery) = open(dir.path(), small(SyncMode::Batch));
    assert_eq!(recovery.pending.first().map(|p| p.seq), Some(22));
}

#[tokio::test]
async fn drop_oldest_retires_the_active_segment_when_it_holds_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_bytes: 4096,
        max_bytes: 4096,
        ..small(SyncMode::Batch)
    };
    let (journal, _) = open(dir.path(), config.clone());
    let cost = record_cost(payload(0).len());
    let fit = 4096 / cost;
    append_n(&journal, 1..=fit).await;
    let report = journal.drop_oldest(cost).await.expect("drop");
    assert_eq!(report.records, fit);
    assert_eq!(
        journal.append_durable(&payload(0)).await.expect("room"),
        fit + 1
    );
    journal.close().await.expect("close");
    let (journal, recovery) = open(dir.path(), config);
    assert_eq!(recovery.pending.len(), 1);
    assert_eq!(journal.counters().segments, 1);
}

#[tokio::test]
async fn sequence_numbers_stay_monotonic_across_restarts_when_everything_was_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_bytes: 1024,
        max_bytes: 1024,
        ..small(SyncMode::Batch)
    };
    let (journal, _) = open(dir.path(), config.clone());
    let seqs = append_n(&journal, 1..=15).await;
    journal.ack_many(seqs).expect("ack");
    journal.close().await.expect("close");
    let (journal, recovery) = open(dir.path(), config);
    assert!(recovery.pending.is_empty());
    assert_eq!(journal.append_durable(b"next").await.expect("append"), 16);
}

#[tokio::test]
async fn damaged_tail_is_cut_at_open_reported_and_appends_follow_the_intact_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    append_n(&journal, 1..=5).await;
    journal.close().await.expect("close");
    let segment = dir.path().join(&files(dir.path(), ".seg")[0]);
    let mut bytes = std::fs::read(&segment).expect("read");
    let intact = bytes.len() as u64;
    bytes.extend_from_within(..30); // a torn copy of a record
    std::fs::write(&segment, &bytes).expect("write");

    let (journal, recovery) = open(dir.path(), small(SyncMode::Batch));
    assert_eq!(recovery.pending.len(), 5);
    assert_eq!((recovery.lost.records, recovery.lost.bytes), (1, 30));
    assert_eq!(recovery.lost.segments[0].valid_len, intact);
    assert_eq!(recovery.lost.segments[0].damage, "bad header");
    assert_eq!(journal.counters().lost_at_open, 1);
    assert_eq!(journal.counters().lost_bytes_at_open, 30);
    assert_eq!(std::fs::metadata(&segment).expect("stat").len(), intact);
    append_n(&journal, 6..=6).await;
    journal.close().await.expect("close");
    let (_, recovery) = open(dir.path(), small(SyncMode::Batch));
    assert_eq!(recovery.pending.len(), 6);
    assert_eq!(recovery.lost, LossReport::default());
}

#[tokio::test]
async fn torn_ack_entry_only_brings_a_record_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    append_n(&journal, 1..=4).await;
    journal.ack(1).expect("ack");
    journal.sync().await.expect("sync");
    journal.ack(3).expect("ack");
    journal.close().await.expect("close");
    let ack = dir.path().join(&files(dir.path(), ".ack")[0]);
    let len = std::fs::metadata(&ack).expect("stat").len();
    assert_eq!(len, 32);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ack)
        .and_then(|f| f.set_len(len - 5))
        .expect("tear the last ack entry");
    let (_, recovery) = open(dir.path(), small(SyncMode::Batch));
    let listed: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
    assert_eq!(
        listed,
        vec![2, 3, 4],
        "3 comes back as a duplicate, 1 stays acked"
    );
    assert_eq!(
        recovery.lost,
        LossReport::default(),
        "a lost ack is no loss"
    );
}

#[tokio::test]
async fn always_mode_syncs_once_per_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Always));
    append_n(&journal, 1..=25).await;
    let counters = journal.counters();
    assert_eq!(counters.appended, 25);
    assert_eq!(counters.syncs, 25, "one per append, across a segment roll");
}

#[tokio::test]
async fn batch_mode_shares_fsyncs_between_queued_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        max_bytes: 8 << 20,
        ..JournalConfig::default()
    };
    let (journal, _) = open(dir.path(), config);
    append_n(&journal, 1..=500).await;
    let counters = journal.counters();
    assert_eq!(counters.appended, 500);
    assert!(
        counters.syncs < 100,
        "{} syncs for 500 queued appends",
        counters.syncs
    );
}

#[tokio::test]
async fn interval_mode_reports_appends_before_the_fsync_and_syncs_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 20,
        ..small(SyncMode::Interval(Duration::from_millis(50)))
    };
    let (journal, _) = open(dir.path(), config);
    append_n(&journal, 1..=10).await;
    assert_eq!(journal.counters().syncs, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(journal.counters().syncs, 1);
    journal.close().await.expect("close");
}

#[tokio::test]
async fn counters_report_pending_records_bytes_and_oldest_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    assert_eq!(journal.counters().oldest_pending_age, None);
    append_n(&journal, 1..=3).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    journal.ack(1).expect("ack");
    journal.sync().await.expect("sync");
    let counters = journal.counters();
    assert_eq!(counters.pending_records, 2);
    assert_eq!(counters.pending_bytes, 2 * payload(0).len() as u64);
    assert_eq!((counters.appended, counters.acked), (3, 1));
    let age = counters.oldest_pending_age.expect("a pending record");
    assert!(age >= Duration::from_millis(25), "{age:?}");
    assert!(age < Duration::from_secs(60));
    journal.ack_many(vec![2, 3]).expect("ack");
    journal.sync().await.expect("sync");
    assert_eq!(journal.counters().oldest_pending_age, None);
}

#[tokio::test]
async fn closed_journal_refuses_appends_and_releases_their_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    let other = journal.clone();
    journal.close().await.expect("close");
    assert!(matches!(
        other.append(b"x"),
        Err(JournalError::Closed { .. })
    ));
    assert_eq!(other.counters().used_bytes, 0);
    assert!(matches!(
        other.sync().await,
        Err(JournalError::Closed { .. })
    ));
}

#[test]
fn configuration_that_cannot_work_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_small = JournalConfig {
        max_bytes: 100,
        ..JournalConfig::default()
    };
    let err = Journal::open_blocking(dir.path(), too_small).expect_err("refused");
    assert!(
        err.to_string().contains("smaller than segment_bytes"),
        "{err}"
    );
    let zero = JournalConfig {
        sync: SyncMode::Interval(Duration::ZERO),
        ..JournalConfig::default()
    };
    let err = Journal::open_blocking(dir.path(), zero).expect_err("refused");
    assert!(err.to_string().contains("batch"), "{err}");
}

#[tokio::test]
async fn oversized_record_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path(), small(SyncMode::Batch));
    append_n(&journal, 1..=2).await;
    let big = vec![7u8; 3000];
    let seq = journal.append_durable(&big).await.expect("append");
    append_n(&journal, 4..=4).await;
    assert_eq!(files(dir.path(), ".seg").len(), 3);
    let read = journal.read(seq, 1, usize::MAX).await.expect("read");
    assert_eq!(read[0].payload, big);
}

#[test]
fn a_second_process_cannot_open_a_journal_in_use() {
    // The test binary re-executed as the second process.
    if let Ok(dir) = std::env::var("TOLLGATE_JOURNAL_LOCK_CHILD") {
        match Journal::open_blocking(&dir, small(SyncMode::Batch)) {
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(3)
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let child = |dir: &Path| {
        // Under qemu-user a foreign binary cannot be exec'd directly: scripts/cross-test.sh
        // sets CROSS_TEST_RUNNER to the emulator command line cargo uses.
        let exe = std::env::current_exe().expect("test binary");
        let runner = std::env::var("CROSS_TEST_RUNNER").unwrap_or_default();
        let mut runner = runner.split_whitespace();
        let mut command = match runner.next() {
            Some(program) => {
                let mut command = std::process::Command::new(program);
                command.args(runner).arg(exe);
                command
            }
            None => std::process::Command::new(exe),
        };
        command
            .args([
                "--exact",
                "journal::tests::a_second_process_cannot_open_a_journal_in_use",
                "--nocapture",
            ])
            .env("TOLLGATE_JOURNAL_LOCK_CHILD", dir)
            .output()
            .expect("run the child")
    };
    let (first, _) = open(dir.path(), small(SyncMode::Batch));
    let refused = child(dir.path());
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("locked by another process"),
        "{refused:?}"
    );
    drop(first);
    let allowed = child(dir.path());
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
}

#[tokio::test]
async fn reads_from_the_in_memory_tail_match_reads_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 19-byte payloads: a tail of 200 bytes holds the last 10 pending records, so
    // early cursors read from disk and late ones from memory.
    let with_tail = JournalConfig {
        tail_bytes: 200,
        ..small(SyncMode::Batch)
    };
    let (cached, _) = open(&dir.path().join("tail"), with_tail);
    let (plain, _) = open(&dir.path().join("disk"), small(SyncMode::Batch));
    for journal in [&cached, &plain] {
        append_n(journal, 1..=60).await;
        journal.ack_many(vec![3, 4, 55]).expect("ack");
        journal.ack(58).expect("ack");
        journal.ack(58).expect("a second ack is ignored");
        // Acknowledged before its first read: never returned (the cursor after an ack).
        journal.ack(60).expect("ack");
    }
    for from in 0..=62 {
        for (limit, max_bytes) in [
            (1, usize::MAX),
            (4, usize::MAX),
            (100, 40),
            (100, usize::MAX),
        ] {
            // The two journals appended at different times: compare the rest.
            let read = |r: Vec<Record>| -> Vec<(u64, Vec<u8>)> {
                r.into_iter().map(|r| (r.seq, r.payload)).collect()
            };
            let a = read(cached.read(from, limit, max_bytes).await.expect("read"));
            let b = read(plain.read(from, limit, max_bytes).await.expect("read"));
            assert_eq!(a, b, "from {from}, {limit} records, {max_bytes} bytes");
        }
    }
    let last = cached.read(50, 100, usize::MAX).await.expect("read");
    let seqs: Vec<u64> = last.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [50, 51, 52, 53, 54, 56, 57, 59]);
    // Appended after a full tail: still read, in order, once.
    append_n(&cached, 61..=64).await;
    let seqs: Vec<u64> = cached
        .read(57, 100, usize::MAX)
        .await
        .expect("read")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [57, 59, 61, 62, 63, 64]);
    cached.close().await.expect("close");
    assert_eq!(cached.counters().acked, 5);
}

/// Disk reads go in spans of adjacent frames (`READ_SPAN`, read through gaps of
/// acknowledged frames up to `READ_GAP`): every pending record comes back whole, in
/// order, once, whatever the sizes, the gaps and the limits, across segments.
#[tokio::test]
async fn disk_reads_in_spans_return_every_pending_record_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        sync: SyncMode::Batch,
        segment_bytes: 1 << 20,
        max_bytes: 64 << 20,
        ..JournalConfig::default()
    };
    let (journal, _) = open(dir.path(), config);
    // Sizes from 1 byte to 40 KiB: spans end at the size cap, a frame over it is read
    // alone, and several segments are filled.
    let sized = |i: u64| -> Vec<u8> {
        let len = [1, 300, 5_000, 41_000, 70_000, 2][(i % 6) as usize] + (i as usize % 7);
        (0..len).map(|b| (b as u64 ^ i) as u8).collect()
    };
    let mut durable = Vec::new();
    for i in 0..120 {
        durable.push(journal.append(&sized(i)).expect("append"));
    }
    let mut seqs = Vec::new();
    for d in durable {
        seqs.push(d.await.expect("durable"));
    }
    // Acknowledged: single frames (small gaps, read through; large ones, a new span)
    // and a run.
    let acked: Vec<u64> = [3, 4, 9, 10, 11, 12, 40, 77, 78, 79, 80, 81, 82, 83, 100]
        .iter()
        .map(|&i| seqs[i])
        .collect();
    journal.ack_many(acked.clone()).expect("ack");
    let expected: Vec<(u64, Vec<u8>)> = (0..120u64)
        .map(|i| (seqs[i as usize], sized(i)))
        .filter(|(seq, _)| !acked.contains(seq))
        .collect();
    for (limit, max_bytes) in [
        (usize::MAX, usize::MAX),
        (7, usize::MAX),
        (1000, 100_000),
        (1, usize::MAX),
    ] {
        let mut got = Vec::new();
        let mut from = seqs[0];
        loop {
            let batch = journal.read(from, limit, max_bytes).await.expect("read");
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            got.extend(batch.into_iter().map(|r| (r.seq, r.payload)));
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "{limit} records, {max_bytes} bytes"
        );
        assert!(
            got == expected,
            "{limit} records, {max_bytes} bytes: a record differs"
        );
    }
    journal.close().await.expect("close");
}
