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
//! - `AUTH` encoding miscomputes its length and the v5 `FixedHeader` does not even
//!   know packet type 15: tollgate never sends or accepts AUTH (no enhanced
//!   authentication); a client AUTH is a protocol error.
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

mod reader;

pub mod fuzz_logic;

#[cfg(test)]
mod tests;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
pub use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::Error as V5Error;
pub use rumqttc::v5::mqttbytes::QoS;

use self::reader::{Reader, Section};
use crate::topic::{self, TopicError};

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
    /// The v5 CONNACK/DISCONNECT reason code for this error: 0x81 malformed packet,
    /// 0x82 protocol error, 0x83 implementation specific error, 0x84 unsupported
    /// protocol version, 0x85 client identifier not valid, 0x8F topic filter invalid,
    /// 0x90 topic name invalid, 0x95 packet too large.
    pub fn reason_code(&self) -> u8 {
        match self {
            CodecError::PacketTooLarge { .. } => 0x95,
            CodecError::Malformed { .. } | CodecError::DecoderPanic { .. } => 0x81,
            CodecError::Protocol { .. } | CodecError::NotConnect { .. } => 0x82,
            CodecError::UnsupportedProtocol { .. } => 0x84,
            CodecError::ClientIdRejected { .. } => 0x85,
            CodecError::TopicName { source, .. } => {
                if is_encoding_error(source) {
                    0x81
                } else {
                    0x90
                }
            }
            CodecError::TopicFilter { source, .. } => {
                if is_encoding_error(source) {
                    0x81
                } else {
                    0x8F
                }
            }
            CodecError::Encode { .. } | CodecError::EncoderPanic { .. } => 0x83,
        }
    }

    /// For errors in a CONNECT: the MQTT 3.1.1 CONNACK return code to send before
    /// closing (1 unacceptable protocol version, 2 identifier rejected), or `None`
    /// when the connection must just be closed.
    pub fn connack_v311_code(&self) -> Option<u8> {
        match self {
            CodecError::UnsupportedProtocol { name, .. } if name == "MQTT" || name == "MQIsdp" => {
                Some(1)
            }
            CodecError::ClientIdRejected { .. } => Some(2),
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

/// A complete fixed header.
#[derive(Debug, Clone, Copy)]
struct Header {
    byte1: u8,
    /// Fixed header length: 1 + remaining-length bytes.
    len: usize,
    remaining: usize,
}

impl Header {
    fn total(&self) -> usize {
        self.len + self.remaining
    }

    fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    fn name(&self) -> &'static str {
        packet_name(self.packet_type())
    }

    fn v5(&self) -> v5::FixedHeader {
        v5::FixedHeader::new(self.byte1, self.len - 1, self.remaining)
    }

    fn v4(&self) -> m4::FixedHeader {
        m4::FixedHeader::new(self.byte1, self.len - 1, self.remaining)
    }
}

/// Parses the fixed header; `Ok(None)` while it is incomplete.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Header {
                byte1,
                len: 2 + i,
                remaining,
            }));
        }
    }
    Err(CodecError::Malformed {
        packet: packet_name(byte1 >> 4),
        reason: "remaining length is longer than 4 bytes".into(),
    })
}

/// Frames the next packet: `Ok(None)` (buffer untouched) until it is complete,
/// then splits it off `buf`.
fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(Header, Bytes)>, CodecError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    if header.total() > max {
        return Err(CodecError::PacketTooLarge {
            packet: header.name(),
            size: header.total(),
            max,
        });
    }
    if buf.len() < header.total() {
        return Ok(None);
    }
    Ok(Some((header, buf.split_to(header.total()).freeze())))
}

/// First packet on a connection. `Ok(None)` = need more bytes (buffer untouched).
/// Never panics.
///
/// Checks: the first packet is CONNECT with fixed-header flags 0, protocol name
/// `MQTT` at level 4 or 5 (`MQIsdp` level 3 is refused with 3.1.1 return code 1),
/// reserved connect flag 0, will flags consistent (will QoS 3, will QoS/retain
/// without will flag are malformed), password without user name malformed in 3.1.1
/// (fine in v5), client id/user name UTF-8 and free of NUL and control characters,
/// will topic a valid topic name, v5 properties valid (Authentication Data without
/// Authentication Method is a protocol error), nothing after the last field, and an
/// empty client id with clean session 0 in 3.1.1 rejected (return code 2). The
/// password is returned as raw bytes.
pub fn decode_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<ConnectPacket>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 >> 4 != 1 {
        return Err(CodecError::NotConnect {
            packet: packet_name(byte1 >> 4),
        });
    }
    if byte1 & 0x0f != 0 {
        return Err(CodecError::Malformed {
            packet: "CONNECT",
            reason: format!("fixed header flags must be 0, got 0x{:X}", byte1 & 0x0f),
        });
    }
    let Some((header, frame)) = next_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    match catch_unwind(AssertUnwindSafe(|| parse_connect(header, &frame))) {
        Ok(result) => result.map(Some),
        Err(_) => Err(CodecError::DecoderPanic { packet: "CONNECT" }),
    }
}

