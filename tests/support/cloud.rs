//! The cloud bridge's test peers: Debian's mosquitto as the "cloud" over mTLS
//! (`require_certificate true`, `use_identity_as_username true`, an ACL confining the
//! gateway's certificate identity `gw1` to `site/gw1/#`), rumqttc v5 clients of the
//! cloud and of the gateway whose messages arrive on a channel, the standard bridge
//! gateway configuration, and a wait on the bridge's retained `$SYS` state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use super::gateway::Gateway;
use super::pki::Pki;
use super::wait::WAIT;

/// A message seen by a test client: topic, payload, retain.
pub type Msg = (String, String, bool);

/// The cloud: mosquitto over mTLS, identities from certificate CNs, `gw1` confined.
pub fn cloud_settings(pki: &Pki, dir: &Path, persistence: bool) -> String {
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
pub async fn cloud_client(
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
pub async fn local_client(gw: &Gateway, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Msg>) {
    let addr = gw.addr("local");
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    spawn_client(o).await
}

/// Start a client whose event loop keeps reconnecting; messages arrive on the channel.
/// Returns once the first CONNACK arrived.
pub async fn spawn_client(o: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Msg>) {
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

pub async fn subscribe(client: &AsyncClient, filter: &str) {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
}

pub async fn next(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message within the limit")
        .expect("client alive")
}

/// The next message on `topic`, skipping others.
pub async fn next_on(rx: &mut mpsc::UnboundedReceiver<Msg>, topic: &str) -> Msg {
    loop {
        let m = next(rx).await;
        if m.0 == topic {
            return m;
        }
    }
}

/// Gateway configuration: a local TCP listener, inline ACL rules, and the bridge.
pub fn gateway_config(pki: &Pki, gw_cert: &(PathBuf, PathBuf), addresses: &[String]) -> String {
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
pub async fn wait_state(
    gw: &Gateway,
    id: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let (c, mut rx) = local_client(gw, id).await;
    subscribe(&c, "$SYS/tollgate/bridge/cloud/state").await;
    // The state changes every second while messages wait (their age): bound the whole
    // wait, not only each message.
    let deadline = tokio::time::Instant::now() + 6 * WAIT;
    let mut last = String::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge state never satisfied the condition; last: {last}"
        );
        let (_, payload, _) = next(&mut rx).await;
        last.clone_from(&payload);
        let v: serde_json::Value = serde_json::from_str(&payload).expect("state is JSON");
        if want(&v) {
            let _ = c.disconnect().await;
            return v;
        }
    }
}

/// A cloud with persistence and an operator holding a persistent session subscribed to
/// `filter` (so what arrives while the cloud is down and back is kept for it), the
/// gateway's certificate, and what restarting the cloud on the same port needs.
pub struct PersistentCloud {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub settings: String,
    pub cloud: super::peers::Mosquitto,
    pub port: u16,
    pub gw_cert: (PathBuf, PathBuf),
    pub operator: AsyncClient,
    pub up: mpsc::UnboundedReceiver<Msg>,
}

/// Start a [`PersistentCloud`] whose operator subscribes to `filter`.
pub async fn persistent_cloud(filter: &str) -> PersistentCloud {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = cloud_settings(&pki, dir.path(), true);
    let cloud = super::peers::Mosquitto::start(dir.path(), &settings);
    let port = cloud.port;
    let gw_cert = pki.client("gw1");
    let (operator, up) = cloud_client(&pki, port, "operator", false).await;
    subscribe(&operator, filter).await;
    PersistentCloud {
        pki,
        dir,
        settings,
        cloud,
        port,
        gw_cert,
        operator,
        up,
    }
}
