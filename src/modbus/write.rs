//! Guarded writes: commands on `<prefix>/<device>/<point>/set` (the ACL decides who may
//! publish there and whether the adapter may subscribe) become Modbus writes only for
//! points configured `writable`, within `min`/`max`, at most once per `write_interval`,
//! and not after their message expiry. The answer (`ok` with the value read back, or
//! the refusal or Modbus error) goes to `<...>/set/result` and to the MQTT 5 response
//! topic with the correlation data; every write and refusal is audited with the
//! writer's identity. Retained commands are never executed (a replay is not a command).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::codec::{self, Value, ValueType};
use super::config::{ModbusConfig, PointConfig};
use super::frame::Request;
use crate::auth::Identity;
use crate::broker::codec::v5;
use crate::broker::{Delivery, InternalClient};
use crate::telemetry::audit::{Event, Kind};

/// Largest command payload read.
const MAX_COMMAND: usize = 256;

/// Where a command's answer goes and who asked.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// `<prefix>/<device>/<point>/set`.
    pub topic: String,
    /// Where the answer goes: `<...>/set/result` and the MQTT 5 response topic.
    pub to: crate::reply::Address,
    /// The publisher of the command.
    pub writer: Option<Arc<Identity>>,
    /// The value asked for, as text (audit).
    pub asked: String,
}

/// What the bus does for an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteAction {
    /// Send this write request.
    Send(Request),
    /// Set one bit of a holding register: read it (function 3), change the bit, write it
    /// back (function 6, or 16 with `multiple`). Not atomic against another master
    /// writing the same register in between; the bus itself runs nothing in between.
    SetBit {
        /// Register address.
        address: u16,
        /// Bit (0: least significant).
        bit: u8,
        /// On or off.
        value: bool,
        /// Write with function 16 instead of 6.
        multiple: bool,
    },
}

/// An accepted command on its way to the bus.
#[derive(Debug)]
pub struct WriteJob {
    /// Device index.
    pub device: usize,
    /// Point index.
    pub point: usize,
    /// What to write.
    pub action: WriteAction,
    /// Not executed after this instant (message expiry).
    pub deadline: Option<Instant>,
    /// The configuration generation (reloads seen) the indices refer to.
    pub generation: u64,
    /// Answer.
    pub reply: ReplyTo,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Written and read back.
    Done(Option<Value>),
    /// Refused before reaching the device.
    Refused(String),
    /// The device did not take it (exception, timeout, bus down).
    Failed(String),
}

/// Publish the answer of a command and audit it.
pub(super) async fn answer(client: &InternalClient, reply: &ReplyTo, outcome: &WriteOutcome) {
    let (ok, value, error) = match outcome {
        WriteOutcome::Done(v) => (
            true,
            v.as_ref().map_or(serde_json::Value::Null, Value::to_json),
            None,
        ),
        WriteOutcome::Refused(e) | WriteOutcome::Failed(e) => {
            (false, serde_json::Value::Null, Some(e.as_str()))
        }
    };
    let mut doc = serde_json::json!({ "ok": ok, "value": value });
    if let Some(e) = error {
        doc["error"] = e.into();
    }
    let payload = doc.to_string();
    let writer = reply.writer.as_deref();
    let (kind, outcome_word) = match outcome {
        WriteOutcome::Refused(_) => (Kind::FieldWriteRefused, "refused"),
        WriteOutcome::Done(_) => (Kind::FieldWrite, "success"),
        WriteOutcome::Failed(_) => (Kind::FieldWrite, "failure"),
    };
    let reason = match outcome {
        WriteOutcome::Done(v) => format!(
            "value {} written, read back {}",
            reply.asked,
            v.as_ref()
                .map_or("nothing".into(), |v| v.to_json().to_string())
        ),
        WriteOutcome::Refused(e) | WriteOutcome::Failed(e) => format!("value {}: {e}", reply.asked),
    };
    let mut event = Event::new(kind)
        .topic(&reply.topic)
        .outcome(outcome_word)
        .reason(&reason);
    event = match writer {
        Some(id) => event.identity(id),
        None => event.client_id("<unknown publisher>"),
    };
    event.emit();
    crate::reply::publish(client, &reply.to, payload, "Modbus write").await;
}

/// The writable points by topic (the rate limit is the bus's: a write counts when it is
/// sent, not when a command that may still expire or find the queue full is admitted).
struct Targets {
    by_topic: HashMap<String, (usize, usize)>,
    points: Vec<Vec<PointConfig>>,
    /// Per device: functions 15/16 only.
    multiple: Vec<bool>,
    /// Reloads seen.
    generation: u64,
}

