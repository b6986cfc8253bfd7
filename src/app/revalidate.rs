//! What a reload means for sessions that are already connected: after the new listener
//! states (TLS server config with CA/CRL, anonymous/password flags) and the new
//! authenticator are in force, every live session is re-checked through
//! [`crate::broker::Broker::revalidate`]. A client certificate that fails the new CA/CRL
//! ends the session with v5 reason 0x8C, a password entry that changed or vanished (or a
//! listener that no longer takes passwords), a listener that no longer takes JWTs, or
//! anonymous access switched off with 0x87.
//! The broker sends the DISCONNECT and writes the audit event. It never stores a password.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{AuthMethod, PasswordAuthenticator};
use crate::broker::{RevalidateCheck, RevalidateVerdict, SessionCredentials};

use super::listener::{current, ListenerState, StateSlot};

/// Build the check for one reload: `old` was in force before, `new` is in force now, and
/// `slots` already hold the new listener states.
pub fn session_check(
    slots: &HashMap<String, StateSlot>,
    old: &PasswordAuthenticator,
    new: &PasswordAuthenticator,
) -> RevalidateCheck {
    let states: HashMap<String, Arc<ListenerState>> = slots
        .iter()
        .map(|(name, slot)| (name.clone(), current(slot)))
        .collect();
    let (old, new) = (old.clone(), new.clone());
    Arc::new(move |session: &SessionCredentials| {
        let state = states.get(session.listener.as_ref())?;
        if let (Some(chain), Some(tls)) = (&session.peer_certificates, &state.tls) {
            return tls.server.check_client_chain(chain).err().map(|reason| {
                RevalidateVerdict::certificate_rejected(format!(
                    "client certificate no longer valid: {reason}"
                ))
            });
        }
        match (session.identity.via, session.identity.username.as_deref()) {
            (AuthMethod::Password, Some(user))
                if !state.context.password_auth || !new.password_unchanged(&old, user) =>
            {
                Some(RevalidateVerdict::credentials_revoked(
                    "password changed or removed, or passwords no longer accepted here",
                ))
            }
            // A token is not kept, so it cannot be checked against new keys: its session
            // runs until `exp`, unless the listener stops taking tokens.
            (AuthMethod::Jwt, _) if !state.context.jwt_auth || new.jwt().is_none() => Some(
                RevalidateVerdict::credentials_revoked("tokens no longer accepted here"),
            ),
            (AuthMethod::Anonymous, _) if !state.context.allow_anonymous => Some(
                RevalidateVerdict::credentials_revoked("anonymous access no longer allowed here"),
            ),
            _ => None,
        }
    })
}
