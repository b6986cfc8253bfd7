//! Shared test support: start a broker on 127.0.0.1:0 with a plain TCP accept loop,
//! rumqttc v3.1.1/v5 clients whose events can be awaited, raw-socket helpers, absence
//! proven by a trailing marker (never by a quiet window), waits that fail loudly, the
//! `tollgate` binary, and external peers that may be skipped only without
//! `TOLLGATE_REQUIRE_PEERS=1`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use rumqttc::v5::mqttbytes::v5 as p5;
use tollgate::acl::{AllowAll, Authorizer};
use tollgate::auth::{AnonymousOnly, Authenticator};
use tollgate::broker::{
    Broker, BrokerSettings, ConnectionInfo, Delivery, InternalClient, ListenerContext,
};

/// Generous limit for awaiting events (2 shared cores under a parallel test run);
/// tests normally finish far sooner, and only a failing test waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running broker for one test.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Broker,
    pub shutdown: CancellationToken,
}

impl TestBroker {
    /// Cancel and wait until every connection task and the router are done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.broker.drained())
            .await
            .expect("broker drains within the limit");
    }
}

/// Settings that make tests fast: short `$SYS` interval off, defaults otherwise.
pub fn test_settings() -> BrokerSettings {
    BrokerSettings {
        sys_interval: Duration::ZERO,
        ..BrokerSettings::default()
    }
}

pub async fn start_broker() -> TestBroker {
    start_broker_with(test_settings()).await
}

pub async fn start_broker_with(settings: BrokerSettings) -> TestBroker {
    start_broker_full(settings, Arc::new(AnonymousOnly), Arc::new(AllowAll)).await
}

/// The listener every test broker accepts on (anonymous and passwords allowed).
pub fn test_listener() -> ListenerContext {
    ListenerContext {
        name: Arc::from("test"),
        allow_anonymous: true,
        password_auth: true,
        ..Default::default()
    }
}

pub async fn start_broker_full(
    settings: BrokerSettings,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
) -> TestBroker {
    start_broker_on(settings, authenticator, authorizer, test_listener()).await
}

pub async fn start_broker_on(
    settings: BrokerSettings,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    context: ListenerContext,
) -> TestBroker {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let connect_timeout = settings.connect_timeout;
    let broker = Broker::start(settings, authenticator, authorizer, shutdown.clone());
    let context = Arc::new(context);
    let accept_broker = broker.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let info = ConnectionInfo {
                        peer,
                        listener: context.clone(),
                        certificate_identity: None,
                        peer_certificates: None,
                        connect_deadline: tokio::time::Instant::now() + connect_timeout,
                    };
                    let b = accept_broker.clone();
                    tokio::spawn(async move { b.serve(stream, info).await });
                }
            }
        }
    });
    TestBroker {
        addr,
        broker,
        shutdown,
    }
}

/// What a client event loop reported.
#[derive(Debug)]
pub enum Ev<E> {
    Event(E),
    Error(String),
}

/// A rumqttc v3.1.1 client with its event loop running in the background.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Ev<rumqttc::Event>>,
}

pub fn v4_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connect and wait for the CONNACK; returns the client and `session_present`.
pub async fn v4_connect(options: rumqttc::MqttOptions) -> (V4, bool) {
    let (client, mut el) = rumqttc::AsyncClient::new(options, 100);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ev::Event(ev)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Ev::Error(e.to_string()));
                    break;
                }
            }
        }
    });
    let mut c = V4 { client, events };
    let present = c.connack().await;
    (c, present)
}

pub async fn v4(addr: SocketAddr, id: &str) -> V4 {
    v4_connect(v4_options(addr, id)).await.0
}

impl V4 {
    async fn connack(&mut self) -> bool {
        loop {
            match self.next().await {
                Ev::Event(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    assert_eq!(c.code, rumqttc::ConnectReturnCode::Success);
                    return c.session_present;
                }
                Ev::Event(_) => {}
                Ev::Error(e) => panic!("connect failed: {e}"),
            }
        }
    }

    pub async fn next(&mut self) -> Ev<rumqttc::Event> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("event within the limit")
            .expect("event loop alive")
    }

    /// Wait for the next incoming packet matching `f`.
    pub async fn wait_for<T>(&mut self, mut f: impl FnMut(&rumqttc::Packet) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ev::Event(rumqttc::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                }
                Ev::Event(_) => {}
                Ev::Error(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    pub async fn publish(&mut self) -> rumqttc::Publish {
        self.wait_for(|p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> rumqttc::SubAck {
        self.wait_for(|p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        self.suback().await;
    }

    /// Wait for the connection to end; returns the error text.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Ev::Error(e) = self.next().await {
                return e;
            }
        }
    }

    /// Prove that no PUBLISH reached this client before a trailing marker: `publisher`
    /// publishes the marker on `marker_topic` (which this client must be subscribed to),
    /// and the marker must be the next PUBLISH to arrive. Any other publish, a
    /// connection error or a closed event loop fails the test.
    ///
    /// The marker is ordered after the forbidden message only if both went through the
    /// router in that order: send it from the same connection, or after the forbidden
    /// message's PUBACK.
    pub async fn assert_nothing_before_marker(
        &mut self,
        publisher: &impl MarkerPublisher,
        marker_topic: &str,
    ) {
        publisher.publish_marker(marker_topic).await;
        self.expect_marker(marker_topic).await;
    }

    /// The next PUBLISH must be the marker on `marker_topic` (sent by someone else).
    pub async fn expect_marker(&mut self, marker_topic: &str) {
        let p = self.publish().await;
        assert!(
            p.topic == marker_topic && p.payload == MARKER,
            "unexpected publish on {} ({:?}) before the marker on {marker_topic}",
            p.topic,
            p.payload
        );
    }
}

/// A rumqttc v5 client with its event loop running in the background.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Ev<rumqttc::v5::Event>>,
    pub connack: Option<p5::ConnAck>,
}

