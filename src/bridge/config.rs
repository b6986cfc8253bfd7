//! `[[bridge]]`: the serde types of a cloud bridge (mosquitto's bridge vocabulary:
//! addresses, `topic pattern dir qos local-prefix remote-prefix`) and their
//! validation. Validation collects every problem with its key path
//! (`bridge[0].topic[1].pattern`) and the accepted-but-risky settings as warnings
//! (QoS downgrades); it only reads the files it names, it never connects.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::rules::{filters_overlap, Rule};
use crate::duration;
use crate::topic::{validate_topic_filter, validate_topic_name};

/// MQTT's largest packet (remaining length 268,435,455 plus header).
const MQTT_MAX_PACKET: u32 = 268_435_455;
/// `max_inflight` when not set: QoS 1/2 PUBLISHes in flight upstream. The window is
/// what bounds a bridge whose cloud answers in milliseconds (throughput = window /
/// round trip; at 100 a busy cloud's 2-3 ms round trip capped the bridge near 36,000
/// msg/s here, README "Bridge"); a cloud that wants fewer says so with its Receive
/// Maximum (MQTT 5: AWS IoT Core 100, EMQX 32 by default), which lowers it.
pub const DEFAULT_MAX_INFLIGHT: u16 = 1000;
/// `max_inflight_bytes` when not set: 16 MiB (a full window of 16 KiB messages).
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 16 * 1024 * 1024;
/// Range of `max_inflight_bytes`.
const INFLIGHT_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);

/// `[[bridge]]`: one upstream broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Name; the in-process identity is `bridge:<name>`, the state topic
    /// `$SYS/tollgate/bridge/<name>/state`.
    pub name: String,
    /// `false` keeps the bridge configured but stopped (state `disabled`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Upstream `host:port` addresses, tried in order (primary first).
    pub address: Vec<String>,
    /// MQTT version spoken upstream.
    #[serde(default)]
    pub protocol: Protocol,
    /// Client id upstream (the cloud session's name).
    pub client_id: String,
    /// Discard the cloud session on every connect (`false` keeps it).
    #[serde(default)]
    pub clean_start: bool,
    /// v5 session expiry asked of the cloud.
    #[serde(default = "one_day", deserialize_with = "duration::deserialize")]
    pub session_expiry: Duration,
    /// Keep alive towards the cloud.
    #[serde(default = "sixty_seconds", deserialize_with = "duration::deserialize")]
    pub keepalive: Duration,
    /// CA certificates trusted for the cloud's server certificate (PEM).
    pub ca: PathBuf,
    /// This gateway's client certificate (mTLS), PEM.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (same permission rule as server keys).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// User name upstream (with or without a certificate).
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the upstream password (never logged).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name the cloud's certificate must carry, when it differs from the address host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// ALPN protocols offered (e.g. `x-amzn-mqtt-ca` for AWS IoT on port 443).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Reconnect delays.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Remote topic for the birth ("online", retained) and will ("offline") messages.
    #[serde(default)]
    pub status_topic: Option<String>,
    /// QoS 1/2 messages in flight upstream at most; the cloud's Receive Maximum lowers it.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// Payload and topic bytes of the QoS 1/2 messages in flight upstream at most (one
    /// message always goes, however large): with `max_inflight` messages of up to
    /// `max_packet_size` each, the window alone would let a gigabyte wait in memory
    /// for the cloud's acknowledgements.
    #[serde(default = "default_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// How long the oldest in-flight QoS 1/2 message may wait for the cloud's PUBACK
    /// (PUBREC/PUBCOMP) before the connection is dropped and the window resent.
    #[serde(default = "thirty_seconds", deserialize_with = "duration::deserialize")]
    pub ack_timeout: Duration,
    /// Largest packet sent to or accepted from the cloud, in bytes.
    #[serde(default = "default_packet")]
    pub max_packet_size: u32,
    /// Store-and-forward of outgoing QoS 1/2 messages.
    #[serde(default)]
    pub journal: JournalConfig,
    /// `[[bridge.topic]]` rules, in order (the first covering rule wins).
    #[serde(default)]
    pub topic: Vec<TopicRuleConfig>,
}

