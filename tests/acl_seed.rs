//! The seeds' deployment (admin, sensor_001, dashboard, default deny) checked
//! for every identity × access × topic combination through the public API.

mod support;

use support::fixtures::{seed_acl_without_trailing_deny, SEED_ACL};
use tollgate::acl::{Access, Acl, AclDecision, Authorizer};
use tollgate::auth::{AuthMethod, Identity};

/// What the seed means: the default deny moved where it applies to anonymous
/// clients instead of the dashboard (tollgate denies anything unlisted anyway).
fn intended_acl() -> String {
    format!(
        "# Default: deny everything (anonymous clients)\ntopic deny #\n\n{}",
        seed_acl_without_trailing_deny()
    )
}

fn user(name: &str) -> Identity {
    Identity {
        username: Some(name.into()),
        client_id: format!("{name}-1"),
        via: AuthMethod::Password,
        listener: "tls".into(),
        jwt: None,
    }
}

fn anonymous(claimed_username: Option<&str>) -> Identity {
    Identity {
        username: claimed_username.map(str::to_string),
        client_id: "anon-1".into(),
        via: AuthMethod::Anonymous,
        listener: "tls".into(),
        jwt: None,
    }
}

const TOPICS: &[&str] = &[
    "sensors/001/temp",
    "sensors/001",
    "sensors/001/",
    "sensors/002/temp",
    "Sensors/001/temp",
    "commands/001",
    "commands/001/",
    "commands/002",
    "devices/gw1/status",
    "admin/config",
    "$SYS/broker/uptime",
];

const FILTERS: &[&str] = &[
    "#",
    "+/#",
    "sensors/#",
    "sensors/+/temp",
    "sensors/001/#",
    "commands/001",
    "commands/+",
    "devices/#",
    "$SYS/#",
    "$share/g/sensors/#",
    "$share/g/#",
    "$share/g/$SYS/#",
];

/// Every (access, topic) the identity may do; everything else in the cross product is denied.
fn allowed_for(name: &str) -> Vec<(Access, &'static str)> {
    use Access::*;
    let non_sys: Vec<&'static str> = TOPICS
        .iter()
        .copied()
        .filter(|t| !t.starts_with('$'))
        .collect();
    match name {
        "admin" => {
            let mut v: Vec<_> = non_sys
                .iter()
                .flat_map(|t| [(Read, *t), (Write, *t)])
                .collect();
            v.extend(
                FILTERS
                    .iter()
                    .filter(|f| !f.contains("$SYS"))
                    .map(|f| (Subscribe, *f)),
            );
            v
        }
        "sensor_001" => vec![
            (Write, "sensors/001/temp"),
            (Write, "sensors/001"),
            (Write, "sensors/001/"),
            (Read, "commands/001"),
            (Subscribe, "commands/001"),
        ],
        "dashboard" => vec![
            (Read, "sensors/001/temp"),
            (Read, "sensors/001"),
            (Read, "sensors/001/"),
            (Read, "sensors/002/temp"),
            (Read, "devices/gw1/status"),
            (Subscribe, "sensors/#"),
            (Subscribe, "sensors/+/temp"),
            (Subscribe, "sensors/001/#"),
            (Subscribe, "devices/#"),
            (Subscribe, "$share/g/sensors/#"),
        ],
        _ => vec![],
    }
}

fn all_checks() -> Vec<(Access, &'static str)> {
    let mut v: Vec<_> = TOPICS
        .iter()
        .flat_map(|t| [(Access::Read, *t), (Access::Write, *t)])
        .collect();
    v.extend(FILTERS.iter().map(|f| (Access::Subscribe, *f)));
    v
}

fn assert_table(acl: &Acl, identity: &Identity, allowed: &[(Access, &str)]) {
    let mut failures = Vec::new();
    for (access, topic) in all_checks() {
        let want = allowed.contains(&(access, topic));
        let decision = acl.check(identity, access, topic);
        if decision.is_allowed() != want || acl.allows(identity, access, topic) != want {
            failures.push(format!(
                "{:?} {access:?} {topic}: want allowed={want}, got {decision:?}",
                identity.username
            ));
        }
        assert_eq!(
            acl.decide(identity, access, topic),
            acl.decide_linear(identity, access, topic)
        );
    }
    assert!(
        failures.is_empty(),
        "{} wrong decisions:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn intended_seed_deployment_allows_exactly_the_listed_combinations() {
    let acl = Acl::parse("acl", &intended_acl(), &[]).expect("valid acl");
    assert!(acl.warnings().is_empty(), "{:?}", acl.warnings());
    for name in [
        "admin",
        "sensor_001",
        "dashboard",
        "sensor_002",
        "Admin",
        "sensor_001 ",
    ] {
        assert_table(&acl, &user(name), &allowed_for(name));
    }
    assert_table(&acl, &anonymous(None), &[]);
    // An anonymous client claiming to be admin is still anonymous.
    assert_table(&acl, &anonymous(Some("admin")), &[]);
}

#[test]
fn verbatim_seed_file_scopes_the_trailing_deny_to_dashboard_like_mosquitto_and_warns() {
    let acl = Acl::parse("/etc/mosquitto/acl", SEED_ACL, &[]).expect("valid acl");
    assert_table(&acl, &user("admin"), &allowed_for("admin"));
    assert_table(&acl, &user("sensor_001"), &allowed_for("sensor_001"));
    // mosquitto 2.0.11 delivers nothing to dashboard with this file: same here.
    assert_table(&acl, &user("dashboard"), &[]);
    assert_table(&acl, &anonymous(None), &[]);
    let warnings = acl.warnings().join("\n");
    assert!(
        warnings.contains(
            "/etc/mosquitto/acl:16: `topic deny #` overrides the grants for user `dashboard`"
        ),
        "{warnings}"
    );
    assert!(
        warnings.contains("/etc/mosquitto/acl:12, /etc/mosquitto/acl:13"),
        "{warnings}"
    );
    assert!(
        warnings.contains("move it above the first `user` line"),
        "{warnings}"
    );
}

#[test]
fn decisions_name_the_rule_with_file_line_and_text() {
    let acl = Acl::parse("/etc/tollgate/acl", &intended_acl(), &[]).expect("valid acl");
    assert_eq!(
        acl.check(&user("dashboard"), Access::Subscribe, "sensors/+/temp"),
        AclDecision::Allow {
            rule: Some("/etc/tollgate/acl:15: topic read sensors/# (user dashboard)".into())
        }
    );
    assert_eq!(
        acl.check(&anonymous(None), Access::Read, "sensors/001/temp"),
        AclDecision::Deny {
            rule: Some("/etc/tollgate/acl:2: topic deny # (anonymous)".into())
        }
    );
    assert_eq!(
        acl.check(&user("dashboard"), Access::Write, "sensors/001/temp"),
        AclDecision::Deny { rule: None }
    );
}

#[test]
fn internal_identities_are_matched_as_users() {
    let acl = Acl::parse(
        "acl",
        "user adapter:modbus1\ntopic write plant/modbus1/#\n",
        &[],
    )
    .expect("valid acl");
    let adapter = Identity::internal("adapter:modbus1");
    assert!(acl.allows(&adapter, Access::Write, "plant/modbus1/pump/speed"));
    assert!(!acl.allows(&adapter, Access::Write, "plant/modbus2/pump/speed"));
    assert!(!acl.allows(
        &Identity::internal("adapter:modbus2"),
        Access::Write,
        "plant/modbus1/x"
    ));
}
