//! In-process clients for adapters and the bridge: attach to the router with an
//! `Identity`, publish, subscribe and receive with the same semantics and the same
//! `Authorizer` checks as a network client, without a socket. It must never bypass
//! authorization.
//!
//! Durable subscribers: a client marked `durable` holds back the publisher's PUBACK
//! (QoS 1) or PUBREC (QoS 2, and with it the PUBCOMP) and in-process publish futures
//! until it has acknowledged every matching QoS ≥ 1 delivery, so "acknowledged" can
//! mean "stored on disk". If the durable subscriber loses the message first (its
//! queue overflows, its session ends), v5 publishers get reason 0x97 (quota exceeded)
//! and in-process publishes `BrokerError::Refused`; v3.1.1 has no negative ack and is
//! acknowledged. The ack follows the publisher's session across reconnects. With no
//! durable subscriber the cost is one flag test per delivery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::{
    out_queue, BrokerError, ConnId, ConnectRequest, Inbound, OutRx, Outgoing, QueueOverflow,
    RouterMsg,
};
use crate::auth::Identity;
use crate::broker::checks::check_filter;
use crate::broker::codec::{v5, QoS};
use crate::broker::shared::Shared;
use crate::telemetry::limit::LogStr;
use crate::topic;

/// How an in-process client attaches.
#[derive(Debug, Clone)]
pub struct InternalOptions {
    /// Who the client is (usually `Identity::internal("adapter:<name>")`); its
    /// `client_id` names the session.
    pub identity: Identity,
    /// Discard any existing session with this client id.
    pub clean_start: bool,
    /// Seconds the session survives after `disconnect` (`u32::MAX`: the broker maximum).
    pub session_expiry: u32,
    /// Hold back publishers' acknowledgements until this client acks each delivery.
    pub durable: bool,
    /// QoS 1/2 deliveries in flight towards this client before the broker queues.
    pub receive_maximum: u16,
    /// What this client's queue does when it is full.
    pub overflow: QueueOverflow,
}

impl InternalOptions {
    /// Clean, non-durable session that ends on disconnect.
    pub fn new(identity: Identity) -> Self {
        InternalOptions {
            identity,
            clean_start: true,
            session_expiry: 0,
            durable: false,
            receive_maximum: 1000,
            overflow: QueueOverflow::DropOldest,
        }
    }
}

/// A message delivered to an in-process client.
#[derive(Debug)]
pub struct Delivery {
    /// Concrete topic.
    pub topic: String,
    /// Payload (shared with every other subscriber, never copied).
    pub payload: Bytes,
    /// QoS of this delivery (min of published and granted).
    pub qos: QoS,
    /// RETAIN flag as delivered (retained message on subscribe, or retain-as-published).
    pub retain: bool,
    /// Redelivery of an unacknowledged message.
    pub dup: bool,
    /// v5 properties (user properties, content type, response topic, ...).
    pub properties: Option<v5::PublishProperties>,
    /// Who published it, when a session did (not for wills, retained replays, `$SYS`).
    pub publisher: Option<Arc<Identity>>,
    ack: Option<DeliveryAck>,
}

impl Delivery {
    /// The acknowledgement handle (QoS 1/2 only); take it to ack after storing.
    pub fn take_ack(&mut self) -> Option<DeliveryAck> {
        self.ack.take()
    }

    /// Acknowledge now (no-op for QoS 0).
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        match self.ack.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

/// Acknowledges one QoS 1/2 delivery. Dropping it without `ack` leaves the message
/// unacknowledged: it is redelivered (DUP) when the session resumes.
#[derive(Debug)]
pub struct DeliveryAck {
    router_tx: mpsc::Sender<RouterMsg>,
    conn: ConnId,
    pkid: u16,
}

impl DeliveryAck {
    /// Tell the router this delivery is done (for a durable client: safely stored).
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.send(Inbound::InternalAck(self.pkid)).await
    }

    /// Tell the router this delivery is done but was not kept (a durable client that
    /// cannot store it, e.g. a full bridge journal with `overflow = "refuse-new"`): the
    /// publisher's held acknowledgement is released as a refusal, like a message the
    /// durable subscriber lost: v5 PUBACK/PUBREC 0x97 (Quota exceeded, and the QoS 2
    /// packet id is freed: no PUBREL follows), `BrokerError::Refused` for an in-process
    /// publisher, and for a v3.1.1 publisher, which has no negative acknowledgement, a
    /// plain PUBACK/PUBREC (the message is dropped; the refusing client counts it).
    pub async fn refuse(self) -> Result<(), BrokerError> {
        self.send(Inbound::InternalRefuse(self.pkid)).await
    }