/// The protocol version a (possibly incomplete) CONNECT at the start of `buf` asks
/// for, once its first bytes are there; `None` if unknown or not `MQTT` level 4/5.
/// Call it before [`decode_connect`] (which consumes the frame) to know whether a
/// refused CONNECT may be answered with a v5 CONNACK carrying
/// [`CodecError::reason_code`] (MQTT 5 §4.13.1) or, for 3.1.1, only with
/// [`CodecError::connack_v311_code`].
pub fn peek_connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    let header = parse_header(buf).ok().flatten()?;
    if header.byte1 != 0x10 {
        return None;
    }
    match buf.get(header.len..header.len + 7)? {
        [0, 4, b'M', b'Q', b'T', b'T', 4] => Some(ProtocolVersion::V311),
        [0, 4, b'M', b'Q', b'T', b'T', 5] => Some(ProtocolVersion::V5),
        _ => None,
    }
}

fn parse_connect(header: Header, frame: &Bytes) -> Result<ConnectPacket, CodecError> {
    let mut r = Reader::new(frame, header.len, "CONNECT");
    let name = r.raw("protocol name")?;
    let level = r.u8("protocol level")?;
    let version = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        _ => {
            return Err(CodecError::UnsupportedProtocol {
                name: String::from_utf8_lossy(name).into_owned(),
                level,
            })
        }
    };
    let flags = r.u8("connect flags")?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if flags & 0x01 != 0 {
        return Err(r.malformed("the reserved connect flag (bit 0) must be 0"));
    }
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(r.malformed("will QoS or will retain is set without the will flag"));
    }
    if will_qos == 3 {
        return Err(r.malformed("will QoS 3 is not a valid QoS"));
    }
    if version == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(r.malformed(
            "the password flag is set without the user name flag (not allowed in MQTT 3.1.1)",
        ));
    }
    let keep_alive = r.u16("keep alive")?;

    let properties = if version == ProtocolVersion::V5 {
        let start = r.position();
        let scanned = reader::scan(&mut r, Section::Connect)?;
        if scanned.auth_data && !scanned.auth_method {
            return Err(r.protocol("Authentication Data without Authentication Method"));
        }
        let mut section = r.since(start);
        let props = delegate_v5("CONNECT", || v5::ConnectProperties::read(&mut section))?;
        expect_consumed("CONNECT", &section)?;
        props
    } else {
        None
    };

    let client_id = r.string("client identifier")?.to_owned();
    let clean_start = flags & 0x02 != 0;
    if version == ProtocolVersion::V311 && client_id.is_empty() && !clean_start {
        return Err(CodecError::ClientIdRejected {
            client_id,
            reason: "an empty client identifier requires clean session = 1 in MQTT 3.1.1",
        });
    }

    let will = if will_flag {
        let will_properties = if version == ProtocolVersion::V5 {
            let start = r.position();
            reader::scan(&mut r, Section::Will)?;
            let mut section = r.since(start);
            let props = delegate_v5("CONNECT", || v5::LastWillProperties::read(&mut section))?;
            expect_consumed("CONNECT", &section)?;
            props
        } else {
            None
        };
        let topic_start = r.position() + 2;
        let raw_topic = r.raw("will topic")?;
        let topic_str =
            topic::topic_from_bytes(raw_topic).map_err(|source| CodecError::TopicName {
                packet: "CONNECT",
                source,
            })?;
        topic::validate_topic_name(topic_str).map_err(|source| CodecError::TopicName {
            packet: "CONNECT",
            source,
        })?;
        let topic = frame.slice(topic_start..topic_start + raw_topic.len());
        let message = r.binary("will payload")?;
        Some(v5::LastWill {
            topic,
            message,
            qos: qos_from_bits(will_qos),
            retain: will_retain,
            properties: will_properties,
        })
    } else {
        None
    };

    let username = if username_flag {
        Some(r.string("user name")?.to_owned())
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    r.finish()?;

    Ok(ConnectPacket {
        version,
        connect: v5::Connect {
            keep_alive,
            client_id,
            clean_start,
            properties,
        },
        will,
        username,
        password,
    })
}

