//! The bridge section's rows: per-column cells from the runs (a run that lost messages
//! gives a failure, never a rate) and their names, units and targets.

use super::{LatencyRuns, Sample};
use crate::load::LoadResult;
use crate::measure::Bench;
use crate::median;
use crate::report::{self, cell, Measured};

/// Throughput cells per column: rate, lost, gateway CPU, of which in the kernel, cloud
/// CPU, fsyncs per second, messages per fsync.
type ThroughputCells = [Vec<Measured>; 7];

pub fn push_throughput_rows(bench: &mut Bench, runs: [Result<Vec<Sample>, String>; 2]) {
    let tck = bench.tck as f64;
    let mut cells: ThroughputCells = Default::default();
    for col in runs {
        let col = col.and_then(|v| {
            if v.is_empty() {
                Err("no run completed".to_string())
            } else {
                Ok(v)
            }
        });
        let column = match col {
            Ok(v) => column_cells(&v, tck),
            Err(e) => std::array::from_fn(|_| Err(e.clone())),
        };
        for (all, one) in cells.iter_mut().zip(column) {
            all.push(one);
        }
    }
    push_throughput_cells(bench, cells);
}

/// One column's throughput cells (order of [`ThroughputCells`]) from its runs.
fn column_cells(v: &[Sample], tck: f64) -> [Measured; 7] {
    let expected: u64 = v.iter().map(|s| s.result.expected).sum();
    let lost: u64 = v.iter().map(|s| s.result.lost).sum();
    let timed_out = v.iter().filter(|s| s.result.timed_out).count();
    let rate = if lost == 0 {
        cell(median(v.iter().map(|s| s.result.rate()).collect()))
    } else if timed_out > 0 {
        Err(format!(
            "FAILED: {timed_out} of {} run(s) hit the time limit, {lost} of {expected} messages not delivered",
            v.len()
        ))
    } else {
        Err(format!(
            "FAILED: {lost} of {expected} messages lost over {} run(s)",
            v.len()
        ))
    };
    let per_msg =
        |ticks: u64, s: &Sample| ticks as f64 * 1e6 / tck / s.result.received.max(1) as f64;
    let gw_cpu = cell(median(
        v.iter().map(|s| per_msg(s.gateway_ticks, s)).collect(),
    ));
    let gw_system = cell(median(
        v.iter()
            .map(|s| per_msg(s.gateway_system_ticks, s))
            .collect(),
    ));
    let cloud_cpu = cell(median(
        v.iter().map(|s| per_msg(s.cloud_ticks, s)).collect(),
    ));
    let syncs: Result<Vec<(u64, &Sample)>, String> =
        v.iter().map(|s| s.syncs.clone().map(|n| (n, s))).collect();
    let (sync_rate, per_sync) = match syncs {
        Ok(syncs) => {
            let rate = median(
                syncs
                    .iter()
                    .map(|(n, s)| *n as f64 / s.result.elapsed.as_secs_f64().max(1e-9))
                    .collect(),
            );
            let total: u64 = syncs.iter().map(|(n, _)| n).sum();
            let received: u64 = syncs.iter().map(|(_, s)| s.result.received).sum();
            let per = if total == 0 {
                Err("no fsync: in memory".to_string())
            } else {
                cell(received as f64 / total as f64)
            };
            (cell(rate), per)
        }
        Err(e) => (Err(e.clone()), Err(e)),
    };
    [
        rate,
        cell(lost as f64),
        gw_cpu,
        gw_system,
        cloud_cpu,
        sync_rate,
        per_sync,
    ]
}

fn two(v: Vec<Measured>) -> [Measured; 2] {
    v.try_into().unwrap_or_else(|_| {
        [
            Err("internal: not two columns".into()),
            Err("internal: not two columns".into()),
        ]
    })
}

