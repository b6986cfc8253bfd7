//! ACL check cost at 10, 1,000 and 100,000 rules: `cargo bench --bench acl`.
//! Prints a table; the goal is a flat line at or below 1 µs per check.

fn main() {
    let sizes = [10, 1_000, 100_000];
    print!("{}", tollgate::acl::bench::bench_table(&sizes));
}
