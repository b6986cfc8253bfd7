//! The Modbus adapter against pymodbus over Modbus TCP (the independent device): every
//! type and byte/word order decoded against values the simulator holds, coalesced reads
//! counted on the simulator's side, a joined read refused with exception 0x02 split and
//! remembered, a single refused point reported with quality `error`, and guarded writes
//! (allowed, out of bounds, not writable, rate limited, ACL-denied, expired), each
//! answered and audited with the writer's identity; `bit(n)` writes (read-modify-write,
//! other bits kept), `string(N)` writes (function 16) and `write_multiple` devices
//! (functions 15 and 16), checked by reading the simulator back as a second master; and
//! `payload = "raw"`, where each topic carries the bare value the device holds; a reload
//! with the same wire applied in place; and what is published when (`on-change` within
//! and beyond the deadband, with scale and offset; `interval`; `both`), with the device's
//! values changed by a second master (no reconnect, counters kept, new points polled,
//! removed ones cleared) and one with a changed address restarting the bus.

mod support;

use std::collections::HashMap;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use support::gateway::Gateway;
use support::modbus::{require_pymodbus, Sim};
use support::{v5, wait_until, V5, WAIT};

/// The four orders as the letters of the big-endian bytes on the wire.
fn place(be: &[u8], order: &str) -> Vec<u16> {
    let mut regs: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            if order == "BADC" || order == "DCBA" {
                u16::from_be_bytes([c[1], c[0]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    if order == "CDAB" || order == "DCBA" {
        regs.reverse();
    }
    regs
}

/// Collect retained/live publishes on `filter` until `done` holds for the latest values.
async fn collect(
    client: &mut V5,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "values not complete: {seen:#?}"
        );
        let p = client.publish().await;
        seen.insert(
            String::from_utf8_lossy(&p.topic).into_owned(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    seen
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

/// One capture per test binary: the audit lines and the adapter's own.
const LOG_FILTER: &str = "audit=info,tollgate::modbus=info";

const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_and_reads_are_coalesced() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Holding registers from 0: per order u32, i32, f32, u64, i64, f64 (20 registers).
    let mut holding: Vec<u16> = Vec::new();
    let mut points = String::new();
    for (i, order) in ORDERS.iter().enumerate() {
        let base = i * 20;
        holding.extend(place(&0x1122_3344u32.to_be_bytes(), order));
        holding.extend(place(&(-123_456i32).to_be_bytes(), order));
        holding.extend(place(&12.5f32.to_be_bytes(), order));
        holding.extend(place(&0x0102_0304_0506_0708u64.to_be_bytes(), order));
        holding.extend(place(&(-9_876_543_210i64).to_be_bytes(), order));
        holding.extend(place(&(-0.1f64).to_be_bytes(), order));
        holding.extend([0, 0]);
        for (name, t, offset) in [
            ("u32", "u32", 0),
            ("i32", "i32", 2),
            ("f32", "f32", 4),
            ("u64", "u64", 6),
            ("i64", "i64", 10),
            ("f64", "f64", 14),
        ] {
            points.push_str(&format!(
                "[[modbus.device.point]]\nname = \"{name}_{order}\"\nkind = \"holding\"\naddress = {}\ntype = \"{t}\"\norder = \"{order}\"\n",
                base + offset
            ));
        }
    }
    // 80..: u16, i16, a register of flags, "Hello" in three registers.
    holding.extend([
        65_000,
        (-2i16) as u16,
        0b1000,
        u16::from_be_bytes(*b"He"),
        u16::from_be_bytes(*b"ll"),
        u16::from_be_bytes([b'o', 0]),
    ]);
    points.push_str(concat!(
        "[[modbus.device.point]]\nname = \"u16\"\nkind = \"holding\"\naddress = 80\ntype = \"u16\"\n",
        "[[modbus.device.point]]\nname = \"i16\"\nkind = \"holding\"\naddress = 81\ntype = \"i16\"\n",
        "[[modbus.device.point]]\nname = \"flag3\"\nkind = \"holding\"\naddress = 82\ntype = \"bit(3)\"\n",
        "[[modbus.device.point]]\nname = \"flag2\"\nkind = \"holding\"\naddress = 82\ntype = \"bit(2)\"\n",
        "[[modbus.device.point]]\nname = \"text\"\nkind = \"holding\"\naddress = 83\ntype = \"string(5)\"\n",
        "[[modbus.device.point]]\nname = \"volts\"\nkind = \"input\"\naddress = 0\ntype = \"u16\"\nscale = 0.1\nunit_label = \"V\"\n",
        "[[modbus.device.point]]\nname = \"coil0\"\nkind = \"coil\"\naddress = 0\ntype = \"bool\"\n",
        "[[modbus.device.point]]\nname = \"coil2\"\nkind = \"coil\"\naddress = 2\ntype = \"bool\"\n",
        "[[modbus.device.point]]\nname = \"input1\"\nkind = \"discrete\"\naddress = 1\ntype = \"bool\"\n",
        // 200 and 203 exist, 201..202 do not: the joined read is refused and split.
        "[[modbus.device.point]]\nname = \"gap_a\"\nkind = \"holding\"\naddress = 200\n",
        "[[modbus.device.point]]\nname = \"gap_b\"\nkind = \"holding\"\naddress = 203\n",
        // Nothing at 300: a single refused point.
        "[[modbus.device.point]]\nname = \"missing\"\nkind = \"holding\"\naddress = 300\n",
    ));
    let spec = json!({"devices": {"1": {
        "hr": {"0": holding, "200": [7], "203": [9]},
        "ir": {"0": [2305]},
        "co": {"0": [true, false, true]},
        "di": {"0": [false, true]},
    }}});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\nmax_gap = 8\nstatus_interval = \"1s\"\n\
         [[modbus.device]]\nname = \"m1\"\nunit = 1\npoll = \"300ms\"\n{points}",
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "reader").await;
    client.subscribe("plant/m1/+", QoS::AtLeastOnce).await;
    // 24 typed points, 12 others, the device status.
    let names = 6 * 4 + 12 + 1;
    let seen = collect(&mut client, |s| s.len() >= names).await;
    let value = |name: &str| json_of(&seen[&format!("plant/m1/{name}")]);
    for order in ORDERS {
        assert_eq!(
            value(&format!("u32_{order}"))["value"],
            json!(0x1122_3344u32),
            "{order}"
        );
        assert_eq!(
            value(&format!("i32_{order}"))["value"],
            json!(-123_456),
            "{order}"
        );
        assert_eq!(
            value(&format!("f32_{order}"))["value"],
            json!(12.5),
            "{order}"
        );
        assert_eq!(
            value(&format!("u64_{order}"))["value"],
            json!(0x0102_0304_0506_0708u64),
            "{order}"
        );
        assert_eq!(
            value(&format!("i64_{order}"))["value"],
            json!(-9_876_543_210i64),
            "{order}"
        );
        assert_eq!(
            value(&format!("f64_{order}"))["value"],
            json!(-0.1),
            "{order}"
        );
        assert_eq!(value(&format!("f64_{order}"))["quality"], "good");
    }
    assert_eq!(value("u16")["value"], json!(65_000));
    assert_eq!(value("i16")["value"], json!(-2));
    assert_eq!(value("flag3")["value"], json!(true));
    assert_eq!(value("flag2")["value"], json!(false));
    assert_eq!(value("text")["value"], json!("Hello"));
    let volts = value("volts");
    assert!(
        (volts["value"].as_f64().expect("number") - 230.5).abs() < 1e-9,
        "{volts}"
    );
    assert_eq!(volts["unit"], "V");
    assert!(volts["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(value("coil0")["value"], json!(true));
    assert_eq!(value("coil2")["value"], json!(true));
    assert_eq!(value("input1")["value"], json!(true));
    assert_eq!(value("gap_a")["value"], json!(7));
    assert_eq!(value("gap_b")["value"], json!(9));
    assert_eq!(value("missing")["quality"], "error");
    assert_eq!(value("missing")["value"], Value::Null);

    // Coalescing, counted on the simulator: 86 holding registers in one read per poll.
    wait_until("three polls", || {
        sim.requests()
            .iter()
            .filter(|r| r.function == 3 && r.address == 0)
            .count()
            >= 3
    })
    .await;
    let requests = sim.requests();
    let holding_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.function == 3 && r.address == 0)
        .collect();
    assert!(
        holding_reads.iter().all(|r| r.count == 86),
        "one read of 86 registers serves 34 points: {holding_reads:?}"
    );
    let coil_reads: Vec<_> = requests.iter().filter(|r| r.function == 1).collect();
    assert!(
        coil_reads.iter().all(|r| r.address == 0 && r.count == 3),
        "{coil_reads:?}"
    );
    // The joined 200..203 read was refused once, then split for good.
    let joined = requests
        .iter()
        .filter(|r| r.function == 3 && r.address == 200 && r.count == 4)
        .count();
    assert_eq!(joined, 1, "{requests:?}");
    let split = requests
        .iter()
        .filter(|r| r.function == 3 && r.address == 203 && r.count == 1)
        .count();
    assert!(split >= 2, "{requests:?}");

    let mut health = v5(gateway.addr("local"), "health").await;
    health.subscribe("plant/status", QoS::AtLeastOnce).await;
    let doc = loop {
        let doc = json_of(&String::from_utf8_lossy(&health.publish().await.payload));
        if doc["devices"]["m1"]["polls"]
            .as_u64()
            .is_some_and(|n| n >= 2)
        {
            break doc;
        }
    };
    assert_eq!(doc["devices"]["m1"]["online"], json!(true), "{doc}");
    assert!(
        doc["devices"]["m1"]["exceptions"]["0x02"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{doc}"
    );
    assert!(
        doc["devices"]["m1"]["latency_ms_p50"].as_f64().is_some(),
        "{doc}"
    );
    // The same document under $SYS, written by the bus's broker-side identity.
    let mut sys = v5(gateway.addr("local"), "sys").await;
    sys.subscribe("$SYS/tollgate/modbus/plant/state", QoS::AtLeastOnce)
        .await;
    let state = json_of(&String::from_utf8_lossy(&sys.publish().await.payload));
    assert_eq!(state["bus"], "plant", "{state}");
    assert_eq!(state["connected"], json!(true), "{state}");
    gateway.stop().await;
}

/// Publish a command on `topic` with a response topic and correlation data.
async fn send(writer: &V5, topic: &str, payload: &str, expiry: Option<u32>, correlation: &str) {
    let properties = PublishProperties {
        response_topic: Some("reply/op".into()),
        correlation_data: Some(correlation.to_string().into()),
        message_expiry_interval: expiry,
        ..Default::default()
    };
    writer
        .client
        .publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
            properties,
        )
        .await
        .expect("publish queued");
}

/// The next answer on the response topic: (correlation data, JSON).
async fn answer(writer: &mut V5) -> (String, Value) {
    let response = writer
        .wait_for(|p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::Publish(p) if p.topic.as_ref() == b"reply/op" => {
                Some(p.clone())
            }
            _ => None,
        })
        .await;
    let correlation = response
        .properties
        .and_then(|p| p.correlation_data)
        .expect("correlation data echoed");
    (
        String::from_utf8_lossy(&correlation).into_owned(),
        json_of(&String::from_utf8_lossy(&response.payload)),
    )
}

/// Send a command and wait for its answer.
async fn command(writer: &mut V5, topic: &str, payload: &str, correlation: &str) -> Value {
    send(writer, topic, payload, None, correlation).await;
    let (got, doc) = answer(writer).await;
    assert_eq!(got, correlation);
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_writes_are_answered_and_audited() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let log = support::logs::global(LOG_FILTER);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"devices": {
        "1": {"hr": {"0": [10, 20, 30, 0, 0]}, "co": {"0": [false]}, "ir": {"0": [5]}},
    }});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    sim.mute(&[2]);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [acl]\n\
         [[acl.rule]]\nuser = \"adapter:plant\"\naccess = \"readwrite\"\ntopic = \"plant/#\"\n\
         [[acl.rule]]\nuser = \"adapter:plant\"\naccess = \"write\"\ntopic = \"reply/#\"\n\
         [[acl.rule]]\naccess = \"read\"\ntopic = \"plant/#\"\n\
         [[acl.rule]]\naccess = \"readwrite\"\ntopic = \"reply/#\"\n\
         [[acl.rule]]\naccess = \"write\"\ntopic = \"plant/m1/setpoint/set\"\n\
         [[acl.rule]]\naccess = \"write\"\ntopic = \"plant/m1/pump/set\"\n\
         [[acl.rule]]\naccess = \"write\"\ntopic = \"plant/m1/level/set\"\n\
         [[acl.rule]]\naccess = \"write\"\ntopic = \"plant/m1/limit/set\"\n\
         [[acl.rule]]\naccess = \"write\"\ntopic = \"plant/dead/x/set\"\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\ntimeout = \"2s\"\nretries = 0\n\
         [[modbus.device]]\nname = \"m1\"\nunit = 1\npoll = \"200ms\"\n\
         [[modbus.device.point]]\nname = \"setpoint\"\nkind = \"holding\"\naddress = 0\ntype = \"i16\"\nscale = 0.5\nwritable = true\nmin = 0\nmax = 100\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"big\"\nkind = \"holding\"\naddress = 1\ntype = \"u32\"\norder = \"CDAB\"\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"limit\"\nkind = \"holding\"\naddress = 3\nwritable = true\nwrite_interval = \"1h\"\n\
         [[modbus.device.point]]\nname = \"pump\"\nkind = \"coil\"\naddress = 0\ntype = \"bool\"\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"level\"\nkind = \"input\"\naddress = 0\n\
         [[modbus.device]]\nname = \"dead\"\nunit = 2\npoll = \"1h\"\n\
         [[modbus.device.point]]\nname = \"x\"\nkind = \"holding\"\naddress = 0\nwritable = true\nwrite_interval = \"0\"\n",
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let addr = gateway.addr("local");
    let mut writer = v5(addr, "operator-7").await;
    writer.subscribe("reply/op", QoS::AtLeastOnce).await;
    let mut watcher = v5(addr, "watcher").await;
    watcher
        .subscribe("plant/m1/+/set/result", QoS::AtLeastOnce)
        .await;
    // The first value shows the adapter runs (its set subscription is made before polling).
    let mut values = v5(addr, "values").await;
    values
        .subscribe("plant/m1/setpoint", QoS::AtLeastOnce)
        .await;
    values.publish().await;

    // Allowed: 42.5 → raw 85 at holding 0, read back.
    let ok = command(&mut writer, "plant/m1/setpoint/set", "42.5", "c1").await;
    assert_eq!(ok, json!({"ok": true, "value": 42.5}));
    let result = watcher.publish().await;
    assert_eq!(result.topic.as_ref(), b"plant/m1/setpoint/set/result");
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.function == 6 && r.address == 0));
    // A coil, as JSON.
    let ok = command(&mut writer, "plant/m1/pump/set", r#"{"value": true}"#, "c2").await;
    assert_eq!(ok["ok"], json!(true), "{ok}");
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.function == 5 && r.address == 0));
    // Out of bounds, not writable: refused, nothing written.
    let writes_before = sim
        .requests()
        .iter()
        .filter(|r| matches!(r.function, 5 | 6 | 16))
        .count();
    let refused = command(&mut writer, "plant/m1/setpoint/set", "100.5", "c3").await;
    assert_eq!(refused["ok"], json!(false));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("above max 100")),
        "{refused}"
    );
    let refused = command(&mut writer, "plant/m1/level/set", "1", "c4").await;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not writable")),
        "{refused}"
    );
    let refused = command(&mut writer, "plant/m1/setpoint/set", "warm", "c5").await;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a value")),
        "{refused}"
    );
    // A retained command published live is refused like one replayed at subscribe time
    // (QoS 0: no PUBACK of ours to mistake for the ACL refusal's below).
    writer
        .client
        .publish_with_properties(
            "plant/m1/setpoint/set",
            QoS::AtMostOnce,
            true,
            "42",
            PublishProperties {
                response_topic: Some("reply/op".into()),
                correlation_data: Some("c6".into()),
                ..Default::default()
            },
        )
        .await
        .expect("publish queued");
    let (got, refused) = answer(&mut writer).await;
    assert_eq!(got, "c6");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("retained command not executed")),
        "{refused}"
    );
    // Its clearing (an empty retained PUBLISH) is a retained command too: refused.
    writer
        .client
        .publish_with_properties(
            "plant/m1/setpoint/set",
            QoS::AtMostOnce,
            true,
            "",
            PublishProperties {
                response_topic: Some("reply/op".into()),
                correlation_data: Some("c7".into()),
                ..Default::default()
            },
        )
        .await
        .expect("publish queued");
    let (got, refused) = answer(&mut writer).await;
    assert_eq!((got.as_str(), refused["ok"].clone()), ("c7", json!(false)));
    // ACL-denied: the broker refuses the PUBLISH (v5 PUBACK 0x87); the adapter never sees it.
    writer
        .client
        .publish("plant/m1/big/set", QoS::AtLeastOnce, false, "5")
        .await
        .expect("queued");
    let ack = writer
        .wait_for(|p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::PubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(format!("{:?}", ack.reason), "NotAuthorized");
    let writes_after = sim
        .requests()
        .iter()
        .filter(|r| matches!(r.function, 5 | 6 | 16))
        .count();
    assert_eq!(
        writes_before, writes_after,
        "refused commands wrote nothing"
    );

    // Expired: a write to the dead unit holds the bus for its 2 s timeout; commands with
    // a 1 s message expiry queued behind it are answered "expired" and never executed.
    send(&writer, "plant/dead/x/set", "1", None, "c8").await;
    send(&writer, "plant/m1/setpoint/set", "10", Some(1), "c9").await;
    send(&writer, "plant/m1/limit/set", "3", Some(1), "c10").await;
    let mut answers = HashMap::new();
    for _ in 0..3 {
        let (correlation, doc) = answer(&mut writer).await;
        answers.insert(correlation, doc);
    }
    assert!(
        answers["c8"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout")),
        "{answers:?}"
    );
    for expired in ["c9", "c10"] {
        assert!(
            answers[expired]["error"]
                .as_str()
                .is_some_and(|e| e.contains("expired")),
            "{expired}: {answers:?}"
        );
    }
    let raw_10 = sim
        .requests()
        .iter()
        .filter(|r| r.function == 6 && r.unit == 1 && r.address == 0)
        .count();
    assert_eq!(
        raw_10, 1,
        "only the first setpoint write reached the device"
    );

    // Rate limit: `limit` takes one write per hour; the expired command above wrote
    // nothing, so it did not use the hour up.
    let ok = command(&mut writer, "plant/m1/limit/set", "1", "c11").await;
    assert_eq!(ok["ok"], json!(true), "{ok}");
    let limited = command(&mut writer, "plant/m1/limit/set", "2", "c12").await;
    assert!(
        limited["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limited")),
        "{limited}"
    );
    assert_eq!(
        sim.requests()
            .iter()
            .filter(|r| r.function == 6 && r.address == 3)
            .count(),
        1,
        "one write of `limit` reached the device"
    );

    gateway.stop().await;
    let text = log.text();
    let lines = |event: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.contains(&format!("event=\"{event}\"")))
            .collect()
    };
    let writes = lines("field_write");
    assert!(
        writes.iter().any(|l| l.contains("operator-7")
            && l.contains("plant/m1/setpoint/set")
            && l.contains("success")),
        "{writes:#?}"
    );
    assert!(
        writes
            .iter()
            .any(|l| l.contains("plant/dead/x/set") && l.contains("failure")),
        "{writes:#?}"
    );
    let refusals = lines("field_write_refused");
    for why in ["above max", "not writable", "rate limited", "expired"] {
        assert!(
            refusals
                .iter()
                .any(|l| l.contains("operator-7") && l.contains(why)),
            "{why}: {refusals:#?}"
        );
    }
    assert!(
        text.contains("event=\"acl_denied\""),
        "the ACL refusal is audited by the broker"
    );
}

