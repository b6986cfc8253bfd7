//! The Modbus adapter against misbehaving TCP peers: a device restarted at its address
//! (the bus reconnects; values go `stale`, the device `offline`, then `good` and `online`
//! again), replies that come after their timeout (skipped by transaction id, never
//! decoded as the answer of a later request), a scripted device answering with the wrong
//! function, byte count, unit or MBAP header or an exception (each refused, counted or
//! reported; the bus resynchronises by reconnecting, nothing panics), and a write the
//! device refuses, answered with its Modbus exception on `.../set/result` to an MQTT
//! 3.1.1 writer (no response topic) and audited.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use support::gateway::Gateway;
use support::modbus::{require_pymodbus, Sim};
use support::{free_port, v4, v5, V4, V5, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", String::from_utf8_lossy(bytes)))
}

fn listener() -> &'static str {
    "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n"
}

/// The next publish on `topic` satisfying `pred`, checking every publish on the way with
/// `check` (topic, payload).
async fn until(
    client: &mut V5,
    topic: &str,
    mut check: impl FnMut(&str, &[u8]),
    mut pred: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching publish on {topic}"
        );
        let p = client.publish().await;
        let t = String::from_utf8_lossy(&p.topic).into_owned();
        check(&t, &p.payload);
        if t == topic && pred(&p.payload) {
            return p.payload.to_vec();
        }
    }
}

fn ignore(_: &str, _: &[u8]) {}

