//! A byte-level MQTT 3.1.1/5 client over a plain TCP socket, for the tests that must see
//! every byte the gateway answers: AUTH (which rumqttc 0.25 cannot read), DISCONNECTs
//! that rumqttc hides, closes without a packet. Packets are written by the small
//! encoders here (the exact bytes a test sends are in one place) and read whole as
//! [`Packet`]s: (packet type, flags, body), never more than [`MAX_REMAINING`] bytes.
//!
//! Tests that need malformed bytes on purpose write them as literal arrays; these
//! encoders only write well-formed packets.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wait::WAIT;

/// The largest remaining length the reader accepts: far above anything the tests
/// exchange, so a larger one is a broken length, not a packet to wait for.
pub const MAX_REMAINING: usize = 1 << 20;

/// MQTT packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

/// v5 property ids the tests read or write.
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REASON_STRING: u8 = 0x1F;

// ---- encoders -----------------------------------------------------------------------

/// An MQTT variable byte integer.
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    assert!(n <= 268_435_455, "{n} does not fit a variable byte integer");
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A whole packet: the first byte, the remaining length, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

/// A two-byte length and the bytes (an MQTT string or binary data).
pub fn string(s: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(s.len()).expect("an MQTT string is at most 65,535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

/// v5 properties with their length in front: each `(id, value)` is a string or binary
/// property (the only kinds the tests write).
pub fn string_properties(items: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in items {
        p.push(*id);
        string(value, &mut p);
    }
    let mut out = Vec::new();
    varint(p.len(), &mut out);
    out.extend_from_slice(&p);
    out
}

/// Authentication Method (0x15) and Data (0x16) properties, each when given, with their
/// length in front.
pub fn auth_properties(method: Option<&str>, data: Option<&str>) -> Vec<u8> {
    let mut items: Vec<(u8, &[u8])> = Vec::new();
    if let Some(m) = method {
        items.push((AUTHENTICATION_METHOD, m.as_bytes()));
    }
    if let Some(d) = data {
        items.push((AUTHENTICATION_DATA, d.as_bytes()));
    }
    string_properties(&items)
}

/// A CONNECT: [`Connect::new`] gives clean start, keep alive 60 s, no will, no
/// properties; the fields say the rest.
pub struct Connect<'a> {
    pub v5: bool,
    pub id: &'a str,
    pub clean: bool,
    pub keep_alive: u16,
    /// A will at this QoS, to the topic `will/t` with the payload `gone`.
    pub will_qos: Option<u8>,
    /// v5 CONNECT properties with their length in front (`None`: an empty set).
    pub properties: Option<Vec<u8>>,
}

impl<'a> Connect<'a> {
    pub fn new(v5: bool, id: &'a str) -> Connect<'a> {
        Connect {
            v5,
            id,
            clean: true,
            keep_alive: 60,
            will_qos: None,
            properties: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        string(b"MQTT", &mut b);
        b.push(if self.v5 { 5 } else { 4 });
        let will = self.will_qos.map_or(0, |q| 0x04 | (q << 3));
        b.push(if self.clean { 0x02 } else { 0 } | will);
        b.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.v5 {
            b.extend_from_slice(self.properties.as_deref().unwrap_or(&[0]));
        } else {
            assert!(self.properties.is_none(), "3.1.1 has no properties");
        }
        string(self.id.as_bytes(), &mut b);
        if self.will_qos.is_some() {
            if self.v5 {
                b.push(0);
            }
            string(b"will/t", &mut b);
            string(b"gone", &mut b);
        }
        packet(0x10, &b)
    }
}

/// A clean-start CONNECT with keep alive 60 s and optionally a will at `will_qos`.
pub fn connect(v5: bool, id: &str, will_qos: Option<u8>) -> Vec<u8> {
    Connect {
        will_qos,
        ..Connect::new(v5, id)
    }
    .encode()
}

/// A PUBLISH (no properties on v5; the packet id only above QoS 0).
pub fn publish(v5: bool, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic.as_bytes(), &mut b);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

/// A SUBSCRIBE of one filter; `options` is the QoS byte (3.1.1) or the subscription
/// options (v5: QoS, No Local 0x04, ...).
pub fn subscribe(v5: bool, filter: &str, options: u8, pkid: u16) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    string(filter.as_bytes(), &mut b);
    b.push(options);
    packet(0x82, &b)
}

/// An AUTH with `reason`, the method when given, and `data` as Authentication Data.
pub fn auth(reason: u8, method: Option<&str>, data: &str) -> Vec<u8> {
    let mut b = vec![reason];
    b.extend_from_slice(&auth_properties(method, Some(data)));
    packet(0xF0, &b)
}

/// A PUBACK in its short form (both versions: v5 reason Success).
pub fn puback(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0];

/// DISCONNECT in its short form (v5: reason Normal disconnection).
pub const DISCONNECT_NORMAL: [u8; 2] = [0xE0, 0];

// ---- reader -------------------------------------------------------------------------

/// One packet as read: its type (high nibble), flags (low nibble) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// The parts of a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    /// The packet id (QoS 1 and 2 only).
    pub pkid: Option<u16>,
    pub payload: Vec<u8>,
}

impl Packet {
    /// The parts of this PUBLISH (`v5`: properties between packet id and payload).
    pub fn publish(&self, v5: bool) -> Publish {
        assert_eq!(self.kind, PUBLISH, "expected a PUBLISH, got {self:?}");
        let body = &self.body;
        let tlen = usize::from(u16::from_be_bytes([at(body, 0), at(body, 1)]));
        let topic = slice(body, 2, 2 + tlen);
        let qos = (self.flags >> 1) & 0x03;
        let mut i = 2 + tlen;
        let pkid = (qos > 0).then(|| {
            i += 2;
            u16::from_be_bytes([at(body, i - 2), at(body, i - 1)])
        });
        if v5 {
            let (len, used) = read_varint(body, i);
            i += used + len;
        }
        Publish {
            topic: String::from_utf8_lossy(topic).into_owned(),
            qos,
            pkid,
            payload: slice(body, i, body.len()).to_vec(),
        }
    }

    /// Where the v5 reason code and properties of this packet type stand: CONNACK after
    /// its flags; PUBACK to PUBCOMP after the packet id; DISCONNECT and AUTH first.
    fn reason_offset(&self) -> usize {
        match self.kind {
            CONNACK => 1,
            4..=7 => 2,
            DISCONNECT | AUTH => 0,
            other => panic!("packet type {other} has no single reason code: {self:?}"),
        }
    }

    /// The reason code (CONNACK's return code on 3.1.1); an absent one is Success.
    pub fn reason_code(&self) -> u8 {
        self.body.get(self.reason_offset()).copied().unwrap_or(0)
    }

    /// The v5 properties (id, value bytes), empty where the packet ends before them.
    pub fn properties(&self) -> Vec<(u8, Vec<u8>)> {
        let at = self.reason_offset() + 1;
        if self.body.len() <= at {
            return Vec::new();
        }
        properties(&self.body, at)
    }

    /// The v5 Reason String, or "" where there is none.
    pub fn reason_string(&self) -> String {
        string_property(&self.properties(), REASON_STRING).unwrap_or_default()
    }

    /// (reason code, reason string) of a v5 CONNACK, PUBACK, DISCONNECT or AUTH.
    pub fn reason(&self) -> (u8, String) {
        (self.reason_code(), self.reason_string())
    }
}

/// `body[i]`, failing with the body where it is too short.
fn at(body: &[u8], i: usize) -> u8 {
    *body
        .get(i)
        .unwrap_or_else(|| panic!("packet body too short: no byte {i} in {body:?}"))
}

fn slice(body: &[u8], from: usize, to: usize) -> &[u8] {
    body.get(from..to)
        .unwrap_or_else(|| panic!("packet body too short: no bytes {from}..{to} in {body:?}"))
}

/// A variable byte integer at `body[at..]`: (value, bytes used); at most four bytes.
pub fn read_varint(body: &[u8], start: usize) -> (usize, usize) {
    let mut value = 0usize;
    for i in 0..4 {
        let b = at(body, start + i);
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("variable byte integer longer than four bytes at {start} in {body:?}")
}

/// The v5 properties at `body[start..]` (length first) as (id, value bytes), for the
/// ids a broker sends; an unknown id fails naming it.
pub fn properties(body: &[u8], start: usize) -> Vec<(u8, Vec<u8>)> {
    let (len, used) = read_varint(body, start);
    let mut i = start + used;
    let end = i + len;
    let _ = slice(body, i, end);
    let two = |i: usize| usize::from(u16::from_be_bytes([at(body, i), at(body, i + 1)]));
    let mut out = Vec::new();
    while i < end {
        let id = body[i];
        i += 1;
        let size = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => read_varint(body, i).1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + two(i),
            0x26 => {
                let k = 2 + two(i);
                k + 2 + two(i + k)
            }
            other => panic!("unexpected property {other:#x} in {body:?}"),
        };
        out.push((id, slice(body, i, i + size).to_vec()));
        i += size;
    }
    assert_eq!(i, end, "properties overrun their length in {body:?}");
    out
}

/// A string property's value (lossy UTF-8).
pub fn string_property(props: &[(u8, Vec<u8>)], id: u8) -> Option<String> {
    props
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| String::from_utf8_lossy(&v[2..]).into_owned())
}

