//! The application shell over real sockets, with an echo core standing in for the
//! broker: listeners, TLS versions, the connection limit before the handshake, the
//! connect timeout, reload (bad file kept out, certificates swapped) and drain.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use support::gateway::{write_config, Gateway};
use support::pki::{server_pki, ServerPki};
use tollgate::app::{BoxFuture, ClientStream, Core};
use tollgate::broker::ConnectionInfo;

/// Echoes bytes back, except that a lone `?` is answered with whether the listener
/// admitted anonymous clients for this connection (`A` or `-`); ends connections when the broker
/// token is cancelled unless `stubborn` (then it ignores shutdown, to exercise the
/// grace period).
struct EchoCore {
    shutdown: CancellationToken,
    stubborn: bool,
}

impl Core for EchoCore {
    fn serve(&self, mut stream: ClientStream, info: ConnectionInfo) -> BoxFuture<()> {
        let shutdown = self.shutdown.clone();
        let stubborn = self.stubborn;
        Box::pin(async move {
            let flag: &[u8] = if info.listener.allow_anonymous {
                b"A"
            } else {
                b"-"
            };
            let mut buf = [0u8; 1024];
            loop {
                let read = tokio::select! {
                    _ = shutdown.cancelled(), if !stubborn => return,
                    read = stream.read(&mut buf) => read,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let reply = if &buf[..n] == b"?" { flag } else { &buf[..n] };
                        if stream.write_all(reply).await.is_err() || stream.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }
    fn reload_auth(
        &self,
        _: Arc<dyn tollgate::auth::Authenticator>,
        _: Arc<dyn tollgate::acl::Authorizer>,
    ) {
    }
    fn drained(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
    fn health(&self) -> BoxFuture<Result<String, String>> {
        Box::pin(async { Ok(String::new()) })
    }
}

const PLAIN: &str = "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n";

fn tls_listener(extra: &str) -> String {
    format!("[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\nallow_anonymous = true\n{extra}\n")
}

async fn start(config: &Path, stubborn: bool) -> Gateway {
    Gateway::build_with_core(
        config,
        Box::new(move |_, _, _, shutdown| {
            Arc::new(EchoCore { shutdown, stubborn }) as Arc<dyn Core>
        }),
    )
    .await
}

fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read ca");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS12, &rustls::version::TLS13];

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Ask `EchoCore` whether this connection's listener admitted anonymous clients.
async fn anonymous_admitted<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> bool {
    stream.write_all(b"?").await.expect("write");
    let mut flag = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut flag))
        .await
        .expect("answer within the limit")
        .expect("read answer");
    flag[0] == b'A'
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    text: &[u8],
) {
    stream.write_all(text).await.expect("write");
    stream.flush().await.expect("flush");
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("echo within the limit")
        .expect("read echo");
    assert_eq!(buf, text);
}

/// Reads until EOF or error; returns the bytes seen. Panics if the peer stays open.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("server closed the socket within the limit");
    seen
}

#[tokio::test]
async fn serves_plain_and_dev_pki_tls_listeners_on_their_bound_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &format!("{PLAIN}{}", tls_listener("")));
    let running = start(&config, false).await;
    let ca = running.dev_ca.clone().expect("dev PKI in use");
    assert_eq!(ca, dir.path().join("state/dev-pki/ca.crt"));

    let mut plain = TcpStream::connect(running.addr("local"))
        .await
        .expect("connect plain");
    echo(&mut plain, b"plain hello").await;
    let mut tls = tls_connect(running.addr("devices"), client_config(&ca, BOTH))
        .await
        .expect("tls handshake");
    echo(&mut tls, b"tls hello").await;
    running.stop().await;
}

