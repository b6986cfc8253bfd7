//! Mutual TLS over real sockets: certificates issued with `tollgate::pki` (rcgen for
//! the ones it refuses to make), the certificate CN as the username with ACLs on it,
//! every kind of bad or missing client certificate refused at the handshake,
//! `client_certs = "optional"` falling back to passwords, and mosquitto_pub with
//! `--cafile/--cert/--key` as an independent client.

mod support;

use std::path::Path;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Sub};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::{dial::*, gateway::*, peers::*, pki::*, wait::*};

const RULES: &str = r##"
[[acl.rule]]
user = "sensor_001"
access = "write"
topic = "sensors/001/#"

[[acl.rule]]
user = "sensor_001"
access = "read"
topic = "commands/001"

[[acl.rule]]
pattern = true
access = "readwrite"
topic = "devices/%u/#"

[[acl.rule]]
user = "admin"
access = "readwrite"
topic = "#"
"##;

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

async fn mtls_gateway(dir: &Path, pki: &TestPki, extra: &str) -> Gateway {
    let crl = pki.crl();
    let listener = tls_listener(
        pki,
        &format!(
            "client_ca = {:?}\ncrl = {:?}\nidentity = \"cn\"\n{extra}",
            pki.ca.display().to_string(),
            crl.display().to_string()
        ),
    );
    Gateway::start(dir, &format!("{listener}{RULES}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_cn_is_the_username_and_acls_apply_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let sensor = pki.device("sensor_001");
    let admin_cert = pki.device("admin");
    let gw = mtls_gateway(
        dir.path(),
        &pki,
        "client_certs = \"required\"\npassword_auth = false\n",
    )
    .await;
    let addr = gw.addr("devices");
    let mut admin = v5(&Dial::tls(addr, &pki.ca, Some(&admin_cert)), "ops")
        .await
        .expect("admin by certificate");
    assert_eq!(admin.subscribe("#").await, V5Sub::Success(Q5::AtLeastOnce));
    let mut dev = v5(&Dial::tls(addr, &pki.ca, Some(&sensor)), "any-client-id")
        .await
        .expect("sensor by certificate");
    assert_eq!(
        dev.publish("sensors/001/t", "1").await,
        PubAckReason::Success
    );
    assert_eq!(
        dev.publish("sensors/002/t", "2").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        dev.publish("devices/sensor_001/state", "up").await,
        PubAckReason::Success,
        "%u is the certificate CN"
    );
    assert_eq!(
        dev.publish("devices/admin/state", "x").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        dev.subscribe("commands/001").await,
        V5Sub::Success(Q5::AtLeastOnce)
    );
    assert_eq!(dev.subscribe("commands/#").await, V5Sub::NotAuthorized);
    assert_eq!(admin.publish("marker", MARKER).await, PubAckReason::Success);
    let mut topics: Vec<String> = admin
        .messages_before_marker("marker")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    topics.sort();
    assert_eq!(topics, ["devices/sensor_001/state", "sensors/001/t"]);

    // A CONNECT username that differs from the certificate is refused, never swapped in.
    let claims_admin = Dial::tls(addr, &pki.ca, Some(&sensor)).login("admin", "whatever");
    assert_eq!(
        v5(&claims_admin, "liar").await.err().as_deref(),
        Some("NotAuthorized")
    );
    // Repeating the certificate's own name is fine.
    let same = Dial::tls(addr, &pki.ca, Some(&sensor)).login("sensor_001", "ignored");
    v5(&same, "honest").await.expect("same name");

    // mosquitto_pub with --cafile/--cert/--key, as the seeds' ESP32/paho clients would.
    let port = gw.port("devices");
    let mut args = mosquitto_tls_args(&port, &pki.ca, Some(&sensor));
    args.extend(["-q", "1", "-t", "sensors/001/humidity", "-m", "40"].map(String::from));
    assert!(mosquitto_pub(&args));
    assert_eq!(
        admin.message().await,
        ("sensors/001/humidity".to_string(), "40".to_string())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_expired_not_yet_valid_revoked_and_missing_certificates_fail_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let good = pki.device("good");
    let revoked = pki.device("stolen");
    pki.revoke("stolen");
    let now = time::OffsetDateTime::now_utc();
    let expired = pki.device_valid_between("expired", now - days(30), now - days(1));
    let future = pki.device_valid_between("future", now + days(1), now + days(30));
    let foreign = foreign_device(dir.path(), "foreign");
    let gw = mtls_gateway(
        dir.path(),
        &pki,
        "client_certs = \"required\"\npassword_auth = false\n",
    )
    .await;
    let addr = gw.addr("devices");
    v5(&Dial::tls(addr, &pki.ca, Some(&good)), "good")
        .await
        .expect("a valid certificate connects");
    for (what, cert) in [
        ("revoked (CRL)", Some(&revoked)),
        ("expired", Some(&expired)),
        ("not yet valid", Some(&future)),
        ("from another CA", Some(&foreign)),
        ("missing", None),
    ] {
        let dial = Dial::tls(addr, &pki.ca, cert);
        assert!(v5(&dial, "v5").await.is_err(), "{what}: refused (v5)");
        assert!(v4(&dial, "v4").await.is_err(), "{what}: refused (3.1.1)");
    }
    // The same with mosquitto_pub as the client.
    let port = gw.port("devices");
    let publish_with = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        let mut args = mosquitto_tls_args(&port, &pki.ca, cert);
        args.extend(["-q", "1", "-t", "devices/x/y", "-m", "x"].map(String::from));
        mosquitto_pub(&args)
    };
    assert!(publish_with(Some(&good)));
    assert!(!publish_with(Some(&revoked)));
    assert!(!publish_with(Some(&foreign)));
    assert!(!publish_with(None));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_fall_back_to_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let sensor = pki.device("sensor_001");
    let foreign = foreign_device(dir.path(), "foreign");
    let passwd = mosquitto_passwd_file(dir.path(), &[("admin", "admin-pw")]);
    let crl = pki.crl();
    let listener = tls_listener(
        &pki,
        &format!(
            "client_ca = {:?}\ncrl = {:?}\nclient_certs = \"optional\"\npassword_auth = true\n",
            pki.ca.display().to_string(),
            crl.display().to_string()
        ),
    );
    let gw = Gateway::start(
        dir.path(),
        &format!("{listener}{}{RULES}", auth_section(&passwd)),
    )
    .await;
    let addr = gw.addr("devices");
    // No certificate: the password decides.
    let mut admin = v5(
        &Dial::tls(addr, &pki.ca, None).login("admin", "admin-pw"),
        "a",
    )
    .await
    .expect("password without certificate");
    assert_eq!(admin.subscribe("#").await, V5Sub::Success(Q5::AtLeastOnce));
    assert_eq!(
        v5(&Dial::tls(addr, &pki.ca, None).login("admin", "nope"), "b")
            .await
            .err()
            .as_deref(),
        Some("BadUserNamePassword")
    );
    assert_eq!(
        v5(&Dial::tls(addr, &pki.ca, None), "c")
            .await
            .err()
            .as_deref(),
        Some("NotAuthorized"),
        "neither certificate nor credentials"
    );
    // A certificate still decides when sent, and a bad one still fails the handshake.
    let mut dev = v5(&Dial::tls(addr, &pki.ca, Some(&sensor)), "d")
        .await
        .expect("certificate");
    assert_eq!(
        dev.publish("sensors/001/t", "1").await,
        PubAckReason::Success
    );
    assert!(v5(&Dial::tls(addr, &pki.ca, Some(&foreign)), "e")
        .await
        .is_err());
    assert_eq!(
        admin.message().await,
        ("sensors/001/t".to_string(), "1".to_string())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_names_with_wildcards_or_slashes_never_fill_pattern_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let now = time::OffsetDateTime::now_utc();
    // `tollgate pki` refuses such names; a foreign tool might not.
    let hash = pki.device_valid_between("#", now - days(1), now + days(30));
    let slash = pki.device_valid_between("devices/x", now - days(1), now + days(30));
    let gw = mtls_gateway(
        dir.path(),
        &pki,
        "client_certs = \"required\"\npassword_auth = false\n",
    )
    .await;
    let addr = gw.addr("devices");
    let mut h = v5(&Dial::tls(addr, &pki.ca, Some(&hash)), "h")
        .await
        .expect("connects: the name is only odd");
    assert_eq!(
        h.publish("devices/x/y", "1").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(h.subscribe("devices/#").await, V5Sub::NotAuthorized);
    let mut s = v5(&Dial::tls(addr, &pki.ca, Some(&slash)), "s")
        .await
        .expect("connects");
    assert_eq!(
        s.publish("devices/devices/x/y", "1").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        s.subscribe("devices/devices/x/#").await,
        V5Sub::NotAuthorized
    );
    gw.stop().await;
}
