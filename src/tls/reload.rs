//! A server configuration that can be swapped on SIGHUP without touching live connections.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;

use super::{
    build_client_verifier, build_server_config_with_verifier, check_client_chain, CertRejection,
    ServerTlsSettings, TlsError,
};

type Verifier = Option<Arc<dyn ClientCertVerifier>>;

/// Holds the current rustls server configuration of one listener.
///
/// Each accept takes [`current`](Self::current) once; established connections keep the
/// configuration they were accepted with, so a reload never drops healthy sessions. A reload
/// also starts a fresh session-resumption cache, so revoked clients cannot resume.
pub struct ReloadableServerConfig {
    current: RwLock<(Arc<ServerConfig>, Verifier)>,
}

impl std::fmt::Debug for ReloadableServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableServerConfig")
            .finish_non_exhaustive()
    }
}

impl ReloadableServerConfig {
    /// Builds the first configuration from `settings`.
    pub fn new(settings: &ServerTlsSettings) -> Result<Self, TlsError> {
        Ok(ReloadableServerConfig {
            current: RwLock::new(Self::build(settings)?),
        })
    }

    fn build(settings: &ServerTlsSettings) -> Result<(Arc<ServerConfig>, Verifier), TlsError> {
        let verifier = build_client_verifier(settings)?;
        let config = build_server_config_with_verifier(settings, verifier.clone())?;
        Ok((config, verifier))
    }

    /// The configuration new connections must use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Re-checks a live session's client chain (from [`super::peer_chain`]) against the
    /// current CA and CRL at the current time; after a reload, sessions that fail are to be
    /// disconnected. A listener without client certificates accepts every chain.
    pub fn check_client_chain(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), CertRejection> {
        let verifier = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone();
        match verifier {
            None => Ok(()),
            Some(v) => check_client_chain(v.as_ref(), chain),
        }
    }

    /// Re-reads certificate, key, client CA and CRL; on any error the old configuration stays
    /// in place and the error says which file is wrong.
    pub fn reload(&self, settings: &ServerTlsSettings) -> Result<(), TlsError> {
        let fresh = Self::build(settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}
