//! The running components of the application (see `crate::component`): starts them
//! before the listeners accept (waiting up to `READY_WAIT` for their readiness holds), reconciles them by name on reload (unchanged ones keep running,
//! changed ones are reloaded or replaced, removed ones drained, new ones started) and
//! drains them stage by stage on shutdown, before the broker stops. It must never leave
//! a stopped component's tasks untracked or start two instances under one name.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::component::{
    Component, ComponentContext, Connector, HealthBoard, Readiness, Stage, READY_WAIT,
};

/// A started component's readiness (see [`Readiness`]).
pub(crate) struct ReadyWait {
    name: String,
    ready: tokio::sync::mpsc::Receiver<()>,
}

/// A started component with what stops it.
struct Running {
    component: Box<dyn Component>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Components asked to stop by a reload.
pub(crate) struct Stopping(Vec<(String, TaskTracker)>);

impl Stopping {
    /// Wait until every one has finished draining (or `deadline`: then it is left to
    /// finish in the background, tracked by `tasks`).
    pub(crate) async fn finished(self, deadline: Instant, tasks: &TaskTracker) {
        for (name, tracker) in self.0 {
            if tokio::time::timeout_at(deadline, tracker.wait())
                .await
                .is_ok()
            {
                info!(component = %name, "Component stopped.");
            } else {
                warn!(component = %name, "Component did not stop within the grace period; the reload goes on without waiting for it.");
                tasks.spawn(async move {
                    tracker.wait().await;
                    info!(component = %name, "Component stopped.");
                });
            }
        }
    }
}

/// What a reload applies after swapping the security state.
pub(crate) struct Pending {
    live: Vec<Box<dyn Component>>,
    start: Vec<Box<dyn Component>>,
}

/// Every running component, in start order.
pub(crate) struct Components {
    running: Vec<Running>,
    broker: Arc<dyn Connector>,
    board: HealthBoard,
}

impl Components {
    pub(crate) fn new(broker: Arc<dyn Connector>, board: HealthBoard) -> Self {
        Components {
            running: Vec::new(),
            broker,
            board,
        }
    }

    /// Start `component`; on failure it is logged, marked failed, and not kept. Returns
    /// its name and what resolves once the readiness holds it took are dropped.
    pub(crate) fn start(&mut self, mut component: Box<dyn Component>) -> ReadyWait {
        let name = component.name().to_string();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let health = self.board.reporter(&name);
        let (readiness, runner_side, ready) = Readiness::new();
        let ctx = ComponentContext {
            broker: self.broker.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            health: health.clone(),
            readiness,
        };
        let started = component.start(ctx);
        drop(runner_side);
        let wait = ReadyWait {
            name: name.clone(),
            ready,
        };
        match started {
            Ok(()) => {
                info!(component = %name, stage = %component.stage(), "Component started.");
                self.running.push(Running {
                    component,
                    shutdown,
                    tracker,
                });
            }
            Err(reason) => {
                shutdown.cancel();
                tracker.close();
                warn!(component = %name, %reason, "Component failed to start; the gateway runs without it.");
                health.set(crate::component::Health::Failed(reason));
            }
        }
        wait
    }

    /// Wait until every component in `waits` is ready (its readiness holds dropped), or
    /// `deadline`: the ones still attaching are named in a warning and the gateway goes
    /// on (they keep attaching in the background).
    pub(crate) async fn ready(waits: Vec<ReadyWait>, deadline: Instant) {
        for mut w in waits {
            if tokio::time::timeout_at(deadline, w.ready.recv())
                .await
                .is_err()
            {
                warn!(component = %w.name, wait_s = READY_WAIT.as_secs(), "Component not ready in time; the gateway serves without waiting for it (messages published before it is attached are not seen by it).");
            }
        }
    }

    /// First half of a reload: match `next` against the running components by name.
    /// Unchanged ones keep running untouched; removed ones, and changed ones that cannot
    /// reload in place, are asked to stop (their grants still hold: await
    /// [`Stopping::finished`] before swapping the security state). What is left to
    /// apply after the swap is returned.
    pub(crate) fn begin_reload(&mut self, next: Vec<Box<dyn Component>>) -> (Stopping, Pending) {
        let mut next: Vec<Option<Box<dyn Component>>> = next.into_iter().map(Some).collect();
        let mut stopping = Stopping(Vec::new());
        let mut pending = Pending {
            live: Vec::new(),
            start: Vec::new(),
        };
        for running in std::mem::take(&mut self.running) {
            let name = running.component.name().to_string();
            let candidate = next
                .iter_mut()
                .find(|n| n.as_ref().is_some_and(|c| c.name() == name))
                .and_then(Option::take);
            match candidate {
                None => {
                    info!(component = %name, "Component removed by the reload; draining it.");
                    stopping.0.push(self.stop(running));
                }
                Some(c) if running.component.settings().same_as(c.settings()) => {
                    self.running.push(running);
                }
                Some(c) if running.component.can_reload(c.settings()) => {
                    pending.live.push(c);
                    self.running.push(running);
                }
                Some(c) => {
                    info!(component = %name, "Component settings changed; draining it before starting the new settings.");
                    stopping.0.push(self.stop(running));
                    pending.start.push(c);
                }
            }
        }
        pending.start.extend(next.into_iter().flatten());
        (stopping, pending)
    }

    /// Second half of a reload, once the new grants are in force: apply live reloads
    /// and start new and replacement components.
    pub(crate) fn finish_reload(&mut self, pending: Pending) {
        for next in pending.live {
            if let Some(running) = self
                .running
                .iter_mut()
                .find(|r| r.component.name() == next.name())
            {
                info!(component = %next.name(), "Component reloaded with its new settings.");
                running.component.reload(next);
            }
        }
        for component in pending.start {
            // A reload does not wait: the gateway is already serving.
            let _ = self.start(component);
        }
    }

    /// Ask one component to stop; returns its name and tracker to await.
    fn stop(&self, running: Running) -> (String, TaskTracker) {
        let name = running.component.name().to_string();
        self.board.remove(&name);
        running.shutdown.cancel();
        running.tracker.close();
        (name, running.tracker)
    }

    /// Drain every component stage by stage (adapters, bridges, services), each stage
    /// finishing before the next is asked to stop, all within `deadline`. Returns the
    /// names of the components still running at the deadline.
    pub(crate) async fn drain(&mut self, deadline: Instant) -> Vec<String> {
        let mut late = Vec::new();
        for stage in Stage::DRAIN_ORDER {
            let (stopping, rest): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|r| r.component.stage() == stage);
            self.running = rest;
            for r in &stopping {
                r.shutdown.cancel();
                r.tracker.close();
            }
            for r in stopping {
                let name = r.component.name().to_string();
                if tokio::time::timeout_at(deadline, r.tracker.wait())
                    .await
                    .is_err()
                {
                    warn!(component = %name, %stage, "Component did not finish draining within the grace period.");
                    late.push(name);
                } else {
                    info!(component = %name, %stage, "Component drained.");
                }
                self.board.remove(r.component.name());
            }
        }
        late
    }
}
