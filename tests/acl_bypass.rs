//! ACL bypass attempts: wide subscriptions, `$SYS`, shared subscriptions,
//! hostile usernames and client ids against `%u`/`%c` patterns, case and
//! trailing-slash variants, empty levels, overlapping allow and deny.

use proptest::prelude::*;
use tollgate::acl::{Access, Acl, Authorizer};
use tollgate::auth::{AuthMethod, Identity};

fn id(username: Option<&str>, client_id: &str, via: AuthMethod) -> Identity {
    Identity {
        username: username.map(str::to_string),
        client_id: client_id.into(),
        via,
        listener: "l".into(),
        jwt: None,
    }
}

fn user(name: &str) -> Identity {
    id(Some(name), "c1", AuthMethod::Password)
}

fn acl(text: &str) -> Acl {
    Acl::parse("acl", text, &[]).expect("valid acl")
}

fn allows(acl: &Acl, who: &Identity, access: Access, topic: &str) -> bool {
    let fast = acl.allows(who, access, topic);
    assert_eq!(fast, acl.check(who, access, topic).is_allowed());
    assert_eq!(
        acl.decide(who, access, topic),
        acl.decide_linear(who, access, topic),
        "{access:?} {topic}"
    );
    fast
}

#[test]
fn wide_subscriptions_are_refused_to_a_subtree_reader() {
    let a = acl("user dash\ntopic read sensors/#\n");
    let dash = user("dash");
    for filter in [
        "#",
        "+/#",
        "+",
        "+/+",
        "$share/g/#",
        "$share/g/+/#",
        "$SYS/#",
        "$share/g/$SYS/#",
        "sensors",
    ] {
        // `sensors` itself is covered (`#` includes the parent level); everything else is wider.
        assert_eq!(
            allows(&a, &dash, Access::Subscribe, filter),
            filter == "sensors",
            "{filter}"
        );
    }
    for filter in [
        "sensors/#",
        "sensors/+",
        "sensors/+/temp",
        "$share/g/sensors/#",
        "sensors/a/b/#",
    ] {
        assert!(allows(&a, &dash, Access::Subscribe, filter), "{filter}");
    }
}

#[test]
fn broken_shared_subscription_syntax_is_denied() {
    let a = acl("user u\ntopic read #\n");
    for filter in [
        "$share/g",
        "$share//a",
        "$share/g/",
        "$share/+/a",
        "a/#/b",
        "a+",
        "",
        "a\0b",
    ] {
        assert!(
            !allows(&a, &user("u"), Access::Subscribe, filter),
            "{filter:?}"
        );
    }
}

#[test]
fn sys_topics_need_rules_that_start_with_dollar() {
    let a =
        acl("user admin\ntopic readwrite #\ntopic read +/broker/#\nuser ops\ntopic read $SYS/#\n");
    let admin = user("admin");
    assert!(!allows(&a, &admin, Access::Read, "$SYS/broker/uptime"));
    assert!(!allows(&a, &admin, Access::Subscribe, "$SYS/#"));
    assert!(!allows(&a, &admin, Access::Subscribe, "$SYS/broker/uptime"));
    assert!(!allows(&a, &admin, Access::Write, "$SYS/broker/uptime"));
    assert!(
        allows(&a, &admin, Access::Subscribe, "#"),
        "`#` is fine: it never delivers $ topics"
    );
    let ops = user("ops");
    assert!(allows(&a, &ops, Access::Read, "$SYS/broker/uptime"));
    assert!(allows(&a, &ops, Access::Subscribe, "$SYS/#"));
    assert!(allows(
        &a,
        &ops,
        Access::Subscribe,
        "$share/g/$SYS/broker/+"
    ));
    assert!(!allows(&a, &ops, Access::Write, "$SYS/broker/uptime"));
    assert!(!allows(&a, &ops, Access::Read, "$sys/broker/uptime"));
}