    /// [`ack`](Self::ack) for many deliveries at once, in their order: one message to
    /// the router per client instead of one per delivery (a durable client acknowledges
    /// a whole group commit together).
    pub async fn ack_all(acks: Vec<DeliveryAck>) -> Result<(), BrokerError> {
        let mut acks = acks.into_iter().peekable();
        while let Some(first) = acks.next() {
            let mut items = vec![Inbound::InternalAck(first.pkid)];
            while let Some(next) = acks.next_if(|a| a.conn == first.conn) {
                items.push(Inbound::InternalAck(next.pkid));
            }
            first
                .router_tx
                .send(RouterMsg::Inbound {
                    conn: first.conn,
                    items,
                })
                .await
                .map_err(|_| BrokerError::Closed)?;
        }
        Ok(())
    }

    async fn send(&self, item: Inbound) -> Result<(), BrokerError> {
        self.router_tx
            .send(RouterMsg::Inbound {
                conn: self.conn,
                items: vec![item],
            })
            .await
            .map_err(|_| BrokerError::Closed)
    }
}

/// An attached in-process client. Dropping it disconnects (no will).
pub struct InternalClient {
    shared: Arc<Shared>,
    conn: ConnId,
    identity: Identity,
    rx: OutRx,
    buffered: VecDeque<Outgoing>,
    session_present: bool,
    closed: bool,
}

pub(crate) async fn connect(
    shared: Arc<Shared>,
    options: InternalOptions,
) -> Result<InternalClient, BrokerError> {
    if shared.shutdown.is_cancelled() {
        return Err(BrokerError::Closed);
    }
    let connack = v5::ConnAck {
        session_present: false,
        code: v5::ConnectReturnCode::Success,
        properties: None,
    };
    let (request, mut rx) = ConnectRequest::new(
        shared.new_conn_id(),
        options.identity.clone(),
        options.receive_maximum.max(1),
        connack,
    );
    let request = ConnectRequest {
        clean_start: options.clean_start,
        session_expiry: options
            .session_expiry
            .min(shared.settings.max_session_expiry),
        durable: options.durable,
        overflow: options.overflow,
        ..request
    };
    let conn = request.conn;
    shared
        .router_tx
        .send(RouterMsg::Connect(Box::new(request)))
        .await
        .map_err(|_| BrokerError::Closed)?;
    let mut client = InternalClient {
        shared,
        conn,
        identity: options.identity,
        rx: out_queue().1,
        buffered: VecDeque::new(),
        session_present: false,
        closed: false,
    };
    let first = rx.recv().await.ok_or(BrokerError::Closed)?;
    for item in first {
        match item {
            Outgoing::Packet(p) if matches!(*p, v5::Packet::ConnAck(_)) => {
                rx.backlog().taken_control();
                let v5::Packet::ConnAck(c) = *p else {
                    continue;
                };
                if c.code != v5::ConnectReturnCode::Success {
                    let reason = c
                        .properties
                        .and_then(|p| p.reason_string)
                        .unwrap_or_else(|| format!("{:?}", c.code));
                    client.closed = true;
                    return Err(BrokerError::Refused(reason));
                }
                client.session_present = c.session_present;
            }
            other => client.buffered.push_back(other),
        }
    }
    client.rx = rx;
    Ok(client)
}

impl InternalClient {
    /// The client id (session name).
    pub fn client_id(&self) -> &str {
        &self.identity.client_id
    }