impl Targets {
    fn new(config: &ModbusConfig) -> Self {
        let mut by_topic = HashMap::new();
        for (d, device) in config.device.iter().enumerate() {
            for (p, point) in device.point.iter().enumerate() {
                by_topic.insert(
                    format!("{}/{}/{}/set", config.topic_prefix, device.name, point.name),
                    (d, p),
                );
            }
        }
        Targets {
            by_topic,
            points: config.device.iter().map(|d| d.point.clone()).collect(),
            multiple: config.device.iter().map(|d| d.write_multiple).collect(),
            generation: 0,
        }
    }

    /// The write for a command, or why it is refused.
    fn check(&self, d: usize, p: usize, payload: &[u8]) -> Result<WriteAction, String> {
        let point = &self.points[d][p];
        if !point.writable {
            return Err(format!("point {:?} is not writable", point.name));
        }
        let multiple = self.multiple[d];
        let value_type = point.parsed_type();
        let address = point.address as u16;
        let asked = parse_command(payload, value_type)?;
        let action = match (value_type, asked) {
            (ValueType::Bool, Command::Bool(value)) if multiple => {
                WriteAction::Send(Request::WriteCoils {
                    address,
                    values: vec![value],
                })
            }
            (ValueType::Bool, Command::Bool(value)) => {
                WriteAction::Send(Request::WriteCoil { address, value })
            }
            (ValueType::Bit(bit), Command::Bool(value)) => WriteAction::SetBit {
                address,
                bit,
                value,
                multiple,
            },
            (ValueType::Str(n), Command::Text(text)) => {
                WriteAction::Send(Request::WriteRegisters {
                    address,
                    values: codec::encode_text(n, point.parsed_order(), &text).map_err(|e| e.0)?,
                })
            }
            (ValueType::Bool | ValueType::Bit(_), _) => {
                return Err(format!("a {value_type} point takes true or false"))
            }
            (ValueType::Str(_), _) => return Err(format!("a {value_type} point takes text")),
            (_, Command::Number(v, exact)) => {
                if let Some(min) = point.min.filter(|min| v < *min) {
                    return Err(format!("out of bounds: {v} is below min {min}"));
                }
                if let Some(max) = point.max.filter(|max| v > *max) {
                    return Err(format!("out of bounds: {v} is above max {max}"));
                }
                let unscaled = point.scale == 1.0 && point.offset == 0.0;
                let regs = match exact {
                    Some(raw) if unscaled && value_type.is_integer() => {
                        codec::encode_integer(value_type, point.parsed_order(), raw)
                    }
                    _ => codec::encode(
                        value_type,
                        point.parsed_order(),
                        point.scale,
                        point.offset,
                        v,
                    ),
                }
                .map_err(|e| e.0)?;
                if regs.len() == 1 && !multiple {
                    WriteAction::Send(Request::WriteRegister {
                        address,
                        value: regs[0],
                    })
                } else {
                    WriteAction::Send(Request::WriteRegisters {
                        address,
                        values: regs,
                    })
                }
            }
            (_, _) => return Err(format!("a {value_type} point takes a number")),
        };
        Ok(action)
    }
}

enum Command {
    Bool(bool),
    /// The number, and the same exactly when it is an integer (64-bit values beyond 2^53
    /// are written without the rounding of `f64`).
    Number(f64, Option<i128>),
    Text(String),
}

/// A JSON number as a command.
fn number(n: &serde_json::Number) -> Option<Command> {
    let exact = n
        .as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from));
    Some(Command::Number(n.as_f64()?, exact))
}

