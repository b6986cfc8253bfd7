//! Raspberry Pi GPIO as topics: one component per `[[gpio.input]]` and
//! `[[gpio.output]]` (identity `adapter:<name>`, ACL-checked like any client), on the
//! [`PinBackend`] seam: rppal on a Pi (feature `gpio`), [`FakePins`] in tests, or the
//! embedder's own (`backend = "external"`). Inputs publish debounced, edge-selected
//! changes retained and count pulses; outputs follow `.../set` commands (with timed
//! pulses) and go to their safe state on shutdown. It must never drive a pin that is
//! not configured as an output, and never leave an output in a commanded state when
//! the gateway stops.
//!
//! Files by role: `config` (the `[gpio]` section and its checks), `backend` (the seam,
//! the fake and the stand-ins), `rppal` (the Pi), `input`, `output` (the pin tasks),
//! `os_config` (the pins the Pi's boot configuration gives to interfaces).
//!
//! A SIGHUP reload restarts only the pins whose settings changed (one component per
//! pin; a restarted output passes through its safe state).

pub mod backend;
pub mod config;
pub mod input;
pub mod os_config;
pub mod output;
#[cfg(feature = "gpio")]
mod rppal;

use std::sync::Arc;

use tracing::debug;

pub use backend::{EdgeEvent, FakePins, PinBackend};
pub use config::GpioConfig;

use crate::acl::Access;
use crate::auth::Identity;
use crate::broker::codec::QoS;
use crate::broker::{InternalClient, InternalOptions};
use crate::component::{self, Component, ComponentContext, Grant, Settings, Stage};

/// The `$SYS` topic of pin `name`'s state.
pub fn sys_topic(name: &str) -> String {
    format!("$SYS/tollgate/gpio/{name}/state")
}

/// A pin task's way out: the adapter's client and the `$SYS` one (a pin's messages are
/// few: published in place, in order).
pub(crate) struct Outlet {
    name: String,
    data: InternalClient,
    sys: Option<InternalClient>,
}

impl Outlet {
    /// Publish `payload` on `topic` (QoS 1) as the adapter.
    pub async fn data(&self, topic: &str, payload: &str, retain: bool) {
        if let Err(e) = self
            .data
            .publish(topic, payload.to_string(), QoS::AtLeastOnce, retain)
            .await
        {
            tracing::warn!(pin = %self.name, %topic, reason = %e, "GPIO state not published (check the ACL grants of the adapter identity).");
        }
    }

    /// Publish the `$SYS` document.
    pub async fn sys(&self, doc: &str) {
        if let Some(sys) = &self.sys {
            if let Err(e) = sys
                .publish(
                    &sys_topic(&self.name),
                    doc.to_string(),
                    QoS::AtMostOnce,
                    true,
                )
                .await
            {
                debug!(pin = %self.name, reason = %e, "GPIO $SYS state not published.");
            }
        }
    }
}

/// What a pin component is, compared on reload.
#[derive(Debug, Clone, PartialEq)]
pub enum PinSettings {
    /// An input, under `prefix`.
    Input {
        prefix: String,
        config: config::InputConfig,
    },
    /// An output, under `prefix`.
    Output {
        prefix: String,
        config: config::OutputConfig,
    },
}

impl PinSettings {
    fn name(&self) -> &str {
        match self {
            PinSettings::Input { config, .. } => &config.name,
            PinSettings::Output { config, .. } => &config.name,
        }
    }

    fn topic(&self) -> String {
        match self {
            PinSettings::Input { prefix, config } => format!("{prefix}/{}", config.name),
            PinSettings::Output { prefix, config } => format!("{prefix}/{}", config.name),
        }
    }
}

/// One pin as a component.
pub struct Gpio {
    component: String,
    settings: PinSettings,
    backend: Arc<dyn PinBackend>,
}

impl Gpio {
    /// One component per configured pin, on `backend`.
    pub fn all(gpio: &GpioConfig, backend: Arc<dyn PinBackend>) -> Vec<Box<dyn Component>> {
        let prefix = &gpio.topic_prefix;
        let inputs = gpio.input.iter().map(|c| PinSettings::Input {
            prefix: prefix.clone(),
            config: c.clone(),
        });
        let outputs = gpio.output.iter().map(|c| PinSettings::Output {
            prefix: prefix.clone(),
            config: c.clone(),
        });
        inputs
            .chain(outputs)
            .map(|settings| {
                Box::new(Gpio {
                    component: format!("adapter:{}", settings.name()),
                    settings,
                    backend: backend.clone(),
                }) as Box<dyn Component>
            })
            .collect()
    }

    /// The gateway's own pins: `backend = "rppal"` (none for `external`).
    pub fn builtin(gpio: &GpioConfig) -> Vec<Box<dyn Component>> {
        if gpio.backend != "rppal" || (gpio.input.is_empty() && gpio.output.is_empty()) {
            return Vec::new();
        }
        Gpio::all(gpio, backend::default_backend())
    }
}

impl Component for Gpio {
    fn name(&self) -> &str {
        &self.component
    }

    fn stage(&self) -> Stage {
        Stage::Adapter
    }

    fn settings(&self) -> &dyn Settings {
        &self.settings
    }

    fn grants(&self) -> Vec<Grant> {
        // Only the $SYS state; state topics and set commands are the ACL's decision.
        vec![Grant {
            identity: component::sys_identity("gpio", self.settings.name()),
            access: Access::Write,
            filter: sys_topic(self.settings.name()),
        }]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let settings = self.settings.clone();
        let backend = self.backend.clone();
        ctx.tracker.spawn(async move {
            let name = settings.name().to_string();
            let identity = Identity::internal(&format!("adapter:{name}"));
            let data = match ctx.broker.connect_internal(InternalOptions::new(identity.clone())).await {
                Ok(c) => c,
                Err(reason) => {
                    tracing::warn!(pin = %name, %reason, "GPIO adapter not started: no in-process connection.");
                    return;
                }
            };
            let sys = ctx.broker.connect_internal(InternalOptions::new(Identity::internal(&component::sys_identity("gpio", &name)))).await.ok();
            let out = Outlet { name: name.clone(), data, sys };
            let topic = settings.topic();
            match settings {
                PinSettings::Input { config, .. } => {
                    let count = if config.count {
                        input::restored_count(&*ctx.broker, &identity, &format!("{topic}/count"), &name).await
                    } else {
                        0
                    };
                    input::run(config, topic, count, backend, out, ctx.health.clone(), ctx.shutdown.clone()).await;
                }
                PinSettings::Output { config, .. } => {
                    let commands = Identity { client_id: format!("adapter:{name}:set"), ..identity };
                    let commands = ctx.broker.connect_internal(InternalOptions::new(commands)).await.ok();
                    output::run(config, topic, backend, out, commands, ctx.health.clone(), ctx.shutdown.clone()).await;
                }
            }
        });
        Ok(())
    }
}
