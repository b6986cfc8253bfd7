//! `[[serial]]`: the serde type of one serial line device (port and line settings,
//! framing, topic template, the guarded `.../send` topic) and its validation, which
//! collects every problem with its key path (`serial[0].pattern`) and never opens the
//! port. Ports are compared across `[[serial]]` and `[[modbus]]`: one port, one owner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
pub use crate::findings::Finding;
use crate::findings::Findings;
use crate::uart;

/// Largest `max_length` (bytes of one line) and `frame_length` accepted.
pub const MAX_FRAME: usize = 65_536;
/// Largest payload a `.../send` command may carry.
pub const MAX_SEND: usize = 1024;
/// Compiled size limit of a configured regex (bytes): a pattern cannot make the
/// gateway build an automaton of unbounded size.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `[[serial]]`: one serial line device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Name; the in-process identity is `adapter:<name>`, and `{name}` in templates.
    pub name: String,
    /// The serial device (a `/dev/serial/by-id/...` path survives re-plugging).
    pub port: PathBuf,
    /// Bits per second.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Parity bit.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits (5 to 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Stop bits (1 or 2).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control: none, software (XON/XOFF) or hardware (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// `{prefix}` in topic templates; the status topic is `<prefix>/<name>/status`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Topic of each frame: `{prefix}`, `{name}` and (regex framing) capture names.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// `line`, `fixed` or `regex` (a line matched against `pattern`).
    #[serde(default = "default_framing")]
    pub framing: String,
    /// Line and regex framing: what ends a frame (one or more bytes; TOML escapes).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Line and regex framing: longest line in bytes; longer ones are dropped and counted.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Line and regex framing: trim surrounding whitespace (a `\r` before `\n`); empty
    /// lines are skipped.
    #[serde(default = "yes")]
    pub trim: bool,
    /// Fixed framing: bytes per frame.
    #[serde(default)]
    pub frame_length: Option<usize>,
    /// Regex framing: the pattern (named captures become JSON fields).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Line and regex framing: a line that is not UTF-8 is `reject`ed (dropped) or
    /// `replace`d (U+FFFD); either way it is counted.
    #[serde(default)]
    pub invalid_utf8: InvalidUtf8,
    /// QoS of the frames published (0 or 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish frames retained.
    #[serde(default)]
    pub retain: bool,
    /// `.../send` accepts a payload only if all of it matches this regex; without it,
    /// sending is off.
    #[serde(default)]
    pub send_allow: Option<String>,
    /// Bytes appended to every accepted send (e.g. `"\r\n"`).
    #[serde(default)]
    pub send_suffix: String,
    /// At most one send per this period; others are refused and audited.
    #[serde(
        default = "default_send_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub send_interval: Duration,
    /// Longest time a send may take to be written (a device that takes no bytes, held
    /// by flow control, gets the rest discarded and the send answered as failed).
    #[serde(
        default = "default_send_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub send_timeout: Duration,
    /// First delay before reopening a port that failed, doubling up to `backoff_max`.
    #[serde(
        default = "default_backoff_min",
        deserialize_with = "duration::deserialize"
    )]
    pub backoff_min: Duration,
    /// Longest delay between attempts to reopen the port.
    #[serde(
        default = "default_backoff_max",
        deserialize_with = "duration::deserialize"
    )]
    pub backoff_max: Duration,
    /// How often the status document (counters) is published.
    #[serde(
        default = "default_status_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub status_interval: Duration,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_prefix() -> String {
    "serial".into()
}
fn default_topic() -> String {
    "{prefix}/{name}/rx".into()
}
fn default_framing() -> String {
    "line".into()
}
fn default_delimiter() -> String {
    "\n".into()
}
fn default_max_length() -> usize {
    1024
}
fn yes() -> bool {
    true
}
fn default_qos() -> u8 {
    1
}
fn default_send_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

/// Serial parity (serial line devices mostly use none, unlike Modbus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Flow control of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// What happens to a line that is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUtf8 {
    /// Dropped and counted.
    #[default]
    Reject,
    /// Published with U+FFFD in place of bad bytes, and counted.
    Replace,
}

/// The framing, parsed.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Lines ending in `delimiter`.
    Line,
    /// `n` bytes each.
    Fixed(usize),
    /// Lines matched against a regex.
    Regex(regex::Regex),
}

impl SerialConfig {
    /// The identity of its in-process client: `adapter:<name>`.
    pub fn identity(&self) -> String {
        format!("adapter:{}", self.name)
    }

    /// `<prefix>/<name>` (status and send topics hang below it).
    pub fn base_topic(&self) -> String {
        format!("{}/{}", self.topic_prefix, self.name)
    }

