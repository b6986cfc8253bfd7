//! tollgate's own small PKI (`tollgate pki ...` and the development PKI of `tollgate run`):
//! a CA, server and device certificates, revocation and CRLs, all with rcgen, so operators
//! never need the openssl recipes.
//!
//! A PKI directory holds `ca.crt`, `ca.key`, `<server>.crt/.key`, `devices/<name>.crt/.key`,
//! `ca.crl` and `index.json` (every issued certificate, its serial and revocation state).
//! Private keys are written 0600 and the directory 0700; this module must never overwrite an
//! existing CA unless asked to (`--force`), never print or log key material, and never write a
//! file non-atomically (a crash leaves the old file or the new one, not half of each).

mod cli;
mod index;
mod issue;

pub use cli::{run, PkiAction, PkiCommand, RevokeReason};
pub use index::{CertKind, Index, IndexEntry, Revocation};
pub use issue::{generate_key, KeyAlgorithm};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use crate::tls::{rfc2253_subject, TlsError};

/// File names inside a PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// CA private key.
pub const CA_KEY: &str = "ca.key";
/// Certificate revocation list written by `tollgate pki crl` / `revoke`.
pub const CA_CRL: &str = "ca.crl";
/// The issued-certificate index.
pub const INDEX: &str = "index.json";
/// Sub-directory of device certificates.
pub const DEVICES: &str = "devices";

/// Errors of the PKI commands.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// rcgen refused something.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// RSA key generation failed.
    #[error("RSA key generation failed: {0}")]
    Rsa(String),
    /// Loading TLS material failed (permissions, PEM).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `init` on a directory that already has a CA.
    #[error("{dir}: a CA already exists here (ca.crt/ca.key); pass --force to replace it (every certificate it issued stops working; the old CA is moved to replaced-<time>/)")]
    CaExists {
        /// PKI directory.
        dir: PathBuf,
    },
    /// A command needs a CA that does not exist.
    #[error("{dir}: no CA here; run `tollgate pki init --dir {dir}` first")]
    NoCa {
        /// PKI directory.
        dir: PathBuf,
    },
    /// A certificate would be overwritten.
    #[error("{path} already exists; pass --force to issue a new one (revoke the old one with `tollgate pki revoke`)")]
    Exists {
        /// Existing file.
        path: PathBuf,
    },
    /// A name cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `revoke` of a name that was never issued (or is already revoked).
    #[error("no unrevoked certificate named {name:?} in {index}; see `tollgate pki list`")]
    UnknownName {
        /// The name.
        name: String,
        /// Index file.
        index: PathBuf,
    },
    /// The CA certificate and key do not belong together.
    #[error("{cert} and {key} do not belong together (different public keys)")]
    Mismatch {
        /// CA certificate.
        cert: PathBuf,
        /// CA key.
        key: PathBuf,
    },
    /// The index file is corrupt.
    #[error("{path}: corrupt index: {reason}")]
    Index {
        /// Index file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate file cannot be parsed.
    #[error("{path}: cannot parse certificate: {reason}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Creates `dir` (and parents) with mode 0700. An existing directory keeps its owner and
/// group bits (an operator may open it to the service's group) but loses any access by others.
pub fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if dir.is_dir() {
            let mode = std::fs::metadata(dir)
                .map_err(io_err(dir))?
                .permissions()
                .mode();
            if mode & 0o007 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7770))
                    .map_err(io_err(dir))?;
            }
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    Ok(())
}

/// Writes `contents` to `path` through a temporary file created with `mode`, then renames it.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::fsutil::write_atomic(path, contents, mode, None).map_err(io_err(path))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks a certificate name: it becomes a file name and usually the MQTT username, so only
/// `A-Z a-z 0-9 . _ - @` are allowed, 1 to 64 characters, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason: &str| PkiError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("must not start with '.' or '-'"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(bad(
            "only letters, digits, '.', '_', '-' and '@' are allowed (no '/', '+', '#' or spaces)",
        ));
    }
    Ok(())
}

