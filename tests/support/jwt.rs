//! Token material for the JWT tests (edge_jwt, edge_reauth): the issuer, audience and
//! ACL their gateways are configured with, key pairs made at test time, and claims.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::EncodingKey;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.example";
pub const AUDIENCE: &str = "tollgate";

/// The ACL file: dev-1 and dev-2 may do anything under site/; a token's claim may only
/// narrow it.
pub const ACL: &str = "user dev-1\ntopic readwrite site/#\n\nuser dev-2\ntopic readwrite site/#\n";

/// Seconds since the Unix epoch (the unit of `exp`, `nbf` and `iat`).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A fresh P-256 or Ed25519 key pair (rcgen): the signing key, the public key as PEM,
/// and the pair itself.
pub fn rcgen_pair(
    alg: &'static rcgen::SignatureAlgorithm,
) -> (EncodingKey, String, rcgen::KeyPair) {
    let pair = rcgen::KeyPair::generate_for(alg).expect("key pair");
    let private_pem = pair.serialize_pem();
    let key = if alg == &rcgen::PKCS_ED25519 {
        EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("ed key")
    } else {
        EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("ec key")
    };
    (key, pair.public_key_pem(), pair)
}

/// Claims of a good token for `sub`, valid for `lifetime` seconds from now.
pub fn claims(sub: &str, lifetime: u64) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + lifetime})
}
