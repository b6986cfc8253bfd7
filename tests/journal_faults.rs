//! Fault tests of the journal through its public API: torn and damaged segments, a
//! writer killed with SIGKILL at random moments, and a file-size limit standing in for
//! a full disk. The crash and disk-full writers are this test binary re-executed as a
//! child process (the `child_*` tests, ignored unless the parent starts them).
//!
//! `TOLLGATE_JOURNAL_CRASH_RUNS` sets how many times the writer is killed (default 5;
//! `TOLLGATE_JOURNAL_CRASH_RUNS=200 cargo test --release --test journal_faults` is the
//! long setting).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::journal::{Journal, JournalConfig, SyncMode, RECORD_HEADER_BYTES};

const CHILD_DIR: &str = "TOLLGATE_JOURNAL_CHILD_DIR";

fn config(segment_bytes: u64) -> JournalConfig {
    JournalConfig {
        sync: SyncMode::Batch,
        segment_bytes,
        max_bytes: 64 << 20,
        ..JournalConfig::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list journal dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn payload(i: usize) -> Vec<u8> {
    // Lengths vary so frames do not line up on a period.
    let len = 5 + (i * 7) % 23;
    (0..len).map(|b| (i + b) as u8).collect()
}

/// Append `count` records with `payload(i)` for i in 1..=count and close.
fn write_journal(dir: &Path, config: JournalConfig, count: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (journal, _) = Journal::open(dir, config).await.expect("open");
        for i in 1..=count {
            journal.append_durable(&payload(i)).await.expect("append");
        }
        journal.close().await.expect("close");
    });
}

fn pending_seqs(dir: &Path, config: JournalConfig) -> (Vec<u64>, tollgate::journal::LossReport) {
    let (_, recovery) = Journal::open_blocking(dir, config).expect("reopen");
    (
        recovery.pending.iter().map(|p| p.seq).collect(),
        recovery.lost,
    )
}

#[test]
fn truncation_at_any_byte_of_the_last_records_keeps_exactly_the_intact_prefix() {
    let source = tempfile::tempdir().expect("tempdir");
    let count = 10;
    write_journal(source.path(), config(1 << 20), count);
    let segment = segment_files(source.path()).pop().expect("one segment");
    let name = segment.file_name().expect("name").to_owned();
    let whole = std::fs::read(&segment).expect("read segment");
    // Record i ends at ends[i - 1].
    let ends: Vec<u64> = (1..=count)
        .scan(0u64, |end, i| {
            *end += (RECORD_HEADER_BYTES + payload(i).len()) as u64;
            Some(*end)
        })
        .collect();
    assert_eq!(*ends.last().expect("ends"), whole.len() as u64);

    let from = ends[count - 4];
    for cut in from..=whole.len() as u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(&name), &whole[..cut as usize]).expect("write cut");
        let intact = ends.iter().filter(|&&end| end <= cut).count();
        let boundary = if intact == 0 { 0 } else { ends[intact - 1] };

        let (journal, recovery) =
            Journal::open_blocking(dir.path(), config(1 << 20)).expect("open cut journal");
        let seqs: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
        assert_eq!(
            seqs,
            (1..=intact as u64).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        assert_eq!(
            recovery.lost.bytes,
            cut - boundary,
            "lost bytes, cut at {cut}"
        );
        assert_eq!(
            recovery.lost.records,
            u64::from(cut > boundary),
            "lost records, cut at {cut}"
        );
        assert_eq!(journal.counters().lost_bytes_at_open, cut - boundary);
        let len = std::fs::metadata(dir.path().join(&name))
            .expect("stat")
            .len();
        assert_eq!(len, boundary, "torn tail removed, cut at {cut}");
        drop(journal);
    }
}

/// Flip one byte inside record `victim` of the middle segment of three.
fn damaged_middle_segment(flip_header: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    // 512-byte segments hold about 15 of these records.
    write_journal(dir.path(), config(512), 40);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let middle = &segments[1];
    let first_seq: usize = middle
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment named by its first seq");
    let mut bytes = std::fs::read(middle).expect("read");
    let in_segment = bytes.len();
    let records_in_segment = {
        let (mut offset, mut n) = (0, 0);
        while offset < in_segment {
            offset += RECORD_HEADER_BYTES + payload(first_seq + n).len();
            n += 1;
        }
        n
    };
    let victim_index = records_in_segment / 2;
    let victim_offset: usize = (0..victim_index)
        .map(|k| RECORD_HEADER_BYTES + payload(first_seq + k).len())
        .sum();
    let flip_at = victim_offset
        + if flip_header {
            9
        } else {
            RECORD_HEADER_BYTES + 1
        };
    bytes[flip_at] ^= 0x40;
    std::fs::write(middle, &bytes).expect("write damaged");

    let (seqs, lost) = pending_seqs(dir.path(), config(512));
    let victim = (first_seq + victim_index) as u64;
    let segment_end = (first_seq + records_in_segment) as u64; // first seq of the next
    let expected: Vec<u64> = (1..victim).chain(segment_end..=40).collect();
    assert_eq!(seqs, expected, "before the damage and every later segment");
    assert_eq!(lost.bytes, (in_segment - victim_offset) as u64);
    assert_eq!(
        lost.records,
        segment_end - victim,
        "the damaged record and the rest of its segment"
    );
    assert_eq!(lost.segments.len(), 1);
    assert_eq!(&lost.segments[0].path, middle);
    // A damaged sealed segment is left as it is; it is reported at every open until its
    // remaining records are acknowledged.
    assert_eq!(std::fs::read(middle).expect("read").len(), in_segment);
}

