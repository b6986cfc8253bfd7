//! The bus's way out: the scheduler hands every publish (values, statuses, `$SYS`, write
//! answers) to one publisher task through a bounded queue, so the wire's schedule never
//! waits for a router round trip per message; the publisher keeps their order. It must
//! never drop a message while the bus runs (a full queue makes the scheduler wait).

use std::collections::HashSet;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::write::{answer, ReplyTo, WriteOutcome};
use crate::broker::codec::QoS;
use crate::broker::InternalClient;

/// Messages queued towards the publisher at most.
const QUEUE: usize = 4096;

enum Out {
    /// A value or status of the bus (adapter identity, retained as asked).
    Data {
        topic: String,
        payload: String,
        retain: bool,
    },
    /// The `$SYS` state (broker-side identity, retained).
    Sys { topic: String, payload: String },
    /// A write's answer (result topic, response topic) and its audit line.
    Answer {
        reply: ReplyTo,
        outcome: WriteOutcome,
    },
}

/// The scheduler's handle.
pub(super) struct Outputs {
    tx: mpsc::Sender<Out>,
}

impl Outputs {
    /// The handle, and the publisher task to spawn (ends when the handle is dropped,
    /// after publishing everything queued).
    pub fn new(
        bus: String,
        data: InternalClient,
        sys: Option<InternalClient>,
    ) -> (Outputs, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Outputs { tx }, publisher(bus, rx, data, sys))
    }

    /// Publish `payload` on `topic` (QoS 0) as the adapter.
    pub async fn publish(&self, topic: &str, payload: String, retain: bool) {
        let out = Out::Data {
            topic: topic.to_string(),
            payload,
            retain,
        };
        let _ = self.tx.send(out).await;
    }

    /// Publish the `$SYS` state.
    pub async fn sys(&self, topic: String, payload: String) {
        let _ = self.tx.send(Out::Sys { topic, payload }).await;
    }

    /// Answer and audit a write.
    pub async fn answer(&self, reply: ReplyTo, outcome: WriteOutcome) {
        let _ = self.tx.send(Out::Answer { reply, outcome }).await;
    }
}

async fn publisher(
    bus: String,
    mut rx: mpsc::Receiver<Out>,
    data: InternalClient,
    sys: Option<InternalClient>,
) {
    // Topics whose publish the ACL refused (warned once each; bounded by the points).
    let mut denied: HashSet<String> = HashSet::new();
    while let Some(out) = rx.recv().await {
        match out {
            Out::Data {
                topic,
                payload,
                retain,
            } => {
                if let Err(e) = data.publish(&topic, payload, QoS::AtMostOnce, retain).await {
                    if denied.insert(topic.clone()) {
                        warn!(%bus, %topic, reason = %e, "Modbus value not published (check the ACL grants of the adapter identity).");
                    }
                }
            }
            Out::Sys { topic, payload } => {
                if let Some(sys) = &sys {
                    if let Err(e) = sys.publish(&topic, payload, QoS::AtMostOnce, true).await {
                        debug!(%bus, reason = %e, "Modbus $SYS state not published.");
                    }
                }
            }
            Out::Answer { reply, outcome } => answer(&data, &reply, &outcome).await,
        }
    }
    data.disconnect().await;
    if let Some(sys) = sys {
        sys.disconnect().await;
    }
}