/// What `issue_*` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Certificate file (PEM).
    pub cert: PathBuf,
    /// Private key file (PEM PKCS#8, 0600).
    pub key: PathBuf,
    /// Index entry recorded for it.
    pub entry: IndexEntry,
    /// Where `init --force` moved the CA it replaced (ca.crt, ca.key, index.json, ca.crl).
    pub replaced: Option<PathBuf>,
}

fn entry_for(
    name: &str,
    kind: CertKind,
    der: &[u8],
    cert_rel: &str,
) -> Result<IndexEntry, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse {
        path: PathBuf::from(cert_rel),
        reason: e.to_string(),
    })?;
    Ok(IndexEntry {
        name: name.to_string(),
        kind,
        subject: rfc2253_subject(cert.subject()),
        serial: hex(cert.tbs_certificate.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
        cert: cert_rel.to_string(),
        revoked: None,
    })
}

/// Creates a new CA in `dir` (`tollgate pki init`).
pub fn init_ca(
    dir: &Path,
    cn: &str,
    days: u32,
    alg: KeyAlgorithm,
    force: bool,
) -> Result<Issued, PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(PkiError::CaExists {
            dir: dir.to_path_buf(),
        });
    }
    create_private_dir(dir)?;
    let key = generate_key(alg)?;
    let replaced = if cert_path.exists() || key_path.exists() {
        Some(set_aside_ca(dir)?)
    } else {
        None
    };
    let cert = issue::ca_params(cn, days, &issue::random_serial())?
        .self_signed(&key)
        .map_err(|source| PkiError::Rcgen {
            what: "signing the CA certificate".into(),
            source,
        })?;
    let entry = entry_for("ca", CertKind::Ca, cert.der(), CA_CERT)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    // A new CA starts a new index: certificates of the old CA cannot be revoked by it anyway.
    let mut index = Index::new();
    index.certs.push(entry.clone());
    index.save(&dir.join(INDEX))?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        entry,
        replaced,
    })
}

/// Moves the current CA files into `replaced-<unix time>/` so `--force` never destroys a CA key.
fn set_aside_ca(dir: &Path) -> Result<PathBuf, PkiError> {
    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    let mut aside = dir.join(format!("replaced-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("replaced-{stamp}-{n}"));
        n += 1;
    }
    create_private_dir(&aside)?;
    for name in [CA_CERT, CA_KEY, INDEX, CA_CRL] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name)).map_err(io_err(&from))?;
        }
    }
    Ok(aside)
}

fn load_ca_in(dir: &Path) -> Result<issue::LoadedCa, PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !cert_path.exists() || !key_path.exists() {
        return Err(PkiError::NoCa {
            dir: dir.to_path_buf(),
        });
    }
    issue::load_ca(&cert_path, &key_path)
}

fn issue_leaf(
    dir: &Path,
    name: &str,
    kind: CertKind,
    rel_base: &str,
    params: rcgen::CertificateParams,
    alg: KeyAlgorithm,
    force: bool,
) -> Result<Issued, PkiError> {
    let ca = load_ca_in(dir)?;
    let cert_rel = format!("{rel_base}.crt");
    let (cert_path, key_path) = (dir.join(&cert_rel), dir.join(format!("{rel_base}.key")));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(PkiError::Exists { path: cert_path });
    }
    if let Some(parent) = cert_path.parent() {
        create_private_dir(parent)?;
    }
    let key = generate_key(alg)?;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(|source| PkiError::Rcgen {
            what: format!("signing the certificate for {name}"),
            source,
        })?;
    let entry = entry_for(name, kind, cert.der(), &cert_rel)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let index_path = dir.join(INDEX);
    let mut index = Index::load(&index_path)?;
    index.certs.push(entry.clone());
    index.save(&index_path)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        entry,
        replaced: None,
    })
}

