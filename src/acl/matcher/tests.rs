//! Unit tests of the compiled ACL matcher.

use super::*;
use crate::topic::walk::on_small_stack;

fn user(name: &str) -> Identity {
    Identity {
        username: Some(name.into()),
        client_id: format!("{name}-client"),
        via: AuthMethod::Password,
        listener: "test".into(),
        jwt: None,
    }
}

fn acl(text: &str) -> Acl {
    Acl::parse("acl", text, &[]).expect("valid acl")
}

#[test]
fn earliest_deny_names_the_decision() {
    let a = acl("user u\ntopic read a/#\ntopic deny a/b\ntopic deny a/+\n");
    let v = a.decide(&user("u"), Access::Read, "a/b");
    assert_eq!(
        v,
        Verdict {
            allowed: false,
            rule: Some(RuleId(1))
        }
    );
    let v = a.decide(&user("u"), Access::Read, "a/c/d");
    assert_eq!(
        v,
        Verdict {
            allowed: true,
            rule: Some(RuleId(0))
        }
    );
}

#[test]
fn stats_count_rules_by_scope() {
    let a = acl("topic read p\nuser a\ntopic read x\nuser b\ntopic read y\npattern read %u\n");
    assert_eq!(
        a.stats(),
        AclStats {
            rules: 4,
            users: 2,
            anonymous_rules: 1,
            pattern_rules: 1
        }
    );
}

#[test]
fn hash_matches_the_parent_level() {
    let a = acl("user u\ntopic read a/#\n");
    assert!(a.decide(&user("u"), Access::Read, "a").allowed);
    assert!(a.decide(&user("u"), Access::Subscribe, "a").allowed);
    assert!(!a.decide(&user("u"), Access::Read, "ab").allowed);
}

#[test]
fn plus_hash_at_root_covers_a_hash_subscription() {
    let a = acl("user u\ntopic read +/#\n");
    assert!(a.decide(&user("u"), Access::Subscribe, "#").allowed);
    let a = acl("user u\ntopic read x/+/#\n");
    assert!(!a.decide(&user("u"), Access::Subscribe, "x/#").allowed);
}

#[test]
fn many_literal_children_switch_to_a_map_and_still_match() {
    let text: String = (0..20)
        .map(|i| format!("user u\ntopic read t{i}/x\n"))
        .collect();
    let a = acl(&text);
    for i in 0..20 {
        let v = a.decide(&user("u"), Access::Read, &format!("t{i}/x"));
        assert_eq!(
            v,
            Verdict {
                allowed: true,
                rule: Some(RuleId(i))
            }
        );
    }
    assert!(!a.decide(&user("u"), Access::Read, "t20/x").allowed);
    assert!(!a.decide(&user("u"), Access::Read, "t1/y").allowed);
}

#[test]
fn deepest_rules_and_topics_match_cover_and_drop_on_a_small_stack() {
    use super::super::rules::MAX_RULE_LEVELS;
    on_small_stack(|| {
        let below = MAX_RULE_LEVELS - 1;
        let read_hash = "a/".repeat(below) + "#";
        let deny_slashes = "/".repeat(below);
        let write_plus = "+/".repeat(below) + "+";
        let pattern = "+/".repeat(below - 1) + "x/%u";
        let text = format!(
            "user u\ntopic read {read_hash}\ntopic deny {deny_slashes}\ntopic write {write_plus}\npattern read {pattern}\n"
        );
        let a = acl(&text);
        assert_eq!(a.stats().rules, 4);
        let u = user("u");
        let deep_topic = "a/".repeat(32_000) + "a";
        let rule_deep_topic = "a/".repeat(below) + "a";
        let pattern_topic = "b/".repeat(below - 1) + "x/u";
        let checks = [
            (Access::Read, deep_topic.clone(), true),
            (Access::Write, deep_topic.clone(), false),
            (Access::Subscribe, "a/".repeat(32_000) + "#", true),
            (Access::Subscribe, "a/".repeat(32_000) + "+", true),
            (Access::Read, deny_slashes.clone(), false),
            (Access::Write, deny_slashes.clone(), false),
            (Access::Subscribe, deny_slashes.clone(), false),
            (Access::Subscribe, "/".repeat(65_000), false),
            (Access::Write, rule_deep_topic.clone(), true),
            (Access::Read, rule_deep_topic, true),
            (Access::Read, pattern_topic.clone(), true),
            (Access::Subscribe, pattern_topic, true),
            (Access::Subscribe, "+/".repeat(below) + "+", false),
        ];
        for (access, topic, allowed) in &checks {
            let verdict = a.decide(&u, *access, topic);
            assert_eq!(verdict.allowed, *allowed, "{access:?} {}", topic.len());
            assert_eq!(verdict, a.decide_linear(&u, *access, topic));
        }
        assert!(format!("{a:?}").contains("Node"), "Debug does not recurse");
        drop(a);
    });
}

#[test]
fn fx_hasher_distinguishes_lengths() {
    let h = |s: &str| {
        let mut hasher = FxBuild.build_hasher();
        hasher.write(s.as_bytes());
        hasher.finish()
    };
    assert_ne!(h("a"), h("a\0"));
    assert_ne!(h("sensor_000001"), h("sensor_000002"));
}

#[test]
fn shared_subscription_prefix_is_stripped_or_rejected() {
    assert_eq!(strip_shared("$share/g/a/b"), Some("a/b"));
    assert_eq!(strip_shared("a/b"), Some("a/b"));
    assert_eq!(strip_shared("$share/g"), None);
    assert_eq!(strip_shared("$share//a"), None);
    assert_eq!(strip_shared("$share/g/"), None);
    assert_eq!(strip_shared("$share/g/$share/h/a"), None);
}
