//! `tollgate pki` end to end through `pki::run` in a temp dir, then the generated files used
//! by a real TLS server (`tls::build_server_config`) and, when installed, by Mosquitto's own
//! clients and broker (OpenSSL) as independent peers.

mod support;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use rustls::pki_types::ServerName;
use rustls::ServerConfig;
use support::{require_peer, Mosquitto, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tollgate::pki::{self, CertKind, PkiCommand, PkiError};
use tollgate::tls::{
    build_client_config, build_server_config, classify_handshake_error, peer_identity,
    CertRejection, ClientCertMode, IdentitySource, ServerTlsSettings, TlsVersion,
};

/// Stand-in for the lead's CLI: `tollgate pki ...` parsed exactly as the binary will.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    pki: PkiCommand,
}

fn pki_run(dir: &Path, args: &[&str]) -> Result<(), PkiError> {
    let mut argv = vec!["pki", "--dir", dir.to_str().expect("utf8")];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("arguments parse");
    pki::run(cli.pki)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn settings(dir: &Path, crl: bool) -> ServerTlsSettings {
    ServerTlsSettings {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        versions: vec![TlsVersion::V1_2, TlsVersion::V1_3],
        client_ca: Some(dir.join("ca.crt")),
        client_certs: ClientCertMode::Required,
        identity: IdentitySource::Cn,
        crl: crl.then(|| dir.join("ca.crl")),
    }
}

/// Handshake with a device certificate; the server's identity or the rejection.
async fn connect_device(
    server: Arc<ServerConfig>,
    dir: &Path,
    device: &str,
) -> Result<Option<String>, CertRejection> {
    let cert = dir.join(format!("devices/{device}.crt"));
    let key = dir.join(format!("devices/{device}.key"));
    let client = build_client_config(&dir.join("ca.crt"), Some((&cert, &key))).expect("client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let id = peer_identity(tls.get_ref().1, IdentitySource::Cn)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        tls.write_all(b"ok").await?;
        Ok::<_, io::Error>(id)
    });
    let client_result = tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        Ok::<_, io::Error>(())
    })
    .await
    .expect("client in time");
    let served = tokio::time::timeout(WAIT, server_task)
        .await
        .expect("server in time")
        .expect("task");
    match served {
        Ok(id) => {
            client_result.expect("client completed");
            Ok(id)
        }
        Err(e) => {
            assert!(client_result.is_err(), "client passed a failed handshake");
            Err(classify_handshake_error(&e))
        }
    }
}

