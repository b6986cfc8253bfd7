//! `tollgate acl explain`: argument parsing, rule sources (acl_file or config),
//! and a report that names the deciding rule.

mod support;

use std::io::Write;

use clap::Parser;
use tollgate::acl::{explain, run, Access, Acl, AclCommand, AclError};
use tollgate::auth::{AuthMethod, Identity};
use tollgate::cli::acl_config_from;

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

/// `tollgate acl explain ARGS` as an operator runs it: what it printed (exit 0 asserted).
fn explain_cli(args: &[&str]) -> String {
    let out = support::gateway::tollgate_command()
        .args(["acl", "explain"])
        .args(args)
        .output()
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tollgate acl explain {args:?}: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn explain_prints_the_verdict_and_rule_for_an_acl_file_and_a_config() {
    let acl = temp("user dashboard\ntopic read sensors/#\n");
    let path = acl.path().to_str().expect("utf-8 temp path");
    let text = explain_cli(&[
        "--acl-file",
        path,
        "--user",
        "dashboard",
        "--topic",
        "sensors/+/t",
        "--access",
        "subscribe",
    ]);
    assert!(text.contains("identity: user `dashboard`"), "{text}");
    assert!(text.contains("check:    Subscribe `sensors/+/t`"), "{text}");
    assert!(
        text.contains(&format!(
            "decision: ALLOW\nrule:     {path}:2: topic read sensors/# (user dashboard)\n"
        )),
        "{text}"
    );

    let text = explain_cli(&[
        "--acl-file",
        path,
        "--anonymous",
        "--topic",
        "sensors/1",
        "--access",
        "read",
    ]);
    assert!(text.contains("identity: anonymous client"), "{text}");
    assert!(
        text.contains("decision: DENY\nrule:     none matched (default deny"),
        "{text}"
    );

    // The config's own rule (a deny) decides over the file's grant; both are listed.
    let config = temp(&format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\n[acl]\nfile = {path:?}\n\n[[acl.rule]]\nuser = \"dashboard\"\naccess = \"deny\"\ntopic = \"sensors/secret\"\n"
    ));
    let cpath = config.path().to_str().expect("utf-8 temp path");
    let text = explain_cli(&[
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
    ]);
    assert!(
        text.contains("identity: user `dashboard`, client id `d1`"),
        "{text}"
    );
    assert!(
        text.contains(
            "decision: DENY\nrule:     acl.rule[0]: topic deny sensors/secret (user dashboard)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "matching rules:\n  {path}:2: topic read sensors/# (user dashboard)\n  acl.rule[0]:"
        )),
        "{text}"
    );

    let no_acl = temp("[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n");
    let npath = no_acl.path().to_str().expect("utf-8");
    let text = explain_cli(&[
        "-c", npath, "--user", "u", "--topic", "a", "--access", "write",
    ]);
    assert_eq!(
        text,
        format!("decision: ALLOW\nrule:     none: {npath} configures no [acl] file or rules, so ACLs are off and every access is allowed\n"),
        "a config without [acl] means ACLs off"
    );
}

#[test]
fn explain_reports_broken_sources() {
    let broken = temp("topic read a/#/b\n");
    let err = run(
        cmd(&[
            "--acl-file",
            broken.path().to_str().expect("utf-8"),
            "--user",
            "u",
            "--topic",
            "a",
            "--access",
            "read",
        ]),
        acl_config_from,
    )
    .expect_err("broken acl");
    assert!(matches!(err, AclError::Invalid { .. }));
    let bad_config = temp("[acl]\nfil = \"x\"\n");
    let err = run(
        cmd(&[
            "-c",
            bad_config.path().to_str().expect("utf-8"),
            "--user",
            "u",
            "--topic",
            "a",
            "--access",
            "read",
        ]),
        acl_config_from,
    )
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
        jwt: None,
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
