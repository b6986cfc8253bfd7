//! The Prometheus endpoint (`[metrics] bind`) over a real socket: every line of a scrape
//! parsed by a strict text-format 0.0.4 parser written here (names, labels, escapes,
//! values, one HELP and TYPE per family before its samples, families not interleaved,
//! counters named `_total`); counters that move with real traffic (a publish over TCP,
//! a WebSocket connection, a TLS handshake without the required client certificate);
//! 404 for everything but `GET /metrics`; oversized, slow and surplus requests dropped;
//! the rate controls' actions and the messages per listener (raw 3.1.1 clients).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::pki::TestPki;
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

/// Raw 3.1.1 packets for the rate-control test (rumqttc would reconnect and hide closes).
mod raw {
    use super::*;

    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut p = vec![first, body.len() as u8];
        p.extend_from_slice(body);
        p
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    pub fn publish(topic: &str, qos: u8) -> Vec<u8> {
        publish_id(topic, qos, 1)
    }

    pub fn publish_id(topic: &str, qos: u8, pkid: u16) -> Vec<u8> {
        let mut b = Vec::new();
        string(topic, &mut b);
        if qos > 0 {
            b.extend_from_slice(&pkid.to_be_bytes());
        }
        b.extend_from_slice(b"x");
        packet(0x30 | (qos << 1), &b)
    }

    /// A connected 3.1.1 client (CONNACK 0 read).
    pub async fn connected(addr: SocketAddr, id: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut b = Vec::new();
        string("MQTT", &mut b);
        b.extend_from_slice(&[4, 2, 0, 60]);
        string(id, &mut b);
        s.write_all(&packet(0x10, &b)).await.expect("write");
        let mut connack = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "{id} connected");
        s
    }

    /// Everything until the gateway closes the connection.
    pub async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .ok();
        rest
    }
}

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
    let mut sub = raw::connected(addr, "sub").await;
    sub.write_all(&raw::packet(0x82, b"\x00\x01\x00\x03r/#\x02"))
        .await
        .expect("subscribe");
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).await.expect("SUBACK");
    assert_eq!(suback, [0x90, 3, 0, 1, 1], "granted QoS 1");
    // 2: two messages within the rate, then a PINGREQ answered after them.
    let mut publisher = raw::connected(addr, "pub").await;
    let mut two = [raw::publish("r/a", 0), raw::publish("r/a", 0)].concat();
    two.extend([0xC0, 0]);
    publisher.write_all(&two).await.expect("publish");
    let mut pong = [0u8; 2];
    publisher.read_exact(&mut pong).await.expect("PINGRESP");
    assert_eq!(pong, [0xD0, 0]);
    let mut delivered = [0u8; 16];
    sub.read_exact(&mut delivered)
        .await
        .expect("two deliveries");
    // 3: five at once exceed msgs = 2: closed.
    let mut flood = raw::connected(addr, "flood").await;
    flood
        .write_all(&raw::publish("r/f", 0).repeat(5))
        .await
        .expect("flood");
    assert!(raw::until_closed(&mut flood).await.is_empty());
    // 4: a QoS 2 PUBLISH above max_qos 1: closed without PUBREC.
    let mut qos2 = raw::connected(addr, "qos2").await;
    qos2.write_all(&raw::publish("r/q", 2)).await.expect("qos2");
    assert!(raw::until_closed(&mut qos2).await.is_empty());
    // 5: the fifth attempt from 127.0.0.1 is over connect_rate's burst: closed at once.
    let mut fifth = TcpStream::connect(addr).await.expect("connect");
    assert!(raw::until_closed(&mut fifth).await.is_empty());
    // The slow listener throttles three messages at one per second; nothing is lost.
    let mut slow = raw::connected(gw.addr("slow"), "slow").await;
    let mut three = raw::publish("s/a", 0).repeat(3);
    three.extend([0xC0, 0]);
    slow.write_all(&three).await.expect("publish");
    slow.read_exact(&mut pong)
        .await
        .expect("PINGRESP after the throttle");

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
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // 3.1.1 CONNECT, clean session 0, keep alive 60 s.
        let mut c = b"\x00\x04MQTT\x04\x00\x00\x3c".to_vec();
        c.extend_from_slice(&(id.len() as u16).to_be_bytes());
        c.extend_from_slice(id.as_bytes());
        s.write_all(&raw::packet(0x10, &c)).await.expect("connect");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!((connack[0], connack[3]), (0x20, 0));
        s
    };
    let mut offline = connect_persistent("offline").await;
    offline
        .write_all(&raw::packet(0x82, b"\x00\x01\x00\x03q/#\x01"))
        .await
        .expect("subscribe");
    let mut suback = [0u8; 5];
    offline.read_exact(&mut suback).await.expect("SUBACK");
    offline.write_all(&[0xE0, 0]).await.expect("disconnect");
    drop(offline);

    let mut publisher = raw::connected(addr, "queue-pub").await;
    let mut three: Vec<u8> = (1..=3).flat_map(|i| raw::publish_id("q/a", 1, i)).collect();
    three.extend([0xC0, 0]);
    publisher.write_all(&three).await.expect("publish");
    // Three PUBACKs (4 bytes each) and the PINGRESP: all three are queued by now.
    let mut acks = [0u8; 14];
    publisher.read_exact(&mut acks).await.expect("acks");

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
    let mut delivered = Vec::new();
    while delivered.len() < 3 * 10 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, back.read(&mut chunk))
            .await
            .expect("deliveries in time")
            .expect("read");
        assert!(n > 0, "open");
        delivered.extend_from_slice(&chunk[..n]);
    }
    // Each delivery is 10 bytes (QoS 1, topic q/a, payload x): acknowledge them.
    for d in delivered.chunks(10) {
        back.write_all(&[0x40, 2, d[7], d[8]])
            .await
            .expect("PUBACK");
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