/// The throughput rows from per-column cells.
pub fn push_throughput_cells(bench: &mut Bench, cells: ThroughputCells) {
    let transport = if bench.args.plain { "plain" } else { "TLS" };
    let [rate, lost, gw_cpu, gw_system, cloud_cpu, sync_rate, per_sync] = cells;
    let rows: [(String, &'static str, usize, Vec<Measured>, report::Target); 7] = [
        (
            format!("bridge QoS 1 {transport} -> gateway -> mTLS cloud, zero loss"),
            "msg/s",
            0,
            rate,
            report::Target::RatioAtLeast(1.5),
        ),
        (
            "  bridge messages lost".into(),
            "",
            0,
            lost,
            report::Target::None,
        ),
        (
            "  bridge gateway CPU per message".into(),
            "µs",
            1,
            gw_cpu,
            report::Target::None,
        ),
        (
            "  of which in the kernel (stime)".into(),
            "µs",
            1,
            gw_system,
            report::Target::None,
        ),
        (
            "  bridge cloud (Mosquitto) CPU per message".into(),
            "µs",
            1,
            cloud_cpu,
            report::Target::None,
        ),
        (
            "  bridge gateway fsyncs per second".into(),
            "1/s",
            0,
            sync_rate,
            report::Target::None,
        ),
        (
            "  bridge messages per fsync".into(),
            "",
            1,
            per_sync,
            report::Target::None,
        ),
    ];
    for (metric, unit, decimals, v, target) in rows {
        let [a, b] = two(v);
        bench.push(metric, unit, decimals, a, b, target);
    }
}

pub fn push_latency_rows(bench: &mut Bench, runs: LatencyRuns) {
    let ms = |r: &LoadResult, v: f64| -> Measured {
        if r.lost > 0 {
            Err(format!(
                "FAILED: {} of {} messages lost",
                r.lost, r.expected
            ))
        } else {
            cell(v / 1000.0)
        }
    };
    let mut through: [Vec<Measured>; 4] = Default::default();
    let mut direct_p50 = Vec::new();
    let mut direct_p99 = Vec::new();
    for col in runs {
        match col {
            Ok((t, d)) => {
                through[0].push(ms(&t, t.latency_p50_us));
                through[1].push(ms(&t, t.latency_p99_us));
                direct_p50.push(ms(&d, d.latency_p50_us));
                direct_p99.push(ms(&d, d.latency_p99_us));
                let added = |tv: f64, dv: f64| -> Measured {
                    match (ms(&t, tv), ms(&d, dv)) {
                        (Ok(x), Ok(y)) => cell(x.value - y.value),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    }
                };
                through[2].push(added(t.latency_p50_us, d.latency_p50_us));
                through[3].push(added(t.latency_p99_us, d.latency_p99_us));
            }
            Err(e) => {
                for v in through.iter_mut().chain([&mut direct_p50, &mut direct_p99]) {
                    v.push(Err(e.clone()));
                }
            }
        }
    }
    push_latency_cells(bench, through, direct_p50, direct_p99);
}

/// Latency rows: `through` = [p50, p99, added p50, added p99] per column.
pub fn push_latency_cells(
    bench: &mut Bench,
    through: [Vec<Measured>; 4],
    direct_p50: Vec<Measured>,
    direct_p99: Vec<Measured>,
) {
    let r = bench.args.bridge_latency_rate;
    let [p50, p99, add50, add99] = through;
    let rows = [
        (
            format!("bridge QoS 1 latency p50 @{r:.0} msg/s, end to end"),
            p50,
        ),
        (
            format!("bridge QoS 1 latency p99 @{r:.0} msg/s, end to end"),
            p99,
        ),
        (
            "  same publishers direct to the cloud, p50".to_string(),
            direct_p50,
        ),
        (
            "  same publishers direct to the cloud, p99".to_string(),
            direct_p99,
        ),
        ("  added by the bridge, p50".to_string(), add50),
        ("  added by the bridge, p99".to_string(), add99),
    ];
    for (metric, v) in rows {
        let [a, b] = two(v);
        bench.push(metric, "ms", 2, a, b, report::Target::None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(expected: u64, received: u64, syncs: Result<u64, String>) -> Sample {
        Sample {
            result: LoadResult {
                expected,
                received,
                duplicates: 0,
                lost: expected - received,
                elapsed: Duration::from_secs(2),
                latency_p50_us: 1000.0,
                latency_p99_us: 2000.0,
                latency_max_us: 3000.0,
                timed_out: false,
                errors: Vec::new(),
            },
            gateway_ticks: 100,
            gateway_system_ticks: 60,
            cloud_ticks: 50,
            syncs,
        }
    }

    #[test]
    fn a_lossless_column_gives_its_rate_cpu_and_syncs() {
        let [rate, lost, gw, gw_system, cloud, sync_rate, per_sync] =
            column_cells(&[sample(1000, 1000, Ok(100))], 100.0);
        assert_eq!(rate.expect("a rate").value, 500.0);
        assert_eq!(lost.expect("a count").value, 0.0);
        // 100 ticks at 100/s = 1 s of CPU over 1000 messages.
        assert_eq!(gw.expect("gateway CPU").value, 1000.0);
        assert_eq!(gw_system.expect("kernel CPU").value, 600.0);
        assert_eq!(cloud.expect("cloud CPU").value, 500.0);
        assert_eq!(sync_rate.expect("syncs/s").value, 50.0);
        assert_eq!(per_sync.expect("per sync").value, 10.0);
    }

    #[test]
    fn a_loss_is_a_failure_not_a_rate() {
        let runs = [sample(1000, 1000, Ok(0)), sample(1000, 998, Ok(0))];
        let [rate, lost, ..] = column_cells(&runs, 100.0);
        let e = rate.expect_err("no rate for a lossy column");
        assert!(e.starts_with("FAILED: 2 of 2000"), "{e}");
        assert_eq!(lost.expect("a count").value, 2.0);
    }

    #[test]
    fn no_fsync_at_all_says_in_memory_and_a_perf_failure_says_why() {
        let [.., rate, per] = column_cells(&[sample(10, 10, Ok(0))], 100.0);
        assert_eq!(rate.expect("zero is a figure").value, 0.0);
        assert!(per.expect_err("no ratio").contains("in memory"));
        let [.., rate, _] = column_cells(&[sample(10, 10, Err("perf not started".into()))], 100.0);
        assert!(rate.expect_err("no figure").contains("perf"));
    }
}
