//! Real-socket TLS tests of `tollgate::tls`: a tokio-rustls server on 127.0.0.1:0 built with
//! `build_server_config`, rustls (and OpenSSL, when installed) clients.

mod support;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, KeyIdMethod,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use support::pki::{client_params, issue, leaf_params, write_file, Pki};
use support::{require_peer, WAIT};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tollgate::tls::{
    build_client_config, build_client_config_with_versions, build_server_config,
    certificate_revoked, classify_handshake_error, load_crl, peer_identity, CertRejection,
    ClientCertMode, IdentitySource, ReloadableServerConfig, ServerTlsSettings, TlsError,
    TlsVersion,
};

/// What these tests need of the support PKI.
impl Pki {
    fn settings(&self, mode: ClientCertMode) -> ServerTlsSettings {
        ServerTlsSettings {
            cert: self.server.0.clone(),
            key: self.server.1.clone(),
            versions: vec![TlsVersion::V1_2, TlsVersion::V1_3],
            client_ca: (mode != ClientCertMode::Off).then(|| self.ca_path.clone()),
            client_certs: mode,
            identity: IdentitySource::Cn,
            crl: None,
        }
    }

    fn client_config(&self, cert: Option<&(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
        build_client_config(&self.ca_path, cert.map(|(c, k)| (c.as_path(), k.as_path())))
            .expect("client config")
    }
}

struct Outcome {
    /// Server side: identity from the client certificate, or the handshake error.
    server: Result<Option<String>, io::Error>,
    /// Client side: negotiated version when the server's greeting arrived, or the error.
    client: Result<rustls::ProtocolVersion, io::Error>,
}

/// One connection: the server accepts, extracts the identity and writes "ok"; the client
/// completes the handshake and reads "ok" (which fails when the server rejected it).
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: IdentitySource,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let id = peer_identity(tls.get_ref().1, identity)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        assert_eq!(
            tollgate::tls::peer_chain(tls.get_ref().1).is_some(),
            id.is_some()
        );
        tls.write_all(b"ok").await?;
        tls.flush().await?;
        Ok::<_, io::Error>(id)
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let version = tls.get_ref().1.protocol_version().expect("version");
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ok");
        Ok::<_, io::Error>(version)
    };
    let client = tokio::time::timeout(WAIT, client_result)
        .await
        .expect("client finished in time");
    let server = tokio::time::timeout(WAIT, server_task)
        .await
        .expect("server finished in time")
        .expect("server task");
    Outcome { server, client }
}

fn rejection(outcome: &Outcome) -> CertRejection {
    assert!(outcome.client.is_err(), "client was accepted");
    match &outcome.server {
        Ok(id) => panic!("server accepted the client as {id:?}"),
        Err(e) => classify_handshake_error(e),
    }
}