/// Encodes a CONNECT (as a client would send it) for `connect.version`. The broker
/// never sends CONNECT; this exists for tests, fuzz seeds and tools.
pub fn encode_connect(connect: &ConnectPacket, buf: &mut BytesMut) -> Result<usize, CodecError> {
    let v5 = connect.version == ProtocolVersion::V5;
    let err = |reason: &str| CodecError::Encode {
        packet: "CONNECT",
        version: connect.version,
        reason: reason.to_owned(),
    };
    let mut body = BytesMut::with_capacity(64);
    put_prefixed(&mut body, b"MQTT").map_err(|_| err("protocol name"))?;
    body.put_u8(if v5 { 5 } else { 4 });
    let mut flags = 0u8;
    if connect.connect.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &connect.will {
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if connect.password.is_some() {
        flags |= 0x40;
    }
    if connect.username.is_some() {
        flags |= 0x80;
    }
    body.put_u8(flags);
    body.put_u16(connect.connect.keep_alive);
    if v5 {
        match &connect.connect.properties {
            Some(p) => p
                .write(&mut body)
                .map_err(|e| err(&format!("properties: {e}")))?,
            None => body.put_u8(0),
        }
    }
    put_prefixed(&mut body, connect.connect.client_id.as_bytes())
        .map_err(|_| err("client identifier longer than 65535 bytes"))?;
    if let Some(will) = &connect.will {
        if v5 {
            match &will.properties {
                Some(p) => p
                    .write(&mut body)
                    .map_err(|e| err(&format!("will properties: {e}")))?,
                None => body.put_u8(0),
            }
        }
        put_prefixed(&mut body, &will.topic).map_err(|_| err("will topic too long"))?;
        put_prefixed(&mut body, &will.message).map_err(|_| err("will payload too long"))?;
    }
    if let Some(username) = &connect.username {
        put_prefixed(&mut body, username.as_bytes()).map_err(|_| err("user name too long"))?;
    }
    if let Some(password) = &connect.password {
        put_prefixed(&mut body, password).map_err(|_| err("password too long"))?;
    }
    let start = buf.len();
    buf.put_u8(0x10);
    put_remaining_length(buf, body.len()).map_err(|_| err("packet too long"))?;
    buf.extend_from_slice(&body);
    Ok(buf.len() - start)
}

/// Encode a server v5 DISCONNECT with any reason code the specification allows
/// (rumqttc's `DisconnectReasonCode` lacks some, e.g. 0x8C Bad authentication method)
/// and a reason string, cut at a character boundary to stay under `max_len` bytes in
/// total (the client's Maximum Packet Size); returns the bytes written.
pub fn encode_v5_disconnect(code: u8, reason: &str, max_len: usize, buf: &mut BytesMut) -> usize {
    // Fixed header (≤ 3 bytes here) + code + property length (≤ 2) + id + string length.
    let budget = max_len.saturating_sub(9).min(1024);
    let mut end = reason.len().min(budget);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let start = buf.len();
    let properties = if reason.is_empty() {
        0
    } else {
        3 + reason.len()
    };
    let remaining = 1 + remaining_length_len(properties) + properties;
    buf.put_u8(0xE0);
    // Both lengths are below 2 KiB, far inside the variable-length range.
    let _ = put_remaining_length(buf, remaining);
    buf.put_u8(code);
    let _ = put_remaining_length(buf, properties);
    if !reason.is_empty() {
        buf.put_u8(0x1F);
        let _ = put_prefixed(buf, reason);
    }
    buf.len() - start
}

fn put_prefixed(buf: &mut BytesMut, data: &[u8]) -> Result<(), ()> {
    let len = u16::try_from(data.len()).map_err(|_| ())?;
    buf.put_u16(len);
    buf.extend_from_slice(data);
    Ok(())
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) -> Result<(), ()> {
    if len > MAX_REMAINING_LENGTH {
        return Err(());
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
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

/// Runs an mqttbytes v5 reader; its errors mean tollgate's pre-validation and
/// mqttbytes disagree, reported as malformed.
fn delegate_v5<T>(
    packet: &'static str,
    f: impl FnOnce() -> Result<T, V5Error>,
) -> Result<T, CodecError> {
    f().map_err(|e| CodecError::Malformed {
        packet,
        reason: format!("rejected by the mqttbytes v5 decoder: {e}"),
    })
}

fn delegate_v4<T>(
    packet: &'static str,
    f: impl FnOnce() -> Result<T, m4::Error>,
) -> Result<T, CodecError> {
    f().map_err(|e| CodecError::Malformed {
        packet,
        reason: format!("rejected by the mqttbytes v4 decoder: {e}"),
    })
}

fn expect_consumed(packet: &'static str, rest: &Bytes) -> Result<(), CodecError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CodecError::Malformed {
            packet,
            reason: format!(
                "{} bytes of a property section were not consumed by the mqttbytes decoder",
                rest.len()
            ),
        })
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

    /// Decodes the next client packet. `Ok(None)` = need more bytes (buffer
    /// untouched). v3.1.1 packets are returned as the equivalent v5 packet (no
    /// properties; SUBSCRIBE filters get default v5 options; DISCONNECT becomes
    /// reason 0x00). A second CONNECT is [`CodecError::Protocol`]; AUTH (v5) is a
    /// protocol error since enhanced authentication is never negotiated. A v5
    /// PUBLISH may have an empty topic (the connection resolves topic aliases and
    /// must refuse an empty topic without alias); a 3.1.1 one may not. Never panics.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<v5::Packet>, CodecError> {
        let Some(&byte1) = buf.first() else {
            return Ok(None);
        };
        self.check_first_byte(byte1)?;
        let Some((header, frame)) = next_frame(buf, self.max_incoming)? else {
            return Ok(None);
        };
        match catch_unwind(AssertUnwindSafe(|| self.decode_frame(header, frame))) {
            Ok(result) => result.map(Some),
            Err(_) => Err(CodecError::DecoderPanic {
                packet: header.name(),
            }),
        }
    }

    /// Packet type and fixed-header flags, checked before the body arrives.
    fn check_first_byte(&self, byte1: u8) -> Result<(), CodecError> {
        let packet_type = byte1 >> 4;
        let flags = byte1 & 0x0f;
        let packet = packet_name(packet_type);
        let malformed = |reason: String| CodecError::Malformed { packet, reason };
        let protocol = |reason: &str| CodecError::Protocol {
            packet,
            reason: reason.to_owned(),
        };
        let expected_flags = match packet_type {
            0 => return Err(malformed("packet type 0 is reserved".into())),
            1 => return Err(protocol("a second CONNECT on an established connection")),
            2 | 9 | 11 | 13 => return Err(protocol("only a server may send this packet")),
            15 if self.version == ProtocolVersion::V5 => {
                return Err(protocol(
                    "AUTH received, but enhanced authentication was not negotiated",
                ))
            }
            15 => return Err(malformed("packet type 15 is reserved in MQTT 3.1.1".into())),
            3 => {
                let qos = (flags >> 1) & 0x03;
                if qos == 3 {
                    return Err(malformed("QoS 3 is not a valid QoS".into()));
                }
                if qos == 0 && flags & 0x08 != 0 {
                    return Err(malformed(
                        "the DUP flag must be 0 on a QoS 0 PUBLISH".into(),
                    ));
                }
                return Ok(());
            }
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        if flags != expected_flags {
            return Err(malformed(format!(
                "fixed header flags must be 0x{expected_flags:X}, got 0x{flags:X}"
            )));
        }
        Ok(())
    }

    fn decode_frame(&self, header: Header, frame: Bytes) -> Result<v5::Packet, CodecError> {
        let v5 = self.version == ProtocolVersion::V5;
        let name = header.name();
        let mut r = Reader::new(&frame, header.len, name);
        match header.packet_type() {
            3 => {
                let qos = (header.byte1 >> 1) & 0x03;
                let topic_start = r.position() + 2;
                let raw_topic = r.raw("topic name")?;
                check_publish_topic(raw_topic, v5)?;
                let topic = frame.slice(topic_start..topic_start + raw_topic.len());
                let pkid = if qos > 0 {
                    let pkid = r.u16("packet identifier")?;
                    if pkid == 0 {
                        return Err(r.malformed("packet identifier 0 on a QoS 1/2 PUBLISH"));
                    }
                    pkid
                } else {
                    0
                };
                let mut properties = None;
                if v5 {
                    let start = r.position();
                    reader::scan(&mut r, Section::Publish)?;
                    // An empty section is the one byte 0; anything else goes to mqttbytes.
                    if r.position() - start > 1 {
                        let mut section = r.since(start);
                        properties =
                            delegate_v5(name, || v5::PublishProperties::read(&mut section))?;
                        expect_consumed(name, &section)?;
                    }
                }
                // Assembled here from the validated frame (zero-copy, no allocation);
                // `fuzz_logic` checks it equals mqttbytes' `Publish::read` on every input.
                Ok(v5::Packet::Publish(v5::Publish {
                    dup: header.byte1 & 0x08 != 0,
                    qos: qos_from_bits(qos),
                    retain: header.byte1 & 0x01 != 0,
                    topic,
                    pkid,
                    payload: r.rest(),
                    properties,
                }))
            }
            4..=7 => self.decode_ack(header, frame.clone(), r),
            8 => {
                let pkid = r.u16("packet identifier")?;
                if pkid == 0 {
                    return Err(r.malformed("packet identifier 0 on SUBSCRIBE"));
                }
                if v5 {
                    reader::scan(&mut r, Section::Subscribe)?;
                }
                if r.remaining() == 0 {
                    return Err(r.protocol("SUBSCRIBE without any topic filter"));
                }
                while r.remaining() > 0 {
                    let filter = r.string("topic filter")?;
                    let options = r.u8("subscription options")?;
                    check_subscription(filter, options, v5)?;
                }
                if v5 {
                    let s = delegate_v5(name, || v5::Subscribe::read(header.v5(), frame.clone()))?;
                    Ok(v5::Packet::Subscribe(s))
                } else {
                    let s =
                        delegate_v4(name, || m4::v4::Subscribe::read(header.v4(), frame.clone()))?;
                    Ok(v5::Packet::Subscribe(v5::Subscribe {
                        pkid: s.pkid,
                        filters: s
                            .filters
                            .into_iter()
                            .map(|f| v5::Filter {
                                path: f.path,
                                qos: qos_from_v4(f.qos),
                                nolocal: false,
                                preserve_retain: false,
                                retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                            })
                            .collect(),
                        properties: None,
                    }))
                }
            }
            10 => {
                let pkid = r.u16("packet identifier")?;
                if pkid == 0 {
                    return Err(r.malformed("packet identifier 0 on UNSUBSCRIBE"));
                }
                if v5 {
                    reader::scan(&mut r, Section::Unsubscribe)?;
                }
                if r.remaining() == 0 {
                    return Err(r.protocol("UNSUBSCRIBE without any topic filter"));
                }
                while r.remaining() > 0 {
                    let filter = r.string("topic filter")?;
                    topic::validate_topic_filter(filter).map_err(|source| {
                        CodecError::TopicFilter {
                            packet: "UNSUBSCRIBE",
                            source,
                        }
                    })?;
                }
                if v5 {
                    let u =
                        delegate_v5(name, || v5::Unsubscribe::read(header.v5(), frame.clone()))?;
                    Ok(v5::Packet::Unsubscribe(u))
                } else {
                    let u = delegate_v4(name, || {
                        m4::v4::Unsubscribe::read(header.v4(), frame.clone())
                    })?;
                    Ok(v5::Packet::Unsubscribe(v5::Unsubscribe {
                        pkid: u.pkid,
                        filters: u.topics,
                        properties: None,
                    }))
                }
            }
            12 => {
                r.finish()?;
                Ok(v5::Packet::PingReq(v5::PingReq))
            }
            14 => {
                if !v5 || header.remaining == 0 {
                    r.finish()?;
                    return Ok(v5::Packet::Disconnect(v5::Disconnect::new(
                        v5::DisconnectReasonCode::NormalDisconnection,
                    )));
                }
                let code = r.u8("reason code")?;
                let reason_code = v5::DisconnectReasonCode::try_from(code).map_err(|_| {
                    r.malformed(format!("0x{code:02X} is not a DISCONNECT reason code"))
                })?;
                if header.remaining == 1 {
                    return Ok(v5::Packet::Disconnect(v5::Disconnect::new(reason_code)));
                }
                reader::scan(&mut r, Section::Disconnect)?;
                r.finish()?;
                let d = delegate_v5(name, || v5::Disconnect::read(header.v5(), frame.clone()))?;
                Ok(v5::Packet::Disconnect(d))
            }
            other => Err(CodecError::Malformed {
                packet: packet_name(other),
                reason: "unexpected packet type".into(),
            }),
        }
    }

    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    fn decode_ack(
        &self,
        header: Header,
        frame: Bytes,
        mut r: Reader<'_>,
    ) -> Result<v5::Packet, CodecError> {
        let name = header.name();
        let pkid = r.u16("packet identifier")?;
        if pkid == 0 {
            return Err(r.malformed("packet identifier 0"));
        }
        if self.version == ProtocolVersion::V311 {
            r.finish()?;
            return Ok(match header.packet_type() {
                4 => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
                5 => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
                6 => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
                _ => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
            });
        }
        if r.remaining() > 0 {
            r.u8("reason code")?;
            if r.remaining() > 0 {
                reader::scan(&mut r, Section::Ack)?;
                r.finish()?;
            }
        }
        let fh = header.v5();
        Ok(match header.packet_type() {
            4 => v5::Packet::PubAck(delegate_v5(name, || v5::PubAck::read(fh, frame))?),
            5 => v5::Packet::PubRec(delegate_v5(name, || v5::PubRec::read(fh, frame))?),
            6 => v5::Packet::PubRel(delegate_v5(name, || v5::PubRel::read(fh, frame))?),
            _ => v5::Packet::PubComp(delegate_v5(name, || v5::PubComp::read(fh, frame))?),
        })
    }

    /// Encodes `packet` for this connection's version directly into `buf` and
    /// returns the number of bytes written. On any error nothing is left in `buf`.
    ///
    /// For 3.1.1 clients the v5 packet is mapped to its v4 form: properties are
    /// dropped, PUBACK/PUBREC/PUBREL/PUBCOMP reason codes vanish (plain acks),
    /// SUBACK keeps granted QoS 0/1/2 and turns every failure into 0x80, UNSUBACK
    /// loses its reason codes, CONNACK codes become 3.1.1 return codes (0x84 → 1,
    /// 0x85 → 2, 0x86/0x8C → 4, 0x87/0x9F → 5, everything else → 3 server
    /// unavailable), and a server DISCONNECT does not exist in 3.1.1: nothing is
    /// written and `Ok(0)` is returned (the caller just closes the connection).
    /// A PUBLISH with an empty topic (alias only) cannot be sent to a 3.1.1 client.
    pub fn encode(&self, packet: &v5::Packet, buf: &mut BytesMut) -> Result<usize, CodecError> {
        let start = buf.len();
        let result = catch_unwind(AssertUnwindSafe(|| match self.version {
            ProtocolVersion::V5 => encode_v5(packet, buf),
            ProtocolVersion::V311 => encode_v311(packet, buf),
        }));
        match result {
            Ok(Ok(())) => Ok(buf.len() - start),
            Ok(Err(e)) => {
                buf.truncate(start);
                Err(e)
            }
            Err(_) => {
                buf.truncate(start);
                Err(CodecError::EncoderPanic {
                    packet: v5_packet_name(packet),
                })
            }
        }
    }

    /// Size in bytes `packet` takes on the wire for this connection's version (for
    /// checking a client's Maximum Packet Size before sending).
    pub fn encoded_len(&self, packet: &v5::Packet) -> usize {
        match (self.version, packet) {
            (ProtocolVersion::V311, v5::Packet::Publish(p)) => {
                let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
                let remaining = 2 + p.topic.len() + pkid + p.payload.len();
                1 + remaining_length_len(remaining) + remaining
            }
            (ProtocolVersion::V5, v5::Packet::Publish(p)) => p.size(),
            _ => {
                let mut scratch = BytesMut::new();
                self.encode(packet, &mut scratch).unwrap_or(0)
            }
        }
    }
}

/// Byte classes for the PUBLISH topic fast path: 0 printable ASCII, 1 needs the
/// full UTF-8/code point check, 2 wildcard.
const TOPIC_BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if i < 0x20 || i >= 0x7f {
            1
        } else if i == b'+' as usize || i == b'#' as usize {
            2
        } else {
            0
        };
        i += 1;
    }
    table
};

