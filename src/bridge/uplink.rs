//! The uplink: rumqttc towards the cloud, MQTT 3.1.1 or 5 behind one type, over TLS
//! with a rustls `ClientConfig` built by tollgate (the listeners' ring provider and
//! cipher suites, TLS 1.2/1.3, the CA from `ca`, the client certificate from
//! `cert`/`key` under the same key-permission rule as server keys). One [`Uplink`] is
//! one connection attempt to one address: a fresh rumqttc client and event loop, so
//! rumqttc never replays a queue of its own (the outbox is the only queue). Its events
//! are reduced to what the bridge needs ([`UplinkEvent`]). The password is read from
//! its file here and never logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::TlsConfiguration;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::config::{parse_address, BridgeConfig, Protocol};
use super::rules::Rule;

/// Reply to the birth and will: the status payloads on `status_topic`.
pub const ONLINE: &str = "online";
/// Will payload (and the last message of a clean shutdown).
pub const OFFLINE: &str = "offline";

/// What the bridge learns from one poll of the uplink.
#[derive(Debug)]
pub enum UplinkEvent {
    /// CONNACK accepted.
    Connected {
        /// The cloud kept our session.
        session_present: bool,
        /// QoS 1/2 PUBLISHes the bridge may have in flight on this connection: the
        /// cloud's Receive Maximum (v5) lowering `max_inflight`.
        window: u16,
        /// The cloud's Maximum Packet Size (v5): larger PUBLISHes must not be sent
        /// (rumqttc would fail the connection on them).
        max_packet_size: Option<u32>,
        /// The cloud's Topic Alias Maximum (v5; 0: no aliases).
        topic_alias_max: u16,
    },
    /// A PUBLISH went out; `pkid` is 0 for QoS 0.
    Sent {
        /// Packet id given by rumqttc.
        pkid: u16,
    },
    /// The cloud finished a QoS 1/2 publish (PUBACK, PUBCOMP, or a refusing PUBREC).
    Acked {
        /// Packet id.
        pkid: u16,
        /// `Some(reason)` when the cloud refused the message (v5 reason code ≥ 0x80).
        refused: Option<String>,
    },
    /// A message from the cloud (manual ack: [`Uplink::ack`] after it was handled).
    Message(Box<Incoming>),
    /// Anything else (pings, SUBACKs, our own acks).
    Other,
}

/// A message received from the cloud.
#[derive(Debug)]
pub struct Incoming {
    /// Remote topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it arrived with (0..=2).
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// MQTT 5 properties (`None` over 3.1.1).
    pub properties: Option<p5::PublishProperties>,
    raw: RawPublish,
}

#[derive(Debug)]
enum RawPublish {
    V4(rumqttc::Publish),
    V5(p5::Publish),
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// One connection (attempt) to one upstream address.
pub struct Uplink {
    client: Client,
    events: EventLoop,
    /// `max_inflight`: the window before the cloud's Receive Maximum lowers it.
    max_inflight: u16,
}

/// Build the TLS client configuration of bridge `b` (also used by `check`).
pub fn tls_config(b: &BridgeConfig) -> Result<Arc<ClientConfig>, String> {
    let pair = b.cert.as_deref().zip(b.key.as_deref());
    let base = crate::tls::build_client_config(&b.ca, pair).map_err(|e| e.to_string())?;
    let mut config = (*base).clone();
    config.alpn_protocols = b.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if let Some(name) = &b.server_name {
        // rumqttc names it in the handshake (network_options): SNI and verification.
        ServerName::try_from(name.clone()).map_err(|e| format!("server_name {name:?}: {e}"))?;
    }
    Ok(Arc::new(config))
}

/// Connection options of the uplink: no Nagle delay (the event loop writes several
/// PUBLISHes per flush itself; waiting for the cloud's ACK before the next small
/// segment would make every flush wait a round trip), and `server_name` as the TLS
/// name (SNI and certificate verification) instead of the address host (vendored
/// rumqttc's `set_tls_server_name`, vendor/rumqttc/PATCH.md).
fn network_options(b: &BridgeConfig) -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_tls_server_name(b.server_name.clone());
    n
}