#[tokio::test]
async fn handshake_succeeds_with_tls12_and_tls13() {
    let pki = Pki::new();
    let server = build_server_config(&pki.settings(ClientCertMode::Off)).expect("server");
    for (version, expected) in [
        (TlsVersion::V1_2, rustls::ProtocolVersion::TLSv1_2),
        (TlsVersion::V1_3, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let client = build_client_config_with_versions(&pki.ca_path, None, &[version])
            .expect("client config");
        let out = connect(server.clone(), client, IdentitySource::Cn).await;
        assert_eq!(out.client.expect("client handshake"), expected);
        assert_eq!(out.server.expect("server handshake"), None);
    }
}

#[tokio::test]
async fn server_limited_to_tls13_refuses_tls12_client() {
    let pki = Pki::new();
    let mut settings = pki.settings(ClientCertMode::Off);
    settings.versions = vec![TlsVersion::V1_3];
    let server = build_server_config(&settings).expect("server");
    let client = build_client_config_with_versions(&pki.ca_path, None, &[TlsVersion::V1_2])
        .expect("client config");
    let out = connect(server, client, IdentitySource::Cn).await;
    assert!(out.client.is_err() && out.server.is_err());
}

#[tokio::test]
async fn required_client_cert_accepts_valid_cert_and_yields_cn() {
    let pki = Pki::new();
    let device = pki.client("sensor_001");
    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    let out = connect(server, pki.client_config(Some(&device)), IdentitySource::Cn).await;
    assert!(out.client.is_ok(), "{:?}", out.client);
    assert_eq!(
        out.server.expect("accepted"),
        Some("sensor_001".to_string())
    );
}

#[tokio::test]
async fn required_client_cert_missing_fails_with_no_certificate() {
    let pki = Pki::new();
    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    let out = connect(server, pki.client_config(None), IdentitySource::Cn).await;
    assert_eq!(rejection(&out), CertRejection::NoCertificate);
    // The client side sees the server's alert and classifies it the same way.
    assert_eq!(
        classify_handshake_error(out.client.as_ref().expect_err("client")),
        CertRejection::NoCertificate
    );
}

#[tokio::test]
async fn optional_client_cert_allows_clients_without_one() {
    let pki = Pki::new();
    let server = build_server_config(&pki.settings(ClientCertMode::Optional)).expect("server");
    let out = connect(server.clone(), pki.client_config(None), IdentitySource::Cn).await;
    assert_eq!(out.server.expect("accepted"), None);
    // A certificate that is sent is still verified.
    let (c, k) = issue(
        pki.path(),
        "stranger",
        client_params("stranger"),
        &pki.other_ca,
    );
    let out = connect(server, pki.client_config(Some(&(c, k))), IdentitySource::Cn).await;
    assert_eq!(rejection(&out), CertRejection::UnknownCa);
}

#[tokio::test]
async fn client_cert_from_wrong_ca_is_unknown_ca() {
    let pki = Pki::new();
    let stranger = issue(
        pki.path(),
        "stranger",
        client_params("stranger"),
        &pki.other_ca,
    );
    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    let out = connect(
        server,
        pki.client_config(Some(&stranger)),
        IdentitySource::Cn,
    )
    .await;
    assert_eq!(rejection(&out), CertRejection::UnknownCa);
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certs_are_rejected() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let mut expired = client_params("old");
    expired.not_before = now - time::Duration::days(30);
    expired.not_after = now - time::Duration::days(1);
    let expired = issue(pki.path(), "old", expired, &pki.ca);
    let mut future = client_params("future");
    future.not_before = now + time::Duration::days(1);
    future.not_after = now + time::Duration::days(30);
    let future = issue(pki.path(), "future", future, &pki.ca);

    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    let out = connect(
        server.clone(),
        pki.client_config(Some(&expired)),
        IdentitySource::Cn,
    )
    .await;
    assert_eq!(rejection(&out), CertRejection::Expired);
    let out = connect(server, pki.client_config(Some(&future)), IdentitySource::Cn).await;
    assert_eq!(rejection(&out), CertRejection::NotYetValid);
}

#[tokio::test]
async fn server_only_certificate_used_as_client_cert_is_bad_key_usage() {
    let pki = Pki::new();
    let mut p = leaf_params("server-as-client");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let wrong = issue(pki.path(), "server-as-client", p, &pki.ca);
    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    let out = connect(server, pki.client_config(Some(&wrong)), IdentitySource::Cn).await;
    assert_eq!(rejection(&out), CertRejection::BadKeyUsage);
}

fn write_crl(pki: &Pki, revoked_serials: &[&[u8]], der: bool) -> PathBuf {
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked_serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&pki.ca.cert, &pki.ca.key)
    .expect("crl");
    let path = pki.path().join(if der { "ca.crl.der" } else { "ca.crl" });
    if der {
        std::fs::write(&path, crl.der().as_ref()).expect("write");
    } else {
        write_file(&path, &crl.pem().expect("pem"), 0o644);
    }
    path
}

fn client_with_serial(pki: &Pki, name: &str, serial: &[u8]) -> (PathBuf, PathBuf) {
    let mut p = client_params(name);
    p.serial_number = Some(SerialNumber::from_slice(serial));
    issue(pki.path(), name, p, &pki.ca)
}

#[tokio::test]
async fn revoked_client_cert_is_rejected_by_pem_and_der_crl() {
    let pki = Pki::new();
    let bad = client_with_serial(&pki, "stolen", &[0x11, 0x22, 0x33]);
    let good = client_with_serial(&pki, "honest", &[0x44, 0x55]);
    for der in [false, true] {
        let mut settings = pki.settings(ClientCertMode::Required);
        settings.crl = Some(write_crl(&pki, &[&[0x11, 0x22, 0x33]], der));
        let server = build_server_config(&settings).expect("server with crl");
        let out = connect(
            server.clone(),
            pki.client_config(Some(&bad)),
            IdentitySource::Cn,
        )
        .await;
        assert_eq!(rejection(&out), CertRejection::Revoked, "der={der}");
        let out = connect(server, pki.client_config(Some(&good)), IdentitySource::Cn).await;
        assert_eq!(out.server.expect("honest accepted"), Some("honest".into()));
    }
}

