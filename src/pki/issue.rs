//! Key generation and certificate issuing with rcgen (ECDSA P-256 by default, RSA-2048 on request).

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::PkiError;

/// Key algorithm for a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (default: small, fast on a Pi).
    EcdsaP256,
    /// RSA 2048 with SHA-256 (for old clients; generated with the pure-Rust `rsa` crate
    /// because ring cannot generate RSA keys).
    Rsa2048,
}

/// Generates a fresh key pair.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, PkiError> {
    match alg {
        KeyAlgorithm::EcdsaP256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                PkiError::Rcgen {
                    what: "generating an ECDSA P-256 key".into(),
                    source,
                }
            })
        }
        KeyAlgorithm::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .map_err(|e| PkiError::Rsa(e.to_string()))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| PkiError::Rsa(e.to_string()))?;
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).map_err(|source| {
                PkiError::Rcgen {
                    what: "loading the generated RSA key".into(),
                    source,
                }
            })
        }
    }
}

/// A random positive 16-byte serial number (first byte 0x01..=0x7f, so DER keeps it as is).
pub fn random_serial() -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    bytes.to_vec()
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for devices whose clock is slightly behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// Parameters of a CA certificate (path length 0: it signs only end-entity certificates).
pub fn ca_params(cn: &str, days: u32, serial: &[u8]) -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Rcgen {
            what: "CA parameters".into(),
            source,
        })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tollgate");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    validity(&mut params, days);
    Ok(params)
}

/// Parameters of a TLS server certificate for the given names.
pub fn server_params(
    dns: &[String],
    ips: &[IpAddr],
    days: u32,
    serial: &[u8],
) -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Rcgen {
            what: "server parameters".into(),
            source,
        })?;
    for name in dns {
        let ia5 = name.clone().try_into().map_err(|_| PkiError::BadName {
            name: name.clone(),
            reason: "a DNS name must be ASCII".into(),
        })?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let cn = dns
        .first()
        .cloned()
        .or_else(|| ips.first().map(|ip| ip.to_string()))
        .unwrap_or_else(|| "tollgate".to_string());
    finish_leaf(
        &mut params,
        &cn,
        ExtendedKeyUsagePurpose::ServerAuth,
        serial,
        days,
    );
    Ok(params)
}

/// What server and device certificates share: subject O=tollgate/CN=`cn`, signature and
/// key-encipherment key usage, one extended key usage, the CA's key id, serial, validity.
fn finish_leaf(
    params: &mut CertificateParams,
    cn: &str,
    purpose: ExtendedKeyUsagePurpose,
    serial: &[u8],
    days: u32,
) {
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tollgate");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    validity(params, days);
}

/// Parameters of a device (client) certificate with CN=`name`, usable for clientAuth only.
pub fn device_params(name: &str, days: u32, serial: &[u8]) -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Rcgen {
            what: "device parameters".into(),
            source,
        })?;
    finish_leaf(
        &mut params,
        name,
        ExtendedKeyUsagePurpose::ClientAuth,
        serial,
        days,
    );
    Ok(params)
}

/// A CA loaded from disk, ready to sign.
pub struct LoadedCa {
    /// Issuer view of the CA (same subject and key as the file on disk).
    pub cert: Certificate,
    /// The CA's private key.
    pub key: KeyPair,
}

/// Loads `ca.crt` + `ca.key` from a PKI directory.
pub fn load_ca(cert_path: &Path, key_path: &Path) -> Result<LoadedCa, PkiError> {
    crate::tls::check_key_permissions(key_path)?;
    let cert_pem = super::read_text(cert_path)?;
    let key_pem = super::read_text(key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Rcgen {
        what: format!("{}: reading the CA key", key_path.display()),
        source,
    })?;
    let params =
        CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|source| PkiError::Rcgen {
            what: format!("{}: reading the CA certificate", cert_path.display()),
            source,
        })?;
    // Re-signing the parsed parameters yields an issuer with the same subject and key id, which
    // is all rcgen needs to sign certificates and CRLs that chain to the file on disk.
    let cert = params.self_signed(&key).map_err(|source| PkiError::Rcgen {
        what: format!(
            "{}: CA key does not fit the CA certificate",
            key_path.display()
        ),
        source,
    })?;
    let on_disk = crate::tls::load_certs(cert_path)?;
    let disk_spki = spki_of(on_disk[0].as_ref(), cert_path)?;
    if disk_spki != key.public_key_der() {
        return Err(PkiError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(LoadedCa { cert, key })
}

fn spki_of(der: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(cert.public_key().raw.to_vec())
}
