//! The cloud bridge (`[[bridge]]`): forwards local topics to an upstream broker over
//! mutual TLS and carries messages back in, as one component per bridge on the seam
//! of `crate::component`.
//!
//! - `config`: the `[[bridge]]` schema and its validation (key paths, warnings).
//! - `rules`: mosquitto's `topic pattern dir qos local-prefix remote-prefix` mapping.
//! - `outbox`: the store-and-forward seam (`Outbox`), in memory for now.
//! - `backoff`: jittered reconnect delays.
//! - `uplink`: rumqttc (3.1.1 or 5) over tollgate's rustls client configuration.
//! - `state`: `$SYS/tollgate/bridge/<name>/state`, counters, health.
//! - `run`: the intake and uplink tasks.
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
pub mod outbox;
pub mod rules;
mod run;
pub mod state;
pub mod uplink;

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::warn;

pub use config::BridgeConfig;
use outbox::{MemoryOutbox, Outbox};
use state::{LinkState, StatusBoard};

use crate::acl::Access;
use crate::component::{Component, ComponentContext, Grant, Health, Settings, Stage};

/// One `[[bridge]]` as a component named `bridge:<name>`.
#[derive(Debug)]
pub struct Bridge {
    component_name: String,
    config: Arc<BridgeConfig>,
}

impl Bridge {
    /// The component for `config` (nothing happens before `start`).
    pub fn new(config: BridgeConfig) -> Self {
        Bridge {
            component_name: config.identity(),
            config: Arc::new(config),
        }
    }

    /// The components of every `[[bridge]]`, in file order.
    pub fn all(bridges: &[BridgeConfig]) -> Vec<Box<dyn Component>> {
        bridges
            .iter()
            .map(|b| Box::new(Bridge::new(b.clone())) as Box<dyn Component>)
            .collect()
    }
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
        vec![Grant {
            identity: state::state_identity(&self.config.name),
            access: Access::Write,
            filter: format!("$SYS/tollgate/bridge/{}/#", self.config.name),
        }]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let config = self.config.clone();
        let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
            config.journal.max_bytes,
            config.journal.overflow,
        ));
        let board = Arc::new(StatusBoard::new(
            &config.name,
            ctx.health.clone(),
            outbox.clone(),
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
        let shared = Arc::new(run::Shared {
            rules: config.rules().into(),
            config,
            outbox,
            board,
            shutdown: ctx.shutdown.clone(),
            appended: Notify::new(),
        });
        let tracker = ctx.tracker.clone();
        ctx.tracker.spawn(async move {
            let client = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                c = run::attach(&shared, &ctx.broker) => c,
            };
            match client {
                Ok(client) => run::run(shared, client, tls, tracker).await,
                Err(reason) => {
                    warn!(bridge = %shared.config.name, %reason, "Bridge cannot attach to the broker; it does not run.");
                    ctx.health.set(Health::Failed(reason));
                }
            }
        });
        Ok(())
    }
}