#[tokio::test]
async fn identity_is_extracted_from_cn_san_and_subject() {
    let pki = Pki::new();
    let mut p = client_params("sensor_001");
    p.distinguished_name
        .push(DnType::OrganizationName, "Plant 3");
    p.subject_alt_names = vec![
        SanType::DnsName("sensor-001.plant3.local".try_into().expect("ia5")),
        SanType::Rfc822Name("sensor001@plant3.example".try_into().expect("ia5")),
        SanType::URI("spiffe://plant3/sensor/001".try_into().expect("ia5")),
    ];
    let device = issue(pki.path(), "rich", p, &pki.ca);
    let server = build_server_config(&pki.settings(ClientCertMode::Required)).expect("server");
    for (source, expected) in [
        (IdentitySource::Cn, "sensor_001"),
        (IdentitySource::SanDns, "sensor-001.plant3.local"),
        (IdentitySource::SanEmail, "sensor001@plant3.example"),
        (IdentitySource::SanUri, "spiffe://plant3/sensor/001"),
        (IdentitySource::Subject, "O=Plant 3,CN=sensor_001"),
    ] {
        let out = connect(server.clone(), pki.client_config(Some(&device)), source).await;
        assert_eq!(
            out.server.expect("accepted"),
            Some(expected.to_string()),
            "{source}"
        );
    }
}