/// A gateway config with the local listener and one Modbus TCP bus `plant` at `port`:
/// device `m` (unit 1, polled every 100 ms) with holding register 0 as point `a`, a
/// 200 ms timeout, status every second and `retry` (retries and backoff keys).
fn one_point_tcp_bus(port: u16, retry: &str) -> String {
    format!(
        "{}[[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntopic_prefix = \"plant\"\n\
         timeout = \"200ms\"\n{retry}\nstatus_interval = \"1s\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"100ms\"\n\
         [[modbus.device.point]]\nname = \"a\"\nkind = \"holding\"\naddress = 0\n",
        listener()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tcp_device_is_reconnected() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let spec = json!({"devices": {"1": {"hr": {"0": [1234]}}}});
    let sim = Sim::tcp_on(&python, dir.path(), "first", &spec, port);
    let body = one_point_tcp_bus(
        port,
        "retries = 0\nbackoff_min = \"200ms\"\nbackoff_max = \"400ms\"",
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("plant/#", QoS::AtLeastOnce).await;
    until(&mut client, "plant/m/a", ignore, |p| {
        json_of(p)["quality"] == "good"
    })
    .await;

    // The device goes away: its connection drops, reconnects are refused.
    drop(sim);
    let stale = until(&mut client, "plant/m/a", ignore, |p| {
        json_of(p)["quality"] == "stale"
    })
    .await;
    assert_eq!(json_of(&stale)["value"], json!(1234), "last value kept");
    until(&mut client, "plant/m/status", ignore, |p| p == b"offline").await;
    let down = until(&mut client, "plant/status", ignore, |p| {
        json_of(p)["connected"] == json!(false)
    })
    .await;
    assert!(
        json_of(&down)["open_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        String::from_utf8_lossy(&down)
    );

    // Back at the same address, with a new value.
    let spec = json!({"devices": {"1": {"hr": {"0": [4321]}}}});
    let _sim = Sim::tcp_on(&python, dir.path(), "second", &spec, port);
    let back = until(&mut client, "plant/m/a", ignore, |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    assert_eq!(json_of(&back)["value"], json!(4321));
    until(&mut client, "plant/m/status", ignore, |p| p == b"online").await;
    let up = until(&mut client, "plant/status", ignore, |p| {
        json_of(p)["connected"] == json!(true)
    })
    .await;
    assert!(
        json_of(&up)["opens"].as_u64().is_some_and(|n| n >= 2),
        "{}",
        String::from_utf8_lossy(&up)
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_tcp_replies_are_skipped_by_transaction_id() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // One unit, two points too far apart to join: two one-register reads per poll. A
    // late reply to the read of 0 (1234) taken for the read of 200 would publish 1234
    // as `far`.
    let spec = json!({"devices": {"1": {"hr": {"0": [1234], "200": [42]}}}});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "{}[[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\n\
         timeout = \"200ms\"\nretries = 1\nbackoff_min = \"200ms\"\nbackoff_max = \"200ms\"\nstatus_interval = \"1s\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"100ms\"\n\
         [[modbus.device.point]]\nname = \"near\"\nkind = \"holding\"\naddress = 0\nreport = \"interval\"\n\
         [[modbus.device.point]]\nname = \"far\"\nkind = \"holding\"\naddress = 200\nreport = \"interval\"\n",
        listener(),
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("plant/#", QoS::AtLeastOnce).await;
    until(&mut client, "plant/m/far", ignore, |p| {
        json_of(p)["quality"] == "good"
    })
    .await;
    // Four replies 350 ms late against a 200 ms timeout: each arrives while the bus
    // waits for the reply to a later transaction.
    sim.delay(350, 4);
    let check = |topic: &str, payload: &[u8]| match topic {
        "plant/m/near" => assert_ne!(
            json_of(payload)["value"],
            json!(42),
            "far's reply taken for near"
        ),
        "plant/m/far" => assert_ne!(
            json_of(payload)["value"],
            json!(1234),
            "near's reply taken for far"
        ),
        _ => {}
    };
    let doc = until(&mut client, "plant/status", check, |p| {
        let d = json_of(p);
        d["devices"]["m"]["timeouts"].as_u64().unwrap_or(0) >= 4
            && d["devices"]["m"]["stray_frames"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let doc = json_of(&doc);
    assert_eq!(doc["opens"], json!(1), "skipped, not reconnected: {doc}");
    // And both values right again afterwards.
    until(&mut client, "plant/m/far", check, |p| {
        json_of(p)["quality"] == "good" && json_of(p)["value"] == json!(42)
    })
    .await;
    until(&mut client, "plant/m/near", check, |p| {
        json_of(p)["quality"] == "good" && json_of(p)["value"] == json!(1234)
    })
    .await;
    gateway.stop().await;
}

/// How the scripted device answers a read of one holding register (it holds 7; every
/// wrong answer carries 99).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Right,
    WrongFunction,
    WrongByteCount,
    WrongUnit,
    BadHeader,
    Exception,
}

const ANSWERS: [Answer; 6] = [
    Answer::Right,
    Answer::WrongFunction,
    Answer::WrongByteCount,
    Answer::WrongUnit,
    Answer::BadHeader,
    Answer::Exception,
];

/// A Modbus TCP device on `listener` answering each request as `mode` says.
async fn scripted_device(listener: tokio::net::TcpListener, mode: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mode = mode.clone();
        tokio::spawn(async move {
            loop {
                let mut header = [0u8; 7];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                let mut pdu = vec![0u8; len.saturating_sub(1)];
                if stream.read_exact(&mut pdu).await.is_err() {
                    return;
                }
                let (tid, unit) = ([header[0], header[1]], header[6]);
                let (unit, pdu): (u8, Vec<u8>) = match ANSWERS[mode.load(Ordering::SeqCst)] {
                    Answer::Right => (unit, vec![3, 2, 0, 7]),
                    Answer::WrongFunction => (unit, vec![4, 2, 0, 99]),
                    Answer::WrongByteCount => (unit, vec![3, 4, 0, 99, 0, 99]),
                    Answer::WrongUnit => (unit.wrapping_add(8), vec![3, 2, 0, 99]),
                    Answer::BadHeader => {
                        // Protocol id 1 and a length no Modbus frame has: out of sync.
                        let _ = stream
                            .write_all(&[tid[0], tid[1], 0, 1, 0xFF, 0xFF, unit, 3, 2, 0, 99])
                            .await;
                        continue;
                    }
                    Answer::Exception => (unit, vec![0x83, 4]),
                };
                let mut adu = vec![tid[0], tid[1], 0, 0];
                adu.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
                adu.push(unit);
                adu.extend_from_slice(&pdu);
                if stream.write_all(&adu).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answers_are_never_published_and_the_bus_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = device.local_addr().expect("addr").port();
    let mode = Arc::new(AtomicUsize::new(0));
    tokio::spawn(scripted_device(device, mode.clone()));
    let body = one_point_tcp_bus(
        port,
        "retries = 1\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"",
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("plant/#", QoS::AtLeastOnce).await;
    let never_99 = |topic: &str, payload: &[u8]| {
        if topic == "plant/m/a" && !payload.is_empty() {
            assert_ne!(
                json_of(payload)["value"],
                json!(99),
                "a wrong answer was published"
            );
        }
    };
    let good = |p: &[u8]| json_of(p)["quality"] == "good" && json_of(p)["value"] == json!(7);
    until(&mut client, "plant/m/a", never_99, good).await;
    let device_doc = |p: &[u8]| json_of(p)["devices"]["m"].clone();

    // Another function's answer, a byte count for two registers: refused, the device
    // goes offline with the reason, the value stale.
    for (answer, said) in [
        (
            Answer::WrongFunction,
            "function 4 answers a request with function 3",
        ),
        (Answer::WrongByteCount, "4 data bytes for 1 registers"),
    ] {
        mode.store(answer as usize, Ordering::SeqCst);
        let doc = until(&mut client, "plant/status", never_99, |p| {
            device_doc(p)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(said))
        })
        .await;
        assert_eq!(device_doc(&doc)["online"], json!(false), "{answer:?}");
        mode.store(0, Ordering::SeqCst);
        until(&mut client, "plant/m/a", never_99, good).await;
    }
    // Another unit's answer to this transaction: skipped as stray, then a timeout.
    mode.store(Answer::WrongUnit as usize, Ordering::SeqCst);
    until(&mut client, "plant/status", never_99, |p| {
        let d = device_doc(p);
        d["stray_frames"].as_u64().unwrap_or(0) >= 1 && d["last_error"] == "timeout"
    })
    .await;
    mode.store(0, Ordering::SeqCst);
    until(&mut client, "plant/m/a", never_99, good).await;
    // A broken MBAP header: the stream is out of sync, so the bus reconnects.
    mode.store(Answer::BadHeader as usize, Ordering::SeqCst);
    until(&mut client, "plant/status", never_99, |p| {
        json_of(p)["opens"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    // An exception: the device answered (online), the point reports quality "error".
    mode.store(Answer::Exception as usize, Ordering::SeqCst);
    until(&mut client, "plant/m/a", never_99, |p| {
        json_of(p)["quality"] == "error"
    })
    .await;
    let doc = until(&mut client, "plant/status", never_99, |p| {
        device_doc(p)["exceptions"]["0x04"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(device_doc(&doc)["online"], json!(true));
    assert!(
        device_doc(&doc)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("server device failure")),
        "{}",
        String::from_utf8_lossy(&doc)
    );
    mode.store(0, Ordering::SeqCst);
    until(&mut client, "plant/m/a", never_99, good).await;
    gateway.stop().await;
}

/// Publish `payload` to point `point`'s set topic as 3.1.1 `writer`; the answer on its
/// result topic.
async fn ask(writer: &mut V4, point: &str, payload: &str) -> Value {
    writer
        .client
        .publish(
            format!("plant/m/{point}/set"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("queued");
    let p = writer.publish().await;
    assert_eq!(p.topic, format!("plant/m/{point}/set/result"));
    json_of(&p.payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_device_refuses_is_answered_with_its_exception_to_a_3_1_1_writer() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let log = support::logs::global("audit=info");
    let dir = tempfile::tempdir().expect("tempdir");
    // Holding 0 exists; 50 does not (exception 0x02 for reads and writes).
    let spec = json!({"devices": {"1": {"hr": {"0": [5]}}}});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "{}[[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\ntimeout = \"1s\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"200ms\"\n\
         [[modbus.device.point]]\nname = \"speed\"\nkind = \"holding\"\naddress = 0\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"ghost\"\nkind = \"holding\"\naddress = 50\nwritable = true\nwrite_interval = \"0\"\n",
        listener(),
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut values = v5(gateway.addr("local"), "values").await;
    values.subscribe("plant/m/speed", QoS::AtLeastOnce).await;
    values.publish().await;
    let mut writer = v4(gateway.addr("local"), "operator-311").await;
    writer
        .subscribe("plant/m/+/set/result", rumqttc::QoS::AtLeastOnce)
        .await;
    let refused = ask(&mut writer, "ghost", "3").await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("exception 0x02 (illegal data address)")),
        "{refused}"
    );
    let ok = ask(&mut writer, "speed", "9").await;
    assert_eq!(ok, json!({"ok": true, "value": 9}));
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.function == 6 && r.address == 50));
    gateway.stop().await;
    let text = log.text();
    assert!(
        text.lines().any(|l| l.contains("event=\"field_write\"")
            && l.contains("operator-311")
            && l.contains("plant/m/ghost/set")
            && l.contains("exception 0x02")),
        "{text}"
    );
}