/// Topic name of an incoming PUBLISH: UTF-8, no NUL/control characters, no
/// wildcards; empty only in v5 (topic alias).
fn check_publish_topic(raw: &[u8], v5: bool) -> Result<(), CodecError> {
    let err = |source| CodecError::TopicName {
        packet: "PUBLISH",
        source,
    };
    if raw.is_empty() {
        return if v5 {
            Ok(())
        } else {
            Err(err(TopicError::Empty))
        };
    }
    // One pass over printable ASCII, the common case.
    let class = raw
        .iter()
        .fold(0u8, |acc, &b| acc | TOPIC_BYTE_CLASS[usize::from(b)]);
    if class == 0 {
        return Ok(());
    }
    let topic = topic::topic_from_bytes(raw).map_err(err)?;
    if raw.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(err(TopicError::WildcardInName(topic.to_owned())));
    }
    Ok(())
}

/// One SUBSCRIBE filter and its options byte.
fn check_subscription(filter: &str, options: u8, v5: bool) -> Result<(), CodecError> {
    let malformed = |reason: String| CodecError::Malformed {
        packet: "SUBSCRIBE",
        reason,
    };
    let reserved = if v5 { 0xc0 } else { 0xfc };
    if options & reserved != 0 {
        return Err(malformed(format!(
            "reserved bits of the subscription options for `{filter}` are set (0x{options:02X})"
        )));
    }
    if options & 0x03 == 3 {
        return Err(malformed(format!("QoS 3 requested for `{filter}`")));
    }
    if v5 && (options >> 4) & 0x03 == 3 {
        return Err(CodecError::Protocol {
            packet: "SUBSCRIBE",
            reason: format!("retain handling 3 requested for `{filter}`"),
        });
    }
    let shared = topic::parse_shared(filter).map_err(|source| CodecError::TopicFilter {
        packet: "SUBSCRIBE",
        source,
    })?;
    if shared.is_none() {
        topic::validate_topic_filter(filter).map_err(|source| CodecError::TopicFilter {
            packet: "SUBSCRIBE",
            source,
        })?;
    } else if v5 && options & 0x04 != 0 {
        return Err(CodecError::Protocol {
            packet: "SUBSCRIBE",
            reason: format!("No Local set on the shared subscription `{filter}`"),
        });
    }
    Ok(())
}

