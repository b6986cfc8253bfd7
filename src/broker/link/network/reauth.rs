//! MQTT 5 enhanced authentication with the one method tollgate knows, `jwt`
//! (MQTT 5 §4.12): the CONNECT's Authentication Method decides whether the token in
//! its Authentication Data is verified, and a session that connected so may
//! re-authenticate with AUTH 0x19 and a fresh token (§4.12.1). It must never let a
//! re-authentication change who the session is (the token must name the session's
//! user), widen what the ACL file allows, or verify tokens without bound.
//!
//! - The method is single-step: the broker never sends AUTH 0x18, and a client's
//!   0x18 (or 0x00) is a protocol error (0x82), as is an AUTH from a client that sent
//!   no Authentication Method in its CONNECT, or one whose method is not `jwt`.
//! - The token is verified by the authenticator (same keys, algorithm allowlist,
//!   exp/nbf, iss/aud and `jti` replay cache as at CONNECT, off the reactor on the
//!   bounded verification pool). Success: AUTH 0x00 with the method; the session's
//!   grant (ACL claim and expiry) is replaced, for this connection and in the router
//!   (deliveries). Failure: DISCONNECT 0x87 with the reason, no will.
//! - At most `BUDGET` (6) re-authentications per connection per `WINDOW` (a minute);
//!   one more is DISCONNECT 0x96 (the client cannot burn CPU with signature checks).
//! - Decoding stops at the AUTH and resumes after the verdict, so every packet sent
//!   after the AUTH sees the new grant.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};

use super::protocol::{ConnState, End, BUDGET, WINDOW};
use super::session::{disconnect_packet, Session};
use crate::auth::{AuthMethod, AuthRequest, Identity, TokenStep};
use crate::broker::checks::{violation, Violation};
use crate::broker::codec::{v5, AuthFields, AuthReason};
use crate::broker::link::{Inbound, RouterMsg};
use crate::broker::reason::ReasonCode;
use crate::broker::settings::ConnectionInfo;
use crate::broker::shared::Shared;
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};

/// The Authentication Method of a token in CONNECT or AUTH (case-sensitive).
pub(super) const JWT_METHOD: &str = "jwt";
/// Longest wait for a verdict (a queue on the verification pool); then 0x87.
const VERIFY_LIMIT: Duration = Duration::from_secs(10);

/// Admission step: the CONNECT's Authentication Method. `Some` when the token is in
/// the Authentication Data (method `jwt` on a listener with `jwt_auth` and without a
/// client certificate, which decides first); an unknown method, or `jwt` where it is
/// not available, is refused with 0x8C Bad authentication method.
pub(super) fn connect_token(
    info: &ConnectionInfo,
    method: Option<&str>,
) -> Result<Option<TokenStep>, (ReasonCode, String)> {
    let Some(method) = method else {
        return Ok(None);
    };
    let reason = if method != JWT_METHOD {
        format!("unknown authentication method {method:?}; tollgate knows \"jwt\"")
    } else if !info.listener.jwt_auth {
        "the authentication method jwt is not enabled on this listener (jwt_auth)".into()
    } else if info.certificate_identity.is_some() {
        "the authentication method jwt is not used with a client certificate (the certificate decides)".into()
    } else {
        return Ok(Some(TokenStep::Connect));
    };
    if log_limit::event(Kind::InvalidConnect) {
        warn!(peer = %info.peer, listener = %info.listener.name, method = %LogStr(method), reason = %LogStr(&reason), "Connection refused: bad authentication method.");
    }
    Err((ReasonCode::BadAuthenticationMethod, reason))
}

impl ConnState {
    /// A client AUTH: a re-authentication with the method `jwt` leaves its token
    /// pending (the session verifies it before decoding further); anything else is a
    /// protocol error.
    pub(super) fn auth_packet(&mut self, auth: &v5::Auth) -> Result<(), Violation> {
        let Some(reauth) = self.reauth.as_deref_mut() else {
            return Err(violation(
                ReasonCode::ProtocolError,
                "AUTH from a client that sent no Authentication Method in its CONNECT",
            ));
        };
        let reason = AuthReason::of(auth);
        if reason != AuthReason::ReAuthenticate {
            return Err(violation(
                ReasonCode::ProtocolError,
                format!(
                    "AUTH with reason 0x{:02X}: the method jwt has one step; re-authenticate with 0x19",
                    reason.as_u8()
                ),
            ));
        }
        let fields = AuthFields::of(auth).unwrap_or_default();
        if fields.method.as_deref() != Some(JWT_METHOD) {
            return Err(violation(
                ReasonCode::ProtocolError,
                "AUTH must carry the Authentication Method of the CONNECT (jwt)",
            ));
        }
        // Copied: the read buffer is not pinned while the token is verified.
        reauth.pending = Some(
            fields
                .data
                .map_or_else(Bytes::new, |d| Bytes::copy_from_slice(&d)),
        );
        Ok(())
    }
}

