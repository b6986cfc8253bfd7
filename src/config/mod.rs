//! The configuration file: serde types for every section, loading with the `config`
//! crate (defaults < file < `TOLLGATE_*` environment), path resolution and
//! validation that collects every problem with its key path before reporting.
//! It must never start anything, bind sockets or create files: `app` does that from
//! a `Config` this module has accepted.

mod load;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;

use crate::app::listener::TcpKeepalive;
use crate::broker::{KeepAlivePolicy, QueueOverflow};
use crate::tls::{ClientCertMode, IdentitySource, ServerTlsSettings, TlsVersion};

pub use load::{load, load_with_env, ConfigSource, LoadedConfig, DEFAULT_CONFIG_TOML};

/// The whole gateway configuration, after loading, path resolution and validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[broker]`: limits and tunables of the broker core.
    pub broker: BrokerSettings,
    /// `[[listener]]`: sockets tollgate accepts clients on, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[auth]`: password authentication.
    pub auth: AuthConfig,
    /// `[acl]`: authorization rules.
    pub acl: AclConfig,
    /// `[shutdown]`: how SIGTERM drains.
    pub shutdown: ShutdownConfig,
    /// `[log]`: log level and format.
    pub log: LogConfig,
    /// `[[bridge]]`: upstream brokers, in file order (`crate::bridge` owns the type).
    pub bridges: Vec<crate::bridge::BridgeConfig>,
    /// `[[modbus]]`: Modbus buses, in file order (`crate::modbus` owns the type).
    pub modbus: Vec<crate::modbus::ModbusConfig>,
    /// `[[serial]]`: serial line devices, in file order (`crate::serial` owns the type).
    pub serial: Vec<crate::serial::SerialConfig>,
    /// `[gpio]`: Raspberry Pi pins (`crate::gpio` owns the type).
    pub gpio: crate::gpio::GpioConfig,
    /// `[metrics]`: the Prometheus endpoint (`crate::edge::metrics` owns the type).
    pub metrics: crate::edge::metrics::MetricsConfig,
    /// Where the configuration came from (file path or the embedded default).
    pub source: ConfigSource,
}

/// `[broker]`: the type the broker core owns.
pub use crate::broker::BrokerSettings;
/// Default state directory, also the signal for the unprivileged fallback.
pub use crate::broker::DEFAULT_DATA_DIR;

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain MQTT over TCP (loopback unless `allow_non_loopback = true`).
    Tcp,
    /// MQTT over TLS 1.2/1.3.
    Tls,
    /// MQTT over WebSocket (plain; loopback unless `allow_non_loopback = true`).
    Ws,
    /// MQTT over WebSocket over TLS 1.2/1.3.
    Wss,
}

