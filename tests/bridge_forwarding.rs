//! The cloud bridge against a real cloud: Debian's mosquitto with
//! `require_certificate true`, `use_identity_as_username true` and an ACL confining
//! the gateway's certificate identity (`gw1`) to `site/gw1/#`; a tollgate gateway with
//! a `[[bridge]]` over mTLS (PKI made at test time with rcgen). Proves forwarding with
//! prefix mapping both ways, the local ACL on ingress, no loop through a `both` rule,
//! the status topic (birth "online", "offline" at shutdown), failover to the second
//! address, and QoS 1 delivery in order after a cloud outage.
//!
//! The outbox is the on-disk journal (`src/bridge/journal_outbox.rs`); its survival of a
//! `kill -9` of tollgate is tested in `tests/bridge_crash.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use support::gateway::Gateway;
use support::peers::{require_peer, Mosquitto};
use support::pki::Pki;
use support::wait::WAIT;

/// A message seen by a test client: topic, payload, retain.
type Msg = (String, String, bool);

/// The cloud: mosquitto over mTLS, identities from certificate CNs, `gw1` confined.
fn cloud_settings(pki: &Pki, dir: &Path, persistence: bool) -> String {
    let acl = dir.join("cloud.acl");
    std::fs::write(
        &acl,
        "user gw1\ntopic readwrite site/gw1/#\n\nuser operator\ntopic readwrite #\n",
    )
    .expect("write cloud acl");
    // `user root`: run as root (CI), mosquitto would drop to its own user, which cannot
    // read the test's 0600 key in a 0700 directory; as any other user it changes nothing.
    let mut s = format!(
        "user root\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nacl_file {}\n",
        pki.ca_path.display(),
        pki.server.0.display(),
        pki.server.1.display(),
        acl.display()
    );
    if persistence {
        s.push_str(&format!(
            "persistence true\npersistence_location {}/\n",
            dir.display()
        ));
    }
    s
}

/// A client of the cloud (certificate CN `operator`) receiving on `channel`.
async fn cloud_client(
    pki: &Pki,
    port: u16,
    id: &str,
    clean: bool,
) -> (AsyncClient, mpsc::UnboundedReceiver<Msg>) {
    let (cert, key) = pki.client("operator");
    let tls = tollgate::tls::build_client_config(&pki.ca_path, Some((&cert, &key)))
        .expect("client TLS config");
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_keep_alive(Duration::from_secs(30))
    .set_clean_start(clean);
    if !clean {
        o.set_session_expiry_interval(Some(3600));
    }
    spawn_client(o).await
}

/// A plain client of the gateway's local listener.
async fn local_client(gw: &Gateway, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Msg>) {
    let addr = gw.addr("local");
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    spawn_client(o).await
}

