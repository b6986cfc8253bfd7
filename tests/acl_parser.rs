//! Loading ACL rules: mosquitto acl_file syntax from real files, every problem
//! reported with file:line, inline TOML rules merged, no panic on any input.

use std::io::Write;

use proptest::prelude::*;
use tollgate::acl::{
    fuzz_acl_file, Access, AccessSpec, Acl, AclConfig, AclDecision, AclError, Authorizer,
    InlineRule,
};
use tollgate::auth::{AuthMethod, Identity};

fn user(name: &str) -> Identity {
    Identity {
        username: Some(name.into()),
        client_id: "c".into(),
        via: AuthMethod::Password,
        listener: "l".into(),
        jwt: None,
    }
}

fn file_with(text: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text).expect("write temp file");
    f
}

#[test]
fn loads_a_mosquitto_acl_file_with_comments_blank_lines_and_indentation() {
    let f = file_with(
        b"# comment\n\n   # indented comment\ntopic read public/#\r\n\tuser sensor_001\r\n  topic write sensors/001/#\n\ttopic read   commands/001  \npattern read devices/%c/config\n",
    );
    let acl = Acl::load(Some(f.path()), &[]).expect("valid file");
    assert_eq!(acl.rules().len(), 4);
    let s = user("sensor_001");
    assert!(acl.allows(&s, Access::Write, "sensors/001/t"));
    assert!(acl.allows(&s, Access::Read, "commands/001"));
    let anon = Identity {
        username: None,
        client_id: "a".into(),
        via: AuthMethod::Anonymous,
        listener: "l".into(),
        jwt: None,
    };
    assert!(acl.allows(&anon, Access::Read, "public/x"));
    assert!(
        !acl.allows(&s, Access::Read, "public/x"),
        "anonymous rules are not for users"
    );
    let name = f.path().display().to_string();
    assert_eq!(
        acl.check(&s, Access::Read, "commands/001"),
        AclDecision::Allow {
            rule: Some(format!(
                "{name}:7: topic read commands/001 (user sensor_001)"
            ))
        }
    );
}

#[test]
fn reports_every_problem_with_file_and_line() {
    let f = file_with(b"user ok\ntopic read fine/#\ntopic read a/#/b\nuser\ntopic bogus+/x\nacl_file x\ntopic write\npattern deny a\xff\ntopic read \x00x\n");
    let err = Acl::load(Some(f.path()), &[]).expect_err("broken file");
    let AclError::Invalid { problems } = &err else {
        panic!("wrong error {err:?}")
    };
    let name = f.path().display().to_string();
    let locations: Vec<_> = problems.iter().map(|p| p.location.clone()).collect();
    let want: Vec<_> = [3, 4, 5, 6, 7, 8, 9]
        .iter()
        .map(|l| format!("{name}:{l}"))
        .collect();
    assert_eq!(locations, want);
    let text = err.to_string();
    assert!(
        text.starts_with("7 problem(s) in the ACL rules, nothing was loaded:"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{name}:6: unknown keyword `acl_file`")),
        "{text}"
    );
    assert!(text.contains("must be the last level"), "{text}");
    assert!(text.contains("not valid UTF-8"), "{text}");
}

#[test]
fn file_and_inline_problems_are_reported_together() {
    let f = file_with(b"topic read a/#/b\n");
    let inline = [InlineRule {
        user: None,
        pattern: true,
        access: AccessSpec::Read,
        topic: "x/#/y".into(),
    }];
    let err = Acl::load(Some(f.path()), &inline).expect_err("broken");
    let AclError::Invalid { problems } = err else {
        panic!("wrong error")
    };
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[1].location, "acl.rule[0]");
}

#[test]
fn missing_file_says_which_and_what_to_check() {
    let err = Acl::load(Some(std::path::Path::new("/nonexistent/tollgate/acl")), &[])
        .expect_err("missing");
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/tollgate/acl") && text.contains("[acl] file"),
        "{text}"
    );
}

#[test]
fn inline_rules_merge_with_the_file_and_name_their_index() {
    let f = file_with(b"user sensor_001\ntopic write sensors/001/#\n");
    let config: AclConfig = toml::from_str(
        r#"
        [[rule]]
        user = "sensor_001"
        access = "read"
        topic = "commands/001"

        [[rule]]
        pattern = true
        access = "read"
        topic = "commands/%u/#"

        [[rule]]
        user = "sensor_001"
        access = "deny"
        topic = "sensors/001/secret"
        "#,
    )
    .expect("valid toml");
    let acl = Acl::load(Some(f.path()), &config.rule).expect("valid rules");
    let s = user("sensor_001");
    assert!(acl.allows(&s, Access::Write, "sensors/001/temp"));
    assert_eq!(
        acl.check(&s, Access::Read, "commands/001"),
        AclDecision::Allow {
            rule: Some("acl.rule[0]: topic read commands/001 (user sensor_001)".into())
        }
    );
    assert_eq!(
        acl.check(&s, Access::Subscribe, "commands/sensor_001/#"),
        AclDecision::Allow {
            rule: Some("acl.rule[1]: pattern read commands/%u/#".into())
        }
    );
    assert_eq!(
        acl.check(&s, Access::Write, "sensors/001/secret"),
        AclDecision::Deny {
            rule: Some("acl.rule[2]: topic deny sensors/001/secret (user sensor_001)".into())
        }
    );
    let only_inline = Acl::from_inline(&config.rule).expect("valid");
    assert!(!only_inline.allows(&s, Access::Write, "sensors/001/temp"));
}

#[test]
fn an_empty_acl_denies_everything_and_says_so() {
    let acl = Acl::parse("acl", "# nothing\n", &[]).expect("valid");
    assert!(!acl.allows(&user("admin"), Access::Read, "a"));
    assert!(acl
        .warnings()
        .iter()
        .any(|w| w.contains("every publish, subscribe and delivery is denied")));
}

#[test]
fn fuzz_entry_point_survives_hostile_inputs() {
    for input in [
        &b""[..],
        b"\xff\xfe\x00",
        b"user\nuser \x00\ntopic\npattern deny\npattern %u%c%u/#/+\n",
        b"pattern read %u/%c/+/#\ntopic read $SYS/#\nuser #\ntopic #\n",
        b"topic read a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p\npattern deny +/%u\r\r\n",
    ] {
        fuzz_acl_file(input);
    }
    let deep = format!("user u\ntopic read {}\n", vec!["+"; 999].join("/"));
    fuzz_acl_file(deep.as_bytes());
    let too_deep = format!("topic read {}\n", vec!["a"; 1001].join("/"));
    assert!(Acl::parse("acl", &too_deep, &[]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzz_acl_file(&data);
    }

    #[test]
    fn parser_never_panics_on_acl_shaped_lines(lines in prop::collection::vec(
        "(user|topic|pattern|TOPIC|#| )? ?(read|write|readwrite|deny|READ)? ?[a-z%uc+#/$ \\x00é]{0,12}", 0..12)) {
        fuzz_acl_file(lines.join("\n").as_bytes());
    }
}
