//! The bridge's upstream flow control (issue 9, item 3): a stuck PUBACK ends the
//! connection after `ack_timeout` and the message is resent with DUP=1 on the next
//! one; a backlog is drained at `journal.replay_rate`; a full journal with
//! `overflow = "refuse-new"` answers v5 publishers PUBACK/PUBREC 0x97 (and 3.1.1 ones a
//! PUBACK), counted as `dropped.full`; a message over the cloud's Maximum Packet Size is
//! dropped and counted without breaking the connection; MQTT 5 properties cross the
//! bridge both ways, the response topic mapped through the rules; outbound topic
//! aliases up to the cloud's Topic Alias Maximum, reset on reconnect; the counters
//! survive a restart of the gateway.
//!
//! A cloud that stops reading for a moment (its socket full) delays messages by that
//! moment only, never by `ack_timeout`: the bridge must not lose a PUBLISH that its
//! event loop had taken when a turn of its `select!` was cancelled.
//!
//! The stuck PUBACK needs a cloud that misbehaves on purpose, so it is a small MQTT 5
//! server written here (rustls over TCP on 127.0.0.1, certificates made at test time,
//! packets decoded with rumqttc's codec) that reports every packet it sees with its
//! connection number and time. The pacing test uses Debian's mosquitto as the cloud.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{self as p5, Packet};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use support::cloud::*;
use support::gateway::Gateway;
use support::pki::Pki;
use support::wait::WAIT;

/// What the fake cloud saw: connection number (1, 2, ...), when, and the packet.
#[derive(Debug)]
struct Seen {
    conn: usize,
    at: Instant,
    packet: Packet,
}

/// How the fake cloud answers a PUBLISH on connection `conn` (1-based): acknowledge it?
type AckPolicy = fn(conn: usize, publish: &p5::Publish) -> bool;

/// What the fake cloud's CONNACK announces (MQTT 5 properties; all `None`: none sent).
#[derive(Debug, Clone, Copy, Default)]
struct Announce {
    topic_alias_max: Option<u16>,
    receive_max: Option<u16>,
}

/// A TLS MQTT 5 server on 127.0.0.1: CONNACKs every CONNECT (with what `announce`
/// says), SUBACKs, answers pings, and acknowledges PUBLISHes as `policy` says. Every
/// packet goes to the channel.
async fn fake_cloud(
    pki: &Pki,
    policy: AckPolicy,
    announce: Announce,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let certs = tollgate::tls::load_certs(&pki.server.0).expect("server cert");
    let key = tollgate::tls::load_private_key(&pki.server.1).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(tollgate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            conn += 1;
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            tokio::spawn(serve_fake(tls, conn, policy, announce, tx.clone()));
        }
    });
    (port, rx)
}

async fn serve_fake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    conn: usize,
    policy: AckPolicy,
    announce: Announce,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let mut buf = BytesMut::new();
    loop {
        let packet = loop {
            match Packet::read(&mut buf, None) {
                Ok(p) => break p,
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                    if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                Err(e) => panic!("fake cloud cannot decode: {e:?}"),
            }
        };
        let reply = match &packet {
            Packet::Connect(..) => Some(Packet::ConnAck(p5::ConnAck {
                session_present: false,
                code: p5::ConnectReturnCode::Success,
                properties: (announce.topic_alias_max.is_some() || announce.receive_max.is_some())
                    .then_some(p5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: announce.receive_max,
                        max_qos: None,
                        retain_available: None,
                        max_packet_size: None,
                        assigned_client_identifier: None,
                        topic_alias_max: announce.topic_alias_max,
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: None,
                        subscription_identifiers_available: None,
                        shared_subscription_available: None,
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    }),
            })),
            Packet::Subscribe(s) => Some(Packet::SubAck(p5::SubAck {
                pkid: s.pkid,
                return_codes: s
                    .filters
                    .iter()
                    .map(|_| p5::SubscribeReasonCode::Success(QoS::AtLeastOnce))
                    .collect(),
                properties: None,
            })),
            Packet::PingReq(_) => Some(Packet::PingResp(p5::PingResp)),
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce && policy(conn, p) => {
                Some(Packet::PubAck(p5::PubAck::new(p.pkid, None)))
            }
            _ => None,
        };
        let _ = tx.send(Seen {
            conn,
            at: Instant::now(),
            packet,
        });
        if let Some(reply) = reply {
            let mut out = BytesMut::new();
            reply.write(&mut out, None).expect("encode reply");
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// The next PUBLISH the fake cloud saw (skipping other packets).
async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Seen>) -> (usize, Instant, p5::Publish) {
    loop {
        let seen = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a PUBLISH within the limit")
            .expect("fake cloud alive");
        if let Packet::Publish(p) = seen.packet {
            return (seen.conn, seen.at, p);
        }
    }
}

