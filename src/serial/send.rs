//! Guarded sends: a payload published on `<prefix>/<name>/send` (the ACL decides who
//! may publish there and whether the adapter may subscribe) is written to the port only
//! if all of it matches the `send_allow` regex, it is at most `MAX_SEND` bytes, it is
//! not retained (a replay is not a command), and the previous send is at least
//! `send_interval` old. Every send and refusal is audited with the writer's identity
//! and answered on `<...>/send/result` (and the MQTT 5 response topic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{SerialConfig, MAX_SEND};
use crate::auth::Identity;
use crate::broker::codec::v5;
use crate::broker::{Delivery, InternalClient};
use crate::reply;
use crate::telemetry::audit::{Event, Kind};
use crate::telemetry::limit::LogStr;

/// Where a send's answer goes and who asked.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// `<prefix>/<name>/send`.
    pub topic: String,
    /// Where the answer goes: `<...>/send/result` and the MQTT 5 response topic.
    pub to: reply::Address,
    /// The publisher of the command.
    pub writer: Option<Arc<Identity>>,
    /// The payload, escaped and cut for the audit line.
    pub asked: String,
}

/// An accepted send on its way to the port.
#[derive(Debug)]
pub struct SendJob {
    /// Payload plus `send_suffix`.
    pub bytes: Vec<u8>,
    /// Answer.
    pub reply: ReplyTo,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written: this many bytes.
    Done(usize),
    /// Refused before reaching the port.
    Refused(String),
    /// The port did not take it (not open, write error).
    Failed(String),
}

/// Publish the answer of a send and audit it.
pub(super) async fn answer(client: &InternalClient, reply: &ReplyTo, outcome: &SendOutcome) {
    let mut doc = serde_json::json!({ "ok": matches!(outcome, SendOutcome::Done(_)) });
    let (kind, word, reason) = match outcome {
        SendOutcome::Done(n) => {
            doc["bytes"] = (*n).into();
            (
                Kind::FieldWrite,
                "success",
                format!("sent {} ({n} bytes)", reply.asked),
            )
        }
        SendOutcome::Refused(e) => {
            doc["error"] = e.as_str().into();
            (
                Kind::FieldWriteRefused,
                "refused",
                format!("send {}: {e}", reply.asked),
            )
        }
        SendOutcome::Failed(e) => {
            doc["error"] = e.as_str().into();
            (
                Kind::FieldWrite,
                "failure",
                format!("send {}: {e}", reply.asked),
            )
        }
    };
    let event = Event::new(kind)
        .topic(&reply.topic)
        .outcome(word)
        .reason(&reason);
    match reply.writer.as_deref() {
        Some(id) => event.identity(id),
        None => event.client_id("<unknown publisher>"),
    }
    .emit();
    reply::publish(client, &reply.to, doc.to_string(), "Serial send").await;
}

/// The checks of one line's sends.
pub struct Guard {
    allow: regex::Regex,
    suffix: Vec<u8>,
    interval: Duration,
    last: Option<Instant>,
}

impl Guard {
    /// The guard of `config`; `None` when sending is off (no `send_allow`).
    pub fn of(config: &SerialConfig) -> Option<Guard> {
        Some(Guard {
            allow: config.send_allowlist()?,
            suffix: config.send_suffix.as_bytes().to_vec(),
            interval: config.send_interval,
            last: None,
        })
    }

    /// The bytes to write for `payload` at `now`, or why not.
    pub fn check(
        &mut self,
        payload: &[u8],
        retained: bool,
        now: Instant,
    ) -> Result<Vec<u8>, String> {
        if retained {
            return Err(
                "retained command not executed: publish sends without the retain flag".into(),
            );
        }
        if payload.len() > MAX_SEND {
            return Err(format!("{} bytes: at most {MAX_SEND}", payload.len()));
        }
        let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
        if !self.allow.is_match(text) {
            return Err("not allowed: the payload does not match send_allow".into());
        }
        if let Some(last) = self.last {
            let next = last + self.interval;
            if now < next {
                return Err(format!(
                    "rate limited: one send per {:?}; next in {} ms",
                    self.interval,
                    (next - now).as_millis()
                ));
            }
        }
        self.last = Some(now);
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(&self.suffix);
        Ok(bytes)
    }
}

