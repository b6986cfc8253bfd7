//! Lenient reading of one `[[modbus]]` entry. serde stops at the first bad value, and a
//! required key that is wrong (an unknown `kind`) would drop the whole entry, hiding the
//! other problems of that bus. So an entry is first read as plain data, then each key is
//! converted on its own: a key that is missing, unknown or of the wrong type becomes a
//! problem with its key path (kept in [`ModbusConfig::problems`]) and a placeholder, and
//! every other check still runs. A bus with problems is refused by validation; the
//! placeholders never reach a running adapter.

use std::collections::HashSet;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::config::{
    DeviceConfig, ModbusConfig, Parity, PayloadFormat, PointConfig, RegisterKind, Report,
    Rs485Config, RtsMode, TransportKind,
};
use crate::duration;
use crate::findings::Finding;

impl<'de> Deserialize<'de> for ModbusConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Object(map) => Ok(bus(map)),
            other => Err(D::Error::custom(format!(
                "a [[modbus]] entry must be a table, not {}",
                kind_of(&other)
            ))),
        }
    }
}

/// The keys of one table, taken one by one; what is left at the end is unknown.
struct Table<'a> {
    map: Map<String, Value>,
    key: String,
    problems: &'a mut Vec<Finding>,
}

impl<'a> Table<'a> {
    fn new(map: Map<String, Value>, key: String, problems: &'a mut Vec<Finding>) -> Self {
        Table { map, key, problems }
    }