/// Issues a server certificate `<dir>/<name>.crt` for the given DNS names and IP addresses.
pub fn issue_server(
    dir: &Path,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
    days: u32,
    alg: KeyAlgorithm,
    force: bool,
) -> Result<Issued, PkiError> {
    validate_name(name)?;
    if name == "ca" {
        return Err(PkiError::BadName {
            name: name.into(),
            reason: "reserved for the CA".into(),
        });
    }
    let params = issue::server_params(dns, ips, days, &issue::random_serial())?;
    issue_leaf(dir, name, CertKind::Server, name, params, alg, force)
}

/// Issues a device certificate `<dir>/devices/<name>.crt` with CN=`name` (clientAuth only).
pub fn issue_device(
    dir: &Path,
    name: &str,
    days: u32,
    alg: KeyAlgorithm,
    force: bool,
) -> Result<Issued, PkiError> {
    validate_name(name)?;
    let params = issue::device_params(name, days, &issue::random_serial())?;
    let rel = format!("{DEVICES}/{name}");
    issue_leaf(dir, name, CertKind::Device, &rel, params, alg, force)
}

/// Marks every unrevoked certificate named `name` as revoked; returns the entries revoked.
/// Call [`write_crl`] afterwards to publish it (the CLI does both).
pub fn revoke(dir: &Path, name: &str, reason: RevokeReason) -> Result<Vec<IndexEntry>, PkiError> {
    let index_path = dir.join(INDEX);
    let mut index = Index::load(&index_path)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut revoked = Vec::new();
    for entry in index.certs.iter_mut() {
        if entry.name == name && entry.kind != CertKind::Ca && entry.revoked.is_none() {
            entry.revoked = Some(Revocation {
                at: now,
                reason: reason.as_str().to_string(),
            });
            revoked.push(entry.clone());
        }
    }
    if revoked.is_empty() {
        return Err(PkiError::UnknownName {
            name: name.to_string(),
            index: index_path,
        });
    }
    index.save(&index_path)?;
    Ok(revoked)
}

/// Writes `<dir>/ca.crl` (PEM, signed by the CA) listing every revoked certificate; the CRL
/// says the next one comes within `days` days. Returns its path.
pub fn write_crl(dir: &Path, days: u32) -> Result<PathBuf, PkiError> {
    let ca = load_ca_in(dir)?;
    let index_path = dir.join(INDEX);
    let mut index = Index::load(&index_path)?;
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::new();
    for entry in &index.certs {
        let Some(rev) = &entry.revoked else { continue };
        let serial = unhex(&entry.serial).ok_or_else(|| PkiError::Index {
            path: index_path.clone(),
            reason: format!("serial {:?} of {} is not hex", entry.serial, entry.name),
        })?;
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::from_unix_timestamp(rev.at).unwrap_or(now),
            // RFC 5280 5.3.1: "unspecified" should be expressed by leaving the reason out.
            reason_code: match RevokeReason::from_str_lossy(&rev.reason) {
                RevokeReason::Unspecified => None,
                reason => Some(reason.rcgen()),
            },
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(i64::from(days.max(1))),
        crl_number: SerialNumber::from(index.next_crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&ca.cert, &ca.key)
        .map_err(|source| PkiError::Rcgen {
            what: "signing the CRL".into(),
            source,
        })?;
    let pem = crl.pem().map_err(|source| PkiError::Rcgen {
        what: "encoding the CRL".into(),
        source,
    })?;
    let path = dir.join(CA_CRL);
    write_atomic(&path, pem.as_bytes(), 0o644)?;
    index.next_crl_number += 1;
    index.save(&index_path)?;
    Ok(path)
}

/// Every certificate issued from `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<IndexEntry>, PkiError> {
    let index_path = dir.join(INDEX);
    if !index_path.exists() && !dir.join(CA_CERT).exists() {
        return Err(PkiError::NoCa {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Index::load(&index_path)?.certs)
}

/// The development PKI that `tollgate run` without a config uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// CA certificate to give clients (`--cafile`).
    pub ca_cert: PathBuf,
    /// Server certificate (SAN localhost, 127.0.0.1, ::1 and the host name).
    pub server_cert: PathBuf,
    /// Server private key (0600).
    pub server_key: PathBuf,
    /// Development device (client) certificate, CN `dev-device`, for `--cert`.
    pub device_cert: PathBuf,
    /// Its private key (0600), for `--key`.
    pub device_key: PathBuf,
    /// Whether anything was generated by this call (false when everything was reused).
    pub created: bool,
}

/// The names the development server certificate covers.
pub fn dev_server_names() -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if valid && host != "localhost" {
            dns.push(host.to_string());
            if !host.contains('.') {
                dns.push(format!("{host}.local"));
            }
        }
    }
    let ips = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    (dns, ips)
}