/// A two-byte integer property's value.
pub fn u16_property(props: &[(u8, Vec<u8>)], id: u8) -> Option<u16> {
    props
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
}

/// A whole packet at the start of `buf`: (packet, bytes used), or `None` while it is
/// incomplete. A remaining length above [`MAX_REMAINING`], longer than four bytes or not
/// in its shortest form fails.
pub fn split(buf: &[u8]) -> Option<(Packet, usize)> {
    let first = *buf.first()?;
    let (mut len, mut i) = (0usize, 1);
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            assert!(
                i == 2 || b != 0,
                "remaining length not in its shortest form: {:?}",
                &buf[..i]
            );
            break;
        }
        assert!(
            i < 5,
            "remaining length longer than four bytes: {:?}",
            &buf[..i]
        );
    }
    assert!(
        len <= MAX_REMAINING,
        "remaining length {len} above the cap of {MAX_REMAINING}"
    );
    let end = i + len;
    (buf.len() >= end).then(|| {
        let packet = Packet {
            kind: first >> 4,
            flags: first & 0x0F,
            body: buf[i..end].to_vec(),
        };
        (packet, end)
    })
}

/// A raw MQTT connection: bytes out as given, whole packets in as they arrive.
pub struct RawClient {
    /// The socket, for tests that write or read bytes that are no MQTT packet.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn open(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Opened and connected with `connect` (a CONNECT's bytes); the CONNACK as read.
    pub async fn connect(addr: SocketAddr, connect: &[u8]) -> (RawClient, Packet) {
        let mut raw = RawClient::open(addr).await;
        raw.send(connect).await;
        let connack = raw.expect(CONNACK).await;
        (raw, connack)
    }