fn encode_error(
    packet: &v5::Packet,
    version: ProtocolVersion,
    reason: impl Into<String>,
) -> CodecError {
    CodecError::Encode {
        packet: v5_packet_name(packet),
        version,
        reason: reason.into(),
    }
}

fn check_outgoing_publish(
    packet: &v5::Packet,
    p: &v5::Publish,
    version: ProtocolVersion,
) -> Result<(), CodecError> {
    let fail = |reason: &str| Err(encode_error(packet, version, reason));
    if p.qos != QoS::AtMostOnce && p.pkid == 0 {
        return fail("packet identifier 0 on a QoS 1/2 PUBLISH");
    }
    if p.topic.len() > topic::MAX_TOPIC_LEN {
        return fail("topic longer than 65535 bytes");
    }
    // mqttbytes truncates longer length prefixes silently, corrupting the stream;
    // in-process publishers can build such properties, network ones cannot.
    if let (ProtocolVersion::V5, Some(props)) = (version, &p.properties) {
        let too_long = |s: &[u8]| s.len() > usize::from(u16::MAX);
        let strings_too_long = props
            .response_topic
            .as_deref()
            .is_some_and(|s| too_long(s.as_bytes()))
            || props
                .content_type
                .as_deref()
                .is_some_and(|s| too_long(s.as_bytes()))
            || props.correlation_data.as_deref().is_some_and(too_long)
            || props
                .user_properties
                .iter()
                .any(|(k, v)| too_long(k.as_bytes()) || too_long(v.as_bytes()));
        if strings_too_long {
            return fail("a property string or binary value is longer than 65535 bytes");
        }
        if props
            .subscription_identifiers
            .iter()
            .any(|&id| id == 0 || id > MAX_REMAINING_LENGTH)
        {
            return fail("subscription identifier outside 1..=268435455");
        }
    }
    Ok(())
}

