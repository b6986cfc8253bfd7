//! Config loading through the public API: defaults, file, environment overrides,
//! relative paths, and validation that reports every problem with its key path.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tollgate::config::{load_with_env, ConfigError, ConfigSource, Transport};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn problems(result: Result<tollgate::config::LoadedConfig, ConfigError>) -> Vec<String> {
    match result {
        Ok(_) => panic!("expected the configuration to be rejected"),
        Err(e) => e.problems(),
    }
}

const MINIMAL: &str = r#"
[[listener]]
name = "local"
bind = "127.0.0.1:1883"
transport = "tcp"
allow_anonymous = true
"#;

#[test]
fn embedded_default_is_valid_and_has_both_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().to_str().expect("utf-8 temp path");
    let loaded = load_with_env(&ConfigSource::Embedded, &env(&[("HOME", home)]))
        .expect("default config is valid");
    let names: Vec<_> = loaded
        .config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.transport))
        .collect();
    assert_eq!(
        names,
        [("local", Transport::Tcp), ("devices", Transport::Tls)]
    );
    assert!(loaded.config.listeners[1].uses_dev_pki());
    assert!(
        !loaded.notices.is_empty(),
        "the state directory choice is reported"
    );
}

#[test]
fn missing_sections_take_documented_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", MINIMAL);
    let c = load_with_env(&ConfigSource::File(file), &env(&[]))
        .expect("valid")
        .config;
    assert_eq!(c.broker.max_connections, 10_000);
    assert_eq!(c.broker.max_packet_size, 1_048_576);
    assert_eq!(c.broker.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.shutdown.grace_period, Duration::from_secs(10));
    assert_eq!(c.broker.data_dir, Path::new("/var/lib/tollgate"));
    assert!(c.listeners[0].password_auth);
}

#[test]
fn environment_overrides_file_values_including_listener_by_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "t.toml",
        &format!("[broker]\nmax_connections = 7\nconnect_timeout = 3\n{MINIMAL}"),
    );
    let c = load_with_env(
        &ConfigSource::File(file),
        &env(&[
            ("TOLLGATE_BROKER__MAX_CONNECTIONS", "5"),
            ("TOLLGATE_LISTENER__0__BIND", "127.0.0.1:1999"),
            ("TOLLGATE_SHUTDOWN__GRACE_PERIOD", "1500ms"),
        ]),
    )
    .expect("valid")
    .config;
    assert_eq!(c.broker.max_connections, 5);
    assert_eq!(c.broker.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.listeners[0].bind, "127.0.0.1:1999");
    assert_eq!(c.shutdown.grace_period, Duration::from_millis(1500));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
    write(dir.path(), "certs/s.crt", "x");
    write(dir.path(), "certs/s.key", "x");
    write(dir.path(), "passwd", "");
    let file = write(
        dir.path(),
        "t.toml",
        r#"
[broker]
data_dir = "state"
[[listener]]
name = "devices"
bind = "127.0.0.1:8883"
transport = "tls"
cert = "certs/s.crt"
key = "certs/s.key"
[auth]
password_file = "passwd"
"#,
    );
    let c = load_with_env(&ConfigSource::File(file), &env(&[]))
        .expect("valid")
        .config;
    assert_eq!(c.broker.data_dir, dir.path().join("state"));
    assert_eq!(
        c.listeners[0].cert.as_deref(),
        Some(dir.path().join("certs/s.crt").as_path())
    );
    assert_eq!(
        c.auth.password_file.as_deref(),
        Some(dir.path().join("passwd").as_path())
    );
}

#[test]
fn validation_lists_every_problem_with_file_and_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "bad.toml",
        r#"
[broker]
max_connections = 0
[[listener]]
name = "a"
bind = "0.0.0.0:88883"
transport = "tcp"
[[listener]]
name = "a"
bind = "0.0.0.0:1883"
transport = "tcp"
[[listener]]
name = "tls"
bind = "127.0.0.1:8883"
transport = "tls"
cert = "missing.crt"
tls_versions = ["1.1", "1.3"]
[[listener]]
name = "x"
bind = "127.0.0.1:9"
transport = "tcp"
colour = "blue"
[auth]
password_file = "nope"
"#,
    );
    let label = file.display().to_string();
    let p = problems(load_with_env(&ConfigSource::File(file), &env(&[])));
    let expect = [
        "broker.max_connections: 0 is out of range",
        "listener[0].bind: \"0.0.0.0:88883\" is not a socket address",
        "listener[1].name: \"a\" is already the name of listener[0]",
        "listener[1].bind: plain tcp on the non-loopback address",
        "listener[2].key: cert is set but key is missing",
        "listener[2].tls_versions: \"1.1\" is not a supported TLS version",
        "listener[3].colour: unknown field `colour`",
        "auth.password_file:",
    ];
    for e in expect {
        assert!(
            p.iter()
                .any(|line| line.starts_with(&format!("{label}: {e}"))),
            "missing problem {e:?} in:\n{}",
            p.join("\n")
        );
    }
}

#[test]
fn unknown_keys_and_bad_types_carry_their_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "t.toml",
        &format!("[broker]\nmax_conections = 5\nmax_packet_size = \"big\"\nmax_connections = 0\n[shutdown]\ngrace_period = \"soon\"\n[extra]\na = 1\n{MINIMAL}"),
    );
    let p = problems(load_with_env(&ConfigSource::File(file), &env(&[])));
    let joined = p.join("\n");
    // Several problems in one section are all reported, type errors and range errors alike.
    assert!(
        joined.contains("broker.max_conections: unknown field `max_conections`"),
        "{joined}"
    );
    assert!(
        joined.contains("broker.max_packet_size: invalid type"),
        "{joined}"
    );
    assert!(
        joined.contains("broker.max_connections: 0 is out of range"),
        "{joined}"
    );
    assert!(
        joined.contains("shutdown.grace_period: \"soon\" is not a duration"),
        "{joined}"
    );
    assert!(joined.contains("extra: unknown key"), "{joined}");
}

