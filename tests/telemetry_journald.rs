//! What `telemetry::init` really writes, observed from outside the process.
//!
//! Each test re-runs this test binary as a child (`child_process_entry`, selected by
//! `TOLLGATE_TELEMETRY_CHILD`) because a global subscriber can be installed only once per process.
//!
//! journald: tracing-journald always sends to the fixed path `/run/systemd/journal/socket`, so the
//! child runs in a private mount namespace (`unshare --mount`, needs root or CAP_SYS_ADMIN) where
//! that directory is a bind mount of a temp dir in which this test has bound a datagram socket.
//! The datagrams are decoded with the journal native protocol and their fields asserted. Where
//! namespaces are not permitted the journald tests print why and return early; CI runs as root.
//! Under qemu-user (cross tests) set `CROSS_TEST_RUNNER` to the emulator command line.

mod support;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::skip_unless_required;
use tollgate::telemetry::{self, LogFormat};

const CHILD_ENV: &str = "TOLLGATE_TELEMETRY_CHILD";
const FILTER_ENV: &str = "TOLLGATE_TELEMETRY_CHILD_FILTER";

/// Runs only inside a child started by the tests below; a no-op in a normal test run.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let format = match mode.as_str() {
        "auto" => LogFormat::Auto,
        "journald" => LogFormat::Journald,
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => panic!("unknown child mode {other}"),
    };
    let filter = std::env::var(FILTER_ENV).ok();
    telemetry::init(format, filter.as_deref())
        .unwrap_or_else(|e| panic!("telemetry init in child: {e}"));
    emit_sample_events();
}

fn emit_sample_events() {
    tracing::debug!(
        client_id = "sensor-7",
        "Debug detail that an info filter drops."
    );
    tracing::info!(
        identity = "sensor-7 (certificate)",
        client_id = "sensor-7",
        listener = "tls",
        "Client connected."
    );
    tracing::warn!(
        client_id = "sensor-7",
        topic = "plant/1/temp",
        reason = "quota",
        "Publish dropped: offline queue full."
    );
    tracing::info!(
        target: "audit",
        identity = "sensor-7 (certificate)",
        client_id = "sensor-7",
        listener = "tls",
        topic = "plant/2/valve",
        rule = "user sensor-7: topic write plant/1/#",
        decision = "deny",
        "Publish denied by ACL."
    );
    tracing::error!(listener = "tls", "Listener failed: multi\nline reason.");
}

