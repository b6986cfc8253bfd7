//! A server configuration that can be swapped on SIGHUP without touching live connections.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;

use super::{build_server_config, ServerTlsSettings, TlsError};

/// Holds the current rustls server configuration of one listener.
///
/// Each accept takes [`current`](Self::current) once; established connections keep the
/// configuration they were accepted with, so a reload never drops healthy sessions. A reload
/// also starts a fresh session-resumption cache, so revoked clients cannot resume.
#[derive(Debug)]
pub struct ReloadableServerConfig {
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableServerConfig {
    /// Builds the first configuration from `settings`.
    pub fn new(settings: &ServerTlsSettings) -> Result<Self, TlsError> {
        Ok(Self::from_config(build_server_config(settings)?))
    }

    /// Wraps an already built configuration.
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        ReloadableServerConfig {
            current: RwLock::new(config),
        }
    }

    /// The configuration new connections must use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads certificate, key, client CA and CRL; on any error the old configuration stays
    /// in place and the error says which file is wrong.
    pub fn reload(&self, settings: &ServerTlsSettings) -> Result<(), TlsError> {
        let fresh = build_server_config(settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}