#[test]
fn hostile_usernames_never_match_user_patterns() {
    let a = acl("pattern readwrite devices/%u/#\npattern read dev-%u/x\n");
    assert!(allows(
        &a,
        &user("alice"),
        Access::Write,
        "devices/alice/temp"
    ));
    assert!(allows(
        &a,
        &user("alice"),
        Access::Subscribe,
        "devices/alice/#"
    ));
    assert!(allows(&a, &user("alice"), Access::Read, "dev-alice/x"));
    assert!(!allows(
        &a,
        &user("alice"),
        Access::Write,
        "devices/bob/temp"
    ));
    assert!(!allows(&a, &user("alice"), Access::Read, "dev-alicex/x"));
    for name in ["#", "+", "a/b", "a\0b", "", "alice/#", "a+b"] {
        let hostile = user(name);
        for (access, topic) in [
            (Access::Write, "devices/bob/temp"),
            (Access::Write, "devices/a/b/temp"),
            (Access::Write, "devices/#/temp"),
            (Access::Subscribe, "devices/#"),
            (Access::Subscribe, "devices/+/#"),
            (Access::Subscribe, "devices/a/b/#"),
            (Access::Subscribe, "devices/alice/#"),
            (Access::Read, "dev-a/b/x"),
        ] {
            assert!(
                !allows(&a, &hostile, access, topic),
                "username {name:?} {access:?} {topic}"
            );
        }
    }
}

#[test]
fn a_username_starting_with_dollar_does_not_open_sys_topics_through_patterns() {
    let a = acl("pattern read %u/#\npattern read x/%u\n");
    let sys = user("$SYS");
    assert!(!allows(&a, &sys, Access::Read, "$SYS/broker/uptime"));
    assert!(!allows(&a, &sys, Access::Subscribe, "$SYS/#"));
    assert!(
        allows(&a, &sys, Access::Read, "x/$SYS"),
        "inside a topic `$` is an ordinary character"
    );
    assert!(allows(&a, &user("bob"), Access::Read, "bob/x"));
}

#[test]
fn placeholder_text_in_an_identity_is_never_substituted_again() {
    let a = acl("pattern read in/%u/%c\n");
    let tricky = id(Some("%c"), "%u", AuthMethod::Password);
    assert!(allows(&a, &tricky, Access::Read, "in/%c/%u"));
    assert!(!allows(&a, &tricky, Access::Read, "in/%u/%c"));
}

#[test]
fn hostile_client_ids_never_match_client_patterns() {
    let a = acl("pattern readwrite clients/%c/#\n");
    let ok = id(Some("u"), "plc7", AuthMethod::Certificate);
    assert!(allows(&a, &ok, Access::Write, "clients/plc7/out"));
    for client in ["#", "+", "x/y", "", "p\0"] {
        let hostile = id(Some("u"), client, AuthMethod::Certificate);
        assert!(
            !allows(&a, &hostile, Access::Subscribe, "clients/#"),
            "{client:?}"
        );
        assert!(
            !allows(&a, &hostile, Access::Write, "clients/x/y/out"),
            "{client:?}"
        );
        assert!(
            !allows(&a, &hostile, Access::Write, "clients/plc7/out"),
            "{client:?}"
        );
    }
}

#[test]
fn an_identity_with_a_hostile_value_gets_no_pattern_grant_at_all() {
    let a = acl("user a/b\ntopic read own/#\npattern read public/#\n");
    let hostile = user("a/b");
    assert!(
        allows(&a, &hostile, Access::Read, "own/x"),
        "its own user block still applies"
    );
    assert!(!allows(&a, &hostile, Access::Read, "public/x"));
    assert!(allows(&a, &user("carol"), Access::Read, "public/x"));
}

#[test]
fn anonymous_clients_never_match_user_patterns_but_deny_patterns_still_bite() {
    let a = acl(
        "topic read devices/#\npattern readwrite devices/%u/#\npattern write clients/%c/#\npattern deny devices/%u/secret\n",
    );
    let anon = id(None, "anon1", AuthMethod::Anonymous);
    let anon_claiming = id(Some("alice"), "anon1", AuthMethod::Anonymous);
    for who in [&anon, &anon_claiming] {
        assert!(allows(&a, who, Access::Read, "devices/alice/temp"));
        assert!(!allows(&a, who, Access::Write, "devices/alice/temp"));
        // The unfillable `%u` in a deny pattern counts as `+`.
        assert!(!allows(&a, who, Access::Read, "devices/alice/secret"));
        assert!(!allows(&a, who, Access::Subscribe, "devices/+/secret"));
        // `%c` patterns do apply to anonymous clients (mosquitto does the same).
        assert!(allows(&a, who, Access::Write, "clients/anon1/x"));
        assert!(!allows(&a, who, Access::Write, "clients/anon2/x"));
    }
    let alice = user("alice");
    assert!(!allows(&a, &alice, Access::Read, "devices/alice/secret"));
    assert!(!allows(&a, &alice, Access::Write, "devices/alice/secret"));
    assert!(allows(&a, &alice, Access::Write, "devices/alice/temp"));
}