fn run_child(mode: &str, filter: Option<&str>, extra_env: &[(&str, &str)]) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    // Under qemu-user without binfmt_misc a foreign binary cannot be exec'd directly:
    // scripts/cross-test.sh sets CROSS_TEST_RUNNER to the same runner cargo uses.
    let runner = std::env::var("CROSS_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    let mut cmd = match runner.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(runner).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args([
        "child_process_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env_remove("RUST_LOG")
    .env_remove("JOURNAL_STREAM")
    .stdin(Stdio::null());
    if let Some(f) = filter {
        cmd.env(FILTER_ENV, f);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "child failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child's panic message (with `--nocapture`) may land on either stream.
fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// journald

type Entry = HashMap<String, String>;

/// Decodes one datagram of the journal native protocol (`KEY=value\n`, or `KEY\n` + u64 LE length
/// + bytes + `\n` for values that may contain newlines).
fn parse_native(mut buf: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !buf.is_empty() {
        let end = buf
            .iter()
            .position(|&b| b == b'\n' || b == b'=')
            .expect("field name terminated");
        let name = String::from_utf8(buf[..end].to_vec()).expect("field names are ASCII");
        if buf[end] == b'=' {
            let rest = &buf[end + 1..];
            let nl = rest
                .iter()
                .position(|&b| b == b'\n')
                .expect("value ends with newline");
            entry.insert(name, String::from_utf8_lossy(&rest[..nl]).into_owned());
            buf = &rest[nl + 1..];
        } else {
            let rest = &buf[end + 1..];
            let len_bytes: [u8; 8] = rest[..8].try_into().expect("8 length bytes");
            let len = usize::try_from(u64::from_le_bytes(len_bytes)).expect("length fits");
            let value = &rest[8..8 + len];
            assert_eq!(rest[8 + len], b'\n', "binary value ends with newline");
            entry.insert(name, String::from_utf8_lossy(value).into_owned());
            buf = &rest[8 + len + 1..];
        }
    }
    entry
}

/// Whether the journald tests can run: the child needs a private mount namespace
/// (`unshare --mount`: root or CAP_SYS_ADMIN). Checked once per test binary, and said
/// once in one line when missing. CI runs as root, so TOLLGATE_REQUIRE_PEERS=1 makes a
/// missing namespace a failure there.
fn namespaces_permitted() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| {
        let ok = Command::new("unshare")
            .args(["--mount", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok || skip_unless_required(
            "`unshare --mount` is not permitted here (needs root or CAP_SYS_ADMIN), so the \
             journald tests cannot fake /run/systemd/journal/socket",
        )
    })
}

/// How the child's stderr relates to `JOURNAL_STREAM`.
#[derive(Clone, Copy)]
enum Stream {
    /// `JOURNAL_STREAM` unset.
    Unset,
    /// `JOURNAL_STREAM` names the child's stderr, as when systemd starts a service.
    IsStderr,
    /// `JOURNAL_STREAM` names some other file (inherited from a parent).
    Inherited,
}

/// What the child sent to the fake journald, and what it wrote to stderr.
struct Captured {
    entries: Vec<Entry>,
    stderr: String,
}

/// Runs the child with the journal socket path redirected to a socket this test owns and its
/// stderr in a file, and returns every non-empty entry it sent.
fn journald_run(mode: &str, filter: Option<&str>, stream: Stream) -> Captured {
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = UnixDatagram::bind(dir.path().join("socket")).expect("bind fake journald");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let stderr_path = dir.path().join("stderr");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let meta = stderr_file.metadata().expect("stderr metadata");
    let journal_stream = match stream {
        Stream::Unset => None,
        Stream::IsStderr => Some(format!("{}:{}", meta.dev(), meta.ino())),
        Stream::Inherited => Some(format!("{}:{}", meta.dev(), meta.ino() + 1)),
    };
    let mut extra_env = Vec::new();
    if let Some(value) = &journal_stream {
        extra_env.push(("JOURNAL_STREAM", value.as_str()));
    }

    let child = run_child(mode, filter, &extra_env);
    let script = "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal; \
                  mount --bind \"$1\" /run/systemd/journal; shift; exec \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(dir.path())
    .arg(child.get_program())
    .args(child.get_args())
    .stderr(stderr_file);
    for (k, v) in child.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run unshare");
    let stderr = std::fs::read_to_string(&stderr_path).expect("read child stderr");
    assert!(
        out.status.success(),
        "child failed: {:?}\nstdout:\n{}\nstderr:\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );

    let mut entries = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    // The child has exited, so every datagram is already queued; the timeout only ends the loop.
    while let Ok(n) = socket.recv(&mut buf) {
        if n > 0 {
            entries.push(parse_native(&buf[..n]));
        }
    }
    Captured { entries, stderr }
}

fn journald_entries(mode: &str, filter: Option<&str>) -> Vec<Entry> {
    journald_run(mode, filter, Stream::Unset).entries
}

fn find<'a>(entries: &'a [Entry], message: &str) -> Option<&'a Entry> {
    entries
        .iter()
        .find(|e| e.get("MESSAGE").map(String::as_str) == Some(message))
}

fn field<'a>(entry: &'a Entry, name: &str) -> &'a str {
    entry
        .get(name)
        .unwrap_or_else(|| panic!("field {name} missing in {entry:?}"))
}

#[test]
fn journald_entries_carry_structured_fields_and_priorities() {
    if !namespaces_permitted() {
        return;
    }
    let entries = journald_entries("journald", Some("info"));

    let connected = find(&entries, "Client connected.").expect("info event sent");
    assert_eq!(field(connected, "PRIORITY"), "5", "info maps to notice");
    assert_eq!(field(connected, "SYSLOG_IDENTIFIER"), "tollgate");
    assert_eq!(field(connected, "CLIENT_ID"), "sensor-7");
    assert_eq!(field(connected, "IDENTITY"), "sensor-7 (certificate)");
    assert_eq!(field(connected, "LISTENER"), "tls");
    assert!(!connected.contains_key("F_CLIENT_ID"), "no F_ prefix");

    let dropped = find(&entries, "Publish dropped: offline queue full.").expect("warn event");
    assert_eq!(field(dropped, "PRIORITY"), "4");
    assert_eq!(field(dropped, "TOPIC"), "plant/1/temp");

    let failed = find(&entries, "Listener failed: multi\nline reason.").expect("error event");
    assert_eq!(field(failed, "PRIORITY"), "3");

    assert!(
        find(&entries, "Debug detail that an info filter drops.").is_none(),
        "the filter applies under journald"
    );
}

