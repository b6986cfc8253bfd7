//! Audit events of `PasswordAuthenticator`. Alone in its own test binary because tracing
//! caches per-callsite interest process-wide, which races with tests that run without a
//! subscriber.

mod log_capture;

use std::net::SocketAddr;
use std::sync::Arc;

use tollgate::auth::{
    AuthRequest, Authenticator, HashScheme, PasswordAuthSettings, PasswordAuthenticator,
    PasswordFile,
};

const ALICE_PW: &[u8] = b"alice-pw";

fn auth() -> PasswordAuthenticator {
    let mut f = PasswordFile::new();
    f.upsert("alice", ALICE_PW, HashScheme::mosquitto_default())
        .expect("hash");
    f.upsert("bob", b"bob-pw", HashScheme::mosquitto_default())
        .expect("hash");
    PasswordAuthenticator::new(Some(f), PasswordAuthSettings::default())
}

fn request(username: Option<&str>, password: Option<&[u8]>) -> AuthRequest {
    AuthRequest {
        listener: Arc::from("tls"),
        allow_anonymous: false,
        password_auth: true,
        peer: "192.0.2.10:50000".parse().expect("addr"),
        client_id: "dev-1".into(),
        username: username.map(str::to_string),
        password: password.map(bytes::Bytes::copy_from_slice),
        certificate_identity: None,
    }
}

fn from(mut r: AuthRequest, peer: &str) -> AuthRequest {
    r.peer = peer.parse::<SocketAddr>().expect("addr");
    r
}

#[tokio::test]
async fn audit_events_record_decisions_and_never_the_password() {
    let captured = log_capture::Captured::default();
    let _guard = tracing::subscriber::set_default(captured.subscriber("info"));

    let a = auth();
    a.authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    let _ = a
        .authenticate(from(
            request(Some("bob"), Some(b"hunter2-guess")),
            "192.0.2.77:1",
        ))
        .await;

    let out = captured.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("audit"), "{out}");
    assert!(lines[0].contains("outcome=\"success\""), "{out}");
    assert!(lines[0].contains("username=alice"), "{out}");
    assert!(lines[0].contains("client_id=dev-1"), "{out}");
    assert!(lines[0].contains("listener=tls"), "{out}");
    assert!(lines[1].contains("outcome=\"failure\""), "{out}");
    assert!(lines[1].contains("peer=192.0.2.77:1"), "{out}");
    assert!(lines[1].contains("wrong password"), "{out}");
    assert!(
        !out.contains("alice-pw") && !out.contains("hunter2-guess"),
        "{out}"
    );
}