#[test]
fn flipped_payload_byte_mid_segment_loses_the_rest_of_that_segment_only() {
    damaged_middle_segment(false);
}

#[test]
fn flipped_header_byte_mid_segment_loses_the_rest_of_that_segment_only() {
    damaged_middle_segment(true);
}

#[test]
fn flipped_byte_in_the_last_segment_cuts_it_and_appends_continue_after_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_journal(dir.path(), config(1 << 20), 20);
    let segment = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let tenth: usize = (1..10)
        .map(|i| RECORD_HEADER_BYTES + payload(i).len())
        .sum();
    bytes[tenth + RECORD_HEADER_BYTES] ^= 1;
    std::fs::write(&segment, &bytes).expect("write");
    let (seqs, lost) = pending_seqs(dir.path(), config(1 << 20));
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    assert_eq!(lost.records, 11);
    write_journal(dir.path(), config(1 << 20), 1);
    let (seqs, lost) = pending_seqs(dir.path(), config(1 << 20));
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(lost.records, 0, "the damage was cut away at the first open");
}

/// The lines a child printed, read on a thread while it runs.
struct ChildOutput {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

fn read_lines(stdout: std::process::ChildStdout) -> ChildOutput {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines lock").push(line);
        }
    });
    ChildOutput { lines, reader }
}

/// Complete report lines only: a line torn by the kill lacks the final `.`.
fn parse_reports(lines: &[String]) -> (BTreeMap<u64, Vec<u8>>, BTreeSet<u64>) {
    let mut durable = BTreeMap::new();
    let mut acked = BTreeSet::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["durable", seq, hex, "."] => {
                let payload = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                durable.insert(seq.parse().expect("seq"), payload);
            }
            ["acked", seq, "."] => {
                acked.insert(seq.parse().expect("seq"));
            }
            _ => {}
        }
    }
    (durable, acked)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn crash_config() -> JournalConfig {
    // Small segments so the writer rolls and reclaims segments while it is killed.
    config(64 * 1024)
}