/// The upstream password: the first line of `password_file`.
fn read_password(b: &BridgeConfig) -> Result<Option<String>, String> {
    let Some(path) = &b.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
    Ok(Some(text.lines().next().unwrap_or("").to_string()))
}

impl Uplink {
    /// A client for `address` (not yet connected: the first `poll` connects).
    pub fn new(
        b: &BridgeConfig,
        address: &str,
        tls: Arc<ClientConfig>,
        rules: &[Rule],
    ) -> Result<Uplink, String> {
        let (host, port) = parse_address(address)?;
        let password = read_password(b)?;
        let transport = rumqttc::Transport::tls_with_config(TlsConfiguration::Rustls(tls));
        let capacity = usize::from(b.max_inflight) + 64;
        let keepalive = Duration::from_secs(b.keepalive.as_secs().max(5));
        let uplink = match b.protocol {
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&b.client_id, host, port);
                o.set_transport(transport)
                    .set_keep_alive(keepalive)
                    .set_clean_start(b.clean_start)
                    .set_session_expiry_interval(Some(
                        u32::try_from(b.session_expiry.as_secs()).unwrap_or(u32::MAX),
                    ))
                    .set_max_packet_size(Some(b.max_packet_size))
                    .set_outgoing_inflight_upper_limit(b.max_inflight)
                    .set_manual_acks(true)
                    .set_connection_timeout(10)
                    .set_network_options(network_options(b));
                if let Some(status) = &b.status_topic {
                    o.set_last_will(p5::LastWill::new(
                        status,
                        OFFLINE,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        None,
                    ));
                }
                if let Some(user) = &b.username {
                    o.set_credentials(user, password.unwrap_or_default());
                }
                let (client, events) = rumqttc::v5::AsyncClient::new(o, capacity);
                Uplink {
                    client: Client::V5(client),
                    events: EventLoop::V5(Box::new(events)),
                    max_inflight: b.max_inflight,
                }
            }
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(&b.client_id, host, port);
                o.set_transport(transport)
                    .set_keep_alive(keepalive)
                    .set_clean_session(b.clean_start)
                    .set_max_packet_size(b.max_packet_size as usize, b.max_packet_size as usize)
                    .set_inflight(b.max_inflight)
                    .set_manual_acks(true);
                if let Some(status) = &b.status_topic {
                    o.set_last_will(rumqttc::LastWill::new(
                        status,
                        OFFLINE,
                        rumqttc::QoS::AtLeastOnce,
                        true,
                    ));
                }
                if let Some(user) = &b.username {
                    o.set_credentials(user, password.unwrap_or_default());
                }
                let (client, mut events) = rumqttc::AsyncClient::new(o, capacity);
                events.network_options = network_options(b);
                events.network_options.set_connection_timeout(10);
                Uplink {
                    client: Client::V4(client),
                    events: EventLoop::V4(Box::new(events)),
                    max_inflight: b.max_inflight,
                }
            }
        };
        // Subscriptions are queued now and sent right after the CONNACK.
        uplink.subscribe_in_rules(rules)?;
        Ok(uplink)
    }

    fn subscribe_in_rules(&self, rules: &[Rule]) -> Result<(), String> {
        let filters: Vec<(String, u8)> = rules
            .iter()
            .filter(|r| r.is_in())
            .map(|r| (r.remote_filter(), r.qos))
            .collect();
        if filters.is_empty() {
            return Ok(());
        }
        let result = match &self.client {
            Client::V5(c) => c
                .try_subscribe_many(filters.into_iter().map(|(path, qos)| p5::Filter {
                    path,
                    qos: qos5(qos),
                    // Never receive back what this bridge sent (no loop through the cloud).
                    nolocal: true,
                    preserve_retain: true,
                    retain_forward_rule: p5::RetainForwardRule::OnNewSubscribe,
                }))
                .map_err(|e| e.to_string()),
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .into_iter()
                        .map(|(path, qos)| rumqttc::SubscribeFilter::new(path, qos4(qos))),
                )
                .map_err(|e| e.to_string()),
        };
        result.map_err(|e| format!("cannot queue the remote subscriptions: {e}"))
    }

    /// Queue a QoS 1/2 PUBLISH with packet id `pkid` (chosen by the caller, free, and at
    /// most the window of [`UplinkEvent::Connected`]) and the DUP flag `dup`.
    ///
    /// rumqttc's `AsyncClient::publish` always sends DUP=0 and picks the packet id
    /// itself; a prebuilt `Publish` placed in the event loop's `pending` queue is
    /// written as it is, before the request channel (rumqttc keeps that queue for the
    /// session's resends and does not limit it by its in-flight count: the caller's
    /// window does). With packet ids chosen among the free ones, rumqttc never meets a
    /// packet-id collision (which would stall its request channel).
    /// `properties` go out over MQTT 5 only.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
        dup: bool,
        properties: Option<p5::PublishProperties>,
    ) {
        match &mut self.events {
            EventLoop::V5(e) => {
                let mut p = p5::Publish::new(topic, qos5(qos), payload, properties);
                p.pkid = pkid;
                p.retain = retain;
                p.dup = dup;
                e.pending.push_back(rumqttc::v5::Request::Publish(p));
            }
            EventLoop::V4(e) => {
                let mut p = rumqttc::Publish::new(topic, qos4(qos), payload);
                p.pkid = pkid;
                p.retain = retain;
                p.dup = dup;
                e.pending.push_back(rumqttc::Request::Publish(p));
            }
        }
    }

    /// Queue a QoS 0 PUBLISH (`properties` over MQTT 5 only); `false` when rumqttc's
    /// request queue is full (try later).
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
        properties: Option<p5::PublishProperties>,
    ) -> bool {
        match &self.client {
            Client::V5(c) => match properties {
                Some(p) => c
                    .try_publish_with_properties(topic, qos5(qos), retain, payload, p)
                    .is_ok(),
                None => c.try_publish(topic, qos5(qos), retain, payload).is_ok(),
            },
            Client::V4(c) => c.try_publish(topic, qos4(qos), retain, payload).is_ok(),
        }
    }

    /// Acknowledge a message from the cloud (after it was published locally).
    pub fn ack(&self, message: &Incoming) {
        // A full request queue here means the connection is stuck; the cloud redelivers.
        match (&self.client, &message.raw) {
            (Client::V5(c), RawPublish::V5(p)) => {
                let _ = c.try_ack(p);
            }
            (Client::V4(c), RawPublish::V4(p)) => {
                let _ = c.try_ack(p);
            }
            _ => {}
        }
    }

    /// Queue a DISCONNECT (normal: the cloud discards the will).
    pub fn disconnect(&self) {
        match &self.client {
            Client::V5(c) => {
                let _ = c.try_disconnect();
            }
            Client::V4(c) => {
                let _ = c.try_disconnect();
            }
        }
    }

    /// What rumqttc had queued for the bridge when the connection ended: it queues
    /// events (several PUBLISHes written in one turn, the PUBACKs/PUBCOMPs decoded in
    /// one read) and reports the error first. Without the acknowledgements the bridge
    /// would resend messages the cloud already acknowledged (a duplicate on every cloud
    /// shutdown with messages in flight; found by tests/bridge_ops.rs's outage test);
    /// without the `Sent` events the `sent` counter missed PUBLISHes written just
    /// before the end. Call after `poll` failed; the events come in their order.
    pub fn events_before_the_end(&mut self) -> Vec<UplinkEvent> {
        match &mut self.events {
            EventLoop::V5(e) => {
                use rumqttc::v5::{Event, Incoming as In};
                e.state
                    .events
                    .drain(..)
                    .filter_map(|event| match event {
                        Event::Incoming(In::PubAck(a)) => Some(v5_acked(&a)),
                        Event::Incoming(In::PubComp(c)) => Some(UplinkEvent::Acked {
                            pkid: c.pkid,
                            refused: None,
                        }),
                        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                            Some(UplinkEvent::Sent { pkid })
                        }
                        _ => None,
                    })
                    .collect()
            }
            EventLoop::V4(e) => {
                use rumqttc::{Event, Packet};
                e.state
                    .events
                    .drain(..)
                    .filter_map(|event| match event {
                        Event::Incoming(Packet::PubAck(a)) => Some(UplinkEvent::Acked {
                            pkid: a.pkid,
                            refused: None,
                        }),
                        Event::Incoming(Packet::PubComp(c)) => Some(UplinkEvent::Acked {
                            pkid: c.pkid,
                            refused: None,
                        }),
                        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                            Some(UplinkEvent::Sent { pkid })
                        }
                        _ => None,
                    })
                    .collect()
            }
        }
    }

    /// Drive the connection; an error ends this uplink.
    pub async fn poll(&mut self) -> Result<UplinkEvent, String> {
        let max_inflight = self.max_inflight;
        match &mut self.events {
            EventLoop::V5(e) => {
                let event = e.poll().await.map_err(|e| e.to_string())?;
                Ok(v5_event(event, max_inflight))
            }
            EventLoop::V4(e) => {
                let event = e.poll().await.map_err(|e| e.to_string())?;
                Ok(v4_event(event, max_inflight))
            }
        }
    }

    /// The next event rumqttc already has queued (the rest of one read's PUBACKs, the
    /// `Sent` of one write's PUBLISHes), without polling the connection: what the next
    /// [`Uplink::poll`] would return first. The bridge drains these in one turn instead
    /// of one `select!` round (and one fresh poll future) per event. Only after a
    /// successful `poll` (after an error the queue is [`Uplink::events_before_the_end`]'s).
    pub fn queued(&mut self) -> Option<UplinkEvent> {
        let max_inflight = self.max_inflight;
        match &mut self.events {
            EventLoop::V5(e) => e
                .state
                .events
                .pop_front()
                .map(|event| v5_event(event, max_inflight)),
            EventLoop::V4(e) => e
                .state
                .events
                .pop_front()
                .map(|event| v4_event(event, max_inflight)),
        }
    }
}

