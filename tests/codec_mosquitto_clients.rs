//! The codec against real clients: Debian's `mosquitto_pub` and `mosquitto_sub`
//! (package `mosquitto-clients`) talk to a scripted server on 127.0.0.1 that
//! speaks only through `decode_connect`, `Codec::decode` and `Codec::encode`.
//! Proves that what real clients send decodes as expected (both protocol
//! versions) and that what the codec encodes is understood by them.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Output;

use bytes::{Bytes, BytesMut};
use support::{finish_within, loopback_listener, spawn_peer, WAIT};
use tollgate::broker::codec::{decode_connect, v5, Codec, ConnectPacket, ProtocolVersion, QoS};

const MAX: usize = 1 << 20;

/// One accepted client connection, read and written through the codec.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    codec: Codec,
}

impl Conn {
    fn accept(listener: &TcpListener) -> (Conn, ConnectPacket) {
        let (stream, _) = listener.accept().expect("client connects");
        stream.set_read_timeout(Some(WAIT)).expect("timeout set");
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
            codec: Codec::new(ProtocolVersion::V311, MAX),
        };
        let connect = loop {
            if let Some(c) = decode_connect(&mut conn.buf, MAX).expect("client CONNECT is valid") {
                break c;
            }
            conn.fill();
        };
        conn.codec = Codec::new(connect.version, MAX);
        (conn, connect)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("client sends within the time limit");
        assert!(n > 0, "client closed the connection unexpectedly");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn read(&mut self) -> v5::Packet {
        loop {
            if let Some(p) = self
                .codec
                .decode(&mut self.buf)
                .expect("client packet is valid")
            {
                return p;
            }
            self.fill();
        }
    }

    fn send(&mut self, packet: &v5::Packet) {
        let mut out = BytesMut::new();
        self.codec
            .encode(packet, &mut out)
            .expect("server packet encodes");
        self.stream.write_all(&out).expect("client reads");
    }

    fn connack(&mut self, code: v5::ConnectReturnCode) {
        self.send(&v5::Packet::ConnAck(v5::ConnAck {
            session_present: false,
            code,
            properties: None,
        }));
    }
}