fn yes() -> bool {
    true
}
fn one_day() -> Duration {
    Duration::from_secs(86_400)
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_inflight() -> u16 {
    DEFAULT_MAX_INFLIGHT
}
fn default_inflight_bytes() -> u64 {
    DEFAULT_MAX_INFLIGHT_BYTES
}
fn default_packet() -> u32 {
    1024 * 1024
}

/// MQTT version of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (no No Local: see the echo warning).
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// `backoff = { min, max, stable }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay after a failure.
    #[serde(deserialize_with = "duration::deserialize")]
    pub min: Duration,
    /// Largest delay (doubling stops here).
    #[serde(deserialize_with = "duration::deserialize")]
    pub max: Duration,
    /// Connected this long, the next failure starts again at `min`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub stable: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(30),
        }
    }
}

/// `[bridge.journal]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Bytes of unacknowledged messages kept at most.
    pub max_bytes: u64,
    /// What happens when `max_bytes` is reached.
    pub overflow: Overflow,
    /// Pace of a backlog replayed after a reconnect.
    pub replay_rate: ReplayRate,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_bytes: 256 * 1024 * 1024,
            overflow: Overflow::BlockPublishers,
            replay_rate: ReplayRate::default(),
        }
    }
}

/// What a full journal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Hold back the local publishers' acknowledgements until there is room.
    BlockPublishers,
    /// Discard the oldest stored messages (counted as dropped `overflow`).
    DropOldest,
    /// Refuse new messages: v5 publishers get PUBACK/PUBREC 0x97 (Quota exceeded);
    /// 3.1.1 publishers, which have no negative acknowledgement, get a PUBACK and the
    /// message is dropped (counted as `dropped.full`, logged).
    RefuseNew,
}

/// `replay_rate = { msgs, bytes }` per second.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayRate {
    /// Messages per second.
    pub msgs: u32,
    /// Payload bytes per second.
    pub bytes: u64,
}

impl Default for ReplayRate {
    fn default() -> Self {
        ReplayRate {
            msgs: 2000,
            bytes: 1024 * 1024,
        }
    }
}

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local broker → cloud.
    Out,
    /// Cloud → local broker.
    In,
    /// Both ways (No Local keeps a message from coming back).
    Both,
}

/// `[[bridge.topic]]`: mosquitto's `topic pattern dir qos local-prefix remote-prefix`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRuleConfig {
    /// Filter applied after the prefix; empty makes the prefixes whole topics.
    pub pattern: String,
    /// `out`, `in` or `both`.
    #[serde(default = "out")]
    pub direction: Direction,
    /// Highest QoS on the far side (and of the subscriptions the rule makes).
    #[serde(default = "qos_one")]
    pub qos: u8,
    /// Prefix of local topics.
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of remote topics.
    #[serde(default)]
    pub remote_prefix: String,
    /// Keep the RETAIN flag of forwarded messages (`false` clears it).
    #[serde(default = "yes")]
    pub retain: bool,
    /// `{ msgs, bytes }` per second this rule forwards at most, each way, with a burst
    /// of one second's worth; what goes beyond is not forwarded (counted as dropped
    /// `rate_limited`; the local publisher's acknowledgement, or the cloud's, is given
    /// as for any message the bridge does not carry). None: no limit.
    #[serde(default)]
    pub rate: Option<ReplayRate>,
}

fn out() -> Direction {
    Direction::Out
}
fn qos_one() -> u8 {
    1
}

impl BridgeConfig {
    /// Make relative file paths absolute against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            Some(&mut self.ca),
            self.cert.as_mut(),
            self.key.as_mut(),
            self.password_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The identity of its in-process client: `bridge:<name>`.
    pub fn identity(&self) -> String {
        format!("bridge:{}", self.name)
    }

    /// The rules, compiled.
    pub fn rules(&self) -> Vec<Rule> {
        self.topic
            .iter()
            .enumerate()
            .map(|(i, t)| Rule::from_config(i, t))
            .collect()
    }
}

pub use crate::findings::{Finding, Findings};