#[test]
fn private_key_readable_by_others_or_a_foreign_group_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    std::fs::set_permissions(&pki.server.1, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = build_server_config(&pki.settings(ClientCertMode::Off)).expect_err("0644 key");
    assert!(
        matches!(err, TlsError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("server.key") && text.contains("chmod 600"),
        "{text}"
    );
    // Group read is fine when the group is this service's own (a file it created) ...
    std::fs::set_permissions(&pki.server.1, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(build_server_config(&pki.settings(ClientCertMode::Off)).is_ok());
    // ... and refused for any other group (needs root to give the file away).
    if std::os::unix::fs::chown(&pki.server.1, None, Some(12345)).is_ok() {
        let err = build_server_config(&pki.settings(ClientCertMode::Off)).expect_err("group");
        assert!(err.to_string().contains("group 12345"), "{err}");
    }
    std::fs::set_permissions(&pki.server.1, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    assert!(build_server_config(&pki.settings(ClientCertMode::Off)).is_ok());
}

#[test]
fn configuration_errors_name_the_file_and_the_problem() {
    let pki = Pki::new();
    let mut s = pki.settings(ClientCertMode::Off);
    s.key = pki.server.0.clone();
    std::fs::set_permissions(&s.key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let err = build_server_config(&s).expect_err("cert given as key");
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    assert!(err.to_string().contains("server.crt: no private key found"));

    let mut s = pki.settings(ClientCertMode::Off);
    s.cert = pki.path().join("missing.crt");
    let err = build_server_config(&s).expect_err("missing cert");
    assert!(
        err.to_string().contains("missing.crt: cannot read"),
        "{err}"
    );

    let mut s = pki.settings(ClientCertMode::Required);
    s.client_ca = None;
    assert!(matches!(
        build_server_config(&s),
        Err(TlsError::ClientCaMissing { .. })
    ));

    // A key that does not belong to the certificate.
    let (_, other_key) = pki.client("someone");
    let mut s = pki.settings(ClientCertMode::Off);
    s.key = other_key;
    let err = build_server_config(&s).expect_err("mismatched key");
    assert!(matches!(err, TlsError::CertifiedKey { .. }), "{err}");

    let mut s = pki.settings(ClientCertMode::Required);
    let garbage = pki.path().join("garbage.crl");
    std::fs::write(&garbage, b"not a crl").expect("write");
    s.crl = Some(garbage);
    let err = build_server_config(&s).expect_err("garbage crl");
    assert!(err.to_string().contains("garbage.crl"), "{err}");

    // `tollgate check` gets every problem at once.
    s.cert = pki.path().join("missing.crt");
    s.versions.clear();
    let all = tollgate::tls::check_server_settings(&s);
    let text: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 3, "{text:?}");
    assert!(matches!(all[0], TlsError::NoVersions));
    assert!(text[1].contains("missing.crt") && text[2].contains("garbage.crl"));
    assert!(
        tollgate::tls::check_server_settings(&pki.settings(ClientCertMode::Required)).is_empty()
    );
}

#[tokio::test]
async fn reload_swaps_config_and_keeps_old_one_on_error() {
    let pki = Pki::new();
    let device = client_with_serial(&pki, "dev1", &[0x0a, 0x0b]);
    let mut settings = pki.settings(ClientCertMode::Required);
    let reloadable = ReloadableServerConfig::new(&settings).expect("initial");
    let out = connect(
        reloadable.current(),
        pki.client_config(Some(&device)),
        IdentitySource::Cn,
    )
    .await;
    assert!(out.server.is_ok());

    // Broken CRL: reload fails, the old configuration keeps serving.
    let broken = pki.path().join("broken.crl");
    std::fs::write(
        &broken,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .expect("write");
    settings.crl = Some(broken);
    let before = reloadable.current();
    assert!(reloadable.reload(&settings).is_err());
    assert!(Arc::ptr_eq(&before, &reloadable.current()));

    // Valid CRL revoking dev1: new connections are refused, and the app can tell the live
    // session's certificate is revoked.
    let crl_path = write_crl(&pki, &[&[0x0a, 0x0b]], false);
    settings.crl = Some(crl_path.clone());
    reloadable.reload(&settings).expect("reload");
    let out = connect(
        reloadable.current(),
        pki.client_config(Some(&device)),
        IdentitySource::Cn,
    )
    .await;
    assert_eq!(rejection(&out), CertRejection::Revoked);
    let crl = load_crl(&crl_path).expect("crl");
    let dev_der = tollgate::tls::load_certs(&device.0).expect("cert");
    assert!(certificate_revoked(dev_der[0].as_ref(), &crl));
    assert_eq!(
        reloadable.check_client_chain(&dev_der),
        Err(CertRejection::Revoked)
    );
    assert_eq!(
        reloadable.check_client_chain(&[]),
        Err(CertRejection::NoCertificate)
    );
    let other = pki.client("dev2");
    let other_der = tollgate::tls::load_certs(&other.0).expect("cert");
    assert!(!certificate_revoked(other_der[0].as_ref(), &crl));
    assert_eq!(reloadable.check_client_chain(&other_der), Ok(()));
    let stranger = issue(
        pki.path(),
        "stranger",
        client_params("stranger"),
        &pki.other_ca,
    );
    let stranger_der = tollgate::tls::load_certs(&stranger.0).expect("cert");
    assert_eq!(
        reloadable.check_client_chain(&stranger_der),
        Err(CertRejection::UnknownCa)
    );
    assert_eq!(
        tollgate::tls::load_crl_serials(&crl_path).expect("serials"),
        vec![vec![0x0a, 0x0b]]
    );
}

/// OpenSSL as an independent client: TLS 1.2 works (control), TLS 1.1 is refused.
#[tokio::test]
async fn openssl_s_client_tls11_is_refused() {
    if !require_peer("openssl") {
        return;
    }
    let pki = Pki::new();
    let server = build_server_config(&pki.settings(ClientCertMode::Off)).expect("server");
    for (flag, should_work) in [("-tls1_2", true), ("-tls1_3", true), ("-tls1_1", false)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(server.clone());
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"ok").await?;
            tls.shutdown().await?;
            Ok::<_, io::Error>(())
        });
        let status = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string(), flag])
                .args(["-CAfile", pki.ca_path.to_str().expect("utf8")])
                .args(["-verify_return_error", "-servername", "localhost"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status(),
        )
        .await
        .expect("openssl finished")
        .expect("openssl ran");
        let served = tokio::time::timeout(WAIT, server_task)
            .await
            .expect("server finished")
            .expect("task");
        assert_eq!(status.success(), should_work, "openssl {flag}: {status}");
        assert_eq!(served.is_ok(), should_work, "server {flag}: {served:?}");
    }
}
