//! JWT authentication: the `[auth.jwt]` section, the verification keys (PEM files or a
//! JWKS file on disk, never fetched over the network), the verification of a CONNECT
//! password that is a compact JWS, the `jti` replay cache and the token's grant (its
//! expiry and the optional ACL claim that narrows, never widens, the ACL file).
//! It must never log or keep a token, accept `alg: none` or an HMAC algorithm (a
//! public key used as an HMAC secret is the classic key confusion), or verify with a
//! key of another family than the token's algorithm.
//!
//! Rules:
//! - Only RS256, ES256 and EdDSA exist here; `algorithms` narrows them. The token's
//!   header is read by this module first, so `none` and `HS*` are refused with their
//!   own reason before jsonwebtoken sees them (which refuses them too: its
//!   `Validation::algorithms` must all be of the key's family, and `none` is no
//!   `Algorithm`).
//! - A key's `kid` is the JWKS `kid`, or for a PEM file its file name without the
//!   extension. A token with a `kid` is verified with that key only (unknown: refused);
//!   a token without one is tried against every key of its algorithm's family.
//! - `exp` is required; `nbf` is honoured; both with `leeway`. `iss`/`aud` are
//!   required and compared when configured; an `aud` in a token is ignored when no
//!   `audience` is configured.
//! - The identity's username is the `username_claim` (a string). A CONNECT username,
//!   if sent, must equal it (otherwise: not authorized); it may be left out. A token
//!   in a re-authentication (MQTT 5 AUTH) must name the session's username.
//! - `acl_claim` (when configured and present in the token): an object with
//!   `publish` and `subscribe` lists of filters; a missing list grants nothing. A token
//!   without the claim is limited by the ACL file alone.
//! - A token with a `jti` is accepted once until its `exp`; the cache holds at most
//!   `jti_capacity` entries, dropping expired ones first and then the oldest.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::acl::Access;
use crate::topic;

/// Longest token considered (bytes); anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Most filters one list of the ACL claim may hold.
pub const MAX_CLAIM_FILTERS: usize = 64;
/// Largest `leeway` the configuration accepts.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Most keys loaded from the key files together.
pub const MAX_KEYS: usize = 64;

/// The `[auth.jwt]` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Verification keys: PEM public keys (or certificates) and/or JWKS files (`.json`).
    pub keys: Vec<PathBuf>,
    /// Allowed algorithms: a subset of `RS256`, `ES256`, `EdDSA` (default: all three).
    pub algorithms: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Clock tolerance for `exp` and `nbf` (at most 5 minutes).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub leeway: Duration,
    /// Claim naming the device (the identity's username).
    pub username_claim: String,
    /// Claim with `publish`/`subscribe` filter lists intersected with the ACL.
    pub acl_claim: Option<String>,
    /// Most `jti` values remembered against replay.
    pub jti_capacity: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            keys: Vec::new(),
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            username_claim: "sub".into(),
            acl_claim: None,
            jti_capacity: 10_000,
        }
    }
}

/// What a verified token grants beyond the username: when it ends and, with an ACL
/// claim, the filters it narrows the ACL to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtGrant {
    /// The token's `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// `Some`: the ACL claim's lists; `None`: the ACL file alone decides.
    pub scope: Option<TokenScope>,
}

/// The ACL claim of a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenScope {
    /// Filters the token may publish to.
    pub publish: Vec<String>,
    /// Filters the token may subscribe to (and receive from).
    pub subscribe: Vec<String>,
}

impl JwtGrant {
    /// Whether the claim allows `access` on `topic` (always true without a claim).
    pub fn allows(&self, access: Access, topic_or_filter: &str) -> bool {
        let Some(scope) = &self.scope else {
            return true;
        };
        match access {
            Access::Write => scope
                .publish
                .iter()
                .any(|f| topic::matches(f, topic_or_filter)),
            Access::Read => scope
                .subscribe
                .iter()
                .any(|f| topic::matches(f, topic_or_filter)),
            Access::Subscribe => scope
                .subscribe
                .iter()
                .any(|f| topic::filter_covers(f, topic_or_filter)),
        }
    }

