//! Revalidation of live sessions after a reload: what a session was admitted with
//! (`SessionCredentials`), the check a reload hands over (`RevalidateCheck`) and the
//! verdict that ends a session (`RevalidateVerdict`, with its v5 reason code). The
//! checks run on the connection tasks; this module only names them and must never
//! decide anything itself.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::reason::ReasonCode;
use crate::auth::Identity;

/// What a live network session was admitted with, as shown to a revalidation check.
#[derive(Debug, Clone)]
pub struct SessionCredentials {
    /// The identity established at CONNECT.
    pub identity: Identity,
    /// Listener the connection came in on.
    pub listener: Arc<str>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Verified client certificate chain, leaf first, if the client presented one.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Why a revalidation check ends a session; carries the v5 DISCONNECT reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevalidateVerdict {
    code: ReasonCode,
    reason: String,
}

impl RevalidateVerdict {
    /// Credentials no longer valid (user removed, password changed, identity no
    /// longer allowed on the listener): v5 reason 0x87 Not authorized.
    pub fn credentials_revoked(reason: impl Into<String>) -> Self {
        RevalidateVerdict {
            code: ReasonCode::NotAuthorized,
            reason: reason.into(),
        }
    }

    /// Client certificate no longer valid (revoked by the CRL, expired, CA no longer
    /// trusted): v5 reason 0x8C Bad authentication method.
    pub fn certificate_rejected(reason: impl Into<String>) -> Self {
        RevalidateVerdict {
            code: ReasonCode::BadAuthenticationMethod,
            reason: reason.into(),
        }
    }

    /// The v5 DISCONNECT reason code (0x87 or 0x8C).
    pub fn reason_code(&self) -> u8 {
        self.code.as_u8()
    }

    /// The reason string sent to v5 clients and logged.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A revalidation check: `Some(verdict)` ends the session, `None` keeps it.
pub type RevalidateCheck =
    Arc<dyn Fn(&SessionCredentials) -> Option<RevalidateVerdict> + Send + Sync>;