impl Transport {
    /// Whether the socket carries TLS (`tls`, `wss`): certificates, client certificates.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether MQTT travels in WebSocket frames (`ws`, `wss`): path, origins, subprotocol.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        })
    }
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Position in the file's `[[listener]]` list (for key paths in messages).
    #[serde(skip)]
    pub index: usize,
    /// Unique name, used in identities, logs and audit events.
    pub name: String,
    /// Socket address to bind, e.g. `"0.0.0.0:8883"`.
    pub bind: String,
    /// `tcp`, `tls`, `ws` (MQTT over WebSocket) or `wss` (over WebSocket over TLS).
    #[serde(deserialize_with = "by_name")]
    pub transport: Transport,
    /// `ws`/`wss` only: the HTTP path of the WebSocket upgrade (default `/mqtt`).
    #[serde(default)]
    pub path: Option<String>,
    /// `ws`/`wss` only: browser origins admitted (exact `scheme://host[:port]`); empty =
    /// only clients that send no `Origin` header (non-browser clients).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Admit clients without credentials (with the anonymous ACL rules only).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Permit a plain `tcp` or `ws` listener on a non-loopback address.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Accept CONNECT username/password on this listener.
    #[serde(default = "default_true")]
    pub password_auth: bool,
    /// Accept a JWT (`[auth.jwt]`) as the CONNECT password. Order: a client certificate
    /// decides first; then a JWS-shaped password is a token; any other password is
    /// checked against the password file (`password_auth`). Also enables the MQTT 5
    /// Authentication Method `jwt` (token in the Authentication Data, re-authentication
    /// with AUTH).
    #[serde(default)]
    pub jwt_auth: bool,
    /// Server certificate chain (PEM); absent on a TLS listener = development PKI.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM: PKCS#8, SEC1 or RSA).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// TLS versions offered: `"1.2"`, `"1.3"`.
    #[serde(default = "default_tls_versions")]
    pub tls_versions: Vec<String>,
    /// CA that signs client certificates; enables client certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `off`, `optional` or `required`; defaults to `required` with `client_ca`, else `off`.
    #[serde(default, deserialize_with = "optional_by_name")]
    pub client_certs: Option<ClientCertMode>,
    /// Certificate field that becomes the username.
    #[serde(default = "default_identity", deserialize_with = "by_name")]
    pub identity: IdentitySource,
    /// Certificate revocation list (PEM or DER) for client certificates.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Kernel keepalive probes on every accepted socket, so a peer that vanished
    /// without a FIN (power cut, NAT timeout) is closed even with MQTT keep alive 0.
    #[serde(default)]
    pub tcp_keepalive: TcpKeepaliveConfig,
    /// Smallest MQTT keep alive accepted on this listener, in seconds (0: no minimum).
    #[serde(default)]
    pub min_keepalive: u16,
    /// Whether a CONNECT with keep alive 0 ("never check") is accepted as it is.
    #[serde(default = "default_true")]
    pub allow_zero_keepalive: bool,
    /// What a full session queue of a client on this listener does with the next
    /// QoS 1/2 message: `drop-oldest`, `drop-new` or `block-publishers`.
    #[serde(default, deserialize_with = "by_name")]
    pub queue_overflow: QueueOverflow,
    /// Connection attempts per source address (token bucket, before TLS); absent: off.
    #[serde(default)]
    pub connect_rate: Option<crate::edge::rate::ConnectRate>,
    /// PUBLISH messages and bytes per second per client; absent: off.
    #[serde(default)]
    pub publish_rate: Option<crate::edge::rate::PublishRate>,
    /// Highest QoS accepted for PUBLISH and wills and granted to subscriptions (0, 1, 2).
    #[serde(default = "default_max_qos")]
    pub max_qos: u8,
}

fn default_max_qos() -> u8 {
    2
}

/// `[[listener]] tcp_keepalive = { enabled, idle, interval, count }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepaliveConfig {
    /// Turn the probes off (then a half-open socket is only noticed by MQTT keep alive).
    pub enabled: bool,
    /// Silence on the connection before the first probe.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle: Duration,
    /// Time between unanswered probes.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Unanswered probes after which the kernel closes the connection.
    pub count: u32,
}

impl Default for TcpKeepaliveConfig {
    /// The listener's own defaults, so the two can never drift apart.
    fn default() -> Self {
        let d = TcpKeepalive::default();
        TcpKeepaliveConfig {
            enabled: true,
            idle: d.idle,
            interval: d.interval,
            count: d.count,
        }
    }
}

/// Deserialize a unit-variant enum from its name through a plain string, so a wrong
/// name gets serde's "unknown variant `x`, expected one of ..." message whatever the
/// source format (the `config` crate's own enum errors do not list the choices).
pub(crate) fn by_name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let name = String::deserialize(deserializer)?;
    T::deserialize(serde::de::value::StringDeserializer::<
        serde::de::value::Error,
    >::new(name))
    .map_err(serde::de::Error::custom)
}

fn optional_by_name<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    by_name(deserializer).map(Some)
}

/// The WebSocket path MQTT clients use by default (MQTT.js, Paho, mosquitto).
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

fn default_true() -> bool {
    true
}

fn default_tls_versions() -> Vec<String> {
    vec!["1.2".to_string(), "1.3".to_string()]
}

fn default_identity() -> IdentitySource {
    IdentitySource::Cn
}

