//! The GPIO adapter on the fake pin backend through the real broker (in-process
//! gateway, rumqttc clients): a bouncing contact publishes one debounced change and a
//! glitch none; edge selection and pulse counting; outputs switched, toggled and
//! pulsed with `for` (reverting by themselves), driven to their safe state on shutdown;
//! a `.../set` the ACL denies never reaches the pin; every `.../set` answered on
//! `.../set/result` and on the MQTT 5 response topic (the state, or the precise
//! refusal); pulse counts going on from their retained value after a restart; a SIGHUP
//! reload restarts only the changed pin. The same logic runs on a Pi with rppal (feature `gpio`), where only
//! the backend differs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use support::gateway::Gateway;
use support::{v5, V5, WAIT};
use tollgate::app::ComponentSource;
use tollgate::gpio::{FakePins, Gpio};

/// The next publish on `topic` (others skipped), as text.
async fn next_on(client: &mut V5, topic: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "nothing on {topic}");
        let p = client.publish().await;
        if p.topic.as_ref() == topic.as_bytes() {
            return String::from_utf8_lossy(&p.payload).into_owned();
        }
    }
}

/// The next `$SYS` document of pin `name` satisfying `pred`.
async fn sys_until(client: &mut V5, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let topic = format!("$SYS/tollgate/gpio/{name}/state");
    loop {
        let doc: Value = serde_json::from_str(&next_on(client, &topic).await).expect("JSON");
        if pred(&doc) {
            return doc;
        }
    }
}

const PINS: &str = "[gpio]\nbackend = \"external\"\n\
    [[gpio.input]]\nname = \"door\"\npin = 17\npull = \"up\"\ninverted = true\ndebounce = \"150ms\"\n\
    [[gpio.input]]\nname = \"meter\"\npin = 23\nedge = \"rising\"\ndebounce = \"5ms\"\ncount = true\n\
    [[gpio.output]]\nname = \"relay\"\npin = 27\ninverted = true\n\
    [[gpio.output]]\nname = \"lamp\"\npin = 24\nsafe = \"on\"\nmax_for = \"10s\"\n";

const LISTENER: &str = "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n";

