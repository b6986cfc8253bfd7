//! A listener's rate controls over real sockets, with raw MQTT clients (`support::raw`:
//! every byte the gateway answers is seen, including DISCONNECTs that rumqttc would hide):
//! - `connect_rate`: the burst of attempts from one address passes, the next is closed
//!   before TLS (a TLS client gets a close, never a ServerHello);
//! - `publish_rate` with `throttle`: every message still arrives, in order, before a
//!   trailing marker, and the PUBACKs cannot come faster than the rate allows;
//! - `publish_rate` with `disconnect`: v5 DISCONNECT 0x96 with a reason string, 3.1.1 close;
//! - `max_qos`: the v5 CONNACK says it, SUBACK grants at most it (both versions), a PUBLISH
//!   above it ends the connection (v5 DISCONNECT 0x9B, 3.1.1 close), a will above it is
//!   refused at CONNECT;
//! - `tollgate check` names the key path of every bad value.
//!
//! The throttle test publishes `TOLLGATE_RATE_MESSAGES` messages (default 15) at 5 per
//! second; a longer run: `TOLLGATE_RATE_MESSAGES=200` (about 40 s).

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::gateway::*;
use support::pki::TestPki;
use support::raw::{
    connect, puback, publish, subscribe, RawClient, CONNACK, DISCONNECT, DISCONNECT_NORMAL,
    PINGREQ, PINGRESP, PUBACK, PUBLISH, PUBREC, SUBACK,
};
use support::wait::WAIT;

