//! `tollgate bridge test -c FILE [--direction out|in] [--qos N] TOPIC`, the binary as an
//! operator runs it: which bridge and rule forward a topic, the topic on the far side,
//! the QoS after the rule's cap (downgrades said), the ACL decision for
//! `bridge:<name>` with the deciding rule, and the exit codes (0 forwarded, 1 not
//! forwarded, 2 unusable configuration). Nothing is connected: the upstream address
//! is a port nobody listens on.

mod support;

use std::path::Path;

use support::gateway::tollgate;
use support::pki::Pki;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A gateway configuration with two bridges and an ACL for `bridge:cloud`.
fn write_config(dir: &Path, pki: &Pki) -> String {
    let (cert, key) = pki.client("gw1");
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user bridge:cloud\ntopic read sensors/#\ntopic deny sensors/secret/#\ntopic write cmd/#\n\nuser bridge:backup\ntopic read #\n",
    )
    .expect("write acl");
    let file = dir.join("t.toml");
    std::fs::write(
        &file,
        format!(
            r##"[[listener]]
name = "local"
bind = "127.0.0.1:1883"
transport = "tcp"
allow_anonymous = true

[acl]
file = {acl:?}

[[bridge]]
name = "cloud"
address = ["127.0.0.1:9"]
client_id = "gw1"
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "bulk/#"
direction = "out"
qos = 0
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "cmd/#"
direction = "in"
qos = 1
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "admin/#"
direction = "in"
qos = 1
remote_prefix = "site/gw1/"

[[bridge]]
name = "backup"
enabled = false
address = ["127.0.0.1:9"]
client_id = "gw1b"
ca = {ca:?}
cert = {cert:?}
key = {key:?}

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
remote_prefix = "b/"
"##,
            acl = acl.display().to_string(),
            ca = pki.ca_path.display().to_string(),
            cert = cert.display().to_string(),
            key = key.display().to_string(),
        ),
    )
    .expect("write config");
    file.display().to_string()
}

#[test]
fn out_topic_names_bridge_rule_remote_topic_and_the_granting_acl_line() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), &pki);
    let out = tollgate(
        &["bridge", "test", "-c", &file, "sensors/t1/temp"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for expected in [
        "bridge \"cloud\" (bridge[0]):",
        "rule:   bridge[0].topic[0]: pattern \"sensors/#\", direction out, qos 1",
        "remote: site/gw1/sensors/t1/temp",
        "qos:    1 -> 1: journaled on disk until the cloud acknowledges it",
        "acl:    ALLOW subscribe `sensors/#` for bridge:cloud:",
        "acl:    ALLOW read `sensors/t1/temp` for bridge:cloud:",
        "topic read sensors/#",
        // The second bridge maps it too, but is switched off.
        "bridge \"backup\" (bridge[1]):",
        "remote: b/sensors/t1/temp",
        "state:  disabled (enabled = false)",
        "result: FORWARDED",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn a_deny_line_in_the_acl_stops_the_topic_with_exit_1() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), &pki);
    let out = tollgate(
        &["bridge", "test", "-c", &file, "sensors/secret/k"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("acl:    DENY read `sensors/secret/k` for bridge:cloud:")
            && stdout.contains("topic deny sensors/secret/#"),
        "{stdout}"
    );
    assert!(stdout.contains("result: NOT FORWARDED"), "{stdout}");
}

#[test]
fn a_qos_cap_below_the_published_qos_is_shown_as_a_downgrade() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), &pki);
    // bulk/# is not readable by bridge:cloud: the downgrade is shown all the same.
    let out = tollgate(
        &["bridge", "test", "-c", &file, "--qos", "2", "bulk/x"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "qos:    2 -> 0 (DOWNGRADE by the rule's qos = 0): best effort, not journaled"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("acl:    DENY subscribe `bulk/#` for bridge:cloud: no rule matched"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn in_direction_maps_the_remote_topic_and_checks_write() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), &pki);
    let out = tollgate(
        &[
            "bridge",
            "test",
            "-c",
            &file,
            "--direction",
            "in",
            "site/gw1/cmd/reboot",
        ],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("rule:   bridge[0].topic[2]"), "{stdout}");
    assert!(stdout.contains("local:  cmd/reboot"), "{stdout}");
    assert!(
        stdout.contains("acl:    ALLOW write `cmd/reboot` for bridge:cloud:")
            && stdout.contains("topic write cmd/#"),
        "{stdout}"
    );

    // admin/# has an in rule but the ACL does not let bridge:cloud write it.
    let out = tollgate(
        &[
            "bridge",
            "test",
            "-c",
            &file,
            "--direction",
            "in",
            "site/gw1/admin/x",
        ],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("acl:    DENY write `admin/x` for bridge:cloud: no rule matched"),
        "{stdout}"
    );
}

#[test]
fn a_topic_no_rule_covers_exits_1() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_config(dir.path(), &pki);
    let out = tollgate(&["bridge", "test", "-c", &file, "other/topic"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("rule:   none: no `out` or `both` rule of this bridge covers the topic"),
        "{stdout}"
    );
    assert!(stdout.contains("result: NOT FORWARDED"), "{stdout}");
}

#[test]
fn an_unusable_configuration_exits_2_with_its_key_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[bridge]]\nname = \"cloud\"\naddress = [\"nohost\"]\nclient_id = \"gw1\"\nca = \"missing.crt\"\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = tollgate(&["bridge", "test", "-c", path, "sensors/a"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bridge[0].address[0]"), "{stderr}");
    assert!(stderr.contains("bridge[0].ca"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn help_documents_directions_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(&["bridge", "test", "--help"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    for expected in [
        "--direction",
        "--qos",
        "Exit 0",
        "1: not forwarded",
        "2: the configuration",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
