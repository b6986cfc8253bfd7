//! The `tollgate` binary's command line: `check` exit codes and output, `run` refusing
//! a bad configuration with 64, `--version`.

mod support;

use support::gateway::tollgate;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(&["--version"], dir.path());
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_a_valid_file_with_a_one_line_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:1883\"\ntransport = \"tcp\"\nallow_anonymous = true\n").expect("write");
    let out = tollgate(&["check", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("OK: 1 listener (local tcp 127.0.0.1:1883)"),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_embedded_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("<embedded default config>: OK: 2 listeners"));
}

#[test]
fn check_prints_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[broker]\nmax_packet_size = 1\n[[listener]]\nname = \"d\"\nbind = \"0.0.0.0:88883\"\ntransport = \"tls\"\nkey = \"k.pem\"\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = tollgate(&["check", "-c", path], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    for expected in [
        format!("{path}: broker.max_packet_size: 1 is out of range"),
        format!("{path}: listener[0].bind: \"0.0.0.0:88883\" is not a socket address"),
        format!("{path}: listener[0].cert: key is set but cert is missing"),
        format!(
            "{path}: listener[0].key: {}/k.pem does not exist",
            dir.path().display()
        ),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_reports_unparsable_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("s.crt"), "not a certificate").expect("write");
    std::fs::write(dir.path().join("s.key"), "not a key").expect("write");
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "[[listener]]\nname = \"d\"\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\ncert = \"s.crt\"\nkey = \"s.key\"\nallow_anonymous = true\n",
    )
    .expect("write");
    let out = tollgate(&["check", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(out.status.code(), Some(64), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("listener[0]: TLS setup failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_and_run_exit_64_on_a_missing_or_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tollgate(&["check", "-c", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("missing.toml: cannot read the configuration file"));

    let file = dir.path().join("syntax.toml");
    std::fs::write(&file, "[broker\n").expect("write");
    let out = tollgate(&["run", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("TOML syntax error at line 1, column"),
        "{}",
        text(&out.stderr)
    );
}