/// Check every bridge; every problem is collected.
pub fn validate(bridges: &[BridgeConfig]) -> Findings {
    let mut f = Findings::default();
    let mut names = HashSet::new();
    for (i, b) in bridges.iter().enumerate() {
        let key = format!("bridge[{i}]");
        if !valid_name(&b.name) {
            f.error(
                format!("{key}.name"),
                format!("{:?} is not a bridge name: use 1 to 64 letters, digits, '-' or '_' (it becomes a topic level and the identity bridge:<name>)", b.name),
            );
        } else if !names.insert(b.name.clone()) {
            f.error(
                format!("{key}.name"),
                format!("bridge {:?} is defined twice; names must be unique", b.name),
            );
        }
        validate_one(b, &key, &mut f);
    }
    f
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// `host:port` (IPv6 as `[addr]:port`) into its parts.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, rest) = rest
            .split_once(']')
            .ok_or_else(|| format!("{address:?}: missing ']' after an IPv6 address"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("{address:?}: write host:port, e.g. \"[::1]:8883\""))?;
        (host, port)
    } else {
        address.rsplit_once(':').ok_or_else(|| {
            format!("{address:?}: write host:port, e.g. \"cloud.example.com:8883\"")
        })?
    };
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || host.contains(':') && !address.starts_with('[')
    {
        return Err(format!("{address:?}: the host is missing or malformed"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_string(), p)),
        _ => Err(format!("{address:?}: the port must be 1 to 65535")),
    }
}

fn validate_one(b: &BridgeConfig, key: &str, f: &mut Findings) {
    if b.address.is_empty() {
        f.error(
            format!("{key}.address"),
            "at least one upstream address is needed (host:port)",
        );
    }
    for (j, a) in b.address.iter().enumerate() {
        if let Err(e) = parse_address(a) {
            f.error(format!("{key}.address[{j}]"), e);
        }
    }
    if b.client_id.is_empty() || b.client_id.len() > 65535 {
        f.error(
            format!("{key}.client_id"),
            "must be 1 to 65535 bytes (the cloud session's name)",
        );
    } else if b.protocol == Protocol::V311 && b.client_id.len() > 23 {
        f.warn(
            format!("{key}.client_id"),
            "longer than 23 characters: MQTT 3.1.1 servers may refuse it",
        );
    }
    f.duration(
        &format!("{key}.keepalive"),
        b.keepalive,
        Duration::from_secs(5),
        Duration::from_secs(65_535),
    );
    f.duration(
        &format!("{key}.session_expiry"),
        b.session_expiry,
        Duration::ZERO,
        Duration::from_secs(u64::from(u32::MAX)),
    );
    let backoff = &b.backoff;
    f.duration(
        &format!("{key}.backoff.min"),
        backoff.min,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    );
    f.duration(
        &format!("{key}.backoff.max"),
        backoff.max,
        Duration::from_millis(10),
        Duration::from_secs(24 * 3600),
    );
    f.duration(
        &format!("{key}.backoff.stable"),
        backoff.stable,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    );
    if backoff.min > backoff.max {
        f.error(
            format!("{key}.backoff"),
            format!(
                "min ({}) is larger than max ({})",
                duration::format(backoff.min),
                duration::format(backoff.max)
            ),
        );
    }
    if b.max_inflight == 0 {
        f.error(
            format!("{key}.max_inflight"),
            "0 is out of range: use 1 to 65535",
        );
    }
    if !INFLIGHT_BYTES_RANGE.contains(&b.max_inflight_bytes) {
        f.error(
            format!("{key}.max_inflight_bytes"),
            format!(
                "{} is out of range: use {} to {} (bytes)",
                b.max_inflight_bytes,
                INFLIGHT_BYTES_RANGE.start(),
                INFLIGHT_BYTES_RANGE.end()
            ),
        );
    }
    f.duration(
        &format!("{key}.ack_timeout"),
        b.ack_timeout,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    );
    if b.max_packet_size < 64 || b.max_packet_size > MQTT_MAX_PACKET {
        f.error(
            format!("{key}.max_packet_size"),
            format!(
                "{} is out of range: use 64 to {MQTT_MAX_PACKET} bytes",
                b.max_packet_size
            ),
        );
    }
    tls_files(b, key, f);
    if let Some(topic) = &b.status_topic {
        if let Err(e) = validate_topic_name(topic) {
            f.error(
                format!("{key}.status_topic"),
                format!("{topic:?} is not a topic name: {e}"),
            );
        }
    }
    let j = &b.journal;
    if j.max_bytes < 65_536 {
        f.error(
            format!("{key}.journal.max_bytes"),
            format!("{} is out of range: use at least 65536 bytes", j.max_bytes),
        );
    }
    if j.replay_rate.msgs == 0 {
        f.error(
            format!("{key}.journal.replay_rate.msgs"),
            "0 would never replay: use at least 1",
        );
    }
    if j.replay_rate.bytes < 1024 {
        f.error(
            format!("{key}.journal.replay_rate.bytes"),
            "use at least 1024 bytes per second",
        );
    }
    rules(b, key, f);
}

