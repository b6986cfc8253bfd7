//! The Modbus adapter against pymodbus over RTU on a socat pty pair (standing in for a
//! USB RS-485 adapter): a slave that never answers on the same bus as a healthy one
//! (the healthy one keeps its poll rate within 10%, the dead one costs at most one
//! timeout per backoff period, goes `offline` and comes back `online` when it answers),
//! damaged replies counted as CRC errors and retried, late replies never decoded as the
//! answer of another unit (skipped and counted as stray frames), and the serial device removed and
//! re-created (the bus reopens by path, values go `stale` and then `good` again), and
//! RS-485 RTS direction control on a port without modem lines (a pty): said once, the
//! bus keeps working; and the 3.5-character silence before every request, measured by a
//! bare responder that timestamps the bytes as they arrive.
//!
//! Every type in every byte and word order it takes is decoded over RTU too, from one
//! coalesced read, a point the device refuses (exception 0x02) reports `error`, and a configured turnaround delay separates every request on the wire.
//!
//! `TOLLGATE_MODBUS_WINDOW_SECS` sets the measuring window of the poll-rate test
//! (default 5 s; a long run: 60); `TOLLGATE_MODBUS_FRAMES` the requests the silence test
//! measures (default 60; a long run: 2000).

mod support;

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use support::gateway::Gateway;
use support::modbus::{every_type_and_order, require_pymodbus, PtyPair, Sim};
use support::{v5, V5, WAIT};

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", String::from_utf8_lossy(bytes)))
}

/// Wait for a publish on `topic` whose payload satisfies `pred`; returns it.
async fn until(client: &mut V5, topic: &str, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching publish on {topic}"
        );
        let p = client.publish().await;
        if p.topic.as_ref() == topic.as_bytes() && pred(&p.payload) {
            return p.payload.to_vec();
        }
    }
}

fn spec() -> Value {
    json!({"devices": {
        "1": {"hr": {"0": [1234, 5678]}},
        "2": {"hr": {"0": [42]}},
    }})
}

fn bus(device: &std::path::Path, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"line\"\ntransport = \"rtu\"\nport = {:?}\nbaud = 19200\nparity = \"none\"\n\
         topic_prefix = \"line\"\ntimeout = \"200ms\"\nretries = 1\nbackoff_min = \"2s\"\nbackoff_max = \"2s\"\nstatus_interval = \"1s\"\n{extra}\
         [[modbus.device]]\nname = \"good\"\nunit = 1\npoll = \"100ms\"\n\
         [[modbus.device.point]]\nname = \"a\"\nkind = \"holding\"\naddress = 0\n\
         [[modbus.device.point]]\nname = \"b\"\nkind = \"holding\"\naddress = 1\nreport = \"interval\"\n\
         [[modbus.device]]\nname = \"flaky\"\nunit = 2\npoll = \"100ms\"\n\
         [[modbus.device.point]]\nname = \"v\"\nkind = \"holding\"\naddress = 0\n",
        device.display().to_string()
    )
}