/// Start a client whose event loop keeps reconnecting; messages arrive on the channel.
/// Returns once the first CONNACK arrived.
async fn spawn_client(o: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Msg>) {
    let (client, mut events) = AsyncClient::new(o, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let mut up_tx = Some(up_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p5::Packet::ConnAck(_))) => {
                    if let Some(t) = up_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(p5::Packet::Publish(p))) => {
                    let msg = (
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                        p.retain,
                    );
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(WAIT, up_rx)
        .await
        .expect("client connected within the limit")
        .expect("client task alive");
    (client, rx)
}

async fn subscribe(client: &AsyncClient, filter: &str) {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message within the limit")
        .expect("client alive")
}

/// The next message on `topic`, skipping others.
async fn next_on(rx: &mut mpsc::UnboundedReceiver<Msg>, topic: &str) -> Msg {
    loop {
        let m = next(rx).await;
        if m.0 == topic {
            return m;
        }
    }
}

/// Gateway configuration: a local TCP listener, inline ACL rules, and the bridge.
fn gateway_config(pki: &Pki, gw_cert: &(PathBuf, PathBuf), addresses: &[String]) -> String {
    let addresses = addresses
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r##"[[listener]]
name = "local"
bind = "127.0.0.1:0"
transport = "tcp"
allow_anonymous = true

# Local clients (anonymous) may do anything outside $SYS and read the bridge state.
[[acl.rule]]
access = "readwrite"
topic = "#"
[[acl.rule]]
access = "read"
topic = "$SYS/tollgate/bridge/#"
# The bridge identity: what it may send out (read) and bring in (write).
[[acl.rule]]
user = "bridge:cloud"
access = "read"
topic = "sensors/#"
[[acl.rule]]
user = "bridge:cloud"
access = "readwrite"
topic = "state/#"
[[acl.rule]]
user = "bridge:cloud"
access = "write"
topic = "cmd/#"

[[bridge]]
name = "cloud"
address = [{addresses}]
protocol = "5"
client_id = "gw1"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
backoff = {{ min = "200ms", max = "1s", stable = "5s" }}
status_topic = "site/gw1/status"

[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "cmd/#"
direction = "in"
qos = 1
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "secret/#"
direction = "in"
qos = 1
remote_prefix = "site/gw1/"

[[bridge.topic]]
pattern = "state/#"
direction = "both"
qos = 1
remote_prefix = "site/gw1/"
"##,
        ca = pki.ca_path.display().to_string(),
        cert = gw_cert.0.display().to_string(),
        key = gw_cert.1.display().to_string(),
    )
}

/// Wait until the bridge's retained `$SYS` state satisfies `want`.
async fn wait_state(
    gw: &Gateway,
    id: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let (c, mut rx) = local_client(gw, id).await;
    subscribe(&c, "$SYS/tollgate/bridge/cloud/state").await;
    loop {
        let (_, payload, _) = next(&mut rx).await;
        let v: serde_json::Value = serde_json::from_str(&payload).expect("state is JSON");
        if want(&v) {
            let _ = c.disconnect().await;
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_both_ways_through_the_second_address_with_the_acl_and_no_loop() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Mosquitto::start(dir.path(), &cloud_settings(&pki, dir.path(), false));
    let gw_cert = pki.client("gw1");
    // The first address refuses connections: the bridge must fail over to the second.
    let dead = format!("127.0.0.1:{}", support::net::free_port());
    let live = format!("127.0.0.1:{}", cloud.port);

    let (operator, mut up) = cloud_client(&pki, cloud.port, "operator", true).await;
    subscribe(&operator, "site/gw1/#").await;
    let gw = Gateway::start(
        dir.path(),
        &gateway_config(&pki, &gw_cert, &[dead, live.clone()]),
    )
    .await;

    let status = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(status.1, "online", "birth message on the status topic");
    let state = wait_state(&gw, "state-watch", |v| v["state"] == "connected").await;
    assert_eq!(
        state["address"],
        live.as_str(),
        "connected through the second address"
    );

    // Out, with the prefix mapping.
    let (local, mut down) = local_client(&gw, "device").await;
    local
        .publish("sensors/t1/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("queued");
    let m = next_on(&mut up, "site/gw1/sensors/t1/temp").await;
    assert_eq!(m.1, "21.5");

    // In: the local ACL keeps secret/# out (bridge:cloud may not write it), cmd/# passes.
    subscribe(&local, "cmd/#").await;
    subscribe(&local, "secret/#").await;
    subscribe(&local, "state/#").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    operator
        .publish("site/gw1/secret/key", QoS::AtLeastOnce, false, "no")
        .await
        .expect("queued");
    operator
        .publish("site/gw1/cmd/reboot", QoS::AtLeastOnce, false, "now")
        .await
        .expect("queued");
    let m = next(&mut down).await;
    assert_eq!(
        (m.0.as_str(), m.1.as_str()),
        ("cmd/reboot", "now"),
        "the denied secret/key came first, or did not come"
    );
    let state = wait_state(&gw, "state-watch-2", |v| {
        v["dropped"]["ingress_denied"] == 1
    })
    .await;
    assert_eq!(state["received"], 1);

    // No loop: state/x comes in through the `both` rule and does not go back out.
    operator
        .publish("site/gw1/state/x", QoS::AtLeastOnce, false, "from-cloud")
        .await
        .expect("queued");
    let m = next(&mut down).await;
    assert_eq!((m.0.as_str(), m.1.as_str()), ("state/x", "from-cloud"));
    local
        .publish("sensors/marker", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queued");
    // The cloud subscriber sees its own state/x once, then the marker: no echo between.
    next_on(&mut up, "site/gw1/state/x").await;
    let after = next(&mut up).await;
    assert_eq!(
        (after.0.as_str(), after.1.as_str()),
        ("site/gw1/sensors/marker", "marker"),
        "state/x was re-exported by the bridge that brought it in"
    );

    // Shutdown says offline (and the cloud keeps it retained).
    gw.stop().await;
    let status = next_on(&mut up, "site/gw1/status").await;
    assert_eq!(status.1, "offline");
    drop(cloud);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_published_during_a_cloud_outage_arrive_in_order_after_recovery() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    const N: usize = 300;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = cloud_settings(&pki, dir.path(), true);
    let cloud = Mosquitto::start(dir.path(), &settings);
    let port = cloud.port;
    let gw_cert = pki.client("gw1");
    // A persistent cloud session: what arrives while this subscriber reconnects is kept.
    let (operator, mut up) = cloud_client(&pki, port, "operator", false).await;
    subscribe(&operator, "site/gw1/sensors/#").await;
    let gw = Gateway::start(
        dir.path(),
        &gateway_config(&pki, &gw_cert, &[format!("127.0.0.1:{port}")]),
    )
    .await;
    wait_state(&gw, "state-watch", |v| v["state"] == "connected").await;

    cloud.terminate();
    wait_state(&gw, "state-watch-2", |v| v["state"] != "connected").await;
    let (local, _down) = local_client(&gw, "device").await;
    for i in 0..N {
        local
            .publish("sensors/seq", QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queued");
    }
    // Every message is acknowledged locally (stored in the outbox) while the cloud is down.
    let state = wait_state(&gw, "state-watch-3", |v| v["queued_messages"] == N as u64).await;
    assert_ne!(state["state"], "connected");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _cloud = Mosquitto::start_on(dir.path(), port, &settings);
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let (topic, payload, _) = tokio::time::timeout(Duration::from_secs(30), up.recv())
            .await
            .expect("messages after recovery")
            .expect("client alive");
        if topic == "site/gw1/sensors/seq" {
            got.push(payload.parse::<usize>().expect("number"));
        }
    }
    let want: Vec<usize> = (0..N).collect();
    assert_eq!(got, want, "all delivered, in order, none duplicated");
    let state = wait_state(&gw, "state-watch-4", |v| v["queued_messages"] == 0).await;
    assert!(state["reconnects"].as_u64().expect("counter") >= 1);
    assert!(state["acked"].as_u64().expect("counter") >= N as u64);
    gw.stop().await;
}
