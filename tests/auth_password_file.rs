//! Password files through the public API: interop with the installed `mosquitto_passwd`
//! (and the mosquitto broker reading what `tollgate passwd --mosquitto` writes),
//! argon2id, `$6$`, longer salts, error reporting, and parser robustness.

mod support;

use std::path::Path;
use std::process::Command;

use clap::Parser;
use support::{mosquitto_passwd, Mosquitto};
use tollgate::auth::{
    fuzz_password_line, run_passwd, valid_username, PasswdCommand, PasswdError, PasswordFile,
    PasswordFileError, StoredHash, Verification,
};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    passwd: PasswdCommand,
}

fn passwd(args: &[&str]) -> Result<(), PasswdError> {
    let cli = Cli::try_parse_from(std::iter::once("passwd").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("arguments {args:?} should parse: {e}"));
    run_passwd(cli.passwd)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn reads_files_written_by_mosquitto_passwd_pbkdf2_and_sha512() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let f = path_str(&f);
    mosquitto_passwd(&["-c", "-b", f, "alice", "secret"]);
    mosquitto_passwd(&["-b", f, "bob", "correct horse"]);
    mosquitto_passwd(&["-H", "sha512", "-b", f, "carol", "légacy"]);
    let text = std::fs::read_to_string(f).expect("read");
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("carol:$6$"), "{text}");

    let file = PasswordFile::load(f).expect("mosquitto file loads");
    assert_eq!(file.len(), 3);
    assert!(matches!(
        file.hash_of("carol"),
        Some(StoredHash::Sha512 { .. })
    ));
    assert_eq!(file.verify("alice", b"secret"), Verification::Accepted);
    assert_eq!(file.verify("alice", b"Secret"), Verification::WrongPassword);
    assert_eq!(file.verify("bob", b"correct horse"), Verification::Accepted);
    assert_eq!(
        file.verify("bob", b"correct horse "),
        Verification::WrongPassword
    );
    assert_eq!(
        file.verify("carol", "légacy".as_bytes()),
        Verification::Accepted
    );
    assert_eq!(file.verify("carol", b"legacy"), Verification::WrongPassword);
    assert_eq!(file.verify("mallory", b"secret"), Verification::UnknownUser);
}

#[test]
fn mosquitto_passwd_delete_and_update_are_reflected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let f = path_str(&f);
    mosquitto_passwd(&["-c", "-b", f, "alice", "one"]);
    mosquitto_passwd(&["-b", f, "bob", "two"]);
    mosquitto_passwd(&["-b", f, "alice", "three"]);
    mosquitto_passwd(&["-D", f, "bob"]);
    let file = PasswordFile::load(f).expect("loads");
    assert_eq!(file.users().collect::<Vec<_>>(), vec!["alice"]);
    assert_eq!(file.verify("alice", b"three"), Verification::Accepted);
    assert_eq!(file.verify("alice", b"one"), Verification::WrongPassword);
    assert_eq!(file.verify("bob", b"two"), Verification::UnknownUser);
}

#[test]
fn accepts_longer_salts_as_newer_mosquitto_may_write() {
    // Computed with Python: hashlib.pbkdf2_hmac('sha512', pw, salt, rounds, 64), salts of
    // 16 and 24 bytes (mosquitto_passwd 2.0 writes 12).
    let text = "\
dev16:$7$1000$AQIDBAUGBwgJCgsMDQ4PEA==$Dt0W3FptYpDlOJKdV/qQaFPx7IXUZeBVjlHzP+i4tA4IMlhCGLh/1Ej4JKUhk2BKUatQF3bJfFlKhBvEKtMUCg==
dev24:$7$101$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7$HzGMB9VKVCI1GsSc1Uj61/8Sa/buE5xuX0Mi0RF5+may/Ya0DKslgFMUcQgFMRXOj/bfkOmNFJ7bFaxF5KT3mg==
";
    let file = PasswordFile::parse("vectors", text.as_bytes()).expect("parses");
    assert_eq!(file.verify("dev16", b"longsalt-pw"), Verification::Accepted);
    assert_eq!(
        file.verify("dev16", b"longsalt-pW"),
        Verification::WrongPassword
    );
    assert_eq!(file.verify("dev24", b"x"), Verification::Accepted);
    assert_eq!(file.verify("dev24", b"y"), Verification::WrongPassword);
}

