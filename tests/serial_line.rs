//! The serial line adapter against a scripted peer on a socat pty pair (standing in for
//! a USB serial device): lines, fixed frames and regex captures published with their
//! timestamp; garbage (overlong lines, invalid UTF-8) dropped and counted while the
//! next line still arrives; bursts of 1,000 lines without a loss; a flood beyond the
//! publish queue counted as overruns, never reordered; allowlisted sends reaching
//! the peer, a send outside the allowlist refused, answered and audited (and never
//! written); the ACL deciding who sends and where frames go; a device that takes no bytes
//! failing the send in time; the pty removed and re-created while running (status offline → online,
//! frames resume); a pty's missing kernel UART counters reported as unsupported, and
//! said once across reopens.
//!
//! `TOLLGATE_SERIAL_BURSTS` sets the number of 1,000-line bursts of the burst test
//! (default 1; a long run: 100).

mod support;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use support::gateway::Gateway;
use support::modbus::PtyPair;
use support::{v5, wait_until, V5, WAIT};

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", String::from_utf8_lossy(bytes)))
}

/// The next publish on `topic` whose payload satisfies `pred`; others are skipped.
async fn until(client: &mut V5, topic: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching publish on {topic}"
        );
        let p = client.publish().await;
        if p.topic.as_ref() == topic.as_bytes() {
            let doc = json_of(&p.payload);
            if pred(&doc) {
                return doc;
            }
        }
    }
}

/// The next publish on `topic`, whatever it is.
async fn next_on(client: &mut V5, topic: &str) -> Value {
    until(client, topic, |_| true).await
}

/// The device's side of the line: what the test writes, and everything the gateway sent.
struct Peer {
    file: File,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn open(path: &Path) -> Peer {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("pty peer end opens");
        let mut reader = file.try_clone().expect("clone");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            // Ends when socat goes (EIO) or the test process ends.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Peer { file, got }
    }

    /// Write `bytes` as the device (on the blocking pool: a pty holds a few KiB only).
    async fn write(&self, bytes: &[u8]) {
        let mut file = self.file.try_clone().expect("clone");
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || file.write_all(&bytes).expect("peer writes"))
            .await
            .expect("writer");
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().expect("lock")).into_owned()
    }
}

/// The one log capture of this binary (the first test to ask installs it): audit lines
/// and the UART counter notices.
const LOG_FILTER: &str = "audit=info,tollgate::uart=info";

/// The gateway's configuration: a local listener whose slow subscribers hold back the
/// publisher (the adapter) instead of losing messages, so that every frame the adapter
/// queued reaches the test's client and every frame it could not queue is an overrun.
fn body(device: &Path, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         queue_overflow = \"block-publishers\"\n\
         [[serial]]\nname = \"dev\"\nport = {:?}\nbaud = 115200\nstatus_interval = \"1s\"\n\
         backoff_min = \"200ms\"\nbackoff_max = \"1s\"\n{extra}",
        device.display().to_string()
    )
}