#[test]
fn topic_case_trailing_slash_and_empty_levels_are_distinct() {
    let a = acl(
        "user u\ntopic read sensors/001/temp\ntopic read a//b\ntopic write x/y/\ntopic read p/+\n",
    );
    let u = user("u");
    assert!(allows(&a, &u, Access::Read, "sensors/001/temp"));
    for topic in [
        "Sensors/001/temp",
        "SENSORS/001/TEMP",
        "sensors/001/temp/",
        "/sensors/001/temp",
        "sensors//001/temp",
        "sensors/001/temp ",
    ] {
        assert!(!allows(&a, &u, Access::Read, topic), "{topic:?}");
        assert!(!allows(&a, &u, Access::Subscribe, topic), "{topic:?}");
    }
    assert!(allows(&a, &u, Access::Read, "a//b"));
    assert!(!allows(&a, &u, Access::Read, "a/b"));
    assert!(allows(&a, &u, Access::Write, "x/y/"));
    assert!(!allows(&a, &u, Access::Write, "x/y"));
    // `+` matches one level, including an empty one, but never two.
    assert!(allows(&a, &u, Access::Read, "p/"));
    assert!(!allows(&a, &u, Access::Read, "p"));
    assert!(!allows(&a, &u, Access::Read, "p/q/r"));
    assert!(
        !allows(&a, &user("U"), Access::Read, "sensors/001/temp"),
        "usernames are case-sensitive"
    );
}

#[test]
fn overlapping_allow_and_deny_deny_wins_whatever_the_order() {
    for text in [
        "user u\ntopic read a/#\ntopic deny a/b/#\n",
        "user u\ntopic deny a/b/#\ntopic read a/#\n",
        "user u\ntopic read a/#\npattern deny a/b/#\n",
    ] {
        let a = acl(text);
        let u = user("u");
        assert!(allows(&a, &u, Access::Read, "a/c"), "{text}");
        assert!(!allows(&a, &u, Access::Read, "a/b"), "{text}");
        assert!(!allows(&a, &u, Access::Read, "a/b/c"), "{text}");
        // Partial overlap: the subscription stands, deliveries under a/b are refused on Read.
        assert!(allows(&a, &u, Access::Subscribe, "a/#"), "{text}");
        assert!(allows(&a, &u, Access::Subscribe, "a/+"), "{text}");
        assert!(!allows(&a, &u, Access::Subscribe, "a/b/#"), "{text}");
        assert!(!allows(&a, &u, Access::Subscribe, "a/b/+"), "{text}");
        assert!(!allows(&a, &u, Access::Subscribe, "a/b"), "{text}");
    }
    let a = acl("user u\ntopic readwrite a/#\ntopic deny a/+/secret\n");
    let u = user("u");
    assert!(!allows(&a, &u, Access::Write, "a/x/secret"));
    assert!(allows(&a, &u, Access::Write, "a/x/public"));
    assert!(!allows(&a, &u, Access::Subscribe, "a/+/secret"));
    assert!(!allows(&a, &u, Access::Subscribe, "a/x/secret"));
}

#[test]
fn write_needs_a_write_grant_and_a_concrete_topic() {
    let a = acl("user u\ntopic read r/#\ntopic write w/#\ntopic r2/#\n");
    let u = user("u");
    assert!(!allows(&a, &u, Access::Write, "r/x"));
    assert!(allows(&a, &u, Access::Write, "w/x"));
    assert!(!allows(&a, &u, Access::Read, "w/x"));
    assert!(!allows(&a, &u, Access::Subscribe, "w/#"));
    assert!(
        allows(&a, &u, Access::Write, "r2/x"),
        "no access word = readwrite"
    );
    assert!(allows(&a, &u, Access::Read, "r2/x"));
    for topic in ["w/+", "w/#", "w/x\0", ""] {
        assert!(!allows(&a, &u, Access::Write, topic), "{topic:?}");
    }
}

#[test]
fn subscribe_needs_one_rule_covering_the_whole_filter() {
    let a = acl("user u\ntopic read s/+/temp\ntopic read s/1/#\ntopic read s/2/hum\n");
    let u = user("u");
    assert!(allows(&a, &u, Access::Subscribe, "s/+/temp"));
    assert!(allows(&a, &u, Access::Subscribe, "s/9/temp"));
    assert!(allows(&a, &u, Access::Subscribe, "s/1/+/x"));
    assert!(
        !allows(&a, &u, Access::Subscribe, "s/+/+"),
        "s/+/temp does not cover s/+/+"
    );
    assert!(!allows(&a, &u, Access::Subscribe, "s/#"));
    assert!(!allows(&a, &u, Access::Subscribe, "s/+/temp/#"));
    assert!(
        !allows(&a, &u, Access::Subscribe, "s/2/+"),
        "union of grants is not coverage"
    );
}

