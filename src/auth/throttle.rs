//! Failed-login throttling per source address and per user name: exponential delay
//! after each failure, reset on success, forgotten after a quiet period. It owns only
//! counters and instants (never credentials) and its memory is bounded by `capacity`.
//!
//! Policy: a throttled attempt is answered at once with `AuthError::Throttled` (no
//! sleeping), so a throttled address can never make the server hold tasks or timers.
//! Throttled attempts do not extend the delay; only real failures do.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Address key: IPv4 as is, IPv6 by /64 prefix (one host usually owns a whole /64).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

/// Delay policy shared by both tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottlePolicy {
    pub base: Duration,
    pub max: Duration,
    pub forget_after: Duration,
    pub capacity: usize,
}

impl ThrottlePolicy {
    /// Delay after the `failures`-th consecutive failure: base * 2^(n-1), capped at max.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Failures that went untracked because a failed-login table was full of live entries
/// (process-wide, for `$SYS/tollgate/auth/untracked_failures`).
static UNTRACKED_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many failed logins went untracked because a failed-login table was full.
pub fn untracked_failures() -> u64 {
    UNTRACKED_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}

/// One failure table (addresses or user names), bounded by `capacity` entries of
/// fixed size.
#[derive(Debug)]
pub(crate) struct FailureTable<K> {
    entries: HashMap<K, Entry>,
    /// The table refused a new key since it last had room (logged once).
    full: bool,
}

impl<K: Eq + Hash + Clone> FailureTable<K> {
    pub fn new() -> Self {
        FailureTable {
            entries: HashMap::new(),
            full: false,
        }
    }

    /// How long `key` must still wait, if it is throttled now.
    pub fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let e = self.entries.get(key)?;
        (e.blocked_until > now).then(|| e.blocked_until - now)
    }

