//! Issue 7 item 6, "Logs cannot be flooded", over real sockets: a client that triggers a
//! thousand ACL denials gets ten lines and one summary while the counter shows a thousand;
//! a peer that keeps sending invalid CONNECTs is limited across connections and summarised
//! after the interval; a client id or user name cannot forge a log line (control characters
//! are refused by the codec without being echoed, line separators and bidi overrides are
//! escaped) and is truncated. Alone in its binary with one global subscriber: tracing caches
//! per-callsite interest process-wide, and connection tasks run on every worker thread.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::*;
use tollgate::acl::{Acl, Authorizer};
use tollgate::auth::{AuthConfig, HashScheme, PasswordAuthenticator, PasswordFile};
use tollgate::telemetry::limit::{LogLimitSettings, DEFAULT_PER_CONNECTION, DEFAULT_PER_PEER};

/// Every line of this process at `info` and above, as the text format writes it.
fn log() -> &'static support::logs::Captured {
    support::logs::global("info")
}

fn text() -> String {
    log().text()
}

fn lines_with(needles: &[&str]) -> Vec<String> {
    text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn deny_all_writes() -> Arc<dyn Authorizer> {
    Arc::new(Acl::parse("test.acl", "topic read allowed/#\n", &[]).expect("valid acl"))
}

async fn settings_with(limits: LogLimitSettings) -> TestBroker {
    start_broker_full(
        tollgate::broker::BrokerSettings {
            log_limits: limits,
            ..test_settings()
        },
        Arc::new(tollgate::auth::AnonymousOnly),
        deny_all_writes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_acl_denials_log_ten_lines_and_a_summary_but_count_all() {
    log();
    let b = settings_with(LogLimitSettings::default()).await;
    let mut raw = Raw::connect_v5(b.addr, "flooder-1").await;
    // A thousand denied QoS 0 publishes in one write, then a ping to know they were read.
    let mut burst = BytesMut::new();
    for i in 0..1000 {
        let publish = p5::Publish::new(format!("forbidden/{i}"), Q5::AtMostOnce, "x", None);
        p5::Packet::Publish(publish)
            .write(&mut burst, None)
            .expect("encodable");
    }
    p5::Packet::PingReq(p5::PingReq)
        .write(&mut burst, None)
        .expect("encodable");
    raw.send_bytes(&burst).await;
    assert!(matches!(raw.read().await, Some(p5::Packet::PingResp(_))));
    raw.send(&p5::Packet::Disconnect(p5::Disconnect::new(
        p5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;

    // The connection's summary is written when its task ends.
    wait_until("the connection's summary line", || {
        !lines_with(&["log_lines_suppressed", "scope=\"connection\""]).is_empty()
    })
    .await;
    let denied = lines_with(&["acl_denied", "client_id=flooder-1"]);
    assert_eq!(denied.len(), DEFAULT_PER_CONNECTION as usize, "{denied:#?}");
    assert!(denied.iter().all(|l| l.contains("forbidden/")));
    let summaries = lines_with(&["log_lines_suppressed", "scope=\"connection\""]);
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    let expected = format!("suppressed={}", 1000 - DEFAULT_PER_CONNECTION);
    assert!(summaries[0].contains(&expected), "{}", summaries[0]);
    assert!(
        summaries[0].contains(&format!("acl_denied={}", 1000 - DEFAULT_PER_CONNECTION)),
        "{}",
        summaries[0]
    );
    assert!(summaries[0].contains("peer=127.0.0.1"), "{}", summaries[0]);

    let audit = b.broker.stats().audit;
    assert_eq!(audit.acl_denied, 1000);
    assert_eq!(
        audit.log_lines_suppressed,
        u64::from(1000 - DEFAULT_PER_CONNECTION)
    );
    b.stop().await;
}

/// Opens a connection from 127.0.0.1 that sends a CONNECT with a bad protocol name.
async fn bad_connect(addr: std::net::SocketAddr) {
    let mut raw = Raw::open(addr).await;
    // CONNECT, remaining length 12, protocol name "MQXX", level 4, clean session, keep alive 30.
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'X', b'X', 4, 0x02, 0, 30, 0, 0])
        .await;
    raw.read_to_close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_connects_from_one_peer_are_limited_across_connections_and_summarised() {
    log();
    // Long enough for all the attempts to fall in one window even under qemu on a busy CI
    // machine (each attempt is a TCP connection).
    let interval = Duration::from_secs(4);
    let b = settings_with(LogLimitSettings {
        interval,
        ..LogLimitSettings::default()
    })
    .await;
    let before = lines_with(&["Connection refused: invalid CONNECT.", "MQXX"]).len();
    let started = std::time::Instant::now();
    let attempts = DEFAULT_PER_PEER + 20;
    for _ in 0..attempts {
        bad_connect(b.addr).await;
    }
    let logged = lines_with(&["Connection refused: invalid CONNECT.", "MQXX"]).len() - before;
    if started.elapsed() < interval {
        assert_eq!(logged, DEFAULT_PER_PEER as usize);
    }
    assert_eq!(b.broker.stats().audit.invalid_connect, u64::from(attempts));
    // The first event after the interval writes the peer's summary, then its own line.
    tokio::time::sleep(interval).await;
    let before = lines_with(&["Connection refused: invalid CONNECT.", "MQXX"]).len();
    bad_connect(b.addr).await;
    wait_until("the peer summary", || {
        !lines_with(&["log_lines_suppressed", "scope=\"peer\"", "invalid_connect="]).is_empty()
    })
    .await;
    assert_eq!(
        lines_with(&["Connection refused: invalid CONNECT.", "MQXX"]).len() - before,
        1
    );
    let summary = lines_with(&["log_lines_suppressed", "scope=\"peer\""]);
    let reported: u64 = summary
        .iter()
        .filter_map(|l| l.split("invalid_connect=").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
        .sum();
    let audit = b.broker.stats().audit;
    assert_eq!(audit.invalid_connect, u64::from(attempts) + 1);
    // Every event is a line or part of a summary.
    assert_eq!(
        reported, audit.log_lines_suppressed,
        "{summary:#?} {audit:?}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_strings_cannot_forge_lines_and_are_truncated() {
    log();
    let mut passwords = PasswordFile::new();
    passwords
        .upsert("alice", b"alice-pw", HashScheme::mosquitto_default())
        .expect("hash");
    let authenticator = PasswordAuthenticator::new(Some(passwords), AuthConfig::default());
    let b = start_broker_full(test_settings(), Arc::new(authenticator), deny_all_writes()).await;

    // The codec refuses control characters (newline, ESC, NUL, C1) in client ids and user
    // names without echoing them; what it lets through must still not break a line:
    // Unicode line separators, bidi overrides, quotes, `=`, and sheer length.
    let forged = "\u{2028}FAKE audit: Client connected. client_id=admin";
    let username = format!("mallory\u{202e}{forged}");
    let client_id = format!("dev-esc\" rule=allow {}", "x".repeat(2000));
    let mut raw = Raw::open(b.addr).await;
    let connect = p5::Connect {
        keep_alive: 30,
        client_id: client_id.clone(),
        clean_start: true,
        properties: None,
    };
    let login = p5::Login::new(username.clone(), "wrong");
    raw.send(&p5::Packet::Connect(connect, None, Some(login)))
        .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => assert_ne!(c.code, p5::ConnectReturnCode::Success),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    wait_until("both refusal lines", || {
        !lines_with(&["Authentication refused.", "dev-esc"]).is_empty()
            && !lines_with(&["Connection refused by authentication.", "dev-esc"]).is_empty()
    })
    .await;

    // A newline is refused by the codec, and the refusal does not echo the client id.
    let mut raw = Raw::open(b.addr).await;
    let connect = p5::Connect {
        keep_alive: 30,
        client_id: "dev-nl\nFAKE audit: Client connected.".into(),
        clean_start: true,
        properties: None,
    };
    raw.send(&p5::Packet::Connect(connect, None, None)).await;
    raw.read_to_close().await;
    wait_until("the invalid CONNECT line", || {
        !lines_with(&["invalid CONNECT", "U+000A"]).is_empty()
    })
    .await;
    assert_eq!(b.broker.stats().audit.invalid_connect, 1);

    let all = text();
    assert!(
        !all.lines().any(|l| l.starts_with("FAKE")),
        "a client string started a line: {all}"
    );
    for raw_char in ['\u{2028}', '\u{202e}'] {
        assert!(!all.contains(raw_char), "{raw_char:?} reached the log raw");
    }
    assert!(
        !all.contains(&"x".repeat(300)),
        "a long client id was not truncated"
    );
    let refused = lines_with(&["Authentication refused.", "dev-esc"]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let line = &refused[0];
    assert!(
        line.contains(
            r#"username="mallory\u{202e}\u{2028}FAKE audit: Client connected. client_id=admin""#
        ),
        "{line}"
    );
    let shown = format!(
        r#"client_id="dev-esc\" rule=allow {}…(+{} bytes)""#,
        "x".repeat(256 - 20),
        client_id.len() - 256
    );
    assert!(line.contains(&shown), "{line}");
    let broker_line = lines_with(&["Connection refused by authentication.", "dev-esc"]);
    assert_eq!(broker_line.len(), 1, "{broker_line:#?}");
    assert_eq!(b.broker.stats().audit.auth_refused, 1);
    b.stop().await;
}