fn expires_within(path: &Path, days: i64) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok(certs) = crate::tls::load_certs(path) else {
        return true;
    };
    let Ok((_, cert)) = X509Certificate::from_der(certs[0].as_ref()) else {
        return true;
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    cert.validity().not_after.timestamp() - now < days * 86_400
}

/// CN of the development device certificate (also its username on the default listener).
pub const DEV_DEVICE: &str = "dev-device";

/// Creates (first call) or reuses (later calls) a development CA, server certificate and
/// device (client) certificate in `dir` (0700, keys 0600). A server or device certificate
/// within 30 days of expiry is re-issued.
pub fn ensure_dev_pki(dir: &Path) -> Result<DevPki, PkiError> {
    let ca_cert = dir.join(CA_CERT);
    let server_cert = dir.join("server.crt");
    let server_key = dir.join("server.key");
    let mut created = false;
    if !ca_cert.exists() || !dir.join(CA_KEY).exists() || expires_within(&ca_cert, 30) {
        init_ca(
            dir,
            "tollgate development CA",
            3650,
            KeyAlgorithm::EcdsaP256,
            true,
        )?;
        created = true;
    } else {
        create_private_dir(dir)?;
    }
    if created || !server_cert.exists() || !server_key.exists() || expires_within(&server_cert, 30)
    {
        let (dns, ips) = dev_server_names();
        issue_server(
            dir,
            "server",
            &dns,
            &ips,
            825,
            KeyAlgorithm::EcdsaP256,
            true,
        )?;
        created = true;
    }
    let device_cert = dir.join(DEVICES).join(format!("{DEV_DEVICE}.crt"));
    let device_key = dir.join(DEVICES).join(format!("{DEV_DEVICE}.key"));
    if created || !device_cert.exists() || !device_key.exists() || expires_within(&device_cert, 30)
    {
        issue_device(dir, DEV_DEVICE, 825, KeyAlgorithm::EcdsaP256, true)?;
        created = true;
    }
    Ok(DevPki {
        ca_cert,
        server_cert,
        server_key,
        device_cert,
        device_key,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_wildcards_or_slashes_are_refused() {
        for bad in ["", "a/b", "a+b", "#", "-x", ".hidden", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["sensor_001", "dev-1.plant", "pump@line3"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes = vec![0x01, 0xab, 0x00, 0x7f];
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[cfg(unix)]
    #[test]
    fn dev_pki_is_created_once_with_private_modes_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("dev-pki");
        let first = ensure_dev_pki(&dir).expect("create");
        assert!(first.created);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // An operator may open the directory to the service's group, never to others.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&dir).expect("existing dir");
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&first.server_key), 0o600);
        assert_eq!(mode(&first.device_key), 0o600);
        assert!(first.device_cert.exists());
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        let cert_before = std::fs::read(&first.server_cert).expect("read");
        let second = ensure_dev_pki(&dir).expect("reuse");
        assert!(!second.created);
        assert_eq!(
            std::fs::read(&second.server_cert).expect("read"),
            cert_before
        );
    }
}