    /// Records a failure and returns the delay now imposed on `key`.
    pub fn fail(&mut self, key: &K, now: Instant, policy: &ThrottlePolicy) -> Duration {
        if !self.entries.contains_key(key) && self.entries.len() >= policy.capacity {
            self.entries
                .retain(|_, e| now.duration_since(e.last_failure) < policy.forget_after);
            if self.entries.len() >= policy.capacity {
                // Table full of live entries (a flood from many sources): this key goes
                // untracked rather than growing memory; the other table still applies.
                UNTRACKED_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !self.full {
                    tracing::warn!(capacity = policy.capacity, "Failed-login table full: further sources or user names are not throttled until entries expire.");
                    self.full = true;
                }
                return Duration::ZERO;
            }
            self.full = false;
        }
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now.duration_since(entry.last_failure) >= policy.forget_after {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let delay = policy.delay(entry.failures);
        entry.blocked_until = now + delay;
        delay
    }

    /// Forgets `key` (after a success).
    pub fn reset(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops entries quiet for longer than `forget_after`.
    pub fn prune(&mut self, now: Instant, policy: &ThrottlePolicy) {
        self.entries
            .retain(|_, e| now.duration_since(e.last_failure) < policy.forget_after);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Both tables together. User names are kept as keyed 64-bit hashes, so an entry has
/// a fixed size whatever length a client gives its user name (the key is random per
/// process, so nobody can aim collisions at another user's entry).
#[derive(Debug)]
pub(crate) struct Throttle {
    policy: ThrottlePolicy,
    addresses: FailureTable<IpAddr>,
    users: FailureTable<u64>,
    user_key: std::collections::hash_map::RandomState,
    last_prune: Instant,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Throttle {
            policy,
            addresses: FailureTable::new(),
            users: FailureTable::new(),
            user_key: std::collections::hash_map::RandomState::new(),
            last_prune: Instant::now(),
        }
    }

    /// Remaining wait for this address or user name (the longer of the two).
    pub fn wait(&mut self, ip: IpAddr, user: Option<&str>, now: Instant) -> Option<Duration> {
        if now.duration_since(self.last_prune) >= self.policy.forget_after {
            self.addresses.prune(now, &self.policy);
            self.users.prune(now, &self.policy);
            self.last_prune = now;
        }
        let by_ip = self.addresses.wait(&address_key(ip), now);
        let by_user = user.and_then(|u| self.users.wait(&self.user_hash(u), now));
        match (by_ip, by_user) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records a failure for both keys; returns the longer delay imposed.
    pub fn fail(&mut self, ip: IpAddr, user: Option<&str>, now: Instant) -> Duration {
        let a = self.addresses.fail(&address_key(ip), now, &self.policy);
        let b = user
            .map(|u| self.users.fail(&self.user_hash(u), now, &self.policy))
            .unwrap_or_default();
        a.max(b)
    }

    fn user_hash(&self, user: &str) -> u64 {
        use std::hash::BuildHasher;
        self.user_key.hash_one(user)
    }

    /// Clears both keys after a success.
    pub fn succeed(&mut self, ip: IpAddr, user: &str) {
        self.addresses.reset(&address_key(ip));
        self.users.reset(&self.user_hash(user));
    }

    /// Number of tracked entries (addresses, users).
    pub fn tracked(&self) -> (usize, usize) {
        (self.addresses.len(), self.users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            forget_after: Duration::from_secs(600),
            capacity: 4,
        }
    }

    #[test]
    fn user_names_of_any_length_take_one_fixed_size_entry() {
        let mut t = Throttle::new(policy());
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let long = "u".repeat(65_535);
        let other = format!("{}v", "u".repeat(65_534));
        assert!(t.fail(ip, Some(&long), now) > Duration::ZERO);
        let elsewhere: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(t.wait(elsewhere, Some(&long), now).is_some());
        assert!(t.wait(elsewhere, Some(&other), now).is_none());
        t.succeed(ip, &long);
        assert!(t.wait(elsewhere, Some(&long), now).is_none());
    }

    #[test]
    fn failures_beyond_a_full_table_are_counted_as_untracked() {
        let mut t = Throttle::new(policy());
        let now = Instant::now();
        let before = untracked_failures();
        for i in 0..6u8 {
            let ip: IpAddr = format!("192.0.2.{}", 10 + i).parse().expect("ip");
            t.fail(ip, None, now);
        }
        // Capacity 4: the 5th and 6th sources go untracked (counted, not stored).
        assert!(untracked_failures() >= before + 2);
        assert_eq!(t.tracked().0, 4);
    }

    #[test]
    fn delay_doubles_from_base_up_to_max() {
        let p = policy();
        let got: Vec<u64> = (0..10).map(|n| p.delay(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            vec![0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn failures_grow_delay_and_success_resets_it() {
        let mut t = Throttle::new(policy());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let now = Instant::now();
        assert_eq!(t.wait(ip, Some("u"), now), None);
        assert_eq!(t.fail(ip, Some("u"), now), Duration::from_millis(100));
        assert_eq!(t.wait(ip, Some("u"), now), Some(Duration::from_millis(100)));
        let later = now + Duration::from_millis(100);
        assert_eq!(t.wait(ip, Some("u"), later), None);
        assert_eq!(t.fail(ip, Some("u"), later), Duration::from_millis(200));
        // The user is throttled from another address too.
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(t.wait(other, Some("u"), later).is_some());
        assert!(t.wait(other, Some("v"), later).is_none());
        t.succeed(ip, "u");
        assert_eq!(t.wait(ip, Some("u"), later), None);
        assert_eq!(t.fail(ip, Some("u"), later), Duration::from_millis(100));
    }

    #[test]
    fn quiet_entries_are_forgotten_and_table_is_bounded() {
        let p = policy();
        let mut t = Throttle::new(p);
        let now = Instant::now();
        for i in 0..10u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            t.fail(ip, Some(&format!("user{i}")), now);
        }
        assert_eq!(t.tracked(), (4, 4));
        let much_later = now + p.forget_after + Duration::from_secs(1);
        assert_eq!(t.wait(IpAddr::from([10, 0, 0, 0]), None, much_later), None);
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn ipv6_hosts_share_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }
}