    /// Time left until `exp` from now (zero when already past).
    pub fn remaining(&self) -> Duration {
        let now = unix_now();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them logically broken.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256 => Some(Family::Rsa),
        Algorithm::ES256 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        _ => None,
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// The loaded `[auth.jwt]` state: keys, allowlist, claim rules and the replay cache.
pub struct JwtVerifier {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    settings: JwtConfig,
    replay: Arc<Mutex<ReplayCache>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused: the audit reason and whether it is a credentials problem
/// (v5 0x86, 3.1.1 4) or an authorization one (0x87, 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Precise reason for the audit line (never the token).
    pub reason: String,
    /// `true`: bad credentials; `false`: not authorized.
    pub credentials: bool,
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal {
        reason: reason.into(),
        credentials: true,
    }
}

fn denied(reason: impl Into<String>) -> Refusal {
    Refusal {
        reason: reason.into(),
        credentials: false,
    }
}

/// Whether a CONNECT password looks like a compact JWS (three base64url parts, a JSON
/// header): such a password goes to JWT verification on a listener with `jwt_auth`.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ") && password.iter().filter(|b| **b == b'.').count() == 2
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl JwtVerifier {
    /// Loads the keys and checks the section; every problem is returned with its key
    /// path (`auth.jwt.keys[0]`, `auth.jwt.algorithms[1]`, `auth.jwt.leeway`).
    /// `replay` carries the previous cache over a reload, so a reload is no amnesty.
    pub fn load(
        settings: &JwtConfig,
        replay: Option<Arc<Mutex<ReplayCache>>>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut algorithms = Vec::new();
        for (i, name) in settings.algorithms.iter().enumerate() {
            match parse_algorithm(name) {
                Some(a) => algorithms.push(a),
                None => problems.push(format!(
                    "auth.jwt.algorithms[{i}]: unknown or refused algorithm {name:?}; use RS256, ES256 or EdDSA (HMAC and none are never accepted)"
                )),
            }
        }
        if settings.algorithms.is_empty() {
            problems.push(
                "auth.jwt.algorithms: empty; name at least one of RS256, ES256, EdDSA".into(),
            );
        }
        if settings.leeway > MAX_LEEWAY {
            problems.push(format!(
                "auth.jwt.leeway: {} s is more than the maximum {} s",
                settings.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            ));
        }
        if settings.username_claim.is_empty() {
            problems.push("auth.jwt.username_claim: empty".into());
        }
        if settings.acl_claim.as_deref() == Some("") {
            problems
                .push("auth.jwt.acl_claim: empty; leave it out to use the ACL file alone".into());
        }
        if settings.jti_capacity == 0 {
            problems.push("auth.jwt.jti_capacity: must be at least 1".into());
        }
        if settings.keys.is_empty() {
            problems.push("auth.jwt.keys: no key file; name PEM public keys or a JWKS file".into());
        }
        let mut keys = Vec::new();
        for (i, path) in settings.keys.iter().enumerate() {
            match load_key_file(path) {
                Ok(found) => keys.extend(found),
                Err(e) => problems.push(format!("auth.jwt.keys[{i}]: {}: {e}", path.display())),
            }
        }
        if keys.len() > MAX_KEYS {
            problems.push(format!(
                "auth.jwt.keys: {} keys, more than the maximum {MAX_KEYS}",
                keys.len()
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let replay = match replay {
            Some(r) => {
                lock(&r).capacity = settings.jti_capacity;
                r
            }
            None => Arc::new(Mutex::new(ReplayCache::new(settings.jti_capacity))),
        };
        Ok(JwtVerifier {
            keys,
            algorithms,
            settings: settings.clone(),
            replay,
        })
    }

    /// The replay cache, to carry over to the verifier built on reload.
    pub fn replay_cache(&self) -> Arc<Mutex<ReplayCache>> {
        Arc::clone(&self.replay)
    }

    /// Number of keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token`; on success the username and the grant. `username` is the
    /// CONNECT username, which must equal the claim when given.
    pub fn verify(
        &self,
        token: &[u8],
        username: Option<&str>,
    ) -> Result<(String, JwtGrant), Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!(
                "token of {} bytes is longer than {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let token = std::str::from_utf8(token).map_err(|_| bad("token is not UTF-8"))?;
        let header = read_header(token)?;
        let alg = match header.alg.as_str() {
            "none" | "None" | "NONE" => return Err(bad("alg none refused")),
            a if a.starts_with("HS") => {
                return Err(bad(format!("HMAC algorithm {a} refused (key confusion)")))
            }
            a => match parse_algorithm(a).filter(|x| self.algorithms.contains(x)) {
                Some(alg) => alg,
                None => return Err(bad(format!("algorithm {a:?} not allowed"))),
            },
        };
        let family = family_of(alg).expect("allowlisted algorithms have a family");
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
                    return Err(bad(format!(
                        "unknown kid {:?}",
                        crate::telemetry::limit::LogStr(kid)
                    )));
                };
                if key.family != family {
                    return Err(bad(format!("kid {kid:?} is not a key for {}", header.alg)));
                }
                vec![key]
            }
            None => self.keys.iter().filter(|k| k.family == family).collect(),
        };
        if candidates.is_empty() {
            return Err(bad(format!("no key for algorithm {}", header.alg)));
        }
        let validation = self.validation(alg);
        let mut last = bad("signature invalid");
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.accept(data.claims, username),
                Err(e) => {
                    last = refusal_of(&e);
                    if !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.settings.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.settings.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn accept(
        &self,
        claims: Map<String, Value>,
        username: Option<&str>,
    ) -> Result<(String, JwtGrant), Refusal> {
        let claim = &self.settings.username_claim;
        let Some(name) = claims.get(claim).and_then(Value::as_str) else {
            return Err(bad(format!("claim {claim:?} missing or not a string")));
        };
        if !crate::auth::valid_username(name) {
            return Err(bad(format!("claim {claim:?} is not a valid user name")));
        }
        if let Some(user) = username.filter(|u| *u != name) {
            return Err(denied(format!(
                "username {:?} (of the CONNECT or the session) does not match the token's {claim} {:?}",
                crate::telemetry::limit::LogStr(user),
                crate::telemetry::limit::LogStr(name)
            )));
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("claim exp is not a number of seconds"))?;
        let scope = match &self.settings.acl_claim {
            Some(c) => claims.get(c).map(|v| scope_of(c, v)).transpose()?,
            None => None,
        };
        if let Some(jti) = claims.get("jti") {
            let jti = jti
                .as_str()
                .ok_or_else(|| bad("claim jti is not a string"))?;
            if jti.len() > 256 {
                return Err(bad("claim jti longer than 256 bytes"));
            }
            let mut cache = lock(&self.replay);
            if !cache.admit(jti, expires_at + self.settings.leeway.as_secs(), unix_now()) {
                return Err(denied("jti replayed: this token was already used"));
            }
        }
        Ok((name.to_string(), JwtGrant { expires_at, scope }))
    }
}

fn read_header(token: &str) -> Result<RawHeader, Refusal> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS (three dot-separated parts)"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| bad("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| bad("header is not a JSON object with alg"))
}

fn refusal_of(e: &jsonwebtoken::errors::Error) -> Refusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => bad("signature invalid"),
        K::ExpiredSignature => bad("token expired"),
        K::ImmatureSignature => bad("token not yet valid (nbf)"),
        K::InvalidIssuer => denied("wrong issuer"),
        K::InvalidAudience => denied("wrong audience"),
        K::MissingRequiredClaim(c) => bad(format!("required claim {c} missing")),
        K::InvalidAlgorithm => bad("algorithm does not fit the key"),
        other => bad(format!("token malformed: {other:?}")),
    }
}

