//! The `tollgate` binary as a separate process (so it can be killed with SIGKILL or
//! stopped with SIGTERM like systemd does), its stderr log collected line by line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::gateway::tollgate_command;

/// A running `tollgate run -c tollgate.toml` in a directory; SIGKILLed when dropped.
pub struct GatewayProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl GatewayProcess {
    /// Start `dir/tollgate.toml` (text logs, `rust_log` as RUST_LOG when given) and wait
    /// until it is ready and every one of its `bridges` opened its journal (a message
    /// published before a bridge subscribed locally is not forwarded).
    pub fn start(dir: &Path, rust_log: Option<&str>, bridges: usize) -> GatewayProcess {
        GatewayProcess::start_with(tollgate_command(), dir, rust_log, bridges)
    }

    /// Start `dir/tollgate.toml` and wait until its log has shown every one of `markers`
    /// (e.g. "tollgate is ready", "Broker state loaded").
    pub fn start_until(dir: &Path, markers: &[&str]) -> GatewayProcess {
        let mut seen = vec![false; markers.len()];
        GatewayProcess::launch(tollgate_command(), dir, None, |line| {
            for (i, m) in markers.iter().enumerate() {
                seen[i] |= line.contains(m);
            }
            seen.iter().all(|s| *s)
        })
    }

    /// [`GatewayProcess::start`] with a prepared command (e.g. run through `unshare`);
    /// `run -c tollgate.toml` is appended to its arguments.
    pub fn start_with(
        command: Command,
        dir: &Path,
        rust_log: Option<&str>,
        bridges: usize,
    ) -> GatewayProcess {
        let (mut ready, mut opened) = (false, 0);
        GatewayProcess::launch(command, dir, rust_log, |line| {
            ready |= line.contains("tollgate is ready");
            opened += usize::from(line.contains("Bridge journal opened"));
            ready && opened >= bridges
        })
    }

    /// Spawn `command run -c tollgate.toml` in `dir` (HOME = `dir`; no `TOLLGATE_*` or
    /// `RUST_LOG` from the test's environment: they would be configuration overrides)
    /// and read its log until `done` says so (30 s at most).
    fn launch(
        mut command: Command,
        dir: &Path,
        rust_log: Option<&str>,
        mut done: impl FnMut(&str) -> bool,
    ) -> GatewayProcess {
        command
            .args(["--log", "text", "run", "-c", "tollgate.toml"])
            .current_dir(dir)
            .env("HOME", dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("TOLLGATE_") {
                command.env_remove(key);
            }
        }
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().expect("start tollgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut gateway = GatewayProcess { child, log, lines };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match gateway.lines.recv_timeout(left) {
                Ok(line) => {
                    if done(&line) {
                        break;
                    }
                }
                Err(e) => {
                    gateway.kill();
                    panic!("gateway not ready: {e}; log: {:#?}", gateway.lines());
                }
            }
        }
        gateway
    }

    /// Wait for a log line containing `needle` (lines before it are consumed); fails
    /// with the whole log after `limit`.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {limit:?}; log: {:#?}",
                    self.lines()
                ),
            }
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop, as systemd does) and wait for the exit; its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!("tollgate did not stop within 30 s of SIGTERM");
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Only this test's own child, by its id.
        self.kill();
    }
}
