//! ACL check benchmark, callable from `benches/acl.rs` and the bench binary.
//! Owns building a realistic rule file of a given size and timing checks on
//! it; it must never be used by the gateway itself.

use std::hint::black_box;
use std::time::Instant;

use super::{Access, Acl, Authorizer};
use crate::auth::{AuthMethod, Identity};

/// Figures for one ACL size.
#[derive(Debug, Clone, Copy)]
pub struct BenchFigures {
    /// Rules in the ACL.
    pub rules: usize,
    /// Checks timed.
    pub checks: usize,
    /// Mean nanoseconds per [`Authorizer::allows`] (allocation-free).
    pub ns_allows: f64,
    /// Mean nanoseconds per [`Authorizer::check`] (also copies the rule label).
    pub ns_check: f64,
    /// Share of the timed checks that were allowed (sanity: the mix is fixed).
    pub allowed_share: f64,
}

/// One check of the benchmark mix.
pub struct BenchCheck {
    /// Who.
    pub identity: Identity,
    /// What.
    pub access: Access,
    /// Topic or filter.
    pub topic: String,
}

fn identity(name: &str) -> Identity {
    Identity {
        username: Some(name.to_string()),
        client_id: name.to_string(),
        via: AuthMethod::Certificate,
        listener: "bench".into(),
    }
}

/// A deployment like the seeds' scaled to about `rules` rules: admin, dashboard,
/// two patterns, and devices `sensor_<n>` writing `sensors/<n>/#` and reading
/// `commands/<n>`; plus a fixed mix of allowed and denied checks over it.
pub fn bench_setup(rules: usize) -> (Acl, Vec<BenchCheck>) {
    let devices = (rules.saturating_sub(6) / 2).max(1);
    let mut text = String::with_capacity(devices * 64 + 256);
    text.push_str("user admin\ntopic readwrite #\nuser dashboard\ntopic read sensors/#\ntopic read devices/#\n");
    text.push_str("pattern read devices/%u/config\npattern deny devices/%u/secret\n");
    for n in 0..devices {
        text.push_str(&format!(
            "user sensor_{n}\ntopic write sensors/{n}/#\ntopic read commands/{n}\n"
        ));
    }
    let acl = Acl::parse("bench-acl", &text, &[]).expect("invariant: generated bench ACL is valid");
    let mut checks = Vec::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % devices as u64) as usize;
        let other = ((seed >> 20) % devices as u64) as usize;
        let me = identity(&format!("sensor_{n}"));
        let add = |checks: &mut Vec<BenchCheck>, id: &Identity, access, topic: String| {
            checks.push(BenchCheck {
                identity: id.clone(),
                access,
                topic,
            });
        };
        add(
            &mut checks,
            &me,
            Access::Write,
            format!("sensors/{n}/temperature"),
        );
        add(
            &mut checks,
            &me,
            Access::Write,
            format!("sensors/{other}x/temperature"),
        );
        add(&mut checks, &me, Access::Read, format!("commands/{n}"));
        add(
            &mut checks,
            &identity("dashboard"),
            Access::Read,
            format!("sensors/{n}/humidity"),
        );
        add(&mut checks, &me, Access::Subscribe, "sensors/#".to_string());
        add(
            &mut checks,
            &me,
            Access::Read,
            format!("devices/sensor_{n}/config"),
        );
        add(
            &mut checks,
            &me,
            Access::Read,
            format!("devices/sensor_{n}/secret"),
        );
        add(
            &mut checks,
            &identity("admin"),
            Access::Read,
            "$SYS/broker/load/messages".to_string(),
        );
    }
    (acl, checks)
}

/// Time the check mix on an ACL of about `rules` rules.
pub fn bench_figures(rules: usize) -> BenchFigures {
    let (acl, checks) = bench_setup(rules);
    let rounds = 4000;
    let total = rounds * checks.len();
    // Warm up caches and the allocator.
    for c in &checks {
        black_box(acl.check(&c.identity, c.access, &c.topic));
    }
    let start = Instant::now();
    let mut allowed = 0usize;
    for _ in 0..rounds {
        for c in &checks {
            allowed +=
                usize::from(acl.allows(black_box(&c.identity), c.access, black_box(&c.topic)));
        }
    }
    let ns_allows = start.elapsed().as_nanos() as f64 / total as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        for c in &checks {
            black_box(acl.check(black_box(&c.identity), c.access, black_box(&c.topic)));
        }
    }
    let ns_check = start.elapsed().as_nanos() as f64 / total as f64;
    BenchFigures {
        rules: acl.rules().len(),
        checks: total,
        ns_allows,
        ns_check,
        allowed_share: allowed as f64 / total as f64,
    }
}

/// Nanoseconds per allocation-free check on an ACL of about `rules` rules.
pub fn bench_acl_checks(rules: usize) -> f64 {
    bench_figures(rules).ns_allows
}

/// The table printed by `cargo bench --bench acl`.
pub fn bench_table(sizes: &[usize]) -> String {
    let mut out = String::from(
        "ACL check cost (mean over a fixed mix of allowed/denied write, read, subscribe)\n",
    );
    out.push_str(&format!(
        "{:>9} {:>10} {:>14} {:>14} {:>8}\n",
        "rules", "checks", "allows() ns", "check() ns", "allowed"
    ));
    for &size in sizes {
        let f = bench_figures(size);
        out.push_str(&format!(
            "{:>9} {:>10} {:>14.1} {:>14.1} {:>7.0}%\n",
            f.rules,
            f.checks,
            f.ns_allows,
            f.ns_check,
            f.allowed_share * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_mix_has_the_expected_decisions() {
        let (acl, checks) = bench_setup(10);
        let expected = [true, false, true, true, false, true, false, false];
        for (c, want) in checks.iter().zip(expected.iter().cycle()) {
            assert_eq!(
                acl.allows(&c.identity, c.access, &c.topic),
                *want,
                "{:?} {}",
                c.access,
                c.topic
            );
        }
    }
}
