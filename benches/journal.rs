//! Journal throughput and latency: `cargo bench --bench journal`.
//!
//! 4 appender tasks append 64-byte records for a few seconds in each sync mode and
//! print appends/s, fsyncs/s and append-to-durable latency (p50/p99). "window" is how
//! many appends one appender keeps in flight: 1 is a publisher waiting for each PUBACK,
//! 64 a bridge pipelining the QoS 1 messages of many publishers. The journal goes in
//! `TOLLGATE_BENCH_DIR` (default: the system temp dir); set it to the disk under test.
//! `TOLLGATE_BENCH_SECONDS` sets the length of each run (default 3). Last, a backlog of
//! 300,000 records is read back from disk as the bridge drains one after an outage.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate::journal::{Journal, JournalConfig, SyncMode};

const APPENDERS: usize = 4;
const RECORD: [u8; 64] = [0x5a; 64];

struct Figures {
    appends: u64,
    syncs: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn run(sync: SyncMode, window: usize, seconds: u64) -> Figures {
    let base = std::env::var_os("TOLLGATE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let config = JournalConfig {
        sync,
        max_bytes: 4 << 30,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::open(dir.path(), config).await.expect("open");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            let mut in_flight = VecDeque::with_capacity(window);
            let mut appended = 0u64;
            loop {
                let done = Instant::now() >= deadline;
                if !done && in_flight.len() < window {
                    let durable = journal.append(&RECORD).expect("append accepted");
                    in_flight.push_back((Instant::now(), durable));
                    continue;
                }
                let Some((at, durable)) = in_flight.pop_front() else {
                    break;
                };
                let seq = durable.await.expect("durable");
                latency
                    .record(at.elapsed().as_micros() as u64)
                    .expect("record latency");
                appended += 1;
                // Acknowledge as the cloud would, so segments are reclaimed as in service.
                journal.ack(seq).expect("ack");
            }
            (appended, latency)
        }));
    }
    let mut figures = Figures {
        appends: 0,
        syncs: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3).expect("histogram"),
    };
    for task in tasks {
        let (appended, latency) = task.await.expect("appender");
        figures.appends += appended;
        figures.latency.add(latency).expect("merge histogram");
    }
    figures.elapsed = start.elapsed();
    figures.syncs = journal.counters().syncs;
    journal.close().await.expect("close");
    figures
}

/// A backlog read back from disk as the bridge drains it after an outage: `records`
/// 100-byte records appended (no in-memory tail), every eleventh acknowledged (gaps),
/// then read in batches of 4,000 records / 1 MiB. Records/s and MB/s of the reads.
async fn backlog(records: u64) -> (f64, f64) {
    let base = std::env::var_os("TOLLGATE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let config = JournalConfig {
        max_bytes: 4 << 30,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::open(dir.path(), config).await.expect("open");
    let record = [0xa5u8; 100];
    let mut pending = VecDeque::new();
    for i in 0..records {
        pending.push_back(journal.append(&record).expect("append accepted"));
        if pending.len() >= 1024 || i + 1 == records {
            while let Some(d) = pending.pop_front() {
                let seq = d.await.expect("durable");
                if seq % 11 == 0 {
                    journal.ack(seq).expect("ack");
                }
            }
        }
    }
    journal.sync().await.expect("sync");
    let start = Instant::now();
    let (mut from, mut read, mut bytes) = (0, 0u64, 0u64);
    loop {
        let batch = journal.read(from, 4000, 1 << 20).await.expect("read");
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        read += batch.len() as u64;
        bytes += batch.iter().map(|r| r.payload.len() as u64).sum::<u64>();
    }
    let secs = start.elapsed().as_secs_f64();
    journal.close().await.expect("close");
    (read as f64 / secs, bytes as f64 / secs / 1e6)
}

fn main() {
    let seconds = std::env::var("TOLLGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "journal: {APPENDERS} appenders, 64-byte records, {seconds} s per run, dir {}",
        std::env::var("TOLLGATE_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string())
    );
    println!(
        "{:<16} {:>6} {:>12} {:>10} {:>12} {:>12}",
        "mode", "window", "appends/s", "fsyncs/s", "p50 latency", "p99 latency"
    );
    let cases = [
        ("batch", SyncMode::Batch, 64),
        ("batch", SyncMode::Batch, 1),
        ("always", SyncMode::Always, 64),
        ("always", SyncMode::Always, 1),
        (
            "interval 10ms",
            SyncMode::Interval(Duration::from_millis(10)),
            64,
        ),
        (
            "interval 10ms",
            SyncMode::Interval(Duration::from_millis(10)),
            1,
        ),
    ];
    for (name, sync, window) in cases {
        let f = runtime.block_on(run(sync, window, seconds));
        let secs = f.elapsed.as_secs_f64();
        println!(
            "{:<16} {:>6} {:>12.0} {:>10.0} {:>10} us {:>9} us",
            name,
            window,
            f.appends as f64 / secs,
            f.syncs as f64 / secs,
            f.latency.value_at_quantile(0.5),
            f.latency.value_at_quantile(0.99),
        );
    }
    let records = 300_000;
    let (per_s, mb_s) = runtime.block_on(backlog(records));
    println!(
        "backlog read from disk: {records} records of 100 bytes (every 11th acknowledged), batches of 4,000 / 1 MiB: {per_s:.0} records/s, {mb_s:.1} MB/s"
    );
}
