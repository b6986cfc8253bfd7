//! `LeanTlsStream` against tokio-rustls clients over in-memory pipes.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::client::TlsStream as ClientTls;
use tokio_rustls::TlsConnector;

use super::LeanTlsStream;
use crate::tls::{classify_handshake_error, crypto_provider, peer_identity, CertRejection};
use crate::tls::{IdentitySource, TlsVersion};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("ca");
    Ca { cert, key }
}

fn leaf(ca: &Ca, cn: &str, dns: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    (
        cert.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
}

fn roots(ca: &Ca) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    roots
}

fn versions(v: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    v.iter().map(|v| v.rustls()).collect()
}

/// Server config (client certificates verified against `client_ca` when given) and a
/// client config trusting the server, presenting a certificate from `client_cert`.
fn configs(
    v: &[TlsVersion],
    client_ca: Option<&Ca>,
    client_cert: Option<&Ca>,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let server_ca = ca("server ca");
    let (cert, key) = leaf(&server_ca, "server", &["server.test"]);
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&versions(v))
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)), crypto_provider())
                .build()
                .expect("verifier"),
        ),
    };
    let server = builder.with_single_cert(vec![cert], key).expect("server");
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&versions(v))
        .expect("versions")
        .with_root_certificates(roots(&server_ca));
    let client = match client_cert {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let (cert, key) = leaf(ca, "sensor-7", &[]);
            builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client auth")
        }
    };
    (Arc::new(server), Arc::new(client))
}

/// Handshake over a pipe of `pipe` bytes (small pipes split records across reads).
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    pipe: usize,
) -> (
    std::io::Result<LeanTlsStream<DuplexStream>>,
    std::io::Result<ClientTls<DuplexStream>>,
) {
    let (c, s) = duplex(pipe);
    let name = ServerName::try_from("server.test").expect("name");
    tokio::join!(
        LeanTlsStream::accept(server, s),
        TlsConnector::from(client).connect(name, c)
    )
}

async fn pair(
    v: &[TlsVersion],
    pipe: usize,
) -> (LeanTlsStream<DuplexStream>, ClientTls<DuplexStream>) {
    let (server, client) = configs(v, None, None);
    let (s, c) = connect(server, client, pipe).await;
    (s.expect("server handshake"), c.expect("client handshake"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn tls13_and_tls12_carry_data_both_ways_and_hold_no_buffer_afterwards() {
    for v in [TlsVersion::V1_3, TlsVersion::V1_2] {
        let (mut server, mut client) = pair(&[v], 64 * 1024).await;
        let expected = match v {
            TlsVersion::V1_3 => rustls::ProtocolVersion::TLSv1_3,
            TlsVersion::V1_2 => rustls::ProtocolVersion::TLSv1_2,
        };
        assert_eq!(server.connection().protocol_version(), Some(expected));
        client.write_all(b"\x10hello").await.expect("client write");
        client.flush().await.expect("flush");
        let mut buf = [0u8; 6];
        server.read_exact(&mut buf).await.expect("server read");
        assert_eq!(&buf, b"\x10hello");
        server.write_all(b"\x20world").await.expect("server write");
        server.flush().await.expect("flush");
        client.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"\x20world");
        assert_eq!(
            server.buffered_capacity(),
            0,
            "{v}: idle stream holds buffers"
        );
        assert!(server.peer_certificates().is_none());
    }
}

#[tokio::test]
async fn data_sent_with_the_clients_finished_is_kept_for_the_first_read() {
    let (server, client) = configs(&[TlsVersion::V1_3], None, None);
    let (c, s) = duplex(64 * 1024);
    let name = ServerName::try_from("server.test").expect("name");
    let client_side = async move {
        let mut tls = TlsConnector::from(client)
            .connect(name, c)
            .await
            .expect("client handshake");
        tls.write_all(b"connect").await.expect("write");
        tls.flush().await.expect("flush");
        tls
    };
    // The client has written before the server finishes its side of the handshake.
    let (_client, server) = tokio::join!(client_side, async {
        tokio::task::yield_now().await;
        LeanTlsStream::accept(server, s).await
    });
    let mut server = server.expect("server handshake");
    let mut buf = [0u8; 7];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"connect");
}

#[tokio::test]
async fn large_writes_and_tiny_reads_through_a_small_pipe() {
    for v in [TlsVersion::V1_3, TlsVersion::V1_2] {
        // A 1 KiB pipe: every record arrives in pieces, writes block often.
        let (mut server, mut client) = pair(&[v], 1024).await;
        let data = pattern(100_000);
        let up = data.clone();
        let (read_by_server, ()) = tokio::join!(
            async {
                let mut got = Vec::new();
                let mut small = [0u8; 7];
                while got.len() < up.len() {
                    let n = server.read(&mut small).await.expect("server read");
                    assert!(n > 0, "early EOF");
                    got.extend_from_slice(&small[..n]);
                }
                (got, server)
            },
            async {
                client.write_all(&up).await.expect("client write");
                client.flush().await.expect("flush");
            }
        );
        let (got, mut server) = read_by_server;
        assert_eq!(got, data, "{v}: client to server");
        assert_eq!(server.buffered_capacity(), 0);
        let down = pattern(70_001);
        let (got, ()) = tokio::join!(
            async {
                let mut got = vec![0u8; down.len()];
                client.read_exact(&mut got).await.expect("client read");
                got
            },
            async {
                server.write_all(&down).await.expect("server write");
                server.flush().await.expect("flush");
            }
        );
        assert_eq!(got, down, "{v}: server to client");
        assert_eq!(server.buffered_capacity(), 0);
    }
}

#[tokio::test]
async fn a_partial_record_is_kept_until_the_rest_arrives_then_freed() {
    let (mut server, client) = pair(&[TlsVersion::V1_3], 64 * 1024).await;
    let (raw, mut conn) = client.into_inner();
    // Encrypt one record with the client's connection, deliver it in two halves.
    std::io::Write::write_all(&mut conn.writer(), b"split record").expect("plaintext");
    let mut record = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut record).expect("tls bytes");
    }
    let mut raw = raw;
    raw.write_all(&record[..10]).await.expect("first half");
    let mut buf = [0u8; 32];
    let pending =
        tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut buf)).await;
    assert!(pending.is_err(), "no plaintext from half a record");
    assert_eq!(server.buffered_capacity(), 10, "the half record is kept");
    raw.write_all(&record[10..]).await.expect("second half");
    let n = server.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"split record");
    assert_eq!(server.buffered_capacity(), 0);
}