#[tokio::test]
async fn pki_flow_init_server_device_revoke_crl_list() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");

    // Nothing before init.
    assert!(matches!(
        pki_run(&dir, &["device", "sensor_001"]),
        Err(PkiError::NoCa { .. })
    ));

    pki_run(&dir, &["init", "--cn", "Plant 3 CA", "--days", "3650"]).expect("init");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let ca_before = std::fs::read(dir.join("ca.crt")).expect("ca");

    // A second init refuses to overwrite the CA.
    let err = pki_run(&dir, &["init"]).expect_err("second init");
    assert!(matches!(err, PkiError::CaExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("ca"), ca_before);

    pki_run(
        &dir,
        &["server", "--dns", "localhost,gw.local", "--ip", "127.0.0.1"],
    )
    .expect("server");
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    pki_run(&dir, &["device", "sensor_001", "--days", "90"]).expect("device 1");
    pki_run(&dir, &["device", "dashboard"]).expect("device 2");
    assert_eq!(mode(&dir.join("devices/sensor_001.key")), 0o600);
    assert_eq!(mode(&dir.join("devices")), 0o700);

    // Same name again needs --force; names that break ACLs or paths are refused.
    assert!(matches!(
        pki_run(&dir, &["device", "sensor_001"]),
        Err(PkiError::Exists { .. })
    ));
    for bad in ["a/b", "x+y", "#", "../evil"] {
        assert!(
            matches!(
                pki_run(&dir, &["device", bad]),
                Err(PkiError::BadName { .. })
            ),
            "{bad} accepted"
        );
    }

    // Both devices are accepted, identified by CN.
    let server = build_server_config(&settings(&dir, false)).expect("server config");
    assert_eq!(
        connect_device(server.clone(), &dir, "sensor_001").await,
        Ok(Some("sensor_001".into()))
    );
    assert_eq!(
        connect_device(server, &dir, "dashboard").await,
        Ok(Some("dashboard".into()))
    );

    // Revoke one device: revoke also writes ca.crl.
    pki_run(
        &dir,
        &["revoke", "sensor_001", "--reason", "key-compromise"],
    )
    .expect("revoke");
    assert!(matches!(
        pki_run(&dir, &["revoke", "sensor_001"]),
        Err(PkiError::UnknownName { .. })
    ));
    pki_run(&dir, &["crl", "--days", "30"]).expect("crl");
    assert!(std::fs::read_to_string(dir.join("ca.crl"))
        .expect("crl")
        .starts_with("-----BEGIN X509 CRL-----"));
    let server = build_server_config(&settings(&dir, true)).expect("server config with crl");
    assert_eq!(
        connect_device(server.clone(), &dir, "sensor_001").await,
        Err(CertRejection::Revoked)
    );
    assert_eq!(
        connect_device(server, &dir, "dashboard").await,
        Ok(Some("dashboard".into()))
    );

    // The listing has every certificate with its state.
    pki_run(&dir, &["list"]).expect("list");
    let entries = pki::list(&dir).expect("list");
    let kinds: Vec<(CertKind, &str, bool)> = entries
        .iter()
        .map(|e| (e.kind, e.name.as_str(), e.revoked.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            (CertKind::Ca, "ca", false),
            (CertKind::Server, "server", false),
            (CertKind::Device, "sensor_001", true),
            (CertKind::Device, "dashboard", false),
        ]
    );
    let sensor = &entries[2];
    assert_eq!(sensor.subject, "CN=sensor_001,O=tollgate");
    let days = (sensor.not_after - time::OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
    assert!((89..=90).contains(&days), "{days}");
    assert_eq!(
        sensor.revoked.as_ref().expect("revoked").reason,
        "key-compromise"
    );
    let crl_serials = tollgate::tls::load_crl_serials(&dir.join("ca.crl")).expect("serials");
    assert_eq!(crl_serials.len(), 1);

    // Re-issuing the revoked device with --force gives a fresh, accepted certificate.
    pki_run(&dir, &["device", "sensor_001", "--force"]).expect("reissue");
    let server = build_server_config(&settings(&dir, true)).expect("server config");
    assert_eq!(
        connect_device(server, &dir, "sensor_001").await,
        Ok(Some("sensor_001".into()))
    );

    // init --force replaces the CA: old device certificates no longer chain.
    let old_ca_key = std::fs::read(dir.join("ca.key")).expect("ca key");
    pki_run(&dir, &["init", "--force"]).expect("forced init");
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("readdir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("replaced-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "old CA set aside once");
    assert_eq!(
        std::fs::read(aside[0].join("ca.key")).expect("old key"),
        old_ca_key
    );
    assert_eq!(mode(&aside[0]), 0o700);
    assert_eq!(pki::list(&dir).expect("list").len(), 1, "new index");
    pki_run(&dir, &["server", "--dns", "localhost", "--force"]).expect("new server");
    let server = build_server_config(&settings(&dir, false)).expect("server config");
    assert_eq!(
        connect_device(server, &dir, "dashboard").await,
        Err(CertRejection::UnknownCa)
    );
}

#[tokio::test]
async fn rsa_option_issues_rsa_ca_server_and_device() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    pki_run(&dir, &["init", "--rsa"]).expect("init");
    pki_run(&dir, &["server", "--dns", "localhost", "--rsa"]).expect("server");
    pki_run(&dir, &["device", "legacy", "--rsa"]).expect("device");
    for key in ["ca.key", "server.key", "devices/legacy.key"] {
        let pem = std::fs::read_to_string(dir.join(key)).expect("key");
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .expect("pem")
            .expect("a key");
        // PKCS#8 rsaEncryption OID 1.2.840.113549.1.1.1
        let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        assert!(
            der.secret_der()
                .windows(rsa_oid.len())
                .any(|w| w == rsa_oid),
            "{key} is not RSA"
        );
    }
    let server = build_server_config(&settings(&dir, false)).expect("server config");
    assert_eq!(
        connect_device(server, &dir, "legacy").await,
        Ok(Some("legacy".into()))
    );
}

/// The generated files work unchanged with Mosquitto's broker and `mosquitto_pub`
/// (OpenSSL on both sides), including the CRL: what `certs/README.md` promises.
#[test]
fn generated_files_work_with_mosquitto_and_mosquitto_pub() {
    if !require_peer("mosquitto") || !require_peer("mosquitto_pub") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    pki_run(&dir, &["init"]).expect("init");
    pki_run(&dir, &["server", "--dns", "localhost", "--ip", "127.0.0.1"]).expect("server");
    pki_run(&dir, &["device", "good"]).expect("device");
    pki_run(&dir, &["device", "bad"]).expect("device");
    pki_run(&dir, &["revoke", "bad"]).expect("revoke");

    let p = |s: &str| dir.join(s).display().to_string();
    let broker = Mosquitto::start(
        tmp.path(),
        &format!(
            "user root\ncafile {}\ncertfile {}\nkeyfile {}\n\
             crlfile {}\nrequire_certificate true\nuse_identity_as_username true\n\
             allow_anonymous false\n",
            p("ca.crt"),
            p("server.crt"),
            p("server.key"),
            p("ca.crl")
        ),
    );
    let port = broker.port;
    let publish = |device: &str| -> bool {
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(["--cafile", &p("ca.crt")])
            .args(["--cert", &p(&format!("devices/{device}.crt"))])
            .args(["--key", &p(&format!("devices/{device}.key"))])
            .args(["-t", "test", "-m", "hello", "-q", "1"])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let good = publish("good");
    let bad = publish("bad");
    drop(broker);
    assert!(good, "mosquitto_pub with a valid device certificate failed");
    assert!(!bad, "mosquitto accepted a revoked device certificate");
}

#[test]
fn unused_paths_are_not_created_on_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("nothing");
    assert!(pki_run(&dir, &["list"]).is_err());
    assert!(pki_run(&dir, &["crl"]).is_err());
    assert!(!dir.join("ca.crl").exists());
}