fn scope_of(claim: &str, value: &Value) -> Result<TokenScope, Refusal> {
    let Some(obj) = value.as_object() else {
        return Err(bad(format!("claim {claim:?} is not an object")));
    };
    let list = |name: &str| -> Result<Vec<String>, Refusal> {
        let Some(v) = obj.get(name) else {
            return Ok(Vec::new());
        };
        let items = v
            .as_array()
            .ok_or_else(|| bad(format!("claim {claim}.{name} is not a list")))?;
        if items.len() > MAX_CLAIM_FILTERS {
            return Err(bad(format!(
                "claim {claim}.{name} has more than {MAX_CLAIM_FILTERS} filters"
            )));
        }
        items
            .iter()
            .map(|f| match f.as_str() {
                Some(s) if topic::validate_topic_filter(s).is_ok() => Ok(s.to_string()),
                _ => Err(bad(format!("claim {claim}.{name} holds an invalid filter"))),
            })
            .collect()
    };
    Ok(TokenScope {
        publish: list("publish")?,
        subscribe: list("subscribe")?,
    })
}

fn load_key_file(path: &Path) -> Result<Vec<Key>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > 1024 * 1024 {
        return Err("larger than 1 MiB".into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.trim_start().starts_with('{') {
        return load_jwks(&bytes);
    }
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok(vec![Key {
            kid,
            family: Family::Rsa,
            key,
        }]);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(vec![Key {
            kid,
            family: Family::Ec,
            key,
        }]);
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
        return Ok(vec![Key {
            kid,
            family: Family::Ed,
            key,
        }]);
    }
    Err("not a PEM RSA, EC P-256 or Ed25519 public key or certificate, nor a JWKS".into())
}

