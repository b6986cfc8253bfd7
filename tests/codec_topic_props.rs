//! Property tests for `tollgate::topic` against brute force: `matches` against a
//! straightforward reference matcher, and `filter_covers` (which ACL subscribe
//! checks rely on: a false "covers" would grant more than the rule says) against
//! every topic of a small universe, in both directions (sound and complete).

use proptest::prelude::*;
use tollgate::topic;

/// Reference: MQTT matching written level by level, recursively.
fn reference_matches(filter: &[&str], topic: &[&str], first: bool) -> bool {
    if first && topic.first().is_some_and(|t| t.starts_with('$')) {
        if let Some(f) = filter.first() {
            if *f == "+" || *f == "#" {
                return false;
            }
        }
    }
    match (filter.first(), topic.first()) {
        (Some(&"#"), _) => true,
        (Some(&"+"), Some(_)) => reference_matches(&filter[1..], &topic[1..], false),
        (Some(f), Some(t)) => f == t && reference_matches(&filter[1..], &topic[1..], false),
        (None, None) => true,
        _ => false,
    }
}

fn filter() -> impl Strategy<Value = String> {
    let level = proptest::sample::select(vec!["a", "b", "+", "$a", ""]);
    (proptest::collection::vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        f
    })
}

fn any_filter() -> impl Strategy<Value = String> {
    prop_oneof![filter(), Just("#".to_owned()), Just("+/#".to_owned())]
}

/// Every topic up to five levels over an alphabet with a fresh level (`z`), an
/// empty level and a `$` level: rich enough to witness every non-cover.
fn universe() -> Vec<String> {
    let alphabet = ["a", "b", "z", "$a", ""];
    let mut all: Vec<Vec<&str>> = alphabet.iter().map(|l| vec![*l]).collect();
    let mut frontier = all.clone();
    for _ in 1..5 {
        let mut next = Vec::new();
        for t in &frontier {
            for l in alphabet {
                let mut t = t.clone();
                t.push(l);
                next.push(t);
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all.into_iter().map(|levels| levels.join("/")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matches_agrees_with_the_reference(f in any_filter(), t in "[ab$]{0,2}(/[ab$]{0,2}){0,4}") {
        prop_assume!(topic::validate_topic_filter(&f).is_ok());
        let fl: Vec<&str> = f.split('/').collect();
        let tl: Vec<&str> = t.split('/').collect();
        prop_assert_eq!(topic::matches(&f, &t), reference_matches(&fl, &tl, true), "{} vs {}", f, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn filter_covers_is_exact_on_a_topic_universe(outer in any_filter(), inner in any_filter()) {
        prop_assume!(topic::validate_topic_filter(&outer).is_ok() && topic::validate_topic_filter(&inner).is_ok());
        let universe = universe();
        let witness = universe
            .iter()
            .find(|t| topic::matches(&inner, t) && !topic::matches(&outer, t));
        let covers = topic::filter_covers(&outer, &inner);
        match witness {
            Some(t) => prop_assert!(!covers, "{} claims to cover {} but misses {}", outer, inner, t),
            None => prop_assert!(covers, "{} covers {} on every topic, but filter_covers says no", outer, inner),
        }
    }
}
