//! Encoding: v5 packets written for a v5 or a v3.1.1 client (properties and reason
//! codes dropped, CONNACK and SUBACK codes mapped for 3.1.1), the server DISCONNECT
//! written by hand, and CONNECT for tests and tools. It must never leave half a
//! packet in the buffer nor panic: mqttbytes' writers run inside `catch_unwind` and
//! the buffer is truncated back on any error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::v5::mqttbytes::Error as V5Error;

use super::{qos_to_v4, AuthFields, AuthReason, MAX_REMAINING_LENGTH};
use super::{v5, v5_packet_name, Codec, CodecError, ConnectPacket, ProtocolVersion, QoS};
use crate::broker::reason::ReasonCode;
use crate::topic;

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

/// A v5 AUTH (MQTT 5 §3.15): reason code, then the properties in the order Method,
/// Data, Reason String, User Properties. A Success without properties is the short
/// form (remaining length 0).
fn encode_auth(auth: &v5::Auth, buf: &mut BytesMut) -> Result<(), &'static str> {
    let code = AuthReason::of(auth).as_u8();
    let mut props = BytesMut::new();
    if let Some(p) = AuthFields::of(auth) {
        let too_long = "an AUTH property is longer than 65535 bytes";
        if let Some(method) = &p.method {
            props.put_u8(0x15);
            put_prefixed(&mut props, method.as_bytes()).map_err(|_| too_long)?;
        }
        if let Some(data) = &p.data {
            props.put_u8(0x16);
            put_prefixed(&mut props, data).map_err(|_| too_long)?;
        }
        if let Some(reason) = &p.reason {
            props.put_u8(0x1F);
            put_prefixed(&mut props, reason.as_bytes()).map_err(|_| too_long)?;
        }
        for (key, value) in &p.user_properties {
            props.put_u8(0x26);
            put_prefixed(&mut props, key.as_bytes()).map_err(|_| too_long)?;
            put_prefixed(&mut props, value.as_bytes()).map_err(|_| too_long)?;
        }
    }
    buf.put_u8(0xF0);
    if code == 0 && props.is_empty() {
        buf.put_u8(0);
        return Ok(());
    }
    let remaining = 1 + remaining_length_len(props.len()) + props.len();
    put_remaining_length(buf, remaining).map_err(|_| "AUTH longer than MQTT allows")?;
    buf.put_u8(code);
    put_remaining_length(buf, props.len()).map_err(|_| "AUTH longer than MQTT allows")?;
    buf.extend_from_slice(&props);
    Ok(())
}

fn put_prefixed(buf: &mut BytesMut, data: &[u8]) -> Result<(), ()> {
    let len = u16::try_from(data.len()).map_err(|_| ())?;
    buf.put_u16(len);
    buf.extend_from_slice(data);
    Ok(())
}

pub(super) fn put_remaining_length(buf: &mut BytesMut, mut len: usize) -> Result<(), ()> {
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

impl Codec {
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
            // mqttbytes panics on the 3.1.1-only codes; use their v5 equivalents.
            let code = ReasonCode::from_connect_return_code(ack.code).connect_return_code();
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
        v5::Packet::Auth(a) => {
            // mqttbytes miscounts the property length of AUTH: written here.
            encode_auth(a, buf).map_err(|reason| encode_error(packet, v, reason))?;
        }
        other => {
            other.write(buf, None).map_err(write_err)?;
        }
    }
    Ok(())
}

/// v5 CONNACK code → 3.1.1 return code.
pub fn connack_code_v311(code: v5::ConnectReturnCode) -> u8 {
    ReasonCode::from_connect_return_code(code).connack_v311()
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
                    // Every refusal (ReasonCode::suback_v311): mqttbytes writes 0x80.
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
