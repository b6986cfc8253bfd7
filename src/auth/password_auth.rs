//! `PasswordAuthenticator`: the CONNECT decision for certificates, passwords and
//! anonymous clients, with a bounded verification pool, a success cache, failure
//! throttling and an audit event for every decision. It must never log or keep a
//! password, and never run a hash on the async reactor.
//!
//! Rules, in order:
//! 1. A verified client certificate decides the identity (username = certificate
//!    identity, `AuthMethod::Certificate`). A CONNECT username that differs is refused
//!    (`NotAuthorized`), never silently replaced; an equal one is accepted and the
//!    password is then not needed.
//! 2. No certificate and no username: anonymous, only where `allow_anonymous`; a
//!    password without a username is refused.
//! 3. Username without certificate: refused unless the listener has `password_auth`;
//!    an empty or missing password is `BadCredentials`; otherwise throttle check, then
//!    success cache, then a hash on the blocking pool.
//!
//! Throttling answers `AuthError::Throttled` immediately while a delay is pending (no
//! sleeping, so throttled peers never hold server tasks). It is checked before the cache
//! so the cache cannot become a fast guessing oracle. The cost: someone failing against a
//! user name delays that user's devices by at most `throttle_max`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::cache::SuccessCache;
use super::jwt::{looks_like_jwt, JwtVerifier};
use super::password::{PasswordFile, Verification};
use super::throttle::{Throttle, ThrottlePolicy};
use super::{AuthError, AuthFuture, AuthMethod, AuthRequest, Authenticator, Identity, TokenStep};

/// The `[auth]` section: the password file and the authenticator's tunables. One type
/// for the file and the runtime (the authenticator reads the tunables; `app` loads
/// `password_file` into a [`PasswordFile`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// mosquitto_passwd-format password file.
    pub password_file: Option<std::path::PathBuf>,
    /// How long a successful verification is remembered (0 disables the cache).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub cache_ttl: Duration,
    /// Maximum remembered verifications (0 disables the cache).
    pub cache_capacity: usize,
    /// Delay imposed after the first failure; doubles with each further failure.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub throttle_base: Duration,
    /// Upper bound of the delay.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub throttle_max: Duration,
    /// A source or user name without failures for this long starts from zero again.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub throttle_forget_after: Duration,
    /// Maximum tracked sources and, separately, user names (bounds memory under floods).
    pub throttle_capacity: usize,
    /// Concurrent hash computations; 0 means the number of CPUs.
    pub verify_concurrency: usize,
    /// `[auth.jwt]`: JWT verification for listeners with `jwt_auth = true`.
    pub jwt: Option<super::jwt::JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            cache_ttl: Duration::from_secs(600),
            cache_capacity: 10_000,
            throttle_base: Duration::from_millis(100),
            throttle_max: Duration::from_secs(10),
            throttle_forget_after: Duration::from_secs(900),
            throttle_capacity: 100_000,
            verify_concurrency: 0,
            jwt: None,
        }
    }
}

/// Authenticator for certificates, mosquitto/argon2id password files and anonymous
/// clients. Cheap to clone (shared state). Build a new one on reload: that also empties
/// the success cache.
#[derive(Clone)]
pub struct PasswordAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    passwords: Option<Arc<PasswordFile>>,
    settings: AuthConfig,
    /// Shared across reloads (when sized the same) so a reload never doubles hashing.
    pool: Arc<Semaphore>,
    cache: Mutex<SuccessCache>,
    /// Shared across reloads (when the policy is unchanged) so a reload is no amnesty.
    throttle: Arc<Mutex<Throttle>>,
    cache_hits: AtomicU64,
    /// `[auth.jwt]` loaded, for listeners with `jwt_auth`.
    jwt: Option<Arc<JwtVerifier>>,
}

fn concurrency(settings: &AuthConfig) -> usize {
    if settings.verify_concurrency == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        settings.verify_concurrency
    }
}

fn policy(settings: &AuthConfig) -> ThrottlePolicy {
    ThrottlePolicy {
        base: settings.throttle_base,
        max: settings.throttle_max.max(settings.throttle_base),
        forget_after: settings.throttle_forget_after,
        capacity: settings.throttle_capacity.max(1),
    }
}

impl std::fmt::Debug for PasswordAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAuthenticator")
            .field(
                "users",
                &self.inner.passwords.as_ref().map(|p| p.len()).unwrap_or(0),
            )
            .field("pool", &self.inner.pool.available_permits())
            .finish_non_exhaustive()
    }
}