fn reply_of(delivery: &mut Delivery) -> ReplyTo {
    let props = delivery.properties.take();
    ReplyTo {
        topic: delivery.topic.clone(),
        to: reply::Address::of(&delivery.topic, props.as_ref()),
        writer: delivery.publisher.clone(),
        asked: LogStr(&String::from_utf8_lossy(
            &delivery.payload[..delivery.payload.len().min(64)],
        ))
        .to_string(),
    }
}

/// Receive sends until `shutdown`: check each, hand accepted ones to the line task,
/// answer refusals here (counted in `refused`).
pub(super) async fn receive(
    mut client: InternalClient,
    config: SerialConfig,
    mut guard: Guard,
    line: mpsc::Sender<SendJob>,
    refused: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let topic = format!("{}/send", config.base_topic());
    match reply::subscribe_commands(&client, &topic).await {
        Ok(v5::SubscribeReasonCode::Success(_)) => {
            info!(line = %config.name, %topic, "Serial sends accepted on this topic.");
        }
        Ok(code) => {
            warn!(line = %config.name, %topic, ?code, "Serial sends disabled: the ACL does not let the adapter subscribe to its send topic.");
            return;
        }
        Err(e) => {
            warn!(line = %config.name, reason = %e, "Serial sends disabled: subscription failed.");
            return;
        }
    }
    loop {
        let mut delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = client.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        let reply = reply_of(&mut delivery);
        let refusal = match guard.check(&delivery.payload, delivery.retain, Instant::now()) {
            Ok(bytes) => match line.try_send(SendJob {
                bytes,
                reply: reply.clone(),
            }) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Some("busy: too many sends queued".to_string())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Some("the line is stopping".to_string())
                }
            },
            Err(why) => Some(why),
        };
        if let Some(why) = refusal {
            refused.fetch_add(1, Ordering::Relaxed);
            answer(&client, &reply, &SendOutcome::Refused(why)).await;
        }
        let _ = delivery.ack().await;
    }
    client.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(extra: &str) -> Guard {
        let config: SerialConfig = toml::from_str(&format!(
            "name = \"t\"\nport = \"/dev/null\"\nsend_allow = 'TARE|PRINT [0-9]{{1,3}}'\n{extra}"
        ))
        .expect("parses");
        Guard::of(&config).expect("sending on")
    }

    #[test]
    fn only_whole_allowlisted_payloads_pass() {
        let mut g = guard("send_interval = \"0s\"\nsend_suffix = \"\\r\\n\"");
        let now = Instant::now();
        assert_eq!(g.check(b"TARE", false, now), Ok(b"TARE\r\n".to_vec()));
        assert_eq!(
            g.check(b"PRINT 12", false, now),
            Ok(b"PRINT 12\r\n".to_vec())
        );
        assert!(
            g.check(b"TARE; reboot", false, now).is_err(),
            "a prefix match is not enough"
        );
        assert!(g.check(b"xTARE", false, now).is_err());
        assert!(g.check(b"PRINT 1234", false, now).is_err());
        assert!(g
            .check(b"TARE", true, now)
            .unwrap_err()
            .contains("retained"));
        assert!(g.check(b"\xff", false, now).is_err());
        assert!(g.check(&[b'A'; MAX_SEND + 1], false, now).is_err());
    }

    #[test]
    fn sends_are_rate_limited() {
        let mut g = guard("send_interval = \"1s\"");
        let now = Instant::now();
        assert!(g.check(b"TARE", false, now).is_ok());
        let refused = g.check(b"TARE", false, now + Duration::from_millis(500));
        assert!(refused.unwrap_err().starts_with("rate limited"));
        assert!(g
            .check(b"TARE", false, now + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn no_allowlist_means_no_sending() {
        let config: SerialConfig =
            toml::from_str("name = \"t\"\nport = \"/dev/null\"").expect("parses");
        assert!(Guard::of(&config).is_none());
    }
}
