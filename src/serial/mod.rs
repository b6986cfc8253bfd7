//! Serial line adapters: one component per `[[serial]]` port (scales, barcode
//! readers, NMEA GPS, meters printing lines) that frames what the device sends (`line`,
//! `fixed` or `regex`), publishes each frame with a timestamp on its topic template
//! through an in-process client `adapter:<name>`, subject to the ACL like any client,
//! writes allowlisted, rate-limited and audited sends from `<prefix>/<name>/send`, and
//! reopens its port by path when it disappears. It must never let a device size its
//! memory (every buffer and queue is bounded, overruns are counted) and never write
//! a byte that the allowlist did not pass.
//!
//! Files by role: `config` (the `[[serial]]` section and its checks), `framer` (bytes
//! to frames), `line` (the port task: open, read, write, reopen, status), `publish`
//! (the publisher task), `send` (guarded sends and their audit).
//!
//! A SIGHUP reload restarts only the lines whose settings changed (the seam compares
//! each component's settings; unchanged ports stay open).

pub mod config;
pub mod framer;
mod line;
mod publish;
pub mod send;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

pub use config::SerialConfig;
pub use line::hex;

use crate::auth::Identity;
use crate::broker::codec::QoS;
use crate::broker::InternalOptions;
use crate::component::{self, Component, ComponentContext, Grant, Settings, Stage};

/// Sends queued per line at most (more are refused as busy).
const SEND_QUEUE: usize = 16;

/// The `$SYS` topic of line `name`'s state.
pub fn sys_topic(name: &str) -> String {
    format!("$SYS/tollgate/serial/{name}/state")
}

/// One serial line as a component.
pub struct Serial {
    name: String,
    config: SerialConfig,
}

impl Serial {
    /// The component of line `config` (validated).
    pub fn new(config: SerialConfig) -> Self {
        Serial {
            name: config.identity(),
            config,
        }
    }

    /// One component per configured line.
    pub fn all(lines: &[SerialConfig]) -> Vec<Box<dyn Component>> {
        lines
            .iter()
            .map(|l| Box::new(Serial::new(l.clone())) as Box<dyn Component>)
            .collect()
    }
}

impl Component for Serial {
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Adapter
    }

    fn settings(&self) -> &dyn Settings {
        &self.config
    }

    fn grants(&self) -> Vec<Grant> {
        // Only the $SYS state; frame, status and send topics are the ACL's decision.
        vec![Grant::sys_state("serial", &self.config.name)]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let config = self.config.clone();
        let tracker = ctx.tracker.clone();
        ctx.tracker.spawn(async move {
            let identity = Identity::internal(&config.identity());
            let data = match ctx.broker.connect_internal(InternalOptions::new(identity.clone())).await {
                Ok(c) => c,
                Err(reason) => {
                    warn!(line = %config.name, %reason, "Serial adapter not started: no in-process connection.");
                    return;
                }
            };
            let sys = ctx
                .broker
                .connect_internal(InternalOptions::new(Identity::internal(&component::sys_identity("serial", &config.name))))
                .await
                .ok();
            let refused = Arc::new(AtomicU64::new(0));
            let (tx, rx) = mpsc::channel(SEND_QUEUE);
            if let Some(guard) = send::Guard::of(&config) {
                let commands = Identity {
                    client_id: format!("{}:send", config.identity()),
                    ..identity };
                match ctx.broker.connect_internal(InternalOptions::new(commands)).await {
                    Ok(client) => {
                        tracker.spawn(send::receive(client, config.clone(), guard, tx, refused.clone(), ctx.shutdown.clone()));
                    }
                    Err(reason) => warn!(line = %config.name, %reason, "Serial sends disabled: no in-process connection."),
                }
            }
            let options = publish::FrameOptions {
                qos: if config.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
                retain: config.retain,
            };
            let (out, publisher) = publish::Outputs::new(config.name.clone(), options, data, sys);
            tracker.spawn(publisher);
            line::Line::new(config, ctx.health.clone(), out, refused)
                .run(rx, ctx.shutdown.clone())
                .await;
        });
        Ok(())
    }
}
