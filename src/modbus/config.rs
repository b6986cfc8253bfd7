//! `[[modbus]]`: the types of one Modbus bus (an RTU serial line or a TCP
//! connection), its devices and their points, and their validation. Validation collects
//! every problem with its key path (`modbus[0].device[1].point[2].type`); it never opens
//! a port or a socket.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::codec::{Order, ValueType};
pub use crate::findings::Finding;
use crate::findings::Findings;

/// Registers one write (function 16) carries at most (Modbus application protocol §6.12).
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// `[[modbus]]`: one bus. Read leniently (`config_parse`): every key on its own, so one
/// bad value does not hide the other problems of the entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// Name; the in-process identity is `adapter:<name>`.
    pub name: String,
    /// `rtu` (serial line) or `tcp`.
    pub transport: TransportKind,
    /// RTU: the serial device (a `/dev/serial/by-id/...` path survives re-plugging).
    pub port: Option<PathBuf>,
    /// RTU: bits per second.
    pub baud: u32,
    /// RTU: parity.
    pub parity: Parity,
    /// RTU: data bits (7 or 8).
    pub data_bits: u8,
    /// RTU: stop bits (1 or 2).
    pub stop_bits: u8,
    /// RTU: `[modbus.rs485]`, direction control of the transceiver through RTS.
    pub rs485: Rs485Config,
    /// TCP: `host:port` of the device or gateway.
    pub address: Option<String>,
    /// How long a reply may take.
    pub timeout: Duration,
    /// Further attempts after a timeout or a damaged reply, before the poll fails.
    pub retries: u32,
    /// Pause after each reply before the next request (devices that need turnaround time).
    pub inter_request_delay: Duration,
    /// Topics are `<topic_prefix>/<device>/<point>`.
    pub topic_prefix: String,
    /// Unused registers (or bits) one request may span to join two points.
    pub max_gap: u16,
    /// Registers per read request at most (the protocol's limit is 125).
    pub max_registers: u16,
    /// Coils or discrete inputs per read request at most (the protocol's limit is 2000).
    pub max_bits: u16,
    /// Payload of point topics: JSON with unit, timestamp and quality, or the bare value.
    pub payload: PayloadFormat,
    /// A device that failed is retried after this delay, doubling up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest delay between attempts on a device that does not answer.
    pub backoff_max: Duration,
    /// How often the bus health is published.
    pub status_interval: Duration,
    /// `[[modbus.device]]`.
    pub device: Vec<DeviceConfig>,
    /// What could not be read (missing, unknown or mistyped keys), with key paths
    /// relative to this entry; reported by [`validate`].
    pub problems: Vec<Finding>,
}

/// How the bus is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Modbus RTU over a serial line (RS-485/RS-232).
    Rtu,
    /// Modbus TCP (MBAP header).
    Tcp,
}

/// `[modbus.rs485]`: how an RS-485 transceiver's driver is switched on for sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rs485Config {
    /// Which RTS level enables the driver, or `none` (the adapter switches itself).
    pub rts: RtsMode,
    /// After enabling the driver, before the first byte.
    pub delay_before: Duration,
    /// After the last byte is on the wire, before releasing the driver.
    pub delay_after: Duration,
}

/// RTS while a frame is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RtsMode {
    /// RTS untouched: adapters with automatic direction control, RS-232, RS-422.
    #[default]
    None,
    /// RTS asserted while sending, released to receive.
    HighWhileSending,
    /// RTS released while sending, asserted to receive.
    LowWhileSending,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (Modbus then asks for 2 stop bits; many devices use 1).
    None,
    /// Even parity (the Modbus default).
    #[default]
    Even,
    /// Odd parity.
    Odd,
}

/// Payload of a point topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `{"value":..,"unit":..,"ts":..,"quality":..}`.
    #[default]
    Json,
    /// The value alone (`230.5`, `true`, `"text"`); quality only on the device status.
    Raw,
}

/// `[[modbus.device]]`: one slave (unit) on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Topic level of the device.
    pub name: String,
    /// Unit identifier (RTU slave address 1..247; TCP 0..255).
    pub unit: i64,
    /// Poll period.
    pub poll: Duration,
    /// Write with functions 15 and 16 even for one coil or register (devices that do
    /// not implement functions 5 and 6).
    pub write_multiple: bool,
    /// `[[modbus.device.point]]`.
    pub point: Vec<PointConfig>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Read/write bits (function 1, written with 5/15); 0xxxx.
    Coil,
    /// Read-only bits (function 2); 1xxxx.
    Discrete,
    /// Read-only registers (function 4); 3xxxx.
    Input,
    /// Read/write registers (function 3, written with 6/16); 4xxxx.
    Holding,
}

