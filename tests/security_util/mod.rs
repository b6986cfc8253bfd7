//! Shared by the `security_*` tests: a PKI made with `tollgate::pki` (and rcgen for
//! certificates the PKI refuses to make: expired, not yet valid, foreign CA), a
//! gateway started in-process with `App::build` on 127.0.0.1:0, rumqttc v3.1.1 and v5
//! clients over TLS with reason codes exposed, and mosquitto_pub/sub/passwd peers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::{mpsc, oneshot};

use tollgate::app::{App, AppError, ReloadHandle};
use tollgate::config::{load_with_env, ConfigSource};
use tollgate::pki::{self, KeyAlgorithm, RevokeReason};

// One test-support module: the wait limit and the marker come from tests/common
// (its broker and client helpers stay unused here).
#[path = "../common/mod.rs"]
mod common;
pub use common::{MARKER, WAIT};

/// A PKI directory made with `tollgate::pki` as an operator would with `tollgate pki`.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        let dir = dir.join("pki");
        pki::init_ca(&dir, "test CA", 30, KeyAlgorithm::EcdsaP256, false).expect("init CA");
        let server = pki::issue_server(
            &dir,
            "server",
            &["localhost".to_string()],
            &["127.0.0.1".parse().expect("ip")],
            30,
            KeyAlgorithm::EcdsaP256,
            false,
        )
        .expect("server certificate");
        TestPki {
            ca: dir.join(pki::CA_CERT),
            server_cert: server.cert,
            server_key: server.key,
            dir,
        }
    }

    /// A device certificate with CN = `name`: (cert, key).
    pub fn device(&self, name: &str) -> (PathBuf, PathBuf) {
        let issued = pki::issue_device(&self.dir, name, 30, KeyAlgorithm::EcdsaP256, false)
            .expect("device certificate");
        (issued.cert, issued.key)
    }

    /// Revoke `name` and write `ca.crl`; returns the CRL path.
    pub fn revoke(&self, name: &str) -> PathBuf {
        pki::revoke(&self.dir, name, RevokeReason::KeyCompromise).expect("revoke");
        pki::write_crl(&self.dir, 7).expect("crl")
    }

    /// An (empty) CRL, so a listener can name one from the start.
    pub fn crl(&self) -> PathBuf {
        pki::write_crl(&self.dir, 7).expect("crl")
    }

    /// A client certificate signed by this CA with the given validity window (rcgen,
    /// because `tollgate pki` never issues expired or future certificates).
    pub fn device_valid_between(
        &self,
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(self.dir.join(pki::CA_KEY)).expect("read ca key"),
        )
        .expect("ca key");
        let ca_params = rcgen::CertificateParams::from_ca_cert_pem(
            &std::fs::read_to_string(&self.ca).expect("read ca"),
        )
        .expect("ca params");
        let ca = ca_params.self_signed(&ca_key).expect("ca object");
        signed_leaf(&self.dir, name, not_before, not_after, &ca, &ca_key)
    }
}

/// A device certificate from a CA nobody configured.
pub fn foreign_device(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else's CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let ca = params.self_signed(&key).expect("ca");
    let now = time::OffsetDateTime::now_utc();
    signed_leaf(
        dir,
        name,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        &ca,
        &key,
    )
}

fn signed_leaf(
    dir: &Path,
    name: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}-cn.crt")),
        dir.join(format!("{stem}-cn.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    write_private(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A password file written by the real `mosquitto_passwd` (`$7$` lines).
pub fn mosquitto_passwd_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&path)
            .arg(user)
            .arg(password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_passwd runs (install mosquitto)");
        assert!(status.success(), "mosquitto_passwd failed for {user}");
    }
    let text = std::fs::read_to_string(&path).expect("read passwd");
    assert!(
        text.contains(":$7$"),
        "mosquitto_passwd wrote $7$ lines: {text}"
    );
    path
}

/// `[auth]` lines for tests: no throttling delay (tests fail passwords on purpose from
/// 127.0.0.1) and no success cache (so every check really verifies).
pub fn auth_section(passwd: &Path) -> String {
    format!(
        "[auth]\npassword_file = {:?}\nthrottle_base = \"0\"\nthrottle_max = \"0\"\ncache_ttl = \"0\"\n",
        passwd.display().to_string()
    )
}

/// A TLS listener named `devices` on 127.0.0.1:0 with this PKI's server certificate.
pub fn tls_listener(pki: &TestPki, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\ncert = {:?}\nkey = {:?}\n{extra}\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    )
}