fn tls_files(b: &BridgeConfig, key: &str, f: &mut Findings) {
    let ca_ok = f.readable(&format!("{key}.ca"), &b.ca);
    let mut pair_ok = true;
    match (&b.cert, &b.key) {
        (Some(cert), Some(k)) => {
            pair_ok &= f.readable(&format!("{key}.cert"), cert);
            if f.readable(&format!("{key}.key"), k) {
                if let Err(e) = crate::tls::check_key_permissions(k) {
                    f.error(format!("{key}.key"), e.to_string());
                    pair_ok = false;
                }
            } else {
                pair_ok = false;
            }
        }
        (Some(_), None) => {
            f.error(
                format!("{key}.key"),
                "cert is set but key is missing: give both or neither",
            );
            pair_ok = false;
        }
        (None, Some(_)) => {
            f.error(
                format!("{key}.cert"),
                "key is set but cert is missing: give both or neither",
            );
            pair_ok = false;
        }
        (None, None) => {
            if b.username.is_none() {
                f.warn(
                    key.to_string(),
                    "no client certificate and no username: the cloud sees an anonymous client",
                );
            }
        }
    }
    if ca_ok && pair_ok {
        let pair = b.cert.as_deref().zip(b.key.as_deref());
        if let Err(e) = crate::tls::build_client_config(&b.ca, pair) {
            f.error(
                key.to_string(),
                format!("TLS client configuration refused: {e}"),
            );
        }
    }
    if let Some(p) = &b.password_file {
        f.readable(&format!("{key}.password_file"), p);
        if b.username.is_none() {
            f.error(
                format!("{key}.password_file"),
                "a password needs a username: set username too",
            );
        }
    }
    if let Some(name) = &b.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            f.error(
                format!("{key}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    for (j, p) in b.alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            f.error(
                format!("{key}.alpn[{j}]"),
                "an ALPN protocol is 1 to 255 bytes",
            );
        }
    }
}

