//! Revocation lists as data, so the app can drop live sessions whose certificate a reloaded CRL
//! revokes (the handshake-time check is done by rustls' verifier).

use std::collections::HashSet;
use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{load_crl_ders, TlsError};

/// The revoked serial numbers of one or more CRLs, per issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    /// (raw DER issuer name, raw serial bytes) of every revoked certificate.
    entries: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl RevocationList {
    /// Number of revoked certificates listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Loads a CRL file (PEM or DER). The signature was already checked when the verifier was
/// built from the same file; this only lists what it revokes.
pub fn load_crl(path: &Path) -> Result<RevocationList, TlsError> {
    let mut list = RevocationList::default();
    for der in load_crl_ders(path)? {
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| TlsError::BadCrl {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let issuer = crl.issuer().as_raw().to_vec();
        for revoked in crl.iter_revoked_certificates() {
            list.entries
                .insert((issuer.clone(), revoked.raw_serial().to_vec()));
        }
    }
    Ok(list)
}

/// The raw serial numbers (DER integer contents) revoked by the CRL file, any issuer.
pub fn load_crl_serials(path: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    let list = load_crl(path)?;
    let mut serials: Vec<Vec<u8>> = list.entries.into_iter().map(|(_, s)| s).collect();
    serials.sort();
    Ok(serials)
}

/// Whether the DER certificate is listed in `crl` (same issuer name and serial).
/// An unparsable certificate counts as revoked: it could not have passed the handshake.
pub fn certificate_revoked(cert_der: &[u8], crl: &RevocationList) -> bool {
    match X509Certificate::from_der(cert_der) {
        Ok((_, cert)) => crl.entries.contains(&(
            cert.issuer().as_raw().to_vec(),
            cert.tbs_certificate.raw_serial().to_vec(),
        )),
        Err(_) => true,
    }
}
