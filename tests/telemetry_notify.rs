//! The sd_notify messages tollgate sends, received on a datagram socket standing in for systemd's
//! `$NOTIFY_SOCKET`. Environment variables are process-wide, so the tests serialise on a lock.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use support::gateway::FakeSystemd;
use support::WAIT;
use tollgate::telemetry::notify;

static ENV_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ENV_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn sends_ready_status_watchdog_and_stopping() {
    let _guard = lock();
    let mut systemd = FakeSystemd::in_env();

    notify::ready();
    assert_eq!(systemd.recv(WAIT), "READY=1\n");

    notify::status("Serving 3 listeners, 12 clients.");
    assert_eq!(
        systemd.recv(WAIT),
        "STATUS=Serving 3 listeners, 12 clients.\n"
    );

    notify::watchdog_ping();
    assert_eq!(systemd.recv(WAIT), "WATCHDOG=1\n");

    notify::stopping();
    assert_eq!(systemd.recv(WAIT), "STOPPING=1\n");
}

#[test]
fn reloading_carries_monotonic_timestamp() {
    let _guard = lock();
    let mut systemd = FakeSystemd::in_env();

    notify::reloading();
    let msg = systemd.recv(WAIT);
    let mut lines = msg.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("MONOTONIC_USEC line expected in {msg:?}"));
    let usec: u64 = usec.parse().expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
}

#[test]
fn status_newlines_cannot_inject_protocol_lines() {
    let _guard = lock();
    let mut systemd = FakeSystemd::in_env();

    notify::status("bad\nREADY=1");
    assert_eq!(systemd.recv(WAIT), "STATUS=bad READY=1\n");
}

#[test]
fn does_nothing_without_notify_socket() {
    let _guard = lock();
    std::env::remove_var("NOTIFY_SOCKET");
    // Must neither panic nor block.
    notify::ready();
    notify::reloading();
    notify::status("x");
    notify::watchdog_ping();
    notify::stopping();
}

#[test]
fn survives_a_vanished_notify_socket() {
    let _guard = lock();
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_var("NOTIFY_SOCKET", dir.path().join("gone"));
    notify::ready();
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn watchdog_interval_follows_systemd_environment() {
    let _guard = lock();
    std::env::set_var("WATCHDOG_USEC", "30000000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(notify::watchdog_interval(), Some(Duration::from_secs(30)));

    // The watchdog belongs to another process (e.g. we were forked by the main PID).
    std::env::set_var("WATCHDOG_PID", "1");
    assert_eq!(notify::watchdog_interval(), None);

    std::env::remove_var("WATCHDOG_PID");
    std::env::remove_var("WATCHDOG_USEC");
    assert_eq!(notify::watchdog_interval(), None);
}
