//! Keep-alive over real sockets, with the real broker behind the real listeners:
//! TCP keepalive probes on accepted sockets (plain and TLS), and the per-listener MQTT
//! keep alive policy (`allow_zero_keepalive`, `min_keepalive`) as v5 and 3.1.1
//! clients see it in their CONNACK. Also: every keepalive configuration mistake is
//! reported with its key path.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;

use support::gateway::Gateway;
use support::raw::{u16_property, Connect, RawClient, SERVER_KEEP_ALIVE};
use support::{skip_unless_required, WAIT};
use tollgate::config::{load_with_env, ConfigSource};

/// The support configuration with `$SYS` off.
fn write_config(dir: &Path, body: &str) -> PathBuf {
    support::gateway::write_config(dir, &format!("sys_interval = \"0\"\n{body}"))
}

fn listener(name: &str, transport: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\ntransport = \"{transport}\"\nallow_anonymous = true\npassword_auth = false\n{extra}\n"
    )
}

/// `ss -tnoH state established '( sport = :PORT )'`: one line per server-side socket,
/// with `timer:(keepalive,...)` when SO_KEEPALIVE is on. `None` when `ss` is missing.
fn ss_server_sockets(port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ss_missing() -> bool {
    if ss_server_sockets(1).is_some() {
        return false;
    }
    !skip_unless_required("`ss` (iproute2) is not installed; cannot observe socket timers")
}

/// Wait until the accepted side of a connection to `port` shows up, and return its line.
async fn server_socket_line(port: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = ss_server_sockets(port).expect("ss runs");
        // Only the broker's side has sport = PORT; the timer is set before serving.
        if let Some(line) = out.lines().find(|l| l.contains("timer:(keepalive")) {
            return line.to_string();
        }
        if tokio::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_and_tls_listeners_turn_on_tcp_keepalive_and_one_can_turn_it_off() {
    if ss_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &[
            listener(
                "plain",
                "tcp",
                "tcp_keepalive = { idle = \"4242s\", interval = \"7s\", count = 3 }",
            ),
            listener(
                "secure",
                "tls",
                "[listener.tcp_keepalive]\nidle = \"4343s\"",
            ),
            listener("off", "tcp", "tcp_keepalive = { enabled = false }"),
        ]
        .concat(),
    );
    let running = Gateway::build(&config).await;

    // A socket that has just been accepted shows the full idle time left, which ss
    // prints in whole minutes at this size (4242 s = 70.7 min, 4343 s = 72.4 min):
    // the configured value, not the kernel default (7200 s) nor ours (60 s).
    for (name, shown) in [("plain", "70min"), ("secure", "72min")] {
        let port = running.addr(name).port();
        let _client = TcpStream::connect(running.addr(name))
            .await
            .expect("connect");
        let line = server_socket_line(port).await;
        let idle_left = line
            .split("timer:(keepalive,")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("{name}: no keepalive timer in {line:?}"));
        assert!(
            idle_left.starts_with(shown),
            "{name}: expected {shown} of idle time left, got {idle_left:?} in {line:?}"
        );
    }

    let port = running.addr("off").port();
    // A CONNACK proves the server side was accepted and set up before ss looks.
    let (_client, ack) = RawClient::connect(running.addr("off"), &connect_ka(false, 0)).await;
    assert_eq!((ack.flags, ack.body), (0, vec![0, 0x00]), "CONNACK 0");
    let out = ss_server_sockets(port).expect("ss runs");
    assert!(
        out.lines().count() == 1 && !out.contains("keepalive"),
        "keepalive off: {out:?}"
    );
    running.stop().await;
}

/// A CONNECT of the client id "ka" (clean start, no properties) with `keep_alive`.
fn connect_ka(v5: bool, keep_alive: u16) -> Vec<u8> {
    Connect {
        keep_alive,
        ..Connect::new(v5, "ka")
    }
    .encode()
}

/// The v5 CONNACK's reason code and Server Keep Alive.
async fn v5_granted(addr: SocketAddr, keep_alive: u16) -> (u8, Option<u16>) {
    let (_client, ack) = RawClient::connect(addr, &connect_ka(true, keep_alive)).await;
    (
        ack.reason_code(),
        u16_property(&ack.properties(), SERVER_KEEP_ALIVE),
    )
}