/// Read `count` registers (function 3) or coils (function 1) from the simulator
/// directly, as a second master would: what the device holds after a write.
fn read_raw(port: u16, unit: u8, function: u8, address: u16, count: u16) -> Vec<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("simulator");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut adu = vec![0, 1, 0, 0, 0, 6, unit, function];
    adu.extend_from_slice(&address.to_be_bytes());
    adu.extend_from_slice(&count.to_be_bytes());
    stream.write_all(&adu).expect("request");
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).expect("reply header");
    assert_eq!(header[7], function, "no exception: {header:?}");
    let mut data = vec![0u8; usize::from(header[8])];
    stream.read_exact(&mut data).expect("reply data");
    if function == 1 {
        (0..usize::from(count))
            .map(|i| u16::from(data[i / 8] >> (i % 8) & 1))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bits_strings_and_multiple_writes_reach_the_device() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"devices": {
        "1": {"hr": {"0": [0b1000, 0x4142, 0x4300, 0]}},
        "2": {"hr": {"0": [0]}, "co": {"0": [false, false]}},
    }});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\ntimeout = \"2s\"\n\
         [[modbus.device]]\nname = \"m1\"\nunit = 1\npoll = \"200ms\"\n\
         [[modbus.device.point]]\nname = \"flag\"\nkind = \"holding\"\naddress = 0\ntype = \"bit(0)\"\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"other\"\nkind = \"holding\"\naddress = 0\ntype = \"bit(3)\"\n\
         [[modbus.device.point]]\nname = \"label\"\nkind = \"holding\"\naddress = 1\ntype = \"string(4)\"\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device]]\nname = \"m2\"\nunit = 2\npoll = \"200ms\"\nwrite_multiple = true\n\
         [[modbus.device.point]]\nname = \"pump\"\nkind = \"coil\"\naddress = 1\ntype = \"bool\"\nwritable = true\nwrite_interval = \"0\"\n\
         [[modbus.device.point]]\nname = \"speed\"\nkind = \"holding\"\naddress = 0\nwritable = true\nwrite_interval = \"0\"\n",
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let addr = gateway.addr("local");
    let mut writer = v5(addr, "operator").await;
    writer.subscribe("reply/op", QoS::AtLeastOnce).await;
    let mut values = v5(addr, "values").await;
    values.subscribe("plant/m1/label", QoS::AtLeastOnce).await;
    let first = values.publish().await;
    assert_eq!(
        json_of(&String::from_utf8_lossy(&first.payload))["value"],
        "ABC"
    );
    let writes = |sim: &Sim, function: u8, unit: u8| {
        sim.requests()
            .iter()
            .filter(|r| r.function == function && r.unit == unit)
            .count()
    };

    // bit(0): read (function 3), set the bit, write (function 6); bit 3 is kept.
    let reads_before = writes(&sim, 3, 1);
    let ok = command(&mut writer, "plant/m1/flag/set", "true", "b1").await;
    assert_eq!(ok, json!({"ok": true, "value": true}));
    assert_eq!(read_raw(sim.port, 1, 3, 0, 1), vec![0b1001]);
    assert_eq!(writes(&sim, 6, 1), 1);
    assert!(writes(&sim, 3, 1) > reads_before);
    let ok = command(&mut writer, "plant/m1/flag/set", "0", "b2").await;
    assert_eq!(ok, json!({"ok": true, "value": false}));
    assert_eq!(read_raw(sim.port, 1, 3, 0, 1), vec![0b1000]);
    let refused = command(&mut writer, "plant/m1/flag/set", "2", "b3").await;
    assert_eq!(refused["ok"], json!(false), "{refused}");

    // string(4): function 16, NUL-padded, read back.
    let ok = command(&mut writer, "plant/m1/label/set", "XYZ", "s1").await;
    assert_eq!(ok, json!({"ok": true, "value": "XYZ"}));
    assert_eq!(read_raw(sim.port, 1, 3, 1, 2), vec![0x5859, 0x5A00]);
    assert_eq!(writes(&sim, 16, 1), 1);
    let refused = command(&mut writer, "plant/m1/label/set", "TOOLONG", "s2").await;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("do not fit string(4)")),
        "{refused}"
    );
    assert_eq!(writes(&sim, 16, 1), 1, "a refused string is not written");

    // write_multiple: a coil with function 15, a register with function 16.
    let ok = command(&mut writer, "plant/m2/pump/set", "on", "m1").await;
    assert_eq!(ok, json!({"ok": true, "value": true}));
    assert_eq!(read_raw(sim.port, 2, 1, 0, 2), vec![0, 1]);
    let ok = command(&mut writer, "plant/m2/speed/set", "300", "m2").await;
    assert_eq!(ok, json!({"ok": true, "value": 300}));
    assert_eq!(read_raw(sim.port, 2, 3, 0, 1), vec![300]);
    assert_eq!((writes(&sim, 15, 2), writes(&sim, 16, 2)), (1, 1));
    assert_eq!(
        (writes(&sim, 5, 2), writes(&sim, 6, 2)),
        (0, 0),
        "no single-write functions on a write_multiple device"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_payloads_are_the_bare_values_the_device_holds() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"devices": {
        "1": {"hr": {"0": [1234, 0xFFFF, 0x4142, 0x4344, 0x4100, 2]}, "co": {"0": [true]}},
    }});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\npayload = \"raw\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"200ms\"\n\
         [[modbus.device.point]]\nname = \"count\"\nkind = \"holding\"\naddress = 0\n\
         [[modbus.device.point]]\nname = \"delta\"\nkind = \"holding\"\naddress = 1\ntype = \"i16\"\n\
         [[modbus.device.point]]\nname = \"label\"\nkind = \"holding\"\naddress = 2\ntype = \"string(4)\"\n\
         [[modbus.device.point]]\nname = \"short\"\nkind = \"holding\"\naddress = 4\ntype = \"string(2)\"\n\
         [[modbus.device.point]]\nname = \"pump\"\nkind = \"coil\"\naddress = 0\ntype = \"bool\"\n\
         [[modbus.device.point]]\nname = \"half\"\nkind = \"holding\"\naddress = 5\ntype = \"bit(1)\"\n",
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "raw").await;
    client.subscribe("plant/m/#", QoS::AtLeastOnce).await;
    let seen = collect(&mut client, |s| s.len() >= 7).await;
    let expected: HashMap<String, String> = [
        ("plant/m/count", "1234"),
        ("plant/m/delta", "-1"),
        // The device's bytes as they are: "ABCD", and "A" with its NUL padding trimmed.
        ("plant/m/label", "ABCD"),
        ("plant/m/short", "A"),
        ("plant/m/pump", "true"),
        ("plant/m/half", "true"),
        ("plant/m/status", "online"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen, expected);
    gateway.stop().await;
}

