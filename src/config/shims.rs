//! TEMPORARY stand-ins for `crate::tls` and `crate::pki`, which another helper is
//! writing in parallel. They expose exactly the agreed signatures so `config` and
//! `app` compile and can be tested today; every use goes through
//! `use crate::config::shims::{tls, pki}` and switches to the real modules
//! by editing those `use` lines once the branches are merged. Never grow features here.

#![allow(dead_code)]

pub mod tls {
    use std::path::PathBuf;
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// Whether clients must, may or must not present a certificate.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum ClientCertMode {
        Off,
        Optional,
        Required,
    }

    /// Which certificate field becomes the username.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum IdentitySource {
        Cn,
        SanDns,
        SanEmail,
        SanUri,
        Subject,
    }

    /// TLS protocol versions that can be configured.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TlsVersion {
        V1_2,
        V1_3,
    }

    /// Everything needed to build a listener's rustls server config.
    #[derive(Debug, Clone)]
    pub struct ServerTlsSettings {
        pub cert: PathBuf,
        pub key: PathBuf,
        pub versions: Vec<TlsVersion>,
        pub client_ca: Option<PathBuf>,
        pub client_certs: ClientCertMode,
        pub identity: IdentitySource,
        pub crl: Option<PathBuf>,
    }

    /// Errors building TLS configs (shim).
    #[derive(Debug, thiserror::Error)]
    pub enum TlsError {
        #[error("{path}: {message}")]
        File { path: PathBuf, message: String },
        #[error("{0}")]
        Rustls(String),
    }

    fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let file = std::fs::File::open(path).map_err(|e| TlsError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let certs: Result<Vec<_>, _> =
            rustls_pemfile::certs(&mut std::io::BufReader::new(file)).collect();
        let certs = certs.map_err(|e| TlsError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(TlsError::File {
                path: path.clone(),
                message: "no PEM certificate found".into(),
            });
        }
        Ok(certs)
    }

    /// Build a rustls server config (shim: no CRL support).
    pub fn build_server_config(
        s: &ServerTlsSettings,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = s
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::V1_2 => &rustls::version::TLS12,
                TlsVersion::V1_3 => &rustls::version::TLS13,
            })
            .collect();
        let certs = read_certs(&s.cert)?;
        let key_file = std::fs::File::open(&s.key).map_err(|e| TlsError::File {
            path: s.key.clone(),
            message: e.to_string(),
        })?;
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut std::io::BufReader::new(key_file))
                .map_err(|e| TlsError::File {
                    path: s.key.clone(),
                    message: e.to_string(),
                })?
                .ok_or_else(|| TlsError::File {
                    path: s.key.clone(),
                    message: "no PEM private key found".into(),
                })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match (&s.client_ca, s.client_certs) {
            (Some(ca), mode) if mode != ClientCertMode::Off => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c).map_err(|e| TlsError::Rustls(e.to_string()))?;
                }
                let vb = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let vb = if mode == ClientCertMode::Optional {
                    vb.allow_unauthenticated()
                } else {
                    vb
                };
                builder.with_client_cert_verifier(
                    vb.build().map_err(|e| TlsError::Rustls(e.to_string()))?,
                )
            }
            _ => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// Identity of a verified client certificate (shim: CN and subject only).
    pub fn peer_identity(
        conn: &rustls::ServerConnection,
        source: IdentitySource,
    ) -> Result<Option<String>, TlsError> {
        let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
            return Ok(None);
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        match source {
            IdentitySource::Subject => Ok(Some(parsed.subject().to_string())),
            _ => Ok(parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)),
        }
    }
}

pub mod pki {
    use std::path::{Path, PathBuf};

    /// Paths of the development PKI.
    #[derive(Debug, Clone)]
    pub struct DevPki {
        pub ca_cert: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub created: bool,
    }

    /// Errors creating the development PKI (shim).
    #[derive(Debug, thiserror::Error)]
    pub enum PkiError {
        #[error("{path}: {message}")]
        Io { path: PathBuf, message: String },
        #[error("certificate generation failed: {0}")]
        Rcgen(String),
    }

    fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| PkiError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.write_all(contents.as_bytes())
            .map_err(|e| PkiError::Io {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Create (first call) or reuse a CA and a localhost server certificate in `dir`.
    pub fn ensure_dev_pki(dir: &Path) -> Result<DevPki, PkiError> {
        let pki = DevPki {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            created: false,
        };
        if pki.ca_cert.exists() && pki.server_cert.exists() && pki.server_key.exists() {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).map_err(|e| PkiError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let rc = |e: rcgen::Error| PkiError::Rcgen(e.to_string());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tollgate development CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(rc)?;
        let ca = ca_params.self_signed(&ca_key).map_err(rc)?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(rc)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(rc)?;
        write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
        write(&pki.ca_cert, &ca.pem(), false)?;
        write(&pki.server_key, &key.serialize_pem(), true)?;
        write(&pki.server_cert, &cert.pem(), false)?;
        Ok(DevPki {
            created: true,
            ..pki
        })
    }
}