impl RegisterKind {
    /// Bits (coil, discrete) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// Whether the protocol can write it.
    pub fn is_writable(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Holding)
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }
}

/// When a point's value is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Report {
    /// After every poll.
    Interval,
    /// When the value moved by more than `deadband` (or changed, for non-numbers).
    #[default]
    OnChange,
    /// On change, and at least every `interval` otherwise.
    Both,
}

/// `[[modbus.device.point]]`: one value.
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// Topic level of the point.
    pub name: String,
    /// Which table.
    pub kind: RegisterKind,
    /// 0-based protocol address (holding register 40001 is address 0).
    pub address: i64,
    /// `bool`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `string(N)`, `bit(n)`.
    pub value_type: String,
    /// Byte and word order of multi-register values: `ABCD`, `CDAB`, `BADC`, `DCBA`.
    pub order: Option<String>,
    /// Published value = raw × scale + offset.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Unit in the payload (`"V"`).
    pub unit_label: Option<String>,
    /// `interval`, `on-change` or `both`.
    pub report: Report,
    /// On change: smallest change (in published units) that is reported.
    pub deadband: f64,
    /// `report = "both"`: republish an unchanged value this often (0, the default: every
    /// 10 polls).
    pub interval: Duration,
    /// Accept writes on `<prefix>/<device>/<point>/set`.
    pub writable: bool,
    /// Smallest value a write may set (published units).
    pub min: Option<f64>,
    /// Largest value a write may set (published units).
    pub max: Option<f64>,
    /// Writes to this point at most once per this period.
    pub write_interval: Duration,
}

impl ModbusConfig {
    /// The identity of its in-process client: `adapter:<name>`.
    pub fn identity(&self) -> String {
        format!("adapter:{}", self.name)
    }
}

impl PointConfig {
    /// The parsed type (validated configurations only: `u16` otherwise).
    pub fn parsed_type(&self) -> ValueType {
        ValueType::parse(&self.value_type).unwrap_or(ValueType::U16)
    }

    /// The parsed order (validated configurations only: `ABCD` otherwise).
    pub fn parsed_order(&self) -> Order {
        self.order
            .as_deref()
            .and_then(|o| Order::parse(o).ok())
            .unwrap_or(Order::Abcd)
    }
}

/// Checks a name used as a topic level (bus, device, point).
fn name(f: &mut Findings, key: &str, name: &str) {
    if name.is_empty()
        || name.starts_with('$')
        || name.contains(['/', '+', '#', '\0'])
        || name.len() > 64
    {
        f.error(
            key,
            format!("{name:?} is not a usable topic level: use 1 to 64 characters without /, +, #, and not starting with $"),
        );
    } else if name == "status" {
        f.error(
            key,
            "\"status\" is reserved (the status topics): choose another name",
        );
    }
}

/// Every problem of every `[[modbus]]` section.
pub fn validate(buses: &[ModbusConfig]) -> Vec<Finding> {
    let mut f = Findings::default();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ports: HashMap<PathBuf, usize> = HashMap::new();
    for (i, bus) in buses.iter().enumerate() {
        let key = format!("modbus[{i}]");
        if let Some(first) = names.insert(&bus.name, i) {
            f.error(
                format!("{key}.name"),
                format!("{:?} is already the name of modbus[{first}]", bus.name),
            );
        }
        // Two buses on one line would each send while the other waits for a reply.
        if let Some(port) = bus
            .port
            .as_deref()
            .filter(|_| bus.transport == TransportKind::Rtu)
        {
            let identity = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_path_buf());
            if let Some(first) = ports.insert(identity, i) {
                f.error(
                    format!("{key}.port"),
                    format!("{} is already modbus[{first}]'s port: one [[modbus]] per serial line, with every device of the line under it", port.display()),
                );
            }
        }
        for p in &bus.problems {
            f.error(format!("{key}.{}", p.key), p.message.clone());
        }
        // A key that could not be read holds a placeholder: checks of it would only
        // repeat the problem, and checks that depend on it are skipped.
        let reported = super::config_parse::reported(bus, &key);
        let mut checks = Findings::default();
        validate_bus(bus, &key, &reported, &mut checks);
        if !reported.contains(&format!("{key}.topic_prefix")) {
            prefix_overlap(buses, i, &key, &mut checks);
        }
        f.problems.extend(
            checks
                .problems
                .into_iter()
                .filter(|p| !reported.contains(&p.key)),
        );
    }
    f.problems
}