/// `42`, `-1.5`, `true`, `"on"`, `{"value": 42}`: JSON or plain text. A `string(N)`
/// point takes a JSON string, `{"value": "..."}` or the plain text as it is.
fn parse_command(payload: &[u8], t: ValueType) -> Result<Command, String> {
    if payload.len() > MAX_COMMAND {
        return Err(format!(
            "command of {} bytes: at most {MAX_COMMAND}",
            payload.len()
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| "command is not UTF-8".to_string())?
        .trim();
    let json = serde_json::from_str::<serde_json::Value>(text).ok();
    let value = match json {
        Some(serde_json::Value::Object(mut m)) => {
            m.remove("value").ok_or("JSON command without \"value\"")?
        }
        Some(serde_json::Value::String(s)) if matches!(t, ValueType::Str(_)) => {
            return Ok(Command::Text(s))
        }
        Some(_) | None if matches!(t, ValueType::Str(_)) => {
            serde_json::Value::String(text.to_string())
        }
        Some(v) => v,
        None => serde_json::Value::String(text.to_string()),
    };
    match value {
        serde_json::Value::String(s) if matches!(t, ValueType::Str(_)) => Ok(Command::Text(s)),
        serde_json::Value::Bool(b) => Ok(Command::Bool(b)),
        serde_json::Value::Number(n) if matches!(t, ValueType::Bool | ValueType::Bit(_)) => {
            match n.as_f64() {
                Some(0.0) => Ok(Command::Bool(false)),
                Some(1.0) => Ok(Command::Bool(true)),
                _ => Err(format!(
                    "{n} is not a coil value: use true/false, 1/0, on/off"
                )),
            }
        }
        serde_json::Value::Number(n) => number(&n).ok_or_else(|| format!("{n} is not a number")),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok(Command::Bool(true)),
            "false" | "off" => Ok(Command::Bool(false)),
            other => other
                .parse::<f64>()
                .map(|v| Command::Number(v, other.parse::<i128>().ok()))
                .map_err(|_| {
                    format!(
                        "{:?} is not a value: send a number, true/false, or {{\"value\": ..}}",
                        crate::telemetry::limit::LogStr(other).to_string()
                    )
                }),
        },
        other => Err(format!("{other} is not a value")),
    }
}

/// Receive commands until `shutdown`: check each, hand accepted ones to the bus,
/// answer refusals here.
pub(super) async fn receive(
    mut client: InternalClient,
    config: ModbusConfig,
    bus: mpsc::Sender<WriteJob>,
    mut updates: watch::Receiver<(u64, ModbusConfig)>,
    shutdown: CancellationToken,
) {
    let filter = format!("{}/+/+/set", config.topic_prefix);
    // Retain As Published: a retained command is refused whether it arrives live or at
    // subscribe time (the broker clears the flag of live deliveries otherwise).
    match crate::reply::subscribe_commands(&client, &filter).await {
        Ok(v5::SubscribeReasonCode::Success(_)) => {
            info!(bus = %config.name, %filter, "Modbus writes accepted on this filter.");
        }
        Ok(code) => {
            info!(bus = %config.name, %filter, ?code, "Modbus writes disabled: the ACL does not let the adapter subscribe to its set topics.");
            return;
        }
        Err(e) => {
            warn!(bus = %config.name, reason = %e, "Modbus writes disabled: subscription failed.");
            return;
        }
    }
    let mut targets = Targets::new(&config);
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            Ok(()) = updates.changed() => {
                // Same topic prefix (a changed prefix restarts the bus): new points only.
                let (generation, config) = updates.borrow_and_update().clone();
                targets = Targets::new(&config);
                targets.generation = generation;
                continue;
            }
            d = client.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        let now = Instant::now();
        let (job, delivery) = admit(&mut targets, delivery, now);
        match job {
            Ok(job) => {
                let reply = job.reply.clone();
                if let Err(e) = bus.try_send(job) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => {
                            "busy: too many writes queued for this bus"
                        }
                        mpsc::error::TrySendError::Closed(_) => "the bus is stopping",
                    };
                    answer(&client, &reply, &WriteOutcome::Refused(why.into())).await;
                }
            }
            Err((reply, why)) => answer(&client, &reply, &WriteOutcome::Refused(why)).await,
        }
        let _ = delivery.ack().await;
    }
    client.disconnect().await;
}