    /// The parsed framing (validated configurations only: line otherwise).
    pub fn parsed_framing(&self) -> Framing {
        match self.framing.as_str() {
            "fixed" => Framing::Fixed(self.frame_length.unwrap_or(1).max(1)),
            "regex" => match self.pattern.as_deref().map(compile) {
                Some(Ok(r)) => Framing::Regex(r),
                _ => Framing::Line,
            },
            _ => Framing::Line,
        }
    }

    /// The port's path and line settings, to open it.
    pub fn line_settings(&self) -> uart::LineSettings<'_> {
        uart::LineSettings {
            path: &self.port,
            baud: self.baud,
            parity: match self.parity {
                Parity::None => uart::Parity::None,
                Parity::Even => uart::Parity::Even,
                Parity::Odd => uart::Parity::Odd,
            },
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
            flow_control: match self.flow_control {
                FlowControl::None => uart::FlowControl::None,
                FlowControl::Software => uart::FlowControl::Software,
                FlowControl::Hardware => uart::FlowControl::Hardware,
            },
        }
    }

    /// The send allowlist, anchored to the whole payload (validated configurations).
    pub fn send_allowlist(&self) -> Option<regex::Regex> {
        self.send_allow
            .as_deref()
            .and_then(|p| compile(&format!("^(?:{p})$")).ok())
    }
}

/// Compile `pattern` with the size limit.
pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The placeholders of a topic template, or why it is malformed.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("a } without its {".into());
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("a { without its }")?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("{{{name}}} is not a placeholder"));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
}

/// Checks a name used as a topic level.
fn level(f: &mut Findings, key: &str, name: &str) {
    if name.is_empty()
        || name.starts_with('$')
        || name.contains(['/', '+', '#', '\0', '{', '}'])
        || name.len() > 64
    {
        f.error(
            key,
            format!("{name:?} is not a usable topic level: use 1 to 64 characters without /, +, #, {{, }}, and not starting with $"),
        );
    }
}

/// Every problem of every `[[serial]]` section; `modbus` ports are checked for reuse.
pub fn validate(lines: &[SerialConfig], modbus: &[crate::modbus::ModbusConfig]) -> Vec<Finding> {
    let mut f = Findings::default();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ports: HashMap<PathBuf, String> = HashMap::new();
    for (i, bus) in modbus.iter().enumerate() {
        if let Some(port) = &bus.port {
            ports.insert(port_identity(port), format!("modbus[{i}].port"));
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let key = format!("serial[{i}]");
        if modbus.iter().any(|b| b.name == line.name) {
            f.error(
                format!("{key}.name"),
                format!(
                    "{:?} is already the name of a [[modbus]] bus (identity adapter:{})",
                    line.name, line.name
                ),
            );
        } else if let Some(first) = names.insert(&line.name, i) {
            f.error(
                format!("{key}.name"),
                format!("{:?} is already the name of serial[{first}]", line.name),
            );
        }
        let id = port_identity(&line.port);
        if let Some(owner) = ports.get(&id) {
            f.error(
                format!("{key}.port"),
                format!(
                    "{} is already used by {owner}: a port has one owner",
                    line.port.display()
                ),
            );
        } else {
            ports.insert(id, format!("{key}.port"));
        }
        validate_line(line, &key, &mut f);
    }
    f.problems
}

/// What identifies a port: its canonical path when it exists (a by-id link and the
/// tty it points at are the same port), the path as written otherwise.
fn port_identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn validate_line(line: &SerialConfig, key: &str, f: &mut Findings) {
    level(f, &format!("{key}.name"), &line.name);
    if line.port.as_os_str().is_empty() {
        f.error(
            format!("{key}.port"),
            "needs the serial device path (e.g. /dev/serial/by-id/...)",
        );
    }
    if !(50..=4_000_000).contains(&line.baud) {
        f.error(
            format!("{key}.baud"),
            format!("{} is out of range: use 50 to 4000000", line.baud),
        );
    }
    if !(5..=8).contains(&line.data_bits) {
        f.error(
            format!("{key}.data_bits"),
            format!("{} is not supported: use 5 to 8", line.data_bits),
        );
    }
    if !(1..=2).contains(&line.stop_bits) {
        f.error(
            format!("{key}.stop_bits"),
            format!("{} is not supported: use 1 or 2", line.stop_bits),
        );
    }
    if line.qos > 1 {
        f.error(
            format!("{key}.qos"),
            format!("{} is not supported: use 0 or 1", line.qos),
        );
    }
    if let Err(e) = crate::topic::validate_topic_name(&line.topic_prefix) {
        f.error(
            format!("{key}.topic_prefix"),
            format!("{:?} is not a topic name: {e}", line.topic_prefix),
        );
    } else if line.topic_prefix.is_empty()
        || line.topic_prefix.starts_with('$')
        || line.topic_prefix.contains(['{', '}', '+', '#'])
    {
        f.error(
            format!("{key}.topic_prefix"),
            "must be a non-empty topic name not starting with $, without +, #, { or } (it fills {prefix} in the template)",
        );
    }
    let captures = validate_framing(line, key, f);
    validate_template(line, key, &captures, f);
    if let Some(p) = &line.send_allow {
        if let Err(e) = compile(&format!("^(?:{p})$")) {
            f.error(
                format!("{key}.send_allow"),
                format!("not a usable regex: {e}"),
            );
        }
    } else if !line.send_suffix.is_empty() {
        f.error(
            format!("{key}.send_suffix"),
            "applies to sends: set send_allow (sending is off without it)",
        );
    }
    if line.send_suffix.len() > 16 {
        f.error(format!("{key}.send_suffix"), "at most 16 bytes");
    }
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(3600));
    f.duration(
        &format!("{key}.send_interval"),
        line.send_interval,
        Duration::ZERO,
        max,
    );
    f.duration(
        &format!("{key}.send_timeout"),
        line.send_timeout,
        min,
        Duration::from_secs(60),
    );
    f.duration(&format!("{key}.backoff_min"), line.backoff_min, min, max);
    f.duration(
        &format!("{key}.backoff_max"),
        line.backoff_max,
        line.backoff_min,
        Duration::from_secs(86_400),
    );
    f.duration(
        &format!("{key}.status_interval"),
        line.status_interval,
        Duration::from_secs(1),
        max,
    );
}

