//! TLS for tollgate: rustls server and client configurations, certificate and key loading,
//! client-certificate verification (CA, CRL), identity extraction, handshake-failure
//! classification for the audit log, hot reload and the certificate expiry watch.
//!
//! Everything here uses rustls 0.23 with the *ring* provider (chosen over aws-lc-rs because it
//! cross-compiles to the Pi's armv7/aarch64 targets with nothing but a C cross compiler, and
//! its handshake cost is on par), TLS 1.2 and 1.3 only and AEAD
//! cipher suites with forward secrecy only; nothing older or weaker can be configured. This
//! module must never accept a private key file that group or others can read (like ssh), never
//! log key material, and never decide authorization: it only says who a peer is.

mod crl;
mod expiry;
mod identity;
mod lean;
mod reload;

pub use crl::{certificate_revoked, load_crl, load_crl_serials, RevocationList};
pub use expiry::{
    expiry_level, expiry_payload, not_after, spawn_expiry_watch, ExpiryLevel, EXPIRY_CHECK_INTERVAL,
};
pub use identity::{certificate_identity, peer_identity, rfc2253_subject};
pub use lean::LeanTlsStream;
pub use reload::ReloadableServerConfig;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

/// Whether a listener asks for client certificates (`client_certs` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientCertMode {
    /// No certificate is requested; identity comes from CONNECT.
    #[default]
    Off,
    /// A certificate is requested and verified when sent; clients without one fall back to passwords.
    Optional,
    /// No certificate (or one that fails verification) means the handshake fails.
    Required,
}

/// Which part of a verified client certificate becomes the username (`identity` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The subject's first Common Name (Mosquitto's `use_identity_as_username`).
    #[default]
    Cn,
    /// The first DNS name in subjectAltName.
    SanDns,
    /// The first e-mail address (rfc822Name) in subjectAltName.
    SanEmail,
    /// The first URI in subjectAltName (e.g. a SPIFFE id).
    SanUri,
    /// The whole subject in RFC 2253 form (Mosquitto's `use_subject_as_username`).
    Subject,
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentitySource::Cn => "cn",
            IdentitySource::SanDns => "san-dns",
            IdentitySource::SanEmail => "san-email",
            IdentitySource::SanUri => "san-uri",
            IdentitySource::Subject => "subject",
        })
    }
}

/// A TLS protocol version that can be configured; nothing older than 1.2 exists here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246), ECDHE + AEAD suites only.
    V1_2,
    /// TLS 1.3 (RFC 8446).
    V1_3,
}

impl FromStr for TlsVersion {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(TlsError::UnsupportedVersion(other.to_string())),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl<'de> serde::Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl TlsVersion {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::V1_2 => &rustls::version::TLS12,
            TlsVersion::V1_3 => &rustls::version::TLS13,
        }
    }
}

/// Everything a TLS listener needs; paths are already resolved against the config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1 RSA), mode 0600 or stricter.
    pub key: PathBuf,
    /// Enabled protocol versions (non-empty).
    pub versions: Vec<TlsVersion>,
    /// PEM CA certificate(s) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are requested or required.
    pub client_certs: ClientCertMode,
    /// Which certificate field becomes the username.
    pub identity: IdentitySource,
    /// Certificate revocation list (PEM or DER) from the client CA.
    pub crl: Option<PathBuf>,
}

/// Why a client certificate was rejected during the handshake (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRejection {
    /// The certificate does not chain to the configured client CA.
    UnknownCa,
    /// The certificate (or one in its chain) is past its notAfter date.
    Expired,
    /// The certificate (or one in its chain) is before its notBefore date.
    NotYetValid,
    /// The certificate is listed in the CRL.
    Revoked,
    /// The client sent no certificate on a listener that requires one.
    NoCertificate,
    /// The certificate is not allowed for client authentication (extended key usage).
    BadKeyUsage,
    /// Anything else (bad signature, malformed certificate, protocol error, ...).
    Other(String),
}

impl fmt::Display for CertRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertRejection::UnknownCa => f.write_str("unknown CA"),
            CertRejection::Expired => f.write_str("certificate expired"),
            CertRejection::NotYetValid => f.write_str("certificate not yet valid"),
            CertRejection::Revoked => f.write_str("certificate revoked"),
            CertRejection::NoCertificate => f.write_str("no client certificate"),
            CertRejection::BadKeyUsage => {
                f.write_str("certificate not valid for client authentication")
            }
            CertRejection::Other(s) => f.write_str(s),
        }
    }
}

