//! Counting a gateway's fsync and fdatasync calls with `perf stat` on the syscall
//! tracepoints (tollgate's bridge publishes no sync counter: its journal counts syncs
//! internally, `JournalStats::syncs`, but `$SYS/tollgate/bridge/<name>/state` does not
//! carry them). It only signals the perf process it started.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `perf stat` counting one process's fsync and fdatasync calls, from start to stop.
pub struct SyncCount {
    perf: Child,
    out: PathBuf,
}

impl SyncCount {
    /// Attach to `pid` (every thread it has now: the journal's writer thread among them).
    pub fn start(pid: u32, out: PathBuf) -> Result<Self, String> {
        let perf = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf not started ({e}): apt-get install linux-perf"))?;
        Ok(SyncCount { perf, out })
    }

    /// Signal perf to stop counting (SIGINT, by the pid of the perf this bench started).
    pub fn stop(&self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.perf.id().to_string())
            .status();
    }

    /// Wait for perf's report and add up the two counters.
    pub fn finish(mut self) -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.perf.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.perf.kill();
                    let _ = self.perf.wait();
                    return Err("perf did not exit after SIGINT".into());
                }
            }
        }
        let text = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("perf wrote no report {}: {e}", self.out.display()))?;
        parse_perf_counts(&text)
    }
}

/// Sum of the `sys_enter_fsync` and `sys_enter_fdatasync` counts in `perf stat -x,` output.
fn parse_perf_counts(text: &str) -> Result<u64, String> {
    let mut total = 0;
    let mut seen = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let Some(event) = fields.get(2) else { continue };
        if !event.starts_with("syscalls:sys_enter_f") {
            continue;
        }
        let n: u64 = fields[0]
            .trim()
            .parse()
            .map_err(|_| format!("perf could not count {event}: {}", fields[0].trim()))?;
        total += n;
        seen += 1;
    }
    if seen == 2 {
        Ok(total)
    } else {
        Err(format!("perf counted {seen} of 2 events: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_counts_are_added_up_and_refusals_are_errors() {
        let ok = "# started on Mon\n\n0,,syscalls:sys_enter_fsync,2113644,100.00,,\n21,,syscalls:sys_enter_fdatasync,2113644,100.00,,\n";
        assert_eq!(parse_perf_counts(ok), Ok(21));
        let refused = "<not supported>,,syscalls:sys_enter_fsync,0,100.00,,\n3,,syscalls:sys_enter_fdatasync,1,100.00,,\n";
        assert!(parse_perf_counts(refused)
            .unwrap_err()
            .contains("could not count"));
        assert!(parse_perf_counts("").unwrap_err().contains("0 of 2"));
    }
}