/// A CA made with the seeds' openssl recipe can be taken over by `tollgate pki`: it issues
/// server and device certificates and CRLs that chain to it.
#[tokio::test]
async fn openssl_made_ca_is_usable_by_tollgate_pki() {
    if !require_peer("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    std::fs::create_dir(&dir).expect("mkdir");
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&["genrsa", "-out", "ca.key", "2048"]);
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-days",
        "365",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/C=US/ST=State/L=City/O=MyOrg/CN=MyCA",
    ]);
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");

    pki_run(&dir, &["server", "--dns", "localhost"]).expect("server");
    pki_run(&dir, &["device", "client1"]).expect("device");
    pki_run(&dir, &["device", "client2"]).expect("device");
    pki_run(&dir, &["revoke", "client2"]).expect("revoke");
    let server = build_server_config(&settings(&dir, true)).expect("server config");
    assert_eq!(
        connect_device(server.clone(), &dir, "client1").await,
        Ok(Some("client1".into()))
    );
    assert_eq!(
        connect_device(server, &dir, "client2").await,
        Err(CertRejection::Revoked)
    );
    // OpenSSL agrees that the device certificate chains to its CA.
    openssl(&["verify", "-CAfile", "ca.crt", "devices/client1.crt"]);
}

/// `mosquitto_pub` (OpenSSL) with `tollgate pki` files against a rustls server built by
/// `build_server_config`: the TLS layer tollgate's listeners use. The server speaks just
/// enough MQTT (a CONNACK) for mosquitto_pub to finish its QoS 0 publish.
#[tokio::test]
async fn mosquitto_pub_with_device_cert_passes_rustls_mtls() {
    if !require_peer("mosquitto_pub") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    pki_run(&dir, &["init"]).expect("init");
    pki_run(&dir, &["server", "--dns", "localhost"]).expect("server");
    pki_run(&dir, &["device", "sensor_001"]).expect("device");
    pki_run(&dir, &["device", "lost"]).expect("device");
    pki_run(&dir, &["revoke", "lost"]).expect("revoke");
    let server = build_server_config(&settings(&dir, true)).expect("server config");

    for (device, expected) in [
        ("sensor_001", Ok(Some("sensor_001".to_string()))),
        ("lost", Err(CertRejection::Revoked)),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = TlsAcceptor::from(server.clone());
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await?;
            let id = peer_identity(tls.get_ref().1, IdentitySource::Cn)
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
            let mut buf = [0u8; 512];
            let n = tls.read(&mut buf).await?;
            assert!(n > 0 && buf[0] == 0x10, "expected CONNECT");
            tls.write_all(&[0x20, 0x02, 0x00, 0x00]).await?; // CONNACK, accepted
            while tls.read(&mut buf).await? > 0 {}
            Ok::<_, io::Error>(id)
        });
        let p = |s: &str| dir.join(s).display().to_string();
        let status = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new("mosquitto_pub")
                .args(["-h", "localhost", "-p", &port.to_string()])
                .args(["--cafile", &p("ca.crt")])
                .args(["--cert", &p(&format!("devices/{device}.crt"))])
                .args(["--key", &p(&format!("devices/{device}.key"))])
                .args(["-t", "sensors/001/t", "-m", "21.5"])
                .stderr(std::process::Stdio::null())
                .status(),
        )
        .await
        .expect("mosquitto_pub finished")
        .expect("mosquitto_pub ran");
        let served = tokio::time::timeout(WAIT, server_task)
            .await
            .expect("server finished")
            .expect("task")
            .map_err(|e| classify_handshake_error(&e));
        assert_eq!(served, expected, "{device}");
        assert_eq!(status.success(), expected.is_ok(), "{device}: {status}");
    }
}

#[test]
fn command_line_accepts_dir_anywhere_and_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "pki",
        "device",
        "sensor_001",
        "--dir",
        "/tmp/x",
        "--days",
        "7",
    ])
    .expect("parse");
    assert_eq!(cli.pki.dir, PathBuf::from("/tmp/x"));
    assert!(matches!(
        cli.pki.action,
        pki::PkiAction::Device { ref name, days: 7, rsa: false, force: false } if name == "sensor_001"
    ));
    let cli = Cli::try_parse_from(["pki", "list"]).expect("parse");
    assert_eq!(cli.pki.dir, PathBuf::from("/etc/tollgate/pki"));
    assert!(Cli::try_parse_from(["pki", "revoke", "x", "--reason", "bogus"]).is_err());
}
