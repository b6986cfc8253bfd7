//! rumqttc v3.1.1 and v5 clients of a whole gateway, over TCP or TLS with optional
//! credentials, whose refusals are results (reason codes exposed), for the security tests.
//! Messages that arrive while a client waits for something else are kept for
//! [`V5::message`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::mpsc;

use super::clients::{debug_text, spawn_events};
use super::wait::{MARKER, WAIT};

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
    let (client, el) = rumqttc::v5::AsyncClient::new(o, 100);
    let events = spawn_events(el, debug_text);
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
    let (client, el) = rumqttc::AsyncClient::new(o, 100);
    let events = spawn_events(el, debug_text);
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
