//! The Prometheus endpoint (`[metrics] bind`) over a real socket: every line of a scrape
//! parsed by a strict text-format 0.0.4 parser written here (names, labels, escapes,
//! values, one HELP and TYPE per family before its samples, families not interleaved,
//! counters named `_total`); counters that move with real traffic (a publish over TCP,
//! a WebSocket connection, a TLS handshake without the required client certificate);
//! 404 for everything but `GET /metrics`; oversized, slow and surplus requests dropped;
//! the rate controls' actions and the messages per listener (raw 3.1.1 clients of
//! `support::raw`).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::pki::TestPki;
use support::raw::{
    self, connect, puback, publish, subscribe, Connect, Packet, RawClient, DISCONNECT_NORMAL,
    PINGREQ, PINGRESP, PUBACK, PUBLISH, SUBACK,
};
use support::{dial, gateway::*, net::free_port, wait::*};

/// One sample: metric name and its labels.
type Key = (String, BTreeMap<String, String>);

/// A strict parser of the text exposition format 0.0.4; panics naming the bad line.
fn parse(text: &str) -> HashMap<Key, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        let family_of = |name: &str| name.to_string();
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let tail = parts.next().unwrap_or("");
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                "HELP" => assert!(helped.insert(name.to_string()), "second HELP: {line:?}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "untyped", "summary", "histogram"].contains(&tail),
                        "bad type in {line:?}"
                    );
                    assert!(
                        typed.insert(name.to_string(), tail.to_string()).is_none(),
                        "second TYPE: {line:?}"
                    );
                    if tail == "counter" {
                        assert!(name.ends_with("_total"), "counter without _total: {line:?}");
                    }
                }
                _ => panic!("unknown comment kind in {line:?}"),
            }
            if current.as_deref() != Some(name) {
                assert!(
                    !finished.contains(name),
                    "family {name} interleaved: {line:?}"
                );
                if let Some(previous) = current.replace(name.to_string()) {
                    finished.insert(previous);
                }
            }
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "bad line {line:?}"
        );
        let (name, labels, rest) = sample(line);
        let family = family_of(&name);
        assert!(
            typed.contains_key(&family),
            "{name} sampled before its TYPE"
        );
        assert_eq!(
            current.as_deref(),
            Some(family.as_str()),
            "sample outside its family: {line:?}"
        );
        let mut fields = rest.split(' ');
        let value = fields.next().unwrap_or("");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
        }
        assert!(fields.next().is_none(), "trailing text in {line:?}");
        assert!(
            samples.insert((name, labels), value).is_none(),
            "duplicate sample {line:?}"
        );
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} rest` → (name, labels, rest).
fn sample(line: &str) -> (String, BTreeMap<String, String>, &str) {
    let end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..end];
    assert!(valid_name(name), "bad metric name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let bytes = inner.as_bytes();
        let mut i = 0;
        loop {
            if bytes.get(i) == Some(&b'}') {
                rest = &inner[i + 1..];
                break;
            }
            let eq = inner[i..]
                .find("=\"")
                .map(|j| i + j)
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            let label = &inner[i..eq];
            assert!(
                valid_name(label) && !label.contains(':'),
                "bad label name in {line:?}"
            );
            let mut value = String::new();
            i = eq + 2;
            loop {
                match bytes.get(i) {
                    Some(b'\\') => {
                        match bytes.get(i + 1) {
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            Some(b'n') => value.push('\n'),
                            _ => panic!("bad escape in {line:?}"),
                        }
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        let c = inner[i..].chars().next().expect("char");
                        value.push(c);
                        i += c.len_utf8();
                    }
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            assert!(
                labels.insert(label.to_string(), value).is_none(),
                "duplicate label in {line:?}"
            );
            i += 1;
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => panic!("bad label separator in {line:?}"),
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    (name.to_string(), labels, rest)
}

fn value(samples: &HashMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// Send `request`, read until the server closes: (status code or 0 if none, body).
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the endpoint answers and closes within the limit")
        .ok();
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn scrape(addr: SocketAddr) -> HashMap<Key, f64> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: tollgate\r\n\r\n").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// A gateway with a plain `local` listener, a `devices` TLS listener that requires client
/// certificates, a `web` WebSocket listener, and the endpoint on a free loopback port.
async fn gateway(dir: &std::path::Path) -> (Gateway, TestPki, SocketAddr) {
    let pki = TestPki::new(dir);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\npassword_auth = false\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntransport = \"ws\"\nallow_anonymous = true\npassword_auth = false\n\
         {}[metrics]\nbind = \"{metrics}\"\n",
        tls_listener(
            &pki,
            &format!(
                "client_ca = {:?}\npassword_auth = false\n",
                pki.ca.display().to_string()
            )
        ),
    );
    (Gateway::start(dir, &body).await, pki, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_parses_strictly_and_traffic_moves_the_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki, metrics) = gateway(dir.path()).await;
    let before = scrape(metrics).await;
    let local = [("listener", "local"), ("transport", "tcp")];

    // A publish over plain TCP.
    let mut client = support::v4(gw.addr("local"), "metrics-pub").await;
    client
        .client
        .publish("m/x", rumqttc::QoS::AtLeastOnce, false, "hello")
        .await
        .expect("publish");
    client
        .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await;
    // A TLS client without the required certificate.
    let refused = dial::v5(
        &dial::Dial::tls(gw.addr("devices"), &pki.ca, None),
        "nocert",
    )
    .await;
    assert!(refused.is_err(), "no client certificate, no session");

    // The gateway counts the failed handshake after the client has seen it fail: scrape
    // until it is there (or WAIT is over and the assertion below says so).
    let tls_refused = [("listener", "devices"), ("reason", "no_certificate")];
    let deadline = std::time::Instant::now() + WAIT;
    let after = loop {
        let after = scrape(metrics).await;
        let moved = value(
            &after,
            "tollgate_tls_handshake_failures_total",
            &tls_refused,
        ) - value(
            &before,
            "tollgate_tls_handshake_failures_total",
            &tls_refused,
        );
        if moved >= 1.0 || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(moved("tollgate_messages_received_total", &[]) >= 1.0);
    assert!(moved("tollgate_listener_connections_accepted_total", &local) >= 1.0);
    assert!(moved("tollgate_listener_received_bytes_total", &local) > 0.0);
    assert!(moved("tollgate_listener_sent_bytes_total", &local) > 0.0);
    assert_eq!(
        value(&after, "tollgate_listener_connections_open", &local),
        1.0
    );
    assert_eq!(
        moved(
            "tollgate_listener_connections_accepted_total",
            &[("listener", "web"), ("transport", "ws")]
        ),
        0.0,
        "nothing connected to the WebSocket listener"
    );
    assert!(
        moved(
            "tollgate_tls_handshake_failures_total",
            &[("listener", "devices"), ("reason", "no_certificate")]
        ) >= 1.0,
        "the refused handshake is counted under its reason"
    );
    assert!(
        moved(
            "tollgate_audit_events_total",
            &[("kind", "client_connected")]
        ) >= 1.0
    );
    let expiry = value(
        &after,
        "tollgate_certificate_expiry_seconds",
        &[("certificate", "devices-server")],
    );
    assert!(
        expiry > 29.0 * 86_400.0 && expiry <= 30.0 * 86_400.0,
        "the test server certificate is valid for 30 days: {expiry}"
    );
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(value(&after, "process_cpu_seconds_total", &[]) > 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_get_404_and_oversized_slow_and_surplus_requests_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki, metrics) = gateway(dir.path()).await;
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"HEAD /metrics HTTP/1.1\r\n\r\n",
    ] {
        let (status, _) = http(metrics, request).await;
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(request));
    }
    // A head that never ends: refused once over the bound, never 200.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let (status, _) = http(metrics, &huge).await;
    assert!(
        status == 400 || status == 0,
        "oversized head answered {status}"
    );

    // Slow scrapers: MAX_SCRAPES of them stall; one more is closed at once without an
    // answer; the stalled ones are closed by the read deadline.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(metrics).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");
        stalled.push(s);
    }
    // Let the endpoint take the four before the fifth arrives.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        status, 0,
        "a fifth scrape at once is closed without an answer"
    );
    for mut s in stalled {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the read deadline closes a stalled scraper");
        assert!(rest.is_empty(), "no answer to half a request");
    }
    // And the endpoint still serves.
    scrape(metrics).await;
    gw.stop().await;
}

#[test]
fn check_warns_about_a_non_loopback_endpoint_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1883\"\ntransport = \"tcp\"\nallow_anonymous = true\n";
    let load = |metrics: &str| {
        let path = write_config(dir.path(), &format!("{listener}[metrics]\n{metrics}"));
        tollgate::config::load_with_env(
            &tollgate::config::ConfigSource::File(path),
            &Default::default(),
        )
    };
    let loaded = load("bind = \"0.0.0.0:9883\"\n").expect("accepted");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("metrics.bind") && w.contains("non-loopback")),
        "{:?}",
        loaded.warnings
    );
    let loaded = load("bind = \"127.0.0.1:9883\"\n").expect("accepted");
    assert!(!loaded.warnings.iter().any(|w| w.contains("metrics")));
    for (bad, what) in [
        ("bind = \"localhost\"\n", "not a socket address"),
        ("bind = \"127.0.0.1:1883\"\n", "collides with listener[0]"),
        ("port = 9883\n", "unknown field"),
    ] {
        let problems = load(bad).expect_err("refused").problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("metrics") && p.contains(what)),
            "{bad}: {problems:?}"
        );
    }
}

#[test]
fn the_parser_refuses_what_the_format_forbids() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\\\"q\"} 1\n";
    assert_eq!(parse(good).len(), 1);
    for bad in [
        "a_total 1\n",                                // no TYPE
        "# TYPE a counter\na 1\n",                    // counter without _total
        "# TYPE a gauge\na{l=\"v} 1\n",               // unterminated value
        "# TYPE a gauge\na{l=\"\\x\"} 1\n",           // bad escape
        "# TYPE a gauge\na one\n",                    // bad value
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 2\n", // interleaved
        "# TYPE a gauge\na 1\na 2\n",                 // duplicate sample
        "# TYPE a gauge\na 1",                        // no final line feed
        "# TYPE 1a gauge\n",                          // bad name
    ] {
        let refused = std::panic::catch_unwind(|| parse(bad)).is_err();
        assert!(refused, "accepted {bad:?}");
    }
}

/// A connected 3.1.1 client of `support::raw` (CONNACK 0, no session present): rumqttc
/// would reconnect and hide closes.
async fn connected(addr: SocketAddr, id: &str) -> RawClient {
    let (client, connack) = RawClient::connect(addr, &connect(false, id, None)).await;
    assert_eq!(connack.body, [0, 0], "{id} connected: {connack:?}");
    client
}

/// A QoS 0 delivery or publish of the payload `x` (3.1.1).
fn x_publish(topic: &str) -> Packet {
    let mut body = Vec::new();
    raw::string(topic.as_bytes(), &mut body);
    body.push(b'x');
    Packet {
        kind: PUBLISH,
        flags: 0,
        body,
    }
}

const PONG: Packet = Packet {
    kind: PINGRESP,
    flags: 0,
    body: Vec::new(),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_control_actions_and_messages_per_listener_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let listener = |name: &str, extra: &str| {
        format!("[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\npassword_auth = false\n{extra}\n")
    };
    let body = format!(
        "{}{}[metrics]\nbind = \"{metrics}\"\n",
        listener(
            "limited",
            "connect_rate = { per_second = 0.01, burst = 4 }\npublish_rate = { msgs = 2, on_excess = \"disconnect\" }\nmax_qos = 1"
        ),
        listener("slow", "publish_rate = { msgs = 1 }"),
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("limited");

    // 1: a subscriber asking QoS 2 is granted 1.
    let mut sub = connected(addr, "sub").await;
    sub.send(&subscribe(false, "r/#", 2, 1)).await;
    assert_eq!(
        sub.expect(SUBACK).await,
        Packet {
            kind: SUBACK,
            flags: 0,
            body: vec![0, 1, 1]
        },
        "granted QoS 1"
    );
    // 2: two messages within the rate, then a PINGREQ answered after them.
    let mut publisher = connected(addr, "pub").await;
    let mut two = publish(false, "r/a", 0, 1, b"x").repeat(2);
    two.extend(PINGREQ);
    publisher.send(&two).await;
    assert_eq!(publisher.next().await, Some(PONG));
    for _ in 0..2 {
        assert_eq!(sub.next().await, Some(x_publish("r/a")), "two deliveries");
    }
    // 3: five at once exceed msgs = 2: closed.
    let mut flood = connected(addr, "flood").await;
    flood
        .send(&publish(false, "r/f", 0, 1, b"x").repeat(5))
        .await;
    flood.closed("flood beyond msgs = 2").await;
    // 4: a QoS 2 PUBLISH above max_qos 1: closed without PUBREC.
    let mut qos2 = connected(addr, "qos2").await;
    qos2.send(&publish(false, "r/q", 2, 1, b"x")).await;
    qos2.closed("QoS 2 above max_qos 1").await;
    // 5: the fifth attempt from 127.0.0.1 is over connect_rate's burst: closed at once.
    RawClient::open(addr)
        .await
        .closed("the fifth attempt")
        .await;
    // The slow listener throttles three messages at one per second; nothing is lost.
    let mut slow = connected(gw.addr("slow"), "slow").await;
    let mut three = publish(false, "s/a", 0, 1, b"x").repeat(3);
    three.extend(PINGREQ);
    slow.send(&three).await;
    assert_eq!(slow.next().await, Some(PONG), "PINGRESP after the throttle");

    let after = scrape(metrics).await;
    let limited = [("listener", "limited"), ("transport", "tcp")];
    for action in ["connect_rate", "publish_rate", "max_qos"] {
        assert_eq!(
            value(
                &after,
                "tollgate_rate_limited_total",
                &[("listener", "limited"), ("action", action)]
            ),
            1.0,
            "{action}"
        );
        assert_eq!(
            value(
                &after,
                "tollgate_rate_limited_total",
                &[("listener", "slow"), ("action", action)]
            ),
            0.0,
            "{action} on slow"
        );
    }
    assert_eq!(
        value(
            &after,
            "tollgate_listener_subscriptions_downgraded_total",
            &limited
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "tollgate_listener_messages_received_total",
            &limited
        ) >= 2.0
    );
    // Two from "pub", and the flood's first two (within the rate, routed before the third
    // ended the connection).
    assert_eq!(
        value(&after, "tollgate_listener_messages_sent_total", &limited),
        4.0,
        "the subscriber's deliveries"
    );
    let slow_labels = [("listener", "slow"), ("transport", "tcp")];
    assert!(value(&after, "tollgate_listener_throttled_total", &slow_labels) >= 1.0);
    assert_eq!(
        value(
            &after,
            "tollgate_listener_messages_received_total",
            &slow_labels
        ),
        3.0
    );
    assert_eq!(
        value(&after, "tollgate_listener_throttled_total", &limited),
        0.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_points_to_another_certificate_moves_its_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = |pki: &TestPki| {
        format!(
            "{}[metrics]\nbind = \"{metrics}\"\n",
            tls_listener(pki, "allow_anonymous = true\npassword_auth = false\n")
        )
    };
    let gw = Gateway::start(dir.path(), &body(&pki)).await;
    let labels = [("certificate", "devices-server")];
    let before = value(
        &scrape(metrics).await,
        "tollgate_certificate_expiry_seconds",
        &labels,
    );
    assert!(before > 29.0 * 86_400.0, "30 days at start: {before}");

    // A server certificate valid for 5 days in another file, and the config pointing to it.
    let short = tollgate::pki::issue_server(
        &pki.dir,
        "server-short",
        &["localhost".to_string()],
        &["127.0.0.1".parse().expect("ip")],
        5,
        tollgate::pki::KeyAlgorithm::EcdsaP256,
        false,
    )
    .expect("short certificate");
    let reloaded = TestPki {
        server_cert: short.cert,
        server_key: short.key,
        ..pki
    };
    write_config(
        dir.path(),
        &format!(
            "sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{}",
            body(&reloaded)
        ),
    );
    gw.reload.reload().await.expect("reload accepted");
    let after = value(
        &scrape(metrics).await,
        "tollgate_certificate_expiry_seconds",
        &labels,
    );
    assert!(
        after > 4.0 * 86_400.0 && after <= 5.0 * 86_400.0,
        "the reloaded 5-day certificate: {after}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentications_are_counted_by_method_and_reason() {
    if !support::peers::require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = support::peers::mosquitto_passwd_file(dir.path(), &[("alice", "wonder")]);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         {}[metrics]\nbind = \"{metrics}\"\n",
        auth_section(&passwd)
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("local");
    let good = dial::v4(&dial::Dial::tcp(addr).login("alice", "wonder"), "good").await;
    assert!(good.is_ok(), "the right password");
    let bad = dial::v4(&dial::Dial::tcp(addr).login("alice", "nope"), "bad").await;
    assert!(bad.is_err(), "a wrong password is refused");
    let anonymous = dial::v4(&dial::Dial::tcp(addr), "anon").await;
    assert!(anonymous.is_ok(), "anonymous is allowed here");

    let after = scrape(metrics).await;
    let auth = |method: &str, outcome: &str, reason: &str| {
        value(
            &after,
            "tollgate_auth_total",
            &[("method", method), ("outcome", outcome), ("reason", reason)],
        )
    };
    assert_eq!(auth("password", "success", "accepted"), 1.0);
    assert!(auth("password", "refused", "bad_credentials") >= 1.0);
    assert_eq!(auth("anonymous", "success", "accepted"), 1.0);
    assert_eq!(auth("certificate", "success", "accepted"), 0.0);
    assert_eq!(auth("password", "refused", "throttled"), 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_gauges_follow_an_offline_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\npassword_auth = false\n\
         [metrics]\nbind = \"{metrics}\"\n"
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("local");
    let connect_persistent = |id: &'static str| async move {
        // 3.1.1 CONNECT, clean session 0, keep alive 60 s.
        let persistent = Connect {
            clean: false,
            ..Connect::new(false, id)
        };
        let (client, connack) = RawClient::connect(addr, &persistent.encode()).await;
        assert_eq!(connack.reason_code(), 0, "{connack:?}");
        client
    };
    let mut offline = connect_persistent("offline").await;
    offline.send(&subscribe(false, "q/#", 1, 1)).await;
    offline.expect(SUBACK).await;
    offline.send(&DISCONNECT_NORMAL).await;
    drop(offline);

    let mut publisher = connected(addr, "queue-pub").await;
    let mut three: Vec<u8> = (1..=3)
        .flat_map(|i| publish(false, "q/a", 1, i, b"x"))
        .collect();
    three.extend(PINGREQ);
    publisher.send(&three).await;
    // Three PUBACKs and the PINGRESP: all three are queued by now.
    // (The PINGRESP may come before the PUBACKs: the acknowledgements wait for routing.)
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(publisher.next().await.expect("open"));
    }
    answers.retain(|p| p != &PONG);
    let acked: Vec<Vec<u8>> = answers
        .iter()
        .map(|p| {
            assert_eq!(p.kind, PUBACK, "{p:?}");
            p.body.clone()
        })
        .collect();
    assert_eq!(
        acked,
        [[0, 1], [0, 2], [0, 3]],
        "three PUBACKs and a PINGRESP"
    );

    let deadline = std::time::Instant::now() + WAIT;
    let queued = loop {
        let s = scrape(metrics).await;
        let queued = value(&s, "tollgate_queued_messages", &[]);
        if queued == 3.0 || std::time::Instant::now() > deadline {
            break (queued, value(&s, "tollgate_queued_bytes", &[]));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(queued.0, 3.0, "three messages held for the offline session");
    assert!(queued.1 >= 3.0, "their bytes: {}", queued.1);

    // The session comes back and takes them: the gauges go back to zero.
    let mut back = connect_persistent("offline").await;
    let mut pkids = Vec::new();
    for _ in 0..3 {
        let message = back.expect(PUBLISH).await.publish(false);
        assert_eq!((message.topic.as_str(), message.qos), ("q/a", 1));
        assert_eq!(message.payload, b"x");
        pkids.push(message.pkid.expect("a QoS 1 delivery"));
    }
    // Acknowledge them.
    for pkid in pkids {
        back.send(&puback(pkid)).await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = scrape(metrics).await;
        if value(&s, "tollgate_queued_messages", &[]) == 0.0 {
            assert_eq!(value(&s, "tollgate_queued_bytes", &[]), 0.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gw.stop().await;
}