/// Errors from loading TLS material and building configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read at all.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: io::Error,
    },
    /// A PEM file is malformed.
    #[error("{path}: malformed PEM: {source}")]
    Pem {
        /// File that failed.
        path: PathBuf,
        /// Parser error.
        source: io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path}: no certificate found (expected PEM '-----BEGIN CERTIFICATE-----' blocks)")]
    NoCertificate {
        /// File that failed.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{path}: no private key found (expected PEM PKCS#8, SEC1 or RSA)")]
    NoPrivateKey {
        /// File that failed.
        path: PathBuf,
    },
    /// A private key file others may access, or whose group may read it without being
    /// root or the service's own group (the rule in [`crate::fsutil::secret_exposure`]).
    #[error(
        "{path}: private key with mode {mode:04o} {}; tollgate, like ssh and PostgreSQL, refuses such keys",
        .exposure.describe(.path)
    )]
    KeyPermissions {
        /// Key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What is too open.
        exposure: crate::fsutil::SecretExposure,
    },
    /// The certificate and key could not be used together (mismatch, unsupported key type).
    #[error("{cert} with {key}: certificate and private key are not usable together: {source}")]
    CertifiedKey {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// A configured TLS version is not supported.
    #[error("unsupported TLS version {0:?}: only \"1.2\" and \"1.3\" can be configured")]
    UnsupportedVersion(String),
    /// No TLS version enabled.
    #[error(
        "no TLS version enabled: set tls_versions to [\"1.2\", \"1.3\"], [\"1.3\"] or [\"1.2\"]"
    )]
    NoVersions,
    /// Client certificates requested without a CA to verify them.
    #[error(
        "client_certs = \"{mode}\" needs client_ca (the CA that issued the device certificates)"
    )]
    ClientCaMissing {
        /// The configured mode.
        mode: &'static str,
    },
    /// A CRL was configured without client certificates.
    #[error(
        "{path}: a crl only applies to client certificates; set client_ca and client_certs too"
    )]
    CrlWithoutClientCerts {
        /// CRL file.
        path: PathBuf,
    },
    /// A CA file holds a certificate that cannot be a trust anchor.
    #[error("{path}: not a usable CA certificate: {reason}")]
    BadCa {
        /// CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A CRL file is unreadable or malformed.
    #[error("{path}: not a usable certificate revocation list (PEM or DER): {reason}")]
    BadCrl {
        /// CRL file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier ({ca}): {reason}")]
    Verifier {
        /// CA file.
        ca: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the protocol configuration.
    #[error("TLS configuration refused: {0}")]
    Config(rustls::Error),
    /// The peer's certificate could not be parsed after verification.
    #[error("client certificate cannot be parsed: {0}")]
    BadPeerCertificate(String),
    /// The verified certificate lacks the field chosen as identity.
    #[error("client certificate '{subject}' has no {wanted} to use as identity; issue it with one or change `identity`")]
    IdentityMissing {
        /// Which field was wanted.
        wanted: IdentitySource,
        /// The certificate subject, for the operator.
        subject: String,
    },
}

/// The *ring* crypto provider restricted to AEAD cipher suites with forward secrecy.
///
/// These are exactly ring's TLS 1.3 suites and the ECDHE-ECDSA/ECDHE-RSA AES-GCM and
/// CHACHA20-POLY1305 TLS 1.2 suites; key exchange is X25519, P-256 or P-384.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every PEM certificate in `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Refuses a private key file that others may access, that its group may write, or
/// that its group may read when that group is neither root (gid 0) nor this process's
/// effective group: `0600` always passes, `root:tollgate 0640` passes for the
/// `tollgate` service.
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(exposure) = crate::fsutil::secret_file_exposure(&meta) {
            return Err(TlsError::KeyPermissions {
                path: path.to_path_buf(),
                mode: meta.permissions().mode() & 0o7777,
                exposure,
            });
        }
    }
    Ok(())
}

/// Reads the first private key in `path` after checking its permissions.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_permissions(path)?;
    let bytes = read_file(path)?;
    match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Builds a root store from every certificate in a PEM CA file.
