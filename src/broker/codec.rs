//! Packet codec: rumqttc's mqttbytes (v4 and v5) wrapped so that no input can panic,
//! with v3.1.1 packets mapped onto the v5 types the rest of the broker speaks.
//!
//! It owns the bytes ↔ packet boundary of a client connection and nothing else: it
//! never decides what a packet *means* for a session (second CONNECT handling is
//! reported as an error here, topic aliases, Receive Maximum and authorization are
//! the connection task's), never logs payloads, never copies payloads (frames are
//! split off the read buffer as `Bytes`) and must never panic, whatever the input.
//!
//! # How decoding works
//! 1. tollgate frames the packet itself: packet type and fixed-header flags are
//!    checked on the very first byte, the remaining length (≤ 4 bytes) and the size
//!    limit as soon as the header is complete, before the body has arrived.
//! 2. tollgate validates the body structurally (`codec/reader.rs`): every length against
//!    the bytes left, packet identifiers ≠ 0, property sections (allowed identifiers
//!    per packet, no duplicates, values in range, strings valid), subscription
//!    options, trailing bytes, topic names and filters.
//! 3. Only then is the frame handed to mqttbytes to build the packet structs, inside
//!    `catch_unwind`, so a decoder panic becomes [`CodecError::DecoderPanic`].
//!    Two exceptions: CONNECT is parsed by tollgate (mqttbytes checks neither the
//!    reserved flag nor binary passwords), and PUBLISH, the hot path, is assembled
//!    by tollgate from the validated frame without allocating (mqttbytes' v3.1.1
//!    reader allocates the topic); property sections of both still go through
//!    mqttbytes, and `fuzz_logic` asserts that every PUBLISH tollgate accepts is
//!    read identically by mqttbytes' `Packet::read`.
//!
//! # rumqttc 0.25.1 behaviours relied on or worked around (each has a unit test)
//! - `Packet::read` (v5) refuses `DISCONNECT` with remaining length 0 and `Disconnect::read`
//!   refuses remaining length 1 (reason code without properties), both legal: decoded here.
//! - `Disconnect::write` (v5) with a reason code but no properties writes a stray
//!   byte after the packet: DISCONNECT is encoded here.
//! - `ConnAck::write` (v5) panics (`unreachable!`) on the 3.1.1-only return codes:
//!   they are mapped to their v5 equivalents before encoding.
//! - `Publish::write` (both) writes half a packet before refusing packet id 0 on
//!   QoS > 0: checked first, and the buffer is truncated back on any encode error.
//! - `Login` (both) holds the password as `String`: binary passwords are parsed here.
//! - mqttbytes accepts CONNACK/SUBACK/UNSUBACK/PINGRESP from a client, ignores
//!   fixed-header flags (except DISCONNECT v5), the reserved CONNECT flag, reserved
//!   subscription option bits, trailing bytes in acks and property sections whose
//!   length disagrees with their content, and `max_size` compares the *remaining*
//!   length only: all of these are checked here instead.
//! - `AUTH` encoding miscomputes its length, `AuthProperties::read` miscounts string
//!   properties and the v5 `FixedHeader` does not even know packet type 15: AUTH is
//!   decoded and encoded here (MQTT 5 §3.15: the short forms with remaining length 0
//!   or 1, reason codes 0x00/0x18/0x19 only, Method/Data/Reason String/User
//!   Property). Whether an AUTH is allowed (only after a CONNECT with an
//!   Authentication Method) is the connection's decision, not the codec's.
//! - `Publish::read` (v5) and the property readers return `Bytes` slices of the
//!   frame (no copy); topic bytes are not checked for UTF-8 or wildcards there.
//!
//! # Memory
//! Decoded payloads, topics and will messages are slices of the connection's read
//! buffer and keep that allocation alive. Anything stored for long (retained
//! messages, offline queues) should be compacted with `Bytes::copy_from_slice` so a
//! 10-byte retained message does not pin a whole read buffer.
//!
//! # Left to the connection task
//! Topic alias range (including alias 0) and resolution, an empty v5 topic without
//! alias, Receive Maximum, a v5 DISCONNECT session expiry that was 0 at CONNECT,
//! payload format validation (0x99 is optional), authorization.
//!
//! # MQTT 3.1 (`MQIsdp`, level 3)
//! Refused: [`CodecError::UnsupportedProtocol`] with 3.1.1 CONNACK return code 1.

