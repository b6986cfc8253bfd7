//! The line's way out: frames, status documents, `$SYS` state and send answers go to
//! one publisher task through a bounded queue, in order. Frames are offered without
//! waiting (a full queue is an overrun the line counts: the port must keep being read)
//! unless the line has flow control (then the line waits and the device is paused);
//! statuses and answers wait for room. It must never publish a frame as anyone but the
//! adapter identity, so the ACL decides where frames may go.

use std::collections::HashSet;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::send::{answer, ReplyTo, SendOutcome};
use crate::broker::codec::QoS;
use crate::broker::InternalClient;

/// Messages queued towards the publisher at most (a burst of this many frames is
/// absorbed; more before the broker took them are overruns).
pub const QUEUE: usize = 8192;

enum Out {
    Frame {
        topic: String,
        payload: String,
    },
    Status {
        topic: String,
        payload: String,
    },
    Sys {
        topic: String,
        payload: String,
    },
    Answer {
        reply: ReplyTo,
        outcome: SendOutcome,
    },
}

/// The line's handle.
pub(super) struct Outputs {
    tx: mpsc::Sender<Out>,
}

/// How frames are published.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameOptions {
    pub qos: QoS,
    pub retain: bool,
}

impl Outputs {
    /// The handle, and the publisher task to spawn (ends when the handle is dropped,
    /// after publishing everything queued).
    pub fn new(
        line: String,
        options: FrameOptions,
        data: InternalClient,
        sys: Option<InternalClient>,
    ) -> (Outputs, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Outputs { tx }, publisher(line, options, rx, data, sys))
    }

    /// Offer a frame; false when the queue is full (an overrun).
    pub fn frame(&self, topic: String, payload: String) -> bool {
        self.tx.try_send(Out::Frame { topic, payload }).is_ok()
    }

    /// Queue a frame, waiting for room (lines with flow control); false once stopping.
    pub async fn frame_waiting(&self, topic: String, payload: String) -> bool {
        self.tx.send(Out::Frame { topic, payload }).await.is_ok()
    }

    /// Publish the status document (retained, adapter identity).
    pub async fn status(&self, topic: String, payload: String) {
        let _ = self.tx.send(Out::Status { topic, payload }).await;
    }

    /// Publish the `$SYS` state.
    pub async fn sys(&self, topic: String, payload: String) {
        let _ = self.tx.send(Out::Sys { topic, payload }).await;
    }

    /// Answer and audit a send.
    pub async fn answer(&self, reply: ReplyTo, outcome: SendOutcome) {
        let _ = self.tx.send(Out::Answer { reply, outcome }).await;
    }
}

async fn publisher(
    line: String,
    options: FrameOptions,
    mut rx: mpsc::Receiver<Out>,
    data: InternalClient,
    sys: Option<InternalClient>,
) {
    // Topics the ACL refused (warned once each; bounded: one template's topics).
    let mut denied: HashSet<String> = HashSet::new();
    while let Some(out) = rx.recv().await {
        let (topic, payload, qos, retain) = match out {
            Out::Frame { topic, payload } => (topic, payload, options.qos, options.retain),
            Out::Status { topic, payload } => (topic, payload, QoS::AtLeastOnce, true),
            Out::Sys { topic, payload } => {
                if let Some(sys) = &sys {
                    if let Err(e) = sys.publish(&topic, payload, QoS::AtMostOnce, true).await {
                        debug!(%line, reason = %e, "Serial $SYS state not published.");
                    }
                }
                continue;
            }
            Out::Answer { reply, outcome } => {
                answer(&data, &reply, &outcome).await;
                continue;
            }
        };
        if let Err(e) = data.publish(&topic, payload, qos, retain).await {
            if denied.len() < 1024 && denied.insert(topic.clone()) {
                warn!(%line, %topic, reason = %e, "Serial frame not published (check the ACL grants of the adapter identity).");
            }
        }
    }
    data.disconnect().await;
    if let Some(sys) = sys {
        sys.disconnect().await;
    }
}
