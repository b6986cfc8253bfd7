//! Modbus adapters: one component per `[[modbus]]` bus (an RTU serial line or a TCP
//! connection) that polls its devices' points and publishes them under
//! `<topic_prefix>/<device>/<point>` through an in-process client `adapter:<name>`,
//! subject to the ACL like any client, and carries authorized writes back to the
//! devices. It must never let one dead device stall the others on its bus, and never
//! write a point that is not configured writable.
//!
//! Files by role: `config` (the `[[modbus]]` section and its checks), `codec` (types,
//! orders, scale), `plan` (requests), `frame` (the wire format), `transport` (port or
//! socket, one exchange), `bus` (the scheduler), `points` (what is published when),
//! `health` (counters and the status document), `outputs` (the publisher task), `write`
//! (guarded writes).

mod bus;
pub mod codec;
pub mod config;
mod config_parse;
mod direction;
pub mod frame;
mod health;
mod outputs;
pub mod plan;
pub mod points;
pub mod transport;
pub mod write;

use tokio::sync::{mpsc, watch};
use tracing::warn;

pub use config::ModbusConfig;

use crate::auth::Identity;
use crate::broker::InternalOptions;
use crate::component::{self, Component, ComponentContext, Grant, Settings, Stage};

/// Writes queued per bus at most (more are refused as busy).
const WRITE_QUEUE: usize = 16;

/// The `$SYS` topic of bus `name`'s health.
pub fn sys_topic(name: &str) -> String {
    format!("$SYS/tollgate/modbus/{name}/state")
}

/// One bus as a component.
pub struct Modbus {
    name: String,
    config: ModbusConfig,
    /// New settings for the running bus (reload in place), numbered: write commands
    /// checked against one generation are not run against another.
    updates: Option<watch::Sender<(u64, ModbusConfig)>>,
}

impl Modbus {
    /// The component of bus `config` (validated).
    pub fn new(config: ModbusConfig) -> Self {
        Modbus {
            name: config.identity(),
            config,
            updates: None,
        }
    }

    /// One component per configured bus.
    pub fn all(buses: &[ModbusConfig]) -> Vec<Box<dyn Component>> {
        buses
            .iter()
            .map(|b| Box::new(Modbus::new(b.clone())) as Box<dyn Component>)
            .collect()
    }
}

impl Component for Modbus {
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
        // Only the $SYS state; data topics and set commands are the ACL's decision.
        vec![Grant::sys_state("modbus", &self.config.name)]
    }

    /// The same wire (transport, port and line, address) and topic prefix: devices,
    /// points and timings change in place, with the port open and counters kept.
    fn can_reload(&self, next: &dyn Settings) -> bool {
        let Some(next) = next.as_any().downcast_ref::<ModbusConfig>() else {
            return false;
        };
        let wire = |c: &ModbusConfig| {
            (
                c.transport,
                c.port.clone(),
                c.baud,
                c.parity,
                c.data_bits,
                c.stop_bits,
                c.rs485,
                c.address.clone(),
                c.topic_prefix.clone(),
            )
        };
        self.updates.is_some() && wire(&self.config) == wire(next)
    }

    fn reload(&mut self, next: Box<dyn Component>) {
        let Some(config) = next.settings().as_any().downcast_ref::<ModbusConfig>() else {
            return;
        };
        self.config = config.clone();
        if let Some(updates) = &self.updates {
            updates.send_modify(|(generation, current)| {
                *generation += 1;
                *current = config.clone();
            });
        }
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let config = self.config.clone();
        let (updates, updated) = watch::channel((0, config.clone()));
        self.updates = Some(updates);
        let tracker = ctx.tracker.clone();
        ctx.tracker.spawn(async move {
            let identity = Identity::internal(&config.identity());
            let data = match ctx.broker.connect_internal(InternalOptions::new(identity.clone())).await {
                Ok(c) => c,
                Err(reason) => {
                    warn!(bus = %config.name, %reason, "Modbus adapter not started: no in-process connection.");
                    return;
                }
            };
            let sys = ctx
                .broker
                .connect_internal(InternalOptions::new(Identity::internal(&component::sys_identity("modbus", &config.name))))
                .await
                .ok();
            let commands = Identity {
                client_id: format!("{}:set", config.identity()),
                ..identity };
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            match ctx.broker.connect_internal(InternalOptions::new(commands)).await {
                Ok(client) => {
                    tracker.spawn(write::receive(
                        client,
                        config.clone(),
                        tx,
                        updated.clone(),
                        ctx.shutdown.clone(),
                    ));
                }
                Err(reason) => warn!(bus = %config.name, %reason, "Modbus writes disabled: no in-process connection."),
            }
            let (out, publisher) = outputs::Outputs::new(config.name.clone(), data, sys);
            tracker.spawn(publisher);
            bus::Bus::new(config, ctx.health.clone(), out)
                .run(rx, updated, ctx.shutdown.clone())
                .await;
        });
        Ok(())
    }
}
