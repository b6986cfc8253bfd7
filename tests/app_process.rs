//! The real `tollgate` process: `tollgate run` without a config as an unprivileged
//! user (development PKI under $HOME, mosquitto clients connect over TLS), SIGHUP with
//! a broken file (keeps serving), SIGTERM (drains and exits 0 within the grace period).

mod support;

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::gateway::{write_config, FakeSystemd};
use support::{
    assert_mosquitto_pub, free_port, mosquitto_pub_output, mosquitto_tls_args, LineChild,
};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Start `tollgate run ARGS` with `envs`, as `nobody` when the tests run as root.
    fn start(dir: &Path, args: &[&str], envs: &[(&str, String)], drop_privileges: bool) -> Gateway {
        let log = dir.join("tollgate.log");
        let stderr = File::create(&log).expect("create log file");
        let binary = env!("CARGO_BIN_EXE_tollgate");
        let mut command = if drop_privileges && is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", binary]);
            c
        } else if let Some((_, limit)) = envs.iter().find(|(k, _)| *k == "TEST_NOFILE_LIMIT") {
            // Run under a tiny file descriptor limit to provoke EMFILE on accept.
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limit}")).arg(binary);
            c
        } else if envs.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            // systemd sets WATCHDOG_PID to the service's pid: the shell execs into tollgate,
            // so its $$ is tollgate's pid.
            let mut c = Command::new("sh");
            c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", binary]);
            c
        } else {
            Command::new(binary)
        };
        command
            .arg("run")
            .args(args)
            .arg("--log")
            .arg("text")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        Gateway {
            child: command.spawn().expect("spawn tollgate"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; panics with the log after `limit`.
    fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tollgate exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tollgate did not log {needle:?} within {limit:?}:\n{}",
            self.log_text()
        );
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait for the exit status; panics with the log after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!(
            "tollgate did not exit within {limit:?}:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Only this test's own child, by its id.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start `mosquitto_sub ... -C 1 -d` and return it once it has subscribed (`-d` prints
/// SUBACK); its stdout is block-buffered when not a terminal, so `stdbuf` line-buffers it.
fn mosquitto_sub_one<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> LineChild {
    let sub = LineChild::spawn(
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(args)
            .args(["-C", "1", "-W", "10", "-v", "-d"])
            .stderr(Stdio::null()),
    );
    sub.wait_for_line(
        "SUBACK",
        Duration::from_secs(20),
        "mosquitto_sub did not subscribe",
    );
    sub
}

/// Wait for the subscriber to exit successfully and return the message it printed.
fn finish_sub(mut sub: LineChild) -> String {
    let status = sub.child.wait().expect("mosquitto_sub exits");
    // The reader thread ends at EOF, which closes the channel.
    let rest: Vec<String> = sub.lines.iter().collect();
    assert!(status.success(), "mosquitto_sub failed: {rest:?}");
    rest.into_iter()
        .rfind(|l| l.starts_with("test/"))
        .unwrap_or_default()
}

#[test]
fn run_without_config_as_unprivileged_user_uses_home_for_dev_pki_and_serves_mosquitto_clients() {
    let home = tempfile::tempdir().expect("tempdir");
    // The gateway may run as `nobody`; let it write its state under this HOME.
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod home");
    let (plain, tls) = (free_port(), free_port());
    let mut gateway = Gateway::start(
        home.path(),
        &[],
        &[
            ("HOME", home.path().display().to_string()),
            ("TOLLGATE_LISTENER__0__BIND", format!("127.0.0.1:{plain}")),
            ("TOLLGATE_LISTENER__1__BIND", format!("127.0.0.1:{tls}")),
            (
                "TOLLGATE_METRICS__BIND",
                format!("127.0.0.1:{}", free_port()),
            ),
        ],
        true,
    );
    gateway.wait_for_log("tollgate is ready", Duration::from_secs(20));
    let state = home.path().join(".local/state/tollgate");
    let ca = state.join("dev-pki/ca.crt");
    assert!(
        ca.exists(),
        "development CA created under $HOME:\n{}",
        gateway.log_text()
    );
    let log = gateway.log_text();
    assert!(
        log.contains("$HOME/.local/state/tollgate"),
        "the state directory choice is logged:\n{log}"
    );
    assert!(
        log.contains(&format!("--cafile {}", ca.display())),
        "connect commands are printed:\n{log}"
    );

    let device_cert = state.join("dev-pki/devices/dev-device.crt");
    let device_key = state.join("dev-pki/devices/dev-device.key");
    assert!(
        log.contains(&format!(
            "--cert {} --key {}",
            device_cert.display(),
            device_key.display()
        )),
        "the development device certificate is in the printed commands:\n{log}"
    );
    let (tls_port, plain_port) = (tls.to_string(), plain.to_string());
    let device = mosquitto_tls_args(&tls_port, &ca, Some(&(device_cert, device_key)));
    let with_device = |extra: &[&str]| -> Vec<String> {
        let mut args = device.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let sub = mosquitto_sub_one(&with_device(&["-t", "test/#"]));
    assert_mosquitto_pub(&with_device(&["-t", "test/tls", "-m", "over tls"]));
    assert_eq!(finish_sub(sub), "test/tls over tls");

    let sub = mosquitto_sub_one(&["-h", "127.0.0.1", "-p", &plain_port, "-t", "test/#"]);
    assert_mosquitto_pub(&with_device(&["-t", "test/across", "-m", "tls to plain"]));
    assert_eq!(finish_sub(sub), "test/across tls to plain");

    // The TLS listener of the default is mutual TLS: no certificate, no connection.
    let mut no_cert = mosquitto_tls_args(&tls_port, &ca, None);
    no_cert.extend(["-t", "test/nocert", "-m", "refused"].map(String::from));
    let refused = mosquitto_pub_output(&no_cert);
    assert!(
        !refused.status.success(),
        "a client without a certificate is refused"
    );

    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(15)).success());
}

fn config_file(dir: &Path, port: u16, grace: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[shutdown]\ngrace_period = \"{grace}\"\n[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nallow_anonymous = true\n"
        ),
    )
}