#[test]
fn sha512_vector_computed_from_the_mosquitto_definition() {
    // mosquitto 1.x `$6$` (src/password_mosq.c pw__hash): SHA-512(password || salt), one
    // round, base64 salt and digest. Computed with Python:
    // base64(hashlib.sha512("päss".encode() + b"tollgate-six").digest()).
    let text = "u:$6$dG9sbGdhdGUtc2l4$m97sOv96csZUxCq7tHlaReXNsIlo3NBzHG9rPlDUA4zEeZfFdJULOB8X/jcHGBVAnTIZC3kpPjve9fjH3M3j+Q==\n";
    let file = PasswordFile::parse("vector", text.as_bytes()).expect("parses");
    assert_eq!(file.verify("u", "päss".as_bytes()), Verification::Accepted);
    assert_eq!(file.verify("u", b"pass"), Verification::WrongPassword);
    // A glibc sha512-crypt string shares the prefix but is not this format: refused clearly.
    let glibc = "u:$6$rounds=5000$saltsalt$abc\n";
    let err = PasswordFile::parse("glibc", glibc.as_bytes()).expect_err("glibc crypt refused");
    assert!(err.to_string().contains("glibc"), "{err}");
}

#[test]
fn passwd_writes_argon2id_by_default_and_it_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let fs = path_str(&f);
    passwd(&["-c", "-b", fs, "sensor_001", "s3cret!"]).expect("create");
    let text = std::fs::read_to_string(&f).expect("read");
    assert!(text.starts_with("sensor_001:$argon2id$v=19$m="), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&f).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let file = PasswordFile::load(&f).expect("loads");
    assert_eq!(
        file.verify("sensor_001", b"s3cret!"),
        Verification::Accepted
    );
    assert_eq!(
        file.verify("sensor_001", b"s3cret"),
        Verification::WrongPassword
    );
}

#[test]
fn passwd_mosquitto_flag_writes_pbkdf2_that_mosquitto_passwd_keeps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let fs = path_str(&f);
    passwd(&["-c", "--mosquitto", "-b", fs, "admin", "adminpw"]).expect("create");
    // mosquitto_passwd edits the same file without complaint and keeps our entry.
    mosquitto_passwd(&["-b", fs, "dashboard", "dashpw"]);
    let text = std::fs::read_to_string(&f).expect("read");
    let admin_line = text
        .lines()
        .find(|l| l.starts_with("admin:"))
        .expect("admin kept");
    let hash = admin_line.trim_start_matches("admin:");
    match StoredHash::parse(hash).expect("parses") {
        StoredHash::Pbkdf2Sha512 {
            iterations, salt, ..
        } => {
            assert_eq!(iterations, 101);
            assert_eq!(salt.len(), 12);
        }
        other => panic!("expected $7$, got {other:?}"),
    }
    let file = PasswordFile::load(&f).expect("loads");
    assert_eq!(file.verify("admin", b"adminpw"), Verification::Accepted);
    assert_eq!(file.verify("dashboard", b"dashpw"), Verification::Accepted);
}

