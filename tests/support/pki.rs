//! Certificates for tests: a PKI directory made with `tollgate::pki` as an operator
//! would ([`TestPki`]), and rcgen CAs and leaves for what `tollgate pki` never issues
//! (expired, not yet valid, foreign CA, odd extensions).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use tollgate::pki::{self, KeyAlgorithm, RevokeReason};

/// Write `contents` to `path` with permission bits `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Write a private key (or any secret): mode 0600, as tollgate demands (like ssh does).
pub fn write_private(path: &Path, text: &str) {
    write_file(path, text, 0o600);
}

/// An rcgen certificate authority.
pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
}

/// A self-signed CA with CN = `cn` (may sign certificates and CRLs).
pub fn new_ca(cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    Ca { cert, key }
}

/// The CA whose certificate and key are in these PEM files (to sign with it).
pub fn ca_from_files(cert: &Path, key: &Path) -> Ca {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(key).expect("read ca key")).expect("ca key");
    let params =
        CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(cert).expect("read ca"))
            .expect("ca params");
    let cert = params.self_signed(&key).expect("ca object");
    Ca { cert, key }
}

/// A leaf with CN = `cn`, valid from yesterday for 30 days.
pub fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    params
}

/// A client certificate's parameters (CN = `cn`, client authentication).
pub fn client_params(cn: &str) -> CertificateParams {
    let mut p = leaf_params(cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// A server certificate's parameters for localhost and 127.0.0.1.
pub fn server_params() -> CertificateParams {
    let mut sp = leaf_params("localhost");
    sp.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().expect("ia5")),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp
}

/// Signs `params` with `ca` and writes `<name>.crt` / `<name>.key` (0600) into `dir`.
pub fn issue(dir: &Path, name: &str, params: CertificateParams, ca: &Ca) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write_file(&c, &cert.pem(), 0o644);
    write_private(&k, &key.serialize_pem());
    (c, k)
}

/// An rcgen PKI in a temporary directory: a CA, a server certificate for localhost,
/// and a second, unrelated CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub other_ca: Ca,
    pub ca_path: PathBuf,
    pub server: (PathBuf, PathBuf),
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("test CA");
        let other_ca = new_ca("other CA");
        let ca_path = dir.path().join("ca.crt");
        write_file(&ca_path, &ca.cert.pem(), 0o644);
        let server = issue(dir.path(), "server", server_params(), &ca);
        Pki {
            dir,
            ca,
            other_ca,
            ca_path,
            server,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A client certificate with CN = `name` signed by the CA.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        issue(self.path(), name, client_params(name), &self.ca)
    }
}

/// A CA and a localhost server certificate written into a given directory.
pub struct ServerPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA (CN `test CA <tag>`) and a server certificate for localhost, written to
/// `dir/<tag>-ca.crt` and `dir/<tag>-server.{crt,key}` (several may share `dir`).
pub fn server_pki(dir: &Path, tag: &str) -> ServerPki {
    let ca = new_ca(&format!("test CA {tag}"));
    let ca_path = dir.join(format!("{tag}-ca.crt"));
    write_file(&ca_path, &ca.cert.pem(), 0o644);
    let (cert, key) = issue(dir, &format!("{tag}-server"), server_params(), &ca);
    ServerPki {
        ca: ca_path,
        cert,
        key,
    }
}

/// A PKI directory made with `tollgate::pki` as an operator would with `tollgate pki`.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// `dir/pki` with a CA named "test CA" and a server certificate for localhost and
    /// 127.0.0.1.
    pub fn new(dir: &Path) -> TestPki {
        TestPki::with_ca_name(dir, "test CA")
    }

    /// [`TestPki::new`] with the CA's name.
    pub fn with_ca_name(dir: &Path, ca_name: &str) -> TestPki {
        let dir = dir.join("pki");
        pki::init_ca(&dir, ca_name, 30, KeyAlgorithm::EcdsaP256, false).expect("init CA");
        let server = pki::issue_server(
            &dir,
            "server",
            &["localhost".to_string()],
            &["127.0.0.1".parse().expect("ip")],
            30,
            KeyAlgorithm::EcdsaP256,
            false,
        )
        .expect("server certificate");
        TestPki {
            ca: dir.join(pki::CA_CERT),
            server_cert: server.cert,
            server_key: server.key,
            dir,
        }
    }

    /// A device certificate with CN = `name`: (cert, key).
    pub fn device(&self, name: &str) -> (PathBuf, PathBuf) {
        let issued = pki::issue_device(&self.dir, name, 30, KeyAlgorithm::EcdsaP256, false)
            .expect("device certificate");
        (issued.cert, issued.key)
    }

    /// Revoke `name` and write `ca.crl`; returns the CRL path.
    pub fn revoke(&self, name: &str) -> PathBuf {
        pki::revoke(&self.dir, name, RevokeReason::KeyCompromise).expect("revoke");
        pki::write_crl(&self.dir, 7).expect("crl")
    }

    /// An (empty) CRL, so a listener can name one from the start.
    pub fn crl(&self) -> PathBuf {
        pki::write_crl(&self.dir, 7).expect("crl")
    }

    /// A client certificate signed by this CA with the given validity window (rcgen,
    /// because `tollgate pki` never issues expired or future certificates).
    pub fn device_valid_between(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        let ca = ca_from_files(&self.ca, &self.dir.join(pki::CA_KEY));
        device_cert(&self.dir, name, not_before, not_after, &ca)
    }
}

/// A device certificate from a CA nobody configured.
pub fn foreign_device(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ca = new_ca("someone else's CA");
    let now = OffsetDateTime::now_utc();
    device_cert(
        dir,
        name,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
        &ca,
    )
}

/// A device (client) certificate with CN = `name` and this validity window, written to
/// `dir/<name>-cn.{crt,key}` (characters other than ASCII letters and digits as `_`).
fn device_cert(
    dir: &Path,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ca: &Ca,
) -> (PathBuf, PathBuf) {
    let mut params = client_params(name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    issue(dir, &format!("{stem}-cn"), params, ca)
}