#[tokio::test]
async fn accepts_tls_1_2_and_1_3_and_refuses_older_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = server_pki(dir.path(), "a");
    let only13 = format!(
        "[[listener]]\nname = \"modern\"\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\nallow_anonymous = true\ncert = \"{}\"\nkey = \"{}\"\ntls_versions = [\"1.3\"]\n",
        pki.cert.display(),
        pki.key.display()
    );
    let config = write_config(
        dir.path(),
        &format!(
            "{}{only13}",
            tls_listener(&format!(
                "cert = \"{}\"\nkey = \"{}\"",
                pki.cert.display(),
                pki.key.display()
            ))
        ),
    );
    let running = start(&config, false).await;
    let addr = running.addr("devices");

    let mut v12 = tls_connect(addr, client_config(&pki.ca, &[&rustls::version::TLS12]))
        .await
        .expect("TLS 1.2 accepted");
    assert_eq!(
        v12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    echo(&mut v12, b"1.2").await;
    let mut v13 = tls_connect(addr, client_config(&pki.ca, &[&rustls::version::TLS13]))
        .await
        .expect("TLS 1.3 accepted");
    assert_eq!(
        v13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    echo(&mut v13, b"1.3").await;

    // rustls cannot speak TLS 1.0/1.1, so send their ClientHellos by hand.
    for legacy in [0x01u8, 0x02] {
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        raw.write_all(&legacy_client_hello(legacy))
            .await
            .expect("send hello");
        let reply = read_until_closed(&mut raw, Duration::from_secs(5)).await;
        assert!(
            reply.first() != Some(&0x16),
            "TLS 1.{} ClientHello got a handshake reply: {reply:02x?}",
            legacy - 1
        );
    }

    let refused = tls_connect(
        running.addr("modern"),
        client_config(&pki.ca, &[&rustls::version::TLS12]),
    )
    .await;
    assert!(
        refused.is_err(),
        "a tls_versions = [\"1.3\"] listener refuses TLS 1.2"
    );
    tls_connect(running.addr("modern"), client_config(&pki.ca, BOTH))
        .await
        .expect("TLS 1.3 on the 1.3-only listener");
    running.stop().await;
}

/// A minimal ClientHello offering only TLS 1.`minor - 1` with classic suites.
fn legacy_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x13, 0xc0, 0x14, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn connection_limit_closes_extra_sockets_before_the_tls_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "max_connections = 1\nconnect_timeout = \"30s\"\n{}",
            tls_listener("")
        ),
    );
    // `max_connections` must sit under [broker]: write_config starts that section.
    let running = start(&config, false).await;
    let client = client_config(running.dev_ca.as_ref().expect("dev ca"), BOTH);
    let addr = running.addr("devices");

    let mut first = tls_connect(addr, client.clone())
        .await
        .expect("first connection admitted");
    echo(&mut first, b"one").await;

    // Over the limit: closed at once, without a single TLS byte, although the connect
    // timeout (30 s) would otherwise keep a silent socket open.
    let mut extra = TcpStream::connect(addr).await.expect("tcp connect");
    let seen = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(
        seen.is_empty(),
        "refused socket received bytes: {seen:02x?}"
    );

    // The permit returns when the first connection ends.
    drop(first);
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok(mut s) = tls_connect(addr, client.clone()).await {
            let mut probe = [0u8; 1];
            s.write_all(b"x").await.expect("write");
            if let Ok(Ok(1)) =
                tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await
            {
                admitted = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admitted.is_some(),
        "a new connection is admitted once the first one closed"
    );
    running.stop().await;
}

#[tokio::test]
async fn silent_socket_is_closed_after_the_connect_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!("connect_timeout = \"300ms\"\n{}", tls_listener("")),
    );
    let running = start(&config, false).await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(running.addr("devices"))
        .await
        .expect("connect");
    let seen = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(seen.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    running.stop().await;
}

