//! MQTT over WebSocket listeners (`transport = "ws" | "wss"`), over real sockets with two
//! independent clients: MQTT.js under node (installed by scripts/test-all.sh into
//! target/node-mqtt; `TOLLGATE_NODE_MQTT` points elsewhere) and a raw WebSocket client
//! (tokio-tungstenite framing MQTT bytes encoded by rumqttc's codec), which also sends
//! what well-behaved clients never do: packets split over frames, several packets in one
//! frame, oversized frames, stalled upgrades, wrong subprotocols, paths and origins.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use support::pki::TestPki;
use support::{dial, gateway::*, peers::*, wait::*};

const ACL: &str = "user alice
topic readwrite site/#

user bob
topic read site/#
topic write site/bob/#
";

const USERS: &[(&str, &str)] = &[("alice", "alice-pw"), ("bob", "bob-pw")];

/// A gateway with a `ws` listener ("web", allowed origin https://dash.example.com), a
/// `wss` listener ("webs") and a `tls` listener ("devices"), passwords and the ACL above.
async fn gateway(dir: &Path, broker: &str) -> (Gateway, TestPki) {
    let pki = TestPki::new(dir);
    let passwd = mosquitto_passwd_file(dir, USERS);
    std::fs::write(dir.join("acl"), ACL).expect("acl");
    let cert = pki.server_cert.display().to_string();
    let key = pki.server_key.display().to_string();
    let body = format!(
        "sys_interval = \"0\"\n{broker}[shutdown]\ngrace_period = \"2s\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntransport = \"ws\"\n\
         allowed_origins = [\"https://dash.example.com\"]\n\
         [[listener]]\nname = \"webs\"\nbind = \"127.0.0.1:0\"\ntransport = \"wss\"\npath = \"/mqtt/v1\"\n\
         cert = {cert:?}\nkey = {key:?}\n\
         {}{}[acl]\nfile = \"acl\"\n",
        tls_listener(&pki, ""),
        auth_section(&passwd)
    );
    (Gateway::build(&write_config(dir, &body)).await, pki)
}

/// A raw MQTT v5 client over a WebSocket: packets encoded by rumqttc, framed as we choose.
struct WsRaw<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// The client side of an upgrade to `url`, with these extra headers.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<S>, WsError> {
    let mut request = url.into_client_request().expect("request");
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        request
            .headers_mut()
            .append(name, v.parse().expect("header value"));
    }
    let config = WebSocketConfig::default().max_message_size(None);
    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map(|(ws, _)| ws)
}

const MQTT: (&str, &str) = ("Sec-WebSocket-Protocol", "mqtt");

async fn ws_open(addr: SocketAddr, path: &str) -> WsRaw<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let ws = upgrade(tcp, &format!("ws://{addr}{path}"), &[MQTT])
        .await
        .expect("upgrade");
    WsRaw {
        ws,
        buf: BytesMut::new(),
    }
}

async fn wss_open(addr: SocketAddr, ca: &Path, path: &str) -> WsRaw<Tls> {
    let config = tollgate::tls::build_client_config(ca, None).expect("client TLS config");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let ws = upgrade(
        tls,
        &format!("wss://localhost:{}{path}", addr.port()),
        &[MQTT],
    )
    .await
    .expect("upgrade");
    WsRaw {
        ws,
        buf: BytesMut::new(),
    }
}

fn encode(packet: &p5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    packet.write(&mut b, None).expect("encodable test packet");
    b.to_vec()
}

fn connect(id: &str, user: &str, password: &str) -> p5::Packet {
    p5::Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: true,
            properties: None,
        },
        None,
        Some(p5::Login {
            username: user.into(),
            password: password.into(),
        }),
    )
}

fn publish(topic: &str, pkid: u16, payload: &str) -> p5::Packet {
    let mut p = p5::Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec(), None);
    p.pkid = pkid;
    p5::Packet::Publish(p)
}

