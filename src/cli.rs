//! Command line: `tollgate run`, `tollgate check`, `tollgate pki ...`,
//! `tollgate passwd ...`, `tollgate acl explain ...`, `tollgate bridge test ...`,
//! `tollgate --version`. Adding a
//! subcommand is one `Command` variant plus one match arm in `main.rs`. It parses
//! arguments, runs the offline tools and maps their errors to exit codes (64 for a
//! bad configuration or bad usage, 1 for failures at run time); it must never start
//! the gateway itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::acl::{self, AclCommand};
use crate::auth::{self, PasswdCommand, PasswdError, PasswordFileError};
use crate::bridge::explain::BridgeCommand;
use crate::config::{self, ConfigSource};
use crate::pki::{self, PkiCommand, PkiError};
use crate::telemetry::LogFormat;

/// Exit code for a configuration that cannot be used (linkerd and sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for failures at run time (bind errors, signals, ...).
pub const EXIT_FAILURE: u8 = 1;

/// tollgate: a secure MQTT edge gateway.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output: auto (journald under systemd, text otherwise), journald, json or text.
    /// Overrides `[log] format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (without -c: the built-in default configuration, loopback only,
    /// with a development PKI).
    Run(ConfigArgs),
    /// Validate a configuration and print every problem; exit 64 if there is any.
    Check(ConfigArgs),
    /// Certificate authority, server and device certificates, revocation (no openssl needed).
    Pki(PkiCommand),
    /// Add, change or delete a user in a password file (mosquitto_passwd compatible).
    Passwd(PasswdCommand),
    /// ACL tools: `tollgate acl explain` shows the decision and the rule that made it.
    Acl {
        /// What to do.
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Bridge tools: `tollgate bridge test` shows which bridge and rule would forward a
    /// topic, where to, and the ACL decision, without connecting.
    Bridge {
        /// What to do.
        #[command(subcommand)]
        command: BridgeCommand,
    },
}

/// Which configuration to use.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Without it, the built-in default is used.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration source these arguments name.
    pub fn source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource::File(path.clone()),
            None => ConfigSource::Embedded,
        }
    }
}

/// `tollgate check`: print every problem (one per line, on stderr) and return 64, or
/// print warnings and a one-line summary (stdout) and return 0.
pub fn check(args: &ConfigArgs) -> u8 {
    let source = args.source();
    let loaded = match config::load(&source) {
        Ok(loaded) => loaded,
        Err(e) => {
            for problem in e.problems() {
                eprintln!("{problem}");
            }
            return EXIT_CONFIG;
        }
    };
    let preflight = crate::app::preflight(&loaded.config);
    if !preflight.problems.is_empty() {
        for problem in preflight.problems {
            eprintln!("{problem}");
        }
        return EXIT_CONFIG;
    }
    for warning in loaded.warnings.iter().chain(&preflight.warnings) {
        eprintln!("warning: {warning}");
    }
    let c = &loaded.config;
    let listeners: Vec<String> = c
        .listeners
        .iter()
        .map(|l| format!("{} {} {}", l.name, l.transport, l.bind))
        .collect();
    println!(
        "{}: OK: {} listener{} ({}), max {} connections, data_dir {}",
        source.label(),
        c.listeners.len(),
        if c.listeners.len() == 1 { "" } else { "s" },
        listeners.join(", "),
        c.broker.max_connections,
        c.broker.data_dir.display()
    );
    0
}

/// `tollgate pki ...`: 0, 64 for misuse (existing CA, unknown name, bad name, no CA),
/// 1 for failures (I/O, key generation).
pub fn pki(cmd: PkiCommand) -> u8 {
    match pki::run(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tollgate pki: {e}");
            pki_exit_code(&e)
        }
    }
}

