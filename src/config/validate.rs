//! Validation of a deserialized configuration: every rule is checked and every
//! problem collected, each with its key path, so one `tollgate check` run shows the
//! operator everything to fix. It only reads the file system (existence checks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigProblem, ListenerConfig, Transport};
use crate::tls::ClientCertMode;

/// MQTT's largest encodable packet (remaining length 268,435,455 plus header).
const MQTT_MAX_PACKET: u32 = 268_435_455;

struct Report<'a> {
    file: String,
    problems: &'a mut Vec<ConfigProblem>,
    warnings: &'a mut Vec<String>,
}

impl Report<'_> {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, key: impl AsRef<str>, message: impl AsRef<str>) {
        self.warnings.push(format!(
            "{}: {}: {}",
            self.file,
            key.as_ref(),
            message.as_ref()
        ));
    }

    /// Report a number outside `[min, max]`.
    fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        min: T,
        max: T,
        unit: &str,
    ) {
        if value < min || value > max {
            self.error(
                key,
                format!("{value} is out of range: use {min} to {max}{unit}"),
            );
        }
    }

    fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            self.error(
                key,
                format!(
                    "{} is out of range: use {} to {}",
                    crate::duration::format(value),
                    crate::duration::format(min),
                    crate::duration::format(max)
                ),
            );
        }
    }

    /// Report a file that does not exist, is a directory or cannot be read.
    fn readable_file(&mut self, key: &str, path: &Path) {
        match std::fs::File::open(path) {
            Ok(file) => {
                if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                    self.error(
                        key,
                        format!("{} is a directory, not a file", path.display()),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.error(key, format!("{} does not exist", path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => self.error(
                key,
                format!(
                    "{} is not readable by this user (permission denied)",
                    path.display()
                ),
            ),
            Err(e) => self.error(key, format!("{} cannot be read: {e}", path.display())),
        }
    }
}

/// Check everything; push problems (errors) and warnings (accepted but risky).
pub(super) fn validate(
    config: &Config,
    problems: &mut Vec<ConfigProblem>,
    warnings: &mut Vec<String>,
) {
    let mut r = Report {
        file: config.source.label(),
        problems,
        warnings,
    };
    broker(config, &mut r);
    listeners(config, &mut r);
    metrics(config, &mut r);
    auth(config, &mut r);
    acl(config, &mut r);
    let bridges = crate::bridge::config::validate(&config.bridges);
    for p in bridges.problems {
        r.error(p.key, p.message);
    }
    for w in bridges.warnings {
        r.warn(w.key, w.message);
    }
    let p = &config.broker.persistence;
    r.range(
        "persistence.max_bytes",
        p.max_bytes,
        1024 * 1024,
        u64::MAX,
        " bytes",
    );
    if p.sync == crate::broker::SyncSetting::Interval {
        r.duration(
            "persistence.interval",
            p.interval,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
    }
    for p in crate::modbus::config::validate(&config.modbus) {
        r.error(p.key, p.message);
    }
    for p in crate::serial::config::validate(&config.serial, &config.modbus) {
        r.error(p.key, p.message);
    }
    let adapters: Vec<&str> = config
        .modbus
        .iter()
        .map(|b| b.name.as_str())
        .chain(config.serial.iter().map(|l| l.name.as_str()))
        .collect();
    for p in crate::gpio::config::validate(&config.gpio, &adapters) {
        r.error(p.key, p.message);
    }
    r.duration(
        "shutdown.grace_period",
        config.shutdown.grace_period,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        r.error(
            "log.level",
            format!(
                "{:?} is not a log filter ({e}); use e.g. \"info\" or \"info,tollgate::broker=debug\"",
                config.log.level
            ),
        );
    }
    if let Err(e) = config.log.log_format() {
        r.error("log.format", e);
    }
    let limits = &config.log.rate_limit;
    for (key, lines) in [
        ("log.rate_limit.per_connection", limits.per_connection),
        ("log.rate_limit.per_peer", limits.per_peer),
        ("log.rate_limit.per_broker", limits.per_broker),
    ] {
        r.range(key, lines, 0, 1_000_000, " lines");
    }
    r.duration(
        "log.rate_limit.interval",
        limits.interval,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    );
    if limits.per_connection > limits.per_peer || limits.per_peer > limits.per_broker {
        r.warn(
            "log.rate_limit",
            "a narrower scope allows more lines than a wider one (per_connection > per_peer or per_peer > per_broker): the smaller limit is the one that applies",
        );
    }
}

fn broker(config: &Config, r: &mut Report<'_>) {
    let b = &config.broker;
    r.range(
        "broker.max_packet_size",
        b.max_packet_size,
        64,
        MQTT_MAX_PACKET,
        " bytes",
    );
    r.range(
        "broker.max_connections",
        b.max_connections,
        1,
        1_000_000,
        "",
    );
    r.duration(
        "broker.connect_timeout",
        b.connect_timeout,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    r.range(
        "broker.max_keepalive",
        b.max_keepalive,
        1,
        u16::MAX,
        " seconds",
    );
    // broker.max_session_expiry: any value that parses fits (u32 seconds, checked when read).
    r.range(
        "broker.max_offline_messages",
        b.max_offline_messages,
        1,
        10_000_000,
        "",
    );
    r.range(
        "broker.max_offline_bytes",
        b.max_offline_bytes,
        1024,
        // 64 GiB where usize allows it (64-bit); the whole address space on 32-bit.
        usize::try_from(1u64 << 36).unwrap_or(usize::MAX),
        " bytes",
    );
    if b.max_offline_bytes < b.max_packet_size as usize {
        r.warn(
            "broker.max_offline_bytes",
            format!(
                "{} is below max_packet_size ({}): the largest messages can never be queued for an offline session",
                b.max_offline_bytes, b.max_packet_size
            ),
        );
    }
    r.range("broker.receive_maximum", b.receive_maximum, 1, u16::MAX, "");
    r.range("broker.max_inflight", b.max_inflight, 1, u16::MAX, "");
    // 32,768 levels is what a 65,535-byte topic of empty levels can have at most.
    r.range(
        "broker.max_topic_levels",
        b.max_topic_levels,
        1,
        32_768,
        " levels",
    );
    r.range(
        "broker.max_subscriptions_per_client",
        b.max_subscriptions_per_client,
        1,
        1_000_000,
        "",
    );
    r.range(
        "broker.max_retained_messages",
        b.max_retained_messages,
        0,
        100_000_000,
        "",
    );
    r.range(
        "broker.max_retained_bytes",
        b.max_retained_bytes,
        0,
        usize::try_from(1u64 << 36).unwrap_or(usize::MAX),
        " bytes",
    );
    r.range(
        "broker.max_persistent_sessions",
        b.max_persistent_sessions,
        0,
        10_000_000,
        "",
    );
    if !b.sys_interval.is_zero() {
        r.duration(
            "broker.sys_interval",
            b.sys_interval,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
    }
}

/// Two binds collide when they are equal, or share a port and one is the
/// unspecified address of the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        && a.port() != 0
}

fn listeners(config: &Config, r: &mut Report<'_>) {
    if config.listeners.is_empty() {
        r.error(
            "listener",
            "no [[listener]] is configured, so no client could connect; add at least one",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut binds: Vec<(usize, SocketAddr)> = Vec::new();
    for l in &config.listeners {
        let i = l.index;
        let key = |field: &str| format!("listener[{i}].{field}");
        if l.name.is_empty()
            || l.name.len() > 64
            || !l
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            r.error(
                key("name"),
                format!(
                    "{:?} is not a valid listener name: use 1 to 64 letters, digits, '_', '-' or '.'",
                    l.name
                ),
            );
        } else if let Some(first) = names.insert(&l.name, i) {
            r.error(
                key("name"),
                format!(
                    "{:?} is already the name of listener[{first}]; names must be unique",
                    l.name
                ),
            );
        }
        let addr = match l.bind_addr() {
            Ok(addr) => Some(addr),
            Err(e) => {
                r.error(key("bind"), e);
                None
            }
        };
        if let Some(addr) = addr {
            if let Some((j, other)) = binds.iter().find(|(_, b)| overlaps(*b, addr)) {
                r.error(
                    key("bind"),
                    format!("{addr} collides with listener[{j}].bind {other}; use another port or address"),
                );
            }
            binds.push((i, addr));
        }
        keepalive(config, l, r);
        rate_controls(l, r);
        let loopback = addr.map(|a| a.ip().is_loopback()).unwrap_or(true);
        websocket(l, r);
        match l.transport {
            Transport::Tcp | Transport::Ws => {
                for (field, set) in [
                    ("cert", l.cert.is_some()),
                    ("key", l.key.is_some()),
                    ("client_ca", l.client_ca.is_some()),
                    ("client_certs", l.client_certs.is_some()),
                    ("crl", l.crl.is_some()),
                    (
                        "tls_versions",
                        l.tls_versions != super::default_tls_versions(),
                    ),
                ] {
                    if set {
                        r.error(
                            key(field),
                            "only applies to transport = \"tls\" or \"wss\"; remove it or make this a TLS listener",
                        );
                    }
                }
                if !loopback && !l.allow_non_loopback {
                    r.error(
                        key("bind"),
                        format!(
                            "plain {} on the non-loopback address {} would expose unencrypted MQTT; use transport = \"{}\", bind 127.0.0.1, or set allow_non_loopback = true if this network is trusted",
                            l.transport,
                            l.bind,
                            if l.transport == Transport::Ws { "wss" } else { "tls" }
                        ),
                    );
                }
            }
            Transport::Tls | Transport::Wss => {
                if l.allow_non_loopback {
                    r.warn(
                        key("allow_non_loopback"),
                        "only concerns plain tcp and ws listeners; TLS listeners may bind any address",
                    );
                }
                tls_listener(config, l, r)
            }
        }
        if l.allow_anonymous && !loopback {
            r.warn(
                key("allow_anonymous"),
                format!(
                    "listener {:?} on {} admits anonymous clients from the network",
                    l.name, l.bind
                ),
            );
        }
        let cert_auth = l.transport.is_tls() && l.client_cert_mode() != ClientCertMode::Off;
        let password = l.password_auth && config.auth.password_file.is_some()
            || l.jwt_auth && config.auth.jwt.is_some();
        if l.jwt_auth && config.auth.jwt.is_none() {
            r.error(
                key("jwt_auth"),
                format!(
                    "listener {:?} accepts JWTs but [auth.jwt] is not configured; add it with at least `keys`, or jwt_auth = false",
                    l.name
                ),
            );
        }
        if !l.allow_anonymous && !cert_auth && !password {
            r.warn(
                key("name"),
                format!(
                    "listener {:?} admits nobody: no anonymous access, no client certificates and no password file ([auth] password_file)",
                    l.name
                ),
            );
        } else if l.password_auth && config.auth.password_file.is_none() {
            // A warning, not an error: password_auth defaults to true, and a listener that
            // admits certificates or anonymous clients still works; only CONNECTs that
            // carry a username (without a certificate) are refused.
            r.warn(
                key("password_auth"),
                format!(
                    "listener {:?} accepts username/password but [auth] password_file is not set: every CONNECT with a username (and no client certificate) is refused; set password_file, or password_auth = false",
                    l.name
                ),
            );
        }
    }
}

/// `[metrics] bind`: an address, not a listener's, and loopback unless meant otherwise.
fn metrics(config: &Config, r: &mut Report<'_>) {
    let Some(addr) = config.metrics.bind_addr() else {
        return;
    };
    let addr = match addr {
        Ok(addr) => addr,
        Err(e) => return r.error("metrics.bind", e),
    };
    for l in &config.listeners {
        if let Ok(other) = l.bind_addr() {
            if overlaps(addr, other) {
                r.error(
                    "metrics.bind",
                    format!(
                        "{addr} collides with listener[{}].bind {other}; use another port",
                        l.index
                    ),
                );
            }
        }
    }
    if !addr.ip().is_loopback() {
        r.warn(
            "metrics.bind",
            format!("the metrics endpoint on the non-loopback address {addr} shows client, listener and certificate figures to anyone who can reach it, unauthenticated; bind 127.0.0.1 unless a firewall keeps the network out"),
        );
    }
}

/// Most `allowed_origins` entries of one listener.
const ALLOWED_ORIGINS_MAX: usize = 64;

/// `path` and `allowed_origins`: only on ws/wss listeners, and well formed.
fn websocket(l: &ListenerConfig, r: &mut Report<'_>) {
    let i = l.index;
    let key = |field: &str| format!("listener[{i}].{field}");
    if !l.transport.is_websocket() {
        for (field, set) in [
            ("path", l.path.is_some()),
            ("allowed_origins", !l.allowed_origins.is_empty()),
        ] {
            if set {
                r.error(
                    key(field),
                    "only applies to transport = \"ws\" or \"wss\"; remove it or make this a WebSocket listener",
                );
            }
        }
        return;
    }
    if let Some(path) = &l.path {
        if let Err(e) = crate::edge::ws::check_path(path) {
            r.error(key("path"), format!("{path:?} {e}"));
        }
    }
    if l.allowed_origins.len() > ALLOWED_ORIGINS_MAX {
        r.error(
            key("allowed_origins"),
            format!(
                "has {} entries; at most {ALLOWED_ORIGINS_MAX} are allowed",
                l.allowed_origins.len()
            ),
        );
    }
    for (j, origin) in l.allowed_origins.iter().enumerate() {
        if let Err(e) = crate::edge::ws::check_origin(origin) {
            r.error(
                key(&format!("allowed_origins[{j}]")),
                format!("{origin:?} {e}"),
            );
        }
    }
}

/// `connect_rate`, `publish_rate` and `max_qos` of one listener.
fn rate_controls(l: &ListenerConfig, r: &mut Report<'_>) {
    let i = l.index;
    let key = |field: &str| format!("listener[{i}].{field}");
    if let Some(c) = &l.connect_rate {
        if !(c.per_second.is_finite() && c.per_second > 0.0 && c.per_second <= 1_000_000.0) {
            r.error(
                key("connect_rate.per_second"),
                format!(
                    "{} is not a rate between 0 and 1000000 attempts per second (exclusive of 0); write e.g. 1.0",
                    c.per_second
                ),
            );
        }
        r.range(
            &key("connect_rate.burst"),
            c.burst,
            1,
            1_000_000,
            " attempts",
        );
        r.range(
            &key("connect_rate.max_addresses"),
            c.max_addresses,
            1,
            crate::edge::rate::MAX_ADDRESSES_LIMIT,
            " addresses",
        );
    }
    if let Some(p) = &l.publish_rate {
        if p.msgs == 0 && p.bytes == 0 {
            r.error(
                key("publish_rate"),
                "limits nothing: set msgs (PUBLISH packets per second) and/or bytes (per second), or remove publish_rate",
            );
        }
    }
    r.range(&key("max_qos"), l.max_qos, 0, 2, "");
}

/// Linux's upper bound for TCP_KEEPIDLE and TCP_KEEPINTVL, in seconds.
const TCP_KEEPALIVE_MAX_SECS: u64 = 32_767;
/// Linux's upper bound for TCP_KEEPCNT.
const TCP_KEEPALIVE_MAX_COUNT: u32 = 127;

/// `tcp_keepalive` (kernel probes) and the MQTT keep alive policy of one listener.
fn keepalive(config: &Config, l: &ListenerConfig, r: &mut Report<'_>) {
    let i = l.index;
    let key = |field: &str| format!("listener[{i}].{field}");
    let k = &l.tcp_keepalive;
    for (field, value) in [("idle", k.idle), ("interval", k.interval)] {
        let field = key(&format!("tcp_keepalive.{field}"));
        if value.subsec_nanos() != 0 {
            r.error(
                field,
                format!(
                    "{} is not a whole number of seconds (the kernel counts keepalive time in seconds); write e.g. \"10s\"",
                    crate::duration::format(value)
                ),
            );
        } else {
            r.duration(
                &field,
                value,
                Duration::from_secs(1),
                Duration::from_secs(TCP_KEEPALIVE_MAX_SECS),
            );
        }
    }
    r.range(
        &key("tcp_keepalive.count"),
        k.count,
        1,
        TCP_KEEPALIVE_MAX_COUNT,
        " probes",
    );
    let max = config.broker.max_keepalive;
    if l.min_keepalive > max {
        r.error(
            key("min_keepalive"),
            format!(
                "{} s is above [broker] max_keepalive ({max} s), so no keep alive could satisfy both; lower min_keepalive or raise max_keepalive",
                l.min_keepalive
            ),
        );
    }
}

fn tls_listener(config: &Config, l: &ListenerConfig, r: &mut Report<'_>) {
    let i = l.index;
    let key = |field: &str| format!("listener[{i}].{field}");
    match (&l.cert, &l.key) {
        (Some(cert), Some(k)) => {
            r.readable_file(&key("cert"), cert);
            r.readable_file(&key("key"), k);
        }
        (Some(cert), None) => {
            r.readable_file(&key("cert"), cert);
            r.error(key("key"), "cert is set but key is missing; set both, or neither to use the development PKI");
        }
        (None, Some(k)) => {
            r.error(key("cert"), "key is set but cert is missing; set both, or neither to use the development PKI");
            r.readable_file(&key("key"), k);
        }
        (None, None) => r.warn(
            key("cert"),
            format!(
                "listener {:?} has no cert/key and uses the development PKI in {}: for development only, clients must trust its CA",
                l.name,
                config.broker.data_dir.join("dev-pki").display()
            ),
        ),
    }
    match l.tls_version_list() {
        Ok(v) if v.is_empty() => r.error(
            key("tls_versions"),
            "is empty; use [\"1.2\", \"1.3\"] or [\"1.3\"]",
        ),
        Ok(_) => {}
        Err(e) => r.error(key("tls_versions"), e),
    }
    match &l.client_ca {
        Some(ca) => r.readable_file(&key("client_ca"), ca),
        None => {
            // On the development PKI (no cert/key) the development CA signs client certificates.
            if !l.uses_dev_pki()
                && matches!(
                    l.client_certs,
                    Some(ClientCertMode::Optional | ClientCertMode::Required)
                )
            {
                r.error(
                    key("client_certs"),
                    "client certificates need client_ca (the CA that signs them), unless the listener uses the development PKI (no cert/key)",
                );
            }
            if l.crl.is_some() {
                r.error(
                    key("crl"),
                    "a CRL needs client_ca (the CA whose certificates it revokes)",
                );
            }
        }
    }
    if let Some(crl) = &l.crl {
        r.readable_file(&key("crl"), crl);
    }
}

fn auth(config: &Config, r: &mut Report<'_>) {
    let a = &config.auth;
    if let Some(path) = &a.password_file {
        r.readable_file("auth.password_file", path);
    }
    r.duration(
        "auth.cache_ttl",
        a.cache_ttl,
        Duration::ZERO,
        Duration::from_secs(86_400),
    );
    r.range("auth.cache_capacity", a.cache_capacity, 0, 10_000_000, "");
    r.duration(
        "auth.throttle_base",
        a.throttle_base,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    r.duration(
        "auth.throttle_max",
        a.throttle_max,
        a.throttle_base,
        Duration::from_secs(3600),
    );
    r.duration(
        "auth.throttle_forget_after",
        a.throttle_forget_after,
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
    );
    r.range(
        "auth.throttle_capacity",
        a.throttle_capacity,
        1,
        100_000_000,
        "",
    );
    r.range("auth.verify_concurrency", a.verify_concurrency, 0, 1024, "");
}

fn acl(config: &Config, r: &mut Report<'_>) {
    if let Some(path) = &config.acl.file {
        r.readable_file("acl.file", path);
    }
    for (i, rule) in config.acl.rule.iter().enumerate() {
        let key = |field: &str| format!("acl.rule[{i}].{field}");
        if rule.user.is_some() && rule.pattern {
            r.error(
                key("pattern"),
                "a rule has either user = \"...\" or pattern = true, not both",
            );
        }
        if rule.user.as_deref().is_some_and(str::is_empty) {
            r.error(
                key("user"),
                "is empty; name the user, or remove it for an anonymous rule",
            );
        }
        if let Err(e) = check_filter(&rule.topic) {
            r.error(key("topic"), e);
        }
    }
}

/// Topic filter syntax: non-empty, no NUL, `#` only as the whole last level, `+` only
/// as a whole level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty; a topic filter needs at least one character".to_string());
    }
    if filter.contains('\0') {
        return Err(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (n, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || n + 1 != levels.len()) {
            return Err(format!(
                "{filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax_follows_mqtt() {
        assert!(check_filter("sensors/+/temp").is_ok());
        assert!(check_filter("#").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("a+/b").is_err());
        assert!(check_filter("").is_err());
    }

    #[test]
    fn wildcard_bind_overlaps_specific_bind_on_same_port() {
        let a: SocketAddr = "0.0.0.0:1883".parse().expect("literal");
        let b: SocketAddr = "127.0.0.1:1883".parse().expect("literal");
        let c: SocketAddr = "127.0.0.1:1884".parse().expect("literal");
        assert!(overlaps(a, b));
        assert!(!overlaps(b, c));
    }
}