/// Outcome before auditing: the accepted identity's method and username, or the refusal
/// with a reason for the audit log (which may say more than the client is told).
type Decision = Result<(AuthMethod, Option<String>, &'static str), (AuthError, String)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave them logically broken
    // (plain maps), so keep serving instead of propagating the poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PasswordAuthenticator {
    /// Builds an authenticator; `passwords = None` means no password file is configured.
    pub fn new(passwords: Option<PasswordFile>, settings: AuthConfig) -> Self {
        let pool = Arc::new(Semaphore::new(concurrency(&settings)));
        let throttle = Arc::new(Mutex::new(Throttle::new(policy(&settings))));
        Self::assemble(passwords, settings, pool, throttle)
    }

    /// The authenticator to swap in on reload: new password file and an empty success
    /// cache (so changed or deleted passwords stop working at once), while failure
    /// throttling and the hashing pool carry over unless their settings changed.
    pub fn reload(&self, passwords: Option<PasswordFile>, settings: AuthConfig) -> Self {
        let old = &self.inner.settings;
        let pool = if concurrency(old) == concurrency(&settings) {
            Arc::clone(&self.inner.pool)
        } else {
            Arc::new(Semaphore::new(concurrency(&settings)))
        };
        let throttle = if policy(old) == policy(&settings) {
            Arc::clone(&self.inner.throttle)
        } else {
            Arc::new(Mutex::new(Throttle::new(policy(&settings))))
        };
        Self::assemble(passwords, settings, pool, throttle)
    }

    fn assemble(
        passwords: Option<PasswordFile>,
        settings: AuthConfig,
        pool: Arc<Semaphore>,
        throttle: Arc<Mutex<Throttle>>,
    ) -> Self {
        PasswordAuthenticator {
            inner: Arc::new(Inner {
                passwords: passwords.map(Arc::new),
                cache: Mutex::new(SuccessCache::new(
                    settings.cache_ttl,
                    settings.cache_capacity,
                )),
                settings,
                pool,
                throttle,
                cache_hits: AtomicU64::new(0),
                jwt: None,
            }),
        }
    }

    /// After a reload: whether `username`'s password entry is identical in this
    /// authenticator and in `previous`. Sessions authenticated by password whose entry
    /// changed or vanished should be disconnected (the password itself is never kept,
    /// so this is the only safe re-check).
    pub fn password_unchanged(&self, previous: &PasswordAuthenticator, username: &str) -> bool {
        let entry = |a: &PasswordAuthenticator| {
            a.inner
                .passwords
                .as_ref()
                .and_then(|f| f.hash_of(username).cloned())
        };
        match (entry(self), entry(previous)) {
            (Some(now), Some(before)) => now == before,
            _ => false,
        }
    }

    /// The same authenticator with JWT verification (right after `new`/`reload`).
    pub fn with_jwt(mut self, jwt: Option<JwtVerifier>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_jwt is called on a fresh authenticator")
            .jwt = jwt.map(Arc::new);
        self
    }

    /// The JWT verifier in force, if `[auth.jwt]` is configured.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.inner.jwt.as_deref()
    }

    /// Hashes computed so far (real and dummy); a cache hit computes none.
    pub fn hash_evaluations(&self) -> u64 {
        self.inner
            .passwords
            .as_ref()
            .map(|p| p.hash_evaluations())
            .unwrap_or(0)
    }

    /// Successful verifications answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache_hits.load(Ordering::Relaxed)
    }

    /// How long `peer`/`username` must still wait before a password attempt is considered.
    pub fn retry_after(&self, peer: IpAddr, username: Option<&str>) -> Option<Duration> {
        lock(&self.inner.throttle).wait(peer, username, Instant::now())
    }

    /// Verifications currently remembered by the success cache.
    pub fn cached_verifications(&self) -> usize {
        lock(&self.inner.cache).len()
    }

    /// Tracked (source addresses, user names) with recent failures; bounded by settings.
    pub fn throttle_entries(&self) -> (usize, usize) {
        lock(&self.inner.throttle).tracked()
    }

    /// Number of users in the password file (0 without one).
    pub fn user_count(&self) -> usize {
        self.inner.passwords.as_ref().map(|p| p.len()).unwrap_or(0)
    }
}

