//! The gateway: in-process (`App`) from a written configuration, the `tollgate` binary
//! as an operator runs it, configuration fragments, and a fake systemd notify socket.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use tollgate::acl::Authorizer;
use tollgate::app::{App, AppError, Core, ReloadHandle};
use tollgate::auth::Authenticator;
use tollgate::broker::BrokerSettings;
use tollgate::config::{load_with_env, ConfigSource, LoadedConfig};

use super::pki::TestPki;
use super::wait::WAIT;

/// Write `dir/tollgate.toml`: a `[broker]` table with `data_dir = "state"` (inside
/// `dir`), then `body` (more `[broker]` keys may open it).
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, format!("[broker]\ndata_dir = \"state\"\n{body}")).expect("write config");
    path
}

/// `[auth]` lines for tests: no throttling delay (tests fail passwords on purpose from
/// 127.0.0.1) and no success cache (so every check really verifies).
pub fn auth_section(passwd: &Path) -> String {
    format!(
        "[auth]\npassword_file = {:?}\nthrottle_base = \"0\"\nthrottle_max = \"0\"\ncache_ttl = \"0\"\n",
        passwd.display().to_string()
    )
}

/// A TLS listener named `devices` on 127.0.0.1:0 with this PKI's server certificate.
pub fn tls_listener(pki: &TestPki, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\ncert = {:?}\nkey = {:?}\n{extra}\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    )
}

/// A running in-process gateway (`App::run`), stopped by [`Gateway::stop`].
pub struct Gateway {
    pub dir: PathBuf,
    pub config: PathBuf,
    addrs: HashMap<String, SocketAddr>,
    pub reload: ReloadHandle,
    /// The development PKI's CA certificate, when the configuration made one.
    pub dev_ca: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), AppError>>,
}

/// What a core factory for `App::build_with_core` gets.
pub type MakeCore = Box<
    dyn FnOnce(
        BrokerSettings,
        Arc<dyn Authenticator>,
        Arc<dyn Authorizer>,
        CancellationToken,
    ) -> Arc<dyn Core>,
>;

impl Gateway {
    /// Write `body` (after `[broker]` keys for tests: data_dir inside `dir`, no `$SYS`,
    /// a 2 s grace period) to `dir/tollgate.toml` and start the real broker with it.
    pub async fn start(dir: &Path, body: &str) -> Gateway {
        let config = write_config(
            dir,
            &format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{body}"),
        );
        Gateway::build(&config).await
    }

    /// Start the real broker from the configuration file `config`.
    pub async fn build(config: &Path) -> Gateway {
        Gateway::build_app(config, App::build).await
    }

    /// Like [`Gateway::start`], with extra component sources (an embedder's components,
    /// such as GPIO pins on a fake backend), asked again on every reload.
    pub async fn start_with_components(
        dir: &Path,
        body: &str,
        sources: Vec<tollgate::app::ComponentSource>,
    ) -> Gateway {
        let config = write_config(
            dir,
            &format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{body}"),
        );
        Gateway::build_app(&config, |loaded| {
            App::build_with_components(loaded, sources)
        })
        .await
    }

    /// Start the configuration file `config` with `make_core` standing in for the broker.
    pub async fn build_with_core(config: &Path, make_core: MakeCore) -> Gateway {
        Gateway::build_app(config, |loaded| App::build_with_core(loaded, make_core)).await
    }

    async fn build_app<F, B>(config: &Path, build: B) -> Gateway
    where
        B: FnOnce(LoadedConfig) -> F,
        F: Future<Output = Result<App, AppError>>,
    {
        let loaded = load_with_env(&ConfigSource::File(config.to_path_buf()), &HashMap::new())
            .unwrap_or_else(|e| panic!("config accepted: {e}"));
        let names: Vec<String> = loaded
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let app = build(loaded).await.expect("gateway builds");
        let addrs = names
            .iter()
            .map(|n| (n.clone(), app.local_addr(n).expect("listener bound")))
            .collect();
        let dev_ca = app.dev_pki().map(|p| p.ca_cert.clone());
        let reload = app.reload_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Gateway {
            dir: config
                .parent()
                .expect("config in a directory")
                .to_path_buf(),
            config: config.to_path_buf(),
            addrs,
            reload,
            dev_ca,
            stop: Some(stop),
            done,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("listener {name} exists"))
    }

    pub fn port(&self, name: &str) -> String {
        self.addr(name).port().to_string()
    }

    /// Ask the gateway to stop and wait (up to `WAIT`) until it ran cleanly to the end;
    /// returns how long stopping took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.stop
            .take()
            .expect("stop once")
            .send(())
            .expect("gateway still running");
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("gateway stops within the limit")
            .expect("gateway task did not panic")
            .expect("gateway ran cleanly");
        started.elapsed()
    }
}

/// Run the `tollgate` binary as an operator would, in `dir` (also its HOME), without
/// RUST_LOG.
pub fn tollgate(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    tollgate_env(args, dir, &[])
}

/// The `tollgate` binary as a command; under qemu-user without binfmt_misc a foreign
/// binary cannot be exec'd directly, so it runs through `CROSS_TEST_RUNNER`, which
/// scripts/cross-test.sh sets to the runner cargo uses.
pub fn tollgate_command() -> std::process::Command {
    let runner = std::env::var("CROSS_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    match runner.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(runner).arg(env!("CARGO_BIN_EXE_tollgate"));
            command
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")),
    }
}

/// [`tollgate`] with extra environment variables.
pub fn tollgate_env(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    tollgate_command()
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run the tollgate binary")
}

/// Collects sd_notify datagrams sent to a fake `$NOTIFY_SOCKET`.
pub struct FakeSystemd {
    socket: UnixDatagram,
    pub path: PathBuf,
    seen: Vec<String>,
    /// Set when this socket was made for and named in this process's environment.
    own: Option<tempfile::TempDir>,
}

impl FakeSystemd {
    /// A notify socket at `path` (for a child process's `NOTIFY_SOCKET`).
    pub fn bind(path: &Path) -> FakeSystemd {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        FakeSystemd {
            socket,
            path: path.to_path_buf(),
            seen: Vec::new(),
            own: None,
        }
    }

    /// A notify socket in a temporary directory, named by this process's `NOTIFY_SOCKET`
    /// until dropped (environment variables are process-wide: serialise such tests).
    pub fn in_env() -> FakeSystemd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut systemd = FakeSystemd::bind(&dir.path().join("notify"));
        systemd.own = Some(dir);
        std::env::set_var("NOTIFY_SOCKET", &systemd.path);
        systemd
    }

    /// The next datagram, failing after `limit`.
    pub fn recv(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        self.next_before(deadline)
            .unwrap_or_else(|| panic!("no notify datagram within {limit:?}; got {:?}", self.seen))
    }

    /// Wait for a datagram containing `needle` (after those already consumed).
    pub fn expect(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while let Some(message) = self.next_before(deadline) {
            if message.contains(needle) {
                return message;
            }
        }
        panic!(
            "no {needle:?} from tollgate within {limit:?}; got {:?}",
            self.seen
        );
    }

    fn next_before(&mut self, deadline: Instant) -> Option<String> {
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message =
                    String::from_utf8(buf[..n].to_vec()).expect("notify messages are UTF-8");
                self.seen.push(message.clone());
                return Some(message);
            }
        }
        None
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        if self.own.is_some() {
            std::env::remove_var("NOTIFY_SOCKET");
        }
    }
}