/// Rewrite the running gateway's file as `Gateway::start` wrote it.
fn rewrite(dir: &std::path::Path, port: u16, devices: &str) {
    support::gateway::write_config(
        dir,
        &format!(
            "sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{}",
            bus_body(port, devices)
        ),
    );
}

/// The listener and a bus on simulator port `port` with `devices` (TOML of
/// `[[modbus.device]]` tables), as `Gateway::start` takes it.
fn bus_body(port: u16, devices: &str) -> String {
    format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntopic_prefix = \"plant\"\nstatus_interval = \"1s\"\n{devices}"
    )
}

/// The next bus status document satisfying `pred`.
async fn status_until(client: &mut V5, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no such status");
        let p = client.publish().await;
        if p.topic.as_ref() == b"plant/status" {
            let doc = json_of(&String::from_utf8_lossy(&p.payload));
            if pred(&doc) {
                return doc;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_wire_keeps_the_bus_open_and_applies_new_points() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let log = support::logs::global(LOG_FILTER);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"devices": {"1": {"hr": {"0": [1, 2]}}, "2": {"hr": {"0": [7]}}}});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let m1 = "[[modbus.device]]\nname = \"m1\"\nunit = 1\npoll = \"100ms\"\n\
              [[modbus.device.point]]\nname = \"a\"\nkind = \"holding\"\naddress = 0\n";
    let gateway = Gateway::start(dir.path(), &bus_body(sim.port, m1)).await;
    let mut watch = v5(gateway.addr("local"), "watch").await;
    watch.subscribe("plant/#", QoS::AtLeastOnce).await;
    let before = status_until(&mut watch, |d| {
        d["devices"]["m1"]["polls"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    assert_eq!(before["opens"], json!(1), "{before}");
    let polls_before = before["devices"]["m1"]["polls"].as_u64().expect("polls");

    // Same address and prefix: point `a` replaced by `b`, device m2 added, m1 faster.
    let next = "[[modbus.device]]\nname = \"m1\"\nunit = 1\npoll = \"50ms\"\n\
                [[modbus.device.point]]\nname = \"b\"\nkind = \"holding\"\naddress = 1\n\
                [[modbus.device]]\nname = \"m2\"\nunit = 2\npoll = \"100ms\"\n\
                [[modbus.device.point]]\nname = \"c\"\nkind = \"holding\"\naddress = 0\n";
    rewrite(dir.path(), sim.port, next);
    gateway.reload.reload().await.expect("reload accepted");
    let mut seen: HashMap<String, String> = HashMap::new();
    let after = loop {
        let p = watch.publish().await;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if topic == "plant/status" {
            let doc = json_of(&payload);
            let done = ["plant/m1/a", "plant/m1/b", "plant/m2/c"]
                .iter()
                .all(|t| seen.contains_key(*t));
            if done && doc["devices"]["m2"]["polls"].as_u64().unwrap_or(0) > 0 {
                break doc;
            }
        } else {
            seen.insert(topic, payload);
        }
    };
    // The removed point's retained value is cleared; the new points are polled.
    assert_eq!(seen["plant/m1/a"], "", "{seen:#?}");
    assert_eq!(json_of(&seen["plant/m1/b"])["value"], json!(2));
    assert_eq!(json_of(&seen["plant/m2/c"])["value"], json!(7));
    // No reconnect, and m1's counters went on from where they were.
    let opened = |port: u16| {
        log.text()
            .lines()
            .filter(|l| l.contains("Modbus bus opened") && l.contains(&format!("127.0.0.1:{port}")))
            .count()
    };
    assert_eq!(opened(sim.port), 1, "opened once:\n{}", log.text());
    assert!(log.text().contains("Modbus bus reloaded in place"));
    assert_eq!(after["opens"], json!(1), "{after}");
    assert!(
        after["devices"]["m1"]["polls"].as_u64().unwrap_or(0) > polls_before,
        "{after}"
    );

    // A changed wire (another device address) restarts the bus on the new one.
    let spec2 = json!({"devices": {"1": {"hr": {"0": [100, 200]}}}});
    std::fs::create_dir_all(dir.path().join("two")).expect("dir");
    let sim2 = Sim::tcp(&python, &dir.path().join("two"), &spec2);
    rewrite(dir.path(), sim2.port, next);
    gateway.reload.reload().await.expect("reload accepted");
    let mut values = v5(gateway.addr("local"), "values").await;
    values.subscribe("plant/m1/b", QoS::AtLeastOnce).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no value from the new device"
        );
        let p = values.publish().await;
        if json_of(&String::from_utf8_lossy(&p.payload))["value"] == json!(200) {
            break;
        }
    }
    assert!(!sim2.requests().is_empty());
    assert_eq!(opened(sim2.port), 1);
    gateway.stop().await;
}

/// Write holding register `address` of `unit` (function 6) as a second master would.
fn write_raw(port: u16, unit: u8, address: u16, value: u16) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("simulator");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut adu = vec![0, 1, 0, 0, 0, 6, unit, 6];
    adu.extend_from_slice(&address.to_be_bytes());
    adu.extend_from_slice(&value.to_be_bytes());
    stream.write_all(&adu).expect("request");
    let mut echo = [0u8; 12];
    stream.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo[..], &adu[..], "write echoed");
}

