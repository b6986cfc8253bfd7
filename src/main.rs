//! The `tollgate` binary: CLI -> load and validate config -> telemetry -> app -> exit
//! code. Everything else lives in the library so tests can run it in-process.

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use tollgate::app::{self, App};
use tollgate::cli::{self, Cli, Command, ConfigArgs, EXIT_CONFIG, EXIT_FAILURE};
use tollgate::config;
use tollgate::telemetry::{self, LogFormat};

/// mimalloc gives freed pages back to the kernel (100 ms after they are freed with the
/// unit's MIMALLOC_PURGE_DELAY=100, at once when a worker goes idle), so RSS falls back
/// after a burst; glibc's malloc keeps them (README, "Memory and the allocator", with the
/// figures).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A worker thread going idle gives back what the allocator holds without using it
/// (`tollgate_sys::allocator::collect`), at most once a second per thread so that a busy
/// broker, whose workers park and wake all the time, hardly pays for it.
///
/// A park within that second skips the collection, and a worker that then sleeps for long
/// (the burst just ended) would keep what it freed: such a park schedules one wake-up a
/// second later (a sleeping task, one at a time for the runtime), whose end also wakes an
/// idle worker, so every worker parks once more after the second and collects.
fn collect_when_idle() {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    const EVERY: Duration = Duration::from_secs(1);
    static WAKE_SCHEDULED: AtomicBool = AtomicBool::new(false);
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < EVERY)
    {
        if !WAKE_SCHEDULED.swap(true, Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async {
                    tokio::time::sleep(EVERY + Duration::from_millis(100)).await;
                    WAKE_SCHEDULED.store(false, Ordering::Relaxed);
                    // Scheduled from a worker, a new task wakes an idle worker to take it.
                    tokio::spawn(async {});
                });
            } else {
                WAKE_SCHEDULED.store(false, Ordering::Relaxed);
            }
        }
        return;
    }
    LAST.set(Some(now));
    tollgate::broker::release_spare_batches();
    tollgate_sys::allocator::collect();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; anything else is a usage error (EX_USAGE).
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let code = match &cli.command {
        Command::Run(args) => run(cli.log, args),
        Command::Check(args) => cli::check(args),
        Command::Pki(cmd) => cli::pki(cmd.clone()),
        Command::Passwd(cmd) => cli::passwd(cmd.clone()),
        Command::Acl { command } => cli::acl(command.clone()),
        Command::Bridge { command } => cli::bridge(command.clone()),
    };
    ExitCode::from(code)
}

fn run(log: Option<LogFormat>, args: &ConfigArgs) -> u8 {
    let loaded = match config::load(&args.source()) {
        Ok(loaded) => loaded,
        Err(e) => {
            for problem in e.problems() {
                eprintln!("{problem}");
            }
            eprintln!("tollgate: not started: the configuration has problems (listed above).");
            return EXIT_CONFIG;
        }
    };
    // Validation has accepted the format; RUST_LOG, when set, wins over [log] level.
    let format = log.unwrap_or_else(|| loaded.config.log.log_format().unwrap_or(LogFormat::Auto));
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => None,
        _ => Some(loaded.config.log.level.as_str()),
    };
    if let Err(e) = telemetry::init(format, filter) {
        eprintln!("tollgate: cannot set up logging: {e}");
        return EXIT_CONFIG;
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %loaded.config.source.label(),
        "Starting tollgate."
    );
    for notice in &loaded.notices {
        info!("{notice}");
    }
    for warning in &loaded.warnings {
        warn!(warning = %warning, "Configuration warning.");
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    builder.on_thread_park(collect_when_idle);
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(reason = %e, "Cannot start the async runtime.");
            return EXIT_FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let app = App::build(loaded).await?;
        app.run(app::shutdown_signal()).await
    });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            for line in e.to_string().lines() {
                error!(problem = %line, "tollgate stopped.");
            }
            e.exit_code()
        }
    }
}
