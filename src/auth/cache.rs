//! Cache of recent successful password verifications, so a reconnect storm costs one
//! hash per device. Keys are HMAC-SHA256 under a per-process random secret over the
//! user name and password; the password itself is never stored. Bounded in size and
//! time; a new authenticator (reload) starts with an empty cache.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::time::Instant;

type Key = [u8; 32];

pub(crate) struct SuccessCache {
    secret: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: HashMap<Key, Instant>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<(Key, Instant)>,
}

impl SuccessCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        SuccessCache {
            secret,
            ttl,
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// HMAC(secret, len(username) || username || 0x00 || password). The length prefix
    /// keeps ("a\0b", "c") and ("a", "b\0c") apart.
    pub fn key(&self, username: &str, password: &[u8]) -> Key {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("invariant: HMAC takes any key length");
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` was verified recently and has not expired.
    pub fn hit(&mut self, key: &Key, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn insert(&mut self, key: Key, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let expiry = now + self.ttl;
        self.entries.insert(key, expiry);
        self.order.push_back((key, expiry));
        while self.entries.len() > self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            // Skip queue records superseded by a later insert of the same key.
            if self.entries.get(&old) == Some(&at) {
                self.entries.remove(&old);
            }
        }
        // Drop stale queue records so the queue stays proportional to the map.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|(k, at)| entries.get(k) == Some(at) && *at > now);
            self.entries.retain(|_, at| *at > now);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_until_expiry_and_never_across_passwords() {
        let mut c = SuccessCache::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let k = c.key("u", b"pw");
        assert!(!c.hit(&k, now));
        c.insert(k, now);
        assert!(c.hit(&k, now + Duration::from_secs(59)));
        assert!(!c.hit(&c.key("u", b"pw2"), now));
        assert!(!c.hit(&c.key("u2", b"pw"), now));
        assert!(!c.hit(&k, now + Duration::from_secs(60)));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn separator_is_unambiguous() {
        let c = SuccessCache::new(Duration::from_secs(60), 10);
        assert_ne!(c.key("a\0b", b"c"), c.key("a", b"b\0c"));
    }

    #[test]
    fn stays_within_capacity_evicting_oldest() {
        let mut c = SuccessCache::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        let keys: Vec<Key> = (0..5).map(|i| c.key(&format!("u{i}"), b"pw")).collect();
        for k in &keys {
            c.insert(*k, now);
        }
        assert_eq!(c.len(), 3);
        assert!(!c.hit(&keys[0], now));
        assert!(!c.hit(&keys[1], now));
        assert!(c.hit(&keys[4], now));
    }
}