/// The job for one delivery, or its reply address and the refusal.
fn admit(
    targets: &mut Targets,
    mut delivery: Delivery,
    now: Instant,
) -> (Result<WriteJob, (ReplyTo, String)>, Delivery) {
    let props = delivery.properties.take();
    let deadline = props
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .map(|s| now + Duration::from_secs(u64::from(s)));
    let reply = ReplyTo {
        topic: delivery.topic.clone(),
        to: crate::reply::Address::of(&delivery.topic, props.as_ref()),
        writer: delivery.publisher.clone(),
        asked: crate::telemetry::limit::LogStr(&String::from_utf8_lossy(
            &delivery.payload[..delivery.payload.len().min(64)],
        ))
        .to_string(),
    };
    if delivery.retain {
        return (
            Err((
                reply,
                "retained command not executed: publish commands without the retain flag".into(),
            )),
            delivery,
        );
    }
    let Some(&(d, p)) = targets.by_topic.get(&delivery.topic) else {
        return (Err((reply, "no such point on this bus".into())), delivery);
    };
    let result = match targets.check(d, p, &delivery.payload) {
        Ok(action) => Ok(WriteJob {
            device: d,
            point: p,
            action,
            generation: targets.generation,
            deadline,
            reply,
        }),
        Err(why) => Err((reply, why)),
    };
    (result, delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(points: &str) -> Targets {
        let text = format!(
            "name = \"b\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\ntopic_prefix = \"p\"\n\
             [[device]]\nname = \"d\"\nunit = 1\npoll = \"1s\"\n{points}"
        );
        let config: ModbusConfig = toml::from_str(&text).expect("bus");
        assert_eq!(
            super::super::config::validate(std::slice::from_ref(&config)),
            vec![]
        );
        Targets::new(&config)
    }

    fn registers(action: Result<WriteAction, String>) -> Vec<u16> {
        match action {
            Ok(WriteAction::Send(Request::WriteRegisters { values, .. })) => values,
            Ok(WriteAction::Send(Request::WriteRegister { value, .. })) => vec![value],
            other => panic!("not a register write: {other:?}"),
        }
    }

    #[test]
    fn sixty_four_bit_integers_are_written_with_every_digit() {
        let t = targets(
            "[[device.point]]\nname = \"u\"\nkind = \"holding\"\naddress = 0\ntype = \"u64\"\nwritable = true\nwrite_interval = \"0\"\n\
             [[device.point]]\nname = \"i\"\nkind = \"holding\"\naddress = 4\ntype = \"i64\"\nwritable = true\nwrite_interval = \"0\"\n",
        );
        // 2^53 + 1: f64 would make it 2^53.
        for payload in [
            "9007199254740993",
            r#"{"value": 9007199254740993}"#,
            r#""9007199254740993""#,
        ] {
            let regs = registers(t.check(0, 0, payload.as_bytes()));
            assert_eq!(regs, vec![0x0020, 0, 0, 1], "{payload}");
        }
        let regs = registers(t.check(0, 0, b"18446744073709551615"));
        assert_eq!(regs, vec![0xFFFF; 4]);
        let regs = registers(t.check(0, 1, b"-9223372036854775808"));
        assert_eq!(regs, vec![0x8000, 0, 0, 0]);
        let refused = t.check(0, 0, b"18446744073709551616").expect_err("too big");
        assert!(refused.contains("outside u64's range"), "{refused}");
        // Fractions still round through the scale path.
        assert_eq!(registers(t.check(0, 0, b"2.6")), vec![0, 0, 0, 3]);
    }

    #[test]
    fn junk_and_non_finite_commands_are_refused() {
        let t = targets(
            "[[device.point]]\nname = \"f\"\nkind = \"holding\"\naddress = 0\ntype = \"f32\"\nwritable = true\nwrite_interval = \"0\"\n\
             [[device.point]]\nname = \"s\"\nkind = \"holding\"\naddress = 2\ntype = \"i16\"\nwritable = true\nmin = 0\nmax = 10\nwrite_interval = \"0\"\n",
        );
        for (p, payload) in [
            (0, &b"NaN"[..]),
            (0, b"inf"),
            (0, b"-Infinity"),
            (0, b"1e400"),
            (0, b"3.5e38"),
            (1, b"NaN"),
            (1, b"inf"),
            (1, b""),
            (1, b"null"),
            (1, b"[1]"),
            (1, b"{\"value\": null}"),
            (1, b"\xff\xfe"),
            (1, b"1e400"),
        ] {
            let refused = t.check(0, p, payload);
            assert!(
                refused.is_err(),
                "{:?} accepted: {refused:?}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(registers(t.check(0, 1, b"10")), vec![10]);
    }

    #[test]
    fn commands_parse_as_json_or_plain_text() {
        let num = |s: &str| match parse_command(s.as_bytes(), ValueType::I16) {
            Ok(Command::Number(v, _)) => Some(v),
            _ => None,
        };
        assert_eq!(num("42"), Some(42.0));
        assert_eq!(num(" -1.5 "), Some(-1.5));
        assert_eq!(num(r#"{"value": 7}"#), Some(7.0));
        assert_eq!(num(r#""12""#), Some(12.0));
        assert_eq!(num("abc"), None);
        assert_eq!(num(r#"{"v": 7}"#), None);
        let coil = |s: &str| match parse_command(s.as_bytes(), ValueType::Bool) {
            Ok(Command::Bool(b)) => Some(b),
            _ => None,
        };
        assert_eq!(coil("true"), Some(true));
        assert_eq!(coil("off"), Some(false));
        assert_eq!(coil("1"), Some(true));
        assert_eq!(coil("2"), None);
        assert!(parse_command(&[b'1'; 300], ValueType::U16).is_err());
        let text = |s: &str| match parse_command(s.as_bytes(), ValueType::Str(8)) {
            Ok(Command::Text(t)) => Some(t),
            _ => None,
        };
        assert_eq!(text("pump 2"), Some("pump 2".into()));
        assert_eq!(text(r#""42""#), Some("42".into()));
        assert_eq!(text("42"), Some("42".into()));
        assert_eq!(text(r#"{"value": "on"}"#), Some("on".into()));
        assert_eq!(text(r#"{"value": 1}"#), None);
        assert!(matches!(
            parse_command(b"1", ValueType::Bit(3)),
            Ok(Command::Bool(true))
        ));
    }
}