impl ListenerConfig {
    /// The bind address; validation has already rejected unparsable ones.
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        self.bind.parse().map_err(|_| {
            format!(
                "{:?} is not a socket address (write e.g. \"0.0.0.0:8883\" or \"[::]:8883\")",
                self.bind
            )
        })
    }

    /// Effective client certificate mode.
    pub fn client_cert_mode(&self) -> ClientCertMode {
        match (self.client_certs, &self.client_ca) {
            (Some(mode), _) => mode,
            (None, Some(_)) => ClientCertMode::Required,
            (None, None) => ClientCertMode::Off,
        }
    }

    /// Whether this TLS listener has no `cert`/`key` and so uses the development PKI.
    pub fn uses_dev_pki(&self) -> bool {
        self.transport.is_tls() && self.cert.is_none() && self.key.is_none()
    }

    /// Parsed `tls_versions`.
    pub fn tls_version_list(&self) -> Result<Vec<TlsVersion>, String> {
        self.tls_versions
            .iter()
            .map(|v| match v.as_str() {
                "1.2" => Ok(TlsVersion::V1_2),
                "1.3" => Ok(TlsVersion::V1_3),
                other => Err(format!(
                    "{other:?} is not a supported TLS version (only \"1.2\" and \"1.3\"; older versions are insecure)"
                )),
            })
            .collect()
    }

    /// The WebSocket upgrade path (`path`, default `/mqtt`).
    pub fn websocket_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WEBSOCKET_PATH)
    }

    /// Keepalive probes for accepted sockets; `None` when turned off.
    pub fn tcp_keepalive_settings(&self) -> Option<TcpKeepalive> {
        let k = &self.tcp_keepalive;
        k.enabled.then_some(TcpKeepalive {
            idle: k.idle,
            interval: k.interval,
            count: k.count,
        })
    }

    /// `max_qos` as the broker checks it: `None` for 2 (nothing to check).
    pub fn max_qos_limit(&self) -> Option<crate::broker::codec::QoS> {
        use crate::broker::codec::QoS;
        match self.max_qos {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            _ => None,
        }
    }

    /// What this listener demands of the MQTT keep alive in CONNECT.
    pub fn keep_alive_policy(&self) -> KeepAlivePolicy {
        KeepAlivePolicy {
            allow_zero: self.allow_zero_keepalive,
            min: self.min_keepalive,
        }
    }

    /// TLS settings for `tls::build_server_config`, given the certificate and key to use.
    pub fn tls_settings(&self, cert: &Path, key: &Path) -> Result<ServerTlsSettings, String> {
        Ok(ServerTlsSettings {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            versions: self.tls_version_list()?,
            client_ca: self.client_ca.clone(),
            client_certs: self.client_cert_mode(),
            identity: self.identity,
            crl: self.crl.clone(),
        })
    }
}

/// `[auth]`: the type the authenticator owns.
pub use crate::auth::AuthConfig;

/// `[acl]`: the same type the ACL module loads (one definition of inline rules).
pub use crate::acl::{AclConfig, InlineRule};

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time connections get to finish after SIGTERM before tollgate exits anyway.
    #[serde(deserialize_with = "duration::deserialize")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(10),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive, e.g. `"info"` or `"info,tollgate::broker=debug"`.
    pub level: String,
    /// `auto`, `journald`, `json` or `text`.
    pub format: String,
    /// `[log.rate_limit]`: how many lines clients can cause (denials, refusals, violations).
    pub rate_limit: crate::telemetry::limit::LogLimitSettings,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: "auto".to_string(),
            rate_limit: Default::default(),
        }
    }
}

impl LogConfig {
    /// Parsed `format`.
    pub fn log_format(&self) -> Result<crate::telemetry::LogFormat, String> {
        <crate::telemetry::LogFormat as clap::ValueEnum>::from_str(&self.format, true).map_err(
            |_| {
                format!(
                    "{:?} is not a log format (use auto, journald, json or text)",
                    self.format
                )
            },
        )
    }
}

/// One problem found in a configuration: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Config file path, or `<embedded default>`.
    pub file: String,
    /// Key path such as `listener[1].bind`; empty for file-level problems.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Why a configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the configuration file: {source} (check the path given with -c)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems; every one is listed.
    #[error("{}", ConfigError::join(.0))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    fn join(problems: &[ConfigProblem]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every problem, one per line item (a read failure is one problem).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}