#[tokio::test]
async fn reload_with_a_broken_file_keeps_everything_running_and_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), PLAIN);
    let running = start(&config, false).await;
    let mut before = TcpStream::connect(running.addr("local"))
        .await
        .expect("connect");
    echo(&mut before, b"before").await;

    std::fs::write(
        &config,
        "[broker]\nmax_connections = 0\n[[listener]]\nname = \"local\"\nbind = \"nowhere\"\ntransport = \"tcp\"\n",
    )
    .expect("break config");
    let failed = running
        .reload
        .reload()
        .await
        .expect_err("broken file refused");
    let all = failed.problems.join("\n");
    assert!(all.contains("broker.max_connections"), "{all}");
    assert!(all.contains("listener[0].bind"), "{all}");

    echo(&mut before, b"still here").await;
    let mut after = TcpStream::connect(running.addr("local"))
        .await
        .expect("new connections still accepted");
    echo(&mut after, b"after").await;

    // A valid file with a changed bind is applied, the bind change only after a restart.
    std::fs::write(&config, PLAIN.replace("127.0.0.1:0", "127.0.0.1:1")).expect("rewrite config");
    let report = running.reload.reload().await.expect("valid file accepted");
    assert!(
        report
            .ignored_until_restart
            .iter()
            .any(|c| c.contains("bind")),
        "{:?}",
        report.ignored_until_restart
    );
    echo(&mut before, b"still serving").await;
    running.stop().await;
}

#[tokio::test]
async fn reload_swaps_the_server_certificate_for_new_handshakes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = server_pki(dir.path(), "old");
    let new = server_pki(dir.path(), "new");
    let files = |p: &ServerPki| {
        format!(
            "cert = \"{}\"\nkey = \"{}\"",
            p.cert.display(),
            p.key.display()
        )
    };
    let config = write_config(dir.path(), &tls_listener(&files(&old)));
    let running = start(&config, false).await;
    let addr = running.addr("devices");
    let mut existing = tls_connect(addr, client_config(&old.ca, BOTH))
        .await
        .expect("old certificate");
    echo(&mut existing, b"old").await;

    write_config(dir.path(), &tls_listener(&files(&new)));
    running.reload.reload().await.expect("reload accepted");

    tls_connect(addr, client_config(&new.ca, BOTH))
        .await
        .expect("new handshakes use the new certificate");
    assert!(
        tls_connect(addr, client_config(&old.ca, BOTH))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    echo(&mut existing, b"existing session untouched").await;
    running.stop().await;
}

#[tokio::test]
async fn shutdown_drains_connections_and_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), PLAIN);
    let running = start(&config, false).await;
    let addr = running.addr("local");
    let mut open = TcpStream::connect(addr).await.expect("connect");
    echo(&mut open, b"hi").await;
    running.stop().await;
    let seen = read_until_closed(&mut open, Duration::from_secs(5)).await;
    assert!(seen.is_empty());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting after shutdown"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_connections_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!("[shutdown]\ngrace_period = \"300ms\"\n{PLAIN}"),
    )
    .expect("write");
    let running = start(&config, true).await;
    let mut stuck = TcpStream::connect(running.addr("local"))
        .await
        .expect("connect");
    echo(&mut stuck, b"hi").await;
    let took = running.stop().await;
    assert!(
        took >= Duration::from_millis(250),
        "waited for the grace period: {took:?}"
    );
}

#[tokio::test]
async fn reload_applies_listener_flags_to_new_connections_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), PLAIN);
    let running = start(&config, false).await;
    let mut before = TcpStream::connect(running.addr("local"))
        .await
        .expect("connect");
    assert!(anonymous_admitted(&mut before).await);

    write_config(
        dir.path(),
        &PLAIN.replace("allow_anonymous = true", "allow_anonymous = false"),
    );
    let report = running.reload.reload().await.expect("reload accepted");
    assert!(
        report.ignored_until_restart.is_empty(),
        "{:?}",
        report.ignored_until_restart
    );
    let mut after = TcpStream::connect(running.addr("local"))
        .await
        .expect("connect");
    assert!(
        !anonymous_admitted(&mut after).await,
        "new connections see the new flag"
    );
    assert!(
        anonymous_admitted(&mut before).await,
        "existing connections keep theirs"
    );
    running.stop().await;
}

#[tokio::test]
async fn real_broker_closes_a_silent_plain_socket_at_the_connect_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &format!("connect_timeout = \"300ms\"\n{PLAIN}"));
    let gateway = Gateway::build(&config).await;
    let addr = gateway.addr("local");

    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let seen = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(seen.is_empty(), "{seen:02x?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );

    gateway.stop().await;
}