#[tokio::test]
async fn close_notify_both_ways_and_writing_after_the_peer_closed() {
    let (mut server, mut client) = pair(&[TlsVersion::V1_3], 64 * 1024).await;
    // The client closes its side: the server reads a clean EOF...
    client.shutdown().await.expect("client shutdown");
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).await.expect("clean EOF"), 0);
    assert_eq!(server.read(&mut buf).await.expect("still EOF"), 0);
    // ...and may still send (TLS half close), then closes with close_notify.
    server
        .write_all(b"last words")
        .await
        .expect("write after peer close");
    server.shutdown().await.expect("server shutdown");
    let mut got = Vec::new();
    // tokio-rustls reports EOF without close_notify as an error: this is a clean close.
    client
        .read_to_end(&mut got)
        .await
        .expect("client reads to close_notify");
    assert_eq!(got, b"last words");
    // Nothing can be written after our own close_notify.
    assert!(server.write_all(b"more").await.is_err());
}

#[tokio::test]
async fn eof_mid_record_and_without_close_notify_are_errors_and_writes_to_a_gone_peer_fail() {
    let (mut server, client) = pair(&[TlsVersion::V1_3], 64 * 1024).await;
    let (mut raw, _conn) = client.into_inner();
    // A record header promising 100 bytes, then the socket closes.
    raw.write_all(&[0x17, 0x03, 0x03, 0x00, 0x64, 1, 2, 3])
        .await
        .expect("partial record");
    raw.shutdown().await.expect("fin");
    let mut buf = [0u8; 16];
    let err = server.read(&mut buf).await.expect_err("EOF mid-record");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("middle"), "{err}");
    drop(raw);
    // The peer is gone entirely: writing fails instead of hanging or panicking.
    let mut failed = false;
    for _ in 0..4 {
        if server.write_all(&pattern(40_000)).await.is_err() || server.flush().await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes to a closed pipe must fail");

    let (mut server, client) = pair(&[TlsVersion::V1_2], 64 * 1024).await;
    let (mut raw, _conn) = client.into_inner();
    raw.shutdown().await.expect("fin");
    let err = server
        .read(&mut buf)
        .await
        .expect_err("EOF without close_notify");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn garbage_after_the_handshake_is_an_error_with_an_alert_and_stays_one() {
    let (mut server, client) = pair(&[TlsVersion::V1_3], 64 * 1024).await;
    let (mut raw, _conn) = client.into_inner();
    // An application-data record that does not decrypt.
    let mut bad = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bad.extend_from_slice(&[0xAA; 32]);
    raw.write_all(&bad).await.expect("bad record");
    let mut buf = [0u8; 16];
    let err = server.read(&mut buf).await.expect_err("decrypt error");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(server.read(&mut buf).await.is_err(), "the error is sticky");
    assert!(server.write_all(b"x").await.is_err());
    // The server sent an alert before giving up (encrypted in TLS 1.3: an application
    // data record on the wire).
    let mut alert = [0u8; 5];
    raw.read_exact(&mut alert).await.expect("alert");
    assert!(alert[0] == 0x15 || alert[0] == 0x17, "{alert:?}");
}

#[tokio::test]
async fn client_certificates_give_an_identity_and_a_wrong_ca_fails_with_an_alert() {
    let device_ca = ca("device ca");
    let (server, client) = configs(&[TlsVersion::V1_3], Some(&device_ca), Some(&device_ca));
    let (s, c) = connect(server, client, 4096).await;
    let (s, _c) = (s.expect("server"), c.expect("client"));
    assert_eq!(s.peer_certificates().map(<[_]>::len), Some(1));
    let id = peer_identity(s.connection(), IdentitySource::Cn).expect("identity");
    assert_eq!(id.as_deref(), Some("sensor-7"));
    assert!(crate::tls::peer_chain(s.connection()).is_some());

    for v in [TlsVersion::V1_3, TlsVersion::V1_2] {
        let other_ca = ca("someone else");
        let (server, client) = configs(&[v], Some(&device_ca), Some(&other_ca));
        let (c, s) = duplex(4096);
        let name = ServerName::try_from("server.test").expect("name");
        let (s, c) = tokio::join!(LeanTlsStream::accept(server, s), async move {
            // The client's result only comes with the server's alert.
            let mut tls = TlsConnector::from(client).connect(name, c).await?;
            let mut buf = [0u8; 1];
            tls.read(&mut buf).await.map(|_| ())
        });
        let err = s.expect_err("server refuses the certificate");
        assert_eq!(
            classify_handshake_error(&err),
            CertRejection::UnknownCa,
            "{v}"
        );
        let err = c.expect_err("client learns why");
        assert_eq!(
            classify_handshake_error(&err),
            CertRejection::UnknownCa,
            "{v}: {err}"
        );
    }
}

#[tokio::test]
async fn a_client_key_update_is_followed_on_both_sides() {
    let (mut server, mut client) = pair(&[TlsVersion::V1_3], 64 * 1024).await;
    for round in 0..3u8 {
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(&[round; 100]).await.expect("client write");
        client.flush().await.expect("flush");
        let mut buf = [0u8; 100];
        server.read_exact(&mut buf).await.expect("server read");
        assert_eq!(buf, [round; 100]);
        server
            .write_all(&[round + 10; 50])
            .await
            .expect("server write");
        server.flush().await.expect("flush");
        let mut buf = [0u8; 50];
        client.read_exact(&mut buf).await.expect("client read");
        assert_eq!(buf, [round + 10; 50]);
    }
    assert_eq!(server.buffered_capacity(), 0);
}

#[tokio::test]
async fn handshake_eof_and_non_tls_bytes_fail_cleanly() {
    let (server, _) = configs(&[TlsVersion::V1_3], None, None);
    let (mut c, s) = duplex(1024);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("junk");
    let err = LeanTlsStream::accept(server.clone(), s)
        .await
        .expect_err("not TLS");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let (c, s) = duplex(1024);
    drop(c);
    let err = LeanTlsStream::accept(server, s).await.expect_err("EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn the_stream_fits_a_1280_byte_allocation() {
    // Its box is most of an idle TLS connection's own memory; mimalloc's next size class
    // up is 1,536 bytes.
    let size = std::mem::size_of::<LeanTlsStream<tokio::net::TcpStream>>();
    assert!(size <= 1280, "LeanTlsStream<TcpStream> is {size} bytes");
}
