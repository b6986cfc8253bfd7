//! A cheap hasher for the router's and connections' integer-keyed tables (session
//! keys, connection ids, hold ids, packet ids), which are looked up several times per
//! routed message. SipHash's HashDoS protection buys nothing there: session keys,
//! connection ids and hold ids are assigned by the broker, and packet-id tables are
//! bounded by the receive maximum. It must never be used for keys a client chooses
//! freely and without bound (client ids, topic levels): those keep SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative hash of one integer (Fibonacci hashing): a bijection, so
/// sequential keys never collide in the low bits, and the high bits are well mixed.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; kept correct for any other use.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// `HashMap` keyed by a broker-assigned or bounded integer.
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
/// `HashSet` of broker-assigned or bounded integers.
pub(crate) type IntSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_map_behaves_like_a_map() {
        let mut m: IntMap<u64, u64> = IntMap::default();
        for i in 0..10_000u64 {
            m.insert(i, i * 2);
        }
        for i in 0..10_000u64 {
            assert_eq!(m.get(&i), Some(&(i * 2)));
        }
        let mut s: IntSet<u16> = IntSet::default();
        assert!(s.insert(7));
        assert!(!s.insert(7));
        assert!(s.remove(&7));
        assert!(s.is_empty());
    }
}
