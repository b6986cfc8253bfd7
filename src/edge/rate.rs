//! Rate controls of a listener: connection attempts per source address (`connect_rate`,
//! checked at accept, before any TLS work) and PUBLISH messages and bytes per client
//! (`publish_rate`, checked before each PUBLISH is decoded). Both are token buckets whose
//! capacity is one second's worth (`burst` for connections). The address table is
//! bounded (`max_addresses`, the oldest entry goes first; IPv6 addresses count per /64).
//! This module only measures: it must never log, count or close anything itself (the
//! accept loop and the connection task do, under the log rate limits).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde::Deserialize;
use tokio::time::{Duration, Instant};

/// `[[listener]] connect_rate = { per_second, burst, max_addresses }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRate {
    /// Sustained connection attempts per second from one address (IPv6: one /64).
    pub per_second: f64,
    /// Attempts an address may make at once before the sustained rate applies.
    pub burst: u32,
    /// Addresses remembered at most; beyond it the oldest entry is forgotten.
    #[serde(default = "default_max_addresses")]
    pub max_addresses: usize,
}

/// Default of `connect_rate.max_addresses`.
pub const DEFAULT_MAX_ADDRESSES: usize = 4096;
/// Largest `connect_rate.max_addresses` accepted (about 100 MB of table at most).
pub const MAX_ADDRESSES_LIMIT: usize = 1_000_000;

fn default_max_addresses() -> usize {
    DEFAULT_MAX_ADDRESSES
}

/// What a client beyond its `publish_rate` gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExcess {
    /// Back-pressure: its socket is not read until the bucket has refilled.
    #[default]
    Throttle,
    /// v5: DISCONNECT 0x96 (Message rate too high) with a reason string; 3.1.1: close.
    Disconnect,
}

/// `[[listener]] publish_rate = { msgs, bytes, on_excess }`: per client, per second.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRate {
    /// PUBLISH packets per second (0: not limited); also the burst.
    #[serde(default)]
    pub msgs: u32,
    /// Topic plus payload bytes of PUBLISH packets per second (0: not limited); also the burst.
    #[serde(default)]
    pub bytes: u64,
    /// `throttle` (default) or `disconnect`.
    #[serde(default, deserialize_with = "crate::config::by_name")]
    pub on_excess: OnExcess,
}

/// A bucket refilled at `rate` per second up to `capacity`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.last = now;
    }
}

/// The accept loop's table of connection buckets, one per source address.
#[derive(Debug, Default)]
pub struct ConnectLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    /// Addresses in the order they entered the table (the oldest is evicted first).
    order: VecDeque<IpAddr>,
}

/// IPv6 addresses count per /64 (one host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