    /// Whether an existing session was resumed.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Publish; resolves once routed, for QoS ≥ 1 once every durable subscriber
    /// has acknowledged it (like a PUBACK).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), BrokerError> {
        self.publish_with(topic, payload, qos, retain, None).await
    }

    /// `publish` with v5 properties (user properties, content type, expiry, ...).
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Option<v5::PublishProperties>,
    ) -> Result<(), BrokerError> {
        topic::validate_topic_name(topic).map_err(|e| {
            BrokerError::Refused(format!("topic name invalid (0x90): {topic:?}: {e}"))
        })?;
        topic::check_levels(topic, self.shared.settings.max_topic_levels)
            .map_err(|e| BrokerError::Refused(format!("topic name invalid (0x90): {e}")))?;
        let authorizer = self.shared.authorizer();
        if !crate::acl::authorize_write(&*authorizer, &self.identity, topic, None) {
            return Err(BrokerError::Refused(format!(
                "not authorized (0x87): {} may not publish to {topic:?}",
                self.identity.client_id
            )));
        }
        let mut properties = properties;
        if let Some(p) = properties.as_mut() {
            p.topic_alias = None;
            p.subscription_identifiers.clear();
        }
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        let (tx, rx) = oneshot::channel();
        // The caller's payload may be a slice of a larger buffer (an uplink's read
        // buffer, say): the message owns exactly its bytes from here on.
        let payload: Bytes = payload.into();
        let (topic, payload) = super::own_bytes(topic.as_bytes(), &payload);
        let mut properties = properties;
        super::own_correlation_data(&mut properties);
        let publish = v5::Publish {
            dup: false,
            qos,
            retain,
            topic,
            pkid: 0,
            payload,
            properties,
        };
        self.send(vec![Inbound::Publish {
            publish,
            expires_at,
            reply: Some(tx),
        }])
        .await?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    /// Subscribe to `filter` (may be `$share/group/filter`); returns the SUBACK reason.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
    ) -> Result<v5::SubscribeReasonCode, BrokerError> {
        self.subscribe_filter(v5::Filter {
            path: filter.to_string(),
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
        })
        .await
    }

    /// Subscribe with every v5 option: No Local (e.g. so a bridge does not receive
    /// what it republished itself), Retain As Published, retain handling.
    pub async fn subscribe_filter(
        &self,
        f: v5::Filter,
    ) -> Result<v5::SubscribeReasonCode, BrokerError> {
        let filter = f.path.clone();
        let authorizer = self.shared.authorizer();
        let max_levels = self.shared.settings.max_topic_levels;
        // A refusal by ACL is audited by `check_filter` itself.
        match check_filter(&f, &self.identity, &*authorizer, None, max_levels) {
            Ok(Ok(())) => {}
            Ok(Err(code)) => {
                debug!(client_id = %LogStr(&self.identity.client_id), filter = %LogStr(&filter), ?code, "Subscribe refused.");
                return Ok(code);
            }
            Err(v) => return Err(BrokerError::Refused(v.reason)),
        }
        let (tx, rx) = oneshot::channel();
        self.send(vec![Inbound::Subscribe {
            pkid: 0,
            id: None,
            filters: vec![(f, None)],
            reply: Some(tx),
        }])
        .await?;
        let codes = rx.await.map_err(|_| BrokerError::Closed)?;
        codes.into_iter().next().ok_or(BrokerError::Closed)
    }

    /// Remove a subscription; returns the UNSUBACK reason.
    pub async fn unsubscribe(&self, filter: &str) -> Result<v5::UnsubAckReason, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.send(vec![Inbound::Unsubscribe {
            pkid: 0,
            filters: vec![filter.to_string()],
            reply: Some(tx),
        }])
        .await?;
        let reasons = rx.await.map_err(|_| BrokerError::Closed)?;
        reasons.into_iter().next().ok_or(BrokerError::Closed)
    }

    /// Next delivery; `None` once the session is closed (shutdown or takeover).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            while let Some(item) = self.buffered.pop_front() {
                // Undelivered items count against the slow-consumer guard until taken.
                self.rx.backlog().taken(std::slice::from_ref(&item));
                match item {
                    Outgoing::Publish(p) => {
                        let publisher = p.msg.origin.clone();
                        let p = p.to_publish(true);
                        let ack = (p.qos != QoS::AtMostOnce).then(|| DeliveryAck {
                            router_tx: self.shared.router_tx.clone(),
                            conn: self.conn,
                            pkid: p.pkid,
                        });
                        return Some(Delivery {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            qos: p.qos,
                            retain: p.retain,
                            dup: p.dup,
                            properties: p.properties,
                            publisher,
                            ack,
                        });
                    }
                    Outgoing::Close => {
                        self.closed = true;
                        return None;
                    }
                    Outgoing::Ack(_) | Outgoing::Packet(_) => {}
                }
            }
            if self.closed {
                return None;
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => {
                        self.buffered.extend(batch);
                    }
                    None => {
                        self.closed = true;
                        return None;
                    }
                },
                _ = self.shared.shutdown.cancelled() => {
                    self.closed = true;
                    return None;
                }
            }
        }
    }

    /// Detach; the session ends or waits for `session_expiry` seconds.
    pub async fn disconnect(mut self) {
        self.closed = true;
        let _ = self
            .shared
            .router_tx
            .send(RouterMsg::Closed {
                conn: self.conn,
                send_will: false,
                session_expiry: None,
            })
            .await;
        // Drop runs next and sends a second Closed, which the router ignores.
    }

    async fn send(&self, items: Vec<Inbound>) -> Result<(), BrokerError> {
        self.shared
            .router_tx
            .send(RouterMsg::Inbound {
                conn: self.conn,
                items,
            })
            .await
            .map_err(|_| BrokerError::Closed)
    }
}

impl Drop for InternalClient {
    fn drop(&mut self) {
        let msg = RouterMsg::Closed {
            conn: self.conn,
            send_will: false,
            session_expiry: None,
        };
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.shared.router_tx.try_send(msg) {
            let tx = self.shared.router_tx.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                self.shared.tracker.spawn_on(
                    async move {
                        let _ = tx.send(msg).await;
                    },
                    &handle,
                );
            }
        }
    }
}
