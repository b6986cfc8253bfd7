//! The certificate expiry watch wired into the gateway: a server certificate close to
//! expiry is announced on `$SYS/tollgate/certs/<label>/expiry` (retained, published by
//! the in-process client `tollgate:certs`, even though the ACL grants network clients
//! no write there), readable by a user the ACL allows; the watch stops with the gateway.

mod support;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Sub};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::{dial::*, gateway::*, peers::*};
use tollgate::pki::{self, KeyAlgorithm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_near_expiry_is_published_on_sys_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki_dir = dir.path().join("pki");
    pki::init_ca(&pki_dir, "CA", 3650, KeyAlgorithm::EcdsaP256, false).expect("ca");
    let server = pki::issue_server(
        &pki_dir,
        "server",
        &["localhost".to_string()],
        &["127.0.0.1".parse().expect("ip")],
        5,
        KeyAlgorithm::EcdsaP256,
        false,
    )
    .expect("server");
    let passwd = mosquitto_passwd_file(dir.path(), &[("ops", "ops-pw"), ("dev", "dev-pw")]);
    let body = format!(
        "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\ncert = {:?}\nkey = {:?}\npassword_auth = true\n{}\
         [[acl.rule]]\nuser = \"ops\"\naccess = \"read\"\ntopic = \"$SYS/tollgate/certs/#\"\n\
         [[acl.rule]]\nuser = \"dev\"\naccess = \"readwrite\"\ntopic = \"#\"\n",
        server.cert.display().to_string(),
        server.key.display().to_string(),
        auth_section(&passwd)
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let ca = pki_dir.join(pki::CA_CERT);
    let dial = |u: &str, p: &str| Dial::tls(gw.addr("devices"), &ca, None).login(u, p);
    let mut ops = v5(&dial("ops", "ops-pw"), "ops").await.expect("ops");
    assert_eq!(
        ops.subscribe("$SYS/tollgate/certs/#").await,
        V5Sub::Success(Q5::AtLeastOnce)
    );
    let (topic, payload) = ops.message().await;
    assert_eq!(topic, "$SYS/tollgate/certs/devices-server/expiry");
    let status: serde_json::Value = serde_json::from_str(&payload).expect("json status");
    assert_eq!(status["level"], "7-days", "{payload}");
    // A reload that points the listener at another certificate restarts the watch on it.
    let renewed = pki::issue_server(
        &pki_dir,
        "server2",
        &["localhost".to_string()],
        &["127.0.0.1".parse().expect("ip")],
        1,
        KeyAlgorithm::EcdsaP256,
        false,
    )
    .expect("server2");
    let config = std::fs::read_to_string(&gw.config).expect("config");
    let config = config
        .replace(
            &server.cert.display().to_string(),
            &renewed.cert.display().to_string(),
        )
        .replace(
            &server.key.display().to_string(),
            &renewed.key.display().to_string(),
        );
    std::fs::write(&gw.config, config).expect("rewrite config");
    gw.reload.reload().await.expect("reload");
    let (topic, payload) = ops.message().await;
    assert_eq!(topic, "$SYS/tollgate/certs/devices-server/expiry");
    assert!(payload.contains("\"level\":\"1-day\""), "{payload}");

    // Network clients cannot forge these topics, whatever their ACL says.
    let mut dev = v5(&dial("dev", "dev-pw"), "dev").await.expect("dev");
    assert_eq!(
        dev.publish("$SYS/tollgate/certs/devices-server/expiry", "{}")
            .await,
        PubAckReason::NotAuthorized
    );
    gw.stop().await;
}
