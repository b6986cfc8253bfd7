//! Telemetry: owns the process-wide `tracing` subscriber (journald under systemd, JSON for
//! containers, human-readable text on stderr otherwise) and the systemd readiness protocol
//! ([`notify`]). It decides *where* log events go and how they are encoded; it must never decide
//! *what* is logged, never log payloads or secrets itself, and never fail the gateway because a
//! log sink or the notify socket went away after start-up.
//!
//! Audit events (`target: "audit"`: authentication, ACL and certificate decisions) are always kept
//! at `info` unless the filter names `audit` explicitly, and under journald they are written with
//! their own `SYSLOG_IDENTIFIER` ([`AUDIT_SYSLOG_IDENTIFIER`]) so `journalctl -t tollgate-audit`
//! shows the audit trail alone.
//!
//! [`limit`] counts the events clients can cause and rate-limits the lines about them, and
//! its `LogStr` escapes and truncates client-supplied text in every line: no client can
//! forge a log line or fill the disk.

pub mod audit;
pub mod limit;
pub mod notify;

use std::path::Path;

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Target every audit event uses (`info!(target: "audit", ...)`).
pub const AUDIT_TARGET: &str = "audit";
/// `SYSLOG_IDENTIFIER` of ordinary log events under journald (`journalctl -t tollgate`).
pub const SYSLOG_IDENTIFIER: &str = "tollgate";
/// `SYSLOG_IDENTIFIER` of audit events under journald (`journalctl -t tollgate-audit`).
pub const AUDIT_SYSLOG_IDENTIFIER: &str = "tollgate-audit";
/// Filter used when neither the caller nor `RUST_LOG` gives one.
pub const DEFAULT_FILTER: &str = "info";
/// Where journald listens for native-protocol datagrams (fixed by systemd and by tracing-journald).
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Where log events go (`--log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// journald when started by systemd (`JOURNAL_STREAM` names our stderr and the journal
    /// socket exists), otherwise text on stderr.
    #[default]
    Auto,
    /// Native journald protocol with structured fields and priorities.
    Journald,
    /// One JSON object per line on stderr (containers, log shippers).
    Json,
    /// Human-readable lines on stderr.
    Text,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter (`--log-filter` or `RUST_LOG`) does not parse.
    #[error("invalid log filter {filter:?}: {source}; use directives like `info` or `warn,tollgate::broker=debug`")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// What the parser objected to.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// `--log journald` was asked for but the journal socket cannot be used.
    #[error("cannot log to journald at {JOURNALD_SOCKET}: {source}; is systemd-journald running? Use `--log text` otherwise")]
    JournaldUnavailable {
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A global subscriber was already installed (init called twice, or by a test harness).
    #[error("logging was already initialised in this process: {0}")]
    AlreadyInitialised(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber for `format`.
///
/// `filter` uses `EnvFilter` directives (`info`, `warn,tollgate::bridge=debug`); `None` means
/// `RUST_LOG`, then [`DEFAULT_FILTER`]. Audit events stay at `info` unless the filter mentions
/// `audit` itself (`audit=off` silences them, `audit=debug` widens them).
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<(), TelemetryError> {
    let filter = build_filter(filter)?;
    let resolved = match format {
        LogFormat::Auto if started_by_systemd() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    match resolved {
        LogFormat::Journald => match journald_layers() {
            Ok(layers) => tracing_subscriber::registry()
                .with(layers)
                .with(filter)
                .try_init()
                .map_err(TelemetryError::AlreadyInitialised),
            // Auto only picks journald when its socket exists; if it still refuses us, stderr
            // (captured by systemd through JOURNAL_STREAM) is better than no logs at all.
            Err(source) if format == LogFormat::Auto => {
                init_text(filter)?;
                tracing::warn!(reason = %source, socket = JOURNALD_SOCKET, "Journald socket unusable, logging text to stderr instead.");
                Ok(())
            }
            Err(source) => Err(TelemetryError::JournaldUnavailable { source }),
        },
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .map_err(TelemetryError::AlreadyInitialised),
        LogFormat::Text | LogFormat::Auto => init_text(filter),
    }
}

fn init_text(filter: EnvFilter) -> Result<(), TelemetryError> {
    use std::io::IsTerminal;
    // When stderr is the journal's stream, the journal adds its own timestamps: ours would be noise.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if stderr_is_journal() {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer.without_time())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
    };
    result.map_err(TelemetryError::AlreadyInitialised)
}

/// Two journald layers: ordinary events as `tollgate`, audit events as `tollgate-audit`.
///
/// Fields are written without tracing-journald's default `F_` prefix, so `client_id` becomes the
/// journal field `CLIENT_ID` (`journalctl CLIENT_ID=sensor-7`), `identity` `IDENTITY`, and so on.
fn journald_layers() -> std::io::Result<Vec<Box<dyn Layer<Registry> + Send + Sync>>> {
    let main = tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
        .with_filter(filter_fn(|meta| !is_audit_target(meta.target())));
    let audit = tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(AUDIT_SYSLOG_IDENTIFIER.to_owned())
        .with_filter(filter_fn(|meta| is_audit_target(meta.target())));
    Ok(vec![main.boxed(), audit.boxed()])
}

/// `audit` and its sub-targets (`audit::acl`), matching how `EnvFilter` treats `audit=...`.
pub fn is_audit_target(target: &str) -> bool {
    target
        .strip_prefix(AUDIT_TARGET)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Builds the global filter: the caller's directives, `RUST_LOG`, or [`DEFAULT_FILTER`], with
/// `audit=info` appended unless the directives already say something about `audit`.
pub fn build_filter(filter: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let directives = match filter {
        Some(f) => f.to_owned(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned()),
    };
    let with_audit = with_audit_directive(&directives);
    EnvFilter::builder()
        .parse(&with_audit)
        .map_err(|source| TelemetryError::InvalidFilter {
            filter: directives,
            source,
        })
}

fn with_audit_directive(directives: &str) -> String {
    let names_audit = directives
        .split(',')
        .any(|d| d.trim().split(['=', '[']).next() == Some(AUDIT_TARGET));
    if names_audit {
        directives.to_owned()
    } else if directives.trim().is_empty() {
        format!("{DEFAULT_FILTER},{AUDIT_TARGET}=info")
    } else {
        format!("{directives},{AUDIT_TARGET}=info")
    }
}

/// True when systemd connected our stderr to the journal and journald's native socket is there:
/// the condition under which [`LogFormat::Auto`] means journald.
///
/// As systemd documents for `JOURNAL_STREAM`, the variable alone is not enough (it is inherited
/// by every child, e.g. a shell started from a unit): it must name the device and inode of our
/// own stderr.
pub fn started_by_systemd() -> bool {
    stderr_is_journal() && Path::new(JOURNALD_SOCKET).exists()
}

/// True when `JOURNAL_STREAM` names our stderr: systemd reads what we write there.
fn stderr_is_journal() -> bool {
    let stream = std::env::var("JOURNAL_STREAM").ok();
    journal_stream_is(stream.as_deref(), stderr_id())
}

/// `(device, inode)` of file descriptor 2, if it is open.
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value (`<device>:<inode>`) names the file `stderr`.
fn journal_stream_is(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    let named = dev.parse::<u64>().ok().zip(ino.parse::<u64>().ok());
    named.is_some() && named == stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_stays_at_info_when_filter_is_quieter() {
        assert_eq!(with_audit_directive("warn"), "warn,audit=info");
        assert_eq!(
            with_audit_directive("warn,tollgate::broker=debug"),
            "warn,tollgate::broker=debug,audit=info"
        );
    }

    #[test]
    fn explicit_audit_directive_is_respected() {
        assert_eq!(with_audit_directive("info,audit=off"), "info,audit=off");
        assert_eq!(with_audit_directive("audit[acl]=debug"), "audit[acl]=debug");
        // A target that merely starts with "audit" is not the audit target.
        assert_eq!(
            with_audit_directive("auditor=debug"),
            "auditor=debug,audit=info"
        );
    }

    #[test]
    fn audit_sub_targets_are_audit_events() {
        assert!(is_audit_target("audit"));
        assert!(is_audit_target("audit::acl"));
        assert!(!is_audit_target("auditor"));
        assert!(!is_audit_target("tollgate::audit"));
    }

    #[test]
    fn empty_filter_falls_back_to_default() {
        assert_eq!(with_audit_directive(""), "info,audit=info");
    }

    #[test]
    fn rejects_unparseable_filter_with_its_text() {
        let err = build_filter(Some("info,tollgate=loud")).expect_err("bad level must fail");
        let msg = err.to_string();
        assert!(msg.contains("tollgate=loud"), "{msg}");
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        let stderr = Some((64769, 4242));
        assert!(journal_stream_is(Some("64769:4242"), stderr));
        assert!(!journal_stream_is(None, stderr));
        // Inherited from a parent whose stderr went to the journal; ours goes elsewhere.
        assert!(!journal_stream_is(Some("64769:9999"), stderr));
        assert!(!journal_stream_is(Some("64769:4242"), None));
        assert!(!journal_stream_is(Some("garbage"), stderr));
        assert!(!journal_stream_is(Some("1:x"), stderr));
    }
}
