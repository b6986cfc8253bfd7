//! Decoding: framing (fixed header, remaining length, size limit before the body
//! arrives), structural validation of every packet body, the CONNECT and PUBLISH
//! parsers, and the hand-over of the other bodies to mqttbytes inside
//! `catch_unwind`. It turns bytes into v5 packets and nothing else: it must never
//! panic, copy a payload or decide what a packet means for a session.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::v5::mqttbytes::Error as V5Error;

use super::reader::{self, Reader, Section};
use super::{
    packet_name, qos_from_bits, qos_from_v4, v5, AuthFields, AuthReason, Codec, CodecError,
    ConnectPacket, ProtocolVersion,
};
use crate::topic::{self, TopicError};

/// A complete fixed header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
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

    pub(super) fn v5(&self) -> v5::FixedHeader {
        v5::FixedHeader::new(self.byte1, self.len - 1, self.remaining)
    }

    pub(super) fn v4(&self) -> m4::FixedHeader {
        m4::FixedHeader::new(self.byte1, self.len - 1, self.remaining)
    }
}

/// Parses the fixed header; `Ok(None)` while it is incomplete.
pub(super) fn parse_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
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
    if header.packet_type() == 3 {
        // A PUBLISH outlives the read (queues, in-flight windows, the retained store):
        // it gets one copy of exactly its packet, so it never pins the read buffer and
        // the buffer stays unshared, reused in place by the next read. Other packets are
        // consumed before the next read and stay views of it.
        let frame = Bytes::copy_from_slice(&buf[..header.total()]);
        buf.advance(header.total());
        return Ok(Some((header, frame)));
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
impl Codec {
    /// Decodes the next client packet. `Ok(None)` = need more bytes (buffer
    /// untouched). v3.1.1 packets are returned as the equivalent v5 packet (no
    /// properties; SUBSCRIBE filters get default v5 options; DISCONNECT becomes
    /// reason 0x00). A second CONNECT is [`CodecError::Protocol`]. AUTH (v5) is
    /// decoded here (mqttbytes' reader miscounts its properties): whether it is
    /// allowed on the connection is the connection's decision. A v5
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
            15 if self.version == ProtocolVersion::V311 => {
                return Err(malformed("packet type 15 is reserved in MQTT 3.1.1".into()))
            }
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
            15 => decode_auth(r, header.remaining),
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

/// The body of a v5 AUTH (MQTT 5 §3.15): remaining length 0 means reason 0x00 without
/// properties, 1 a reason code without properties; the reason code must be 0x00, 0x18
/// or 0x19 (malformed otherwise); properties are Authentication Method, Authentication
/// Data, Reason String and User Property, each (but User Property) at most once.
fn decode_auth(mut r: Reader<'_>, remaining: usize) -> Result<v5::Packet, CodecError> {
    if remaining == 0 {
        return Ok(v5::Packet::Auth(AuthReason::Success.packet(None)));
    }
    let code = r.u8("reason code")?;
    let Some(reason) = AuthReason::from_u8(code) else {
        return Err(r.malformed(format!("0x{code:02X} is not an AUTH reason code")));
    };
    if r.remaining() == 0 {
        return Ok(v5::Packet::Auth(reason.packet(None)));
    }
    let start = r.position();
    reader::scan(&mut r, Section::Auth)?;
    r.finish()?;
    // The section was validated above: walk it again to take the values.
    let section = r.since(start);
    let mut p = Reader::new(&section, 0, "AUTH");
    p.varint("property length")?;
    let mut props = AuthFields::default();
    while p.remaining() > 0 {
        match p.u8("property identifier")? {
            0x15 => props.method = Some(p.string("Authentication Method")?.to_owned()),
            0x16 => props.data = Some(p.binary("Authentication Data")?),
            0x1f => props.reason = Some(p.string("Reason String")?.to_owned()),
            _ => {
                let key = p.string("User Property name")?.to_owned();
                let value = p.string("User Property value")?.to_owned();
                props.user_properties.push((key, value));
            }
        }
    }
    // An empty section reads as no properties, as the short forms do.
    let props = (props != AuthFields::default()).then_some(props);
    Ok(v5::Packet::Auth(reason.packet(props)))
}
