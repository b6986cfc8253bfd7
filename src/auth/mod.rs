//! Authentication: who a connection is. Owns the `Identity` every connection,
//! adapter and the bridge carries, and the `Authenticator` seam called at CONNECT.
//! It must never log or store a password.
//!
//! - `password`: mosquitto (`$7$`, `$6$`) and argon2id password files, read and written.
//! - `passwd`: the `tollgate passwd` command.
//! - `password_auth`: `PasswordAuthenticator`, the CONNECT decision (certificate,
//!   password, anonymous) with the bounded hashing pool and audit events.
//! - `cache`, `throttle`: success cache and failed-attempt throttling it uses.

mod cache;
mod identity;
pub mod jwt;
mod passwd;
mod password;
mod password_auth;
mod throttle;
pub use throttle::untracked_failures;

pub use identity::{AuthMethod, Identity};
pub use passwd::{run_passwd, PasswdCommand, PasswdError};
pub use password::{
    fuzz_password_line, valid_username, HashScheme, LineProblem, PasswordFile, PasswordFileError,
    StoredHash, Verification, MOSQUITTO_DEFAULT_ITERATIONS, MOSQUITTO_SALT_LEN,
};
pub use password_auth::{AuthConfig, PasswordAuthenticator};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// What a CONNECT presents to be authenticated.
#[derive(Clone)]
pub struct AuthRequest {
    /// Listener the connection arrived on (its `[[listener]] name`).
    pub listener: Arc<str>,
    /// Whether that listener accepts anonymous clients.
    pub allow_anonymous: bool,
    /// Whether that listener accepts CONNECT username/password.
    pub password_auth: bool,
    /// Whether that listener accepts a JWT as the CONNECT password (`[auth.jwt]`).
    pub jwt_auth: bool,
    /// Remote address, for throttling and audit.
    pub peer: SocketAddr,
    /// Client id after assignment (never empty here).
    pub client_id: String,
    /// CONNECT username, if any.
    pub username: Option<String>,
    /// CONNECT password, raw bytes (MQTT passwords are binary data).
    pub password: Option<bytes::Bytes>,
    /// Identity taken from a verified client certificate, if the TLS layer had one.
    pub certificate_identity: Option<String>,
    /// `Some` when `password` is a JWT sent as MQTT 5 Authentication Data (method
    /// `jwt`): JWT verification alone decides, whatever the token looks like (never
    /// the password file), and `username` is the identity it must name.
    pub token: Option<TokenStep>,
}

/// When a token sent with the MQTT 5 Authentication Method `jwt` is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStep {
    /// In the CONNECT.
    Connect,
    /// In an AUTH 0x19 (re-authentication) of an established session.
    Reauthenticate,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is deliberately left out so a Debug print can never leak it.
        f.debug_struct("AuthRequest")
            .field("listener", &self.listener)
            .field("peer", &self.peer)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("certificate_identity", &self.certificate_identity)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Why a CONNECT was refused; maps onto CONNACK return/reason codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong or missing credentials (v5 0x86, v3.1.1 4).
    #[error("bad user name or password")]
    BadCredentials,
    /// Authenticated identity is not allowed here, e.g. anonymous on a listener that forbids it (v5 0x87, v3.1.1 5).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// Throttled after failed attempts (v5 0x9F connection rate exceeded, v3.1.1 5).
    #[error("too many failed attempts, retry later")]
    Throttled,
    /// Internal failure (v5 0x80 unspecified, v3.1.1 3 server unavailable).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Boxed future returned by `Authenticator::authenticate`.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'static>>;

/// The seam called once per CONNECT. Implementations run expensive work (password
/// hashing) off the async reactor.
pub trait Authenticator: Send + Sync + 'static {
    /// Decide who this CONNECT is, or refuse it.
    fn authenticate(&self, request: AuthRequest) -> AuthFuture;
}

/// Authenticator used until a password file / client CA is configured: it admits
/// certificate identities and anonymous clients on listeners that allow them, and
/// refuses everyone else. An unverified CONNECT username never becomes an identity:
/// anonymous clients get `username: None` whatever they sent (otherwise a client could
/// claim `admin` and inherit its ACL rules).
#[derive(Debug, Default, Clone)]
pub struct AnonymousOnly;

impl Authenticator for AnonymousOnly {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(async move {
            if request.token.is_some() {
                return Err(AuthError::NotAuthorized(
                    "the authentication method jwt needs [auth.jwt]".into(),
                ));
            }
            if let Some(cn) = request.certificate_identity {
                if let Some(user) = request.username.as_deref().filter(|u| *u != cn) {
                    return Err(AuthError::NotAuthorized(format!(
                        "certificate identity {cn} does not match username {user}"
                    )));
                }
                return Ok(Identity {
                    username: Some(cn),
                    client_id: request.client_id,
                    via: AuthMethod::Certificate,
                    listener: request.listener,
                    jwt: None,
                });
            }
            if request.allow_anonymous {
                return Ok(Identity {
                    username: None,
                    client_id: request.client_id,
                    via: AuthMethod::Anonymous,
                    listener: request.listener,
                    jwt: None,
                });
            }
            Err(AuthError::NotAuthorized(format!(
                "listener {} does not allow anonymous clients and no password file is configured",
                request.listener
            )))
        })
    }
}