/// A gateway on a fresh pty pair, a client subscribed to `serial/#`, and the peer.
async fn setup(dir: &Path, extra: &str) -> Option<(PtyPair, Gateway, V5, Peer)> {
    let pty = PtyPair::start(dir, "tty")?;
    let gateway = Gateway::start(dir, &body(&pty.device, extra)).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("serial/#", QoS::AtLeastOnce).await;
    until(&mut client, "serial/dev/status", |d| d["online"] == true).await;
    let peer = Peer::open(&pty.line);
    Some((pty, gateway, client, peer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_published_and_garbage_is_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), "max_length = 64\n").await
    else {
        return;
    };
    peer.write(b"12.5 kg\r\n").await;
    let first = next_on(&mut client, "serial/dev/rx").await;
    assert_eq!(first["line"], "12.5 kg");
    let ts = first["ts"].as_str().expect("timestamp");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339: {ts}"
    );

    // An overlong line (in two writes), a line that is not UTF-8, then a good one: the
    // next frame on the topic is the good one (nothing was published for the garbage).
    peer.write(&[b'x'; 100]).await;
    peer.write(&[b'y'; 100]).await;
    peer.write(b"\n\xff\xfe bad\nafter\n").await;
    let next = next_on(&mut client, "serial/dev/rx").await;
    assert_eq!(next["line"], "after", "garbage must not be published");
    let status = until(&mut client, "serial/dev/status", |d| d["frames"] == 2).await;
    assert_eq!(status["overlong"], 1, "{status}");
    assert_eq!(status["invalid_utf8"], 1, "{status}");
    assert_eq!(status["framing_errors"], 2, "{status}");
    assert_eq!(status["overruns"], 0, "{status}");
    assert_eq!(status["online"], true);
    // The same document under $SYS, written by the line's broker-side identity.
    let mut sys = v5(gateway.addr("local"), "sys").await;
    sys.subscribe("$SYS/tollgate/serial/dev/state", QoS::AtLeastOnce)
        .await;
    // (The retained one may be the document before the status above: the publisher
    // sends the $SYS copy right after it.)
    let state = until(&mut sys, "$SYS/tollgate/serial/dev/state", |d| {
        d["frames"] == 2
    })
    .await;
    assert_eq!(state["line"], "dev", "{state}");
    assert_eq!(state["overlong"], 1, "{state}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_lines_arrive_complete_and_in_order() {
    let bursts: usize = std::env::var("TOLLGATE_SERIAL_BURSTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), "").await else {
        return;
    };
    let started = std::time::Instant::now();
    for b in 0..bursts {
        // 1,000 lines written at once: at pty speed (far above any baud rate).
        let burst: String = (0..1000).map(|i| format!("line {b:05}:{i:03}\n")).collect();
        peer.write(burst.as_bytes()).await;
        for i in 0..1000 {
            let doc = next_on(&mut client, "serial/dev/rx").await;
            assert_eq!(
                doc["line"],
                format!("line {b:05}:{i:03}"),
                "burst {b}, frame {i}"
            );
        }
    }
    let elapsed = started.elapsed();
    let count = bursts * 1000;
    println!(
        "{count} lines of 16 bytes through the pty and the broker in {:.1} ms ({:.0} frames/s)",
        elapsed.as_secs_f64() * 1000.0,
        count as f64 / elapsed.as_secs_f64()
    );
    let status = until(&mut client, "serial/dev/status", |d| {
        d["frames"] == count as u64
    })
    .await;
    assert_eq!(status["overruns"], 0, "{status}");
    assert_eq!(status["framing_errors"], 0, "{status}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_queue_is_counted_as_overruns_and_never_reordered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), "").await else {
        return;
    };
    // 30,000 lines at pty speed, more than the publish queue holds: whatever is not
    // queued is counted as an overrun, what is queued arrives in order.
    let count = 30_000u64;
    let flood: String = (0..count).map(|i| format!("{i:06}\n")).collect();
    let mut watch = v5(gateway.addr("local"), "status").await;
    watch.subscribe("serial/dev/status", QoS::AtLeastOnce).await;
    peer.write(flood.as_bytes()).await;
    let status = until(&mut watch, "serial/dev/status", |d| {
        d["frames"].as_u64().unwrap_or(0) + d["overruns"].as_u64().unwrap_or(0) == count
    })
    .await;
    // Everything is framed and counted; the marker shows where the published ones end.
    peer.write(b"marker\n").await;
    let mut last: Option<u64> = None;
    let mut received = 0u64;
    loop {
        let doc = next_on(&mut client, "serial/dev/rx").await;
        let line = doc["line"].as_str().expect("line").to_string();
        if line == "marker" {
            break;
        }
        let n: u64 = line.parse().expect("a number");
        assert!(last.is_none_or(|l| n > l), "{n} after {last:?}");
        last = Some(n);
        received += 1;
    }
    assert_eq!(status["frames"], received, "{status}");
    println!(
        "flood of {count} lines: {received} published, {} overruns",
        status["overruns"]
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_frames_are_published_as_hex() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "framing = \"fixed\"\nframe_length = 4\n";
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), extra).await else {
        return;
    };
    peer.write(&[0x01, 0x02, 0x0a]).await;
    peer.write(&[0xff, 0x00, 0x10, 0x20, 0x30, 0x40]).await;
    let a = next_on(&mut client, "serial/dev/rx").await;
    let b = next_on(&mut client, "serial/dev/rx").await;
    assert_eq!(a["hex"], "01020aff");
    assert_eq!(b["hex"], "00102030");
    assert!(b["ts"].is_string());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_captures_become_fields_and_topic_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "framing = \"regex\"\n\
                 pattern = '^(?P<kind>ST|US),(?P<weight>[+-][0-9.]+) ?(?P<unit>kg|g)$'\n\
                 topic = \"{prefix}/{name}/{kind}\"\n";
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), extra).await else {
        return;
    };
    peer.write(b"ST,+001.250 kg\r\nnot a reading\r\nUS,-0.5g\r\n")
        .await;
    let stable = next_on(&mut client, "serial/dev/ST").await;
    assert_eq!(stable["weight"], "+001.250");
    assert_eq!(stable["unit"], "kg");
    assert_eq!(stable["kind"], "ST");
    assert!(stable["ts"].is_string());
    let unstable = next_on(&mut client, "serial/dev/US").await;
    assert_eq!(unstable["weight"], "-0.5");
    let status = until(&mut client, "serial/dev/status", |d| d["frames"] == 2).await;
    assert_eq!(status["no_match"], 1, "{status}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_reach_the_peer_and_a_send_outside_the_allowlist_is_refused_and_audited() {
    let log = support::logs::global(LOG_FILTER);
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "send_allow = 'TARE|ZERO|PRINT [0-9]{1,3}'\nsend_suffix = \"\\r\\n\"\nsend_interval = \"0s\"\n";
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), extra).await else {
        return;
    };
    let mut operator = v5(gateway.addr("local"), "operator-7").await;
    operator
        .subscribe("serial/dev/send/result", QoS::AtLeastOnce)
        .await;
    for payload in ["TARE", "TARE; REBOOT", "PRINT 12"] {
        operator
            .client
            .publish("serial/dev/send", QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        let answer = next_on(&mut operator, "serial/dev/send/result").await;
        assert_eq!(
            answer["ok"],
            payload != "TARE; REBOOT",
            "{payload}: {answer}"
        );
    }
    // Retained, the allowed payload is a replay: refused live, not only at subscribe.
    operator
        .client
        .publish("serial/dev/send", QoS::AtLeastOnce, true, "ZERO")
        .await
        .expect("publish");
    let answer = next_on(&mut operator, "serial/dev/send/result").await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("retained")),
        "{answer}"
    );
    wait_until("both allowed sends reach the peer", || {
        peer.received().contains("PRINT 12\r\n")
    })
    .await;
    assert_eq!(
        peer.received(),
        "TARE\r\nPRINT 12\r\n",
        "the refused send was never written"
    );
    // Two written, two refused (the allowlist, the retained replay).
    until(&mut client, "serial/dev/status", |d| {
        d["sends"] == 2 && d["sends_refused"] == 2
    })
    .await;
    let text = log.text();
    let audit = |event: &str, needle: &str| {
        text.lines().any(|l| {
            l.contains(&format!("event=\"{event}\""))
                && l.contains("operator-7")
                && l.contains(needle)
        })
    };
    assert!(audit("field_write", "sent TARE"), "{text}");
    assert!(
        audit("field_write_refused", "does not match send_allow"),
        "{text}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_port_goes_offline_and_frames_resume_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((pty, gateway, mut client, peer)) = setup(dir.path(), "").await else {
        return;
    };
    peer.write(b"before\n").await;
    assert_eq!(
        next_on(&mut client, "serial/dev/rx").await["line"],
        "before"
    );
    drop(peer);
    pty.unplug();
    let offline = until(&mut client, "serial/dev/status", |d| d["online"] == false).await;
    assert!(offline["last_error"].is_string(), "{offline}");

    let pty = PtyPair::start(dir.path(), "tty").expect("socat still there");
    let online = until(&mut client, "serial/dev/status", |d| d["online"] == true).await;
    assert_eq!(online["opens"], 2, "{online}");
    let peer = Peer::open(&pty.line);
    peer.write(b"after\n").await;
    assert_eq!(next_on(&mut client, "serial/dev/rx").await["line"], "after");
    gateway.stop().await;
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_has_no_uart_counters_which_is_said_once_across_reopens() {
    let log = support::logs::global(LOG_FILTER);
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((pty, gateway, mut client, peer)) = setup(dir.path(), "").await else {
        return;
    };
    let device = pty.device.display().to_string();
    // The kernel's counters (TIOCGICOUNT): a pty's driver keeps none; the status and
    // $SYS say "unsupported" instead of leaving them out or showing zeros.
    let status = until(&mut client, "serial/dev/status", |d| d["online"] == true).await;
    assert_eq!(status["uart"], "unsupported", "{status}");
    let mut sys = v5(gateway.addr("local"), "sys").await;
    sys.subscribe("$SYS/tollgate/serial/dev/state", QoS::AtLeastOnce)
        .await;
    let state = next_on(&mut sys, "$SYS/tollgate/serial/dev/state").await;
    assert_eq!(state["uart"], "unsupported", "{state}");
    // Unplugged and back: reopened, still unsupported, and not said again.
    drop(peer);
    pty.unplug();
    until(&mut client, "serial/dev/status", |d| d["online"] == false).await;
    let pty = PtyPair::start(dir.path(), "tty").expect("socat still there");
    let online = until(&mut client, "serial/dev/status", |d| {
        d["online"] == true && d["opens"] == 2
    })
    .await;
    assert_eq!(online["uart"], "unsupported", "{online}");
    // Several status intervals (1 s) pass: each reads the counters again, or would.
    until(&mut client, "serial/dev/status", |d| {
        d["ts"] != online["ts"] && d["opens"] == 2
    })
    .await;
    gateway.stop().await;
    let said = log
        .text()
        .lines()
        .filter(|l| l.contains("keeps no UART error counters") && l.contains(&device))
        .count();
    assert_eq!(said, 1, "said once for {device}:\n{}", log.text());
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reopens_only_the_changed_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(a) = PtyPair::start(dir.path(), "a") else {
        return;
    };
    let b = PtyPair::start(dir.path(), "b").expect("socat");
    let lines = |b_extra: &str| {
        format!(
            "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
             [[serial]]\nname = \"a\"\nport = {:?}\nstatus_interval = \"1s\"\n\
             [[serial]]\nname = \"b\"\nport = {:?}\nstatus_interval = \"1s\"\n{b_extra}",
            a.device.display().to_string(),
            b.device.display().to_string()
        )
    };
    let gateway = Gateway::start(dir.path(), &lines("")).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("serial/#", QoS::AtLeastOnce).await;
    let (peer_a, peer_b) = (Peer::open(&a.line), Peer::open(&b.line));
    peer_a.write(b"a1\n").await;
    peer_b.write(b"b1\n").await;
    until(&mut client, "serial/a/status", |d| d["frames"] == 1).await;
    until(&mut client, "serial/b/status", |d| d["frames"] == 1).await;

    // Only b's settings change: b is reopened (its counters start again), a keeps
    // running (its counters go on).
    support::gateway::write_config(
        dir.path(),
        &format!(
            "sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{}",
            lines("max_length = 64\n")
        ),
    );
    gateway.reload.reload().await.expect("reload accepted");
    until(&mut client, "serial/b/status", |d| {
        d["online"] == true && d["frames"] == 0
    })
    .await;
    peer_a.write(b"a2\n").await;
    peer_b.write(b"b2\n").await;
    let a_status = until(&mut client, "serial/a/status", |d| d["frames"] == 2).await;
    assert_eq!(a_status["opens"], 1, "a was never reopened: {a_status}");
    let b_status = until(&mut client, "serial/b/status", |d| d["frames"] == 1).await;
    assert_eq!(b_status["opens"], 1, "{b_status}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_takes_no_bytes_fails_the_send_in_time_and_reading_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "tty") else {
        return;
    };
    let extra = "send_allow = '[A-Z]{1,1000}'\nsend_interval = \"0s\"\nsend_timeout = \"300ms\"\n";
    let gateway = Gateway::start(dir.path(), &body(&pty.device, extra)).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("serial/#", QoS::AtLeastOnce).await;
    until(&mut client, "serial/dev/status", |d| d["online"] == true).await;
    // The device is there but never reads (as a line held by flow control): the ptys
    // and socat take a few hundred KiB, then every write would wait for ever.
    let mut device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.line)
        .expect("pty peer end opens");
    let mut operator = v5(gateway.addr("local"), "operator").await;
    operator
        .subscribe("serial/dev/send/result", QoS::AtLeastOnce)
        .await;
    let payload = "A".repeat(1000);
    let mut written = 0;
    let failed = loop {
        assert!(written < 2000, "2 MB taken by a device that never reads");
        operator
            .client
            .publish("serial/dev/send", QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
        let answer = next_on(&mut operator, "serial/dev/send/result").await;
        if answer["ok"] == false {
            break answer;
        }
        written += 1;
    };
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("write timed out after 300ms"), "{failed}");
    // The line still reads what the device says, and stops at once when asked.
    tokio::task::spawn_blocking(move || device.write_all(b"alive\n").expect("device writes"))
        .await
        .expect("writer");
    assert_eq!(next_on(&mut client, "serial/dev/rx").await["line"], "alive");
    let status = until(&mut client, "serial/dev/status", |d| {
        d["sends_refused"] == 1
    })
    .await;
    assert_eq!(status["sends"], written, "{status}");
    let stopping = std::time::Instant::now();
    gateway.stop().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_would_make_a_dollar_topic_is_a_bad_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "framing = \"regex\"\npattern = '^(?P<kind>\\S+) (?P<value>.*)$'\ntopic = \"{kind}/{name}\"\n";
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), extra).await else {
        return;
    };
    // The device picks the first level: "$SYS" must not become the adapter's topic.
    peer.write(b"$SYS forged\nweight 12\n").await;
    let good = until(&mut client, "serial/dev/status", |d| d["frames"] == 1).await;
    assert_eq!(good["bad_topic"], 1, "{good}");
    assert_eq!(good["framing_errors"], 1, "{good}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_decides_who_sends_and_where_frames_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The adapter may write its own subtree only; "operator" may send, others may not.
    let extra = "framing = \"regex\"\npattern = '^(?P<kind>[a-z]+) (?P<v>.*)$'\n\
                 topic = \"{prefix}/{kind}\"\nsend_allow = 'TARE'\nsend_interval = \"0s\"\n\
                 [acl]\n\
                 [[acl.rule]]\nuser = \"adapter:dev\"\naccess = \"readwrite\"\ntopic = \"serial/dev/#\"\n\
                 [[acl.rule]]\naccess = \"read\"\ntopic = \"serial/#\"\n\
                 [[acl.rule]]\npattern = true\naccess = \"write\"\ntopic = \"serial/dev/%c\"\n";
    let Some((_pty, gateway, mut client, peer)) = setup(dir.path(), extra).await else {
        return;
    };
    // "dev" stays inside the grant; "other" would leave it: published by nobody.
    peer.write(b"other 1\ndev 2\n").await;
    let first = loop {
        let p = client.publish().await;
        if matches!(p.topic.as_ref(), b"serial/dev" | b"serial/other") {
            break p;
        }
    };
    assert_eq!(
        first.topic.as_ref(),
        b"serial/dev",
        "the ACL let the adapter out"
    );
    assert_eq!(json_of(&first.payload)["v"], "2");
    // An intruder's send is refused by the broker and never written.
    let mut intruder = v5(gateway.addr("local"), "intruder").await;
    intruder
        .client
        .publish("serial/dev/send", QoS::AtLeastOnce, false, "TARE")
        .await
        .expect("publish");
    let code = intruder
        .wait_for(|p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
    assert_eq!(format!("{code:?}"), "NotAuthorized");
    // "send" may (the pattern: its client id is the last level).
    let sender = v5(gateway.addr("local"), "send").await;
    sender
        .client
        .publish("serial/dev/send", QoS::AtLeastOnce, false, "TARE")
        .await
        .expect("publish");
    let status = until(&mut client, "serial/dev/status", |d| d["sends"] == 1).await;
    assert_eq!(status["sends_refused"], 0, "{status}");
    wait_until("the granted send reaches the peer", || {
        peer.received() == "TARE"
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(peer.received(), "TARE", "only the granted send was written");
    gateway.stop().await;
}