/// Bus `i`'s topic prefix against the earlier buses': one prefix for two buses would
/// send every command to both (each bus refusing the other's points on the same result
/// topic) and mix their status documents; a prefix nested in another bus's collides when
/// its next level is one of that bus's device names.
fn prefix_overlap(buses: &[ModbusConfig], i: usize, key: &str, f: &mut Findings) {
    let mine = &buses[i].topic_prefix;
    if mine.is_empty() {
        return;
    }
    for (j, other) in buses[..i].iter().enumerate() {
        let theirs = &other.topic_prefix;
        if theirs.is_empty() {
            continue;
        }
        if theirs == mine {
            f.error(
                format!("{key}.topic_prefix"),
                format!("{mine:?} is already modbus[{j}]'s topic_prefix: each bus needs its own"),
            );
            continue;
        }
        // (outer bus, inner bus): the inner prefix continues the outer one by a level.
        let nested = [(other, mine, theirs), (&buses[i], theirs, mine)]
            .into_iter()
            .find_map(|(outer, inner, outer_prefix)| {
                let level = inner.strip_prefix(&format!("{outer_prefix}/"))?;
                let level = level.split('/').next().unwrap_or(level);
                outer
                    .device
                    .iter()
                    .any(|d| d.name == level)
                    .then(|| level.to_string())
            });
        if let Some(level) = nested {
            f.error(
                format!("{key}.topic_prefix"),
                format!("{mine:?} and modbus[{j}]'s {theirs:?} share the topics of device {level:?}: use prefixes that do not nest"),
            );
        }
    }
}