#[cfg(test)]
impl Uplink {
    /// A v5 uplink that is never polled: what [`Uplink::send`] queued stays in
    /// rumqttc's `pending` queue for a test to read.
    pub(super) fn unconnected(max_inflight: u16) -> Uplink {
        let o = rumqttc::v5::MqttOptions::new("gw", "127.0.0.1", 1);
        let (client, events) = rumqttc::v5::AsyncClient::new(o, 10);
        Uplink {
            client: Client::V5(client),
            events: EventLoop::V5(Box::new(events)),
            max_inflight,
        }
    }

    /// The packet ids of the PUBLISHes queued by [`Uplink::send`], taken out.
    pub(super) fn take_sent(&mut self) -> Vec<u16> {
        match &mut self.events {
            EventLoop::V5(e) => e
                .pending
                .drain(..)
                .filter_map(|r| match r {
                    rumqttc::v5::Request::Publish(p) => Some(p.pkid),
                    _ => None,
                })
                .collect(),
            EventLoop::V4(e) => e
                .pending
                .drain(..)
                .filter_map(|r| match r {
                    rumqttc::Request::Publish(p) => Some(p.pkid),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// What the bridge makes of one MQTT 5 event of rumqttc.
fn v5_event(event: rumqttc::v5::Event, max_inflight: u16) -> UplinkEvent {
    use rumqttc::v5::{Event, Incoming as In};
    match event {
        Event::Incoming(In::ConnAck(c)) => UplinkEvent::Connected {
            session_present: c.session_present,
            window: c
                .properties
                .as_ref()
                .and_then(|p| p.receive_max)
                .map_or(max_inflight, |r| r.clamp(1, max_inflight)),
            max_packet_size: c.properties.as_ref().and_then(|p| p.max_packet_size),
            topic_alias_max: c
                .properties
                .as_ref()
                .and_then(|p| p.topic_alias_max)
                .unwrap_or(0),
        },
        Event::Incoming(In::PubAck(a)) => v5_acked(&a),
        Event::Incoming(In::PubRec(r))
            if !matches!(
                r.reason,
                p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers
            ) =>
        {
            UplinkEvent::Acked {
                pkid: r.pkid,
                refused: Some(format!("{:?}", r.reason)),
            }
        }
        Event::Incoming(In::PubComp(c)) => UplinkEvent::Acked {
            pkid: c.pkid,
            refused: None,
        },
        Event::Incoming(In::Publish(p)) => UplinkEvent::Message(Box::new(Incoming {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            properties: p.properties.clone(),
            raw: RawPublish::V5(p),
        })),
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => UplinkEvent::Sent { pkid },
        _ => UplinkEvent::Other,
    }
}

/// What the bridge makes of one MQTT 3.1.1 event of rumqttc.
fn v4_event(event: rumqttc::Event, max_inflight: u16) -> UplinkEvent {
    use rumqttc::{Event, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => UplinkEvent::Connected {
            session_present: c.session_present,
            window: max_inflight,
            max_packet_size: None,
            topic_alias_max: 0,
        },
        Event::Incoming(Packet::PubAck(a)) => UplinkEvent::Acked {
            pkid: a.pkid,
            refused: None,
        },
        Event::Incoming(Packet::PubComp(c)) => UplinkEvent::Acked {
            pkid: c.pkid,
            refused: None,
        },
        Event::Incoming(Packet::Publish(p)) => UplinkEvent::Message(Box::new(Incoming {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            properties: None,
            raw: RawPublish::V4(p),
        })),
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => UplinkEvent::Sent { pkid },
        _ => UplinkEvent::Other,
    }
}

/// A v5 PUBACK as the bridge sees it (a reason code ≥ 0x80 is a refusal).
fn v5_acked(a: &p5::PubAck) -> UplinkEvent {
    UplinkEvent::Acked {
        pkid: a.pkid,
        refused: (!matches!(
            a.reason,
            p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers
        ))
        .then(|| format!("{:?}", a.reason)),
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events the bridge takes from a drained queue, reduced for comparison.
    fn reduced(events: Vec<UplinkEvent>) -> Vec<(&'static str, u16)> {
        events
            .into_iter()
            .map(|e| match e {
                UplinkEvent::Sent { pkid } => ("sent", pkid),
                UplinkEvent::Acked {
                    pkid,
                    refused: None,
                } => ("acked", pkid),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn publishes_and_acks_queued_when_the_connection_ended_are_all_reported() {
        use rumqttc::v5::{Event, Incoming as In};
        // Never polled, so never connected: only its queue of events matters here.
        let o = rumqttc::v5::MqttOptions::new("gw", "127.0.0.1", 1);
        let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 10);
        for event in [
            Event::Outgoing(rumqttc::Outgoing::Publish(1)),
            Event::Incoming(In::PubAck(p5::PubAck::new(7, None))),
            Event::Outgoing(rumqttc::Outgoing::PingReq),
            Event::Outgoing(rumqttc::Outgoing::Publish(2)),
            Event::Outgoing(rumqttc::Outgoing::Publish(0)),
        ] {
            events.state.events.push_back(event);
        }
        let mut up = Uplink {
            client: Client::V5(client),
            events: EventLoop::V5(Box::new(events)),
            max_inflight: 10,
        };
        assert_eq!(
            reduced(up.events_before_the_end()),
            [("sent", 1), ("acked", 7), ("sent", 2), ("sent", 0)]
        );
        assert!(up.events_before_the_end().is_empty(), "drained");

        let o = rumqttc::MqttOptions::new("gw", "127.0.0.1", 1);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
        for event in [
            rumqttc::Event::Incoming(rumqttc::Packet::PubAck(rumqttc::PubAck::new(3))),
            rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(4)),
            rumqttc::Event::Incoming(rumqttc::Packet::PubComp(rumqttc::PubComp::new(5))),
        ] {
            events.state.events.push_back(event);
        }
        let mut up = Uplink {
            client: Client::V4(client),
            events: EventLoop::V4(Box::new(events)),
            max_inflight: 10,
        };
        assert_eq!(
            reduced(up.events_before_the_end()),
            [("acked", 3), ("sent", 4), ("acked", 5)]
        );
    }
}