async fn start(dir: &std::path::Path, extra: &str) -> (Gateway, FakePins) {
    let pins = FakePins::new();
    let backend = pins.clone();
    let source: ComponentSource =
        Arc::new(move |config| Gpio::all(&config.gpio, Arc::new(backend.clone())));
    let body = format!("{LISTENER}{PINS}{extra}");
    let gateway = Gateway::start_with_components(dir, &body, vec![source]).await;
    (gateway, pins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bouncing_contact_publishes_one_debounced_change_and_a_glitch_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("gpio/door", QoS::AtLeastOnce).await;
    // Pull-up, inverted: the open contact reads high, which is off.
    assert_eq!(next_on(&mut client, "gpio/door").await, "off");
    // (Subscribed after the retained state: waiting for a SUBACK skips publishes.)
    client
        .subscribe("$SYS/tollgate/gpio/door/state", QoS::AtLeastOnce)
        .await;
    assert_eq!(pins.claimed(17), Some(Ok(tollgate::gpio::config::Pull::Up)));

    // The contact closes (low) with bounce: one change.
    pins.bounce(17, &[false, true, false, true, false]);
    assert_eq!(next_on(&mut client, "gpio/door").await, "on");
    sys_until(&mut client, "door", |d| d["changes"] == 1).await;
    // A glitch shorter than the debounce returns to the state: no change, counted.
    pins.bounce(17, &[true, false]);
    let doc = sys_until(&mut client, "door", |d| d["glitches"] == 1).await;
    assert_eq!(doc["changes"], 1, "{doc}");
    assert_eq!(doc["state"], "on", "{doc}");
    // It opens again: the next publish is "off" (the glitch published nothing).
    pins.bounce(17, &[true, false, true]);
    assert_eq!(next_on(&mut client, "gpio/door").await, "off");
    let doc = sys_until(&mut client, "door", |d| d["changes"] == 2).await;
    assert_eq!(doc["edges"], 10, "{doc}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rising_edges_only_are_published_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("gpio/meter/#", QoS::AtLeastOnce).await;
    let mut states = Vec::new();
    let mut counts = Vec::new();
    // The retained start state and count.
    while states.is_empty() || counts.is_empty() {
        let p = client.publish().await;
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        match p.topic.as_ref() {
            b"gpio/meter" => states.push(text),
            b"gpio/meter/count" => counts.push(text),
            _ => {}
        }
    }
    assert_eq!(
        (states.as_slice(), counts.as_slice()),
        (&["off".to_string()][..], &["0".to_string()][..])
    );
    for _ in 0..5 {
        pins.set(23, true);
        tokio::time::sleep(Duration::from_millis(40)).await;
        pins.set(23, false);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    while counts.last().map(String::as_str) != Some("5") {
        let p = client.publish().await;
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        match p.topic.as_ref() {
            b"gpio/meter" => states.push(text),
            b"gpio/meter/count" => counts.push(text),
            _ => {}
        }
    }
    assert_eq!(counts, ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(
        states,
        ["off", "on", "on", "on", "on", "on"],
        "falling edges are not published"
    );
    gateway.stop().await;
}

async fn set(client: &V5, topic: &str, payload: &str) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_switch_toggle_pulse_and_end_in_their_safe_state() {
    let log = support::logs::global("audit=info");
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "operator-7").await;
    client.subscribe("gpio/relay", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "off");
    // Inverted (active low): off is high.
    assert_eq!(pins.writes(27), [true]);
    set(&client, "gpio/relay/set", "on").await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "on");
    set(&client, "gpio/relay/set", "toggle").await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "off");
    // A timed pulse: on for 300 ms, then back to off by itself.
    set(
        &client,
        "gpio/relay/set",
        r#"{"state": "on", "for": "300ms"}"#,
    )
    .await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "on");
    assert_eq!(next_on(&mut client, "gpio/relay").await, "off");
    assert_eq!(pins.writes(27), [true, false, true, false, true]);
    // Refused: beyond max_for (1 h default), retained, not a state.
    set(&client, "gpio/relay/set", r#"{"state": "on", "for": "2h"}"#).await;
    set(&client, "gpio/relay/set", "open").await;
    // Ends on: the shutdown must still drive it off (its safe state).
    set(&client, "gpio/relay/set", "ON").await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "on");
    assert_eq!(pins.writes(24), [false], "the lamp starts off");
    gateway.stop().await;
    assert_eq!(
        pins.writes(27).last(),
        Some(&true),
        "relay safe: off (high, inverted)"
    );
    assert_eq!(pins.writes(24), [false, true], "lamp safe: on");
    assert_eq!(pins.claimed(27), None, "released");
    let text = log.text();
    let audit = |event: &str, needle: &str| {
        text.lines().any(|l| {
            l.contains(&format!("event=\"{event}\""))
                && l.contains("operator-7")
                && l.contains(needle)
        })
    };
    assert!(audit("field_write", "on for 300ms"), "{text}");
    assert!(audit("field_write_refused", "out of range"), "{text}");
    assert!(audit("field_write_refused", "is not a state"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_the_acl_denies_never_reaches_the_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = "[acl]\n\
        [[acl.rule]]\nuser = \"adapter:relay\"\naccess = \"readwrite\"\ntopic = \"gpio/relay/#\"\n\
        [[acl.rule]]\naccess = \"read\"\ntopic = \"gpio/#\"\n\
        [[acl.rule]]\npattern = true\naccess = \"write\"\ntopic = \"gpio/%c/set\"\n";
    let (gateway, pins) = start(dir.path(), acl).await;
    let mut watch = v5(gateway.addr("local"), "watch").await;
    watch.subscribe("gpio/relay", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut watch, "gpio/relay").await, "off");
    let mut intruder = v5(gateway.addr("local"), "intruder").await;
    set(&intruder, "gpio/relay/set", "on").await;
    let code = intruder
        .wait_for(|p| match p {
            Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
    assert_eq!(format!("{code:?}"), "NotAuthorized");
    // The marker: the one client the pattern lets write here toggles the relay. Had the
    // intruder's "on" been applied, the toggle would turn it off.
    let owner = v5(gateway.addr("local"), "relay").await;
    set(&owner, "gpio/relay/set", "toggle").await;
    assert_eq!(next_on(&mut watch, "gpio/relay").await, "on");
    assert_eq!(
        pins.writes(27),
        [true, false],
        "exactly one command reached the pin"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_restarts_only_the_changed_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "operator").await;
    client.subscribe("gpio/relay", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "off");
    set(&client, "gpio/relay/set", "on").await;
    assert_eq!(next_on(&mut client, "gpio/relay").await, "on");
    // The lamp's pin moves from 24 to 25; the relay is untouched.
    let body = format!("{LISTENER}{}", PINS.replace("pin = 24", "pin = 25"));
    support::gateway::write_config(
        dir.path(),
        &format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{body}"),
    );
    gateway.reload.reload().await.expect("reload accepted");
    support::wait_until("the lamp moved to GPIO 25", || pins.claimed(25).is_some()).await;
    assert_eq!(pins.claimed(24), None, "the old lamp pin is released");
    assert_eq!(
        pins.writes(24),
        [false, true],
        "the old lamp pin went to its safe state"
    );
    assert_eq!(
        pins.writes(27),
        [true, false],
        "the relay kept running: no restart, no safe state"
    );
    gateway.stop().await;
}

/// The next `.../set/result` answer on `topic`, as JSON.
async fn answer(client: &mut V5, topic: &str) -> Value {
    serde_json::from_str(&next_on(client, topic).await).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_is_answered_with_the_state_or_the_precise_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut operator = v5(gateway.addr("local"), "operator").await;
    operator.subscribe("gpio/relay/#", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut operator, "gpio/relay").await, "off");
    let result = "gpio/relay/set/result";

    set(&operator, "gpio/relay/set", "on").await;
    let a = answer(&mut operator, result).await;
    assert_eq!(
        (a["ok"].clone(), a["state"].clone()),
        (true.into(), "on".into()),
        "{a}"
    );
    assert!(a.get("error").is_none(), "{a}");

    let refusals = [
        ("open", "\"open\" is not a state"),
        (r#"{"state": "on", "for": "2h"}"#, "out of range"),
        (r#"{"state": "on", "for": "0s"}"#, "out of range"),
        (r#"{"state": "off", "for": 0.0004}"#, "out of range"),
        (r#"{"state": "on", "after": "1s"}"#, "unknown field"),
        (r#"{"for": "1s"}"#, "without \"state\""),
    ];
    for (payload, why) in refusals {
        set(&operator, "gpio/relay/set", payload).await;
        let a = answer(&mut operator, result).await;
        assert_eq!(a["ok"], false, "{payload}: {a}");
        let error = a["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(why),
            "{payload}: {error:?} should say {why:?}"
        );
        assert_eq!(
            a["state"], "on",
            "{payload}: the output kept its state: {a}"
        );
    }

    // A retained command is a replay, refused also when it arrives live; clearing it
    // (an empty retained message) is refused too, as not a state.
    operator
        .client
        .publish("gpio/relay/set", QoS::AtLeastOnce, true, "off")
        .await
        .expect("publish");
    let a = answer(&mut operator, result).await;
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains("retained")),
        "{a}"
    );
    assert_eq!(a["state"], "on", "{a}");
    operator
        .client
        .publish("gpio/relay/set", QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    let a = answer(&mut operator, result).await;
    assert_eq!(a["ok"], false, "{a}");

    // The pin itself refuses (taken by another process, a driver error).
    pins.fault(27, Some("GPIO 27 is busy"));
    set(&operator, "gpio/relay/set", "toggle").await;
    let a = answer(&mut operator, result).await;
    assert_eq!(a["ok"], false, "{a}");
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("GPIO 27 is busy")),
        "{a}"
    );
    assert_eq!(a["state"], "on", "{a}");
    pins.fault(27, None);

    // A timed pulse says how long and what follows.
    set(
        &operator,
        "gpio/relay/set",
        r#"{"state": "off", "for": "5s"}"#,
    )
    .await;
    let a = answer(&mut operator, result).await;
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(
        (a["state"].as_str(), a["for"].as_str(), a["then"].as_str()),
        (Some("off"), Some("5s"), Some("on")),
        "{a}"
    );

    // MQTT 5 request/response: the answer also goes to the response topic, with the
    // command's correlation data.
    let mut requester = v5(gateway.addr("local"), "requester").await;
    requester
        .subscribe("replies/requester", QoS::AtLeastOnce)
        .await;
    let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
        response_topic: Some("replies/requester".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-42")),
        ..Default::default()
    };
    requester
        .client
        .publish_with_properties("gpio/relay/set", QoS::AtLeastOnce, false, "on", properties)
        .await
        .expect("publish");
    let p = loop {
        let p = requester.publish().await;
        if p.topic.as_ref() == b"replies/requester" {
            break p;
        }
    };
    let a: Value = serde_json::from_slice(&p.payload).expect("JSON");
    assert_eq!(
        (a["ok"].clone(), a["state"].clone()),
        (true.into(), "on".into()),
        "{a}"
    );
    let correlation = p.properties.and_then(|p| p.correlation_data);
    assert_eq!(correlation.as_deref(), Some(&b"req-42"[..]));
    // The refused and failed commands never reached the pin: off (high), on, off
    // (timed), on.
    assert_eq!(pins.writes(27), [true, false, true, false]);
    gateway.stop().await;
}

/// `n` rising edges on the meter input (`count = true`), 40 ms apart.
async fn pulses(pins: &FakePins, n: usize) {
    for _ in 0..n {
        pins.set(23, true);
        tokio::time::sleep(Duration::from_millis(40)).await;
        pins.set(23, false);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_count_goes_on_from_its_retained_value_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("gpio/meter/count", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "0");
    pulses(&pins, 3).await;
    for n in ["1", "2", "3"] {
        assert_eq!(next_on(&mut client, "gpio/meter/count").await, n);
    }
    drop(client);
    gateway.stop().await;

    // The restarted gateway loads the retained count from its data_dir; the input
    // counts on from it.
    let (gateway, pins) = start(dir.path(), "").await;
    let mut client = v5(gateway.addr("local"), "watch").await;
    client.subscribe("gpio/meter/count", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "3");
    pulses(&pins, 2).await;
    // The restored "3" may come twice: loaded from disk, then republished by the input.
    let mut next = next_on(&mut client, "gpio/meter/count").await;
    if next == "3" {
        next = next_on(&mut client, "gpio/meter/count").await;
    }
    assert_eq!(next, "4");
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "5");

    // A count someone else wrote is not taken: a reload that restarts the meter (its
    // debounce changes) starts it at 0, not at the forged value.
    client
        .client
        .publish("gpio/meter/count", QoS::AtLeastOnce, true, "1000")
        .await
        .expect("publish");
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "1000");
    let body = format!(
        "{LISTENER}{}",
        PINS.replace("debounce = \"5ms\"", "debounce = \"6ms\"")
    );
    support::gateway::write_config(
        dir.path(),
        &format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{body}"),
    );
    gateway.reload.reload().await.expect("reload accepted");
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "0");
    pulses(&pins, 1).await;
    assert_eq!(next_on(&mut client, "gpio/meter/count").await, "1");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_retriggered_during_its_time_still_ends_in_the_state_before_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, pins) = start(dir.path(), "").await;
    let mut operator = v5(gateway.addr("local"), "operator").await;
    operator.subscribe("gpio/relay/#", QoS::AtLeastOnce).await;
    assert_eq!(next_on(&mut operator, "gpio/relay").await, "off");
    // A door opener pressed twice: on for 600 ms, and again for 300 ms while on. Each
    // pulse is answered with the state it ends in: where the first began, both times.
    for pulse in ["600ms", "300ms"] {
        let command = format!(r#"{{"state":"on","for":"{pulse}"}}"#);
        set(&operator, "gpio/relay/set", &command).await;
        let got = answer(&mut operator, "gpio/relay/set/result").await;
        assert_eq!(
            (got["ok"].as_bool(), got["then"].as_str()),
            (Some(true), Some("off")),
            "the {pulse} pulse ends where the first began: {got}"
        );
    }
    // (Both "on" states went by while waiting for the answers.) Then off by itself,
    // and it stays off.
    assert_eq!(next_on(&mut operator, "gpio/relay").await, "off");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        pins.writes(27),
        [true, false, false, true],
        "off (high) at the end"
    );
    // A plain command ends any pending pulse: toggled on, it stays on.
    set(
        &operator,
        "gpio/relay/set",
        r#"{"state":"on","for":"300ms"}"#,
    )
    .await;
    set(&operator, "gpio/relay/set", "on").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pins.writes(27).last(), Some(&false), "still on (low)");
    gateway.stop().await;
}
