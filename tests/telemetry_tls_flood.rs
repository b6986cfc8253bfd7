//! Issue 7 item 6 at the TLS layer: a peer that keeps failing the TLS handshake with a
//! certificate the listener does not trust gets at most its peer's share of "Client
//! certificate rejected." lines, while every rejection is still counted. The lines are
//! written by the listener under the broker's log limits. Alone in its binary with one
//! global subscriber: tracing caches per-callsite interest process-wide.

mod support;

use support::{dial::*, gateway::*, pki::*};
use tollgate::telemetry::audit::{self, Kind};
use tollgate::telemetry::limit::DEFAULT_PER_PEER;

fn audit_log() -> &'static support::logs::Captured {
    support::logs::global("audit=debug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rejections_from_one_peer_are_rate_limited_but_all_counted() {
    audit_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let body = tls_listener(
        &pki,
        &format!(
            "client_ca = {:?}\nclient_certs = \"required\"\n",
            pki.ca.display().to_string()
        ),
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("devices");
    // A device certificate from another CA: refused during the handshake.
    let foreign = foreign_device(dir.path(), "intruder");
    let attempts = DEFAULT_PER_PEER as usize * 2;
    let counted_before = audit::count(Kind::CertificateRejected);
    for i in 0..attempts {
        let refused = v5(
            &Dial::tls(addr, &pki.ca, Some(&foreign)),
            &format!("intruder-{i}"),
        )
        .await;
        assert!(refused.is_err(), "attempt {i} was accepted");
    }
    // The server logs after the client saw its alert: wait until every rejection counted.
    support::wait::wait_until("every rejection counted", || {
        audit::count(Kind::CertificateRejected) >= counted_before + attempts as u64
    })
    .await;
    let lines = audit_log()
        .text()
        .lines()
        .filter(|l| l.contains("Client certificate rejected"))
        .count();
    assert!(lines >= 1, "the first rejections are logged");
    assert!(
        lines <= DEFAULT_PER_PEER as usize,
        "{lines} lines for {attempts} rejections from one peer (limit {DEFAULT_PER_PEER})"
    );
    gw.stop().await;
}