fn window() -> Duration {
    let secs = std::env::var("TOLLGATE_MODBUS_WINDOW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slave_does_not_slow_the_healthy_one() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "bus") else {
        return;
    };
    let sim = Sim::rtu(&python, dir.path(), "rtu", &spec(), &pty.line);
    sim.mute(&[2]);
    let gateway = Gateway::start(dir.path(), &bus(&pty.device, "")).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("line/+/status", QoS::AtLeastOnce).await;
    client.subscribe("line/good/a", QoS::AtLeastOnce).await;
    until(&mut client, "line/flaky/status", |p| p == b"offline").await;

    // Measure over a window once the dead unit is quarantined and the polls its first
    // failure delayed are caught up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = window();
    let before = sim.requests();
    tokio::time::sleep(window).await;
    let after = sim.requests();
    let new = &after[before.len()..];
    let healthy = new.iter().filter(|r| r.unit == 1).count() as f64;
    let dead = new.iter().filter(|r| r.unit == 2).count() as f64;
    let expected = window.as_secs_f64() / 0.1;
    println!("window {window:?}: healthy polls {healthy} (configured rate: {expected}), dead-unit attempts {dead}");
    assert!(
        (healthy - expected).abs() <= expected * 0.1,
        "healthy unit polled {healthy} times in {window:?}, configured {expected} (±10%)"
    );
    // One attempt per 2 s backoff period at most (plus one at the window's edge).
    assert!(
        dead <= (window.as_secs_f64() / 2.0).ceil() + 1.0,
        "dead unit tried {dead} times"
    );

    // It answers again: back online within a backoff period, with a good value.
    sim.mute(&[]);
    until(&mut client, "line/flaky/status", |p| p == b"online").await;
    let mut values = v5(gateway.addr("local"), "values").await;
    values.subscribe("line/flaky/v", QoS::AtLeastOnce).await;
    let v = until(&mut values, "line/flaky/v", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    assert_eq!(json_of(&v)["value"], json!(42));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_errors_are_counted_and_retried() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "bus") else {
        return;
    };
    let sim = Sim::rtu(&python, dir.path(), "rtu", &spec(), &pty.line);
    let gateway = Gateway::start(dir.path(), &bus(&pty.device, "")).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("line/status", QoS::AtLeastOnce).await;
    client.subscribe("line/good/status", QoS::AtLeastOnce).await;
    until(&mut client, "line/good/status", |p| p == b"online").await;
    // Damage 3 replies: each is retried once (retries = 1); one poll of `good` or
    // `flaky` may fail outright, none panics, and the counters say what happened.
    sim.corrupt(3);
    let doc = until(&mut client, "line/status", |p| {
        let d = json_of(p);
        let crc = |n: &str| d["devices"][n]["crc_errors"].as_u64().unwrap_or(0);
        crc("good") + crc("flaky") >= 3
    })
    .await;
    let doc = json_of(&doc);
    assert_eq!(doc["connected"], json!(true), "{doc}");
    // A pty's driver keeps no UART counters (TIOCGICOUNT): said so, not left out.
    assert_eq!(doc["uart"], json!("unsupported"), "{doc}");
    assert!(
        doc["utilisation"]
            .as_f64()
            .is_some_and(|u| u > 0.0 && u < 1.0),
        "{doc}"
    );
    // Healthy again afterwards: both online with good values.
    let mut values = v5(gateway.addr("local"), "values").await;
    values.subscribe("line/good/b", QoS::AtLeastOnce).await;
    let b = until(&mut values, "line/good/b", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    assert_eq!(json_of(&b)["value"], json!(5678));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_port_is_reopened_when_it_reappears() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "bus") else {
        return;
    };
    let sim = Sim::rtu(&python, dir.path(), "rtu", &spec(), &pty.line);
    let device = pty.device.clone();
    let gateway = Gateway::start(dir.path(), &bus(&device, "")).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("line/good/#", QoS::AtLeastOnce).await;
    until(&mut client, "line/good/a", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;

    // Unplug: the pty pair and the simulator on it go away.
    drop(sim);
    pty.unplug();
    let stale = until(&mut client, "line/good/a", |p| {
        json_of(p)["quality"] == "stale"
    })
    .await;
    assert_eq!(
        json_of(&stale)["value"],
        json!(1234),
        "the last good value is kept, marked stale"
    );
    until(&mut client, "line/good/status", |p| p == b"offline").await;

    // Plug back in at the same path.
    let pty = PtyPair::start(dir.path(), "bus").expect("socat still there");
    assert_eq!(pty.device, device);
    let _sim = Sim::rtu(&python, dir.path(), "rtu2", &spec(), &pty.line);
    // Values are published before the device status of the same poll.
    until(&mut client, "line/good/a", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    until(&mut client, "line/good/status", |p| p == b"online").await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_are_never_taken_for_another_request() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "bus") else {
        return;
    };
    let sim = Sim::rtu(&python, dir.path(), "rtu", &spec(), &pty.line);
    let gateway = Gateway::start(dir.path(), &bus(&pty.device, "")).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    // One subscription: a second SUBSCRIBE's wait for its SUBACK would skip the
    // retained messages the first one brought.
    client.subscribe("line/#", QoS::AtLeastOnce).await;
    until(&mut client, "line/flaky/v", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    // Five replies 350 ms late against a 200 ms timeout: each arrives while the bus
    // waits for a later request (unit 1's retry, unit 2's poll). Unit 2 holds 42 at the
    // address where unit 1 holds 1234: a late reply of unit 1 taken for unit 2 would show.
    sim.delay(350, 5);
    // Every value published meanwhile is checked, until the counters show five timeouts.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let doc = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "five timeouts not reported"
        );
        let p = client.publish().await;
        if p.topic.ends_with(b"/status") && p.topic.as_ref() != b"line/status" {
            continue; // online/offline, not JSON
        }
        let doc = json_of(&p.payload);
        match p.topic.as_ref() {
            b"line/flaky/v" => {
                assert_ne!(doc["value"], json!(1234), "unit 1's reply taken for unit 2")
            }
            b"line/good/a" => {
                assert_ne!(doc["value"], json!(42), "unit 2's reply taken for unit 1")
            }
            b"line/status" => {
                let t = |n: &str| doc["devices"][n]["timeouts"].as_u64().unwrap_or(0);
                if t("good") + t("flaky") >= 5 {
                    break doc;
                }
            }
            _ => {} // line/good/b
        }
    };
    let stray = |n: &str| doc["devices"][n]["stray_frames"].as_u64().unwrap_or(0);
    println!(
        "late replies: {} skipped as strays",
        stray("good") + stray("flaky")
    );
    // Both devices answer again with their own values.
    let mut values = v5(gateway.addr("local"), "values").await;
    values.subscribe("line/flaky/v", QoS::AtLeastOnce).await;
    let v = until(&mut values, "line/flaky/v", |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    assert_eq!(json_of(&v)["value"], json!(42));
    drop(client);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rts_refused_by_the_port_is_said_once_and_the_bus_keeps_working() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let log = support::logs::global("tollgate=info");
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "rts") else {
        return;
    };
    let _sim = Sim::rtu(&python, dir.path(), "rtu", &spec(), &pty.line);
    let rs485 = "[modbus.rs485]\nrts = \"high-while-sending\"\ndelay_before = \"1ms\"\ndelay_after = \"1ms\"\n";
    let gateway = Gateway::start(dir.path(), &bus(&pty.device, rs485)).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("line/status", QoS::AtLeastOnce).await;
    // A pty has no modem lines (TIOCMBIS fails): the polls go on without RTS.
    let doc = until(&mut client, "line/status", |p| {
        json_of(p)["devices"]["good"]["polls"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    assert_eq!(json_of(&doc)["devices"]["good"]["online"], json!(true));
    gateway.stop().await;
    let device = pty.device.display().to_string();
    let refusals = log
        .text()
        .lines()
        .filter(|l| l.contains("refuses to set RTS") && l.contains(&device))
        .count();
    assert_eq!(refusals, 1, "said once for {device}:\n{}", log.text());
    let no_counters = log
        .text()
        .lines()
        .filter(|l| l.contains("keeps no UART error counters") && l.contains(&device))
        .count();
    assert_eq!(no_counters, 1, "said once for {device}:\n{}", log.text());
}

/// Requests the silence test waits for (`TOLLGATE_MODBUS_FRAMES`, default 60).
fn frames() -> usize {
    std::env::var("TOLLGATE_MODBUS_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_separated_by_three_and_a_half_characters_of_silence() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "quiet") else {
        return;
    };
    let spec = json!({"devices": {
        "1": {"hr": {"0": [1], "200": [2]}},
        "2": {"hr": {"0": [3]}},
    }});
    let sim = Sim::rtu_timing(&python, dir.path(), &spec, &pty.line);
    // 9600 baud 8N1: 10 bits a character, 3.5 characters = 3.646 ms. Unit 1's two points
    // are too far apart to join: each of its polls is two requests back to back.
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"line\"\ntransport = \"rtu\"\nport = {:?}\nbaud = 9600\nparity = \"none\"\n\
         topic_prefix = \"line\"\ntimeout = \"200ms\"\n\
         [[modbus.device]]\nname = \"one\"\nunit = 1\npoll = \"50ms\"\n\
         [[modbus.device.point]]\nname = \"a\"\nkind = \"holding\"\naddress = 0\n\
         [[modbus.device.point]]\nname = \"b\"\nkind = \"holding\"\naddress = 200\n\
         [[modbus.device]]\nname = \"two\"\nunit = 2\npoll = \"50ms\"\n\
         [[modbus.device.point]]\nname = \"c\"\nkind = \"holding\"\naddress = 0\n",
        pty.device.display().to_string()
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let wanted = frames();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let timings = loop {
        let t = sim.timings();
        if t.len() >= wanted {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {wanted} requests",
            t.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    gateway.stop().await;
    let silence = 3.5 * 10.0 / 9600.0;
    // From the end of each reply to the first byte of the next request.
    let mut gaps: Vec<f64> = timings.windows(2).map(|w| w[1].0 - w[0].1).collect();
    gaps.sort_by(f64::total_cmp);
    println!(
        "{} gaps: min {:.3} ms, median {:.3} ms (3.5 characters: {:.3} ms)",
        gaps.len(),
        gaps[0] * 1e3,
        gaps[gaps.len() / 2] * 1e3,
        silence * 1e3
    );
    assert!(
        gaps[0] >= silence,
        "a request {:.3} ms after the previous reply, under 3.5 characters ({:.3} ms)",
        gaps[0] * 1e3,
        silence * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_over_rtu_from_one_read() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "types") else {
        return;
    };
    let (holding, mut points, expected) = every_type_and_order();
    // Nothing at 300: the device answers exception 0x02 and the point reports "error".
    points.push_str(
        "[[modbus.device.point]]\nname = \"missing\"\nkind = \"holding\"\naddress = 300\n",
    );
    let spec = json!({"devices": {"1": {"hr": {"0": holding}}}});
    let sim = Sim::rtu(&python, dir.path(), "rtu", &spec, &pty.line);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"line\"\ntransport = \"rtu\"\nport = {:?}\nbaud = 19200\nparity = \"none\"\n\
         topic_prefix = \"line\"\ntimeout = \"1s\"\nstatus_interval = \"1s\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"500ms\"\n{points}",
        pty.device.display().to_string()
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "types").await;
    client.subscribe("line/m/+", QoS::AtLeastOnce).await;
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while expected.iter().any(|(name, _)| !seen.contains_key(name)) || !seen.contains_key("missing")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "values missing: {seen:#?}"
        );
        let p = client.publish().await;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if let Some(name) = topic.strip_prefix("line/m/").filter(|n| *n != "status") {
            seen.insert(name.to_string(), json_of(&p.payload));
        }
    }
    for (name, value) in &expected {
        assert_eq!(&seen[name]["value"], value, "{name}");
        assert_eq!(seen[name]["quality"], "good", "{name}");
    }
    assert_eq!(seen["missing"]["quality"], "error", "{:?}", seen["missing"]);
    assert_eq!(seen["missing"]["value"], Value::Null);
    // One read of all 103 registers per poll (and one of the missing point), as the
    // simulator saw it.
    let reads = sim.requests();
    assert!(!reads.is_empty());
    assert!(
        reads
            .iter()
            .all(|r| [(3, 0, 103), (3, 300, 1)].contains(&(r.function, r.address, r.count))),
        "{reads:?}"
    );
    let mut status = v5(gateway.addr("local"), "status").await;
    status.subscribe("line/status", QoS::AtLeastOnce).await;
    let doc = until(&mut status, "line/status", |p| {
        json_of(p)["devices"]["m"]["exceptions"]["0x02"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(json_of(&doc)["devices"]["m"]["online"], json!(true));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turnaround_delay_separates_every_request_on_the_wire() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(pty) = PtyPair::start(dir.path(), "turn") else {
        return;
    };
    let spec = json!({"devices": {"1": {"hr": {"0": [1], "200": [2]}}, "2": {"hr": {"0": [3]}}}});
    let sim = Sim::rtu_timing(&python, dir.path(), &spec, &pty.line);
    // Polls due back to back (two requests for unit 1, one for unit 2, every 20 ms): only
    // inter_request_delay keeps them 30 ms apart.
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"line\"\ntransport = \"rtu\"\nport = {:?}\nbaud = 9600\nparity = \"none\"\n\
         topic_prefix = \"line\"\ntimeout = \"200ms\"\ninter_request_delay = \"30ms\"\n\
         [[modbus.device]]\nname = \"one\"\nunit = 1\npoll = \"20ms\"\n\
         [[modbus.device.point]]\nname = \"a\"\nkind = \"holding\"\naddress = 0\n\
         [[modbus.device.point]]\nname = \"b\"\nkind = \"holding\"\naddress = 200\n\
         [[modbus.device]]\nname = \"two\"\nunit = 2\npoll = \"20ms\"\n\
         [[modbus.device.point]]\nname = \"c\"\nkind = \"holding\"\naddress = 0\n",
        pty.device.display().to_string()
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let timings = loop {
        let t = sim.timings();
        if t.len() >= 30 {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 30 requests",
            t.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    gateway.stop().await;
    let mut gaps: Vec<f64> = timings.windows(2).map(|w| w[1].0 - w[0].1).collect();
    gaps.sort_by(f64::total_cmp);
    println!("{} gaps: min {:.3} ms", gaps.len(), gaps[0] * 1e3);
    assert!(
        gaps[0] >= 0.030,
        "a request {:.3} ms after the previous reply, under the 30 ms turnaround delay",
        gaps[0] * 1e3
    );
    // Not much more than the delay, the silence and scheduling (room for a loaded machine).
    assert!(
        gaps[gaps.len() / 2] < 0.100,
        "median gap {:.3} ms",
        gaps[gaps.len() / 2] * 1e3
    );
}