fn encode_v5(packet: &v5::Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
    let v = ProtocolVersion::V5;
    let write_err = |e: V5Error| encode_error(packet, v, format!("mqttbytes: {e}"));
    match packet {
        v5::Packet::Publish(p) => {
            check_outgoing_publish(packet, p, v)?;
            p.write(buf).map_err(write_err)?;
        }
        v5::Packet::Disconnect(d) if d.properties.is_none() => {
            // mqttbytes writes a stray byte for a reason code without properties.
            buf.put_u8(0xe0);
            if d.reason_code == v5::DisconnectReasonCode::NormalDisconnection {
                buf.put_u8(0);
            } else {
                buf.put_u8(1);
                buf.put_u8(d.reason_code as u8);
            }
        }
        v5::Packet::ConnAck(ack) => {
            let code = match ack.code {
                // mqttbytes panics on the 3.1.1-only codes; use their v5 equivalents.
                v5::ConnectReturnCode::RefusedProtocolVersion => {
                    v5::ConnectReturnCode::UnsupportedProtocolVersion
                }
                v5::ConnectReturnCode::BadClientId => {
                    v5::ConnectReturnCode::ClientIdentifierNotValid
                }
                v5::ConnectReturnCode::ServiceUnavailable => {
                    v5::ConnectReturnCode::ServerUnavailable
                }
                other => other,
            };
            // Session Present must be 0 on a refusal (MQTT 5 §3.2.2.1.1).
            let session_present = ack.session_present && code == v5::ConnectReturnCode::Success;
            if code == ack.code && session_present == ack.session_present {
                ack.write(buf).map_err(write_err)?;
            } else {
                let mut ack = ack.clone();
                ack.code = code;
                ack.session_present = session_present;
                ack.write(buf).map_err(write_err)?;
            }
        }
        v5::Packet::Auth(_) => {
            return Err(encode_error(
                packet,
                v,
                "tollgate does not implement enhanced authentication (AUTH)",
            ))
        }
        other => {
            other.write(buf, None).map_err(write_err)?;
        }
    }
    Ok(())
}