pub fn load_root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Reads a CRL in PEM (one or more `X509 CRL` blocks) or DER form.
pub fn load_crl_ders(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let bad = |reason: String| TlsError::BadCrl {
        path: path.to_path_buf(),
        reason,
    };
    let crls = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let crls = rustls_pemfile::crls(&mut &bytes[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if crls.is_empty() {
            return Err(bad("no '-----BEGIN X509 CRL-----' block found".into()));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for crl in &crls {
        x509_parser::parse_x509_crl(crl).map_err(|e| bad(e.to_string()))?;
    }
    Ok(crls)
}

fn protocol_versions(
    versions: &[TlsVersion],
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    if versions.is_empty() {
        return Err(TlsError::NoVersions);
    }
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    // Newest first, duplicates dropped.
    for v in [TlsVersion::V1_3, TlsVersion::V1_2] {
        if versions.contains(&v) {
            out.push(v.rustls());
        }
    }
    Ok(out)
}

/// Builds the verifier for client certificates of a listener, `None` when `client_certs = "off"`.
///
/// The same verifier backs the handshake and [`ReloadableServerConfig::check_client_chain`],
/// which re-checks live sessions after a reload.
pub fn build_client_verifier(
    s: &ServerTlsSettings,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    match (s.client_certs, &s.client_ca) {
        (ClientCertMode::Off, _) => {
            if let (Some(crl), None) = (&s.crl, &s.client_ca) {
                return Err(TlsError::CrlWithoutClientCerts { path: crl.clone() });
            }
            Ok(None)
        }
        (ClientCertMode::Optional, None) => Err(TlsError::ClientCaMissing { mode: "optional" }),
        (ClientCertMode::Required, None) => Err(TlsError::ClientCaMissing { mode: "required" }),
        (mode, Some(ca)) => {
            let roots = Arc::new(load_root_store(ca)?);
            let mut vb = WebPkiClientVerifier::builder_with_provider(roots, crypto_provider());
            if let Some(crl) = &s.crl {
                // Like Mosquitto's crlfile: only the client's own certificate is checked, and a
                // CRL that does not cover its issuer means "unknown status", which is refused.
                vb = vb
                    .with_crls(load_crl_ders(crl)?)
                    .only_check_end_entity_revocation();
            }
            if mode == ClientCertMode::Optional {
                vb = vb.allow_unauthenticated();
            }
            let verifier = vb.build().map_err(|e| TlsError::Verifier {
                ca: ca.clone(),
                reason: e.to_string(),
            })?;
            Ok(Some(verifier))
        }
    }
}

/// Builds the rustls server configuration for a TLS listener.
///
/// Cheap enough to call again on SIGHUP (see [`ReloadableServerConfig`]): it re-reads the
/// certificate, key, client CA and CRL from disk.
pub fn build_server_config(s: &ServerTlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = build_client_verifier(s)?;
    build_server_config_with_verifier(s, verifier)
}

pub(crate) fn build_server_config_with_verifier(
    s: &ServerTlsSettings,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions = protocol_versions(&s.versions)?;
    let certs = load_certs(&s.cert)?;
    let key = load_private_key(&s.key)?;
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&versions)
        .map_err(TlsError::Config)?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::CertifiedKey {
            cert: s.cert.clone(),
            key: s.key.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// Checks every file and setting of a TLS listener independently and returns *every* problem
/// (for `tollgate check`), where [`build_server_config`] stops at the first.
pub fn check_server_settings(s: &ServerTlsSettings) -> Vec<TlsError> {
    let mut errors = Vec::new();
    let versions_ok = match protocol_versions(&s.versions) {
        Ok(_) => true,
        Err(e) => {
            errors.push(e);
            false
        }
    };
    let cert_ok = load_certs(&s.cert).map_err(|e| errors.push(e)).is_ok();
    let key_ok = load_private_key(&s.key).map_err(|e| errors.push(e)).is_ok();
    if let Err(e) = build_client_verifier(s) {
        errors.push(e);
    }
    if versions_ok && cert_ok && key_ok {
        // Only the certificate/key pairing is left to find out.
        if let Err(e) = build_server_config_with_verifier(s, None) {
            errors.push(e);
        }
    }
    errors
}

/// The verified client certificate chain of a connection (leaf first), to keep with the
/// session so it can be re-checked after a reload; `None` when the client sent none.
/// `conn` is a `ServerConnection` or an `UnbufferedServerConnection` (via deref).
pub fn peer_chain(conn: &rustls::CommonState) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_certificates().map(<[_]>::to_vec)
}

/// Re-verifies a client chain (leaf first) with `verifier` at the current time: CA, dates,
/// key usage and CRL, exactly as the handshake does.
pub fn check_client_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), CertRejection> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertRejection::NoCertificate);
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| classify_rustls_error(&e))
}