/// The real mosquitto broker accepts the `$7$` lines `tollgate passwd --mosquitto` writes.
#[test]
fn mosquitto_broker_accepts_tollgate_written_pbkdf2_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    passwd(&["-c", "--mosquitto", "-b", path_str(&pw), "dev", "devpw"]).expect("create");
    let broker = Mosquitto::start(
        dir.path(),
        &format!(
            "user root\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
    );
    let port = broker.port;
    let publish = |password: &str| {
        // `timeout` bounds the run: mosquitto_pub itself has no connect timeout option.
        Command::new("timeout")
            .args([
                "5",
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-u", "dev", "-P", password, "-t", "t", "-m", "x"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("mosquitto_pub runs")
            .success()
    };
    let right = publish("devpw");
    let wrong = publish("nope");
    drop(broker);
    assert!(
        right,
        "mosquitto refused the right password for a tollgate-written $7$ entry"
    );
    assert!(!wrong, "mosquitto accepted a wrong password");
}

#[test]
fn passwd_updates_deletes_and_keeps_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let fs = path_str(&f);
    std::fs::write(&f, "# devices\n\n").expect("seed");
    passwd(&["--mosquitto", "-b", fs, "a", "1"]).expect("add a");
    passwd(&["--mosquitto", "-b", fs, "b", "2"]).expect("add b");
    passwd(&["--mosquitto", "-b", fs, "a", "3"]).expect("change a");
    passwd(&["-D", fs, "b"]).expect("delete b");
    let text = std::fs::read_to_string(&f).expect("read");
    assert!(text.starts_with("# devices\n\na:$7$101$"), "{text}");
    let file = PasswordFile::load(&f).expect("loads");
    assert_eq!(file.users().collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(file.verify("a", b"3"), Verification::Accepted);
    assert!(matches!(
        passwd(&["-D", fs, "b"]),
        Err(PasswdError::UserNotFound { .. })
    ));
}

#[test]
fn passwd_refuses_missing_file_bad_user_empty_password_and_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("passwd");
    let fs = path_str(&f);
    assert!(matches!(
        passwd(&["-b", fs, "a", "1"]),
        Err(PasswdError::Missing(_))
    ));
    assert!(matches!(
        passwd(&["-c", "-b", fs, "a:b", "1"]),
        Err(PasswdError::InvalidUsername(_))
    ));
    assert!(matches!(
        passwd(&["-c", "-b", fs, "a", ""]),
        Err(PasswdError::EmptyPassword)
    ));
    std::fs::write(&f, "broken line\n").expect("seed");
    assert!(matches!(
        passwd(&["--mosquitto", "-b", fs, "a", "1"]),
        Err(PasswdError::File(PasswordFileError::Invalid { .. }))
    ));
    assert_eq!(
        std::fs::read_to_string(&f).expect("read"),
        "broken line\n",
        "a file that does not parse must not be rewritten"
    );
}

#[test]
fn passwd_flags_follow_mosquitto_passwd() {
    assert!(
        Cli::try_parse_from(["passwd", "-b", "f", "u"]).is_err(),
        "-b needs a password"
    );
    assert!(
        Cli::try_parse_from(["passwd", "f", "u", "pw"]).is_err(),
        "password needs -b"
    );
    assert!(Cli::try_parse_from(["passwd", "-c", "-D", "f", "u"]).is_err());
    let ok = Cli::try_parse_from(["passwd", "-c", "-b", "f", "u", "pw"]).expect("parses");
    assert!(ok.passwd.create && ok.passwd.batch);
    assert_eq!(ok.passwd.password.as_deref(), Some("pw"));
}

#[test]
fn bad_file_lists_every_bad_line() {
    let good = "$6$dG9sbGdhdGUtc2l4$m97sOv96csZUxCq7tHlaReXNsIlo3NBzHG9rPlDUA4zEeZfFdJULOB8X/jcHGBVAnTIZC3kpPjve9fjH3M3j+Q==";
    let text = format!(
        "# comment\n\
         ok:{good}\n\
         no colon here\n\
         plain:password\n\
         weird:$5$abc$def\n\
         shortsalt:$6$AAAA$AAAA\n\
         :{good}\n\
         ok:{good}\n\
         badb64:$7$101$!!!$???\n\
         iter:$7$many$AAAAAAAAAAAAAAAA$AAAA\n\
         argon:$argon2id$v=19$m=oops\n\
         \n\
         fine:{good}\r\n"
    );
    let err =
        PasswordFile::parse("/etc/tollgate/passwd", text.as_bytes()).expect_err("invalid file");
    let PasswordFileError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let shown = err.to_string();
    for n in lines {
        assert!(
            shown.contains(&format!("/etc/tollgate/passwd:{n}:")),
            "{shown}"
        );
    }
    assert!(shown.contains("first on line 2"), "{shown}");
    assert!(shown.contains("mosquitto_passwd -U"), "{shown}");
}

#[test]
fn comments_blank_lines_and_crlf_are_accepted() {
    let good = "$6$dG9sbGdhdGUtc2l4$m97sOv96csZUxCq7tHlaReXNsIlo3NBzHG9rPlDUA4zEeZfFdJULOB8X/jcHGBVAnTIZC3kpPjve9fjH3M3j+Q==";
    let text = format!("# header\r\n\r\n   \n  # indented comment\nu:{good}\r\n");
    let file = PasswordFile::parse("crlf", text.as_bytes()).expect("parses");
    assert_eq!(file.verify("u", "päss".as_bytes()), Verification::Accepted);
    assert!(PasswordFile::parse("empty", b"")
        .expect("empty ok")
        .is_empty());
}

#[test]
fn missing_file_error_names_the_path() {
    let err = PasswordFile::load("/nonexistent/tollgate/passwd").expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/tollgate/passwd"),
        "{err}"
    );
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parser_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            fuzz_password_line(&data);
        }

        #[test]
        fn written_files_parse_back_identically(
            users in proptest::collection::btree_map("[^:\\p{Cc}]{1,12}", (any::<[u8; 12]>(), any::<[u8; 64]>(), 1u32..100_000), 0..8),
        ) {
            let mut file = PasswordFile::new();
            let mut valid = Vec::new();
            for (user, material) in users {
                let hash = StoredHash::Sha512 { salt: vec![0; 12], hash: vec![0; 64] };
                let stored = PasswordFile::new().upsert_hash(&user, hash).is_ok();
                prop_assert_eq!(stored, valid_username(&user));
                if stored {
                    valid.push((user, material));
                }
            }
            let users = valid;
            for (user, (salt, hash, iterations)) in &users {
                file.upsert_hash(user, StoredHash::Pbkdf2Sha512 {
                    iterations: *iterations,
                    salt: salt.to_vec(),
                    hash: hash.to_vec(),
                }).expect("valid user");
            }
            let text = file.to_text();
            let back = PasswordFile::parse("roundtrip", text.as_bytes()).expect("parses back");
            prop_assert_eq!(back.to_text(), text);
            for (user, (salt, hash, iterations)) in &users {
                let expected = StoredHash::Pbkdf2Sha512 {
                    iterations: *iterations,
                    salt: salt.to_vec(),
                    hash: hash.to_vec(),
                };
                prop_assert_eq!(back.hash_of(user), Some(&expected));
            }
        }

        #[test]
        fn parser_never_panics_on_hash_shaped_lines(
            user in "[a-z:#\\x00-\\x1f ]{0,6}",
            scheme in prop::sample::select(vec!["$7$", "$6$", "$argon2id$", "$argon2i$", "$", "", "$7$101$"]),
            body in "[A-Za-z0-9+/=$,.:v-]{0,120}",
        ) {
            let line = format!("{user}:{scheme}{body}\n");
            fuzz_password_line(line.as_bytes());
        }
    }
}

#[test]
fn write_keeps_group_access_drops_other_access_and_follows_symlinks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real-passwd");
    let link = dir.path().join("passwd");
    passwd(&["-c", "--mosquitto", "-b", path_str(&real), "a", "1"]).expect("create");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    passwd(&["--mosquitto", "-b", path_str(&link), "b", "2"]).expect("edit through link");
    assert!(std::fs::symlink_metadata(&link)
        .expect("stat link")
        .file_type()
        .is_symlink());
    let mode = std::fs::metadata(&real).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "group read kept, other read dropped");
    let file = PasswordFile::load(&real).expect("loads");
    assert_eq!(file.users().collect::<Vec<_>>(), vec!["a", "b"]);
    let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
    assert_eq!(leftovers, 2, "no temporary files left behind");
}
