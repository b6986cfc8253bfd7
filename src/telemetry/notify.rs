//! systemd readiness protocol (`sd_notify(3)`) through the `sd-notify` crate: READY, RELOADING,
//! STOPPING, STATUS and WATCHDOG messages to `$NOTIFY_SOCKET`. Every function is a no-op when
//! `NOTIFY_SOCKET` is unset (not started by systemd, tests, containers), and a send failure is only
//! logged at debug level: telling systemd must never stop the gateway. It must never shell out to
//! `systemd-notify` and never unset `NOTIFY_SOCKET` (later messages need it).

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd that start-up (or a reload) is complete: listeners are bound and serving.
pub fn ready() {
    send(&[NotifyState::Ready], "READY");
}

/// Tells systemd a reload has begun. Sends `RELOADING=1` with `MONOTONIC_USEC`, as
/// `Type=notify-reload` requires; call [`ready`] when the reload is done (or was rejected).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now], "RELOADING"),
        Err(e) => {
            tracing::debug!(reason = %e, "Monotonic clock unreadable, sending RELOADING without MONOTONIC_USEC.");
            send(&[NotifyState::Reloading], "RELOADING");
        }
    }
}

/// Tells systemd the gateway is draining connections and will exit.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING");
}

/// Sets the one-line status shown by `systemctl status tollgate`. Newlines are replaced by
/// spaces because the protocol is newline-separated.
pub fn status(msg: &str) {
    let line = msg.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)], "STATUS");
}

/// The service's `WatchdogSec=` when systemd expects watchdog pings from this process, else
/// `None`. Ping with [`watchdog_ping`] at least every half of this interval, and only while the
/// gateway is actually healthy (from the router's health loop, not from a free-running timer).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0_u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec))
    } else {
        None
    }
}

/// Tells systemd the gateway is alive (`WATCHDOG=1`).
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog], "WATCHDOG");
}

fn send(states: &[NotifyState<'_>], what: &'static str) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(message_kind = what, reason = %e, "Could not notify systemd.");
    }
}
