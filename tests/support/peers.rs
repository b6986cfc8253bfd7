//! External programs as peers: Debian's mosquitto broker, mosquitto_pub/sub/passwd,
//! openssl, socat, ss... A test may skip when one is missing, but with
//! `TOLLGATE_REQUIRE_PEERS=1` (set by scripts/test-all.sh) a missing peer fails it.

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::net::free_port;
use super::wait::WAIT;

/// Whether a test that needs the external program `peer` (mosquitto, mosquitto_pub,
/// openssl, socat, ...) can run: `false` means skip (after printing why), but with
/// `TOLLGATE_REQUIRE_PEERS=1` (set by scripts/test-all.sh) a missing peer fails the test.
pub fn require_peer(peer: &str) -> bool {
    if peer_installed(peer) {
        return true;
    }
    skip_unless_required(&format!("`{peer}` is not installed (or not in PATH)"))
}

/// Whether `program` is an executable in PATH (Debian's `mosquitto` is in /usr/sbin,
/// which scripts/test-all.sh adds).
pub fn peer_installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .any(|f| {
            f.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Skip a test whose precondition is missing (returns `false` after printing
/// `reason`), or fail it when `TOLLGATE_REQUIRE_PEERS=1` says CI provides everything.
pub fn skip_unless_required(reason: &str) -> bool {
    if std::env::var("TOLLGATE_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{reason}; TOLLGATE_REQUIRE_PEERS=1 forbids skipping this test");
    }
    eprintln!("SKIPPED: {reason} (set TOLLGATE_REQUIRE_PEERS=1 to make this a failure)");
    false
}

/// Run `mosquitto_passwd` with `args`; fails the test unless it succeeds.
pub fn mosquitto_passwd(args: &[&str]) {
    let status = Command::new("mosquitto_passwd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("mosquitto_passwd runs (apt install mosquitto): {e}"));
    assert!(status.success(), "mosquitto_passwd {args:?} failed");
}

/// A password file `dir/passwd` written by the real `mosquitto_passwd` (`$7$` lines).
pub fn mosquitto_passwd_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("passwd");
    let file = path.to_str().expect("utf-8 path");
    for (i, (user, password)) in users.iter().enumerate() {
        let create: &[&str] = if i == 0 { &["-c"] } else { &[] };
        mosquitto_passwd(&[create, &["-b", file, *user, *password]].concat());
    }
    let text = std::fs::read_to_string(&path).expect("read passwd");
    assert!(
        text.contains(":$7$"),
        "mosquitto_passwd wrote $7$ lines: {text}"
    );
    path
}

/// Debian's mosquitto broker on 127.0.0.1, killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
}

impl Mosquitto {
    /// Write `dir/mosquitto.conf` (a listener on a free loopback port, then `settings`),
    /// start mosquitto with it and wait (up to `WAIT`) until it listens.
    pub fn start(dir: &Path, settings: &str) -> Mosquitto {
        Mosquitto::start_on(dir, free_port(), settings)
    }

    /// [`Mosquitto::start`] on a given port (a broker restarted where clients expect it).
    pub fn start_on(dir: &Path, port: u16, settings: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{settings}"))
            .expect("write mosquitto.conf");
        // Debian installs it in /usr/sbin, which is not always in PATH.
        let program = if peer_installed("mosquitto") {
            "mosquitto"
        } else {
            "/usr/sbin/mosquitto"
        };
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt install mosquitto)");
        let mut broker = Mosquitto { port, child };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("mosquitto exited ({status}) instead of listening on {port}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start listening on {port} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }
}

impl Mosquitto {
    /// Stop it with SIGTERM (it saves its persistence file, sends no wills for clients
    /// that disconnected cleanly) and wait until it exited.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mosquitto did not stop within {WAIT:?} after SIGTERM");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Only this test's own child, by its id.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto_pub/sub arguments that reach `localhost:port` over TLS trusting `ca`,
/// presenting `cert` (certificate, key) when given.
pub fn mosquitto_tls_args(port: &str, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut args: Vec<String> = ["-h", "localhost", "-p", port, "--cafile"]
        .map(String::from)
        .to_vec();
    args.push(ca.display().to_string());
    if let Some((c, k)) = cert {
        args.extend(["--cert".into(), c.display().to_string()]);
        args.extend(["--key".into(), k.display().to_string()]);
    }
    args
}

/// Run `mosquitto_pub` with `args`; its output.
pub fn mosquitto_pub_output<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new("mosquitto_pub")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub runs (install mosquitto-clients)")
}

/// Run `mosquitto_pub` with `args`; whether it exited 0.
pub fn mosquitto_pub<S: AsRef<OsStr>>(args: &[S]) -> bool {
    mosquitto_pub_output(args).status.success()
}

/// Run `mosquitto_pub` with `args`; fails the test (with its stderr) unless it exits 0.
pub fn assert_mosquitto_pub<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) {
    let out = mosquitto_pub_output(args);
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start the external `program` with `args`, stdin closed, stdout and stderr piped.
pub fn spawn_peer(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install Debian's mosquitto-clients")
        })
}

/// Wait for a peer to exit, killing it after `limit`; its output.
pub fn finish_within(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("child state").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("child output")
}

/// `mosquitto_sub -C count -W 10 -v` with `args`, running (see [`finish`]).
pub fn mosquitto_sub<S: AsRef<OsStr>>(args: &[S], count: usize) -> Child {
    Command::new("mosquitto_sub")
        .args(args)
        .args(["-C", &count.to_string(), "-W", "10", "-v"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (install mosquitto-clients)")
}

/// Wait for a [`mosquitto_sub`] child: (exit success, stdout, stderr).
pub fn finish(child: Child) -> (bool, String, String) {
    let out = finish_within(child, WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running peer whose stdout lines arrive on a channel (read through a pipe by a
/// thread, so a block-buffered or endless output never blocks the test); killed when
/// dropped.
pub struct LineChild {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl LineChild {
    /// Spawn `command` with its stdout piped into [`LineChild::lines`].
    pub fn spawn(command: &mut Command) -> LineChild {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineChild { child, lines }
    }

    /// Wait until a line containing `needle` arrives; fails naming `what` after `limit`
    /// (lines before it are consumed).
    pub fn wait_for_line(&self, needle: &str, limit: Duration, what: &str) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("{what} within {limit:?}"),
            }
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        // Only this test's own child, by its id.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