pub fn v5_options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub async fn v5_connect(options: rumqttc::v5::MqttOptions) -> V5 {
    let (client, mut el) = rumqttc::v5::AsyncClient::new(options, 100);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ev::Event(ev)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Ev::Error(format!("{e:?}")));
                    break;
                }
            }
        }
    });
    let mut c = V5 {
        client,
        events,
        connack: None,
    };
    let ack = c
        .wait_for(|p| match p {
            p5::Packet::ConnAck(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    c.connack = Some(ack);
    c
}

pub async fn v5(addr: SocketAddr, id: &str) -> V5 {
    v5_connect(v5_options(addr, id)).await
}

impl V5 {
    pub async fn next(&mut self) -> Ev<rumqttc::v5::Event> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("event within the limit")
            .expect("event loop alive")
    }

    pub async fn wait_for<T>(&mut self, mut f: impl FnMut(&p5::Packet) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ev::Event(rumqttc::v5::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                }
                Ev::Event(_) => {}
                Ev::Error(e) => panic!("connection failed while waiting: {e}"),
            }
        }
    }

    pub async fn publish(&mut self) -> p5::Publish {
        self.wait_for(|p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> p5::SubAck {
        self.wait_for(|p| match p {
            p5::Packet::SubAck(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> p5::SubAck {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        self.suback().await
    }

    /// Wait for the server's DISCONNECT (or the connection error if none came).
    /// rumqttc reports a server DISCONNECT as an error carrying the reason code.
    pub async fn disconnect_reason(&mut self) -> String {
        loop {
            match self.next().await {
                Ev::Event(rumqttc::v5::Event::Incoming(p5::Packet::Disconnect(d))) => {
                    return format!("{:?}", d.reason_code)
                }
                Ev::Event(_) => {}
                Ev::Error(e) => return e,
            }
        }
    }

    /// Prove that no PUBLISH reached this client before a trailing marker; see
    /// [`V4::assert_nothing_before_marker`].
    pub async fn assert_nothing_before_marker(
        &mut self,
        publisher: &impl MarkerPublisher,
        marker_topic: &str,
    ) {
        publisher.publish_marker(marker_topic).await;
        self.expect_marker(marker_topic).await;
    }

    /// The next PUBLISH must be the marker on `marker_topic` (sent by someone else).
    pub async fn expect_marker(&mut self, marker_topic: &str) {
        let p = self.publish().await;
        assert!(
            p.topic == marker_topic.as_bytes() && p.payload == MARKER,
            "unexpected publish on {:?} ({:?}) before the marker on {marker_topic}",
            p.topic,
            p.payload
        );
    }
}

/// Payload of the trailing marker message that proves nothing arrived before it.
pub const MARKER: &str = "marker";

/// A client that can publish the trailing marker (QoS 1, not retained).
pub trait MarkerPublisher {
    fn publish_marker(&self, topic: &str) -> impl std::future::Future<Output = ()>;
}

impl MarkerPublisher for rumqttc::AsyncClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(topic, rumqttc::QoS::AtLeastOnce, false, MARKER)
            .await
            .expect("marker queued");
    }
}

impl MarkerPublisher for rumqttc::v5::AsyncClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            MARKER,
        )
        .await
        .expect("marker queued");
    }
}

impl MarkerPublisher for InternalClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(
            topic,
            MARKER,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
        )
        .await
        .expect("marker published");
    }
}

/// The next delivery to an in-process client, failing when none comes within `WAIT`
/// or the client was detached.
pub async fn internal_recv(client: &mut InternalClient) -> Delivery {
    tokio::time::timeout(WAIT, client.recv())
        .await
        .expect("delivery within the limit")
        .expect("in-process client still attached")
}

/// The next delivery to an in-process client must be the marker on `marker_topic`.
pub async fn internal_expect_marker(client: &mut InternalClient, marker_topic: &str) {
    let d = internal_recv(client).await;
    assert!(
        d.topic == marker_topic && d.payload == MARKER,
        "unexpected delivery on {} ({:?}) before the marker on {marker_topic}",
        d.topic,
        d.payload
    );
}

/// Poll `condition` until it holds; fails loudly after `WAIT` naming `what`.
pub async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, WAIT, condition).await;
}