    fn path(&self, field: &str) -> String {
        if self.key.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.key)
        }
    }

    fn problem(&mut self, field: &str, message: String) {
        let key = self.path(field);
        self.problems.push(Finding { key, message });
    }

    /// `field` converted with `convert`; `None` when absent or wrong (reported).
    fn take_with<T>(
        &mut self,
        field: &str,
        convert: impl Fn(Value) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.map.remove(field)?;
        match convert(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(field, e);
                None
            }
        }
    }

    fn opt<T: DeserializeOwned>(&mut self, field: &str) -> Option<T> {
        self.take_with(field, convert::<T>)
    }

    fn or<T: DeserializeOwned>(&mut self, field: &str, default: T) -> T {
        self.opt(field).unwrap_or(default)
    }

    /// A required key: `placeholder` (and a problem) when missing or wrong.
    fn req<T: DeserializeOwned>(&mut self, field: &str, placeholder: T) -> T {
        if !self.map.contains_key(field) {
            self.problem(field, "missing: this key is required".into());
        }
        self.opt(field).unwrap_or(placeholder)
    }

    fn duration(&mut self, field: &str, default: Duration) -> Duration {
        self.take_with(field, |v| {
            duration::deserialize(v).map_err(|e: serde_json::Error| e.to_string())
        })
        .unwrap_or(default)
    }

    /// An array of tables (`[[device]]`, `[[device.point]]`), each with its key path.
    fn tables(&mut self, field: &str) -> Vec<(String, Map<String, Value>)> {
        let base = self.path(field);
        let Some(value) = self.map.remove(field) else {
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.problem(
                field,
                format!(
                    "must be an array of tables ([[...]]), not {}",
                    kind_of(&value)
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("{base}[{i}]");
            match item {
                Value::Object(map) => out.push((key, map)),
                other => self.problems.push(Finding {
                    key,
                    message: format!("must be a table, not {}", kind_of(&other)),
                }),
            }
        }
        out
    }

    /// Report every key nobody took.
    fn finish(self, known: &str) {
        let mut unknown: Vec<String> = self.map.keys().cloned().collect();
        unknown.sort();
        for field in unknown {
            let key = if self.key.is_empty() {
                field.clone()
            } else {
                format!("{}.{field}", self.key)
            };
            self.problems.push(Finding {
                key,
                message: format!("unknown key {field:?} (known keys: {known})"),
            });
        }
    }
}

/// `T` from `value`; a string that reads as a number or a boolean (an environment
/// override) is tried as that too.
fn convert<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    let first = match T::deserialize(&value) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    if let Value::String(s) = &value {
        let s = s.trim();
        let coerced = if let Ok(i) = s.parse::<i64>() {
            Some(Value::from(i))
        } else if let Ok(f) = s.parse::<f64>() {
            Some(Value::from(f))
        } else if let Ok(b) = s.parse::<bool>() {
            Some(Value::from(b))
        } else {
            None
        };
        if let Some(Ok(v)) = coerced.map(|c| T::deserialize(&c)) {
            return Ok(v);
        }
    }
    Err(first)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

const BUS_KEYS: &str = "name, transport, port, baud, parity, data_bits, stop_bits, rs485, address, timeout, retries, inter_request_delay, topic_prefix, max_gap, max_registers, max_bits, payload, backoff_min, backoff_max, status_interval, device";
const RS485_KEYS: &str = "rts, delay_before, delay_after";
const DEVICE_KEYS: &str = "name, unit, poll, write_multiple, point";
const POINT_KEYS: &str = "name, kind, address, type, order, scale, offset, unit_label, report, deadband, interval, writable, min, max, write_interval";

/// One bus, every problem recorded with its key path relative to the entry.
fn bus(map: Map<String, Value>) -> ModbusConfig {
    let mut problems = Vec::new();
    let mut t = Table::new(map, String::new(), &mut problems);
    let name = t.req("name", String::new());
    let transport = t.req("transport", TransportKind::Tcp);
    let rs485 = match t.map.remove("rs485") {
        None => Rs485Config::default(),
        Some(Value::Object(map)) => {
            let key = t.path("rs485");
            let mut r = Table::new(map, key, t.problems);
            let rs485 = Rs485Config {
                rts: r.or("rts", RtsMode::None),
                delay_before: r.duration("delay_before", Duration::ZERO),
                delay_after: r.duration("delay_after", Duration::ZERO),
            };
            r.finish(RS485_KEYS);
            rs485
        }
        Some(other) => {
            let what = kind_of(&other);
            t.problem(
                "rs485",
                format!("must be a table ([modbus.rs485]), not {what}"),
            );
            Rs485Config::default()
        }
    };
    let mut config = ModbusConfig {
        name,
        transport,
        port: t.opt("port"),
        baud: t.or("baud", 9600),
        parity: t.or("parity", Parity::default()),
        data_bits: t.or("data_bits", 8),
        stop_bits: t.or("stop_bits", 1),
        rs485,
        address: t.opt("address"),
        timeout: t.duration("timeout", Duration::from_millis(500)),
        retries: t.or("retries", 2),
        inter_request_delay: t.duration("inter_request_delay", Duration::ZERO),
        topic_prefix: t.req("topic_prefix", String::new()),
        max_gap: t.or("max_gap", 8),
        max_registers: t.or("max_registers", 125),
        max_bits: t.or("max_bits", 2000),
        payload: t.or("payload", PayloadFormat::default()),
        backoff_min: t.duration("backoff_min", Duration::from_secs(5)),
        backoff_max: t.duration("backoff_max", Duration::from_secs(60)),
        status_interval: t.duration("status_interval", Duration::from_secs(10)),
        device: Vec::new(),
        problems: Vec::new(),
    };
    for (key, map) in t.tables("device") {
        let device = device(Table::new(map, key, t.problems));
        config.device.push(device);
    }
    t.finish(BUS_KEYS);
    config.problems = problems;
    config
}

fn device(mut t: Table<'_>) -> DeviceConfig {
    let mut device = DeviceConfig {
        name: t.req("name", String::new()),
        unit: t.req("unit", 1),
        poll: {
            if !t.map.contains_key("poll") {
                t.problem("poll", "missing: this key is required".into());
            }
            t.duration("poll", Duration::from_secs(1))
        },
        write_multiple: t.or("write_multiple", false),
        point: Vec::new(),
    };
    for (key, map) in t.tables("point") {
        let point = point(Table::new(map, key, t.problems));
        device.point.push(point);
    }
    t.finish(DEVICE_KEYS);
    device
}

fn point(mut t: Table<'_>) -> PointConfig {
    let point = PointConfig {
        name: t.req("name", String::new()),
        kind: t.req("kind", RegisterKind::Holding),
        address: t.req("address", 0),
        value_type: t.or("type", "u16".to_string()),
        order: t.opt("order"),
        scale: t.or("scale", 1.0),
        offset: t.or("offset", 0.0),
        unit_label: t.opt("unit_label"),
        report: t.or("report", Report::default()),
        deadband: t.or("deadband", 0.0),
        interval: t.duration("interval", Duration::ZERO),
        writable: t.or("writable", false),
        min: t.opt("min"),
        max: t.opt("max"),
        write_interval: t.duration("write_interval", Duration::from_secs(1)),
    };
    t.finish(POINT_KEYS);
    point
}

/// The key paths (below `prefix`) that the lenient reading already reported: checks
/// that would only repeat them about a placeholder are skipped.
pub(super) fn reported(bus: &ModbusConfig, prefix: &str) -> HashSet<String> {
    bus.problems
        .iter()
        .map(|p| format!("{prefix}.{}", p.key))
        .collect()
}