fn load_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "keys[{i}] is a symmetric (oct) key; HMAC is never accepted"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    Ok(keys)
}

/// `jti` values seen, each until its token's `exp` (+ leeway); bounded.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<String, u64>,
    order: VecDeque<String>,
    capacity: usize,
    evicted: u64,
}

impl ReplayCache {
    /// An empty cache for at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Records `jti` until `until`; false when it is already there (a replay).
    pub fn admit(&mut self, jti: &str, until: u64, now: u64) -> bool {
        if let Some(&end) = self.seen.get(jti) {
            if end >= now {
                return false;
            }
        }
        while self.seen.len() >= self.capacity {
            // Oldest first: expired ones go silently, a live one is counted.
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(end) = self.seen.remove(&old) {
                if end >= now {
                    self.evicted += 1;
                }
            }
        }
        if self.seen.insert(jti.to_string(), until).is_none() {
            self.order.push_back(jti.to_string());
        }
        true
    }

    /// Values remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Live values dropped because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_cache_refuses_a_second_use_and_stays_bounded() {
        let mut c = ReplayCache::new(2);
        assert!(c.admit("a", 100, 10));
        assert!(!c.admit("a", 100, 10));
        assert!(c.admit("b", 100, 10));
        assert!(c.admit("c", 100, 10));
        assert_eq!(c.len(), 2);
        assert_eq!(c.evicted(), 1);
        // An expired entry no longer blocks its value.
        let mut c = ReplayCache::new(4);
        assert!(c.admit("x", 5, 1));
        assert!(c.admit("x", 50, 6));
    }

    #[test]
    fn the_claim_narrows_by_filter() {
        let g = JwtGrant {
            expires_at: 0,
            scope: Some(TokenScope {
                publish: vec!["dev/a/#".into()],
                subscribe: vec!["cmd/a/+".into()],
            }),
        };
        assert!(g.allows(Access::Write, "dev/a/t"));
        assert!(!g.allows(Access::Write, "dev/b/t"));
        assert!(g.allows(Access::Subscribe, "cmd/a/x"));
        assert!(!g.allows(Access::Subscribe, "cmd/#"));
        assert!(g.allows(Access::Read, "cmd/a/y"));
    }

    #[test]
    fn only_jws_shaped_passwords_are_tokens() {
        assert!(looks_like_jwt(b"eyJhbGciOiJSUzI1NiJ9.eyJ9.sig"));
        assert!(!looks_like_jwt(b"secret"));
        assert!(!looks_like_jwt(b"eyJ.only-two"));
    }
}
