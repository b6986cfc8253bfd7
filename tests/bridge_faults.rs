//! The bridge under faults, against the real cloud of tests/support/cloud.rs (Debian's
//! mosquitto over mTLS, `gw1` confined to `site/gw1/#`):
//!
//! - **abrupt loss**: `kill -9` of the `tollgate` binary leaves the retained will
//!   "offline" on the status topic; the restart says "online".
//! - **backoff**: with the cloud unreachable, two bridges' reconnect delays grow from
//!   `min`, stay within `[min, max]` with jitter, are really waited, and differ.
//! - **MQTT 3.1.1 uplink** forwarding both ways.
//! - **server_name**: a cloud certificate whose only name is `cloud.test`, reached at
//!   127.0.0.1, is refused (with the reason in the bridge state) until `server_name`
//!   says so; the ClientHello carries `server_name` as SNI whether the address is an IP
//!   address or another host name (without it: the host name, none for an IP address);
//!   **alpn**: the configured protocols are offered in the ClientHello.
//! - **journal damage** through the binary: a last segment truncated mid-record loses
//!   only that record, which the log reports; the rest arrives.
//! - **journal full**: `drop-oldest` keeps the newest (the dropped ones counted on
//!   `$SYS`); `block-publishers` withholds local PUBACKs until the cloud drains, and
//!   loses nothing.
//! - **disk full**: the journal on a 1 MiB tmpfs (a private mount namespace: `unshare
//!   --mount`, or `unshare --user --map-root-user --mount` without root): no
//!   acknowledged message is lost, publishers are held back, the log says why. Skipped
//!   (with the reason) where neither can mount.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use support::cloud::*;
use support::gateway::{tollgate_command, write_config, Gateway};
use support::net::free_port;
use support::peers::{require_peer, skip_unless_required, Mosquitto};
use support::pki::{issue, leaf_params, Pki};
use support::process::GatewayProcess;

/// The standard bridge gateway (support::cloud) listening on a fixed local port, for
/// the binary.
fn binary_config(dir: &Path, pki: &Pki, cloud_port: u16, local_port: u16, extra: &str) {
    let gw_cert = pki.client("gw1");
    let config = gateway_config(pki, &gw_cert, &[format!("127.0.0.1:{cloud_port}")]).replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{local_port}\""),
    );
    write_config(dir, &format!("sys_interval = \"0\"\n{config}{extra}"));
}

/// Publish `n` QoS 1 messages (`prefix-<i>`, `size` bytes at least) on `topic` to the
/// local listener at `addr`; returns the count of PUBACKs received so far (live).
async fn counting_publisher(
    port: u16,
    id: &str,
    topic: &str,
    n: usize,
    size: usize,
) -> Arc<AtomicUsize> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100);
    let acked = Arc::new(AtomicUsize::new(0));
    let count = acked.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p5::Packet::PubAck(_))) => {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let topic = topic.to_string();
    tokio::spawn(async move {
        for i in 0..n {
            let mut payload = format!("{i}:");
            let pad = size.saturating_sub(payload.len());
            payload.push_str(&"x".repeat(pad));
            if client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
        // Keep the client (and its connection) until the test ends.
        std::future::pending::<()>().await;
    });
    acked
}

fn seq_of(payload: &str) -> usize {
    payload
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("numbered payload, got {payload:.40}"))
}