/// Every publish on `client` for `span`: (topic, JSON payload) in order.
async fn during(client: &mut V5, span: std::time::Duration) -> Vec<(String, Value)> {
    let end = tokio::time::Instant::now() + span;
    let mut out = Vec::new();
    while let Ok(p) = tokio::time::timeout_at(end, client.publish()).await {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if !topic.ends_with("/status") {
            out.push((topic, json_of(&String::from_utf8_lossy(&p.payload))));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_offset_and_report_modes_decide_what_is_published() {
    let Some(python) = require_pymodbus() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"devices": {"1": {"hr": {"0": [600, 5, 5]}}}});
    let sim = Sim::tcp(&python, dir.path(), &spec);
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntopic_prefix = \"plant\"\n\
         [[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"100ms\"\n\
         [[modbus.device.point]]\nname = \"temp\"\nkind = \"holding\"\naddress = 0\nscale = 0.1\noffset = -40\nunit_label = \"°C\"\nreport = \"on-change\"\ndeadband = 0.5\n\
         [[modbus.device.point]]\nname = \"every\"\nkind = \"holding\"\naddress = 1\nreport = \"interval\"\n\
         [[modbus.device.point]]\nname = \"both\"\nkind = \"holding\"\naddress = 2\nreport = \"both\"\ninterval = \"1s\"\n",
        sim.port
    );
    let gateway = Gateway::start(dir.path(), &body).await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("plant/m/+", QoS::AtLeastOnce).await;
    let near = |v: &Value, x: f64| v.as_f64().is_some_and(|y| (y - x).abs() < 1e-9);
    let seen = during(&mut client, std::time::Duration::from_millis(2500)).await;
    let of = |seen: &[(String, Value)], point: &str| -> Vec<Value> {
        seen.iter()
            .filter(|(t, _)| t == &format!("plant/m/{point}"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    // raw 600 × 0.1 − 40 = 20.0 °C, once; `every` on each of ~25 polls; `both` at start
    // and once a second.
    let temp = of(&seen, "temp");
    assert_eq!(temp.len(), 1, "{temp:?}");
    assert!(near(&temp[0]["value"], 20.0), "{temp:?}");
    assert_eq!(temp[0]["unit"], "°C");
    let every = of(&seen, "every").len();
    assert!(
        (18..=27).contains(&every),
        "interval: {every} publishes in 2.5 s at 100 ms"
    );
    let both = of(&seen, "both").len();
    assert!(
        (2..=4).contains(&both),
        "both: {both} publishes in 2.5 s at 1 s"
    );

    // 20.3 °C: within the 0.5 deadband of the last published 20.0, not published.
    write_raw(sim.port, 1, 0, 603);
    let seen = during(&mut client, std::time::Duration::from_millis(800)).await;
    assert_eq!(
        of(&seen, "temp"),
        Vec::<Value>::new(),
        "within the deadband"
    );
    // 20.6 °C: 0.6 from the last published value, published once.
    write_raw(sim.port, 1, 0, 606);
    let seen = during(&mut client, std::time::Duration::from_millis(800)).await;
    let temp = of(&seen, "temp");
    assert_eq!(temp.len(), 1, "{temp:?}");
    assert!(near(&temp[0]["value"], 20.6), "{temp:?}");
    // A change of a `both` point is published at once, not at its next interval.
    let start = tokio::time::Instant::now();
    write_raw(sim.port, 1, 2, 6);
    let mut changed = None;
    while changed.is_none() {
        let p = client.publish().await;
        if p.topic.as_ref() == b"plant/m/both" {
            let v = json_of(&String::from_utf8_lossy(&p.payload));
            if v["value"] == json!(6) {
                changed = Some(start.elapsed());
            }
        }
    }
    assert!(
        changed.is_some_and(|d| d < std::time::Duration::from_millis(600)),
        "{changed:?}"
    );
    gateway.stop().await;
}
