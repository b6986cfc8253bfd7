//! Audit events of `PasswordAuthenticator`. Alone in its own test binary because tracing
//! caches per-callsite interest process-wide, which races with tests that run without a
//! subscriber.

mod support;

use support::auth::{alice_and_bob, from, request, ALICE_PW};

use tollgate::auth::{AuthConfig, Authenticator, PasswordAuthenticator};

fn auth() -> PasswordAuthenticator {
    PasswordAuthenticator::new(Some(alice_and_bob()), AuthConfig::default())
}

#[tokio::test]
async fn audit_events_record_decisions_and_never_the_password() {
    let captured = support::logs::Captured::default();
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