/// [`wait_until`] with an explicit limit, for bulk work (an upper bound that only a
/// broken broker reaches, never a performance assertion).
pub async fn wait_until_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A v5 CONNECT with the given identity, session and will.
pub fn v5_connect_packet(
    id: &str,
    user: Option<&str>,
    clean: bool,
    expiry: u32,
    will: Option<p5::LastWill>,
) -> p5::Packet {
    let connect = p5::Connect {
        keep_alive: 30,
        client_id: id.into(),
        clean_start: clean,
        properties: Some(p5::ConnectProperties {
            session_expiry_interval: Some(expiry),
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    p5::Packet::Connect(
        connect,
        will,
        user.map(|u| p5::Login {
            username: u.into(),
            password: "x".into(),
        }),
    )
}

pub async fn raw_v5(
    addr: SocketAddr,
    id: &str,
    user: Option<&str>,
    clean: bool,
    expiry: u32,
    will: Option<p5::LastWill>,
) -> (Raw, p5::ConnAck) {
    let mut raw = Raw::open(addr).await;
    raw.send(&v5_connect_packet(id, user, clean, expiry, will))
        .await;
    match raw.read().await {
        Some(p5::Packet::ConnAck(c)) => (raw, c),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

pub fn v5_publish(
    topic: &str,
    qos: rumqttc::v5::mqttbytes::QoS,
    pkid: u16,
    payload: &'static str,
) -> p5::Packet {
    let mut p = p5::Publish::new(topic, qos, Bytes::from_static(payload.as_bytes()), None);
    p.pkid = pkid;
    p5::Packet::Publish(p)
}

pub fn v5_subscribe(filter: &str, pkid: u16) -> p5::Packet {
    let mut s = p5::Subscribe::new(
        p5::Filter::new(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    );
    s.pkid = pkid;
    p5::Packet::Subscribe(s)
}

/// Read packets until one matches `f`.
pub async fn raw_wait<T>(raw: &mut Raw, mut f: impl FnMut(&p5::Packet) -> Option<T>) -> T {
    loop {
        match raw.read().await {
            Some(p) => {
                if let Some(t) = f(&p) {
                    return t;
                }
            }
            None => panic!("connection closed while waiting"),
        }
    }
}

/// Raw socket peer speaking MQTT v5 packets (for bad-input tests).
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    /// Open and complete a v5 CONNECT with a clean start.
    pub async fn connect_v5(addr: SocketAddr, id: &str) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(&p5::Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: id.to_string(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ))
        .await;
        match raw.read().await {
            Some(p5::Packet::ConnAck(c)) => assert_eq!(c.code, p5::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    pub async fn send(&mut self, packet: &p5::Packet) {
        let mut b = BytesMut::new();
        packet.write(&mut b, None).expect("encodable test packet");
        self.send_bytes(&b).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Next v5 packet, or `None` when the broker closed the connection.
    pub async fn read(&mut self) -> Option<p5::Packet> {
        loop {
            match p5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("broker sent a malformed packet: {e}"),
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("broker answers or closes within the limit")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Read raw bytes until the broker closes; returns everything read.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("broker closes within the limit")
                .unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether a test that needs the external program `peer` (mosquitto, mosquitto_pub,
/// openssl, socat, ...) can run: `false` means skip (after printing why), but with
/// `TOLLGATE_REQUIRE_PEERS=1` (set by scripts/test-all.sh) a missing peer fails the test.
pub fn require_peer(peer: &str) -> bool {
    if peer_installed(peer) {
        return true;
    }
    skip_unless_required(&format!("`{peer}` is not installed (or not in PATH)"))
}

/// Whether `program` is an executable in PATH (Debian's `mosquitto` is in /usr/sbin,
/// which scripts/test-all.sh adds).
pub fn peer_installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .any(|f| {
            f.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Skip a test whose precondition is missing (returns `false` after printing
/// `reason`), or fail it when `TOLLGATE_REQUIRE_PEERS=1` says CI provides everything.
pub fn skip_unless_required(reason: &str) -> bool {
    if std::env::var("TOLLGATE_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{reason}; TOLLGATE_REQUIRE_PEERS=1 forbids skipping this test");
    }
    eprintln!("SKIPPED: {reason} (set TOLLGATE_REQUIRE_PEERS=1 to make this a failure)");
    false
}

/// Run the `tollgate` binary as an operator would, in `dir` (also its HOME), without
/// RUST_LOG.
pub fn tollgate(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    tollgate_env(args, dir, &[])
}

/// The `tollgate` binary as a command; under qemu-user without binfmt_misc a foreign
/// binary cannot be exec'd directly, so it runs through `CROSS_TEST_RUNNER`, which
/// scripts/cross-test.sh sets to the runner cargo uses.
pub fn tollgate_command() -> std::process::Command {
    let runner = std::env::var("CROSS_TEST_RUNNER").unwrap_or_default();
    let mut runner = runner.split_whitespace();
    match runner.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(runner).arg(env!("CARGO_BIN_EXE_tollgate"));
            command
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")),
    }
}

/// [`tollgate`] with extra environment variables.
pub fn tollgate_env(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    tollgate_command()
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run the tollgate binary")
}

/// A TCP port that was free a moment ago (for child processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("local addr")
        .port()
}
