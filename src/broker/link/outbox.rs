//! Router → connection queue: what the router hands one endpoint, in order.
//!
//! It replaces an unbounded tokio mpsc channel, which costs about 1.3 KB per
//! connection before anything is sent (its shared header and a first 32-slot block
//! are allocated with the channel). Here the queue is a single `Vec<Outgoing>` behind
//! a mutex: empty (no allocation) while idle, a batch moves in without a copy when
//! the queue is empty (the common case: the connection is waiting), later batches are
//! appended to it, and the receiver takes everything at once (leaving an empty `Vec`).
//! The receiver therefore sees the items in the order the router sent them, possibly
//! with several of the router's batches merged into one.
//!
//! Single producer (the router's `Link`), single consumer (the endpoint). Unbounded:
//! bounded in practice by the inflight window (QoS 1/2) and the slow-consumer guard
//! (QoS 0), as before.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::{Backlog, Outgoing};

struct Inner {
    /// Items handed over and not taken yet, oldest first.
    queue: Vec<Outgoing>,
    /// The receiver's task, waiting for items.
    waker: Option<Waker>,
    /// The sender was dropped: once `queue` is empty, `recv` returns `None`.
    sender_gone: bool,
    /// The receiver was dropped: `send` refuses (the items are dropped).
    receiver_gone: bool,
}

/// The queue and its accounting, shared by both ends (one allocation).
struct Queue {
    inner: Mutex<Inner>,
    /// Items handed over and not taken yet (the router's slow-consumer guard).
    backlog: Backlog,
}

type Shared = Arc<Queue>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // Nothing panics while holding the lock; a poisoned lock still holds valid data.
    shared
        .inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Router → connection sending end (one per link).
pub(crate) struct OutTx {
    shared: Shared,
}

/// Router → connection receiving end.
pub(crate) struct OutRx {
    shared: Shared,
}

/// A new, empty queue (nothing allocated besides the shared state).
pub(crate) fn out_queue() -> (OutTx, OutRx) {
    let shared = Arc::new(Queue {
        inner: Mutex::new(Inner {
            queue: Vec::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        backlog: Backlog::default(),
    });
    (
        OutTx {
            shared: shared.clone(),
        },
        OutRx { shared },
    )
}

impl OutTx {
    /// What was handed over and not taken yet.
    pub(crate) fn backlog(&self) -> &Backlog {
        &self.shared.backlog
    }

    /// Queue `batch` behind what is queued and wake the receiver; `Err` (with the
    /// batch) when the receiver is gone.
    pub(crate) fn send(&self, mut batch: Vec<Outgoing>) -> Result<(), Vec<Outgoing>> {
        let (waker, emptied) = {
            let mut inner = lock(&self.shared);
            if inner.receiver_gone {
                return Err(batch);
            }
            if inner.queue.is_empty() {
                inner.queue = batch;
                (inner.waker.take(), None)
            } else {
                inner.queue.append(&mut batch);
                (inner.waker.take(), Some(batch))
            }
        };
        if let Some(emptied) = emptied {
            super::pool::OUTGOING.give(emptied);
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for OutTx {
    fn drop(&mut self) {
        let waker = {
            let mut inner = lock(&self.shared);
            inner.sender_gone = true;
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for OutTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutTx")
    }
}

/// Why `try_recv` returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// Nothing queued; the sender may still send.
    Empty,
    /// Nothing queued and the sender is gone.
    Disconnected,
}

impl OutRx {
    /// What was handed over and not taken yet.
    pub(crate) fn backlog(&self) -> &Backlog {
        &self.shared.backlog
    }

    /// Everything queued (in order), waiting for it if nothing is; `None` once the
    /// sender is gone and the queue is empty. Cancel safe: a dropped `recv` loses
    /// nothing.
    pub(crate) async fn recv(&mut self) -> Option<Vec<Outgoing>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<Outgoing>>> {
        let mut inner = lock(&self.shared);
        if !inner.queue.is_empty() {
            return Poll::Ready(Some(std::mem::take(&mut inner.queue)));
        }
        if inner.sender_gone {
            return Poll::Ready(None);
        }
        match &mut inner.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Everything queued (in order) without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<Vec<Outgoing>, TryRecvError> {
        let mut inner = lock(&self.shared);
        if !inner.queue.is_empty() {
            Ok(std::mem::take(&mut inner.queue))
        } else if inner.sender_gone {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }
}

impl Drop for OutRx {
    fn drop(&mut self) {
        let queued = {
            let mut inner = lock(&self.shared);
            inner.receiver_gone = true;
            inner.waker = None;
            std::mem::take(&mut inner.queue)
        };
        drop(queued);
    }
}

impl std::fmt::Debug for OutRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutRx")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::link::Ack;

    fn acks(ids: &[u16]) -> Vec<Outgoing> {
        ids.iter()
            .map(|&id| Outgoing::Ack(Ack::Puback(id)))
            .collect()
    }

    fn ids(batch: &[Outgoing]) -> Vec<u16> {
        batch
            .iter()
            .map(|item| match item {
                Outgoing::Ack(Ack::Puback(id)) => *id,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_none_after_the_sender_is_gone() {
        let (tx, mut rx) = out_queue();
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        tx.send(acks(&[1, 2])).expect("receiver alive");
        tx.send(acks(&[3])).expect("receiver alive");
        assert_eq!(ids(&rx.recv().await.expect("a batch")), [1, 2, 3]);
        tx.send(acks(&[4])).expect("receiver alive");
        drop(tx);
        assert_eq!(ids(&rx.try_recv().expect("a batch")), [4]);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = out_queue();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.expect("a batch");
            let rest = rx.recv().await;
            (ids(&first), rest.is_none())
        });
        tokio::task::yield_now().await;
        tx.send(acks(&[7])).expect("receiver alive");
        tokio::task::yield_now().await;
        drop(tx);
        let (first, closed) = waiter.await.expect("waiter task");
        assert_eq!(first, [7]);
        assert!(closed);
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = out_queue();
        tokio::select! {
            biased;
            _ = rx.recv() => unreachable!(),
            _ = tokio::task::yield_now() => {}
        }
        tx.send(acks(&[9])).expect("receiver alive");
        assert_eq!(ids(&rx.recv().await.expect("a batch")), [9]);
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = out_queue();
        drop(rx);
        assert!(tx.send(acks(&[1])).is_err());
    }

    #[test]
    fn the_queue_holds_no_allocation_when_drained() {
        let (tx, mut rx) = out_queue();
        tx.send(acks(&[1, 2, 3])).expect("receiver alive");
        let _ = rx.try_recv().expect("a batch");
        assert_eq!(lock(&rx.shared).queue.capacity(), 0);
    }
}