fn rules(b: &BridgeConfig, key: &str, f: &mut Findings) {
    if b.topic.is_empty() {
        f.warn(
            format!("{key}.topic"),
            "no [[bridge.topic]] rules: the bridge connects but forwards nothing",
        );
    }
    let mut valid = vec![true; b.topic.len()];
    for (j, t) in b.topic.iter().enumerate() {
        let tkey = format!("{key}.topic[{j}]");
        for (name, prefix) in [
            ("local_prefix", &t.local_prefix),
            ("remote_prefix", &t.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                f.error(
                    format!("{tkey}.{name}"),
                    format!("{prefix:?} must not contain '+', '#' or NUL (the pattern carries the wildcards)"),
                );
                valid[j] = false;
            }
        }
        if t.pattern.is_empty() {
            if t.local_prefix.is_empty() || t.remote_prefix.is_empty() {
                f.error(
                    format!("{tkey}.pattern"),
                    "an empty pattern maps one topic to another: set both local_prefix and remote_prefix to the whole topics",
                );
                valid[j] = false;
            }
        } else if let Err(e) = validate_topic_filter(&t.pattern) {
            f.error(
                format!("{tkey}.pattern"),
                format!("{:?} is not a topic filter: {e}", t.pattern),
            );
            valid[j] = false;
        } else if t.pattern.starts_with("$share/") {
            f.error(
                format!("{tkey}.pattern"),
                "shared subscriptions cannot be bridged",
            );
            valid[j] = false;
        }
        if valid[j] {
            let rule = Rule::from_config(j, t);
            for (side, filter) in [
                ("local", rule.local_filter()),
                ("remote", rule.remote_filter()),
            ] {
                let check = if t.pattern.is_empty() {
                    validate_topic_name(&filter)
                } else {
                    validate_topic_filter(&filter)
                };
                if let Err(e) = check {
                    f.error(
                        format!("{tkey}.pattern"),
                        format!(
                            "the {side} side {filter:?} is not valid: {e} (end a prefix with '/')"
                        ),
                    );
                    valid[j] = false;
                }
            }
        }
        if let Some(rate) = &t.rate {
            if rate.msgs == 0 {
                f.error(
                    format!("{tkey}.rate.msgs"),
                    "0 would forward nothing: use at least 1 (or no rate)",
                );
            }
            if rate.bytes < 1024 {
                f.error(
                    format!("{tkey}.rate.bytes"),
                    "use at least 1024 bytes per second",
                );
            }
        }
        if t.qos > 2 {
            f.error(
                format!("{tkey}.qos"),
                format!("{} is not a QoS: use 0, 1 or 2", t.qos),
            );
        } else if t.qos == 0 {
            let which = match t.direction {
                Direction::Out => "sent upstream",
                Direction::In => "published locally",
                Direction::Both => "forwarded",
            };
            f.warn(
                format!("{tkey}.qos"),
                format!("QoS 1 and 2 messages matching {:?} are downgraded to QoS 0 and {which} without acknowledgement (and never journaled); set qos = 1 to keep them safe", t.pattern),
            );
        }
    }
    // Loops: what an `in` rule publishes locally must not be what another rule sends out.
    let compiled: Vec<Rule> = b.rules();
    for (i, a) in compiled.iter().enumerate() {
        for (j, c) in compiled.iter().enumerate() {
            if i == j || !valid[i] || !valid[j] || !a.is_in() || !c.is_out() {
                continue;
            }
            if filters_overlap(&a.local_filter(), &c.local_filter()) {
                f.error(
                    format!("{key}.topic[{j}]"),
                    format!(
                        "loop: messages rule topic[{i}] brings in on {:?} would be sent out again by this rule ({:?}); make the local sides disjoint, or use one rule with direction = \"both\"",
                        a.local_filter(),
                        c.local_filter()
                    ),
                );
            }
            if b.protocol == Protocol::V311
                && filters_overlap(&a.remote_filter(), &c.remote_filter())
            {
                f.warn(
                    format!("{key}.topic[{j}]"),
                    format!(
                        "MQTT 3.1.1 has no No Local: what this rule sends to {:?} comes back through topic[{i}] ({:?})",
                        c.remote_filter(),
                        a.remote_filter()
                    ),
                );
            }
        }
        if a.direction == Direction::Both && b.protocol == Protocol::V311 && valid[i] {
            f.warn(
                format!("{key}.topic[{i}].direction"),
                "both ways over MQTT 3.1.1 (no No Local): the cloud echoes what the bridge sends; the bridge recognises and drops the echo only by topic, so a cloud client publishing the same topic is dropped too",
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A valid bridge (its `ca` a file in `dir`); shared with the session's tests.
    pub(in crate::bridge) fn bridge(dir: &Path) -> BridgeConfig {
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, "not a certificate").expect("write");
        BridgeConfig {
            name: "cloud".into(),
            enabled: true,
            address: vec!["cloud.example.com:8883".into()],
            protocol: Protocol::V5,
            client_id: "gw-0001".into(),
            clean_start: false,
            session_expiry: one_day(),
            keepalive: sixty_seconds(),
            ca,
            cert: None,
            key: None,
            username: Some("gw".into()),
            password_file: None,
            server_name: None,
            alpn: Vec::new(),
            backoff: BackoffConfig::default(),
            status_topic: Some("site/gw1/status".into()),
            max_inflight: 100,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            ack_timeout: thirty_seconds(),
            max_packet_size: 1 << 20,
            journal: JournalConfig::default(),
            topic: vec![rule("sensors/#", Direction::Out, "", "site/gw1/")],
        }
    }

    fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> TopicRuleConfig {
        TopicRuleConfig {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
            retain: true,
            rate: None,
        }
    }

    fn keys(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = bridge(dir.path());
        b.name = "bad name".into();
        b.address = vec!["nohost".into(), "h:0".into()];
        b.client_id = String::new();
        b.keepalive = Duration::from_secs(1);
        b.backoff.min = Duration::from_secs(10);
        b.backoff.max = Duration::from_secs(5);
        b.ack_timeout = Duration::from_millis(500);
        b.max_inflight_bytes = 100;
        b.cert = Some(dir.path().join("missing.crt"));
        b.status_topic = Some("a/+".into());
        b.journal.max_bytes = 10;
        b.topic = vec![
            TopicRuleConfig {
                rate: Some(ReplayRate { msgs: 0, bytes: 10 }),
                ..rule("ok/#", Direction::Out, "", "up/")
            },
            rule("a/#/b", Direction::Out, "", ""),
            rule("x", Direction::In, "l+/", ""),
            TopicRuleConfig {
                qos: 3,
                ..rule("q", Direction::Out, "", "")
            },
            rule("", Direction::Out, "only-local", ""),
        ];
        let f = validate(&[b]);
        assert_eq!(
            keys(&f.problems),
            [
                "bridge[0].name",
                "bridge[0].address[0]",
                "bridge[0].address[1]",
                "bridge[0].client_id",
                "bridge[0].keepalive",
                "bridge[0].backoff",
                "bridge[0].max_inflight_bytes",
                "bridge[0].ack_timeout",
                "bridge[0].key",
                "bridge[0].status_topic",
                "bridge[0].journal.max_bytes",
                "bridge[0].topic[0].rate.msgs",
                "bridge[0].topic[0].rate.bytes",
                "bridge[0].topic[1].pattern",
                "bridge[0].topic[2].local_prefix",
                "bridge[0].topic[3].qos",
                "bridge[0].topic[4].pattern",
            ],
            "{:#?}",
            f.problems
        );
    }

    #[test]
    fn a_bad_ca_is_reported_when_the_files_are_otherwise_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = validate(&[bridge(dir.path())]);
        assert_eq!(keys(&f.problems), ["bridge[0]"]);
        assert!(f.problems[0]
            .message
            .contains("TLS client configuration refused"));
    }

    #[test]
    fn an_in_rule_feeding_an_out_rule_is_a_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = bridge(dir.path());
        b.topic = vec![
            rule("cmd/#", Direction::In, "", "site/gw1/"),
            rule("#", Direction::Out, "", "site/gw1/up/"),
            rule("state/#", Direction::Both, "", "site/gw1/"),
        ];
        let f = validate(&[b]);
        let loops: Vec<&Finding> = f
            .problems
            .iter()
            .filter(|p| p.message.starts_with("loop"))
            .collect();
        assert_eq!(
            keys(&loops.into_iter().cloned().collect::<Vec<_>>()),
            ["bridge[0].topic[1]", "bridge[0].topic[1]"]
        );
    }

    #[test]
    fn qos_downgrades_and_v311_echoes_are_warned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = bridge(dir.path());
        b.protocol = Protocol::V311;
        b.topic = vec![
            TopicRuleConfig {
                qos: 0,
                ..rule("sensors/#", Direction::Out, "", "up/")
            },
            rule("cmd/#", Direction::Both, "", "up/"),
        ];
        let f = validate(&[b]);
        let w = keys(&f.warnings);
        assert!(w.contains(&"bridge[0].topic[0].qos"), "{w:?}");
        assert!(w.contains(&"bridge[0].topic[1].direction"), "{w:?}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = validate(&[bridge(dir.path()), bridge(dir.path())]);
        assert!(keys(&f.problems).contains(&"bridge[1].name"));
    }

    #[test]
    fn addresses_parse_with_ipv6_and_ports() {
        assert_eq!(parse_address("h:1").expect("ok"), ("h".to_string(), 1));
        assert_eq!(
            parse_address("[::1]:8883").expect("ok"),
            ("::1".to_string(), 8883)
        );
        assert!(parse_address("::1:8883").is_err());
        assert!(parse_address("h").is_err());
        assert!(parse_address("h:99999").is_err());
        assert!(parse_address(":1").is_err());
    }
}