fn subscribe(filter: &str, pkid: u16) -> p5::Packet {
    let mut s = p5::Subscribe::new(p5::Filter::new(filter, QoS::AtLeastOnce), None);
    s.pkid = pkid;
    p5::Packet::Subscribe(s)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsRaw<S> {
    /// Send these bytes as one binary message each.
    async fn send_messages(&mut self, messages: Vec<Vec<u8>>) {
        for m in messages {
            self.ws.send(Message::binary(m)).await.expect("send");
        }
    }

    async fn send(&mut self, packet: &p5::Packet) {
        self.send_messages(vec![encode(packet)]).await;
    }

    /// The next packet, or `None` once the broker closed the connection.
    async fn read(&mut self) -> Option<p5::Packet> {
        loop {
            match p5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("broker sent a malformed packet: {e}"),
            }
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("broker answers or closes within the limit");
            match next {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(other)) => panic!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    async fn expect(&mut self, what: &str) -> p5::Packet {
        self.read()
            .await
            .unwrap_or_else(|| panic!("connection closed while waiting for {what}"))
    }

    async fn login(&mut self, id: &str, user: &str, password: &str) {
        self.send(&connect(id, user, password)).await;
        match self.expect("CONNACK").await {
            p5::Packet::ConnAck(c) => assert_eq!(c.code, p5::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet that is not a PUBLISH (those are acknowledged and dropped).
    async fn answer(&mut self, what: &str) -> p5::Packet {
        loop {
            match self.expect(what).await {
                p5::Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(&p5::Packet::PubAck(p5::PubAck::new(p.pkid, None)))
                            .await;
                    }
                }
                other => return other,
            }
        }
    }

    async fn suback(&mut self) -> p5::SubscribeReasonCode {
        match self.answer("SUBACK").await {
            p5::Packet::SubAck(s) => s.return_codes[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn puback(&mut self) -> p5::PubAck {
        match self.answer("PUBACK").await {
            p5::Packet::PubAck(a) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// The (topic, payload) of every PUBLISH up to and including one on `marker`.
    async fn messages_until(&mut self, marker: &str) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        loop {
            if let p5::Packet::Publish(p) = self.expect("a PUBLISH").await {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                seen.push((
                    topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
                if p.qos == QoS::AtLeastOnce {
                    self.send(&p5::Packet::PubAck(p5::PubAck::new(p.pkid, None)))
                        .await;
                }
                if topic == marker {
                    return seen;
                }
            }
        }
    }
}

/// Where MQTT.js is installed (scripts/test-all.sh), or `None` (the test is skipped
/// unless peers are required).
fn mqttjs() -> Option<PathBuf> {
    let dir = std::env::var("TOLLGATE_NODE_MQTT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node-mqtt"));
    if !require_peer("node") {
        return None;
    }
    if !dir.join("node_modules/mqtt/package.json").is_file() {
        skip_unless_required(&format!(
            "MQTT.js is not installed in {} (scripts/test-all.sh installs it)",
            dir.display()
        ));
        return None;
    }
    Some(dir)
}

/// MQTT.js subscribes to `site/#`, publishes `site/from-js` after its SUBACK and exits
/// after `site/done`; the raw client sees the publish, then sends `site/to-js` and the
/// marker; each side's received messages are asserted.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    modules: &Path,
    url: &str,
    ca: Option<&Path>,
    mut raw: WsRaw<S>,
    protocol_version: u8,
) {
    raw.login(&format!("raw-{protocol_version}"), "alice", "alice-pw")
        .await;
    raw.send(&subscribe("site/#", 1)).await;
    assert_eq!(
        raw.suback().await,
        p5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let spec = serde_json::json!({
        "url": url,
        "username": "alice",
        "password": "alice-pw",
        "ca": ca.map(|c| c.display().to_string()),
        "protocolVersion": protocol_version,
        "subscribe": ["site/#"],
        "publish": [{"topic": "site/from-js", "payload": "hello from MQTT.js"}],
        "until": "site/done",
    });
    let mut node = tokio::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mqttjs_client.js"))
        .arg(spec.to_string())
        .env("TOLLGATE_NODE_MQTT", modules)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut events = Vec::new();

    // MQTT.js's publish reaches the raw client (and MQTT.js itself: it subscribed).
    let got = raw.messages_until("site/from-js").await;
    assert_eq!(
        got,
        [("site/from-js".to_string(), "hello from MQTT.js".to_string())]
    );
    raw.send(&publish("site/to-js", 2, "hello from the raw client"))
        .await;
    assert_eq!(raw.puback().await.reason, p5::PubAckReason::Success);
    raw.send(&publish("site/done", 3, "marker")).await;
    assert_eq!(raw.puback().await.reason, p5::PubAckReason::Success);

    let status = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read node output") {
            events.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON line"));
        }
        node.wait().await.expect("node exits")
    })
    .await
    .unwrap_or_else(|_| panic!("MQTT.js did not finish within {WAIT:?}: {events:?}"));
    assert!(status.success(), "MQTT.js failed: {events:?}");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds[..2], ["connect", "suback"], "{events:?}");
    assert_eq!(events[1]["granted"], serde_json::json!([1]), "{events:?}");
    let messages: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or(""),
                e["payload"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            ("site/from-js", "hello from MQTT.js"),
            ("site/to-js", "hello from the raw client"),
            ("site/done", "marker"),
        ],
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "puback" && e["error"].is_null()),
        "MQTT.js's QoS 1 publish acknowledged: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_and_a_raw_client_exchange_messages_over_ws() {
    let Some(modules) = mqttjs() else { return };
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki) = gateway(dir.path(), "").await;
    let addr = gw.addr("web");
    let raw = ws_open(addr, "/mqtt").await;
    exchange(&modules, &format!("ws://{addr}/mqtt"), None, raw, 4).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_v5_and_a_raw_client_exchange_messages_over_wss() {
    let Some(modules) = mqttjs() else { return };
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = gateway(dir.path(), "").await;
    let addr = gw.addr("webs");
    let raw = wss_open(addr, &pki.ca, "/mqtt/v1").await;
    let url = format!("wss://localhost:{}/mqtt/v1", addr.port());
    exchange(&modules, &url, Some(&pki.ca), raw, 5).await;
    gw.stop().await;
}

/// The HTTP status of a refused upgrade.
async fn refused_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    match upgrade(tcp, &format!("ws://{addr}{path}"), headers).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Ok(_) => panic!("upgrade of {path} with {headers:?} was accepted"),
        Err(e) => panic!("upgrade of {path} with {headers:?} failed without an answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_refuses_other_subprotocols_paths_and_origins() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki) = gateway(dir.path(), "").await;
    let addr = gw.addr("web");
    let protocol = |p| ("Sec-WebSocket-Protocol", p);
    assert_eq!(refused_with(addr, "/mqtt", &[protocol("chat")]).await, 400);
    assert_eq!(refused_with(addr, "/mqtt", &[]).await, 400);
    assert_eq!(refused_with(addr, "/other", &[MQTT]).await, 404);
    assert_eq!(refused_with(addr, "/mqtt/v1", &[MQTT]).await, 404);
    let evil = ("Origin", "https://evil.example.com");
    assert_eq!(refused_with(addr, "/mqtt", &[MQTT, evil]).await, 403);

    // Admitted: the listed origin, an old mqttv3.1 client, and each still speaks MQTT.
    for headers in [
        &[MQTT, ("Origin", "https://dash.example.com")][..],
        &[protocol("mqttv3.1")][..],
    ] {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut raw = WsRaw {
            ws: upgrade(tcp, &format!("ws://{addr}/mqtt"), headers)
                .await
                .unwrap_or_else(|e| panic!("{headers:?} admitted: {e}")),
            buf: BytesMut::new(),
        };
        raw.login("admitted", "alice", "alice-pw").await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_split_over_frames_and_packed_into_one_frame_are_read() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki) = gateway(dir.path(), "").await;
    let addr = gw.addr("web");
    let mut watcher = ws_open(addr, "/mqtt").await;
    watcher.login("watcher", "alice", "alice-pw").await;
    watcher.send(&subscribe("site/#", 1)).await;
    watcher.suback().await;

    let mut raw = ws_open(addr, "/mqtt").await;
    // CONNECT one byte per WebSocket message.
    let bytes = encode(&connect("split", "alice", "alice-pw"));
    raw.send_messages(bytes.iter().map(|b| vec![*b]).collect())
        .await;
    match raw.expect("CONNACK").await {
        p5::Packet::ConnAck(c) => assert_eq!(c.code, p5::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Three PUBLISHes in one message, and a fourth split across two messages in the
    // middle of its topic.
    let mut packed = Vec::new();
    for (i, topic) in ["site/a", "site/b", "site/c"].into_iter().enumerate() {
        packed.extend(encode(&publish(topic, i as u16 + 1, topic)));
    }
    let fourth = encode(&publish("site/done", 4, "marker"));
    packed.extend_from_slice(&fourth[..6]);
    raw.send_messages(vec![packed, fourth[6..].to_vec()]).await;
    for pkid in 1..=4 {
        let ack = raw.puback().await;
        assert_eq!((ack.pkid, ack.reason), (pkid, p5::PubAckReason::Success));
    }
    let got = watcher.messages_until("site/done").await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["site/a", "site/b", "site/c", "site/done"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_packet_size_closes_the_connection() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki) = gateway(dir.path(), "max_packet_size = 1024\n").await;
    let addr = gw.addr("web");
    let mut raw = ws_open(addr, "/mqtt").await;
    raw.login("big", "alice", "alice-pw").await;
    // Each PUBLISH is far below max_packet_size, so only the frame bound can refuse it.
    let small = |pkid: u16| encode(&publish("site/x", pkid, &"p".repeat(90)));
    let fits: Vec<u8> = (1..=9).flat_map(small).collect();
    assert!(fits.len() <= 1024, "{}", fits.len());
    raw.send_messages(vec![fits]).await;
    for _ in 1..=9 {
        assert_eq!(raw.puback().await.reason, p5::PubAckReason::Success);
    }
    let too_big: Vec<u8> = (10..=21).flat_map(small).collect();
    assert!(too_big.len() > 1024, "{}", too_big.len());
    raw.send_messages(vec![too_big]).await;
    let after = raw.read().await;
    assert!(
        after.is_none(),
        "the broker closes instead of reading an oversized frame: got {after:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_deadline_covers_a_stalled_upgrade() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _pki) = gateway(dir.path(), "connect_timeout = \"1s\"\n").await;
    for path in ["/mqtt", "/mqtt/v1"] {
        let listener = if path == "/mqtt" { "web" } else { "webs" };
        let mut tcp = TcpStream::connect(gw.addr(listener))
            .await
            .expect("connect");
        if listener == "web" {
            // Half a request, then silence.
            tcp.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "{listener}: the stalled upgrade is closed by the connect deadline"
        );
        assert!(rest.is_empty(), "{listener}: no answer to half a request");
    }
    // The TLS listener behind the same deadline for comparison: a WSS client that completes
    // TLS and then stalls before the HTTP request is closed too.
    let pki_ca = dir.path().join("pki").join(tollgate::pki::CA_CERT);
    let config = tollgate::tls::build_client_config(&pki_ca, None).expect("client TLS config");
    let tcp = TcpStream::connect(gw.addr("webs")).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "wss: a stalled upgrade after TLS is closed");
    assert!(rest.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_applies_on_wss_as_on_tls() {
    if !require_peer("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = gateway(dir.path(), "").await;
    let mut over_tls = dial::v5(
        &dial::Dial::tls(gw.addr("devices"), &pki.ca, None).login("bob", "bob-pw"),
        "bob-tls",
    )
    .await
    .expect("bob over TLS");
    let mut over_wss = wss_open(gw.addr("webs"), &pki.ca, "/mqtt/v1").await;
    over_wss.login("bob-wss", "bob", "bob-pw").await;
    let mut pkid = 0;
    for topic in ["site/bob/x", "site/alice/x", "other/x"] {
        let tls = over_tls.publish(topic, "x").await;
        pkid += 1;
        over_wss.send(&publish(topic, pkid, "x")).await;
        let wss = over_wss.puback().await.reason;
        assert_eq!(wss, tls, "publish {topic}: wss and tls decide alike");
    }
    for filter in ["site/#", "#", "other/#"] {
        let tls = over_tls.subscribe(filter).await;
        pkid += 1;
        over_wss.send(&subscribe(filter, pkid)).await;
        let wss = over_wss.suback().await;
        assert_eq!(wss, tls, "subscribe {filter}: wss and tls decide alike");
    }
    // And the decisions are the ACL's, not a blanket yes or no.
    assert_eq!(
        over_tls.publish("site/alice/x", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    assert_eq!(
        over_tls.publish("site/bob/x", "x").await,
        p5::PubAckReason::Success
    );
    gw.stop().await;
}

fn check(body: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), body);
    match tollgate::config::load_with_env(
        &tollgate::config::ConfigSource::File(path),
        &Default::default(),
    ) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    }
}

#[test]
fn check_names_the_key_of_each_websocket_mistake() {
    let listener = |transport: &str, bind: &str, extra: &str| {
        format!("[[listener]]\nname = \"w\"\nbind = {bind:?}\ntransport = {transport:?}\nallow_anonymous = true\n{extra}")
    };
    assert!(check(&listener("ws", "127.0.0.1:0", "")).is_empty());
    let problems = check(&listener("ws", "0.0.0.0:9001", ""));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("listener[0].bind") && p.contains("plain ws")),
        "{problems:?}"
    );
    assert!(check(&listener(
        "ws",
        "0.0.0.0:9001",
        "allow_non_loopback = true\n"
    ))
    .is_empty());
    let problems = check(&listener("tcp", "127.0.0.1:0", "path = \"/mqtt\"\n"));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("listener[0].path") && p.contains("\"ws\" or \"wss\"")),
        "{problems:?}"
    );
    let problems = check(&listener(
        "ws",
        "127.0.0.1:0",
        "path = \"mqtt\"\nallowed_origins = [\"https://a.example\", \"a.example/\"]\n",
    ));
    assert!(
        problems.iter().any(|p| p.contains("listener[0].path")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("listener[0].allowed_origins[1]")),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains("allowed_origins[0]")),
        "{problems:?}"
    );
    let problems = check(&listener("ws", "127.0.0.1:0", "cert = \"x.crt\"\n"));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("listener[0].cert") && p.contains("\"wss\"")),
        "{problems:?}"
    );
}
