//! The messages every endpoint exchanges with the router: what a connection or an
//! in-process client sends (`RouterMsg`, `ConnectRequest`, `Inbound`), what the router
//! hands back (`Outgoing` batches, `OutPublish`), and the routed `Message` itself.
//! The endpoints sit side by side under `link/`: `network` (one task per socket) and
//! `internal` (in-process clients: the bridge and the adapters are further users of
//! it). Endpoints and the router speak these types and nothing else; this module
//! holds no state and does no I/O.

pub(super) mod internal;
pub(super) mod network;
mod outbox;
pub(crate) mod pool;

pub(crate) use outbox::{out_queue, OutRx, OutTx};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codec::{v5, QoS};
use super::trie::SessionKey;
use crate::auth::Identity;

/// Identifies one network connection or in-process client attachment.
pub(crate) type ConnId = u64;

/// What the router sends to a connection task, in batches. Kept small (the common
/// items, PUBLISH and plain acknowledgements, are a few words; anything else is
/// boxed), so batches move little memory and the PUBLISH is built on the
/// connection's task, not the router's.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An application message to send.
    Publish(OutPublish),
    /// A successful acknowledgement without properties.
    Ack(Ack),
    /// Any other packet to encode and write.
    Packet(Box<v5::Packet>),
    /// Write what came before, then close the connection.
    Close,
}

impl Outgoing {
    /// Wrap a control packet, compacting plain successful acknowledgements.
    pub(crate) fn packet(packet: v5::Packet) -> Outgoing {
        match &packet {
            v5::Packet::PubAck(a)
                if a.properties.is_none() && a.reason == v5::PubAckReason::Success =>
            {
                Outgoing::Ack(Ack::Puback(a.pkid))
            }
            v5::Packet::PubRec(r)
                if r.properties.is_none() && r.reason == v5::PubRecReason::Success =>
            {
                Outgoing::Ack(Ack::Pubrec(r.pkid))
            }
            v5::Packet::PubRel(r)
                if r.properties.is_none() && r.reason == v5::PubRelReason::Success =>
            {
                Outgoing::Ack(Ack::Pubrel(r.pkid))
            }
            v5::Packet::PubComp(c)
                if c.properties.is_none() && c.reason == v5::PubCompReason::Success =>
            {
                Outgoing::Ack(Ack::Pubcomp(c.pkid))
            }
            _ => Outgoing::Packet(Box::new(packet)),
        }
    }
}

/// A successful acknowledgement (reason 0x00, no properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    Puback(u16),
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
}

impl Ack {
    pub(crate) fn to_packet(self) -> v5::Packet {
        match self {
            Ack::Puback(pkid) => v5::Packet::PubAck(v5::PubAck {
                pkid,
                reason: v5::PubAckReason::Success,
                properties: None,
            }),
            Ack::Pubrec(pkid) => v5::Packet::PubRec(v5::PubRec {
                pkid,
                reason: v5::PubRecReason::Success,
                properties: None,
            }),
            Ack::Pubrel(pkid) => v5::Packet::PubRel(v5::PubRel {
                pkid,
                reason: v5::PubRelReason::Success,
                properties: None,
            }),
            Ack::Pubcomp(pkid) => v5::Packet::PubComp(v5::PubComp {
                pkid,
                reason: v5::PubCompReason::Success,
                properties: None,
            }),
        }
    }
}

/// One delivery of a routed message, turned into a PUBLISH by the receiver.
#[derive(Debug)]
pub(crate) struct OutPublish {
    pub msg: Arc<Message>,
    pub pkid: u16,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub sub_ids: Vec<usize>,
    /// Remaining Message Expiry Interval in seconds, when the message has one.
    pub expiry: Option<u32>,
}

impl OutPublish {
    /// The PUBLISH packet; v5 properties only when `properties` (3.1.1 drops them).
    pub(crate) fn to_publish(&self, properties: bool) -> v5::Publish {
        let mut props = None;
        if properties {
            props = self.msg.properties.clone();
            if let Some(secs) = self.expiry {
                props
                    .get_or_insert_with(Default::default)
                    .message_expiry_interval = Some(secs);
            }
            if !self.sub_ids.is_empty() {
                props
                    .get_or_insert_with(Default::default)
                    .subscription_identifiers = self.sub_ids.clone();
            }
        }
        v5::Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.msg.topic.clone(),
            pkid: self.pkid,
            payload: self.msg.payload.clone(),
            properties: props,
        }
    }
}