#[test]
fn mosquitto_pub_v5_qos1_with_properties_will_and_credentials() {
    let (listener, port) = loopback_listener();
    let port = port.to_string();
    let child = spawn_peer(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-i",
            "pub-v5",
            "-q",
            "1",
            "-t",
            "sensors/t1",
            "-m",
            "21.5",
            "-u",
            "alice",
            "-P",
            "s3cret",
            "--will-topic",
            "status/pub-v5",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
            "--will-retain",
            "-D",
            "connect",
            "session-expiry-interval",
            "30",
            "-D",
            "publish",
            "user-property",
            "unit",
            "celsius",
            "-D",
            "publish",
            "content-type",
            "text/plain",
        ],
    );
    let (mut conn, connect) = Conn::accept(&listener);
    assert_eq!(connect.version, ProtocolVersion::V5);
    assert_eq!(connect.connect.client_id, "pub-v5");
    assert_eq!(connect.username.as_deref(), Some("alice"));
    assert_eq!(connect.password.as_deref(), Some(&b"s3cret"[..]));
    let props = connect
        .connect
        .properties
        .clone()
        .expect("CONNECT properties");
    assert_eq!(props.session_expiry_interval, Some(30));
    let will = connect.will.expect("will");
    assert_eq!(
        (&will.topic[..], &will.message[..]),
        (&b"status/pub-v5"[..], &b"gone"[..])
    );
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
    conn.connack(v5::ConnectReturnCode::Success);

    let v5::Packet::Publish(p) = conn.read() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos),
        (&b"sensors/t1"[..], &b"21.5"[..], QoS::AtLeastOnce)
    );
    let props = p.properties.expect("PUBLISH properties");
    assert_eq!(
        props.user_properties,
        vec![("unit".to_owned(), "celsius".to_owned())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    conn.send(&v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)));
    assert!(
        matches!(conn.read(), v5::Packet::Disconnect(d) if d.reason_code == v5::DisconnectReasonCode::NormalDisconnection)
    );
    let out = finish_within(child, WAIT);
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mosquitto_pub_v311_qos2_exchange() {
    let (listener, port) = loopback_listener();
    let port = port.to_string();
    let child = spawn_peer(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv311",
            "-i",
            "pub-v4",
            "-q",
            "2",
            "-r",
            "-t",
            "a/b",
            "-m",
            "x",
        ],
    );
    let (mut conn, connect) = Conn::accept(&listener);
    assert_eq!(connect.version, ProtocolVersion::V311);
    assert!(connect.connect.clean_start);
    conn.connack(v5::ConnectReturnCode::Success);
    let v5::Packet::Publish(p) = conn.read() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(
        (p.qos, p.retain, p.properties.is_none()),
        (QoS::ExactlyOnce, true, true)
    );
    conn.send(&v5::Packet::PubRec(v5::PubRec::new(p.pkid, None)));
    assert!(matches!(conn.read(), v5::Packet::PubRel(r) if r.pkid == p.pkid));
    conn.send(&v5::Packet::PubComp(v5::PubComp::new(p.pkid, None)));
    assert!(matches!(conn.read(), v5::Packet::Disconnect(_)));
    let out = finish_within(child, WAIT);
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn subscribe_and_deliver(version: ProtocolVersion) -> Output {
    let (listener, port) = loopback_listener();
    let port = port.to_string();
    let v = if version == ProtocolVersion::V5 {
        "mqttv5"
    } else {
        "mqttv311"
    };
    let child = spawn_peer(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            v,
            "-q",
            "1",
            "-t",
            "sensors/+",
            "-t",
            "$SYS/#",
            "-C",
            "1",
            "-F",
            "%t %p",
        ],
    );
    let (mut conn, connect) = Conn::accept(&listener);
    assert_eq!(connect.version, version);
    conn.connack(v5::ConnectReturnCode::Success);
    let v5::Packet::Subscribe(s) = conn.read() else {
        panic!("expected SUBSCRIBE");
    };
    let filters: Vec<_> = s.filters.iter().map(|f| (f.path.as_str(), f.qos)).collect();
    assert_eq!(
        filters,
        vec![
            ("sensors/+", QoS::AtLeastOnce),
            ("$SYS/#", QoS::AtLeastOnce)
        ]
    );
    conn.send(&v5::Packet::SubAck(v5::SubAck {
        pkid: s.pkid,
        return_codes: vec![
            v5::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            v5::SubscribeReasonCode::NotAuthorized,
        ],
        properties: None,
    }));
    conn.send(&v5::Packet::Publish(v5::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(b"sensors/t1"),
        pkid: 1,
        payload: Bytes::from_static(b"21.5"),
        properties: Some(v5::PublishProperties {
            subscription_identifiers: vec![],
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        }),
    }));
    assert!(matches!(conn.read(), v5::Packet::PubAck(a) if a.pkid == 1));
    assert!(matches!(conn.read(), v5::Packet::Disconnect(_)));
    finish_within(child, WAIT)
}

#[test]
fn mosquitto_sub_v5_receives_what_the_codec_encodes() {
    let out = subscribe_and_deliver(ProtocolVersion::V5);
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/t1 21.5"
    );
}

#[test]
fn mosquitto_sub_v311_receives_what_the_codec_encodes() {
    let out = subscribe_and_deliver(ProtocolVersion::V311);
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sensors/t1 21.5"
    );
}

fn refused(version: &str, code: v5::ConnectReturnCode) -> Output {
    let (listener, port) = loopback_listener();
    let port = port.to_string();
    let child = spawn_peer(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-t",
            "a",
            "-m",
            "x",
        ],
    );
    let (mut conn, _) = Conn::accept(&listener);
    conn.connack(code);
    drop(conn);
    finish_within(child, WAIT)
}

#[test]
fn refusing_connacks_are_understood_by_both_client_versions() {
    let out = refused("mqttv311", v5::ConnectReturnCode::NotAuthorized);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("not authori"),
        "3.1.1 refusal not understood: {err}"
    );

    let out = refused("mqttv5", v5::ConnectReturnCode::BadUserNamePassword);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("bad user name or password"),
        "v5 refusal not understood: {err}"
    );
}

#[test]
fn mosquitto_sub_v5_reads_the_server_disconnect_reason_code() {
    let (listener, port) = loopback_listener();
    let port = port.to_string();
    let child = spawn_peer(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "a",
            "-d",
        ],
    );
    let (mut conn, _) = Conn::accept(&listener);
    conn.connack(v5::ConnectReturnCode::Success);
    let v5::Packet::Subscribe(s) = conn.read() else {
        panic!("expected SUBSCRIBE");
    };
    conn.send(&v5::Packet::SubAck(v5::SubAck {
        pkid: s.pkid,
        return_codes: vec![v5::SubscribeReasonCode::Success(QoS::AtMostOnce)],
        properties: None,
    }));
    conn.send(&v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::SessionTakenOver,
    )));
    let out = finish_within(child, WAIT);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("Received DISCONNECT (142)"),
        "client log: {log}"
    );
}