impl Authenticator for PasswordAuthenticator {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if let Some(verifier) = inner.jwt_for(&request) {
                return decide_jwt(verifier, Arc::clone(&inner.pool), request).await;
            }
            if request.token.is_some() {
                let msg = "the authentication method jwt needs [auth.jwt] and jwt_auth = true on the listener".to_string();
                let error = AuthError::NotAuthorized(msg.clone());
                audit(&request, &Err((error.clone(), msg)));
                return Err(error);
            }
            let decision = inner.decide(&request).await;
            audit(&request, &decision);
            match decision {
                Ok((via, username, _)) => Ok(Identity {
                    username,
                    client_id: request.client_id,
                    via,
                    listener: request.listener,
                    jwt: None,
                }),
                Err((error, _)) => Err(error),
            }
        })
    }
}

/// Rule 0 (before passwords): on a listener with `jwt_auth`, a JWS-shaped password
/// without a client certificate is a token; its verdict is final (no password retry).
async fn decide_jwt(
    verifier: Arc<JwtVerifier>,
    pool: Arc<Semaphore>,
    request: AuthRequest,
) -> Result<Identity, AuthError> {
    let token = request.password.clone().unwrap_or_default();
    let user = request.username.clone();
    // RSA verification costs tens of microseconds: off the reactor, like hashing, and
    // through the same bounded pool, so a flood of tokens cannot fill the blocking pool.
    let verdict = match pool.acquire_owned().await {
        Ok(permit) => tokio::task::spawn_blocking(move || {
            let verdict = verifier.verify(&token, user.as_deref());
            drop(permit);
            verdict
        })
        .await
        .map_err(|e| AuthError::Unavailable(format!("token verification task failed: {e}"))),
        Err(_) => Err(AuthError::Unavailable("verification pool closed".into())),
    };
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            audit(&request, &Err((e.clone(), msg)));
            return Err(e);
        }
    };
    match verdict {
        Ok((username, grant)) => {
            let reason = if request.token == Some(TokenStep::Reauthenticate) {
                "token verified (re-authentication)"
            } else {
                "token verified"
            };
            audit(
                &request,
                &Ok((AuthMethod::Jwt, Some(username.clone()), reason)),
            );
            Ok(Identity {
                username: Some(username),
                client_id: request.client_id,
                via: AuthMethod::Jwt,
                listener: request.listener,
                jwt: Some(Arc::new(grant)),
            })
        }
        Err(refusal) => {
            // A re-authentication's refusal ends a session with 0x87 and its reason.
            let error = if refusal.credentials && request.token != Some(TokenStep::Reauthenticate) {
                AuthError::BadCredentials
            } else {
                AuthError::NotAuthorized(refusal.reason.clone())
            };
            audit(&request, &Err((error.clone(), refusal.reason)));
            Err(error)
        }
    }
}

impl Inner {
    fn jwt_for(&self, req: &AuthRequest) -> Option<Arc<JwtVerifier>> {
        if req.token.is_some() {
            return self.jwt.clone();
        }
        if req.certificate_identity.is_some() || !req.jwt_auth {
            return None;
        }
        let password = req.password.as_deref()?;
        looks_like_jwt(password).then(|| self.jwt.clone()).flatten()
    }

    fn check_throttle(&self, ip: IpAddr, username: &str) -> Result<(), (AuthError, String)> {
        match lock(&self.throttle).wait(ip, Some(username), Instant::now()) {
            Some(wait) => Err((
                AuthError::Throttled,
                format!(
                    "throttled after failed attempts; next attempt allowed in {} ms",
                    wait.as_millis()
                ),
            )),
            None => Ok(()),
        }
    }

    fn cached_success(&self, ip: IpAddr, username: &str) -> Decision {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        lock(&self.throttle).succeed(ip, username);
        Ok((
            AuthMethod::Password,
            Some(username.to_string()),
            "password verified (cached)",
        ))
    }