mod decode;
mod encode;
mod reader;

pub mod fuzz_logic;

#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;
use rumqttc::mqttbytes as m4;
pub use rumqttc::v5::mqttbytes::v5;
pub use rumqttc::v5::mqttbytes::QoS;

use super::reason::ReasonCode;
use crate::topic::TopicError;

pub use decode::{decode_connect, peek_connect_version};
pub use encode::{connack_code_v311, encode_connect, encode_v5_disconnect};

/// Largest value the MQTT remaining length can express.
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// MQTT protocol version of a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5",
        })
    }
}

/// A decoded CONNECT, for either protocol version, in v5 terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    /// Protocol level the client asked for.
    pub version: ProtocolVersion,
    /// Client id, keep alive, clean start/session and (v5) properties.
    pub connect: v5::Connect,
    /// Last will; topic validated as a topic name, properties only in v5.
    pub will: Option<v5::LastWill>,
    /// User name (UTF-8, may be empty when the flag is set with an empty string).
    pub username: Option<String>,
    /// Password as raw bytes: MQTT passwords are binary data.
    pub password: Option<Bytes>,
}

/// An AUTH reason code (MQTT 5 §3.15.2.1). rumqttc does not export its
/// `AuthReasonCode`, so AUTH packets are made and told apart through this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthReason {
    /// 0x00: authentication (or re-authentication) succeeded.
    Success,
    /// 0x18: another step of the exchange follows.
    ContinueAuthentication,
    /// 0x19: the client starts a re-authentication.
    ReAuthenticate,
}

impl AuthReason {
    /// The reason code byte.
    pub fn as_u8(self) -> u8 {
        match self {
            AuthReason::Success => 0x00,
            AuthReason::ContinueAuthentication => 0x18,
            AuthReason::ReAuthenticate => 0x19,
        }
    }

    /// The reason code of `byte`, if it is one of the three.
    pub fn from_u8(byte: u8) -> Option<AuthReason> {
        [
            AuthReason::Success,
            AuthReason::ContinueAuthentication,
            AuthReason::ReAuthenticate,
        ]
        .into_iter()
        .find(|r| r.as_u8() == byte)
    }

    /// The reason code of a decoded AUTH.
    pub fn of(auth: &v5::Auth) -> AuthReason {
        [
            AuthReason::ContinueAuthentication,
            AuthReason::ReAuthenticate,
        ]
        .into_iter()
        .find(|r| r.packet(None).code == auth.code)
        .unwrap_or(AuthReason::Success)
    }

    /// An AUTH with this reason code and these properties.
    pub fn packet(self, fields: Option<AuthFields>) -> v5::Auth {
        // rumqttc exports neither the reason code type nor `AuthProperties`: its reader
        // is their only constructor (given one Authentication Data, the one property
        // its reader counts right), and the fields are public.
        let wire = Bytes::copy_from_slice(&[0xF0, 5, self.as_u8(), 3, 0x16, 0, 0]);
        let mut auth = v5::Auth::read(v5::FixedHeader::new(0xF0, 1, 5), wire)
            .expect("rumqttc reads the three AUTH reason codes with empty data");
        match (fields, auth.properties.as_mut()) {
            (Some(f), Some(p)) => {
                p.method = f.method;
                p.data = f.data;
                p.reason = f.reason;
                p.user_properties = f.user_properties;
            }
            _ => auth.properties = None,
        }
        auth
    }
}

/// The properties of an AUTH (MQTT 5 §3.15.2.2), in a type tollgate can name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFields {
    /// Authentication Method (0x15).
    pub method: Option<String>,
    /// Authentication Data (0x16).
    pub data: Option<Bytes>,
    /// Reason String (0x1F).
    pub reason: Option<String>,
    /// User Properties (0x26), in order.
    pub user_properties: Vec<(String, String)>,
}