#[test]
fn journald_audit_events_use_their_own_identifier() {
    if !namespaces_permitted() {
        return;
    }
    // A quiet filter must not silence the audit trail.
    let entries = journald_entries("journald", Some("warn"));

    let audit = find(&entries, "Publish denied by ACL.").expect("audit event sent at warn filter");
    assert_eq!(field(audit, "SYSLOG_IDENTIFIER"), "tollgate-audit");
    assert_eq!(field(audit, "TARGET"), "audit");
    assert_eq!(field(audit, "RULE"), "user sensor-7: topic write plant/1/#");
    assert_eq!(field(audit, "TOPIC"), "plant/2/valve");
    assert_eq!(field(audit, "DECISION"), "deny");

    let audit_count = entries
        .iter()
        .filter(|e| e.get("MESSAGE").map(String::as_str) == Some("Publish denied by ACL."))
        .count();
    assert_eq!(
        audit_count, 1,
        "audit events go to the audit identifier only"
    );
    assert!(entries
        .iter()
        .filter(|e| e.get("SYSLOG_IDENTIFIER").map(String::as_str) == Some("tollgate-audit"))
        .all(|e| e.get("TARGET").map(String::as_str) == Some("audit")));
    assert!(
        find(&entries, "Client connected.").is_none(),
        "warn filter drops info"
    );
}

#[test]
fn auto_picks_journald_when_started_by_systemd() {
    if !namespaces_permitted() {
        return;
    }
    let run = journald_run("auto", None, Stream::IsStderr);
    assert!(
        find(&run.entries, "Client connected.").is_some(),
        "auto went to journald; stderr: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("Client connected."),
        "not also to stderr"
    );
}

#[test]
fn auto_ignores_an_inherited_journal_stream() {
    if !namespaces_permitted() {
        return;
    }
    let run = journald_run("auto", None, Stream::Inherited);
    assert!(
        run.entries.is_empty(),
        "nothing to journald: {:?}",
        run.entries
    );
    assert!(run.stderr.contains("Client connected."), "{}", run.stderr);
}

#[test]
fn explicit_journald_without_socket_is_an_error() {
    // CI machines run no journald; a developer machine with one cannot run this test.
    if Path::new(telemetry::JOURNALD_SOCKET).exists()
        && !skip_unless_required("a real journald socket exists on this machine")
    {
        return;
    }
    let out = run_child("journald", None, &[])
        .output()
        .expect("run child");
    assert!(!out.status.success(), "init must fail without journald");
    let all = combined(&out);
    assert!(all.contains("cannot log to journald"), "{all}");
}

// ---------------------------------------------------------------------------------------------
// json and text on stderr

#[test]
fn json_lines_carry_fields_and_keep_audit_at_quiet_filter() {
    let out = run_child("json", Some("warn"), &[])
        .output()
        .expect("run child");
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();

    let by_message = |m: &str| {
        events
            .iter()
            .find(|e| e["message"] == m)
            .unwrap_or_else(|| panic!("{m} missing in {stderr}"))
    };
    let dropped = by_message("Publish dropped: offline queue full.");
    assert_eq!(dropped["level"], "WARN");
    assert_eq!(dropped["client_id"], "sensor-7");
    assert_eq!(dropped["topic"], "plant/1/temp");

    let audit = by_message("Publish denied by ACL.");
    assert_eq!(audit["target"], "audit");
    assert_eq!(audit["rule"], "user sensor-7: topic write plant/1/#");

    assert!(
        events.iter().all(|e| e["message"] != "Client connected."),
        "warn filter drops info: {stderr}"
    );
}

#[test]
fn text_goes_to_stderr_with_fields() {
    let out = run_child("text", None, &[]).output().expect("run child");
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("Client connected."))
        .unwrap_or_else(|| panic!("info line missing: {stderr}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("client_id=\"sensor-7\""), "{line}");
    assert!(!stderr.contains("Debug detail"), "default filter is info");
    assert!(
        !line.contains("\u{1b}["),
        "no colour codes when stderr is not a terminal"
    );
}

#[test]
fn auto_without_systemd_writes_text() {
    let out = run_child("auto", None, &[]).output().expect("run child");
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Client connected."), "{stderr}");
}

#[test]
fn invalid_filter_is_reported_not_ignored() {
    let out = run_child("text", Some("tollgate=chatty"), &[])
        .output()
        .expect("run child");
    assert!(!out.status.success());
    let all = combined(&out);
    assert!(all.contains("invalid log filter"), "{all}");
}
