//! A digital output at run time: driven to `initial` at start, then by commands on
//! `<prefix>/<name>/set` (the ACL decides who may publish there): `on`, `off`,
//! `toggle` (or true/false/1/0), plain or as JSON `{"state": "on", "for": "5s"}`; a
//! `for` (at most `max_for`) reverts to the state before the command when it ends,
//! unless another command came first (a timed command during another one's time
//! restarts the time and keeps the state the first one reverts to). Every state is echoed retained on
//! `<prefix>/<name>`, every command audited with its writer's identity, retained
//! commands are refused (a replay is not a command). Every command is answered on
//! `<prefix>/<name>/set/result` (and the MQTT 5 response topic, with its correlation
//! data): `{"ok": true, "state": ..}` with the resulting state, or `{"ok": false,
//! "error": ..}` with the precise refusal and the state the output kept. On shutdown the
//! output is driven to its `safe` state, whatever happened before.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backend::PinBackend;
use super::config::OutputConfig;
use super::input::word;
use super::Outlet;
use crate::broker::codec::v5;
use crate::broker::{Delivery, InternalClient};
use crate::component::{Health, HealthReporter};
use crate::reply;
use crate::telemetry::audit::{Event, Kind};
use crate::telemetry::limit::LogStr;

/// Largest command payload read.
const MAX_COMMAND: usize = 256;
/// Shortest timed pulse (a shorter one would be answered and audited as "0s").
const MIN_FOR: Duration = Duration::from_millis(1);

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drive to on (`true`) or off.
    Set(bool),
    /// The opposite of the current state.
    Toggle,
}

/// `on`, `off`, `toggle`, `true`, `1`, ... or `{"state": .., "for": ".."}`: the command
/// and its duration.
pub fn parse(payload: &[u8]) -> Result<(Command, Option<Duration>), String> {
    if payload.len() > MAX_COMMAND {
        return Err(format!(
            "command of {} bytes: at most {MAX_COMMAND}",
            payload.len()
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| "command is not UTF-8".to_string())?
        .trim();
    let word_of = |v: &serde_json::Value| -> Result<Command, String> {
        match v {
            serde_json::Value::Bool(b) => Ok(Command::Set(*b)),
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(Command::Set(true)),
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(Command::Set(false)),
            serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Ok(Command::Set(true)),
                "off" | "false" | "0" => Ok(Command::Set(false)),
                "toggle" => Ok(Command::Toggle),
                other => Err(format!(
                    "{:?} is not a state: use on, off or toggle",
                    LogStr(other).to_string()
                )),
            },
            other => Err(format!("{other} is not a state: use on, off or toggle")),
        }
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| !matches!(k.as_str(), "state" | "for")) {
                return Err(format!(
                    "unknown field {:?}: use state and for",
                    LogStr(k).to_string()
                ));
            }
            let command = word_of(m.get("state").ok_or("JSON command without \"state\"")?)?;
            let duration = match m.get("for") {
                None => None,
                Some(serde_json::Value::String(s)) => Some(crate::duration::parse(s)?),
                Some(serde_json::Value::Number(n)) => {
                    let secs = n
                        .as_f64()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or("for must be a positive number of seconds")?;
                    Some(Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?)
                }
                Some(other) => {
                    return Err(format!("for {other} is not a duration: use e.g. \"5s\""))
                }
            };
            Ok((command, duration))
        }
        Ok(v) => Ok((word_of(&v)?, None)),
        Err(_) => Ok((word_of(&serde_json::Value::String(text.to_string()))?, None)),
    }
}

/// The running output.
struct Output {
    config: OutputConfig,
    pin: u8,
    backend: Arc<dyn PinBackend>,
    out: Outlet,
    topic: String,
    state: bool,
    /// A timed command's end: when, and the state to go back to.
    revert: Option<(Instant, bool)>,
    commands: u64,
    refused: u64,
    /// Commands the backend did not carry out (the pin refused the write).
    failed: u64,
}

impl Output {
    async fn drive(&mut self, on: bool) -> Result<(), String> {
        self.backend.write(self.pin, on != self.config.inverted)?;
        self.state = on;
        self.out.data(&self.topic, word(on), true).await;
        Ok(())
    }