impl AuthFields {
    /// The properties of a decoded AUTH (`None` when it had none).
    pub fn of(auth: &v5::Auth) -> Option<AuthFields> {
        auth.properties.as_ref().map(|p| AuthFields {
            method: p.method.clone(),
            data: p.data.clone(),
            reason: p.reason.clone(),
            user_properties: p.user_properties.clone(),
        })
    }
}

/// Why bytes from a client could not be turned into a packet (or a packet into
/// bytes). Every variant maps to the v5 reason code the broker sends back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Bigger than the configured maximum packet size (v5 0x95).
    #[error("{packet} packet of {size} bytes exceeds the maximum packet size of {max} bytes; the client must send smaller packets or [broker] max_packet_size must be raised")]
    PacketTooLarge {
        /// Packet type.
        packet: &'static str,
        /// Total size announced by the fixed header.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// Not valid MQTT on the wire (v5 0x81).
    #[error("malformed {packet} packet: {reason}")]
    Malformed {
        /// Packet type.
        packet: &'static str,
        /// What exactly is wrong.
        reason: String,
    },
    /// Well formed, but not allowed here (v5 0x82).
    #[error("protocol error in {packet} packet: {reason}")]
    Protocol {
        /// Packet type.
        packet: &'static str,
        /// What exactly is wrong.
        reason: String,
    },
    /// Something other than CONNECT opened the connection (close, v5 0x82).
    #[error("the first packet on a connection must be CONNECT, got {packet}")]
    NotConnect {
        /// Packet type received.
        packet: &'static str,
    },
    /// Protocol name/level tollgate does not speak (v5 0x84, 3.1.1 return code 1).
    #[error("unsupported protocol `{name}` level {level}; tollgate speaks MQTT 3.1.1 (`MQTT` level 4) and MQTT 5 (`MQTT` level 5)")]
    UnsupportedProtocol {
        /// Protocol name from CONNECT (lossy UTF-8).
        name: String,
        /// Protocol level from CONNECT.
        level: u8,
    },
    /// Client identifier refused by a protocol rule (v5 0x85, 3.1.1 return code 2).
    #[error("client identifier `{client_id}` rejected: {reason}")]
    ClientIdRejected {
        /// The identifier sent.
        client_id: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// Bad topic name in PUBLISH or a will (v5 0x90, or 0x81 for encoding errors).
    #[error("invalid topic name in {packet} packet: {source}")]
    TopicName {
        /// Packet type.
        packet: &'static str,
        /// The topic rule broken.
        #[source]
        source: TopicError,
    },
    /// Bad topic filter in SUBSCRIBE/UNSUBSCRIBE (v5 0x8F, or 0x81 for encoding errors).
    #[error("invalid topic filter in {packet} packet: {source}")]
    TopicFilter {
        /// Packet type.
        packet: &'static str,
        /// The filter rule broken.
        #[source]
        source: TopicError,
    },
    /// A packet tollgate cannot put on the wire for this client (internal, v5 0x83).
    #[error("cannot encode {packet} for an MQTT {version} client: {reason}")]
    Encode {
        /// Packet type.
        packet: &'static str,
        /// Client protocol version.
        version: ProtocolVersion,
        /// Why.
        reason: String,
    },
    /// mqttbytes panicked; the input is treated as malformed (v5 0x81).
    #[error("the mqttbytes decoder panicked on a {packet} packet; treated as malformed (a tollgate bug, please report it with the client's packet capture)")]
    DecoderPanic {
        /// Packet type.
        packet: &'static str,
    },
    /// mqttbytes panicked while encoding; nothing was written (v5 0x83).
    #[error("the mqttbytes encoder panicked on a {packet} packet; nothing was sent (a tollgate bug, please report it)")]
    EncoderPanic {
        /// Packet type.
        packet: &'static str,
    },
}

impl CodecError {
    /// The v5 CONNACK/DISCONNECT reason code for this error: malformed packet,
    /// protocol error, implementation specific error, unsupported protocol version,
    /// client identifier not valid, topic filter invalid, topic name invalid or
    /// packet too large.
    pub fn reason(&self) -> ReasonCode {
        match self {
            CodecError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            CodecError::Malformed { .. } | CodecError::DecoderPanic { .. } => {
                ReasonCode::MalformedPacket
            }
            CodecError::Protocol { .. } | CodecError::NotConnect { .. } => {
                ReasonCode::ProtocolError
            }
            CodecError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            CodecError::ClientIdRejected { .. } => ReasonCode::ClientIdentifierNotValid,
            CodecError::TopicName { source, .. } => {
                if is_encoding_error(source) {
                    ReasonCode::MalformedPacket
                } else {
                    ReasonCode::TopicNameInvalid
                }
            }
            CodecError::TopicFilter { source, .. } => {
                if is_encoding_error(source) {
                    ReasonCode::MalformedPacket
                } else {
                    ReasonCode::TopicFilterInvalid
                }
            }
            CodecError::Encode { .. } | CodecError::EncoderPanic { .. } => {
                ReasonCode::ImplementationSpecificError
            }
        }
    }

    /// [`CodecError::reason`] as its byte (0x81 malformed packet, 0x82 protocol
    /// error, 0x83 implementation specific error, 0x84 unsupported protocol version,
    /// 0x85 client identifier not valid, 0x8F topic filter invalid, 0x90 topic name
    /// invalid, 0x95 packet too large).
    pub fn reason_code(&self) -> u8 {
        self.reason().as_u8()
    }

    /// For errors in a CONNECT: the MQTT 3.1.1 CONNACK return code to send before
    /// closing (1 unacceptable protocol version, 2 identifier rejected), or `None`
    /// when the connection must just be closed.
    pub fn connack_v311_code(&self) -> Option<u8> {
        match self {
            CodecError::UnsupportedProtocol { name, .. } if name == "MQTT" || name == "MQIsdp" => {
                Some(self.reason().connack_v311())
            }
            CodecError::ClientIdRejected { .. } => Some(self.reason().connack_v311()),
            _ => None,
        }
    }
}

/// Invalid UTF-8/NUL/control characters are malformed packets, not topic refusals.
fn is_encoding_error(e: &TopicError) -> bool {
    matches!(
        e,
        TopicError::NotUtf8 { .. }
            | TopicError::Nul { .. }
            | TopicError::DisallowedCodePoint { .. }
            | TopicError::TooLong { .. }
    )
}

/// Name of a packet type (high nibble of the first byte), for errors and logs.
pub fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved (type 0)",
    }
}