/// A running in-process gateway.
pub struct Gateway {
    pub dir: PathBuf,
    pub config: PathBuf,
    addrs: Vec<(String, SocketAddr)>,
    pub reload: ReloadHandle,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), AppError>>>,
}

impl Gateway {
    /// Write `body` (plus a `[broker]` data_dir inside `dir`) to `dir/tollgate.toml` and start it.
    pub async fn start(dir: &Path, body: &str) -> Gateway {
        let config = dir.join("tollgate.toml");
        std::fs::write(
            &config,
            format!("[broker]\ndata_dir = \"state\"\nsys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{body}"),
        )
        .expect("write config");
        let loaded = load_with_env(&ConfigSource::File(config.clone()), &Default::default())
            .unwrap_or_else(|e| panic!("config accepted: {e}"));
        let app = App::build(loaded).await.expect("gateway builds");
        let addrs = ["local", "devices", "plain"]
            .iter()
            .filter_map(|n| app.local_addr(n).map(|a| (n.to_string(), a)))
            .collect();
        let reload = app.reload_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Gateway {
            dir: dir.to_path_buf(),
            config,
            addrs,
            reload,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("listener {name} exists"))
    }

    pub fn port(&self, name: &str) -> String {
        self.addr(name).port().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(WAIT, done)
                .await
                .expect("gateway stops within the limit")
                .expect("gateway task")
                .expect("gateway ran cleanly");
        }
    }
}

/// How a client reaches the gateway.
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
}

impl Dial {
    pub fn tcp(addr: SocketAddr) -> Dial {
        Dial {
            addr,
            tls: None,
            credentials: None,
        }
    }

    /// TLS trusting `ca`, presenting `cert` when given.
    pub fn tls(addr: SocketAddr, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Dial {
        let config =
            tollgate::tls::build_client_config(ca, cert.map(|(c, k)| (c.as_path(), k.as_path())))
                .expect("client TLS config");
        Dial {
            addr,
            tls: Some(config),
            credentials: None,
        }
    }

    pub fn login(mut self, user: &str, password: &str) -> Dial {
        self.credentials = Some((user.to_string(), password.to_string()));
        self
    }

    fn transport(&self) -> Option<rumqttc::Transport> {
        self.tls
            .clone()
            .map(|c| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(c)))
    }
}

/// A rumqttc v5 client whose event loop runs in the background.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    /// Deliveries that arrived while waiting for something else.
    inbox: Vec<(String, String)>,
}

/// rumqttc reports a refused CONNECT as `ConnectionRefused(code)`: keep the code's name.
fn refusal(e: String) -> String {
    e.strip_prefix("ConnectionRefused(")
        .and_then(|r| r.strip_suffix(')'))
        .map(str::to_string)
        .unwrap_or(e)
}

/// Connect with MQTT v5; `Err` carries the refusal or failure (Debug text of rumqttc's error).
pub async fn v5(dial: &Dial, id: &str) -> Result<V5, String> {
    let mut o = rumqttc::v5::MqttOptions::new(id, dial.addr.ip().to_string(), dial.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(t) = dial.transport() {
        o.set_transport(t);
    }
    if let Some((u, p)) = &dial.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = el.poll().await.map_err(|e| format!("{e:?}"));
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                break;
            }
        }
    });
    let mut c = V5 {
        client,
        events,
        inbox: Vec::new(),
    };
    loop {
        match c.next().await.map_err(refusal)? {
            rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(ack)) => {
                return match ack.code {
                    p5::ConnectReturnCode::Success => Ok(c),
                    code => Err(format!("{code:?}")),
                };
            }
            _ => continue,
        }
    }
}