// ---- properties: the tries agree with the linear reference, and coverage is sound ----

const RULE_LEVELS: &[&str] = &["a", "b", "", "A", "$SYS", "+", "%u", "%c", "x%uy", "alice"];
const TOPIC_LEVELS: &[&str] = &["a", "b", "", "A", "$SYS", "alice", "bob", "xalicey", "c1"];

fn rule_line() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["user alice", "user bob", "topic", "pattern"]),
        prop::sample::select(vec!["read ", "write ", "readwrite ", "deny ", ""]),
        prop::collection::vec(prop::sample::select(RULE_LEVELS.to_vec()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(kind, access, levels, hash)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str("/#");
            }
            if filter.is_empty() {
                filter.push('a');
            }
            if kind.starts_with("user") {
                format!("{kind}\ntopic {access}{filter}")
            } else {
                format!("{kind} {access}{filter}")
            }
        })
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS.to_vec()), 1..5)
        .prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "", "$SYS", "alice", "+"]),
            1..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(l, hash)| {
            let mut f = l.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
}

fn identities() -> Vec<Identity> {
    vec![
        id(Some("alice"), "c1", AuthMethod::Password),
        id(Some("bob"), "alice", AuthMethod::Certificate),
        id(None, "c1", AuthMethod::Anonymous),
        id(Some("alice"), "c1", AuthMethod::Anonymous),
        id(Some("a/b"), "c1", AuthMethod::Password),
        id(Some("alice"), "+", AuthMethod::Password),
        id(Some("carol"), "", AuthMethod::Internal),
    ]
}

/// Concrete topics a filter matches (wildcards filled from a small alphabet).
fn topics_of(filter: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for (i, level) in filter.split('/').enumerate() {
        let choices: Vec<String> = match level {
            "+" => ["a", "zz", ""].iter().map(|s| s.to_string()).collect(),
            "#" => vec!["\u{1}".into(), "a".into(), "a/zz".into(), "".into()],
            l => vec![l.to_string()],
        };
        let mut next = Vec::new();
        for prefix in &out {
            for c in &choices {
                next.push(match (i, c.as_str()) {
                    (0, "\u{1}") => continue, // a bare `#` has no parent level
                    (_, "\u{1}") => prefix.clone(),
                    (0, _) => c.clone(),
                    _ => format!("{prefix}/{c}"),
                });
            }
        }
        out = next;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

    #[test]
    fn trie_decisions_equal_the_linear_reference(lines in prop::collection::vec(rule_line(), 1..12), topics in prop::collection::vec(topic(), 1..6), filters in prop::collection::vec(filter(), 1..6)) {
        let text = lines.join("\n");
        let a = Acl::parse("p", &text, &[]).expect("generated rules are valid");
        for who in identities() {
            for t in &topics {
                for access in [Access::Read, Access::Write] {
                    prop_assert_eq!(a.decide(&who, access, t), a.decide_linear(&who, access, t), "{:?} {:?} {}\n{}", who.username, access, t, text);
                }
            }
            for f in filters.iter().chain(topics.iter()) {
                prop_assert_eq!(a.decide(&who, Access::Subscribe, f), a.decide_linear(&who, Access::Subscribe, f), "{:?} sub {}\n{}", who.username, f, text);
            }
        }
    }

    #[test]
    fn a_granted_subscription_only_receives_what_its_rule_matches(lines in prop::collection::vec(rule_line(), 1..12), filters in prop::collection::vec(filter(), 1..6)) {
        let text = lines.join("\n");
        let a = Acl::parse("p", &text, &[]).expect("generated rules are valid");
        for who in identities() {
            for f in &filters {
                let v = a.decide(&who, Access::Subscribe, f);
                for t in topics_of(f) {
                    if t.is_empty() || t.starts_with('$') != f.starts_with('$') {
                        continue; // wildcards at the first level never deliver `$` topics
                    }
                    let read = a.matching_rules(&who, Access::Read, &t);
                    match (v.allowed, v.rule) {
                        (true, Some(rule)) => prop_assert!(read.iter().any(|m| m.rule == rule && !m.deny_only), "{:?} sub {} granted by {:?} but it does not match {}\n{}", who.username, f, rule, t, text),
                        (false, Some(rule)) => prop_assert!(!a.decide(&who, Access::Read, &t).allowed, "{:?} sub {} denied by {:?} but {} is readable\n{}", who.username, f, rule, t, text),
                        _ => {}
                    }
                }
            }
        }
    }
}