impl ConnectLimiter {
    /// Whether one more attempt from `ip` is within `rate`; takes a token if so.
    pub fn admit(&mut self, rate: &ConnectRate, ip: IpAddr, now: Instant) -> bool {
        let key = address_key(ip);
        let capacity = f64::from(rate.burst);
        if !self.buckets.contains_key(&key) {
            while self.buckets.len() >= rate.max_addresses.max(1) {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.buckets.remove(&oldest);
            }
            self.buckets.insert(key, Bucket::full(capacity, now));
            self.order.push_back(key);
        }
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return true;
        };
        bucket.refill(rate.per_second, capacity, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Addresses in the table.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// One client's PUBLISH buckets (messages and bytes).
#[derive(Debug)]
pub struct PublishLimiter {
    rate: PublishRate,
    msgs: Bucket,
    bytes: Bucket,
}

impl PublishLimiter {
    /// Full buckets for a client that just connected.
    pub fn new(rate: PublishRate, now: Instant) -> Self {
        PublishLimiter {
            rate,
            msgs: Bucket::full(f64::from(rate.msgs), now),
            bytes: Bucket::full(rate.bytes as f64, now),
        }
    }

    /// What the client gets beyond the rate.
    pub fn on_excess(&self) -> OnExcess {
        self.rate.on_excess
    }

    /// The configured rate.
    pub fn rate(&self) -> &PublishRate {
        &self.rate
    }

    /// Add what `now` brings; called once per batch of packets.
    pub fn refill(&mut self, now: Instant) {
        if self.rate.msgs > 0 {
            let r = f64::from(self.rate.msgs);
            self.msgs.refill(r, r, now);
        }
        if self.rate.bytes > 0 {
            let r = self.rate.bytes as f64;
            self.bytes.refill(r, r, now);
        }
    }

    /// Whether the next PUBLISH must wait (or is an excess): no message token left, or
    /// the byte bucket in debt (one message may take it below zero).
    pub fn exhausted(&self) -> bool {
        (self.rate.msgs > 0 && self.msgs.tokens < 1.0)
            || (self.rate.bytes > 0 && self.bytes.tokens < 0.0)
    }

    /// Take one PUBLISH of `bytes` topic and payload bytes.
    pub fn take(&mut self, bytes: usize) {
        if self.rate.msgs > 0 {
            self.msgs.tokens -= 1.0;
        }
        if self.rate.bytes > 0 {
            self.bytes.tokens -= bytes as f64;
        }
    }

    /// When the buckets allow the next PUBLISH again (after the last `refill`).
    pub fn ready_at(&self) -> Instant {
        let mut wait = 0.0f64;
        let mut last = self.msgs.last;
        if self.rate.msgs > 0 && self.msgs.tokens < 1.0 {
            wait = wait.max((1.0 - self.msgs.tokens) / f64::from(self.rate.msgs));
        }
        if self.rate.bytes > 0 && self.bytes.tokens < 0.0 {
            wait = wait.max(-self.bytes.tokens / self.rate.bytes as f64);
            last = last.max(self.bytes.last);
        }
        // A millisecond more, so the refill at wake-up is past the line, not just short of it.
        last + Duration::from_secs_f64(wait.min(3600.0)) + Duration::from_millis(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32, max_addresses: usize) -> ConnectRate {
        ConnectRate {
            per_second,
            burst,
            max_addresses,
        }
    }

    #[test]
    fn an_address_gets_its_burst_then_the_sustained_rate() {
        let mut t = ConnectLimiter::default();
        let r = rate(2.0, 3, 10);
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..3).all(|_| t.admit(&r, ip, now)));
        assert!(!t.admit(&r, ip, now));
        // Another address has its own bucket.
        assert!(t.admit(&r, "192.0.2.2".parse().expect("ip"), now));
        // Half a second at 2/s brings one token back.
        let later = now + Duration::from_millis(500);
        assert!(t.admit(&r, ip, later));
        assert!(!t.admit(&r, ip, later));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest_first() {
        let mut t = ConnectLimiter::default();
        let r = rate(0.001, 1, 3);
        let now = Instant::now();
        let first: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(t.admit(&r, first, now));
        assert!(!t.admit(&r, first, now));
        for i in 2..=4 {
            assert!(t.admit(&r, format!("192.0.2.{i}").parse().expect("ip"), now));
        }
        assert_eq!(t.len(), 3);
        // The first address was evicted, so it starts again with a full bucket.
        assert!(t.admit(&r, first, now));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket() {
        let mut t = ConnectLimiter::default();
        let r = rate(0.001, 1, 10);
        let now = Instant::now();
        assert!(t.admit(&r, "2001:db8::1".parse().expect("ip"), now));
        assert!(!t.admit(&r, "2001:db8::ffff:2".parse().expect("ip"), now));
        assert!(t.admit(&r, "2001:db8:0:1::1".parse().expect("ip"), now));
    }

    #[test]
    fn publish_buckets_pace_messages_and_bytes() {
        let now = Instant::now();
        let mut l = PublishLimiter::new(
            PublishRate {
                msgs: 2,
                bytes: 0,
                on_excess: OnExcess::Throttle,
            },
            now,
        );
        l.take(10);
        l.take(10);
        assert!(l.exhausted());
        let ready = l.ready_at();
        assert!(ready >= now + Duration::from_millis(500));
        l.refill(ready);
        assert!(!l.exhausted());

        let mut b = PublishLimiter::new(
            PublishRate {
                msgs: 0,
                bytes: 100,
                on_excess: OnExcess::Disconnect,
            },
            now,
        );
        // One message larger than the bucket goes through, then the debt is paid off.
        assert!(!b.exhausted());
        b.take(250);
        assert!(b.exhausted());
        let ready = b.ready_at();
        assert!(ready >= now + Duration::from_millis(1500));
        b.refill(ready);
        assert!(!b.exhausted());
    }
}
