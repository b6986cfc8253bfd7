//! rumqttc v3.1.1/v5 clients of the in-process broker whose events can be awaited, and
//! a raw socket speaking MQTT v5 packets (for bad-input tests).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use rumqttc::v5::mqttbytes::v5 as p5;

use super::wait::{assert_is_marker, MarkerPublisher, MARKER, WAIT};

/// A rumqttc event loop (v3.1.1 or v5) that can be polled in the background.
pub trait EventLoop: Send + 'static {
    type Event: Send + 'static;
    type Error: std::fmt::Debug + std::fmt::Display;
    fn poll_event(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send;
}

impl EventLoop for rumqttc::EventLoop {
    type Event = rumqttc::Event;
    type Error = rumqttc::ConnectionError;
    fn poll_event(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send {
        self.poll()
    }
}

impl EventLoop for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    type Error = rumqttc::v5::ConnectionError;
    fn poll_event(&mut self) -> impl Future<Output = Result<Self::Event, Self::Error>> + Send {
        self.poll()
    }
}

/// Run `event_loop` in the background: every event, then the error that ended it (as
/// `error_text` writes it), arrive on the returned channel, which closes after the error.
pub fn spawn_events<L: EventLoop>(
    mut event_loop: L,
    error_text: fn(&L::Error) -> String,
) -> mpsc::UnboundedReceiver<Result<L::Event, String>> {
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = event_loop.poll_event().await.map_err(|e| error_text(&e));
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                break;
            }
        }
    });
    events
}

/// The error's Display text.
pub fn display_text<E: std::fmt::Display>(e: &E) -> String {
    e.to_string()
}

/// The error's Debug text (keeps the variant, e.g. `ConnectionRefused(NotAuthorized)`).
pub fn debug_text<E: std::fmt::Debug>(e: &E) -> String {
    format!("{e:?}")
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
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
}

pub fn v4_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connect and wait for the CONNACK; returns the client and `session_present`.
pub async fn v4_connect(options: rumqttc::MqttOptions) -> (V4, bool) {
    let (client, el) = rumqttc::AsyncClient::new(options, 100);
    let events = spawn_events(el, display_text);
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
        match tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("event within the limit")
            .expect("event loop alive")
        {
            Ok(ev) => Ev::Event(ev),
            Err(e) => Ev::Error(e),
        }
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
        assert_is_marker("publish", &p.topic, &p.payload, marker_topic);
    }
}

/// A rumqttc v5 client with its event loop running in the background.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    pub connack: Option<p5::ConnAck>,
    /// PUBLISHes that arrived while waiting for something else (a SUBACK, say): the
    /// next `publish`/`wait_for` sees them first, in arrival order.
    held: std::collections::VecDeque<p5::Publish>,
}

pub fn v5_options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub async fn v5_connect(options: rumqttc::v5::MqttOptions) -> V5 {
    let (client, el) = rumqttc::v5::AsyncClient::new(options, 100);
    let events = spawn_events(el, debug_text);
    let mut c = V5 {
        client,
        events,
        connack: None,
        held: Default::default(),
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
        match tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("event within the limit")
            .expect("event loop alive")
        {
            Ok(ev) => Ev::Event(ev),
            Err(e) => Ev::Error(e),
        }
    }

    /// The first incoming packet for which `f` answers `Some`. PUBLISHes it passes
    /// over are held for later waits (they are never lost); other packets are.
    pub async fn wait_for<T>(&mut self, mut f: impl FnMut(&p5::Packet) -> Option<T>) -> T {
        for i in 0..self.held.len() {
            let packet = p5::Packet::Publish(self.held[i].clone());
            if let Some(t) = f(&packet) {
                self.held.remove(i);
                return t;
            }
        }
        loop {
            match self.next().await {
                Ev::Event(rumqttc::v5::Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return t;
                    }
                    if let p5::Packet::Publish(publish) = p {
                        self.held.push_back(publish);
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
        assert_is_marker(
            "publish",
            &String::from_utf8_lossy(&p.topic),
            &p.payload,
            marker_topic,
        );
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
        Raw::connect_v5_with_will(addr, id, None).await
    }

    /// [`Raw::connect_v5`] with a will.
    pub async fn connect_v5_with_will(
        addr: SocketAddr,
        id: &str,
        will: Option<p5::LastWill>,
    ) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(&p5::Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: id.to_string(),
                clean_start: true,
                properties: None,
            },
            will,
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
