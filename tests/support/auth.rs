//! Authentication requests and a password file for the `auth_*` tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tollgate::auth::{AuthRequest, HashScheme, PasswordFile};

pub const ALICE_PW: &[u8] = b"alice-pw";

/// alice (`ALICE_PW`) and bob (`bob-pw`), hashed as mosquitto does by default.
pub fn alice_and_bob() -> PasswordFile {
    let mut f = PasswordFile::new();
    f.upsert("alice", ALICE_PW, HashScheme::mosquitto_default())
        .expect("hash");
    f.upsert("bob", b"bob-pw", HashScheme::mosquitto_default())
        .expect("hash");
    f
}

/// A CONNECT as `dev-1` from 192.0.2.10 on a TLS listener that wants passwords.
pub fn request(username: Option<&str>, password: Option<&[u8]>) -> AuthRequest {
    AuthRequest {
        listener: Arc::from("tls"),
        allow_anonymous: false,
        password_auth: true,
        jwt_auth: false,
        peer: "192.0.2.10:50000".parse().expect("addr"),
        client_id: "dev-1".into(),
        username: username.map(str::to_string),
        password: password.map(bytes::Bytes::copy_from_slice),
        certificate_identity: None,
        token: None,
    }
}

/// `r` from another peer address.
pub fn from(mut r: AuthRequest, peer: &str) -> AuthRequest {
    r.peer = peer.parse::<SocketAddr>().expect("addr");
    r
}
