//! The cloud bridge (`[[bridge]]`): forwards local topics to an upstream broker over
//! mutual TLS and carries messages back in, as one component per bridge on the seam
//! of `crate::component`.
//!
//! - `config`: the `[[bridge]]` schema and its validation (key paths, warnings).
//! - `rules`: mosquitto's `topic pattern dir qos local-prefix remote-prefix` mapping.
//! - `outbox`: the store-and-forward seam (`Outbox`) and its in-memory implementation.
//! - `journal_outbox`: the outbox on the disk journal, in
//!   `<broker.data_dir>/bridge/<name>/` (the default: survives restarts and power cuts).
//! - `backoff`: jittered reconnect delays.
//! - `uplink`: rumqttc (3.1.1 or 5) over tollgate's rustls client configuration.
//! - `state`: `$SYS/tollgate/bridge/<name>/state`, counters, health.
//! - `run`: the intake and uplink tasks.
//! - `explain`: `tollgate bridge test`, the offline answer to "would this topic be
//!   forwarded, where to, and which ACL line decides".
//!
//! Authorization both ways (design decision 11, issue 9): the bridge has no built-in
//! read or write grant. A message leaves only if the ACL lets `bridge:<name>` read it
//! and an `out` rule covers it; a message coming in is published as `bridge:<name>`
//! and must be allowed by the ACL like any client's. Operators grant it with ordinary
//! ACL lines (`user bridge:cloud`, `topic read sensors/#`, `topic write cmd/#`);
//! without any ACL configured everything is allowed, as for every client. Its only
//! built-in grant is for its state publisher `tollgate:bridge:<name>` to write
//! `$SYS/tollgate/bridge/<name>/#`. It must never publish upstream what the ACL does
//! not let it read, and never acknowledge a local message before the outbox stored it.

pub mod backoff;
pub mod config;
pub mod explain;
pub mod journal_outbox;
pub mod outbox;
mod pacer;
mod persist;
mod props;
pub mod rules;
mod run;
mod session;
pub mod state;
pub mod uplink;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::BridgeConfig;
use journal_outbox::JournalOutbox;
use outbox::{MemoryOutbox, Outbox};
use state::{LinkState, StatusBoard};

use crate::component::{Component, ComponentContext, Grant, Health, Settings, Stage};

/// One `[[bridge]]` as a component named `bridge:<name>`.
#[derive(Debug)]
pub struct Bridge {
    component_name: String,
    config: Arc<BridgeConfig>,
    data_dir: PathBuf,
}