/// Wait until `count` reaches `want`, failing loudly after `limit`.
async fn wait_count(what: &str, count: &AtomicUsize, want: usize, limit: Duration) {
    support::wait_until_within(what, limit, || count.load(Ordering::SeqCst) >= want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_will_offline_retained_and_a_restart_says_online() {
    if !require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Mosquitto::start(dir.path(), &cloud_settings(&pki, dir.path(), false));
    binary_config(dir.path(), &pki, cloud.port, free_port(), "");
    let (operator, mut up) = cloud_client(&pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/status").await;

    let mut gw = GatewayProcess::start(dir.path(), None, 1);
    assert_eq!(next_on(&mut up, "site/gw1/status").await.1, "online");
    gw.kill();
    let will = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(will.1, "offline", "the will after kill -9");

    // Retained: a client arriving now is told "offline".
    let (late, mut late_rx) = cloud_client(&pki, cloud.port, "late", true).await;
    subscribe(&late, "site/gw1/status").await;
    let retained = next_on(&mut late_rx, "site/gw1/status").await;
    assert_eq!((retained.1.as_str(), retained.2), ("offline", true));

    let _gw = GatewayProcess::start(dir.path(), None, 1);
    assert_eq!(next_on(&mut up, "site/gw1/status").await.1, "online");
    let now = next_on(&mut late_rx, "site/gw1/status").await;
    assert_eq!(now.1, "online");
}

/// Parse the `Bridge backing off.` debug lines of bridge `name`: their delays in ms.
fn delays(log: &str, name: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("Bridge backing off") && l.contains(&format!("bridge={name} ")))
        .filter_map(|l| {
            let rest = &l[l.find("delay_ms=")? + "delay_ms=".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// When bridge `name` failed to connect, in ms of the day, from the log's timestamps
/// (`2026-11-30T14:03:00.123456Z ...`).
fn attempts(log: &str, name: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| {
            l.contains("Bridge cannot connect to the cloud")
                && l.contains(&format!("bridge={name} "))
        })
        .map(|l| {
            let time = l.split_whitespace().next().expect("timestamp");
            let clock = &time[time.find('T').expect("RFC 3339") + 1..time.len() - 1];
            let mut parts = clock.split(':');
            let mut next = || -> f64 { parts.next().expect("h:m:s").parse().expect("number") };
            (next() * 3600.0 + next() * 60.0 + next()) * 1000.0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_delays_grow_with_jitter_within_min_and_max() {
    const ATTEMPTS: usize = 7;
    let log = support::logs::global("info,tollgate::bridge=debug");
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.client("gw1");
    let bridge = |name: &str| {
        format!(
            "[[bridge]]\nname = {name:?}\naddress = [\"127.0.0.1:{}\"]\nclient_id = {name:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nbackoff = {{ min = \"100ms\", max = \"800ms\", stable = \"5s\" }}\n",
            free_port(),
            pki.ca_path.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let config = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\n{}\n{}",
        bridge("jitter-a"),
        bridge("jitter-b")
    );
    let gw = Gateway::start(dir.path(), &config).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while ["jitter-a", "jitter-b"]
        .iter()
        .any(|name| attempts(&log.text(), name).len() <= ATTEMPTS)
    {
        assert!(Instant::now() < deadline, "attempts: {}", log.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = log.text();
    gw.stop().await;

    let (min, max) = (100u64, 800u64);
    let mut sequences = Vec::new();
    for name in ["jitter-a", "jitter-b"] {
        let d = delays(&text, name);
        assert!(d.len() >= ATTEMPTS, "{name}: {d:?}");
        let d = &d[..ATTEMPTS];
        for (k, &delay) in d.iter().enumerate() {
            // Ceiling min * 2^k up to max; the delay is uniform in [ceiling/2, ceiling].
            let ceiling = (min << k).min(max);
            let low = (ceiling / 2).max(min);
            assert!(
                (low..=ceiling).contains(&delay),
                "{name}: delay {k} = {delay} ms outside [{low}, {ceiling}]: {d:?}"
            );
        }
        assert!(d[ATTEMPTS - 1] > d[0], "{name}: delays did not grow: {d:?}");
        // Really waited: attempt k+1 was logged at least delay k after attempt k.
        let times = attempts(&text, name);
        for k in 0..ATTEMPTS - 1 {
            let gap = times[k + 1] - times[k];
            assert!(
                gap >= d[k] as f64,
                "{name}: attempt {} came {gap:.1} ms after the previous one, the delay was {} ms",
                k + 1,
                d[k]
            );
        }
        eprintln!("{name}: delays {d:?} ms");
        sequences.push(d.to_vec());
    }
    assert_ne!(
        sequences[0], sequences[1],
        "two bridges backing off in lockstep: no jitter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_311_uplink_forwards_both_ways() {
    if !require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Mosquitto::start(dir.path(), &cloud_settings(&pki, dir.path(), false));
    let gw_cert = pki.client("gw1");
    let config = gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{}", cloud.port)])
        .replace("protocol = \"5\"", "protocol = \"3.1.1\"");
    assert!(config.contains("protocol = \"3.1.1\""));
    let (operator, mut up) = cloud_client(&pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/#").await;
    let gw = Gateway::start(dir.path(), &config).await;
    assert_eq!(next_on(&mut up, "site/gw1/status").await.1, "online");
    wait_state(&gw, "w1", |v| v["state"] == "connected").await;

    let (local, mut down) = local_client(&gw, "device").await;
    subscribe(&local, "cmd/#").await;
    local
        .publish("sensors/v311", QoS::AtLeastOnce, false, "up")
        .await
        .expect("queued");
    assert_eq!(next_on(&mut up, "site/gw1/sensors/v311").await.1, "up");
    // The remote subscription was made right after the CONNACK; the local one now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    operator
        .publish("site/gw1/cmd/v311", QoS::AtLeastOnce, false, "down")
        .await
        .expect("queued");
    let m = next_on(&mut down, "cmd/v311").await;
    assert_eq!(m.1, "down");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_verifies_a_cloud_certificate_not_named_after_its_address() {
    if !require_peer("mosquitto") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut params = leaf_params("cloud.test");
    params.subject_alt_names = vec![rcgen::SanType::DnsName(
        "cloud.test".try_into().expect("ia5"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let (cert, key) = issue(dir.path(), "cloud-test", params, &pki.ca);
    let settings = cloud_settings(&pki, dir.path(), false)
        .replace(
            &pki.server.0.display().to_string(),
            &cert.display().to_string(),
        )
        .replace(
            &pki.server.1.display().to_string(),
            &key.display().to_string(),
        );
    let cloud = Mosquitto::start(dir.path(), &settings);
    let gw_cert = pki.client("gw1");
    let config = gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{}", cloud.port)]);
    let gw = Gateway::start(dir.path(), &config).await;
    let refused = wait_state(&gw, "w1", |v| {
        v["state"] == "backoff" && v["last_error"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    let error = refused["last_error"].as_str().expect("error").to_string();
    eprintln!("without server_name: {error}");
    assert!(
        error.contains("NotValidForName") || error.contains("not valid for name"),
        "the reason names the certificate's name mismatch: {error}"
    );

    let with_name = config.replace(
        "status_topic = \"site/gw1/status\"",
        "status_topic = \"site/gw1/status\"\nserver_name = \"cloud.test\"",
    );
    write_config(
        dir.path(),
        &format!("sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{with_name}"),
    );
    gw.reload.reload().await.expect("reload accepted");
    let (operator, mut up) = cloud_client_named(&pki, cloud.port).await;
    subscribe(&operator, "site/gw1/#").await;
    wait_state(&gw, "w2", |v| v["state"] == "connected").await;
    let (local, _down) = local_client(&gw, "device").await;
    local
        .publish("sensors/named", QoS::AtLeastOnce, false, "ok")
        .await
        .expect("queued");
    assert_eq!(next_on(&mut up, "site/gw1/sensors/named").await.1, "ok");
    gw.stop().await;
}

/// A cloud client that verifies the cloud's certificate as `cloud.test` (its only name).
async fn cloud_client_named(
    pki: &Pki,
    port: u16,
) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<Msg>) {
    let (cert, key) = pki.client("operator");
    // rumqttc verifies the certificate against the host it connects to (127.0.0.1); this
    // observer names cloud.test in its handshake instead, as the bridge does.
    let bridge: tollgate::bridge::BridgeConfig = toml::from_str(&format!(
        "name = \"observer\"\naddress = [\"127.0.0.1:{port}\"]\nclient_id = \"operator\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nserver_name = \"cloud.test\"\n",
        pki.ca_path.display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    ))
    .expect("observer config");
    let tls = tollgate::bridge::uplink::tls_config(&bridge).expect("observer TLS");
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tls_server_name(Some("cloud.test".into()));
    let mut o = MqttOptions::new("operator", "127.0.0.1", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_keep_alive(Duration::from_secs(30))
    .set_network_options(network);
    spawn_client(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_alpn_protocols_are_offered_to_the_cloud() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let gw_cert = pki.client("gw1");
    let config = gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{port}")]).replace(
        "status_topic = \"site/gw1/status\"",
        "status_topic = \"site/gw1/status\"\nalpn = [\"x-amzn-mqtt-ca\", \"mqtt\"]\nserver_name = \"cloud.test\"",
    );
    let gw = Gateway::start(dir.path(), &config).await;
    let (socket, _) = tokio::time::timeout(support::WAIT, listener.accept())
        .await
        .expect("the bridge connects")
        .expect("accept");
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), socket)
        .await
        .expect("a TLS ClientHello");
    let hello = start.client_hello();
    let alpn: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let sni = hello.server_name().map(str::to_string);
    eprintln!("ClientHello: alpn {alpn:?}, server name indication {sni:?}");
    assert_eq!(
        alpn,
        [b"x-amzn-mqtt-ca".to_vec(), b"mqtt".to_vec()],
        "offered ALPN protocols, in order"
    );
    drop(start);
    gw.stop().await;
}

/// The server name indication of the first ClientHello the bridge of a gateway sends
/// to `address` (the host part; the port is a listener of this test) with `server_name`.
async fn sni_sent(host: &str, server_name: Option<&str>) -> Option<String> {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let gw_cert = pki.client("gw1");
    let mut config = gateway_config(&pki, &gw_cert, &[format!("{host}:{port}")]);
    if let Some(name) = server_name {
        config = config.replace(
            "status_topic = \"site/gw1/status\"",
            &format!("status_topic = \"site/gw1/status\"\nserver_name = {name:?}"),
        );
    }
    let gw = Gateway::start(dir.path(), &config).await;
    let (socket, _) = tokio::time::timeout(support::WAIT, listener.accept())
        .await
        .expect("the bridge connects")
        .expect("accept");
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), socket)
        .await
        .expect("a TLS ClientHello");
    let sni = start.client_hello().server_name().map(str::to_string);
    drop(start);
    gw.stop().await;
    sni
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_is_sent_as_sni_whatever_the_address() {
    // An IP address carries no SNI of its own (RFC 6066): server_name is the only one.
    assert_eq!(
        sni_sent("127.0.0.1", Some("cloud.test")).await.as_deref(),
        Some("cloud.test"),
        "address 127.0.0.1 with server_name"
    );
    // A host name address is replaced by server_name.
    assert_eq!(
        sni_sent("localhost", Some("mqtt.cloud.test"))
            .await
            .as_deref(),
        Some("mqtt.cloud.test"),
        "address localhost with server_name"
    );
    // Without server_name: the address's host name, and none for an IP address.
    assert_eq!(
        sni_sent("localhost", None).await.as_deref(),
        Some("localhost"),
        "address localhost without server_name"
    );
    assert_eq!(
        sni_sent("127.0.0.1", None).await,
        None,
        "address 127.0.0.1 without server_name"
    );
}

/// The journal segments of bridge `cloud` under `dir` (the binary's data_dir "state").
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("state/bridge/cloud"))
        .expect("journal dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let first: u64 = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((first, p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_loses_only_the_damaged_record_and_says_so() {
    if !require_peer("mosquitto") {
        return;
    }
    const N: usize = 50;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud_port, local_port) = (free_port(), free_port());
    binary_config(dir.path(), &pki, cloud_port, local_port, "");

    let mut gw = GatewayProcess::start(dir.path(), None, 1);
    let acked = counting_publisher(local_port, "torn", "sensors/torn", N, 8).await;
    wait_count("every PUBACK with the cloud down", &acked, N, support::WAIT).await;
    assert_eq!(gw.terminate(), Some(0), "a clean stop");

    let last = segments(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&last).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .and_then(|f| f.set_len(len - 3))
        .expect("truncate the last segment mid-record");

    let cloud_dir = dir.path().join("cloud");
    std::fs::create_dir(&cloud_dir).expect("cloud dir");
    let _cloud = Mosquitto::start_on(
        &cloud_dir,
        cloud_port,
        &cloud_settings(&pki, &cloud_dir, false),
    );
    let (operator, mut up) = cloud_client(&pki, cloud_port, "operator", true).await;
    subscribe(&operator, "site/gw1/sensors/#").await;
    // The loss is logged right after the journal opens, which may be before or after
    // "tollgate is ready": wait for both, then find it in the whole log.
    let gw = GatewayProcess::start_until(
        dir.path(),
        &["tollgate is ready", "records lost to damage at open"],
    );
    let lost = gw
        .lines()
        .into_iter()
        .find(|l| l.contains("records lost to damage at open"))
        .expect("seen by start_until");
    assert!(lost.contains("records=1"), "{lost}");

    for i in 0..N - 1 {
        let (topic, payload, _) = next(&mut up).await;
        assert_eq!(
            (topic.as_str(), seq_of(&payload)),
            ("site/gw1/sensors/torn", i),
            "the intact records, in order"
        );
    }
    let marker = counting_publisher(local_port, "marker", "sensors/marker", 1, 0).await;
    wait_count("marker acknowledged", &marker, 1, support::WAIT).await;
    let (topic, _, _) = next(&mut up).await;
    assert_eq!(
        topic, "site/gw1/sensors/marker",
        "the damaged last record must not arrive"
    );
}

/// The standard gateway (in-process) with a 64 KiB journal and `overflow`.
fn small_journal(pki: &Pki, gw_cert: &(PathBuf, PathBuf), port: u16, overflow: &str) -> String {
    format!(
        "{}\n[bridge.journal]\nmax_bytes = 65536\noverflow = {overflow:?}\n",
        gateway_config(pki, gw_cert, &[format!("127.0.0.1:{port}")])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_and_counts_what_it_dropped() {
    if !require_peer("mosquitto") {
        return;
    }
    const N: usize = 300;
    // A persistent session on the cloud, made before the outage, receives everything.
    let PersistentCloud {
        pki,
        dir,
        settings,
        cloud,
        port,
        gw_cert,
        operator: _operator,
        mut up,
    } = persistent_cloud("site/gw1/sensors/#").await;
    cloud.terminate();
    let gw = Gateway::start(
        dir.path(),
        &small_journal(&pki, &gw_cert, port, "drop-oldest"),
    )
    .await;
    let local = gw.addr("local").port();
    let acked = counting_publisher(local, "dropper", "sensors/drop", N, 1000).await;
    wait_count(
        "every PUBACK (drop-oldest never blocks)",
        &acked,
        N,
        support::WAIT,
    )
    .await;
    let state = wait_state(&gw, "w1", |v| v["stored"] == N as u64).await;
    let queued = state["queued_messages"].as_u64().expect("counter") as usize;
    let dropped = state["dropped"]["overflow"].as_u64().expect("counter") as usize;
    eprintln!("drop-oldest: {queued} kept, {dropped} dropped of {N}");
    assert!(dropped > 0 && queued > 0, "{state}");
    assert_eq!(
        queued + dropped,
        N,
        "every message kept or counted: {state}"
    );

    let _cloud = Mosquitto::start_on(dir.path(), port, &settings);
    for want in N - queued..N {
        let (topic, payload, _) = next(&mut up).await;
        assert_eq!(
            (topic.as_str(), seq_of(&payload)),
            ("site/gw1/sensors/drop", want),
            "the newest {queued}, in order"
        );
    }
    let marker = counting_publisher(local, "marker", "sensors/marker", 1, 0).await;
    wait_count("marker acknowledged", &marker, 1, support::WAIT).await;
    let (topic, _, _) = next(&mut up).await;
    assert_eq!(
        topic, "site/gw1/sensors/marker",
        "nothing dropped came back"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_publishers_withholds_pubacks_until_the_cloud_drains_and_loses_nothing() {
    if !require_peer("mosquitto") {
        return;
    }
    const N: usize = 200;
    let PersistentCloud {
        pki,
        dir,
        settings,
        cloud,
        port,
        gw_cert,
        operator: _operator,
        mut up,
    } = persistent_cloud("site/gw1/sensors/#").await;
    cloud.terminate();
    let gw = Gateway::start(
        dir.path(),
        &small_journal(&pki, &gw_cert, port, "block-publishers"),
    )
    .await;
    let local = gw.addr("local").port();
    let acked = counting_publisher(local, "blocked", "sensors/block", N, 1000).await;
    let state = wait_state(&gw, "w1", |v| v["blocked"].as_u64() >= Some(1)).await;
    // The cloud is down: nothing can make room, so what is held stays held.
    let held = N - acked.load(Ordering::SeqCst);
    eprintln!(
        "block-publishers: {} stored, {held} PUBACKs withheld",
        state["queued_messages"]
    );
    assert!(
        held > 0,
        "PUBACKs withheld while the journal is full: {state}"
    );
    assert_eq!(state["dropped"]["overflow"], 0, "{state}");

    let _cloud = Mosquitto::start_on(dir.path(), port, &settings);
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(30), up.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {N} arrived", got.len()))
            .expect("client alive");
        if topic == "site/gw1/sensors/block" {
            got.push(seq_of(&payload));
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, in order, once");
    wait_count("every PUBACK once drained", &acked, N, support::WAIT).await;
    gw.stop().await;
}

/// A command that runs `tollgate` in a private mount namespace with a 1 MiB tmpfs on
/// `<dir>/state`, or `None` (with the reason) when this machine cannot do that.
fn on_small_tmpfs(dir: &Path) -> Result<Command, String> {
    let script = "mount -t tmpfs -o size=1m tmpfs state && exec \"$0\" \"$@\"";
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let flags: &[&str] = if is_root {
        &["--mount", "--propagation", "private"]
    } else {
        &["--user", "--map-root-user", "--mount"]
    };
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let probe = Command::new("unshare")
        .args(flags)
        .args(["sh", "-c", "mount -t tmpfs -o size=1m tmpfs state"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("unshare cannot run: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "cannot mount a tmpfs in a private mount namespace (unshare {flags:?}): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    if std::env::var_os("CROSS_TEST_RUNNER").is_some() {
        return Err("the binary runs under a cross runner".into());
    }
    let mut command = Command::new("unshare");
    command
        .args(flags)
        .args(["sh", "-c", script])
        .arg(tollgate_command().get_program());
    Ok(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_publishers_back_and_loses_no_acknowledged_message() {
    if !require_peer("mosquitto") {
        return;
    }
    const N: usize = 3000;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let command = match on_small_tmpfs(dir.path()) {
        Ok(c) => c,
        Err(reason) => {
            skip_unless_required(&reason);
            return;
        }
    };
    let (cloud_port, local_port) = (free_port(), free_port());
    // The operator's subscription lives in a persistent session of the cloud, made
    // before the gateway starts: what the bridge forwards in the moment between the
    // cloud's restart and the operator's reconnection is queued for it (no queue limit),
    // instead of being dropped by a cloud that has no subscriber yet.
    let cloud_dir = dir.path().join("cloud");
    std::fs::create_dir(&cloud_dir).expect("cloud dir");
    let cloud_conf = format!(
        "{}max_queued_messages 0\n",
        cloud_settings(&pki, &cloud_dir, true)
    );
    let cloud = Mosquitto::start_on(&cloud_dir, cloud_port, &cloud_conf);
    // Its event loop keeps reconnecting, with its session, while the cloud is down.
    let (operator, mut up) = cloud_client(&pki, cloud_port, "operator", false).await;
    subscribe(&operator, "site/gw1/sensors/#").await;
    cloud.terminate();
    // The journal may use 256 MiB; the disk has 1 MiB.
    binary_config(dir.path(), &pki, cloud_port, local_port, "");
    let gw = GatewayProcess::start_with(command, dir.path(), None, 1);
    let acked = counting_publisher(local_port, "filler", "sensors/full", N, 1000).await;
    let full = gw.wait_for_line("Journal append failed", Duration::from_secs(30));
    eprintln!("disk full: {full}");
    let held_at = acked.load(Ordering::SeqCst);
    assert!(held_at < N, "PUBACKs held back while the disk is full");

    let _cloud = Mosquitto::start_on(&cloud_dir, cloud_port, &cloud_conf);
    // Every message the gateway acknowledged (and, as it drains, the rest) arrives.
    wait_count(
        "every PUBACK once the cloud drains the journal",
        &acked,
        N,
        Duration::from_secs(120),
    )
    .await;
    let mut got = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got.len() < N {
        match tokio::time::timeout_at(deadline, up.recv()).await {
            Ok(Some((_, payload, _))) => {
                got.insert(seq_of(&payload));
            }
            _ => {
                let missing: Vec<usize> = (0..N).filter(|i| !got.contains(i)).take(20).collect();
                panic!(
                    "{} of {N} arrived; first missing {missing:?}; log: {:#?}",
                    got.len(),
                    gw.lines()
                );
            }
        }
    }
    eprintln!("disk full: {held_at} acknowledged when the disk filled; all {N} delivered");
}
