//! Bounds-checked reading of MQTT wire data and the MQTT 5 property scanner.
//!
//! This is tollgate's own structural check that runs *before* a frame is handed to
//! mqttbytes: every length is checked against what is left, property sections must
//! end exactly where their length says, and property identifiers, duplicates and
//! values are validated per packet type. It never panics and never copies payloads.

use std::ops::Range;

use bytes::Bytes;

use super::CodecError;
use crate::topic;

/// A cursor over one frame (or a bounded part of it).
pub(super) struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    end: usize,
    packet: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `data[start..]`, naming `packet` in errors.
    pub(super) fn new(data: &'a Bytes, start: usize, packet: &'static str) -> Reader<'a> {
        let start = start.min(data.len());
        Reader {
            data,
            pos: start,
            end: data.len(),
            packet,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub(super) fn position(&self) -> usize {
        self.pos
    }

    pub(super) fn malformed(&self, reason: impl Into<String>) -> CodecError {
        CodecError::Malformed {
            packet: self.packet,
            reason: reason.into(),
        }
    }

    pub(super) fn protocol(&self, reason: impl Into<String>) -> CodecError {
        CodecError::Protocol {
            packet: self.packet,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>, CodecError> {
        if n > self.remaining() {
            return Err(self.malformed(format!(
                "{what} needs {n} bytes but only {} are left in the packet",
                self.remaining()
            )));
        }
        let range = self.pos..self.pos + n;
        self.pos += n;
        Ok(range)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        let r = self.take(1, what)?;
        Ok(self.data[r.start])
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        let r = self.take(2, what)?;
        Ok(u16::from_be_bytes([
            self.data[r.start],
            self.data[r.start + 1],
        ]))
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        let r = self.take(4, what)?;
        let b = &self.data[r];
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer (at most four bytes).
    pub(super) fn varint(&mut self, what: &str) -> Result<usize, CodecError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8(what)?;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed(format!(
            "{what} is a variable byte integer longer than 4 bytes"
        )))
    }

    /// Two-byte length followed by that many bytes; returns their range.
    pub(super) fn prefixed(&mut self, what: &str) -> Result<Range<usize>, CodecError> {
        let len = usize::from(self.u16(what)?);
        self.take(len, what)
    }

    /// Like [`Reader::prefixed`], as a zero-copy `Bytes`.
    pub(super) fn binary(&mut self, what: &str) -> Result<Bytes, CodecError> {
        let r = self.prefixed(what)?;
        Ok(self.data.slice(r))
    }

    /// Two-byte length prefixed raw bytes, borrowed.
    pub(super) fn raw(&mut self, what: &str) -> Result<&'a [u8], CodecError> {
        let r = self.prefixed(what)?;
        let data: &'a Bytes = self.data;
        Ok(&data[r])
    }

    /// A UTF-8 Encoded String: valid UTF-8, no U+0000, no control or non-characters.
    pub(super) fn string(&mut self, what: &str) -> Result<&'a str, CodecError> {
        let raw = self.raw(what)?;
        let s = std::str::from_utf8(raw).map_err(|e| {
            self.malformed(format!(
                "{what} is not valid UTF-8 (first invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        topic::check_code_points(s).map_err(|e| self.malformed(format!("{what}: {e}")))?;
        Ok(s)
    }

    /// The bytes from `start` to the current position, zero-copy.
    pub(super) fn since(&self, start: usize) -> Bytes {
        self.data.slice(start..self.pos)
    }

    /// Everything left, zero-copy (the position moves to the end).
    pub(super) fn rest(&mut self) -> Bytes {
        let b = self.data.slice(self.pos..self.end);
        self.pos = self.end;
        b
    }

    /// Fails if anything is left after the last field of a packet.
    pub(super) fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.malformed(format!("{n} unexpected bytes after the end of the packet"))),
        }
    }
}

/// A property section of a client-to-server packet (MQTT 5 §2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Connect,
    Will,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Section {
    /// Property identifiers a client may send in this section.
    fn allowed(self) -> &'static [u8] {
        match self {
            Section::Connect => &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16],
            Section::Will => &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26],
            Section::Publish => &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x03],
            Section::Ack => &[0x1f, 0x26],
            Section::Subscribe => &[0x0b, 0x26],
            Section::Unsubscribe => &[0x26],
            Section::Disconnect => &[0x11, 0x1f, 0x26, 0x1c],
            Section::Auth => &[0x15, 0x16, 0x1f, 0x26],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Section::Connect => "CONNECT properties",
            Section::Will => "will properties",
            Section::Publish => "PUBLISH properties",
            Section::Ack => "acknowledgement properties",
            Section::Subscribe => "SUBSCRIBE properties",
            Section::Unsubscribe => "UNSUBSCRIBE properties",
            Section::Disconnect => "DISCONNECT properties",
            Section::Auth => "AUTH properties",
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Byte,
    TwoByte,
    FourByte,
    VarInt,
    Utf8,
    Binary,
    Pair,
}