    async fn decide(&self, req: &AuthRequest) -> Decision {
        if let Some(cert) = &req.certificate_identity {
            return match &req.username {
                Some(user) if user != cert => {
                    let msg = format!("certificate identity {cert} does not match username {user}");
                    Err((AuthError::NotAuthorized(msg.clone()), msg))
                }
                _ => Ok((
                    AuthMethod::Certificate,
                    Some(cert.clone()),
                    "verified client certificate",
                )),
            };
        }
        let Some(username) = req.username.as_deref() else {
            if req.password.is_some() {
                return Err((
                    AuthError::BadCredentials,
                    "password given without a username".into(),
                ));
            }
            if req.allow_anonymous {
                return Ok((AuthMethod::Anonymous, None, "anonymous allowed on listener"));
            }
            let msg = format!(
                "listener {} does not allow anonymous clients; send a username and password or a client certificate",
                req.listener
            );
            return Err((AuthError::NotAuthorized(msg.clone()), msg));
        };
        if !req.password_auth {
            let msg = format!(
                "listener {} does not accept username/password authentication",
                req.listener
            );
            return Err((AuthError::NotAuthorized(msg.clone()), msg));
        }
        let password = match &req.password {
            Some(p) if !p.is_empty() => p.clone(),
            _ => {
                return Err((
                    AuthError::BadCredentials,
                    "empty or missing password".into(),
                ))
            }
        };
        let Some(file) = &self.passwords else {
            let msg = "no password file is configured".to_string();
            return Err((AuthError::NotAuthorized(msg.clone()), msg));
        };
        let ip = req.peer.ip();
        self.check_throttle(ip, username)?;
        let key = {
            let mut cache = lock(&self.cache);
            let key = cache.key(username, &password);
            if cache.hit(&key, Instant::now()) {
                drop(cache);
                return self.cached_success(ip, username);
            }
            key
        };
        let permit = Arc::clone(&self.pool).acquire_owned().await.map_err(|_| {
            (
                AuthError::Unavailable("verification pool closed".into()),
                "verification pool closed".into(),
            )
        })?;
        // Failures recorded while this attempt waited for a slot apply to it too, so a
        // burst of parallel guesses costs one hash, not one per connection.
        self.check_throttle(ip, username)?;
        // Another connection with the same credentials may have been verified while this
        // one waited for a slot: a storm of identical reconnects then costs one hash.
        if lock(&self.cache).hit(&key, Instant::now()) {
            drop(permit);
            return self.cached_success(ip, username);
        }
        let file = Arc::clone(file);
        let user = username.to_string();
        // The permit travels back with the verdict and is released only after the cache
        // is updated, so the next waiter for the same credentials finds the entry.
        let (verdict, permit) =
            tokio::task::spawn_blocking(move || (file.verify(&user, &password), permit))
                .await
                .map_err(|e| {
                    let msg = format!("password verification task failed: {e}");
                    (AuthError::Unavailable(msg.clone()), msg)
                })?;
        let now = Instant::now();
        match verdict {
            Verification::Accepted => {
                lock(&self.cache).insert(key, now);
                drop(permit);
                lock(&self.throttle).succeed(ip, username);
                Ok((
                    AuthMethod::Password,
                    Some(username.to_string()),
                    "password verified",
                ))
            }
            Verification::WrongPassword | Verification::UnknownUser => {
                let delay = lock(&self.throttle).fail(ip, Some(username), now);
                let what = if verdict == Verification::UnknownUser {
                    "unknown user"
                } else {
                    "wrong password"
                };
                Err((
                    AuthError::BadCredentials,
                    format!("{what}; further attempts delayed {} ms", delay.as_millis()),
                ))
            }
        }
    }
}

fn method_name(req: &AuthRequest) -> &'static str {
    if req.certificate_identity.is_some() {
        "certificate"
    } else if req.token.is_some()
        || req.jwt_auth && req.password.as_deref().is_some_and(looks_like_jwt)
    {
        "jwt"
    } else if req.username.is_some() {
        "password"
    } else {
        "anonymous"
    }
}

/// One audit event per decision; never includes the password.
/// Client strings are escaped; a refusal line is rate-limited with the broker's
/// "Connection refused by authentication." line, which counts the event.
fn audit(req: &AuthRequest, decision: &Decision) {
    use crate::telemetry::audit::{Event, Kind};
    let event = |kind| {
        Event::new(kind)
            .listener(&req.listener)
            .peer(Some(req.peer))
            .client_id(&req.client_id)
            .username(req.username.as_deref())
            .certificate_identity(req.certificate_identity.as_deref())
            .method(method_name(req))
    };
    match decision {
        Ok((_, _, reason)) => event(Kind::AuthSucceeded)
            .outcome("success")
            .reason(reason)
            .emit(),
        Err((error, reason)) => event(Kind::AuthRefused)
            .outcome("failure")
            .error(error)
            .reason(reason)
            .emit(),
    }
}