/// What the router has handed to a connection and the connection has not taken yet
/// (the slow-consumer guard reads it): items, and bytes of their messages.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    items: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    /// The router hands over `items` carrying `bytes` of messages.
    pub(crate) fn handed(&self, items: usize, bytes: usize) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Items and message bytes handed over and not taken yet.
    pub(crate) fn pending(&self) -> (usize, usize) {
        (
            self.items.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The client took one control packet (no message bytes) off the outbox.
    pub(crate) fn taken_control(&self) {
        self.items.fetch_sub(1, Ordering::Relaxed);
    }

    /// The connection took these items off the outbox.
    pub(crate) fn taken(&self, items: &[Outgoing]) {
        let bytes: usize = items
            .iter()
            .map(|item| match item {
                Outgoing::Publish(p) => p.msg.weight(),
                _ => 0,
            })
            .sum();
        self.items.fetch_sub(items.len(), Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A routed application message, shared by every delivery (no payload copies).
#[derive(Debug)]
pub(crate) struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties passed through (topic alias and subscription ids removed).
    pub properties: Option<v5::PublishProperties>,
    pub expires_at: Option<Instant>,
    /// Publishing session, for No Local.
    pub publisher: Option<SessionKey>,
    /// Who published it (sessions' PUBLISHes only; `None` for wills, retained replays
    /// and `$SYS`): in-process receivers audit commands with it (adapters' writes).
    pub origin: Option<Arc<Identity>>,
}

impl Message {
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    /// Bytes this message holds: topic, payload and properties (user properties,
    /// correlation data, response topic, content type), for the queue bounds.
    pub(crate) fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + properties_weight(self.properties.as_ref())
    }
}

/// `topic` and `payload` copied into one allocation of exactly their size.
///
/// A message that outlives where it came from (queues, in-flight windows, channels to
/// slow readers, the retained store) must not pin a larger buffer for a few bytes:
/// wills and in-process publishes copy theirs with this, network PUBLISHes are copied
/// out of the read buffer by the codec (exactly their packet).
pub(crate) fn own_bytes(topic: &[u8], payload: &[u8]) -> (Bytes, Bytes) {
    let mut both = bytes::BytesMut::with_capacity(topic.len() + payload.len());
    both.extend_from_slice(topic);
    both.extend_from_slice(payload);
    let both = both.freeze();
    (both.slice(..topic.len()), both.slice(topic.len()..))
}

/// Correlation data copied out of whatever it was a view of (see [`own_bytes`]).
pub(crate) fn own_correlation_data(properties: &mut Option<v5::PublishProperties>) {
    if let Some(data) = properties
        .as_mut()
        .and_then(|p| p.correlation_data.as_mut())
    {
        *data = Bytes::copy_from_slice(data);
    }
}

/// Bytes held by v5 PUBLISH properties (strings and binary data; fixed-size fields
/// are counted as a few bytes each).
fn properties_weight(properties: Option<&v5::PublishProperties>) -> usize {
    let Some(p) = properties else { return 0 };
    16 + p.response_topic.as_ref().map_or(0, String::len)
        + p.correlation_data.as_ref().map_or(0, Bytes::len)
        + p.content_type.as_ref().map_or(0, String::len)
        + p.user_properties
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
        + 8 * p.subscription_identifiers.len()
}

/// What a full session queue does with the next QoS 1/2 message (per listener;
/// in-process clients choose their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// Drop the oldest queued messages to make room (logged once per burst, counted).
    #[default]
    DropOldest,
    /// Drop the new message, keep what is queued (logged once per burst, counted).
    DropNew,
    /// Queue it beyond the bound and hold back the publisher's PUBACK/PUBREC until
    /// it leaves the queue: publishers slow down to what the subscriber reads
    /// (3.1.1 publishers are no longer read once their window is full; v5 ones must
    /// honour Receive Maximum). The excess is bounded by the publishers' windows.
    /// Messages with nobody to slow down (wills, QoS 0) fall back to drop-oldest.
    BlockPublishers,
}

/// A will message and its delay, validated by the connection task.
#[derive(Debug)]
pub(crate) struct WillSpec {
    pub message: Message,
    pub delay: u32,
}

/// Everything the router needs to attach a connection to a session.
pub(crate) struct ConnectRequest {
    pub conn: ConnId,
    pub tx: OutTx,
    /// Shared by the router's session and the connection (one copy per connection).
    pub identity: Arc<Identity>,
    pub clean_start: bool,
    /// Seconds; `u32::MAX` means never.
    pub session_expiry: u32,
    pub will: Option<WillSpec>,
    /// The client's Receive Maximum: QoS 1/2 messages in flight towards it.
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size.
    pub max_packet_size: Option<u32>,
    /// Durable in-process subscriber: holds back publishers' acknowledgements.
    pub durable: bool,
    /// Prepared CONNACK; the router fills in `session_present`.
    pub connack: v5::ConnAck,
    /// MQTT v5 client (in-process clients count as v5).
    pub v5: bool,
    /// What the session's queue does when it is full.
    pub overflow: QueueOverflow,
}

/// Errors of the in-process client API.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The router has stopped (shutdown).
    #[error("broker is shutting down")]
    Closed,
    /// The request was refused; the string says why (reason code name and context).
    #[error("refused: {0}")]
    Refused(String),
}

