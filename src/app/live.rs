//! Live connections and what they logged in with, so a reload can end the sessions
//! whose credentials no longer hold: a client certificate that fails the new CA/CRL,
//! a password that was changed or deleted, anonymous access that was switched off.
//! Such a connection is cut at the stream (reads and writes fail), so the broker ends
//! it like a dropped connection and cleans up normally. It never stores a password.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::auth::{
    AuthFuture, AuthMethod, AuthRequest, Authenticator, Identity, PasswordAuthenticator,
};

use super::listener::{current, StateSlot};

type Key = (Arc<str>, SocketAddr);

/// Every open client connection, by listener and peer address.
#[derive(Default)]
pub struct LiveConnections {
    entries: Mutex<HashMap<Key, LiveEntry>>,
}

struct LiveEntry {
    /// Verified client certificate chain, leaf first (TLS clients that sent one).
    chain: Option<Vec<CertificateDer<'static>>>,
    /// How the CONNECT was authenticated, once it was.
    login: Option<(AuthMethod, Option<String>)>,
    cut: CancellationToken,
}

/// Removes its connection from the registry when the connection ends.
pub struct LiveGuard {
    registry: Arc<LiveConnections>,
    key: Key,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

/// Why a live session was ended after a reload.
enum Stale {
    Certificate(String),
    Password,
    Anonymous,
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, LiveEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register a connection; the token is cancelled when a reload invalidates it.
    pub fn register(
        self: &Arc<Self>,
        listener: Arc<str>,
        peer: SocketAddr,
        chain: Option<Vec<CertificateDer<'static>>>,
    ) -> (LiveGuard, CancellationToken) {
        let cut = CancellationToken::new();
        let key = (listener, peer);
        self.lock().insert(
            key.clone(),
            LiveEntry {
                chain,
                login: None,
                cut: cut.clone(),
            },
        );
        (
            LiveGuard {
                registry: self.clone(),
                key,
            },
            cut,
        )
    }

    fn record_login(&self, listener: &Arc<str>, peer: SocketAddr, identity: &Identity) {
        if let Some(entry) = self.lock().get_mut(&(listener.clone(), peer)) {
            entry.login = Some((identity.via, identity.username.clone()));
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a reload swapped listener states and the authenticator (`old` -> `new`):
    /// cut every connection whose certificate fails its listener's new CA/CRL, whose
    /// password entry changed or vanished (or whose listener no longer takes passwords),
    /// or that is anonymous on a listener that no longer allows it. Each is audited.
    /// Returns how many were cut.
    pub fn recheck(
        &self,
        slots: &HashMap<String, StateSlot>,
        old: &PasswordAuthenticator,
        new: &PasswordAuthenticator,
    ) -> usize {
        let entries = self.lock();
        let mut cut = 0;
        for ((listener, peer), entry) in entries.iter() {
            let Some(state) = slots.get(listener.as_ref()).map(current) else {
                continue;
            };
            let stale = match (&entry.chain, &state.tls, &entry.login) {
                (Some(chain), Some(tls), _) => tls
                    .server
                    .check_client_chain(chain)
                    .err()
                    .map(|reason| Stale::Certificate(reason.to_string())),
                (_, _, Some((AuthMethod::Password, Some(user)))) => (!state.context.password_auth
                    || !new.password_unchanged(old, user))
                .then_some(Stale::Password),
                (_, _, Some((AuthMethod::Anonymous, _))) => {
                    (!state.context.allow_anonymous).then_some(Stale::Anonymous)
                }
                _ => None,
            };
            let Some(stale) = stale else { continue };
            let username = entry
                .login
                .as_ref()
                .and_then(|(_, u)| u.as_deref())
                .unwrap_or("");
            let reason = match &stale {
                Stale::Certificate(r) => format!("client certificate no longer valid: {r}"),
                Stale::Password => {
                    "password changed or removed, or passwords no longer accepted here".into()
                }
                Stale::Anonymous => "anonymous access no longer allowed here".into(),
            };
            warn!(target: "audit", %listener, %peer, username, %reason, "Session credentials no longer valid after reload; closing the connection.");
            entry.cut.cancel();
            cut += 1;
        }
        cut
    }
}

/// The authenticator the broker calls: the password authenticator, plus a note in the
/// live-connection registry of how each connection logged in (method and username).
pub struct RecordingAuthenticator {
    /// The decision maker.
    pub inner: PasswordAuthenticator,
    /// Where logins are noted.
    pub live: Arc<LiveConnections>,
}

impl Authenticator for RecordingAuthenticator {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let live = self.live.clone();
        let (listener, peer) = (request.listener.clone(), request.peer);
        let decision = self.inner.authenticate(request);
        Box::pin(async move {
            let outcome = decision.await;
            if let Ok(identity) = &outcome {
                live.record_login(&listener, peer, identity);
            }
            outcome
        })
    }
}
