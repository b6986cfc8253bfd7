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

use tokio::sync::mpsc;
use tracing::warn;

pub use config::ModbusConfig;

use crate::acl::Access;
use crate::auth::Identity;
use crate::broker::InternalOptions;
use crate::component::{Component, ComponentContext, Grant, Settings, Stage};

/// Writes queued per bus at most (more are refused as busy).
const WRITE_QUEUE: usize = 16;

/// The `$SYS` topic of bus `name`'s health.
pub fn sys_topic(name: &str) -> String {
    format!("$SYS/tollgate/modbus/{name}/state")
}

/// Identity of the client publishing bus `name`'s `$SYS` state.
pub fn sys_identity(name: &str) -> String {
    format!("tollgate:modbus:{name}")
}

/// One bus as a component.
pub struct Modbus {
    name: String,
    config: ModbusConfig,
}

impl Modbus {
    /// The component of bus `config` (validated).
    pub fn new(config: ModbusConfig) -> Self {
        Modbus {
            name: config.identity(),
            config,
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
        vec![Grant {
            identity: sys_identity(&self.config.name),
            access: Access::Write,
            filter: format!("$SYS/tollgate/modbus/{}/#", self.config.name),
        }]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let config = self.config.clone();
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
                .connect_internal(InternalOptions::new(Identity::internal(&sys_identity(&config.name))))
                .await
                .ok();
            let commands = Identity {
                client_id: format!("{}:set", config.identity()),
                ..identity
            };
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            match ctx.broker.connect_internal(InternalOptions::new(commands)).await {
                Ok(client) => {
                    tracker.spawn(write::receive(client, config.clone(), tx, ctx.shutdown.clone()));
                }
                Err(reason) => warn!(bus = %config.name, %reason, "Modbus writes disabled: no in-process connection."),
            }
            let (out, publisher) = outputs::Outputs::new(config.name.clone(), data, sys);
            tracker.spawn(publisher);
            bus::Bus::new(config, ctx.health.clone(), out)
                .run(rx, ctx.shutdown.clone())
                .await;
        });
        Ok(())
    }
}