impl V5 {
    async fn next(&mut self) -> Result<rumqttc::v5::Event, String> {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Err(_) => panic!("no MQTT event within {WAIT:?}"),
            Ok(None) => Err("event loop ended".to_string()),
            Ok(Some(ev)) => ev,
        }
    }

    async fn wait_for<T>(&mut self, mut f: impl FnMut(&p5::Packet) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                    if let p5::Packet::Publish(m) = p {
                        self.inbox.push((
                            String::from_utf8_lossy(&m.topic).into_owned(),
                            String::from_utf8_lossy(&m.payload).into_owned(),
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    /// SUBSCRIBE one filter at QoS 1; the SUBACK reason code.
    pub async fn subscribe(&mut self, filter: &str) -> p5::SubscribeReasonCode {
        self.client
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let ack = self
            .wait_for(|p| match p {
                p5::Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        ack.return_codes[0]
    }

    /// PUBLISH at QoS 1; the PUBACK reason code.
    pub async fn publish(&mut self, topic: &str, payload: &str) -> p5::PubAckReason {
        self.client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .expect("publish queued");
        self.wait_for(|p| match p {
            p5::Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
    }

    /// The next delivered message (topic, payload).
    pub async fn message(&mut self) -> (String, String) {
        if !self.inbox.is_empty() {
            return self.inbox.remove(0);
        }
        let p = self
            .wait_for(|p| match p {
                p5::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await;
        (
            String::from_utf8_lossy(&p.topic).into_owned(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        )
    }

    /// Every message delivered before the marker (payload [`MARKER`]) on
    /// `marker_topic`, in order. The test publishes the marker after the messages in
    /// question (same connection, or after their PUBACK); a closed connection or no
    /// marker within `WAIT` fails the test.
    pub async fn messages_before_marker(&mut self, marker_topic: &str) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let m = self.message().await;
            if m.0 == marker_topic && m.1 == MARKER {
                return got;
            }
            got.push(m);
        }
    }

    /// Wait until the server ends the connection; the DISCONNECT reason or error text.
    pub async fn closed(&mut self) -> String {
        loop {
            match self.next().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Disconnect(d))) => {
                    return format!("{:?}", d.reason_code)
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }
}

/// A rumqttc v3.1.1 client whose event loop runs in the background.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    /// Deliveries that arrived while waiting for something else.
    inbox: Vec<(String, String)>,
}

/// Connect with MQTT 3.1.1; `Err` carries the refusal (Debug text of rumqttc's error).
pub async fn v4(dial: &Dial, id: &str) -> Result<V4, String> {
    let mut o = rumqttc::MqttOptions::new(id, dial.addr.ip().to_string(), dial.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(t) = dial.transport() {
        o.set_transport(t);
    }
    if let Some((u, p)) = &dial.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = el.poll().await.map_err(|e| format!("{e:?}"));
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                break;
            }
        }
    });
    let mut c = V4 {
        client,
        events,
        inbox: Vec::new(),
    };
    loop {
        match c.next().await.map_err(refusal)? {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => {
                return match ack.code {
                    rumqttc::ConnectReturnCode::Success => Ok(c),
                    code => Err(format!("{code:?}")),
                };
            }
            _ => continue,
        }
    }
}

impl V4 {
    async fn next(&mut self) -> Result<rumqttc::Event, String> {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Err(_) => panic!("no MQTT event within {WAIT:?}"),
            Ok(None) => Err("event loop ended".to_string()),
            Ok(Some(ev)) => ev,
        }
    }

    async fn wait_for<T>(&mut self, mut f: impl FnMut(&rumqttc::Packet) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                    if let rumqttc::Packet::Publish(m) = p {
                        self.inbox.push((
                            m.topic.clone(),
                            String::from_utf8_lossy(&m.payload).into_owned(),
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    /// SUBSCRIBE one filter at QoS 1; the SUBACK return code.
    pub async fn subscribe(&mut self, filter: &str) -> rumqttc::SubscribeReasonCode {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let ack = self
            .wait_for(|p| match p {
                rumqttc::Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await;
        ack.return_codes[0]
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK (3.1.1 PUBACKs carry no reason).
    pub async fn publish(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish queued");
        self.wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
    }

    /// The next delivered message (topic, payload).
    pub async fn message(&mut self) -> (String, String) {
        if !self.inbox.is_empty() {
            return self.inbox.remove(0);
        }
        let p = self
            .wait_for(|p| match p {
                rumqttc::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await;
        (p.topic, String::from_utf8_lossy(&p.payload).into_owned())
    }

    /// Every message delivered before the marker on `marker_topic`; see
    /// [`V5::messages_before_marker`].
    pub async fn messages_before_marker(&mut self, marker_topic: &str) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let m = self.message().await;
            if m.0 == marker_topic && m.1 == MARKER {
                return got;
            }
            got.push(m);
        }
    }
}

/// Run `mosquitto_pub` with `args`; whether it exited 0.
pub fn mosquitto_pub(args: &[&str]) -> bool {
    Command::new("mosquitto_pub")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub runs (install mosquitto-clients)")
        .success()
}

/// `mosquitto_sub -C count -W seconds` with `args`: (exit success, stdout lines).
pub fn mosquitto_sub(args: &[&str], count: usize) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(args)
        .args(["-C", &count.to_string(), "-W", "10", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (install mosquitto-clients)")
}

/// Wait for a `mosquitto_sub` child: (exit success, stdout, stderr).
pub fn finish(child: std::process::Child) -> (bool, String, String) {
    let out = child.wait_with_output().expect("mosquitto_sub output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
