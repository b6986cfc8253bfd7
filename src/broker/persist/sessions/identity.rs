//! How the session log writes the method an identity was authenticated by (one byte;
//! values are never renumbered).

use crate::auth::AuthMethod;

pub(super) fn via_byte(via: AuthMethod) -> u8 {
    match via {
        AuthMethod::Password => 0,
        AuthMethod::Certificate => 1,
        AuthMethod::Anonymous => 2,
        AuthMethod::Internal => 3,
        AuthMethod::Jwt => 4,
    }
}

pub(super) fn via_from(b: u8) -> Result<AuthMethod, String> {
    Ok(match b {
        0 => AuthMethod::Password,
        1 => AuthMethod::Certificate,
        2 => AuthMethod::Anonymous,
        3 => AuthMethod::Internal,
        4 => AuthMethod::Jwt,
        v => return Err(format!("invalid identity kind {v}")),
    })
}