fn validate_bus(bus: &ModbusConfig, key: &str, reported: &HashSet<String>, f: &mut Findings) {
    name(f, &format!("{key}.name"), &bus.name);
    validate_line(bus, key, reported, f);
    f.duration(
        &format!("{key}.timeout"),
        bus.timeout,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    f.duration(
        &format!("{key}.inter_request_delay"),
        bus.inter_request_delay,
        Duration::ZERO,
        Duration::from_secs(10),
    );
    f.duration(
        &format!("{key}.backoff_min"),
        bus.backoff_min,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    f.duration(
        &format!("{key}.backoff_max"),
        bus.backoff_max,
        bus.backoff_min,
        Duration::from_secs(86_400),
    );
    f.duration(
        &format!("{key}.status_interval"),
        bus.status_interval,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    if bus.retries > 10 {
        f.error(
            format!("{key}.retries"),
            format!("{} is out of range: use 0 to 10", bus.retries),
        );
    }
    if !(1..=125).contains(&bus.max_registers) {
        f.error(
            format!("{key}.max_registers"),
            format!("{} is out of range: use 1 to 125", bus.max_registers),
        );
    }
    if !(1..=2000).contains(&bus.max_bits) {
        f.error(
            format!("{key}.max_bits"),
            format!("{} is out of range: use 1 to 2000", bus.max_bits),
        );
    }
    if bus.max_gap > 124 {
        f.error(
            format!("{key}.max_gap"),
            format!("{} is out of range: use 0 to 124", bus.max_gap),
        );
    }
    if let Err(e) = crate::topic::validate_topic_name(&bus.topic_prefix) {
        f.error(
            format!("{key}.topic_prefix"),
            format!("{:?} is not a topic name: {e}", bus.topic_prefix),
        );
    } else if bus.topic_prefix.is_empty() || bus.topic_prefix.starts_with('$') {
        f.error(
            format!("{key}.topic_prefix"),
            "must be a non-empty topic name not starting with $",
        );
    }
    if bus.device.is_empty() {
        f.error(
            format!("{key}.device"),
            "no [[modbus.device]]: a bus needs at least one device",
        );
    }
    let mut devices: HashMap<&str, usize> = HashMap::new();
    let mut units: HashMap<i64, usize> = HashMap::new();
    for (d, device) in bus.device.iter().enumerate() {
        let dkey = format!("{key}.device[{d}]");
        if let Some(first) = devices.insert(&device.name, d) {
            f.error(
                format!("{dkey}.name"),
                format!("{:?} is already the name of device[{first}]", device.name),
            );
        }
        if let Some(first) = units.insert(device.unit, d) {
            f.error(
                format!("{dkey}.unit"),
                format!("unit {} is already device[{first}]'s", device.unit),
            );
        }
        validate_device(bus, device, &dkey, reported, f);
    }
}

/// The transport's own keys: the serial line or the TCP address.
fn validate_line(bus: &ModbusConfig, key: &str, reported: &HashSet<String>, f: &mut Findings) {
    let transport = (!reported.contains(&format!("{key}.transport"))).then_some(bus.transport);
    match transport {
        None => {}
        Some(TransportKind::Rtu) => {
            if bus.port.is_none() {
                f.error(
                    format!("{key}.port"),
                    "transport \"rtu\" needs a serial port path (e.g. /dev/serial/by-id/...)",
                );
            }
            if bus.address.is_some() {
                f.error(
                    format!("{key}.address"),
                    "address is for transport \"tcp\"; an RTU bus uses port",
                );
            }
            if !(300..=4_000_000).contains(&bus.baud) {
                f.error(
                    format!("{key}.baud"),
                    format!("{} is out of range: use 300 to 4000000", bus.baud),
                );
            }
            if !(7..=8).contains(&bus.data_bits) {
                f.error(
                    format!("{key}.data_bits"),
                    format!("{} is not supported: use 7 or 8", bus.data_bits),
                );
            }
            if !(1..=2).contains(&bus.stop_bits) {
                f.error(
                    format!("{key}.stop_bits"),
                    format!("{} is not supported: use 1 or 2", bus.stop_bits),
                );
            }
            let rts_known = !reported.contains(&format!("{key}.rs485.rts"));
            for (name, delay) in [
                ("delay_before", bus.rs485.delay_before),
                ("delay_after", bus.rs485.delay_after),
            ] {
                if rts_known && bus.rs485.rts == RtsMode::None && !delay.is_zero() {
                    f.error(
                        format!("{key}.rs485.{name}"),
                        "applies when rts switches the driver: set rts = \"high-while-sending\" or \"low-while-sending\"",
                    );
                }
                f.duration(
                    &format!("{key}.rs485.{name}"),
                    delay,
                    Duration::ZERO,
                    Duration::from_secs(1),
                );
            }
        }
        Some(TransportKind::Tcp) => {
            match &bus.address {
                None => f.error(
                    format!("{key}.address"),
                    "transport \"tcp\" needs address = \"host:port\"",
                ),
                Some(a) => {
                    if crate::bridge::config::parse_address(a).is_err() {
                        f.error(format!("{key}.address"), format!("{a:?} is not host:port"));
                    }
                }
            }
            if bus.port.is_some() {
                f.error(
                    format!("{key}.port"),
                    "port is for transport \"rtu\"; a TCP bus uses address",
                );
            }
            if bus.rs485 != Rs485Config::default() {
                f.error(
                    format!("{key}.rs485"),
                    "RS-485 direction control is for transport \"rtu\"",
                );
            }
        }
    }
}

fn validate_device(
    bus: &ModbusConfig,
    device: &DeviceConfig,
    key: &str,
    reported: &HashSet<String>,
    f: &mut Findings,
) {
    name(f, &format!("{key}.name"), &device.name);
    let units = match bus.transport {
        TransportKind::Rtu => 1..=247,
        TransportKind::Tcp => 0..=255,
    };
    if !units.contains(&device.unit) {
        f.error(
            format!("{key}.unit"),
            format!(
                "{} is out of range: use {} to {} (0 is broadcast on RTU)",
                device.unit,
                units.start(),
                units.end()
            ),
        );
    }
    f.duration(
        &format!("{key}.poll"),
        device.poll,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    if device.point.is_empty() {
        f.error(
            format!("{key}.point"),
            "no [[modbus.device.point]]: a device needs at least one point",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    // Per kind: (first address, last address, bit or none, index) of each valid point.
    let mut spans: Vec<(RegisterKind, i64, i64, Option<u8>, usize)> = Vec::new();
    for (p, point) in device.point.iter().enumerate() {
        let pkey = format!("{key}.point[{p}]");
        if let Some(first) = names.insert(&point.name, p) {
            f.error(
                format!("{pkey}.name"),
                format!("{:?} is already the name of point[{first}]", point.name),
            );
        }
        if let Some(span) = validate_point(point, &pkey, reported, f) {
            let (first, last, bit) = span;
            let registers = last - first + 1;
            if !point.kind.is_bits()
                && (1..=125).contains(&bus.max_registers)
                && registers > i64::from(bus.max_registers)
            {
                f.error(
                    format!("{pkey}.type"),
                    format!(
                        "{} spans {registers} registers, more than max_registers = {} allows in one read: raise max_registers or shorten the point",
                        point.value_type.trim(),
                        bus.max_registers
                    ),
                );
            }
            for &(kind, a, b, other_bit, q) in &spans {
                let both_bits = matches!((bit, other_bit), (Some(x), Some(y)) if x != y);
                if kind == point.kind && first <= b && a <= last && !both_bits {
                    f.error(
                        format!("{pkey}.address"),
                        format!(
                            "{} {}..{} overlaps point[{q}] ({:?}, {} {a}..{b})",
                            point.kind.name(),
                            first,
                            last,
                            device.point[q].name,
                            kind.name()
                        ),
                    );
                }
            }
            spans.push((point.kind, first, last, bit, p));
        }
    }
}

/// Checks one point; its address span `(first, last, bit)` when address and type are valid.
fn validate_point(
    p: &PointConfig,
    key: &str,
    reported: &HashSet<String>,
    f: &mut Findings,
) -> Option<(i64, i64, Option<u8>)> {
    name(f, &format!("{key}.name"), &p.name);
    let kind_known = !reported.contains(&format!("{key}.kind"));
    let address_known = !reported.contains(&format!("{key}.address"));
    let value_type = match ValueType::parse(&p.value_type) {
        Ok(t) => Some(t),
        Err(e) => {
            f.error(format!("{key}.type"), e);
            None
        }
    };
    if let Some(order) = &p.order {
        match Order::parse(order) {
            Err(e) => f.error(format!("{key}.order"), e),
            Ok(order) => {
                if let Some(t) = value_type {
                    if let Err(e) = t.check_order(order) {
                        f.error(format!("{key}.order"), e);
                    }
                }
            }
        }
    }
    let address_in_range = (0..=65_535).contains(&p.address);
    if !address_in_range {
        f.error(format!("{key}.address"), format!("{} is out of range: use 0 to 65535 (the 0-based protocol address: 40001 is holding 0)", p.address));
    }
    let mut span = None;
    if let Some(t) = value_type {
        if kind_known && p.kind.is_bits() != matches!(t, ValueType::Bool) {
            let what = if p.kind.is_bits() {
                format!("{} points are bits: use type = \"bool\"", p.kind.name())
            } else {
                format!(
                    "{} points are registers: use bit(n) for one bit of a register",
                    p.kind.name()
                )
            };
            f.error(format!("{key}.type"), what);
        }
        let count = i64::from(t.registers());
        if address_in_range && p.address + count - 1 > 65_535 {
            f.error(
                format!("{key}.address"),
                format!("{} + {count} registers runs past 65535", p.address),
            );
        } else if address_in_range && kind_known && address_known {
            let bit = match t {
                ValueType::Bit(n) => Some(n),
                _ => None,
            };
            span = Some((p.address, p.address + count - 1, bit));
        }
        if p.writable && count > i64::from(MAX_WRITE_REGISTERS) {
            f.error(
                format!("{key}.type"),
                format!("{t} spans {count} registers: a write (function 16) takes at most {MAX_WRITE_REGISTERS}, so a writable string holds at most {} bytes", MAX_WRITE_REGISTERS * 2),
            );
        }
        if p.writable && kind_known && !p.kind.is_writable() {
            f.error(format!("{key}.writable"), format!("{} points are read-only in Modbus: only coil and holding points can be writable", p.kind.name()));
        }
        if !t.is_number() && (p.min.is_some() || p.max.is_some()) {
            f.error(
                format!("{key}.min"),
                format!("min and max bound numbers, not {}", p.value_type),
            );
        }
        if !t.is_number() && (p.scale != 1.0 || p.offset != 0.0) {
            f.error(
                format!("{key}.scale"),
                format!("scale and offset apply to numbers, not {}", p.value_type),
            );
        }
    }
    if !p.scale.is_finite() || p.scale == 0.0 {
        f.error(format!("{key}.scale"), "must be a finite non-zero number");
    }
    if !p.offset.is_finite() {
        f.error(format!("{key}.offset"), "must be a finite number");
    }
    if !p.deadband.is_finite() || p.deadband < 0.0 {
        f.error(format!("{key}.deadband"), "must be a finite number ≥ 0");
    } else if p.deadband > 0.0 && p.report == Report::Interval {
        f.error(
            format!("{key}.deadband"),
            "applies to report = \"on-change\" or \"both\", not \"interval\"",
        );
    }
    f.duration(
        &format!("{key}.interval"),
        p.interval,
        Duration::ZERO,
        Duration::from_secs(86_400),
    );
    let writable_known = !reported.contains(&format!("{key}.writable"));
    if (p.min.is_some() || p.max.is_some()) && !p.writable && writable_known {
        f.error(
            format!("{key}.min"),
            "min and max bound writes: set writable = true or remove them",
        );
    }
    if let (Some(min), Some(max)) = (p.min, p.max) {
        if min > max {
            f.error(
                format!("{key}.max"),
                format!("max {max} is below min {min}"),
            );
        }
    }
    f.duration(
        &format!("{key}.write_interval"),
        p.write_interval,
        Duration::ZERO,
        Duration::from_secs(86_400),
    );
    span
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