/// v5 CONNACK code → 3.1.1 return code.
pub fn connack_code_v311(code: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => 0,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 1,
        C::BadClientId | C::ClientIdentifierNotValid => 2,
        C::BadUserNamePassword | C::BadAuthenticationMethod => 4,
        C::NotAuthorized | C::ConnectionRateExceeded => 5,
        _ => 3,
    }
}

fn encode_v311(packet: &v5::Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
    let v = ProtocolVersion::V311;
    let write_err = |e: m4::Error| encode_error(packet, v, format!("mqttbytes: {e}"));
    match packet {
        v5::Packet::Publish(p) => {
            check_outgoing_publish(packet, p, v)?;
            if p.topic.is_empty() {
                return Err(encode_error(
                    packet,
                    v,
                    "empty topic (topic alias only) cannot be sent to an MQTT 3.1.1 client",
                ));
            }
            let pkid_len = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            let remaining = 2 + p.topic.len() + pkid_len + p.payload.len();
            if remaining > MAX_REMAINING_LENGTH {
                return Err(encode_error(packet, v, "packet longer than MQTT allows"));
            }
            buf.reserve(1 + remaining_length_len(remaining) + remaining);
            buf.put_u8(0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain));
            put_remaining_length(buf, remaining)
                .map_err(|_| encode_error(packet, v, "too long"))?;
            put_prefixed(buf, &p.topic).map_err(|_| encode_error(packet, v, "topic too long"))?;
            if pkid_len > 0 {
                buf.put_u16(p.pkid);
            }
            buf.extend_from_slice(&p.payload);
        }
        v5::Packet::PubAck(a) => {
            m4::v4::PubAck::new(a.pkid).write(buf).map_err(write_err)?;
        }
        v5::Packet::PubRec(a) => {
            m4::v4::PubRec::new(a.pkid).write(buf).map_err(write_err)?;
        }
        v5::Packet::PubRel(a) => {
            m4::v4::PubRel::new(a.pkid).write(buf).map_err(write_err)?;
        }
        v5::Packet::PubComp(a) => {
            m4::v4::PubComp::new(a.pkid).write(buf).map_err(write_err)?;
        }
        v5::Packet::SubAck(s) => {
            let return_codes = s
                .return_codes
                .iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => {
                        m4::v4::SubscribeReasonCode::Success(qos_to_v4(*q))
                    }
                    _ => m4::v4::SubscribeReasonCode::Failure,
                })
                .collect();
            m4::v4::SubAck::new(s.pkid, return_codes)
                .write(buf)
                .map_err(write_err)?;
        }
        v5::Packet::UnsubAck(u) => {
            m4::v4::UnsubAck::new(u.pkid)
                .write(buf)
                .map_err(write_err)?;
        }
        v5::Packet::ConnAck(c) => {
            let code = connack_code_v311(c.code);
            buf.put_u8(0x20);
            buf.put_u8(2);
            // Session Present must be 0 on a refusal (MQTT 3.1.1 §3.2.2.2).
            buf.put_u8(u8::from(c.session_present && code == 0));
            buf.put_u8(code);
        }
        v5::Packet::PingResp(_) => {
            buf.put_u8(0xd0);
            buf.put_u8(0);
        }
        v5::Packet::PingReq(_) => {
            buf.put_u8(0xc0);
            buf.put_u8(0);
        }
        v5::Packet::Disconnect(_) => {}
        v5::Packet::Subscribe(s) => {
            let filters = s
                .filters
                .iter()
                .map(|f| m4::v4::SubscribeFilter::new(f.path.clone(), qos_to_v4(f.qos)))
                .collect();
            m4::v4::Subscribe {
                pkid: s.pkid,
                filters,
            }
            .write(buf)
            .map_err(write_err)?;
        }
        v5::Packet::Unsubscribe(u) => {
            m4::v4::Unsubscribe {
                pkid: u.pkid,
                topics: u.filters.clone(),
            }
            .write(buf)
            .map_err(write_err)?;
        }
        v5::Packet::Connect(..) => {
            return Err(encode_error(
                packet,
                v,
                "CONNECT is encoded with encode_connect",
            ));
        }
        v5::Packet::Auth(_) => {
            return Err(encode_error(packet, v, "AUTH does not exist in MQTT 3.1.1"));
        }
    }
    Ok(())
}
