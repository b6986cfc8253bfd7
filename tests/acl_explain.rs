//! `tollgate acl explain`: argument parsing, rule sources (acl_file or config),
//! and a report that names the deciding rule.

use std::io::Write;

use clap::Parser;
use tollgate::acl::{explain, run, Access, Acl, AclCommand, AclError};
use tollgate::auth::{AuthMethod, Identity};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    acl: AclCommand,
}

fn cmd(args: &[&str]) -> AclCommand {
    let mut argv = vec!["tollgate-acl", "explain"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("valid arguments").acl
}

fn temp(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

#[test]
fn explain_runs_on_an_acl_file_and_on_a_config() {
    let acl = temp("user dashboard\ntopic read sensors/#\n");
    let path = acl.path().to_str().expect("utf-8 temp path");
    run(cmd(&[
        "--acl-file",
        path,
        "--user",
        "dashboard",
        "--topic",
        "sensors/+/t",
        "--access",
        "subscribe",
    ]))
    .expect("explain on acl file");
    run(cmd(&[
        "--acl-file",
        path,
        "--anonymous",
        "--topic",
        "sensors/1",
        "--access",
        "read",
    ]))
    .expect("anonymous");

    let config = temp(&format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\n[acl]\nfile = {path:?}\n\n[[acl.rule]]\nuser = \"dashboard\"\naccess = \"deny\"\ntopic = \"sensors/secret\"\n"
    ));
    let cpath = config.path().to_str().expect("utf-8 temp path");
    run(cmd(&[
        "-c",
        cpath,
        "--user",
        "dashboard",
        "--client-id",
        "d1",
        "--topic",
        "sensors/secret",
        "--access",
        "read",
    ]))
    .expect("explain on config");

    let no_acl = temp("[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n");
    run(cmd(&[
        "-c",
        no_acl.path().to_str().expect("utf-8"),
        "--user",
        "u",
        "--topic",
        "a",
        "--access",
        "write",
    ]))
    .expect("config without [acl] means ACLs off");
}

#[test]
fn explain_reports_broken_sources() {
    let broken = temp("topic read a/#/b\n");
    let err = run(cmd(&[
        "--acl-file",
        broken.path().to_str().expect("utf-8"),
        "--user",
        "u",
        "--topic",
        "a",
        "--access",
        "read",
    ]))
    .expect_err("broken acl");
    assert!(matches!(err, AclError::Invalid { .. }));
    let bad_config = temp("[acl]\nfil = \"x\"\n");
    let err = run(cmd(&[
        "-c",
        bad_config.path().to_str().expect("utf-8"),
        "--user",
        "u",
        "--topic",
        "a",
        "--access",
        "read",
    ]))
    .expect_err("unknown key");
    assert!(err.to_string().contains("fil"), "{err}");
}

#[test]
fn explanation_shows_decision_rule_and_every_matching_rule() {
    let acl = Acl::parse(
        "/etc/tollgate/acl",
        "user dashboard\ntopic read sensors/#\ntopic deny sensors/+/secret\npattern deny sensors/%c/secret\n",
        &[],
    )
    .expect("valid");
    let who = Identity {
        username: Some("dashboard".into()),
        client_id: String::new(),
        via: AuthMethod::Password,
        listener: "l".into(),
    };
    let text = explain(&acl, &who, Access::Read, "sensors/7/secret").to_string();
    assert!(text.contains("decision: DENY"), "{text}");
    assert!(
        text.contains(
            "rule:     /etc/tollgate/acl:3: topic deny sensors/+/secret (user dashboard)"
        ),
        "{text}"
    );
    assert!(
        text.contains("  /etc/tollgate/acl:2: topic read sensors/# (user dashboard)"),
        "{text}"
    );
    assert!(
        text.contains(
            "/etc/tollgate/acl:4: pattern deny sensors/%c/secret  [placeholder not fillable"
        ),
        "{text}"
    );
    assert!(text.contains("no --client-id given"), "{text}");

    let text = explain(&acl, &who, Access::Write, "sensors/7/temp").to_string();
    assert!(
        text.contains("decision: DENY\nrule:     none matched (default deny"),
        "{text}"
    );
}