/// Checks the framing keys; the regex's capture names (empty otherwise).
fn validate_framing(line: &SerialConfig, key: &str, f: &mut Findings) -> Vec<String> {
    let mut captures = Vec::new();
    let lines = matches!(line.framing.as_str(), "line" | "regex");
    match line.framing.as_str() {
        "line" => {}
        "fixed" => match line.frame_length {
            None => f.error(
                format!("{key}.frame_length"),
                "framing \"fixed\" needs frame_length (bytes per frame)",
            ),
            Some(n) if !(1..=MAX_FRAME).contains(&n) => f.error(
                format!("{key}.frame_length"),
                format!("{n} is out of range: use 1 to {MAX_FRAME}"),
            ),
            Some(_) => {}
        },
        "regex" => {
            match &line.pattern {
                None => f.error(
                    format!("{key}.pattern"),
                    "framing \"regex\" needs pattern (named captures become JSON fields)",
                ),
                Some(p) => match compile(p) {
                    Err(e) => f.error(format!("{key}.pattern"), format!("not a usable regex: {e}")),
                    Ok(r) => {
                        captures = r.capture_names().flatten().map(str::to_string).collect();
                        if captures.is_empty() {
                            f.error(format!("{key}.pattern"), "has no named capture: name what to publish, e.g. (?P<weight>[0-9.]+)");
                        }
                        if captures.iter().any(|c| c == "ts") {
                            f.error(
                                format!("{key}.pattern"),
                                "the capture name \"ts\" is the timestamp field: choose another",
                            );
                        }
                    }
                },
            }
        }
        other => f.error(
            format!("{key}.framing"),
            format!("{other:?} is not a framing: use \"line\", \"fixed\" or \"regex\""),
        ),
    }
    if line.frame_length.is_some() && line.framing != "fixed" {
        f.error(
            format!("{key}.frame_length"),
            "applies to framing \"fixed\" only",
        );
    }
    if line.pattern.is_some() && line.framing != "regex" {
        f.error(
            format!("{key}.pattern"),
            "applies to framing \"regex\" only",
        );
    }
    if lines {
        if line.delimiter.is_empty() || line.delimiter.len() > 8 {
            f.error(
                format!("{key}.delimiter"),
                "use 1 to 8 bytes (e.g. \"\\n\" or \"\\r\\n\")",
            );
        }
        if !(1..=MAX_FRAME).contains(&line.max_length) {
            f.error(
                format!("{key}.max_length"),
                format!("{} is out of range: use 1 to {MAX_FRAME}", line.max_length),
            );
        }
    }
    captures
}

