//! Reconnect delays: exponential from `min` to `max` with full jitter in the upper half
//! (a delay is uniform in `[d/2, d]`, so a fleet that lost its cloud at the same moment
//! does not come back in lockstep), reset to `min` once a connection stayed up for
//! `stable`. Pure state; the caller sleeps.

use std::time::Duration;

use rand::Rng;

use super::config::BackoffConfig;

/// Delay state of one bridge.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failures since the last stable connection.
    failures: u32,
}

impl Backoff {
    /// A fresh state (the first failure waits about `min`).
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// The un-jittered delay after the current number of failures: `min * 2^n`, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.config
            .min
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
            .max(self.config.min)
    }

    /// Record a failed attempt (or a connection lost before `stable`) and return how
    /// long to wait: uniform in `[ceiling/2, ceiling]`, never below `min`.
    pub fn failed(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let low = (ceiling / 2).max(self.config.min);
        if low >= ceiling {
            return ceiling;
        }
        let span = (ceiling - low).as_millis() as u64;
        low + Duration::from_millis(rng.gen_range(0..=span))
    }

    /// A connection ended after being up for `uptime`: a stable one resets the delays.
    pub fn disconnected_after(&mut self, uptime: Duration) {
        if uptime >= self.config.stable {
            self.failures = 0;
        }
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> BackoffConfig {
        BackoffConfig {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(30),
        }
    }

    #[test]
    fn delays_double_within_jitter_bounds_up_to_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut b = Backoff::new(config());
            let mut ceiling = Duration::from_secs(1);
            for _ in 0..10 {
                let d = b.failed(&mut rng);
                let low = (ceiling / 2).max(Duration::from_secs(1));
                assert!(
                    d >= low && d <= ceiling,
                    "{d:?} not in [{low:?}, {ceiling:?}]"
                );
                ceiling = (ceiling * 2).min(Duration::from_secs(60));
            }
        }
    }

    #[test]
    fn jitter_actually_spreads_the_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| {
                let mut b = Backoff::new(config());
                for _ in 0..4 {
                    b.failed(&mut rng);
                }
                b.failed(&mut rng)
            })
            .collect();
        assert!(delays.len() > 10, "{} distinct delays", delays.len());
    }

    #[test]
    fn a_stable_connection_resets_and_a_short_one_does_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(config());
        for _ in 0..5 {
            b.failed(&mut rng);
        }
        b.disconnected_after(Duration::from_secs(29));
        assert_eq!(b.failures(), 5);
        assert_eq!(b.ceiling(), Duration::from_secs(32));
        b.disconnected_after(Duration::from_secs(30));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert_eq!(b.failed(&mut rng), Duration::from_secs(1));
    }

    #[test]
    fn huge_failure_counts_stay_at_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(config());
        for _ in 0..100 {
            assert!(b.failed(&mut rng) <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }
}
