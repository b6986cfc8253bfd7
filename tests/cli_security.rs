//! The security commands of the `tollgate` binary: the operator path of
//! the README's Security section from zero to a running mTLS + ACL gateway (`tollgate pki`,
//! `tollgate passwd`, a config file, `tollgate check`, `tollgate run`, mosquitto
//! clients), `acl explain -c` using the real config loader, and exit codes (64 for
//! bad usage or configuration).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::free_port;
use support::gateway::{tollgate, tollgate_command, tollgate_env};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

const SEED_ACL: &str = "user admin\ntopic readwrite #\n\nuser sensor_001\ntopic write sensors/001/#\ntopic read commands/001\n\nuser dashboard\ntopic read sensors/#\ntopic read devices/#\n";

#[test]
fn operator_path_from_zero_to_a_running_mtls_and_acl_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path();
    let pki = ["pki", "--dir", "pki"];
    let step = |extra: &[&str]| {
        let args: Vec<&str> = pki.iter().chain(extra).copied().collect();
        tollgate(&args, etc)
    };
    ok(
        &step(&["init", "--cn", "Plant 3 CA", "--days", "30"]),
        "pki init",
    );
    ok(
        &step(&[
            "server",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--days",
            "30",
        ]),
        "pki server",
    );
    ok(
        &step(&["device", "sensor_001", "--days", "30"]),
        "pki device",
    );
    ok(&step(&["device", "stolen", "--days", "30"]), "pki device");
    ok(&step(&["crl"]), "pki crl");
    ok(
        &tollgate(
            &["passwd", "-c", "-b", "passwd", "dashboard", "dash-pw"],
            etc,
        ),
        "passwd",
    );
    assert!(std::fs::read_to_string(etc.join("passwd"))
        .expect("passwd file")
        .contains("dashboard:$argon2id$"));
    std::fs::write(etc.join("acl"), SEED_ACL).expect("acl");
    let port = free_port();
    std::fs::write(
        etc.join("tollgate.toml"),
        format!(
            "[broker]\ndata_dir = \"state\"\n\n[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tls\"\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.crt\"\nclient_certs = \"optional\"\nidentity = \"cn\"\ncrl = \"pki/ca.crl\"\npassword_auth = true\nallow_anonymous = false\n\n[auth]\npassword_file = \"passwd\"\n\n[acl]\nfile = \"acl\"\n"
        ),
    )
    .expect("config");
    // Revoked after the config was written: `pki revoke` rewrites the CRL it names.
    ok(
        &step(&["revoke", "stolen", "--reason", "key-compromise"]),
        "pki revoke",
    );
    let listed = ok(&step(&["list"]), "pki list");
    assert!(
        listed.contains("sensor_001") && listed.contains("stolen"),
        "{listed}"
    );
    let checked = ok(&tollgate(&["check", "-c", "tollgate.toml"], etc), "check");
    assert!(checked.contains("OK: 1 listener"), "{checked}");

    let mut gateway = tollgate_command()
        .args(["--log", "text", "run", "-c", "tollgate.toml"])
        .current_dir(etc)
        .env("HOME", etc)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate");
    let (tx, rx) = mpsc::channel();
    let stderr = gateway.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("tollgate is ready") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = gateway.kill();
                panic!("gateway not ready: {e}");
            }
        }
    }

    let port = port.to_string();
    let base = |extra: &[&str]| -> Vec<String> {
        ["-h", "localhost", "-p", &port, "--cafile", "pki/ca.crt"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let pub_ok = |args: Vec<String>| {
        Command::new("mosquitto_pub")
            .args(&args)
            .current_dir(etc)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub")
            .success()
    };
    let device = [
        "--cert",
        "pki/devices/sensor_001.crt",
        "--key",
        "pki/devices/sensor_001.key",
    ];
    let mut args = base(&device);
    args.extend(["-q", "1", "-r", "-t", "sensors/001/temp", "-m", "21.5"].map(String::from));
    assert!(pub_ok(args), "device certificate publishes");
    let stolen = [
        "--cert",
        "pki/devices/stolen.crt",
        "--key",
        "pki/devices/stolen.key",
    ];
    let mut args = base(&stolen);
    args.extend(["-t", "sensors/001/temp", "-m", "forged"].map(String::from));
    assert!(!pub_ok(args), "revoked certificate refused");
    let sub = Command::new("mosquitto_sub")
        .args(base(&[
            "-u",
            "dashboard",
            "-P",
            "dash-pw",
            "-t",
            "sensors/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ]))
        .current_dir(etc)
        .output()
        .expect("mosquitto_sub");
    assert!(sub.status.success(), "{}", text(&sub.stderr));
    assert_eq!(text(&sub.stdout).trim(), "sensors/001/temp 21.5");

    Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .expect("kill");
    let status = gateway.wait().expect("gateway exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn acl_explain_uses_the_real_config_loader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    std::fs::write(conf.join("acl"), SEED_ACL).expect("acl");
    std::fs::write(
        conf.join("other-acl"),
        "user sensor_001\ntopic write elsewhere/#\n",
    )
    .expect("acl");
    std::fs::write(
        conf.join("tollgate.toml"),
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n[acl]\nfile = \"acl\"\n",
    )
    .expect("config");
    // Run from another directory: `acl` resolves against the config's directory.
    let args = [
        "acl",
        "explain",
        "-c",
        "conf/tollgate.toml",
        "--user",
        "sensor_001",
        "--topic",
        "sensors/001/temp",
        "--access",
        "write",
    ];
    let out = ok(&tollgate(&args, tmp.path()), "explain");
    assert!(out.contains("decision: ALLOW"), "{out}");
    assert!(out.contains("topic write sensors/001/#"), "{out}");
    // Environment overrides apply exactly as for `run`.
    let out = tollgate_env(&args, tmp.path(), &[("TOLLGATE_ACL__FILE", "other-acl")]);
    let out = ok(&out, "explain with override");
    assert!(out.contains("decision: DENY"), "{out}");
    // A config `run` would refuse is refused here too, with its problems, exit 64.
    std::fs::write(conf.join("bad.toml"), "[acl]\nfile = \"missing\"\n").expect("bad");
    let mut bad = args;
    bad[3] = "conf/bad.toml";
    let out = tollgate(&bad, tmp.path());
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(
        err.contains("acl.file") && err.contains("listener"),
        "{err}"
    );
}

#[test]
fn check_loads_security_files_and_warns_about_the_seeds_trailing_deny() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let listener = "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\npassword_auth = true\n";
    // The seeds' file verbatim: its last line belongs to `user dashboard`.
    std::fs::write(
        dir.join("acl"),
        format!("{SEED_ACL}\n# Default: deny everything\ntopic deny #\n"),
    )
    .expect("acl");
    ok(
        &tollgate(&["passwd", "-c", "-b", "passwd", "dashboard", "x"], dir),
        "passwd",
    );
    std::fs::write(
        dir.join("seed.toml"),
        format!("{listener}[auth]\npassword_file = \"passwd\"\n[acl]\nfile = \"acl\"\n"),
    )
    .expect("config");
    let out = tollgate(&["check", "-c", "seed.toml"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("topic deny #") && err.contains("dashboard"),
        "{err}"
    );

    // Broken password file and ACL: every problem, one line each, exit 64.
    std::fs::write(dir.join("passwd"), "dashboard:$7$garbage\n").expect("passwd");
    std::fs::write(dir.join("acl"), "user a\ntopic read a/#/b\ntopic read +x\n").expect("acl");
    let out = tollgate(&["check", "-c", "seed.toml"], dir);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(err.contains("auth.password_file"), "{err}");
    assert!(err.contains("acl:2") && err.contains("acl:3"), "{err}");

    // password_auth without a password file: accepted with a warning that says what happens.
    std::fs::write(
        dir.join("anon.toml"),
        format!("{listener}allow_anonymous = true\n"),
    )
    .expect("config");
    let out = tollgate(&["check", "-c", "anon.toml"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("password_file is not set"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn pki_passwd_and_acl_misuse_exits_64() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let code = |args: &[&str]| tollgate(args, dir).status.code();
    assert_eq!(
        code(&["pki", "--dir", "p", "device", "d1"]),
        Some(64),
        "no CA yet"
    );
    assert_eq!(code(&["pki", "--dir", "p", "init"]), Some(0));
    assert_eq!(code(&["pki", "--dir", "p", "init"]), Some(64), "CA exists");
    assert_eq!(
        code(&["pki", "--dir", "p", "device", "a/b"]),
        Some(64),
        "bad name"
    );
    assert_eq!(code(&["pki", "--dir", "p", "revoke", "nobody"]), Some(64));
    assert_eq!(
        code(&["passwd", "-b", "missing", "u", "p"]),
        Some(64),
        "no file, no -c"
    );
    assert_eq!(
        code(&["passwd", "-c", "-b", "pw", "u", ""]),
        Some(64),
        "empty password"
    );
    assert_eq!(code(&["passwd", "-c", "-b", "pw", "u", "p"]), Some(0));
    assert_eq!(code(&["passwd", "-D", "pw", "nobody"]), Some(64));
    assert_eq!(
        code(&[
            "acl",
            "explain",
            "--acl-file",
            "nope",
            "--user",
            "u",
            "--topic",
            "t",
            "--access",
            "read"
        ]),
        Some(64)
    );
    assert_eq!(
        code(&["acl", "explain", "--topic", "t"]),
        Some(64),
        "usage errors are EX_USAGE too"
    );
}
