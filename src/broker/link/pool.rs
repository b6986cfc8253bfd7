//! Spare batch vectors, shared by the router and the endpoints. A busy publisher hands
//! the router a `Vec<Inbound>` of a few hundred packets per socket read, and the router
//! hands a busy subscriber a `Vec<Outgoing>` per turn: tens to hundreds of KiB each,
//! allocated on one thread and freed on another. Allocated fresh every time, each one
//! grew by copying and touched new pages (page faults, and the allocator's purges of
//! them), a quarter of the broker's CPU on a QoS 0 stream. The side that empties a
//! batch gives the vector back here, and the side that fills the next one takes it.
//!
//! Bounded: a few vectors of a bounded capacity per kind (larger ones are freed), and
//! [`release`] drops them all when the broker goes idle (the runtime's idle hook), so
//! a burst leaves nothing behind. Never blocks: a contended pool is skipped.

use std::sync::Mutex;

use super::{Inbound, Outgoing};

/// Spare vectors kept per kind.
const KEEP: usize = 4;

/// A pool of empty vectors of one element type.
pub(crate) struct VecPool<T> {
    spare: Mutex<Vec<Vec<T>>>,
    /// Vectors with more capacity than this are freed, not kept.
    max_capacity: usize,
}

impl<T> VecPool<T> {
    const fn new(max_capacity: usize) -> Self {
        VecPool {
            spare: Mutex::new(Vec::new()),
            max_capacity,
        }
    }

    /// An empty vector with room for at least `capacity` items: a spare one when
    /// there is one.
    pub(crate) fn take(&self, capacity: usize) -> Vec<T> {
        let spare = self.spare.try_lock().ok().and_then(|mut s| s.pop());
        match spare {
            Some(mut v) => {
                v.reserve(capacity);
                v
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Give back a vector whose items were taken (any left are dropped first).
    pub(crate) fn give(&self, mut v: Vec<T>) {
        if v.capacity() == 0 || v.capacity() > self.max_capacity {
            return;
        }
        v.clear();
        if let Ok(mut spare) = self.spare.try_lock() {
            if spare.len() < KEEP {
                spare.push(v);
            }
        }
    }

    /// Drop every spare vector.
    fn release(&self) {
        let spare = match self.spare.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        drop(spare);
    }

    #[cfg(test)]
    fn spare(&self) -> usize {
        self.spare.lock().map_or(0, |s| s.len())
    }
}

/// Connection → router batches (`RouterMsg::Inbound`).
pub(crate) static INBOUND: VecPool<Inbound> = VecPool::new(1024);

/// Router → connection batches (the outbox).
pub(crate) static OUTGOING: VecPool<Outgoing> = VecPool::new(8192);

/// Drop every spare batch vector (the broker is idle).
pub fn release() {
    INBOUND.release();
    OUTGOING.release();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_vector_is_taken_again_empty_and_big_ones_are_freed() {
        let pool: VecPool<u32> = VecPool::new(64);
        let mut v = pool.take(10);
        v.extend([1, 2, 3]);
        let at = v.as_ptr();
        pool.give(v);
        let again = pool.take(5);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same allocation");
        pool.give(Vec::with_capacity(65));
        assert_eq!(pool.spare(), 0, "larger than max_capacity: freed");
        for _ in 0..KEEP + 2 {
            pool.give(Vec::with_capacity(8));
        }
        assert_eq!(pool.spare(), KEEP, "bounded");
        pool.release();
        assert_eq!(pool.spare(), 0);
    }
}
