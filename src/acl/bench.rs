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
    /// Nanoseconds per [`Authorizer::allows`] (allocation-free), 10th percentile of samples.
    pub ns_allows: f64,
    /// The same, median of samples (includes time lost to other processes).
    pub ns_allows_median: f64,
    /// Nanoseconds per [`Authorizer::check`] (also copies the rule label), 10th percentile.
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
        jwt: None,
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

/// Time `f` over short samples (one pass over `checks`, `repeat` times each,
/// tens of microseconds) and return the 10th-percentile and median ns per
/// check. Short samples and a low percentile keep other processes on a shared
/// machine from inflating the figure; the median shows what contention costs.
fn time_checks(
    checks: &[BenchCheck],
    repeat: usize,
    mut f: impl FnMut(&BenchCheck) -> bool,
) -> (f64, f64, usize) {
    let per_sample = repeat * checks.len();
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut allowed = 0usize;
    for _ in 0..SAMPLES {
        let start = Instant::now();
        for _ in 0..repeat {
            for c in checks {
                allowed += usize::from(f(black_box(c)));
            }
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_sample as f64);
    }
    samples.sort_by(f64::total_cmp);
    (samples[SAMPLES / 10], samples[SAMPLES / 2], allowed)
}

const SAMPLES: usize = 400;

/// Time the check mix on an ACL of about `rules` rules.
pub fn bench_figures(rules: usize) -> BenchFigures {
    let (acl, checks) = bench_setup(rules);
    let (ns_allows, ns_allows_median, allowed) =
        time_checks(&checks, 1, |c| acl.allows(&c.identity, c.access, &c.topic));
    let (ns_check, _, _) = time_checks(&checks, 1, |c| {
        black_box(acl.check(&c.identity, c.access, &c.topic)).is_allowed()
    });
    BenchFigures {
        rules: acl.rules().len(),
        checks: SAMPLES * checks.len(),
        ns_allows,
        ns_allows_median,
        ns_check,
        allowed_share: allowed as f64 / (SAMPLES * checks.len()) as f64,
    }
}

/// ns (10th percentile) of `allows()` per kind of check in the mix (the first device's eight checks).
pub fn bench_breakdown(rules: usize) -> Vec<(String, f64)> {
    let (acl, checks) = bench_setup(rules);
    checks
        .iter()
        .take(8)
        .map(|c| {
            let one = std::slice::from_ref(c);
            let (ns, _, allowed) =
                time_checks(one, 64, |c| acl.allows(&c.identity, c.access, &c.topic));
            let verdict = if allowed > 0 { "allow" } else { "deny" };
            let who = c.identity.username.clone().unwrap_or_default();
            (format!("{who} {:?} {} ({verdict})", c.access, c.topic), ns)
        })
        .collect()
}

/// Nanoseconds per allocation-free check on an ACL of about `rules` rules.
pub fn bench_acl_checks(rules: usize) -> f64 {
    bench_figures(rules).ns_allows
}

/// The table printed by `cargo bench --bench acl`.
pub fn bench_table(sizes: &[usize]) -> String {
    let mut out = String::from(
        "ACL check cost, ns per check over a fixed mix of allowed/denied write, read, subscribe\n\
         (10th percentile and median of 400 short samples)\n",
    );
    out.push_str(&format!(
        "{:>9} {:>10} {:>16} {:>16} {:>16} {:>8}\n",
        "rules", "checks", "allows() p10", "allows() median", "check() p10", "allowed"
    ));
    for &size in sizes {
        let f = bench_figures(size);
        out.push_str(&format!(
            "{:>9} {:>10} {:>16.1} {:>16.1} {:>16.1} {:>7.0}%\n",
            f.rules,
            f.checks,
            f.ns_allows,
            f.ns_allows_median,
            f.ns_check,
            f.allowed_share * 100.0
        ));
    }
    for &size in sizes.first().into_iter().chain(sizes.last()) {
        out.push_str(&format!(
            "per check at {size} rules (allows() ns p10, one check repeated):\n"
        ));
        for (what, ns) in bench_breakdown(size) {
            out.push_str(&format!("  {ns:>7.1}  {what}\n"));
        }
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