#[test]
fn sighup_with_a_broken_file_logs_every_problem_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config_file(dir.path(), port, "5s");
    let mut gateway = Gateway::start(
        dir.path(),
        &["-c", config.to_str().expect("utf-8")],
        &[],
        false,
    );
    gateway.wait_for_log("tollgate is ready", Duration::from_secs(20));

    let port_arg = port.to_string();
    let sub = mosquitto_sub_one(&["-h", "127.0.0.1", "-p", &port_arg, "-t", "test/#"]);
    std::fs::write(&config, "[broker]\nmax_connections = -1\n[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:99999\"\ntransport = \"tcp\"\n").expect("break config");
    gateway.signal("HUP");
    gateway.wait_for_log(
        "the running configuration stays in force",
        Duration::from_secs(10),
    );
    let log = gateway.log_text();
    assert!(log.contains("broker.max_connections"), "{log}");
    assert!(log.contains("listener[0].bind"), "{log}");

    // The subscription made before the reload still receives, new clients still connect.
    assert_mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-t",
        "test/after",
        "-m",
        "still serving",
    ]);
    assert_eq!(finish_sub(sub), "test/after still serving");

    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn sigterm_disconnects_clients_and_exits_0_within_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A grace period far longer than the wait below: exiting in time proves the
    // gateway drained instead of sitting out the grace period, without racing a clock.
    let config = config_file(dir.path(), port, "120s");
    let mut gateway = Gateway::start(
        dir.path(),
        &["-c", config.to_str().expect("utf-8")],
        &[],
        false,
    );
    gateway.wait_for_log("tollgate is ready", Duration::from_secs(20));
    let port_arg = port.to_string();
    let mut sub = mosquitto_sub_one(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-t",
        "test/#",
        "-V",
        "mqttv5",
    ]);

    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", gateway.log_text());
    assert!(
        gateway.log_text().contains("All connections closed"),
        "{}",
        gateway.log_text()
    );
    // The subscriber's connection was closed by the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.child.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub still connected after shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err(),
        "no longer listening"
    );
}

#[test]
fn tells_systemd_ready_watchdog_reloading_and_stopping_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config_file(dir.path(), port, "3s");
    let notify_path = dir.path().join("notify.sock");
    let mut systemd = FakeSystemd::bind(&notify_path);
    let mut gateway = Gateway::start(
        dir.path(),
        &["-c", config.to_str().expect("utf-8")],
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
        false,
    );
    systemd.expect("READY=1", Duration::from_secs(20));
    // Listeners are bound before READY.
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("listening at READY");
    systemd.expect("WATCHDOG=1", Duration::from_secs(20));

    gateway.signal("HUP");
    systemd.expect("RELOADING=1", Duration::from_secs(20));
    systemd.expect("READY=1", Duration::from_secs(20));

    gateway.signal("TERM");
    systemd.expect("STOPPING=1", Duration::from_secs(20));
    assert!(gateway.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config_file(dir.path(), port, "3s");
    let mut gateway = Gateway::start(
        dir.path(),
        &["-c", config.to_str().expect("utf-8")],
        &[("TEST_NOFILE_LIMIT", "64".to_string())],
        false,
    );
    gateway.wait_for_log("tollgate is ready", Duration::from_secs(20));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Far more silent sockets than the gateway has descriptors left.
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    gateway.wait_for_log("Accept failed", Duration::from_secs(10));
    assert!(
        gateway.child.try_wait().expect("try_wait").is_none(),
        "tollgate survived EMFILE:\n{}",
        gateway.log_text()
    );
    drop(flood);

    // Once descriptors are free again, clients are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    let port_arg = port.to_string();
    loop {
        let out = mosquitto_pub_output(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port_arg,
            "-t",
            "test/after",
            "-m",
            "x",
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving after the flood:\n{}",
            gateway.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(10)).success());
}