fn property(id: u8) -> Option<(Kind, &'static str)> {
    Some(match id {
        0x01 => (Kind::Byte, "Payload Format Indicator"),
        0x02 => (Kind::FourByte, "Message Expiry Interval"),
        0x03 => (Kind::Utf8, "Content Type"),
        0x08 => (Kind::Utf8, "Response Topic"),
        0x09 => (Kind::Binary, "Correlation Data"),
        0x0b => (Kind::VarInt, "Subscription Identifier"),
        0x11 => (Kind::FourByte, "Session Expiry Interval"),
        0x12 => (Kind::Utf8, "Assigned Client Identifier"),
        0x13 => (Kind::TwoByte, "Server Keep Alive"),
        0x15 => (Kind::Utf8, "Authentication Method"),
        0x16 => (Kind::Binary, "Authentication Data"),
        0x17 => (Kind::Byte, "Request Problem Information"),
        0x18 => (Kind::FourByte, "Will Delay Interval"),
        0x19 => (Kind::Byte, "Request Response Information"),
        0x1a => (Kind::Utf8, "Response Information"),
        0x1c => (Kind::Utf8, "Server Reference"),
        0x1f => (Kind::Utf8, "Reason String"),
        0x21 => (Kind::TwoByte, "Receive Maximum"),
        0x22 => (Kind::TwoByte, "Topic Alias Maximum"),
        0x23 => (Kind::TwoByte, "Topic Alias"),
        0x24 => (Kind::Byte, "Maximum QoS"),
        0x25 => (Kind::Byte, "Retain Available"),
        0x26 => (Kind::Pair, "User Property"),
        0x27 => (Kind::FourByte, "Maximum Packet Size"),
        0x28 => (Kind::Byte, "Wildcard Subscription Available"),
        0x29 => (Kind::Byte, "Subscription Identifier Available"),
        0x2a => (Kind::Byte, "Shared Subscription Available"),
        _ => return None,
    })
}

/// What the scanner learnt that later checks need.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Scanned {
    /// Authentication Method present (CONNECT, AUTH).
    pub auth_method: bool,
    /// Authentication Data present (CONNECT, AUTH).
    pub auth_data: bool,
}

/// Validates one property section (length + properties) starting at the reader's
/// position and leaves the reader just after it.
pub(super) fn scan(r: &mut Reader<'_>, which: Section) -> Result<Scanned, CodecError> {
    let section = which.name();
    let allowed = which.allowed();
    let len = r.varint("property length")?;
    if len > r.remaining() {
        return Err(r.malformed(format!(
            "{section} length {len} exceeds the {} bytes left in the packet",
            r.remaining()
        )));
    }
    let range = r.take(len, section)?;
    let mut p = Reader {
        data: r.data,
        pos: range.start,
        end: range.end,
        packet: r.packet,
    };
    let mut seen = 0u64;
    let mut scanned = Scanned::default();
    while p.remaining() > 0 {
        let id = p.u8("property identifier")?;
        let Some((kind, name)) = property(id) else {
            return Err(p.malformed(format!(
                "unknown property identifier 0x{id:02X} in {section}"
            )));
        };
        if !allowed.contains(&id) {
            if id == 0x0b && which == Section::Publish {
                return Err(
                    p.protocol("a client must not send a Subscription Identifier in PUBLISH")
                );
            }
            return Err(p.malformed(format!(
                "property {name} (0x{id:02X}) is not allowed in {section}"
            )));
        }
        if id != 0x26 {
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(p.protocol(format!(
                    "property {name} appears more than once in {section}"
                )));
            }
            seen |= bit;
        }
        match kind {
            Kind::Byte => {
                let v = p.u8(name)?;
                if matches!(id, 0x01 | 0x17 | 0x19) && v > 1 {
                    return Err(p.protocol(format!("{name} must be 0 or 1, got {v}")));
                }
            }
            Kind::TwoByte => {
                let v = p.u16(name)?;
                if id == 0x21 && v == 0 {
                    return Err(p.protocol("Receive Maximum must not be 0"));
                }
            }
            Kind::FourByte => {
                let v = p.u32(name)?;
                if id == 0x27 && v == 0 {
                    return Err(p.protocol("Maximum Packet Size must not be 0"));
                }
            }
            Kind::VarInt => {
                let v = p.varint(name)?;
                if v == 0 {
                    return Err(p.protocol(format!("{name} must not be 0")));
                }
            }
            Kind::Utf8 => {
                let s = p.string(name)?;
                if id == 0x08 {
                    topic::validate_topic_name(s).map_err(|e| {
                        p.protocol(format!("Response Topic is not a valid topic name: {e}"))
                    })?;
                }
                if id == 0x15 {
                    scanned.auth_method = true;
                }
            }
            Kind::Binary => {
                p.prefixed(name)?;
                if id == 0x16 {
                    scanned.auth_data = true;
                }
            }
            Kind::Pair => {
                p.string("User Property name")?;
                p.string("User Property value")?;
            }
        }
    }
    Ok(scanned)
}
