//! `index.json` in the PKI directory: every certificate issued, its serial and revocation state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::PkiError;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertKind {
    /// The certificate authority.
    Ca,
    /// A TLS server certificate.
    Server,
    /// A device (client) certificate.
    Device,
}

impl CertKind {
    /// Lower-case name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Ca => "ca",
            CertKind::Server => "server",
            CertKind::Device => "device",
        }
    }
}

/// When and why a certificate was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Unix seconds.
    pub at: i64,
    /// RFC 5280 reason, kebab-case (e.g. `key-compromise`).
    pub reason: String,
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Name given on the command line (`ca`, the server name, the device name).
    pub name: String,
    /// What it is for.
    pub kind: CertKind,
    /// Subject in RFC 2253 form.
    pub subject: String,
    /// Serial number, lower-case hex of the DER integer contents.
    pub serial: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Certificate file, relative to the PKI directory.
    pub cert: String,
    /// Set once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// The whole index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Number of the next CRL (monotonic, RFC 5280 cRLNumber).
    #[serde(default = "one")]
    pub next_crl_number: u64,
    /// Every certificate issued from this directory, oldest first.
    #[serde(default)]
    pub certs: Vec<IndexEntry>,
}

fn one() -> u64 {
    1
}

impl Index {
    /// Fresh index for a new CA.
    pub fn new() -> Self {
        Index {
            next_crl_number: 1,
            certs: Vec::new(),
        }
    }

    /// Loads the index, or an empty one when the file does not exist.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PkiError::Index {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::new()),
            Err(source) => Err(PkiError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the index atomically (0600: it lists the fleet).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| PkiError::Index {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        super::write_atomic(path, text.as_bytes(), 0o600)
    }
}
