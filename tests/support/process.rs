//! The `tollgate` binary as a separate process (so it can be killed with SIGKILL or
//! stopped with SIGTERM), its log captured line by line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gateway::tollgate_command;

/// The `tollgate` binary running `dir/tollgate.toml`; SIGKILLed when dropped.
pub struct GatewayProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Start it in `dir` (HOME = `dir`, no `TOLLGATE_*` or `RUST_LOG` from the test's
    /// environment: they would be configuration overrides) and wait until its log has
    /// shown every one of `markers` (e.g. "tollgate is ready").
    pub fn start(dir: &Path, markers: &[&str]) -> GatewayProcess {
        let mut command = tollgate_command();
        command
            .args(["--log", "text", "run", "-c", "tollgate.toml"])
            .current_dir(dir)
            .env("HOME", dir)
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars() {
            if key.starts_with("TOLLGATE_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut gateway = GatewayProcess { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = vec![false; markers.len()];
        while !seen.iter().all(|s| *s) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    for (i, m) in markers.iter().enumerate() {
                        seen[i] |= line.contains(m);
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

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit (panics after 30 s or on a failure status).
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "tollgate exited with {status}: {:#?}",
                    self.lines()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every line it has logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