#[test]
fn writer_killed_at_a_random_moment_loses_no_record_reported_durable() {
    let runs: usize = std::env::var("TOLLGATE_JOURNAL_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let exe = std::env::current_exe().expect("test binary path");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut total_durable = 0;
    let mut first_seq_of_run = 1;
    for run in 0..runs {
        // One directory across runs: each writer continues the journal the last left.
        let mut child = Command::new(&exe)
            .args(["child_crash_writer", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start writer child");
        let output = read_lines(child.stdout.take().expect("stdout"));
        let started = Instant::now();
        while !output
            .lines
            .lock()
            .expect("lines lock")
            .iter()
            .any(|l| l.starts_with("durable"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child never wrote"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 300));
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        output.reader.join().expect("reader thread");
        let lines = output.lines.lock().expect("lines lock").clone();
        let (durable, acked) = parse_reports(&lines);
        total_durable += durable.len();

        let (journal, recovery) =
            Journal::open_blocking(dir.path(), crash_config()).expect("reopen after crash");
        let loaded: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
        assert!(
            loaded.windows(2).all(|w| w[0] < w[1]),
            "run {run}: loaded records in order"
        );
        let loaded_set: BTreeSet<u64> = loaded.iter().copied().collect();
        for seq in durable.keys() {
            assert!(
                loaded_set.contains(seq) || acked.contains(seq),
                "run {run}: record {seq} was reported durable, never acked, and is missing"
            );
        }
        // A prefix: nothing this run appended is missing below the highest loaded
        // record, except what it acknowledged.
        let highest = loaded.last().copied().unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let records = runtime
            .block_on(journal.read(0, usize::MAX, usize::MAX))
            .expect("read back");
        for record in &records {
            if let Some(expected) = durable.get(&record.seq) {
                assert_eq!(
                    &record.payload, expected,
                    "run {run}: record {}",
                    record.seq
                );
            }
        }
        for seq in first_seq_of_run..=highest {
            assert!(
                loaded_set.contains(&seq) || acked.contains(&seq),
                "run {run}: record {seq} missing below record {highest}: not a prefix"
            );
        }
        first_seq_of_run = journal.next_seq();
        // Acknowledge everything loaded so the next run starts from a clean queue;
        // gaps would otherwise hide a non-prefix load.
        journal.ack_many(loaded).expect("ack all");
        runtime.block_on(journal.close()).expect("close");
        eprintln!(
            "run {run}: {} durable, {} lost at open ({} bytes)",
            durable.len(),
            recovery.lost.records,
            recovery.lost.bytes
        );
    }
    assert!(total_durable > 0);
}

/// The crash writer: 4 tasks append in pipelined batches, print every record reported
/// durable, and acknowledge every third.
#[test]
#[ignore = "child process of writer_killed_at_a_random_moment_loses_no_record_reported_durable"]
fn child_crash_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // libtest has printed "test child_... ... " without a newline: end that line.
    println!();
    runtime.block_on(async move {
        let (journal, _) = Journal::open(&dir, crash_config()).await.expect("open");
        let mut tasks = Vec::new();
        for task in 0..4u64 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0u64.. {
                    let mut batch = Vec::new();
                    for k in 0..16 {
                        let body = format!("task {task} round {round} item {k}").into_bytes();
                        let durable = journal.append(&body).expect("append accepted");
                        batch.push((durable, body));
                    }
                    for (durable, body) in batch {
                        let seq = durable.await.expect("durable");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "durable {seq} {} .", hex(&body)).expect("print");
                        out.flush().expect("flush");
                        drop(out);
                        if seq % 3 == 0 {
                            // Reported before it is sent: a kill in between leaves a
                            // record that may or may not be acked, never an unknown ack.
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "acked {seq} .").expect("print");
                            out.flush().expect("flush");
                            drop(out);
                            journal.ack(seq).expect("ack");
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
    });
}

#[test]
fn file_size_limit_fails_appends_with_an_error_and_keeps_every_durable_record() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = tempfile::tempdir().expect("tempdir");
    // The shell ignores SIGXFSZ (inherited through exec) so a write past the limit
    // returns EFBIG instead of killing the writer; the soft limit stands in for a full
    // disk and the child lifts it to play "space came back".
    let output = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=65536:unlimited -- \"$0\" \"$@\"")
        .arg(&exe)
        .args([
            "child_disk_full_writer",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .output()
        .expect("run disk-full writer child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    let (durable, _) = parse_reports(&lines);
    let failed: BTreeSet<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("failed "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("failed ")).collect();
    assert!(!failed.is_empty(), "the limit was never hit:\n{stdout}");
    assert!(
        errors.iter().all(|l| l.contains("File too large")),
        "the error names the cause: {errors:?}"
    );
    assert!(lines.iter().any(|l| l == "recovered ."), "{stdout}");
    let last_failed = *failed.iter().last().expect("failed");
    assert!(
        durable.keys().any(|&s| s > last_failed),
        "appends succeed again after space returns"
    );

    let (journal, recovery) = Journal::open_blocking(dir.path(), config(1 << 20)).expect("reopen");
    let loaded: Vec<u64> = recovery.pending.iter().map(|p| p.seq).collect();
    let expected: Vec<u64> = durable.keys().copied().collect();
    assert_eq!(loaded, expected, "exactly the records reported durable");
    assert!(failed.iter().all(|s| !loaded.contains(s)));
    assert_eq!(recovery.lost.records, 0, "failed writes were rolled back");
    drop(journal);
}

/// The disk-full writer: append 2 KiB records one at a time until the file-size limit
/// refuses them, try a few more, lift the limit, append again.
#[test]
#[ignore = "child process of file_size_limit_fails_appends_with_an_error_and_keeps_every_durable_record"]
fn child_disk_full_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!();
    runtime.block_on(async move {
        let (journal, _) = Journal::open(&dir, config(1 << 20)).await.expect("open");
        let report = |line: String| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").expect("print");
            out.flush().expect("flush");
        };
        let mut failures = 0;
        for i in 0..200u64 {
            let body = vec![i as u8; 2048];
            let durable = journal.append(&body).expect("accepted");
            let seq = durable.seq();
            match durable.await {
                Ok(seq) => report(format!("durable {seq} {} .", hex(&body))),
                Err(e) => {
                    report(format!("failed {seq} {e}"));
                    failures += 1;
                    if failures == 3 {
                        break;
                    }
                }
            }
        }
        let lifted = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                "--fsize=unlimited:unlimited",
            ])
            .status()
            .expect("run prlimit");
        assert!(lifted.success(), "could not lift the file-size limit");
        report("recovered .".into());
        for i in 0..5u8 {
            let body = vec![i; 2048];
            let seq = journal
                .append_durable(&body)
                .await
                .expect("durable after recovery");
            report(format!("durable {seq} {} .", hex(&body)));
        }
        journal.close().await.expect("close");
    });
}