fn validate_template(line: &SerialConfig, key: &str, captures: &[String], f: &mut Findings) {
    let tkey = format!("{key}.topic");
    let names = match placeholders(&line.topic) {
        Ok(n) => n,
        Err(e) => return f.error(tkey, format!("{:?}: {e}", line.topic)),
    };
    for name in &names {
        if !matches!(*name, "prefix" | "name") && !captures.iter().any(|c| c == name) {
            let also = if line.framing == "regex" {
                ", or a capture name of pattern"
            } else {
                ""
            };
            f.error(
                &tkey,
                format!("unknown placeholder {{{name}}}: use {{prefix}}, {{name}}{also}"),
            );
        }
    }
    // A capture stands for one level: check the template with a sample level there.
    let mut sample = line
        .topic
        .replace("{prefix}", &line.topic_prefix)
        .replace("{name}", &line.name);
    for c in captures {
        sample = sample.replace(&format!("{{{c}}}"), "x");
    }
    if !sample.contains(['{', '}']) {
        if let Err(e) = crate::topic::validate_topic_name(&sample) {
            f.error(
                &tkey,
                format!("{:?} does not make a topic name: {e}", line.topic),
            );
        } else if sample.starts_with('$') || sample.is_empty() {
            f.error(
                &tkey,
                "must make a non-empty topic name not starting with $",
            );
        } else if sample == format!("{}/status", line.base_topic())
            || sample.starts_with(&format!("{}/send", line.base_topic()))
        {
            f.error(
                &tkey,
                "collides with the status or send topic: use e.g. {prefix}/{name}/rx",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(extra: &str) -> SerialConfig {
        let text = format!("name = \"scale\"\nport = \"/dev/ttyS9\"\n{extra}");
        toml::from_str(&text).expect("parses")
    }

    fn keys(lines: &[SerialConfig]) -> Vec<String> {
        validate(lines, &[])
            .into_iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect()
    }

    #[test]
    fn defaults_and_examples_are_valid() {
        assert_eq!(keys(&[line("")]), Vec::<String>::new());
        let mut fixed = line("framing = \"fixed\"\nframe_length = 8");
        fixed.name = "meter".into();
        fixed.port = "/dev/ttyS8".into();
        let mut regex = line("framing = \"regex\"\npattern = '(?P<w>[0-9]+) (?P<unit>kg|g)'\ntopic = \"{prefix}/{name}/{unit}\"");
        regex.port = "/dev/ttyS7".into();
        regex.name = "gps".into();
        assert_eq!(keys(&[line(""), fixed, regex]), Vec::<String>::new());
        let twice = keys(&[line(""), line("")]);
        assert_eq!(twice, ["serial[1].name: \"scale\" is already the name of serial[0]", "serial[1].port: /dev/ttyS9 is already used by serial[0].port: a port has one owner"]);
    }

    #[test]
    fn every_problem_has_its_key_path() {
        let bad = line("framing = \"regex\"\npattern = '(?P<w>[0-9'\ntopic = \"{prefix}/{weight}\"\nsend_allow = '('\nqos = 2");
        let found = keys(&[bad]);
        assert!(
            found
                .iter()
                .any(|k| k.starts_with("serial[0].pattern: not a usable regex")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|k| k.starts_with("serial[0].topic: unknown placeholder {weight}")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|k| k.starts_with("serial[0].send_allow: not a usable regex")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|k| k.starts_with("serial[0].qos")),
            "{found:?}"
        );
        let unknown = keys(&[line("framing = \"slip\"")]);
        assert_eq!(unknown, ["serial[0].framing: \"slip\" is not a framing: use \"line\", \"fixed\" or \"regex\""]);
        let fixed = keys(&[line("framing = \"fixed\"")]);
        assert_eq!(
            fixed,
            ["serial[0].frame_length: framing \"fixed\" needs frame_length (bytes per frame)"]
        );
    }

    #[test]
    fn templates_are_checked() {
        assert_eq!(
            placeholders("{prefix}/{name}/rx"),
            Ok(vec!["prefix", "name"])
        );
        assert!(placeholders("a/{b").is_err());
        assert!(placeholders("a/}b").is_err());
        assert!(placeholders("a/{}").is_err());
        let found = keys(&[line("topic = \"{prefix}/+/x\"")]);
        assert!(
            found[0].starts_with("serial[0].topic: \"{prefix}/+/x\" does not make a topic name"),
            "{found:?}"
        );
        let found = keys(&[line("topic = \"{prefix}/{name}/status\"")]);
        assert!(found[0].contains("collides with the status"), "{found:?}");
        let found = keys(&[line("topic_prefix = \"site/{x}\"")]);
        assert!(
            found[0].starts_with("serial[0].topic_prefix: must be a non-empty topic name"),
            "{found:?}"
        );
    }

    #[test]
    fn a_port_has_one_owner_across_serial_and_modbus() {
        let bus: crate::modbus::ModbusConfig = toml::from_str(
            "name = \"plant\"\ntransport = \"rtu\"\nport = \"/dev/ttyS9\"\ntopic_prefix = \"p\"",
        )
        .expect("modbus parses");
        let found: Vec<String> = validate(&[line("")], &[bus])
            .into_iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect();
        assert_eq!(found, ["serial[0].port: /dev/ttyS9 is already used by modbus[0].port: a port has one owner"]);
    }
}
