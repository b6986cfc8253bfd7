//! What is published about a point: its value with unit, timestamp and quality, when
//! (interval, on change beyond the deadband, or both), and the topic layout
//! (`<prefix>/<device>/<point>`, `<prefix>/<device>/status`, `<prefix>/status`). Pure
//! decisions over the last published state: the bus task does the publishing.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::codec::{self, Order, Value, ValueType};
use super::config::{PayloadFormat, PointConfig, Report};
use super::plan::Span;

/// How much a published value can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Read in the last poll.
    Good,
    /// The device did not answer: the last good value, kept.
    Stale,
    /// The device refused the point (exception) or the reply was unusable.
    Error,
}

impl Quality {
    /// Its payload text.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Stale => "stale",
            Quality::Error => "error",
        }
    }
}

/// A point at run time.
#[derive(Debug)]
pub struct PointState {
    /// Its configuration.
    pub config: PointConfig,
    /// Parsed type.
    pub value_type: ValueType,
    /// Parsed order.
    pub order: Order,
    /// Topic of its value.
    pub topic: String,
    /// Last value read (scaled).
    pub value: Option<Value>,
    /// Quality and value last published, and when.
    published: Option<(Quality, Option<Value>, Instant)>,
    /// Republish an unchanged value after this long (`report = "both"`).
    refresh: Duration,
    /// When the last write was sent to the device (the rate limit).
    pub last_write: Option<Instant>,
}

impl PointState {
    /// A point of device topic `device_topic`, polled every `poll`.
    pub fn new(config: PointConfig, device_topic: &str, poll: Duration) -> Self {
        let refresh = if config.interval.is_zero() {
            poll * 10
        } else {
            config.interval
        };
        PointState {
            value_type: config.parsed_type(),
            order: config.parsed_order(),
            topic: format!("{device_topic}/{}", config.name),
            value: None,
            published: None,
            refresh,
            last_write: None,
            config,
        }
    }

    /// Where it sits, for the planner.
    pub fn span(&self) -> Span {
        Span {
            kind: self.config.kind,
            address: self.config.address as u16,
            count: self.value_type.registers(),
        }
    }

    /// Decode the point from a read of `start..` (`regs` for registers, `bits` for bits).
    pub fn decode(&self, start: u16, regs: &[u16], bits: &[bool]) -> Option<Value> {
        let offset = usize::from(self.config.address as u16 - start);
        if self.config.kind.is_bits() {
            return bits.get(offset).map(|b| Value::Bool(*b));
        }
        let n = usize::from(self.value_type.registers());
        let raw = codec::decode(self.value_type, self.order, regs.get(offset..offset + n)?);
        Some(codec::scaled(raw, self.config.scale, self.config.offset))
    }

    /// Quality last published.
    pub fn quality(&self) -> Option<Quality> {
        self.published.as_ref().map(|(q, _, _)| *q)
    }

    /// Whether a reading (or a quality change) is to be published now; records it as
    /// published when so.
    pub fn take_report(&mut self, quality: Quality, value: Option<&Value>, now: Instant) -> bool {
        let due = match (&self.published, quality) {
            (None, _) => true,
            (Some((q, _, _)), _) if *q != quality => true,
            (Some(_), Quality::Stale | Quality::Error) => false,
            (Some((_, last, at)), Quality::Good) => {
                let changed = changed(last.as_ref(), value, self.config.deadband);
                match self.config.report {
                    Report::Interval => true,
                    Report::OnChange => changed,
                    Report::Both => changed || now.duration_since(*at) >= self.refresh,
                }
            }
        };
        if due {
            self.published = Some((quality, value.cloned(), now));
        }
        due
    }

    /// The payload for `value` at `quality`.
    pub fn payload(
        &self,
        format: PayloadFormat,
        quality: Quality,
        value: Option<&Value>,
    ) -> String {
        let json_value = value.map_or(serde_json::Value::Null, Value::to_json);
        match format {
            PayloadFormat::Raw => match json_value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            },
            PayloadFormat::Json => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), json_value);
                if let Some(unit) = &self.config.unit_label {
                    m.insert("unit".into(), unit.clone().into());
                }
                m.insert(
                    "ts".into(),
                    crate::timestamp::rfc3339(SystemTime::now()).into(),
                );
                m.insert("quality".into(), quality.as_str().into());
                serde_json::Value::Object(m).to_string()
            }
        }
    }
}

fn changed(last: Option<&Value>, new: Option<&Value>, deadband: f64) -> bool {
    match (last, new) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if deadband > 0.0 => (x - y).abs() > deadband,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::RegisterKind;

    fn point(report: Report, deadband: f64) -> PointState {
        let config = PointConfig {
            name: "v".into(),
            kind: RegisterKind::Input,
            address: 10,
            value_type: "u16".into(),
            order: None,
            scale: 0.1,
            offset: 0.0,
            unit_label: Some("V".into()),
            report,
            deadband,
            interval: Duration::ZERO,
            writable: false,
            min: None,
            max: None,
            write_interval: Duration::from_secs(1),
        };
        PointState::new(config, "plant/meter", Duration::from_secs(1))
    }

    #[test]
    fn on_change_honours_the_deadband_and_quality_changes() {
        let mut p = point(Report::OnChange, 0.5);
        let t = Instant::now();
        let v = |x: f64| Value::Float(x);
        assert!(
            p.take_report(Quality::Good, Some(&v(230.0)), t),
            "first value"
        );
        assert!(
            !p.take_report(Quality::Good, Some(&v(230.4)), t),
            "within deadband"
        );
        assert!(
            p.take_report(Quality::Good, Some(&v(230.6)), t),
            "beyond deadband"
        );
        assert!(
            p.take_report(Quality::Stale, Some(&v(230.6)), t),
            "goes stale"
        );
        assert!(
            !p.take_report(Quality::Stale, Some(&v(230.6)), t),
            "stale once"
        );
        assert!(
            p.take_report(Quality::Good, Some(&v(230.6)), t),
            "good again"
        );
    }

    #[test]
    fn interval_and_both_republish() {
        let t = Instant::now();
        let one = Value::UInt(1);
        let mut every = point(Report::Interval, 0.0);
        assert!(every.take_report(Quality::Good, Some(&one), t));
        assert!(every.take_report(Quality::Good, Some(&one), t));
        let mut both = point(Report::Both, 0.0);
        assert!(both.take_report(Quality::Good, Some(&one), t));
        assert!(!both.take_report(Quality::Good, Some(&one), t + Duration::from_secs(9)));
        assert!(both.take_report(Quality::Good, Some(&one), t + Duration::from_secs(10)));
    }

    #[test]
    fn points_decode_at_their_offset_and_payloads_carry_unit_and_quality() {
        let p = point(Report::OnChange, 0.0);
        let v = p.decode(8, &[0, 0, 2305], &[]).expect("in range");
        assert_eq!(v, Value::Float(2305.0 * 0.1));
        assert_eq!(p.decode(8, &[0, 0], &[]), None);
        let json: serde_json::Value = serde_json::from_str(&p.payload(
            PayloadFormat::Json,
            Quality::Stale,
            Some(&Value::UInt(7)),
        ))
        .expect("JSON");
        assert_eq!(json["value"], 7);
        assert_eq!(json["unit"], "V");
        assert_eq!(json["quality"], "stale");
        assert!(json["ts"]
            .as_str()
            .is_some_and(|ts| ts.ends_with('Z') && ts.len() == 24));
        assert_eq!(
            p.payload(PayloadFormat::Raw, Quality::Good, Some(&Value::Float(1.5))),
            "1.5"
        );
    }
}
