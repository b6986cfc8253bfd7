//! The `audit` tracing target over real sockets: authentication success and failure,
//! certificate rejections with their reason, ACL denials and reloads are recorded with
//! structured fields, and never a password or a payload. Alone in its binary with one
//! global subscriber: tracing caches per-callsite interest process-wide, and connection
//! tasks run on every worker thread.

mod support;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Sub};
use support::{dial::*, gateway::*, peers::*, pki::*};

/// Every `audit` line of this process (other targets are not captured).
fn audit_log() -> &'static support::logs::Captured {
    support::logs::global("audit=debug")
}

fn lines_with(needle: &str) -> Vec<String> {
    let text = audit_log().text();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

const SECRET_PASSWORD: &str = "s3cret-Pa55word";
const WRONG_PASSWORD: &str = "hunter2-Guess";
const SECRET_PAYLOAD: &str = "PAYLOAD-must-not-be-logged";

async fn audited_gateway(dir: &std::path::Path) -> (Gateway, TestPki) {
    let pki = TestPki::new(dir);
    let passwd = mosquitto_passwd_file(dir, &[("meter7", SECRET_PASSWORD)]);
    std::fs::write(
        dir.join("acl"),
        "user meter7\ntopic write meters/7/#\n\nuser dev-audit\ntopic write devices/dev-audit/#\n",
    )
    .expect("acl");
    let crl = pki.crl();
    let body = format!(
        "{}{}[acl]\nfile = \"acl\"\n",
        tls_listener(
            &pki,
            &format!(
                "client_ca = {:?}\ncrl = {:?}\nclient_certs = \"optional\"\npassword_auth = true\n",
                pki.ca.display().to_string(),
                crl.display().to_string()
            )
        ),
        auth_section(&passwd)
    );
    (Gateway::start(dir, &body).await, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_certificates_acl_denials_and_reloads_are_audited_without_secrets() {
    audit_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = audited_gateway(dir.path()).await;
    let addr = gw.addr("devices");

    // Authentication success and failure.
    let mut meter = v5(
        &Dial::tls(addr, &pki.ca, None).login("meter7", SECRET_PASSWORD),
        "audit-meter",
    )
    .await
    .expect("login");
    assert!(v5(
        &Dial::tls(addr, &pki.ca, None).login("meter7", WRONG_PASSWORD),
        "audit-wrong"
    )
    .await
    .is_err());

    // Certificate rejection (revoked) and acceptance.
    let revoked = pki.device("audit-stolen");
    pki.revoke("audit-stolen");
    gw.reload.reload().await.expect("reload picks up the CRL");
    assert!(
        v5(&Dial::tls(addr, &pki.ca, Some(&revoked)), "audit-revoked")
            .await
            .is_err()
    );
    let good = pki.device("dev-audit");
    let mut cert_client = v5(&Dial::tls(addr, &pki.ca, Some(&good)), "audit-cert")
        .await
        .expect("certificate login");

    // ACL denials.
    assert_eq!(
        meter.publish("meters/8/kwh", SECRET_PAYLOAD).await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(meter.subscribe("meters/#").await, V5Sub::NotAuthorized);

    // A live session whose certificate is revoked by a reload.
    pki.revoke("dev-audit");
    gw.reload.reload().await.expect("reload");
    cert_client.closed().await;

    // A refused reload.
    std::fs::write(dir.path().join("acl"), "topic read a/#/b\n").expect("broken acl");
    gw.reload.reload().await.expect_err("refused");

    let success = lines_with("audit-meter");
    assert!(
        success.iter().any(|l| l.contains("success")
            && l.contains("meter7")
            && l.contains("listener=devices")
            && l.contains("peer=127.0.0.1")),
        "authentication success: {success:#?}"
    );
    let failure = lines_with("audit-wrong");
    assert!(
        failure.iter().any(|l| l.contains("failure")
            && l.contains("meter7")
            && l.contains("wrong password")
            && l.contains("peer=127.0.0.1")),
        "authentication failure: {failure:#?}"
    );
    let rejected = lines_with("Client certificate rejected");
    assert!(
        rejected.iter().any(|l| l.contains("Revoked")
            && l.contains("listener=devices")
            && l.contains("peer=127.0.0.1")),
        "certificate rejection with reason: {rejected:#?}"
    );
    let cert_login = lines_with("audit-cert");
    assert!(
        cert_login
            .iter()
            .any(|l| l.contains("dev-audit") && l.contains("Certificate")),
        "certificate login: {cert_login:#?}"
    );
    // One line per denial: listener, peer, identity, access, topic and the deciding rule.
    let decided = lines_with("acl_denied");
    assert!(
        decided.iter().any(|l| l.contains("audit-meter")
            && l.contains("listener=devices")
            && l.contains("peer=127.0.0.1")
            && l.contains("Write")
            && l.contains("meter7")
            && l.contains("meters/8/kwh")
            && l.contains("default deny")),
        "ACL decision: {decided:#?} {:#?}",
        lines_with("meters/8")
    );
    assert!(
        decided
            .iter()
            .any(|l| l.contains("meters/#") && l.contains("Subscribe")),
        "ACL decision: {decided:#?}"
    );
    // Exactly one audit line per denied SUBSCRIBE filter (the acl_denied line above).
    let denied_sub: Vec<_> = decided
        .iter()
        .filter(|l| l.contains("Subscribe") && l.contains("meters/#"))
        .collect();
    assert_eq!(denied_sub.len(), 1, "subscribe denial: {denied_sub:#?}");
    let ended = lines_with("no longer valid after reload");
    assert!(
        ended
            .iter()
            .any(|l| l.contains("dev-audit") && l.contains("revoked")),
        "session ended by reload: {ended:#?}"
    );
    assert!(!lines_with("Configuration reloaded").is_empty());
    assert!(
        !lines_with("reload refused").is_empty()
            || !lines_with("Configuration reload refused").is_empty()
    );

    let all = audit_log().text();
    for secret in [SECRET_PASSWORD, WRONG_PASSWORD, SECRET_PAYLOAD] {
        assert!(!all.contains(secret), "{secret} leaked into the audit log");
    }
    gw.stop().await;
}

/// Design decision 2 and issue 3 item 8: one ACL denial line carries listener, peer,
/// identity, client id, topic and the deciding rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denials_name_listener_identity_and_rule() {
    audit_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = audited_gateway(dir.path()).await;
    let addr = gw.addr("devices");
    let mut meter = v5(
        &Dial::tls(addr, &pki.ca, None).login("meter7", SECRET_PASSWORD),
        "rule-meter",
    )
    .await
    .expect("login");
    assert_eq!(
        meter.publish("meters/9/kwh", "x").await,
        PubAckReason::NotAuthorized
    );
    let denied = lines_with("rule-meter");
    assert!(
        denied.iter().any(|l| l.contains("meters/9/kwh")
            && l.contains("listener=devices")
            && l.contains("meter7")
            && l.contains("peer=127.0.0.1")
            && l.contains("rule=")),
        "{denied:#?}"
    );
    gw.stop().await;
}