/// Exit code for a PKI error.
pub fn pki_exit_code(e: &PkiError) -> u8 {
    match e {
        PkiError::CaExists { .. }
        | PkiError::NoCa { .. }
        | PkiError::Exists { .. }
        | PkiError::BadName { .. }
        | PkiError::UnknownName { .. }
        | PkiError::Mismatch { .. }
        | PkiError::Index { .. }
        | PkiError::Parse { .. }
        | PkiError::Tls(_) => EXIT_CONFIG,
        PkiError::Io { .. } | PkiError::Rcgen { .. } | PkiError::Rsa(_) => EXIT_FAILURE,
    }
}

/// `tollgate passwd FILE USER [PASSWORD]`: 0, 64 for misuse (missing file, unknown
/// user, invalid name, empty or mismatched password, unparsable file), 1 for I/O.
pub fn passwd(cmd: PasswdCommand) -> u8 {
    match auth::run_passwd(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tollgate passwd: {e}");
            match e {
                PasswdError::File(PasswordFileError::Io { .. })
                | PasswdError::File(PasswordFileError::Hashing(_))
                | PasswdError::Prompt(_) => EXIT_FAILURE,
                _ => EXIT_CONFIG,
            }
        }
    }
}

/// The `[acl]` section of a tollgate config, loaded by the same loader as `tollgate run`
/// (environment overrides, relative paths resolved, whole file validated).
pub fn acl_config_from(path: &std::path::Path) -> Result<Option<acl::AclConfig>, acl::AclError> {
    let loaded = config::load(&ConfigSource::File(path.to_path_buf())).map_err(|e| {
        acl::AclError::Config {
            path: path.to_path_buf(),
            reason: e.problems().join("\n"),
        }
    })?;
    let section = loaded.config.acl;
    Ok(section.is_configured().then_some(section))
}

/// `tollgate acl explain ...`: 0 after printing the decision, 64 when the rules or
/// the configuration cannot be used (every problem is printed). With `-c FILE` the
/// configuration is loaded exactly as `run` loads it (environment overrides, relative
/// paths, validation), so the answer is the one the gateway would give.
pub fn acl(command: AclCommand) -> u8 {
    match acl::run(command, acl_config_from) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tollgate acl: {e}");
            EXIT_CONFIG
        }
    }
}

/// `tollgate bridge test` exit code: not forwarded (no rule, disabled, ACL denies).
pub const EXIT_NOT_FORWARDED: u8 = 1;
/// `tollgate bridge test` exit code: the configuration cannot be used (grep's 2, so a
/// script can tell "not forwarded" from "broken file"; every problem is printed).
pub const EXIT_BRIDGE_CONFIG: u8 = 2;

/// `tollgate bridge test -c FILE [--direction out|in] [--qos N] TOPIC`: prints the
/// answer; 0 when at least one bridge forwards the topic, 1 when none does, 2 when the
/// configuration (or its ACL) cannot be loaded. The file is loaded exactly as `run`
/// loads it (environment overrides, relative paths, validation).
pub fn bridge(command: BridgeCommand) -> u8 {
    let BridgeCommand::Test(args) = command;
    let loaded = match config::load(&ConfigSource::File(args.config.clone())) {
        Ok(loaded) => loaded,
        Err(e) => {
            for problem in e.problems() {
                eprintln!("{problem}");
            }
            return EXIT_BRIDGE_CONFIG;
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let section = &loaded.config.acl;
    let acl = if section.is_configured() {
        match acl::Acl::load(section.file.as_deref(), &section.rule) {
            Ok(acl) => Some(acl),
            Err(e) => {
                eprintln!("tollgate bridge test: {e}");
                return EXIT_BRIDGE_CONFIG;
            }
        }
    } else {
        None
    };
    let report = crate::bridge::explain::test(
        &loaded.config.bridges,
        acl.as_ref(),
        args.direction,
        args.qos,
        &args.topic,
    );
    print!("{report}");
    if report.forwarded() {
        0
    } else {
        EXIT_NOT_FORWARDED
    }
}