impl Session {
    /// Verify a pending re-authentication token, if there is one: `None` without one,
    /// `Some(Ok(left))` with the new token's time to `exp` (AUTH 0x00 is queued and the
    /// grant replaced), `Some(Err(end))` when the connection ends (the DISCONNECT is
    /// queued).
    pub(super) async fn reauthenticate(
        &mut self,
        shared: &Shared,
    ) -> Option<Result<Duration, End>> {
        let reauth = self.state.reauth.as_deref_mut()?;
        let token = reauth.pending.take()?;
        let old = Arc::clone(&self.state.identity);
        if !reauth.admit(Instant::now()) {
            shared.stats.auth("jwt", "throttled");
            if log_limit::event(Kind::RateLimited) {
                warn!(client_id = %LogStr(&old.client_id), peer = %self.state.peer, listener = %self.listener, budget = BUDGET, "Client disconnected: re-authentications above the per-connection budget.");
            }
            let reason = format!(
                "more than {BUDGET} re-authentications per {} s",
                WINDOW.as_secs()
            );
            return Some(Err(
                self.reauth_refused(ReasonCode::MessageRateTooHigh, &reason)
            ));
        }
        let request = AuthRequest {
            listener: self.listener.clone(),
            allow_anonymous: false,
            password_auth: false,
            jwt_auth: true,
            peer: self.state.peer,
            client_id: old.client_id.clone(),
            username: old.username.clone(),
            password: Some(token),
            certificate_identity: None,
            token: Some(TokenStep::Reauthenticate),
        };
        let verdict =
            tokio::time::timeout(VERIFY_LIMIT, shared.authenticator().authenticate(request)).await;
        shared
            .stats
            .auth("jwt", crate::broker::stats::auth_outcome(&verdict));
        let fresh = match verdict {
            Ok(Ok(identity)) => identity,
            Ok(Err(e)) => {
                let reason = format!("re-authentication refused: {e}");
                return Some(Err(self.reauth_refused(ReasonCode::NotAuthorized, &reason)));
            }
            Err(_) => {
                let reason = "re-authentication refused: the token was not verified in time";
                return Some(Err(self.reauth_refused(ReasonCode::NotAuthorized, reason)));
            }
        };
        // The authenticator compared the token's user with the session's; checked again
        // here because a session must never change hands.
        let Some(grant) = fresh
            .jwt
            .filter(|_| fresh.via == AuthMethod::Jwt && fresh.username == old.username)
        else {
            let reason = "re-authentication refused: the token names another identity";
            return Some(Err(self.reauth_refused(ReasonCode::NotAuthorized, reason)));
        };
        let left = grant.remaining();
        let identity = Arc::new(Identity {
            jwt: Some(grant),
            ..Identity::clone(&old)
        });
        self.state.identity = Arc::clone(&identity);
        // Decisions of the old grant are not reused.
        self.state.write_decisions = Default::default();
        let sent = shared
            .router_tx
            .send(RouterMsg::Inbound {
                conn: self.conn,
                items: vec![Inbound::Reauthenticated(identity)],
            })
            .await;
        if sent.is_err() {
            return Some(Err(End::Server));
        }
        info!(client_id = %LogStr(&old.client_id), peer = %self.state.peer, expires_in = left.as_secs(), "Client re-authenticated.");
        let ok = AuthReason::Success.packet(Some(AuthFields {
            method: Some(JWT_METHOD.into()),
            ..AuthFields::default()
        }));
        self.state.encode(&v5::Packet::Auth(ok));
        Some(Ok(left))
    }

    /// A refused re-authentication: audited, DISCONNECT with `code` and `reason`; no
    /// will (the session's credentials are in doubt, as at a revocation).
    fn reauth_refused(&mut self, code: ReasonCode, reason: &str) -> End {
        Event::new(AuditKind::SessionRevoked)
            .identity(&self.state.identity)
            .listener(&self.listener)
            .peer(Some(self.state.peer))
            .code(code.as_u8())
            .reason(reason)
            .emit();
        if log_limit::event(Kind::AuthRefused) {
            info!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, code = code.as_u8(), reason = %LogStr(reason), "Client disconnected: re-authentication refused.");
        }
        self.state.encode(&disconnect_packet(code, reason));
        End::Revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::link::network::protocol::Reauth;

    #[test]
    fn the_budget_refills_each_window() {
        let mut r = Reauth::default();
        let t0 = Instant::now();
        for _ in 0..BUDGET {
            assert!(r.admit(t0));
        }
        assert!(!r.admit(t0 + Duration::from_secs(59)));
        assert!(r.admit(t0 + WINDOW));
    }
}
