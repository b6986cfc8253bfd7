//! `journal.replay_rate`: a token bucket over messages and payload bytes per second,
//! with a burst of one second's worth of each, that paces what the uplink takes from
//! the outbox while it drains a backlog after a (re)connect (see `run`). It only
//! counts and tells when the next record may go; it never sleeps itself. The same
//! bucket is a rule's `rate` ([`RuleRates`]), where a message over it is not forwarded.

use std::time::Duration;

use tokio::time::Instant;

use super::config::ReplayRate;

/// Two token buckets (messages, bytes) refilled continuously at the configured rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    msgs_rate: f64,
    bytes_rate: f64,
    msgs: f64,
    bytes: f64,
    refilled: Instant,
}

impl Pacer {
    /// A full bucket (one second's worth) at `now`.
    pub fn new(rate: &ReplayRate, now: Instant) -> Self {
        let msgs_rate = f64::from(rate.msgs.max(1));
        let bytes_rate = (rate.bytes.max(1)) as f64;
        Pacer {
            msgs_rate,
            bytes_rate,
            msgs: msgs_rate,
            bytes: bytes_rate,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.msgs = (self.msgs + elapsed * self.msgs_rate).min(self.msgs_rate);
        self.bytes = (self.bytes + elapsed * self.bytes_rate).min(self.bytes_rate);
    }

    /// Whole messages that may go now (before bytes are considered).
    pub fn available_msgs(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.msgs.max(0.0).floor() as usize
    }

    /// Take one message of `bytes` payload bytes: `Ok` if it may go now, else `Err`
    /// with how long to wait. A message larger than the whole byte bucket goes when the
    /// bucket is full (it leaves a debt), so no message is held forever.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = (bytes as f64).min(self.bytes_rate);
        if self.msgs >= 1.0 && self.bytes >= need {
            self.msgs -= 1.0;
            self.bytes -= bytes as f64;
            return Ok(());
        }
        let msgs_wait = ((1.0 - self.msgs) / self.msgs_rate).max(0.0);
        let bytes_wait = ((need - self.bytes) / self.bytes_rate).max(0.0);
        // At least a millisecond: a timer that fires early would only spin.
        Err(Duration::from_secs_f64(msgs_wait.max(bytes_wait)).max(Duration::from_millis(1)))
    }
}

/// The `rate` of each `[[bridge.topic]]` rule, by rule index: the intake (out) and the
/// uplink (in) ask it before forwarding a message.
#[derive(Debug)]
pub struct RuleRates(Vec<Option<std::sync::Mutex<Pacer>>>);

impl RuleRates {
    /// A full bucket for every rule with a `rate`.
    pub fn new(rules: &[super::config::TopicRuleConfig]) -> Self {
        let now = Instant::now();
        RuleRates(
            rules
                .iter()
                .map(|r| {
                    r.rate
                        .as_ref()
                        .map(|rate| std::sync::Mutex::new(Pacer::new(rate, now)))
                })
                .collect(),
        )
    }

    /// Whether rule `index` may forward a message of `bytes` payload bytes now (taking
    /// it from the bucket); always for a rule without a `rate`.
    pub fn allow(&self, index: usize, bytes: usize) -> bool {
        let Some(Some(bucket)) = self.0.get(index) else {
            return true;
        };
        // Every critical section leaves the bucket consistent.
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(bytes, Instant::now()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(msgs: u32, bytes: u64) -> ReplayRate {
        ReplayRate { msgs, bytes }
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(&rate(10, 1 << 20), t0);
        assert_eq!(p.available_msgs(t0), 10);
        for _ in 0..10 {
            p.take(1, t0).expect("within the burst");
        }
        let wait = p.take(1, t0).expect_err("burst used");
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        let t1 = t0 + Duration::from_millis(101);
        p.take(1, t1).expect("one token after 1/rate");
        assert!(p.take(1, t1).is_err());
        // Never more than the burst, however long it stayed idle.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(p.available_msgs(t2), 10);
    }

    #[test]
    fn a_rule_rate_lets_its_burst_through_and_refuses_the_rest_other_rules_unlimited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut limited = crate::bridge::config::tests::bridge(dir.path())
            .topic
            .remove(0);
        limited.rate = Some(rate(3, 1 << 20));
        let mut free = limited.clone();
        free.rate = None;
        let rates = RuleRates::new(&[limited, free]);
        let allowed = (0..10).filter(|_| rates.allow(0, 10)).count();
        assert_eq!(allowed, 3, "one second's worth");
        assert!((0..100).all(|_| rates.allow(1, 10)), "no rate: no limit");
        assert!(rates.allow(7, 10), "an index without a rule is not limited");
    }

    #[test]
    fn bytes_limit_too_and_a_large_message_is_not_held_forever() {
        let t0 = Instant::now();
        let mut p = Pacer::new(&rate(1000, 2000), t0);
        p.take(1500, t0).expect("fits the burst");
        let wait = p.take(1000, t0).expect_err("500 bytes left");
        assert_eq!(wait, Duration::from_millis(250));
        // Larger than the bucket: goes once the bucket is full again, leaving a debt.
        let t1 = t0 + Duration::from_secs(1);
        p.take(5000, t1).expect("a full bucket lets it through");
        let wait = p.take(10, t1).expect_err("in debt");
        assert!(wait >= Duration::from_millis(1500), "{wait:?}");
    }
}