fn listener(name: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\npassword_auth = false\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_passes_the_burst_and_closes_the_next_attempt_before_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let rate = "connect_rate = { per_second = 0.01, burst = 3 }\n";
    let body = format!(
        "{}{}",
        listener("local", rate),
        tls_listener(
            &pki,
            &format!("allow_anonymous = true\npassword_auth = false\n{rate}")
        )
    );
    let gw = Gateway::start(dir.path(), &body).await;

    // Plain TCP: three sessions, then the fourth socket is closed without a byte.
    for i in 0..3 {
        let mut raw = RawClient::connected(gw.addr("local"), false, &format!("burst-{i}")).await;
        raw.send(&DISCONNECT_NORMAL).await;
    }
    let mut refused = RawClient::open(gw.addr("local")).await;
    let _ = refused
        .stream
        .write_all(&connect(false, "one-too-many", None))
        .await;
    assert!(refused.next().await.is_none(), "closed without a CONNACK");

    // TLS: three handshakes complete; the fourth gets a close instead of a ServerHello.
    for i in 0..3 {
        let dial = support::dial::Dial::tls(gw.addr("devices"), &pki.ca, None);
        let client = support::dial::v4(&dial, &format!("tls-{i}")).await;
        assert!(client.is_ok(), "attempt {i} is within the burst");
    }
    let dial = support::dial::Dial::tls(gw.addr("devices"), &pki.ca, None);
    let err = support::dial::v4(&dial, "tls-refused")
        .await
        .err()
        .expect("the fourth attempt is refused");
    assert!(
        !err.to_lowercase().contains("certificate") && !err.to_lowercase().contains("alert"),
        "a close, not a TLS refusal: {err}"
    );
    // The same with bytes on the wire: a ClientHello-sized write gets EOF, no TLS record.
    let mut raw = RawClient::open(gw.addr("devices")).await;
    let _ = raw
        .stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "no TLS record before the close: {got:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_throttle_paces_acks_and_loses_nothing() {
    let count: u16 = std::env::var("TOLLGATE_RATE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!(
        "{}{}",
        listener(
            "devices",
            "publish_rate = { msgs = 5, on_excess = \"throttle\" }"
        ),
        listener("apps", "")
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let mut sub = RawClient::connected(gw.addr("apps"), false, "watcher").await;
    sub.send(&subscribe(false, "rate/#", 1, 1)).await;
    sub.expect(SUBACK).await;

    let mut publisher = RawClient::connected(gw.addr("devices"), false, "fast").await;
    let mut burst = Vec::new();
    for i in 1..=count {
        burst.extend(publish(false, "rate/m", 1, i, format!("{i}").as_bytes()));
    }
    burst.extend(publish(false, "rate/marker", 1, count + 1, b"end"));
    let start = Instant::now();
    publisher.send(&burst).await;
    let mut acked = Vec::new();
    while acked.len() < usize::from(count) + 1 {
        let body = publisher.expect_body(PUBACK).await;
        acked.push(u16::from_be_bytes([body[0], body[1]]));
    }
    let elapsed = start.elapsed();
    // Burst 5 at 5/s: the last of count + 1 PUBACKs cannot come before (count - 4) / 5 s.
    let least = Duration::from_millis((u64::from(count) + 1 - 5) * 200);
    assert!(
        elapsed + Duration::from_millis(50) >= least,
        "{} PUBACKs after {elapsed:?}, the rate allows them no sooner than {least:?}",
        count + 1
    );
    assert_eq!(acked, (1..=count + 1).collect::<Vec<_>>(), "in order");

    // The subscriber gets every message, in order, then the marker.
    let mut seen = Vec::new();
    loop {
        let message = sub.expect(PUBLISH).await.publish(false);
        sub.send(&puback(message.pkid.expect("a QoS 1 delivery")))
            .await;
        if message.topic == "rate/marker" {
            break;
        }
        seen.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    let wanted: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
    assert_eq!(seen, wanted, "throttling loses and reorders nothing");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_disconnect_sends_0x96_to_v5_and_closes_v311() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = listener(
        "devices",
        "publish_rate = { msgs = 3, bytes = 100000, on_excess = \"disconnect\" }",
    );
    let gw = Gateway::start(dir.path(), &body).await;

    let mut v5 = RawClient::connected(gw.addr("devices"), true, "flood5").await;
    let mut burst = Vec::new();
    for i in 0..10u16 {
        burst.extend(publish(true, "rate/x", 0, i, b"x"));
    }
    v5.send(&burst).await;
    let disconnect = v5.expect(DISCONNECT).await;
    let (code, reason) = disconnect.reason();
    assert_eq!(code, 0x96, "Message rate too high: {disconnect:?}");
    assert!(reason.contains("publish_rate"), "reason string: {reason:?}");
    assert!(v5.next().await.is_none(), "closed after the DISCONNECT");

    let mut v4 = RawClient::connected(gw.addr("devices"), false, "flood4").await;
    let mut burst = Vec::new();
    for i in 0..10u16 {
        burst.extend(publish(false, "rate/x", 0, i, b"x"));
    }
    v4.send(&burst).await;
    assert!(v4.next().await.is_none(), "3.1.1: closed, no packet");

    // Within the rate, a client stays: 3 messages, then a PINGREQ answered.
    let mut calm = RawClient::connected(gw.addr("devices"), true, "calm").await;
    let mut three = Vec::new();
    for i in 0..3u16 {
        three.extend(publish(true, "rate/x", 0, i, b"x"));
    }
    three.extend(PINGREQ);
    calm.send(&three).await;
    calm.expect(PINGRESP).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_qos_is_announced_granted_and_enforced_in_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(dir.path(), &listener("devices", "max_qos = 1")).await;
    let addr = gw.addr("devices");

    // v5: CONNACK Maximum QoS 1; SUBSCRIBE at 2 granted 1; PUBLISH at 1 fine; at 2 → 0x9B.
    let mut v5 = RawClient::open(addr).await;
    v5.send(&connect(true, "q5", None)).await;
    let connack = v5.expect(CONNACK).await;
    assert_eq!(connack.reason_code(), 0);
    let props = connack.properties();
    assert!(
        props.contains(&(0x24, vec![1])),
        "Maximum QoS 1 in {props:?}"
    );
    v5.send(&subscribe(true, "q/#", 2, 7)).await;
    let suback = v5.expect_body(SUBACK).await;
    assert_eq!(
        *suback.last().expect("code"),
        1,
        "granted QoS 1: {suback:?}"
    );
    v5.send(&publish(true, "q/a", 1, 1, b"one")).await;
    v5.skip_to(PUBACK).await;
    v5.send(&publish(true, "q/a", 2, 2, b"two")).await;
    let (code, reason) = v5.skip_to(DISCONNECT).await.reason();
    assert_eq!(code, 0x9B, "QoS not supported");
    assert!(reason.contains("QoS 2"), "{reason:?}");

    // 3.1.1: SUBACK grants 1; a QoS 2 PUBLISH closes the connection.
    let mut v4 = RawClient::connected(addr, false, "q4").await;
    v4.send(&subscribe(false, "q/#", 2, 3)).await;
    let suback = v4.expect_body(SUBACK).await;
    assert_eq!(suback, vec![0, 3, 1], "granted QoS 1");
    v4.send(&publish(false, "q/a", 2, 4, b"two")).await;
    loop {
        match v4.next().await {
            None => break,
            Some(p) => assert_ne!(p.kind, PUBREC, "no PUBREC for QoS 2"),
        }
    }

    // A will above max_qos is refused at CONNECT: v5 0x9B.
    let mut will = RawClient::open(addr).await;
    will.send(&connect(true, "will5", Some(2))).await;
    let connack = will.expect(CONNACK).await;
    assert_eq!(connack.reason_code(), 0x9B, "{connack:?}");
    gw.stop().await;
}

#[test]
fn check_names_the_key_path_of_bad_rate_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |extra: &str| {
        let path = write_config(dir.path(), &listener("l", extra));
        tollgate::config::load_with_env(
            &tollgate::config::ConfigSource::File(path),
            &Default::default(),
        )
    };
    assert!(load(
        "connect_rate = { per_second = 2.0, burst = 10 }\npublish_rate = { msgs = 100, bytes = 65536 }\nmax_qos = 1"
    )
    .is_ok());
    for (bad, key, what) in [
        (
            "connect_rate = { per_second = 0.0, burst = 10 }",
            "listener[0].connect_rate.per_second",
            "not a rate",
        ),
        (
            "connect_rate = { per_second = 1.0, burst = 0 }",
            "listener[0].connect_rate.burst",
            "out of range",
        ),
        (
            "connect_rate = { per_second = 1.0, burst = 5, max_addresses = 0 }",
            "listener[0].connect_rate.max_addresses",
            "out of range",
        ),
        (
            "publish_rate = { on_excess = \"disconnect\" }",
            "listener[0].publish_rate",
            "limits nothing",
        ),
        (
            "publish_rate = { msgs = 5, on_excess = \"drop\" }",
            "listener[0].publish_rate.on_excess",
            "expected `throttle` or `disconnect`",
        ),
        ("max_qos = 3", "listener[0].max_qos", "out of range"),
    ] {
        let problems = load(bad).expect_err("refused").problems();
        assert!(
            problems.iter().any(|p| p.contains(key) && p.contains(what)),
            "{bad}: {problems:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_actions_and_messages_per_listener_are_published_on_sys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!(
        "sys_interval = \"1s\"\n[shutdown]\ngrace_period = \"2s\"\n{}",
        listener("devices", "max_qos = 1")
    );
    let gw = Gateway::build(&write_config(dir.path(), &body)).await;
    let mut sub = RawClient::connected(gw.addr("devices"), false, "sys-watcher").await;
    // Asked at QoS 2 on a max_qos 1 listener: this subscription is itself a downgrade.
    sub.send(&subscribe(
        false,
        "$SYS/tollgate/listener/devices/rate/qos_downgraded",
        2,
        1,
    ))
    .await;
    assert_eq!(
        sub.expect_body(SUBACK).await,
        vec![0, 1, 1],
        "granted QoS 1"
    );
    // The retained value from before may come first; the next publication counts it.
    loop {
        let message = sub.expect(PUBLISH).await.publish(false);
        assert_eq!(
            message.topic,
            "$SYS/tollgate/listener/devices/rate/qos_downgraded"
        );
        // QoS 0 on $SYS: the payload follows the topic.
        assert_eq!(message.qos, 0, "QoS 0 on $SYS");
        if message.payload == b"1" {
            break;
        }
        assert_eq!(message.payload, b"0", "0 before, then 1");
    }
    gw.stop().await;
}