impl ConnectRequest {
    /// The one way an endpoint builds its request: connection `conn` of `identity`,
    /// answered with `connack` through a new outbox (returned with the request). The
    /// session terms start as a clean, non-durable v5 session without expiry, will or
    /// packet size limit; the endpoint sets what its client asked for.
    pub(crate) fn new(
        conn: ConnId,
        identity: Identity,
        receive_maximum: u16,
        connack: v5::ConnAck,
    ) -> (ConnectRequest, OutRx) {
        let (tx, rx) = out_queue();
        let request = ConnectRequest {
            conn,
            tx,
            identity: Arc::new(identity),
            clean_start: true,
            session_expiry: 0,
            will: None,
            receive_maximum,
            max_packet_size: None,
            durable: false,
            connack,
            v5: true,
            overflow: QueueOverflow::default(),
        };
        (request, rx)
    }
}

/// Reply channel of an in-process publish.
pub(crate) type PublishReply = oneshot::Sender<Result<(), BrokerError>>;

/// One decoded, validated and authorized request from a connection.
#[derive(Debug)]
pub(crate) enum Inbound {
    Publish {
        publish: v5::Publish,
        expires_at: Option<Instant>,
        reply: Option<PublishReply>,
    },
    PubAck(u16),
    PubRec {
        pkid: u16,
        failed: bool,
    },
    PubRel(u16),
    PubComp(u16),
    /// In-process acknowledgement of a QoS 1 or 2 delivery.
    InternalAck(u16),
    /// In-process refusal of a QoS 1 or 2 delivery: the durable subscriber could not
    /// keep it, so a hold on the publisher's acknowledgement completes as a failure.
    InternalRefuse(u16),
    Subscribe {
        pkid: u16,
        id: Option<usize>,
        /// Filters with a refusal already decided by the connection (invalid, ACL).
        filters: Vec<(v5::Filter, Option<v5::SubscribeReasonCode>)>,
        reply: Option<oneshot::Sender<Vec<v5::SubscribeReasonCode>>>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
        reply: Option<oneshot::Sender<Vec<v5::UnsubAckReason>>>,
    },
    /// The client re-authenticated (MQTT 5 AUTH): the same principal with a new token
    /// grant, which decides what is delivered from now on.
    Reauthenticated(Arc<crate::auth::Identity>),
}

/// Messages to the router.
pub(crate) enum RouterMsg {
    Connect(Box<ConnectRequest>),
    Inbound {
        conn: ConnId,
        items: Vec<Inbound>,
    },
    /// The connection ended; `send_will` is false after a normal DISCONNECT.
    Closed {
        conn: ConnId,
        send_will: bool,
        session_expiry: Option<u32>,
    },
    /// Health probe and sync point: answered once everything the router received before
    /// it has been handed to the connections.
    Ping(oneshot::Sender<()>),
    /// A retained change the publisher's acknowledgement waits for is durable (`ok`) or
    /// failed (router/state.rs).
    StateStored {
        hold: u64,
        ok: bool,
    },
}

/// CONNACK properties carrying only a reason string (refusals).
pub(crate) fn refusal_properties(reason: &str) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: Some(reason.to_string()),
        user_properties: vec![],
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