    /// Apply one delivered command; audit and answer it.
    async fn command(&mut self, delivery: &Delivery) {
        let asked = LogStr(&String::from_utf8_lossy(
            &delivery.payload[..delivery.payload.len().min(64)],
        ))
        .to_string();
        let result = if delivery.retain {
            Err(
                "retained command not executed: publish commands without the retain flag"
                    .to_string(),
            )
        } else {
            parse(&delivery.payload).and_then(|(c, d)| match d {
                Some(d) if d > self.config.max_for || d < MIN_FOR => Err(format!(
                    "for {} is out of range: 1ms up to {} (max_for)",
                    crate::duration::format(d),
                    crate::duration::format(self.config.max_for)
                )),
                _ => Ok((c, d)),
            })
        };
        let mut answer = json!({ "ok": false });
        let (kind, outcome, reason) = match result {
            Err(why) => {
                self.refused += 1;
                answer["error"] = why.as_str().into();
                (
                    Kind::FieldWriteRefused,
                    "refused",
                    format!("command {asked}: {why}"),
                )
            }
            Ok((command, duration)) => {
                let before = self.state;
                let on = match command {
                    Command::Set(on) => on,
                    Command::Toggle => !before,
                };
                // A timed command during another one's time goes back to where the first
                // started: re-triggering a pulse must never leave the output in it.
                let then = match (duration, self.revert) {
                    (Some(_), Some((_, pending))) => pending,
                    _ => before,
                };
                match self.drive(on).await {
                    Ok(()) => {
                        self.commands += 1;
                        self.revert = duration.map(|d| (Instant::now() + d, then));
                        let timed = duration.map_or(String::new(), |d| {
                            format!(" for {}", crate::duration::format(d))
                        });
                        answer["ok"] = true.into();
                        if let Some(d) = duration {
                            answer["for"] = crate::duration::format(d).into();
                            answer["then"] = word(then).into();
                        }
                        (
                            Kind::FieldWrite,
                            "success",
                            format!("command {asked}: {}{timed}", word(on)),
                        )
                    }
                    Err(e) => {
                        self.failed += 1;
                        answer["error"] = format!("the pin refused: {e}").into();
                        (Kind::FieldWrite, "failure", format!("command {asked}: {e}"))
                    }
                }
            }
        };
        let event = Event::new(kind)
            .topic(&delivery.topic)
            .outcome(outcome)
            .reason(&reason);
        match delivery.publisher.as_deref() {
            Some(id) => event.identity(id),
            None => event.client_id("<unknown publisher>"),
        }
        .emit();
        answer["state"] = word(self.state).into();
        answer["ts"] = crate::timestamp::rfc3339(std::time::SystemTime::now()).into();
        let to = reply::Address::of(&delivery.topic, delivery.properties.as_ref());
        reply::publish(&self.out.data, &to, answer.to_string(), "GPIO set").await;
    }

    fn doc(&self) -> String {
        json!({
            "output": self.config.name,
            "pin": self.config.pin,
            "state": word(self.state),
            "commands": self.commands,
            "refused": self.refused,
            "failed": self.failed,
            "timed": self.revert.is_some(),
            "ts": crate::timestamp::rfc3339(std::time::SystemTime::now()),
        })
        .to_string()
    }
}

/// Run output `config` until `shutdown`, then drive it to its safe state.
pub(super) async fn run(
    config: OutputConfig,
    topic: String,
    backend: Arc<dyn PinBackend>,
    out: Outlet,
    mut commands: Option<InternalClient>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let pin = config.pin as u8;
    let initial = config.initial.is_on();
    if let Err(e) = backend.output(pin, initial != config.inverted) {
        warn!(output = %config.name, pin, error = %e, "GPIO output not started.");
        health.set(Health::Failed(e));
        return;
    }
    let mut o = Output {
        pin,
        backend,
        out,
        topic,
        state: initial,
        revert: None,
        commands: 0,
        refused: 0,
        failed: 0,
        config,
    };
    o.out.data(&o.topic, word(initial), true).await;
    health.set(Health::Ok(format!("GPIO {pin} {}", word(initial))));
    let set = format!("{}/set", o.topic);
    if let Some(client) = &commands {
        match reply::subscribe_commands(client, &set).await {
            Ok(v5::SubscribeReasonCode::Success(_)) => {
                info!(output = %o.config.name, pin, topic = %set, "GPIO output accepts commands.")
            }
            other => {
                warn!(output = %o.config.name, topic = %set, result = ?other, "GPIO output commands disabled: the ACL does not let the adapter subscribe to its set topic.");
                commands = None;
            }
        }
    }
    let mut next_sys = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            d = async { commands.as_mut().expect("guarded").recv().await }, if commands.is_some() => match d {
                Some(d) => {
                    o.command(&d).await;
                    let _ = d.ack().await;
                }
                None => commands = None,
            },
            _ = sleep_until(o.revert.map_or_else(Instant::now, |r| r.0)), if o.revert.is_some() => {
                let (_, back) = o.revert.take().expect("guarded");
                if let Err(e) = o.drive(back).await {
                    warn!(output = %o.config.name, pin, error = %e, "GPIO output could not revert after a timed command.");
                }
            }
            _ = sleep_until(next_sys) => {
                o.out.sys(&o.doc()).await;
                next_sys = Instant::now() + Duration::from_secs(10);
            }
        }
    }
    let safe = o.config.safe.is_on();
    o.revert = None;
    match o.drive(safe).await {
        Ok(()) => {
            info!(output = %o.config.name, pin, state = word(safe), "GPIO output in its safe state.")
        }
        Err(e) => {
            warn!(output = %o.config.name, pin, error = %e, "GPIO output could not be driven to its safe state.")
        }
    }
    o.out.sys(&o.doc()).await;
    o.backend.release(pin);
    if let Some(c) = commands {
        c.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_plain_or_json() {
        assert_eq!(parse(b"on"), Ok((Command::Set(true), None)));
        assert_eq!(parse(b" OFF "), Ok((Command::Set(false), None)));
        assert_eq!(parse(b"toggle"), Ok((Command::Toggle, None)));
        assert_eq!(parse(b"1"), Ok((Command::Set(true), None)));
        assert_eq!(parse(b"false"), Ok((Command::Set(false), None)));
        assert_eq!(
            parse(br#"{"state":"on","for":"2s"}"#),
            Ok((Command::Set(true), Some(Duration::from_secs(2))))
        );
        assert_eq!(
            parse(br#"{"state":true,"for":0.5}"#),
            Ok((Command::Set(true), Some(Duration::from_millis(500))))
        );
        assert!(parse(b"open").is_err());
        assert!(parse(br#"{"for":"2s"}"#).is_err());
        assert!(parse(br#"{"state":"on","for":-1}"#).is_err());
        assert!(parse(br#"{"state":"on","after":"1s"}"#).is_err());
        assert!(parse(&[b'1'; 300]).is_err());
    }
}