    /// A clean-start CONNECT (keep alive 60 s) answered by a successful CONNACK.
    pub async fn connected(addr: SocketAddr, v5: bool, id: &str) -> RawClient {
        let (raw, connack) = RawClient::connect(addr, &connect(v5, id, None)).await;
        assert_eq!(
            connack.reason_code(),
            0,
            "{id}: CONNACK success: {connack:?}"
        );
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` when the gateway closed the connection (or reset it)
    /// at a packet boundary; fails when nothing comes within `WAIT` or the close cuts a
    /// packet.
    pub async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some((packet, used)) = split(&self.buf) {
                self.buf.drain(..used);
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the gateway answers or closes within WAIT")
                .unwrap_or(0);
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "closed inside a packet: {:?} left",
                    self.buf
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next packet, which must be of type `kind`.
    pub async fn expect(&mut self, kind: u8) -> Packet {
        match self.next().await {
            Some(p) if p.kind == kind => p,
            other => panic!("expected packet type {kind}, got {other:?}"),
        }
    }

    /// The body of the next packet, which must be of type `kind`.
    pub async fn expect_body(&mut self, kind: u8) -> Vec<u8> {
        self.expect(kind).await.body
    }

    /// The next packet of type `kind`, passing over others; fails on a close.
    pub async fn skip_to(&mut self, kind: u8) -> Packet {
        loop {
            match self.next().await {
                Some(p) if p.kind == kind => return p,
                Some(_) => {}
                None => panic!("closed before a packet of type {kind}"),
            }
        }
    }

    /// Asserts the gateway closes the connection with no further packet.
    pub async fn closed(&mut self, what: &str) {
        if let Some(p) = self.next().await {
            panic!("{what}: expected the close, got {p:?}");
        }
    }

    /// The v5 DISCONNECT that ends the connection, and the close behind it:
    /// (reason code, reason string).
    pub async fn disconnected(&mut self) -> (u8, String) {
        let packet = self.expect(DISCONNECT).await;
        self.closed("after the DISCONNECT").await;
        packet.reason()
    }
}