/// The 3.1.1 CONNACK return code; after a refusal the server closes the connection.
async fn v311_code(addr: SocketAddr, keep_alive: u16) -> u8 {
    let (mut client, ack) = RawClient::connect(addr, &connect_ka(false, keep_alive)).await;
    assert_eq!(ack.flags, 0, "CONNACK header: {ack:?}");
    assert_eq!(ack.body.len(), 2, "CONNACK length: {ack:?}");
    assert_eq!(ack.body[0], 0, "no session present: {ack:?}");
    let code = ack.reason_code();
    if code != 0 {
        client.closed("after the refusal").await;
    }
    code
}

#[tokio::test]
async fn keep_alive_zero_and_below_minimum_get_server_keep_alive_on_v5_and_are_refused_on_v311() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &[
            listener(
                "strict",
                "tcp",
                "allow_zero_keepalive = false\nmin_keepalive = 30",
            ),
            listener("no-zero", "tcp", "allow_zero_keepalive = false"),
            listener("open", "tcp", ""),
        ]
        .concat(),
    );
    // [broker] max_keepalive stays at its default, 65535.
    let running = Gateway::build(&config).await;
    let strict = running.addr("strict");
    let no_zero = running.addr("no-zero");
    let open = running.addr("open");
    const SUCCESS: u8 = 0;

    // v5: the server's keep alive overrides the client's (Server Keep Alive).
    assert_eq!(
        v5_granted(strict, 0).await,
        (SUCCESS, Some(30)),
        "0 -> minimum"
    );
    assert_eq!(v5_granted(strict, 10).await, (SUCCESS, Some(30)), "raised");
    assert_eq!(v5_granted(strict, 60).await, (SUCCESS, None), "kept");
    assert_eq!(
        v5_granted(no_zero, 0).await,
        (SUCCESS, Some(u16::MAX)),
        "no minimum: 0 -> [broker] max_keepalive"
    );
    assert_eq!(
        v5_granted(open, 0).await,
        (SUCCESS, None),
        "default allows 0"
    );

    // 3.1.1 cannot be told: refused with 0x02 "identifier rejected", as Mosquitto does.
    assert_eq!(v311_code(strict, 0).await, 0x02);
    assert_eq!(v311_code(strict, 10).await, 0x02);
    assert_eq!(v311_code(no_zero, 0).await, 0x02);
    assert_eq!(v311_code(strict, 30).await, 0x00);
    assert_eq!(v311_code(no_zero, 1).await, 0x00);
    assert_eq!(v311_code(open, 0).await, 0x00);
    running.stop().await;
}

#[test]
fn every_keepalive_mistake_is_reported_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &[
            "max_keepalive = 60\n".to_string(),
            listener(
                "a",
                "tcp",
                "tcp_keepalive = { idle = \"1500ms\", interval = \"0s\", count = 500, probes = 3 }\nmin_keepalive = 120",
            ),
        ]
        .concat(),
    );
    let err = load_with_env(&ConfigSource::File(config), &HashMap::new())
        .expect_err("invalid keepalive settings");
    let text = err.to_string();
    for expected in [
        "listener[0].tcp_keepalive.probes: unknown field `probes`",
        "listener[0].tcp_keepalive.idle: 1500ms is not a whole number of seconds",
        "listener[0].tcp_keepalive.interval: 0s is out of range: use 1s to 32767s",
        "listener[0].tcp_keepalive.count: 500 is out of range: use 1 to 127 probes",
        "listener[0].min_keepalive: 120 s is above [broker] max_keepalive (60 s)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn keepalive_is_on_by_default_and_follows_environment_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &listener("a", "tcp", ""));
    let loaded =
        load_with_env(&ConfigSource::File(config.clone()), &HashMap::new()).expect("valid");
    let l = &loaded.config.listeners[0];
    assert_eq!(
        l.tcp_keepalive_settings(),
        Some(tollgate::app::TcpKeepalive::default())
    );
    assert_eq!(
        l.keep_alive_policy(),
        tollgate::broker::KeepAlivePolicy::default()
    );

    let env = HashMap::from([
        (
            "TOLLGATE_LISTENER__0__TCP_KEEPALIVE__IDLE".to_string(),
            "30s".to_string(),
        ),
        (
            "TOLLGATE_LISTENER__0__MIN_KEEPALIVE".to_string(),
            "15".to_string(),
        ),
    ]);
    let loaded = load_with_env(&ConfigSource::File(config), &env).expect("valid");
    let l = &loaded.config.listeners[0];
    assert_eq!(
        l.tcp_keepalive_settings().map(|k| k.idle),
        Some(Duration::from_secs(30))
    );
    assert_eq!(l.keep_alive_policy().min, 15);
}