/// Builds a rustls client configuration (for the bridge and for tests): trusts the CAs in `ca`,
/// optionally presents `(cert, key)`; TLS 1.2 and 1.3, same restricted suites as the server.
pub fn build_client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    build_client_config_with_versions(ca, client_cert, &[TlsVersion::V1_3, TlsVersion::V1_2])
}

/// [`build_client_config`] with an explicit set of protocol versions.
pub fn build_client_config_with_versions(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    versions: &[TlsVersion],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_root_store(ca)?;
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&protocol_versions(versions)?)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_private_key(key)?)
            .map_err(|source| TlsError::CertifiedKey {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?,
    };
    Ok(Arc::new(config))
}

/// Classifies a failed TLS handshake (the `io::Error` from tokio-rustls) for the audit log.
///
/// Works on the server side (rustls' own verification error) and on the client side (the
/// alert the server sent back; there a not-yet-valid certificate reads as `Expired`, since
/// TLS has one alert for both).
pub fn classify_handshake_error(e: &io::Error) -> CertRejection {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(err) => classify_rustls_error(err),
        None => CertRejection::Other(e.to_string()),
    }
}

/// Whether a failed handshake was about the client's certificate (as opposed to a port scan,
/// an old protocol version or a dropped connection).
pub fn is_certificate_rejection(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// Logs a failed TLS handshake: certificate rejections go to the `audit` target as a warning
/// with the reason, everything else is a debug line (scanners and old clients are noise).
/// Returns the classification.
pub fn log_handshake_failure(
    listener: &str,
    peer: std::net::SocketAddr,
    e: &io::Error,
) -> CertRejection {
    let reason = classify_handshake_error(e);
    if is_certificate_rejection(e) {
        crate::telemetry::audit::Event::new(crate::telemetry::audit::Kind::CertificateRejected)
            .listener(listener)
            .peer(Some(peer))
            .reason(&format!("{reason:?}"))
            .emit();
    } else {
        tracing::debug!(%listener, %peer, error = %e, "TLS handshake failed.");
    }
    reason
}

/// Classifies a rustls error; see [`classify_handshake_error`].
pub fn classify_rustls_error(err: &rustls::Error) -> CertRejection {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match err {
        E::NoCertificatesPresented => CertRejection::NoCertificate,
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => CertRejection::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => CertRejection::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => CertRejection::NotYetValid,
            C::Revoked => CertRejection::Revoked,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => CertRejection::BadKeyUsage,
            other => CertRejection::Other(format!("{other:?}")),
        },
        E::AlertReceived(A::CertificateRequired) => CertRejection::NoCertificate,
        E::AlertReceived(A::UnknownCA) => CertRejection::UnknownCa,
        E::AlertReceived(A::CertificateExpired) => CertRejection::Expired,
        E::AlertReceived(A::CertificateRevoked) => CertRejection::Revoked,
        other => CertRejection::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty key file with `mode`, in its own temporary directory.
    fn key_file(mode: u32) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.key");
        std::fs::write(&path, b"").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn key_0600_and_0400_are_accepted() {
        for mode in [0o600, 0o400] {
            let (_dir, path) = key_file(mode);
            check_key_permissions(&path).expect("owner-only key");
        }
    }

    #[test]
    fn key_0640_is_accepted_when_its_group_is_root_or_the_service_group() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, path) = key_file(0o640);
        // A new file gets this process's group: the service's own (root's when run as root).
        let gid = std::fs::metadata(&path).expect("meta").gid();
        assert_eq!(Some(gid), crate::fsutil::effective_gid());
        check_key_permissions(&path).expect("group is the service's own");
        if std::os::unix::fs::chown(&path, None, Some(0)).is_ok() {
            check_key_permissions(&path).expect("group is root");
        }
    }

    #[test]
    fn key_0640_with_another_group_is_refused_and_says_how_to_fix_it() {
        let (_dir, path) = key_file(0o640);
        if std::os::unix::fs::chown(&path, None, Some(12345)).is_err() {
            eprintln!("SKIPPED: cannot chgrp a file to gid 12345 (not root)");
            return;
        }
        let err = check_key_permissions(&path).expect_err("foreign group");
        assert!(
            matches!(
                err,
                TlsError::KeyPermissions {
                    mode: 0o640,
                    exposure: crate::fsutil::SecretExposure::ForeignGroup {
                        file_group: 12345,
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        let shown = path.display().to_string();
        assert!(
            text.starts_with(&shown)
                && text.contains("group 12345")
                && text.contains("chgrp ")
                && text.contains(&format!("chmod 600 {shown}")),
            "{text}"
        );
    }

    #[test]
    fn key_accessible_by_others_or_writable_by_group_is_refused_with_the_chmod_hint() {
        for mode in [0o644, 0o604, 0o660, 0o666] {
            let (_dir, path) = key_file(mode);
            let err = check_key_permissions(&path).expect_err("too open");
            let text = err.to_string();
            let shown = path.display().to_string();
            assert!(
                text.contains(&format!("chmod 600 {shown}"))
                    && text.contains(&format!("chmod 640 {shown}"))
                    && text.contains(&format!("mode {mode:04o}")),
                "{mode:o}: {text}"
            );
        }
    }

    #[test]
    fn parses_only_tls_1_2_and_1_3() {
        assert_eq!("1.2".parse::<TlsVersion>().ok(), Some(TlsVersion::V1_2));
        assert_eq!("1.3".parse::<TlsVersion>().ok(), Some(TlsVersion::V1_3));
        for old in ["1.0", "1.1", "tlsv1.1", ""] {
            assert!(old.parse::<TlsVersion>().is_err(), "{old} accepted");
        }
    }

    #[test]
    fn config_values_deserialize_in_kebab_case() {
        #[derive(serde::Deserialize)]
        struct L {
            client_certs: ClientCertMode,
            identity: IdentitySource,
            tls_versions: Vec<TlsVersion>,
        }
        let l: L = toml::from_str(
            "client_certs = \"required\"\nidentity = \"san-uri\"\ntls_versions = [\"1.2\", \"1.3\"]",
        )
        .expect("parse");
        assert_eq!(l.client_certs, ClientCertMode::Required);
        assert_eq!(l.identity, IdentitySource::SanUri);
        assert_eq!(l.tls_versions, [TlsVersion::V1_2, TlsVersion::V1_3]);
        let err = toml::from_str::<L>(
            "client_certs = \"off\"\nidentity = \"cn\"\ntls_versions = [\"1.1\"]",
        )
        .err()
        .expect("1.1 refused")
        .to_string();
        assert!(err.contains("only \"1.2\" and \"1.3\""), "{err}");
    }

    #[test]
    fn refuses_empty_version_list() {
        assert!(matches!(protocol_versions(&[]), Err(TlsError::NoVersions)));
    }

    #[test]
    fn provider_has_only_aead_forward_secret_suites() {
        let p = crypto_provider();
        for suite in &p.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
        }
        assert_eq!(p.cipher_suites.len(), 9);
    }

    #[test]
    fn classifies_rustls_errors() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify_handshake_error(&io(rustls::Error::NoCertificatesPresented)),
            CertRejection::NoCertificate
        );
        assert_eq!(
            classify_handshake_error(&io(C::UnknownIssuer.into())),
            CertRejection::UnknownCa
        );
        assert_eq!(
            classify_handshake_error(&io(C::Revoked.into())),
            CertRejection::Revoked
        );
        assert!(matches!(
            classify_handshake_error(&io::Error::other("reset")),
            CertRejection::Other(_)
        ));
    }

    #[test]
    fn only_certificate_failures_count_as_rejections() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert!(is_certificate_rejection(&io(C::Expired.into())));
        assert!(is_certificate_rejection(&io(
            rustls::Error::NoCertificatesPresented
        )));
        assert!(!is_certificate_rejection(&io(
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
        )));
        assert!(!is_certificate_rejection(&io::Error::from(
            io::ErrorKind::UnexpectedEof
        )));
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(
            log_handshake_failure("devices", peer, &io(C::Revoked.into())),
            CertRejection::Revoked
        );
    }
}