/// Name of a v5 packet, for errors and logs.
pub fn v5_packet_name(packet: &v5::Packet) -> &'static str {
    match packet {
        v5::Packet::Auth(_) => "AUTH",
        v5::Packet::Connect(..) => "CONNECT",
        v5::Packet::ConnAck(_) => "CONNACK",
        v5::Packet::Publish(_) => "PUBLISH",
        v5::Packet::PubAck(_) => "PUBACK",
        v5::Packet::PingReq(_) => "PINGREQ",
        v5::Packet::PingResp(_) => "PINGRESP",
        v5::Packet::Subscribe(_) => "SUBSCRIBE",
        v5::Packet::SubAck(_) => "SUBACK",
        v5::Packet::PubRec(_) => "PUBREC",
        v5::Packet::PubRel(_) => "PUBREL",
        v5::Packet::PubComp(_) => "PUBCOMP",
        v5::Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        v5::Packet::UnsubAck(_) => "UNSUBACK",
        v5::Packet::Disconnect(_) => "DISCONNECT",
    }
}

fn qos_from_bits(bits: u8) -> QoS {
    match bits {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    }
}

fn qos_to_v4(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn qos_from_v4(qos: m4::QoS) -> QoS {
    match qos {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}
/// The codec of one established connection.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Protocol version fixed by the connection's CONNECT.
    pub version: ProtocolVersion,
    /// Largest packet (fixed header included) accepted from the client, in bytes.
    pub max_incoming: usize,
}

impl Codec {
    /// A codec for a connection that negotiated `version`.
    pub fn new(version: ProtocolVersion, max_incoming: usize) -> Codec {
        Codec {
            version,
            max_incoming,
        }
    }
}