impl Bridge {
    /// The component for `config`, journaling in `<data_dir>/bridge/<name>/` (nothing
    /// happens before `start`).
    pub fn new(config: BridgeConfig, data_dir: &Path) -> Self {
        Bridge {
            component_name: config.identity(),
            config: Arc::new(config),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The components of every `[[bridge]]`, in file order (`data_dir`: `[broker]`'s).
    pub fn all(bridges: &[BridgeConfig], data_dir: &Path) -> Vec<Box<dyn Component>> {
        bridges
            .iter()
            .map(|b| Box::new(Bridge::new(b.clone(), data_dir)) as Box<dyn Component>)
            .collect()
    }
}

/// Open the bridge's journal and log what it recovered and what was lost; also returns
/// the last recovered record (those up to it may have been sent before the restart). A
/// journal still held (by the previous instance of this bridge draining after a reload,
/// or by another process) is retried every half second until `shutdown`, logged once.
async fn open_journal(
    config: &BridgeConfig,
    data_dir: &Path,
    board: &StatusBoard,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(JournalOutbox, Option<outbox::Seq>), String> {
    let dir = journal_outbox::journal_dir(data_dir, &config.name);
    let mut logged = false;
    let (outbox, recovery) = loop {
        match JournalOutbox::open(
            &dir,
            &config.name,
            config.journal.max_bytes,
            config.journal.overflow,
        )
        .await
        {
            Ok(opened) => break opened,
            Err(e @ crate::journal::JournalError::Locked { .. }) => {
                if !logged {
                    warn!(bridge = %config.name, reason = %e, "Bridge journal in use; retrying until it is free.");
                    logged = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e.to_string()),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let pending = recovery.pending.len();
    let bytes: u64 = recovery.pending.iter().map(|p| u64::from(p.len)).sum();
    let oldest_age_s = recovery
        .pending
        .first()
        .and_then(|p| SystemTime::now().duration_since(p.appended_at).ok())
        .map_or(0, |d| d.as_secs());
    info!(bridge = %config.name, dir = %dir.display(), pending, bytes, oldest_age_s, "Bridge journal opened; pending messages are sent upstream first, in order.");
    let lost = &recovery.lost;
    board
        .counters
        .recovered_at_open
        .store(pending as u64, std::sync::atomic::Ordering::Relaxed);
    board
        .counters
        .lost_at_open
        .store(lost.records, std::sync::atomic::Ordering::Relaxed);
    if lost.records > 0 || lost.bytes > 0 {
        for s in &lost.segments {
            warn!(bridge = %config.name, segment = %s.path.display(), valid_len = s.valid_len, bytes = s.bytes, records = s.records, damage = s.damage, "Bridge journal: damaged segment; its tail was dropped.");
        }
        warn!(bridge = %config.name, records = lost.records, bytes = lost.bytes, "Bridge journal: records lost to damage at open (counted as lost_at_open).");
    }
    Ok((outbox, recovery.pending.last().map(|p| p.seq)))
}

impl Component for Bridge {
    fn name(&self) -> &str {
        &self.component_name
    }

    fn stage(&self) -> Stage {
        Stage::Bridge
    }

    fn settings(&self) -> &dyn Settings {
        self.config.as_ref()
    }

    fn grants(&self) -> Vec<Grant> {
        // Only the state publisher; reading and writing data is the ACL's decision.
        vec![Grant::sys_state("bridge", &self.config.name)]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let config = self.config.clone();
        // Shown until the journal is open (and for a disabled bridge): empty.
        let placeholder: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
            config.journal.max_bytes,
            config.journal.overflow,
        ));
        let board = Arc::new(StatusBoard::new(
            &config.name,
            ctx.health.clone(),
            placeholder,
        ));
        ctx.tracker.spawn(
            board
                .clone()
                .publish_loop(ctx.broker.clone(), ctx.shutdown.clone()),
        );
        if !config.enabled {
            board.set(LinkState::Disabled, None, None);
            return Ok(());
        }
        let tls = match uplink::tls_config(&config) {
            Ok(tls) => tls,
            Err(e) => {
                ctx.health.set(Health::Failed(e.clone()));
                board.set(LinkState::Disabled, None, Some(e.clone()));
                return Err(format!("bridge {}: {e}", config.name));
            }
        };
        let tracker = ctx.tracker.clone();
        let data_dir = self.data_dir.clone();
        // The listeners accept once the out rules are subscribed (nothing is missed).
        let attaching = ctx.readiness.hold();
        ctx.tracker.spawn(async move {
            // Subscribe first: from then on local deliveries wait in the bridge's durable
            // session (their PUBACKs held back) while the journal recovers.
            let rules: Arc<[rules::Rule]> = config.rules().into();
            let client = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                c = run::attach(&config, &rules, &board, &ctx.broker) => c,
            };
            drop(attaching);
            let client = match client {
                Ok(client) => client,
                Err(reason) => {
                    warn!(bridge = %config.name, %reason, "Bridge cannot attach to the broker; it does not run.");
                    ctx.health.set(Health::Failed(reason));
                    return;
                }
            };
            let (journal, recovered_up_to) = match open_journal(&config, &data_dir, &board, &ctx.shutdown).await {
                Ok(j) => j,
                Err(reason) => {
                    warn!(bridge = %config.name, %reason, "Bridge journal cannot be opened; the bridge does not run.");
                    ctx.health.set(Health::Failed(reason.clone()));
                    board.set(LinkState::Disabled, None, Some(reason));
                    client.disconnect().await;
                    return;
                }
            };
            let outbox: Arc<dyn Outbox> = Arc::new(journal.clone());
            board.set_outbox(outbox.clone());
            // Counters of earlier runs, then saved periodically and at the end.
            let dir = journal_outbox::journal_dir(&data_dir, &config.name);
            let loaded = {
                let (dir, name) = (dir.clone(), config.name.clone());
                tokio::task::spawn_blocking(move || persist::load(&dir, &name)).await
            };
            if let Ok(Some(saved)) = loaded {
                board.counters.restore(&saved);
            }
            let stop_saving = CancellationToken::new();
            let saver = tracker.spawn(persist::save_loop(
                board.clone(),
                dir.clone(),
                config.name.clone(),
                stop_saving.clone(),
            ));
            let shared = Arc::new(run::Shared {
                rules,
                config: config.clone(),
                outbox,
                board: board.clone(),
                shutdown: ctx.shutdown.clone(),
                appended: Notify::new(),
                durable: true,
                recovered_up_to,
                window: Arc::new(tokio::sync::Semaphore::new(run::INTAKE_WINDOW)),
                stalled: Default::default(),
                rates: pacer::RuleRates::new(&config.topic),
            });
            run::run(shared, client, tls, tracker).await;
            stop_saving.cancel();
            let _ = saver.await;
            persist::save_now(&board, &dir, &config.name).await;
            if let Err(e) = journal.close().await {
                warn!(reason = %e, "Bridge journal not closed cleanly (acknowledgements may come back as duplicates).");
            }
        });
        Ok(())
    }
}