#[test]
fn toml_syntax_errors_show_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", "[broker]\nmax_connections = = 5\n");
    let p = problems(load_with_env(&ConfigSource::File(file.clone()), &env(&[])));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!(
            "{}: TOML syntax error at line 2, column",
            file.display()
        )),
        "{p:?}"
    );
}

#[test]
fn environment_problems_name_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", MINIMAL);
    let p = problems(load_with_env(
        &ConfigSource::File(file),
        &env(&[("TOLLGATE_BROKER__MAX_CONNECTIONS", "lots")]),
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("TOLLGATE_BROKER__MAX_CONNECTIONS")),
        "{p:?}"
    );
}

#[test]
fn anonymous_on_network_address_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", "[[listener]]\nname = \"d\"\nbind = \"0.0.0.0:8883\"\ntransport = \"tls\"\nallow_anonymous = true\n");
    let loaded = load_with_env(&ConfigSource::File(file), &env(&[])).expect("valid");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("allow_anonymous")),
        "{:?}",
        loaded.warnings
    );
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("development PKI")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn tollgate_variables_without_a_section_are_ignored_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", MINIMAL);
    let loaded = load_with_env(
        &ConfigSource::File(file.clone()),
        &env(&[("TOLLGATE_BIN", "/usr/bin/tollgate")]),
    )
    .expect("a script's own variable does not break loading");
    assert!(
        loaded.warnings.iter().any(|w| w.contains("TOLLGATE_BIN")),
        "{:?}",
        loaded.warnings
    );
    let p = problems(load_with_env(
        &ConfigSource::File(file),
        &env(&[("TOLLGATE_BROKER__MAX_CONECTIONS", "5")]),
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("broker.max_conections: unknown field")
                && l.contains("TOLLGATE_BROKER__MAX_CONECTIONS")),
        "{p:?}"
    );
}

#[test]
fn log_rate_limit_is_read_checked_and_defaults_to_the_documented_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "t.toml", MINIMAL);
    let c = load_with_env(&ConfigSource::File(file), &env(&[]))
        .expect("valid")
        .config;
    let limits = &c.log.rate_limit;
    assert_eq!(
        (limits.per_connection, limits.per_peer, limits.per_broker),
        (10, 50, 1000)
    );
    assert_eq!(limits.interval, Duration::from_secs(60));

    let text = format!("{MINIMAL}[log.rate_limit]\nper_connection = 3\ninterval = \"5m\"\n");
    let file = write(dir.path(), "set.toml", &text);
    let c = load_with_env(&ConfigSource::File(file), &env(&[]))
        .expect("valid")
        .config;
    assert_eq!(c.log.rate_limit.per_connection, 3);
    assert_eq!(c.log.rate_limit.per_peer, 50);
    assert_eq!(c.log.rate_limit.interval, Duration::from_secs(300));

    let text =
        format!("{MINIMAL}[log.rate_limit]\nper_peer = 2000000\ninterval = \"0s\"\nlines = 3\n");
    let file = write(dir.path(), "bad.toml", &text);
    let p = problems(load_with_env(&ConfigSource::File(file), &env(&[])));
    assert!(
        p.iter()
            .any(|l| l.contains("log.rate_limit.lines: unknown field")),
        "{p:#?}"
    );
    let text = format!("{MINIMAL}[log.rate_limit]\nper_peer = 2000000\ninterval = \"0s\"\n");
    let file = write(dir.path(), "range.toml", &text);
    let p = problems(load_with_env(&ConfigSource::File(file), &env(&[])));
    for key in ["log.rate_limit.per_peer:", "log.rate_limit.interval:"] {
        assert!(p.iter().any(|l| l.contains(key)), "{key} in {p:#?}");
    }
}

#[test]
fn the_loader_reports_bridge_keys_with_their_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[bridge]]\nname = \"cloud\"\naddress = [\"h:1\"]\nclient_id = \"gw\"\nca = \"missing.crt\"\ncolour = \"red\"\nprotocol = \"4\"\n\
         [[bridge.topic]]\npattern = \"a/#\"\n[[bridge.topic]]\npattern = \"a/#/b\"\ndirection = \"sideways\"\n",
    )
    .expect("write");
    let problems = load_with_env(&ConfigSource::File(path), &Default::default())
        .expect_err("invalid")
        .problems()
        .join("\n");
    for key in [
        "bridge[0].colour",
        "bridge[0].protocol",
        "bridge[0].topic[1].direction",
    ] {
        assert!(
            problems.contains(&format!("{key}: ")),
            "{key} in:\n{problems}"
        );
    }
}

#[test]
fn broker_section_is_the_broker_settings_type_with_durations_checked_when_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text =
        format!("{MINIMAL}[broker]\nmax_session_expiry = \"50000d\"\nsys_interval = \"2s\"\n");
    let path = write(dir.path(), "t.toml", &text);
    let found = problems(load_with_env(&ConfigSource::File(path), &HashMap::new()));
    assert!(
        found
            .iter()
            .any(|p| p.contains("broker.max_session_expiry") && p.contains("out of range")),
        "{found:?}"
    );
    let text = format!("{MINIMAL}[broker]\nmax_session_expiry = \"1d\"\n");
    let path = write(dir.path(), "ok.toml", &text);
    let c = load_with_env(&ConfigSource::File(path), &HashMap::new())
        .expect("valid")
        .config;
    assert_eq!(c.broker.max_session_expiry, 86_400);
}