/// A gateway with a local TCP listener, no ACL, and bridge `cloud` to `port` forwarding
/// `sensors/#` to `site/gw1/sensors/#` at QoS 1; `extra` adds `[[bridge]]` keys.
fn flow_config(
    pki: &Pki,
    gw_cert: &(std::path::PathBuf, std::path::PathBuf),
    port: u16,
    extra: &str,
    journal: &str,
) -> String {
    format!(
        r##"[[listener]]
name = "local"
bind = "127.0.0.1:0"
transport = "tcp"
allow_anonymous = true

[[bridge]]
name = "cloud"
address = ["127.0.0.1:{port}"]
protocol = "5"
client_id = "gw1"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
backoff = {{ min = "200ms", max = "1s", stable = "5s" }}
{extra}

[bridge.journal]
{journal}

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site/gw1/"
"##,
        ca = pki.ca_path.display().to_string(),
        cert = gw_cert.0.display().to_string(),
        key = gw_cert.1.display().to_string(),
    )
}

/// A mosquitto cloud (`extra` appended to its settings) and an operator subscribed to
/// `site/gw1/sensors/#`, proven in place by its own marker coming back.
async fn cloud_with_operator(
    pki: &Pki,
    dir: &std::path::Path,
    extra: &str,
) -> (
    support::Mosquitto,
    rumqttc::v5::AsyncClient,
    mpsc::UnboundedReceiver<Msg>,
) {
    let settings = format!("{}{extra}", cloud_settings(pki, dir, false));
    let cloud = support::Mosquitto::start(dir, &settings);
    let (operator, mut up_rx) = cloud_client(pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/sensors/#").await;
    operator
        .publish("site/gw1/sensors/ready", QoS::AtLeastOnce, false, "ready")
        .await
        .expect("queued");
    next_on(&mut up_rx, "site/gw1/sensors/ready").await;
    (cloud, operator, up_rx)
}

/// A gateway bridged to a fake cloud (`policy`, `announce`), connected, with a local
/// publisher `device`; `config` writes the gateway's configuration. Bind every field:
/// the directory and the publisher's channel must live as long as the test.
struct FlowRig {
    _dir: tempfile::TempDir,
    gw: Gateway,
    seen: mpsc::UnboundedReceiver<Seen>,
    local: rumqttc::v5::AsyncClient,
    _local_rx: mpsc::UnboundedReceiver<Msg>,
}

async fn flow_rig(
    policy: AckPolicy,
    announce: Announce,
    config: impl FnOnce(&Pki, &(std::path::PathBuf, std::path::PathBuf), u16) -> String,
) -> FlowRig {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, seen) = fake_cloud(&pki, policy, announce).await;
    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(dir.path(), &config(&pki, &gw_cert, port)).await;
    wait_state(&gw, "watch-1", |v| v["state"] == "connected").await;
    let (local, local_rx) = local_client(&gw, "device").await;
    FlowRig {
        _dir: dir,
        gw,
        seen,
        local,
        _local_rx: local_rx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_puback_reconnects_after_ack_timeout_and_resends_with_dup() {
    // The first connection swallows every PUBLISH; later ones acknowledge.
    let FlowRig {
        gw,
        mut seen,
        local,
        _dir,
        _local_rx,
    } = flow_rig(
        |conn, _| conn > 1,
        Announce::default(),
        |pki, cert, port| flow_config(pki, cert, port, "ack_timeout = \"1s\"", ""),
    )
    .await;
    local
        .publish("sensors/t", QoS::AtLeastOnce, false, "first")
        .await
        .expect("queued");
    let (conn, sent_at, p) = next_publish(&mut seen).await;
    assert_eq!(
        (conn, &p.topic[..], &p.payload[..]),
        (1, &b"site/gw1/sensors/t"[..], &b"first"[..])
    );
    assert!(!p.dup, "a first transmission carries DUP=0");

    // No PUBACK: after ack_timeout the bridge drops the connection and sends it again.
    let (conn, resent_at, p) = next_publish(&mut seen).await;
    assert_eq!(conn, 2, "resent on a new connection");
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"site/gw1/sensors/t"[..], &b"first"[..])
    );
    assert!(p.dup, "a resend of what went out before carries DUP=1");
    let waited = resent_at - sent_at;
    assert!(
        waited >= Duration::from_secs(1),
        "resent after {waited:?}: before ack_timeout (1s)"
    );
    assert!(
        waited < Duration::from_secs(1) + WAIT,
        "resent after {waited:?}"
    );

    // Acknowledged once: counted once; the next message is new (DUP=0) and nothing
    // else came between (the marker proves no third copy).
    local
        .publish("sensors/t", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queued");
    let (conn, _, p) = next_publish(&mut seen).await;
    assert_eq!((conn, &p.payload[..], p.dup), (2, &b"marker"[..], false));
    let state = wait_state(&gw, "watch-2", |v| v["acked"] == 2).await;
    assert_eq!(state["reconnects"], 1);
    assert_eq!(state["queued_messages"], 0);
    assert_eq!(state["dropped"]["refused_upstream"], 0);
    gw.stop().await;
}

/// The window is the cloud's Receive Maximum when that is below `max_inflight` (the
/// default, 1000): a cloud announcing 5 that acknowledges nothing never gets a sixth
/// PUBLISH (3 to 5: the window is refilled once at most half of it is in flight, so
/// messages trickling in may leave it at 3); after `ack_timeout` the next connection
/// (which acknowledges) gets those again with DUP and then the rest, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clouds_receive_maximum_bounds_what_is_in_flight() {
    let announce = Announce {
        receive_max: Some(5),
        ..Announce::default()
    };
    let FlowRig {
        gw,
        mut seen,
        local,
        _dir,
        _local_rx,
    } = flow_rig(
        |conn, _| conn > 1,
        announce,
        |pki, cert, port| flow_config(pki, cert, port, "ack_timeout = \"2s\"", ""),
    )
    .await;
    for i in 0..40 {
        local
            .publish("sensors/t", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    let mut first = Vec::new();
    let mut second = Vec::new();
    while second.len() < 40 {
        let (conn, _, p) = next_publish(&mut seen).await;
        let n: usize = std::str::from_utf8(&p.payload)
            .expect("utf-8")
            .parse()
            .expect("a number");
        match conn {
            1 => first.push(n),
            _ => second.push((n, p.dup)),
        }
    }
    let window = first.len();
    assert!(
        (3..=5).contains(&window) && first == (0..window).collect::<Vec<_>>(),
        "unacknowledged, the first connection got the first 3 to 5, never more than the cloud's Receive Maximum: {first:?}"
    );
    let expected: Vec<_> = (0..40).map(|n| (n, n < window)).collect();
    assert_eq!(
        second, expected,
        "the window resent with DUP, then the rest once each, in order"
    );
    gw.stop().await;
}

/// A rule's `rate` caps what it forwards: of a burst of 40 QoS 1 messages, one
/// second's worth (5) reaches the cloud, the rest are counted as `rate_limited` (the
/// local publisher is acknowledged as for any message the bridge does not carry), and
/// a second later the rule forwards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_rate_caps_what_it_forwards_and_counts_the_rest() {
    let FlowRig {
        gw,
        mut seen,
        local,
        _dir,
        _local_rx,
    } = flow_rig(
        |_, _| true,
        Announce::default(),
        |pki, cert, port| {
            let config = flow_config(pki, cert, port, "", "").replace(
                "remote_prefix = \"site/gw1/\"\n",
                "remote_prefix = \"site/gw1/\"\nrate = { msgs = 5 }\n",
            );
            assert!(config.contains("rate = { msgs = 5 }"));
            config
        },
    )
    .await;
    for i in 0..40 {
        local
            .publish("sensors/t", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    let state = wait_state(&gw, "watch-2", |v| {
        v["dropped"]["rate_limited"].as_u64().unwrap_or(0) + v["stored"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    let limited = state["dropped"]["rate_limited"].as_u64().expect("counted");
    let stored = state["stored"].as_u64().expect("counted");
    assert!(
        (5..=12).contains(&stored),
        "one second's worth forwarded (a little more if publishing took long): {state}"
    );
    assert_eq!(limited + stored, 40, "{state}");
    let mut forwarded = Vec::new();
    for _ in 0..stored {
        let (_, _, p) = next_publish(&mut seen).await;
        forwarded.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
    }
    assert_eq!(
        forwarded[..5],
        ["0", "1", "2", "3", "4"],
        "the burst goes first"
    );
    // The bucket refills: a message a second later is forwarded.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    local
        .publish("sensors/t", QoS::AtLeastOnce, false, "later")
        .await
        .expect("queued");
    let (_, _, p) = next_publish(&mut seen).await;
    assert_eq!(&p.payload[..], b"later");
    gw.stop().await;
}

/// A QoS `qos` PUBLISH of `size` bytes on `topic` with packet id `pkid`.
fn big_publish(topic: &str, qos: QoS, pkid: u16, size: usize) -> Packet {
    let mut p = p5::Publish::new(topic, qos, vec![b'x'; size], None);
    p.pkid = pkid;
    Packet::Publish(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_answers_0x97_to_v5_publishers_and_acks_v311_ones_when_the_journal_is_full() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The cloud is down for the whole test: nothing leaves the journal.
    let dead = support::net::free_port();
    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(
        dir.path(),
        &flow_config(
            &pki,
            &gw_cert,
            dead,
            "",
            "max_bytes = 65536\noverflow = \"refuse-new\"",
        ),
    )
    .await;
    let addr = gw.addr("local");
    let mut raw = support::Raw::connect_v5(addr, "device").await;

    // QoS 1 until the journal is full: every PUBACK is a success until one is 0x97.
    let mut stored = 0;
    let refused = loop {
        assert!(
            stored < 64,
            "a 64 KiB journal took {stored} messages of 4 KB"
        );
        let pkid = stored + 1;
        raw.send(&big_publish("sensors/t", QoS::AtLeastOnce, pkid, 4000))
            .await;
        let ack = support::raw_wait(&mut raw, |p| match p {
            Packet::PubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await;
        assert_eq!(ack.pkid, pkid);
        match ack.reason {
            p5::PubAckReason::Success => stored += 1,
            other => break other,
        }
    };
    assert_eq!(refused, p5::PubAckReason::QuotaExceeded);
    assert!(stored > 0, "the journal stored messages before it was full");

    // QoS 2: PUBREC 0x97, and the packet id is free at once: the same id again is a new
    // message (routed, refused again), not taken for a duplicate of the refused one.
    for _ in 0..2 {
        raw.send(&big_publish("sensors/t", QoS::ExactlyOnce, 500, 4000))
            .await;
        let rec = support::raw_wait(&mut raw, |p| match p {
            Packet::PubRec(r) => Some(r.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            (rec.pkid, rec.reason),
            (500, p5::PubRecReason::QuotaExceeded)
        );
    }

    // 3.1.1 has no negative acknowledgement: a PUBACK, the drop counted all the same.
    let mut v4 = support::v4(addr, "device-311").await;
    v4.client
        .publish(
            "sensors/t",
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![b'x'; 4000],
        )
        .await
        .expect("queued");
    v4.wait_for(|p| match p {
        rumqttc::Packet::PubAck(a) => Some(a.pkid),
        _ => None,
    })
    .await;

    let state = wait_state(&gw, "watch", |v| v["dropped"]["full"] == 4).await;
    assert_eq!(state["queued_messages"], stored);
    gw.stop().await;
}

/// A TCP relay on 127.0.0.1 in front of `target`: while `up` is false it closes every
/// connection at once (the cloud is unreachable), then it forwards bytes both ways.
async fn relay(target: u16, up: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !up.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_replayed_in_order_at_replay_rate() {
    if !support::require_peer("mosquitto") {
        return;
    }
    const N: usize = 300;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud, _operator, mut up_rx) = cloud_with_operator(&pki, dir.path(), "").await;

    let link_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = relay(cloud.port, link_up.clone()).await;
    let gw_cert = pki.client("gw1");
    let rate = N / 3;
    let gw = Gateway::start(
        dir.path(),
        &flow_config(
            &pki,
            &gw_cert,
            port,
            "",
            &format!("replay_rate = {{ msgs = {rate}, bytes = 1048576 }}"),
        ),
    )
    .await;
    // Every PUBACK means stored in the journal.
    let mut local = support::v5(gw.addr("local"), "device").await;
    for i in 0..N {
        local
            .client
            .publish("sensors/seq", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    for _ in 0..N {
        local
            .wait_for(|p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
    }

    // The cloud comes back: a burst of one second's worth, then `rate` per second.
    link_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut first = None;
    let mut last = Instant::now();
    for i in 0..N {
        let (topic, payload, _) = next(&mut up_rx).await;
        assert_eq!(
            (topic.as_str(), payload.as_str()),
            ("site/gw1/sensors/seq", i.to_string().as_str()),
            "in order, each once"
        );
        last = Instant::now();
        first.get_or_insert(last);
    }
    let span = last - first.expect("received");
    println!("{N} messages replayed at {rate}/s over {span:?}");
    // (N - rate) messages after the burst at `rate` per second: 2 s.
    assert!(
        span >= Duration::from_millis(1800),
        "{N} messages at replay_rate {rate}/s arrived within {span:?}"
    );
    let state = wait_state(&gw, "watch-done", |v| v["queued_messages"] == 0).await;
    assert_eq!(state["acked"], N);
    gw.stop().await;
    drop(cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_clouds_maximum_packet_size_is_dropped_and_counted() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // mosquitto announces Maximum Packet Size 300 in its CONNACK.
    let (cloud, _operator, mut up_rx) =
        cloud_with_operator(&pki, dir.path(), "max_packet_size 300\n").await;

    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(dir.path(), &flow_config(&pki, &gw_cert, cloud.port, "", "")).await;
    wait_state(&gw, "watch-1", |v| v["state"] == "connected").await;
    let local = support::v5(gw.addr("local"), "device").await;
    // QoS 1 and QoS 0 over the limit, then a small one: only the small one arrives.
    for (topic, qos) in [
        ("sensors/big1", QoS::AtLeastOnce),
        ("sensors/big0", QoS::AtMostOnce),
    ] {
        local
            .client
            .publish(topic, qos, false, vec![b'x'; 1000])
            .await
            .expect("queued");
    }
    local
        .client
        .publish("sensors/small", QoS::AtLeastOnce, false, "ok")
        .await
        .expect("queued");
    let (topic, payload, _) = next(&mut up_rx).await;
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("site/gw1/sensors/small", "ok"),
        "the large messages were not sent, the small one went through"
    );
    let state = wait_state(&gw, "watch-2", |v| {
        v["dropped"]["remote_max_packet"] == 2 && v["queued_messages"] == 0
    })
    .await;
    assert_eq!(state["reconnects"], 0, "the connection was never broken");
    assert_eq!(state["acked"], 1);
    gw.stop().await;
    drop(cloud);
}

/// A v5 client of the cloud (certificate CN `operator`) whose packets can be awaited.
async fn cloud_v5(pki: &Pki, port: u16, id: &str) -> support::V5 {
    let (cert, key) = pki.client("operator");
    let tls = tollgate::tls::build_client_config(&pki.ca_path, Some((&cert, &key)))
        .expect("client TLS config");
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_keep_alive(Duration::from_secs(30));
    support::v5_connect(o).await
}

/// The next PUBLISH on `topic` a v5 client receives.
async fn publish_on(c: &mut support::V5, topic: &str) -> p5::Publish {
    c.wait_for(|p| match p {
        Packet::Publish(p) if p.topic == topic.as_bytes() => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_cross_the_bridge_both_ways_with_the_response_topic_mapped() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = support::Mosquitto::start(dir.path(), &cloud_settings(&pki, dir.path(), false));
    let mut operator = cloud_v5(&pki, cloud.port, "operator").await;
    operator
        .subscribe("site/gw1/sensors/#", QoS::AtLeastOnce)
        .await;
    let gw_cert = pki.client("gw1");
    // The standard bridge: sensors/# out, cmd/# in, state/# both, prefix site/gw1/.
    let gw = Gateway::start(
        dir.path(),
        &gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{}", cloud.port)]),
    )
    .await;
    wait_state(&gw, "watch", |v| v["state"] == "connected").await;
    let mut local = support::v5(gw.addr("local"), "device").await;
    local.subscribe("cmd/#", QoS::AtLeastOnce).await;

    // Out: a request whose reply is to come back in on cmd/replies/dev1.
    let request = p5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("cmd/replies/dev1".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        ..Default::default()
    };
    local
        .client
        .publish_with_properties("sensors/req", QoS::AtLeastOnce, false, "{}", request)
        .await
        .expect("queued");
    let p = publish_on(&mut operator, "site/gw1/sensors/req").await;
    let got = p.properties.expect("properties crossed the bridge");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        got.response_topic.as_deref(),
        Some("site/gw1/cmd/replies/dev1"),
        "mapped through the cmd/# in rule"
    );
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string())
        ]
    );
    let expiry = got.message_expiry_interval.expect("expiry kept");
    assert!((3500..=3600).contains(&expiry), "remaining expiry {expiry}");

    // In: the reply, with its own response topic on the cloud's side of an out rule.
    let reply = p5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("text/plain".into()),
        response_topic: Some("site/gw1/sensors/more".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("x".into(), "y".into())],
        ..Default::default()
    };
    operator
        .client
        .publish_with_properties(
            "site/gw1/cmd/replies/dev1",
            QoS::AtLeastOnce,
            false,
            "ok",
            reply,
        )
        .await
        .expect("queued");
    let p = publish_on(&mut local, "cmd/replies/dev1").await;
    let got = p.properties.expect("properties came in");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.response_topic.as_deref(),
        Some("sensors/more"),
        "mapped through the sensors/# out rule"
    );
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(got.user_properties, [("x".to_string(), "y".to_string())]);
    let expiry = got.message_expiry_interval.expect("expiry kept");
    assert!((500..=600).contains(&expiry), "remaining expiry {expiry}");
    gw.stop().await;
    drop(cloud);
}

/// The topic alias of a PUBLISH, if any.
fn alias_of(p: &p5::Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|p| p.topic_alias)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_go_to_the_first_distinct_topics_and_reset_on_reconnect() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // Topic Alias Maximum 2; the first connection never acknowledges message "4".
    let (port, mut seen) = fake_cloud(
        &pki,
        |conn, p| !(conn == 1 && &p.payload[..] == b"4"),
        Announce {
            topic_alias_max: Some(2),
            ..Announce::default()
        },
    )
    .await;
    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(
        dir.path(),
        &flow_config(&pki, &gw_cert, port, "ack_timeout = \"1s\"", ""),
    )
    .await;
    wait_state(&gw, "watch-1", |v| v["state"] == "connected").await;
    let (local, _rx) = local_client(&gw, "device").await;
    for (i, t) in ["a", "b", "c", "a", "b", "c"].iter().enumerate() {
        local
            .publish(
                format!("sensors/{t}"),
                QoS::AtLeastOnce,
                false,
                (i + 1).to_string(),
            )
            .await
            .expect("queued");
    }
    // (payload, topic on the wire, alias): aliases 1 and 2 for the first two topics,
    // then the empty topic with the alias; the third topic always in full.
    let want: [(&str, &str, Option<u16>); 6] = [
        ("1", "site/gw1/sensors/a", Some(1)),
        ("2", "site/gw1/sensors/b", Some(2)),
        ("3", "site/gw1/sensors/c", None),
        ("4", "", Some(1)),
        ("5", "", Some(2)),
        ("6", "site/gw1/sensors/c", None),
    ];
    for (payload, topic, alias) in want {
        let (conn, _, p) = next_publish(&mut seen).await;
        assert_eq!(conn, 1);
        assert_eq!(
            (
                std::str::from_utf8(&p.payload).expect("utf-8"),
                std::str::from_utf8(&p.topic).expect("utf-8"),
                alias_of(&p)
            ),
            (payload, topic, alias)
        );
    }
    // "4" was not acknowledged: resent on the next connection, whose aliases start
    // afresh, so it sets alias 1 again with its full topic.
    let (conn, _, p) = next_publish(&mut seen).await;
    assert_eq!((conn, &p.payload[..], p.dup), (2, &b"4"[..], true));
    assert_eq!(
        (&p.topic[..], alias_of(&p)),
        (&b"site/gw1/sensors/a"[..], Some(1))
    );
    // The counters are published together but not atomically: wait for both.
    let state = wait_state(&gw, "watch-2", |v| {
        v["acked"] == 6 && v["queued_messages"] == 0
    })
    .await;
    assert_eq!(state["queued_messages"], 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_topic_aliases_mosquitto_delivers_every_message_on_its_topic() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud, _operator, mut up_rx) =
        cloud_with_operator(&pki, dir.path(), "max_topic_alias 2\n").await;
    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(dir.path(), &flow_config(&pki, &gw_cert, cloud.port, "", "")).await;
    wait_state(&gw, "watch", |v| v["state"] == "connected").await;
    let (local, _rx) = local_client(&gw, "device").await;
    let topics = ["a", "b", "c", "a", "b", "c", "a"];
    for (i, t) in topics.iter().enumerate() {
        local
            .publish(
                format!("sensors/{t}"),
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .expect("queued");
    }
    for (i, t) in topics.iter().enumerate() {
        let (topic, payload, _) = next(&mut up_rx).await;
        assert_eq!(
            (topic, payload),
            (format!("site/gw1/sensors/{t}"), i.to_string()),
            "message {i}"
        );
    }
    gw.stop().await;
    drop(cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_survive_a_restart_of_the_gateway() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _seen) = fake_cloud(&pki, |_, _| true, Announce::default()).await;
    let gw_cert = pki.client("gw1");
    let config = flow_config(&pki, &gw_cert, port, "", "");
    let gw = Gateway::start(dir.path(), &config).await;
    wait_state(&gw, "watch-1", |v| v["state"] == "connected").await;
    let (local, _rx) = local_client(&gw, "device").await;
    for i in 0..3 {
        local
            .publish("sensors/t", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    wait_state(&gw, "watch-2", |v| v["acked"] == 3).await;
    gw.stop().await;

    // Same data directory: the counters go on from where they were.
    let gw = Gateway::start(dir.path(), &config).await;
    let state = wait_state(&gw, "watch-3", |v| v["state"] == "connected").await;
    assert_eq!(
        (
            state["acked"].clone(),
            state["sent"].clone(),
            state["stored"].clone()
        ),
        (3.into(), 3.into(), 3.into())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_311_records_go_out_in_order_with_the_bridges_packet_ids() {
    if !support::require_peer("mosquitto") {
        return;
    }
    const N: usize = 250;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud, _operator, mut up_rx) = cloud_with_operator(&pki, dir.path(), "").await;
    let gw_cert = pki.client("gw1");
    // 3.1.1 upstream, a window of 10 (packet ids 1..=10 reused many times over).
    let config = flow_config(&pki, &gw_cert, cloud.port, "", "").replace(
        "protocol = \"5\"",
        "protocol = \"3.1.1\"\nmax_inflight = 10",
    );
    let gw = Gateway::start(dir.path(), &config).await;
    wait_state(&gw, "watch", |v| v["state"] == "connected").await;
    let (local, _rx) = local_client(&gw, "device").await;
    for i in 0..N {
        local
            .publish(
                format!("sensors/{}", i % 7),
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .expect("queued");
    }
    for i in 0..N {
        let (topic, payload, _) = next(&mut up_rx).await;
        assert_eq!(
            (topic, payload),
            (format!("site/gw1/sensors/{}", i % 7), i.to_string())
        );
    }
    let state = wait_state(&gw, "watch-2", |v| v["acked"] == N).await;
    assert_eq!(state["reconnects"], 0);
    gw.stop().await;
    drop(cloud);
}

/// A TCP relay on 127.0.0.1 in front of `target` that stops reading what the gateway
/// sends for `pause`, once, after the first `after` bytes of a connection (a cloud that
/// stops reading for a moment). Its receive buffer is small, so the gateway's socket
/// fills soon after.
async fn pausing_relay(target: u16, after: usize, pause: Duration) -> u16 {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // Set before listen(): accepted sockets inherit it (and their TCP window with it).
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("small receive buffer");
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(16).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    let listener =
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(socket)).expect("listener");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut from_gw, mut to_gw) = inbound.into_split();
            let (mut from_cloud, mut to_cloud) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_cloud, &mut to_gw).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut relayed = 0usize;
                let mut paused = false;
                loop {
                    let n = match from_gw.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_cloud.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    relayed += n;
                    if !paused && relayed >= after {
                        paused = true;
                        tokio::time::sleep(pause).await;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_that_stops_reading_for_a_moment_delays_but_stalls_nothing() {
    const N: usize = 200;
    const SIZE: usize = 100 * 1024;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud_port, mut seen) = fake_cloud(&pki, |_, _| true, Announce::default()).await;
    // 2 s without reading after the first MiB; the window (100 messages of 100 KiB) is
    // more than the sockets hold, so the bridge's writes wait on a full socket while
    // new messages keep arriving (each one a turn of the bridge's select!).
    let port = pausing_relay(cloud_port, 1 << 20, Duration::from_secs(2)).await;
    let gw_cert = pki.client("gw1");
    let gw = Gateway::start(
        dir.path(),
        &flow_config(&pki, &gw_cert, port, "ack_timeout = \"20s\"", ""),
    )
    .await;
    wait_state(&gw, "watch-1", |v| v["state"] == "connected").await;
    let (local, _rx) = local_client(&gw, "device").await;
    let publisher = tokio::spawn(async move {
        let padding = "x".repeat(SIZE - 6);
        for i in 0..N {
            local
                .publish(
                    "sensors/big",
                    QoS::AtLeastOnce,
                    false,
                    format!("{i:06}{padding}"),
                )
                .await
                .expect("queued");
            // Spread over the pause: stores (and bridge turns) go on while it lasts.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        local
    });
    let started = Instant::now();
    let mut next_seq = 0;
    while next_seq < N {
        let (conn, _, p) = next_publish(&mut seen).await;
        let seq: usize = std::str::from_utf8(&p.payload[..6])
            .expect("ascii")
            .parse()
            .expect("number");
        assert_eq!(
            conn, 1,
            "message {seq} went out on a new connection after {:?}: a PUBLISH was lost on a full socket and waited for ack_timeout (next expected {next_seq})",
            started.elapsed()
        );
        assert_eq!(seq, next_seq, "in order, each once");
        next_seq += 1;
    }
    let local = publisher.await.expect("publisher");
    // Trailing marker: nothing else (no resend) was on its way.
    local
        .publish("sensors/big", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queued");
    let (conn, _, p) = next_publish(&mut seen).await;
    assert_eq!((conn, &p.payload[..], p.dup), (1, &b"marker"[..], false));
    let state = wait_state(&gw, "watch-2", |v| v["acked"] == N + 1).await;
    assert_eq!(state["reconnects"], 0);
    println!(
        "{N} messages of {SIZE} B through a 2 s read pause in {:?}",
        started.elapsed()
    );
    gw.stop().await;
}
