//! Command line: `tollgate run`, `tollgate check`, `tollgate --version`. Adding a
//! subcommand is one `Command` variant plus one match arm in `main.rs`. It parses
//! arguments and prints check results; it must never start the gateway itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigSource};
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
    let problems = crate::app::preflight(&loaded.config);
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("{problem}");
        }
        return EXIT_CONFIG;
    }
    for warning in &loaded.warnings {
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
