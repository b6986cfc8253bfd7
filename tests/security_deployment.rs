//! The seeds' deployment over real sockets: a TLS listener, a `mosquitto_passwd`
//! password file and the seeds' acl_file (admin readwrite `#`; sensor_001 write
//! `sensors/001/#` and read `commands/001`; dashboard read `sensors/#` and `devices/#`;
//! everything else denied), exercised by rumqttc v5 and v3.1.1 clients and by
//! mosquitto_pub/mosquitto_sub. Also wrong credentials and anonymous refusal.

mod support;

use std::path::Path;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Sub};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::{dial::*, gateway::*, peers::*, pki::*, wait::*};

const USERS: &[(&str, &str)] = &[
    ("admin", "admin-pw"),
    ("sensor_001", "sensor-pw"),
    ("dashboard", "dash-pw"),
];

async fn deployment(dir: &Path) -> (Gateway, TestPki) {
    let pki = TestPki::new(dir);
    let passwd = mosquitto_passwd_file(dir, USERS);
    let acl = dir.join("acl");
    // The seeds' acl_file. Their trailing `topic deny #` is left out: mosquitto scopes
    // it to `user dashboard` (denying the dashboard everything), and tollgate already
    // denies anything unlisted (`security_cli` shows `tollgate check` warning about it).
    std::fs::write(&acl, support::fixtures::seed_acl_without_trailing_deny()).expect("write acl");
    let body = format!(
        "{}{}[acl]\nfile = \"acl\"\n",
        tls_listener(&pki, "password_auth = true\nallow_anonymous = false\n"),
        auth_section(&passwd),
    );
    (Gateway::start(dir, &body).await, pki)
}

fn dial(gw: &Gateway, pki: &TestPki, user: &str) -> Dial {
    let password = USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("known user");
    Dial::tls(gw.addr("devices"), &pki.ca, None).login(user, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_deployment_allows_and_denies_every_combination_over_v5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = deployment(dir.path()).await;
    let mut admin = v5(&dial(&gw, &pki, "admin"), "admin-1")
        .await
        .expect("admin");
    let mut sensor = v5(&dial(&gw, &pki, "sensor_001"), "sensor-1")
        .await
        .expect("sensor");
    let mut dash = v5(&dial(&gw, &pki, "dashboard"), "dash-1")
        .await
        .expect("dashboard");

    // SUBSCRIBE: granted only where a read rule covers the filter (v5 0x87 otherwise).
    let granted = V5Sub::Success(Q5::AtLeastOnce);
    assert_eq!(admin.subscribe("#").await, granted);
    assert_eq!(
        admin.subscribe("$SYS/#").await,
        V5Sub::NotAuthorized,
        "# never covers $SYS"
    );
    assert_eq!(sensor.subscribe("commands/001").await, granted);
    for denied in [
        "commands/#",
        "commands/+",
        "sensors/001/#",
        "sensors/#",
        "#",
        "devices/#",
    ] {
        assert_eq!(
            sensor.subscribe(denied).await,
            V5Sub::NotAuthorized,
            "sensor_001 {denied}"
        );
    }
    for ok in [
        "sensors/#",
        "devices/#",
        "sensors/+/temp",
        "devices/d1/status",
    ] {
        assert_eq!(dash.subscribe(ok).await, granted, "dashboard {ok}");
    }
    for denied in ["commands/001", "#", "+/#", "$SYS/#", "sensor/#"] {
        assert_eq!(
            dash.subscribe(denied).await,
            V5Sub::NotAuthorized,
            "dashboard {denied}"
        );
    }

    // PUBLISH: refused with PUBACK 0x87 and never routed.
    let cases: &[(&str, &str, bool)] = &[
        ("sensor", "sensors/001/temp", true),
        ("sensor", "sensors/001", true),
        ("sensor", "sensors/002/temp", false),
        ("sensor", "commands/001", false),
        ("sensor", "devices/001/status", false),
        ("dashboard", "sensors/001/temp", false),
        ("dashboard", "devices/d1/status", false),
        ("dashboard", "commands/001", false),
        ("admin", "commands/001", true),
        ("admin", "devices/d1/status", true),
        ("admin", "anything/else", true),
        ("admin", "$SYS/fake", false),
    ];
    let mut routed = Vec::new();
    for (who, topic, allowed) in cases {
        let client = match *who {
            "sensor" => &mut sensor,
            "dashboard" => &mut dash,
            _ => &mut admin,
        };
        let payload = format!("{who}:{topic}");
        let reason = client.publish(topic, &payload).await;
        if *allowed {
            assert!(
                matches!(
                    reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
                "{who} publish {topic}: {reason:?}"
            );
            routed.push((topic.to_string(), payload));
        } else {
            assert_eq!(reason, PubAckReason::NotAuthorized, "{who} publish {topic}");
        }
    }

    // Deliveries: admin (subscribed to #) sees exactly the allowed, non-$ publications.
    // Each reader's marker is published after every case was acknowledged.
    admin.publish("marker", MARKER).await;
    let mut seen = admin.messages_before_marker("marker").await;
    let mut expected: Vec<_> = routed
        .iter()
        .filter(|(t, _)| !t.starts_with('$'))
        .cloned()
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    // The sensor receives its command, nothing else.
    admin.publish("commands/001", MARKER).await;
    assert_eq!(
        sensor.messages_before_marker("commands/001").await,
        vec![("commands/001".to_string(), "admin:commands/001".to_string())]
    );
    // The dashboard sees sensor and device readings, never commands.
    admin.publish("sensors/marker", MARKER).await;
    let dash_seen: Vec<String> = dash
        .messages_before_marker("sensors/marker")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        dash_seen.contains(&"sensors/001/temp".to_string()),
        "{dash_seen:?}"
    );
    assert!(
        dash_seen.contains(&"devices/d1/status".to_string()),
        "{dash_seen:?}"
    );
    assert!(
        dash_seen.iter().all(|t| !t.starts_with("commands")),
        "{dash_seen:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_denied_publish_is_acknowledged_and_dropped_and_denied_subscribe_gets_0x80() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = deployment(dir.path()).await;
    let mut admin = v4(&dial(&gw, &pki, "admin"), "admin-4")
        .await
        .expect("admin");
    let mut sensor = v4(&dial(&gw, &pki, "sensor_001"), "sensor-4")
        .await
        .expect("sensor");
    assert_eq!(
        admin.subscribe("#").await,
        rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
    );
    assert_eq!(
        sensor.subscribe("commands/#").await,
        rumqttc::SubscribeReasonCode::Failure,
        "3.1.1 SUBACK 0x80"
    );
    assert_eq!(
        sensor.subscribe("commands/001").await,
        rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
    );
    // Denied: PUBACK as Mosquitto does, but nothing is routed.
    sensor.publish("sensors/002/temp", "forged").await;
    sensor.publish("sensors/001/temp", "21.5").await;
    admin.publish("marker", MARKER).await;
    assert_eq!(
        admin.messages_before_marker("marker").await,
        vec![("sensors/001/temp".to_string(), "21.5".to_string())]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_unknown_and_empty_credentials_and_anonymous_are_refused_v5_and_v311() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = deployment(dir.path()).await;
    let addr = gw.addr("devices");
    let base = Dial::tls(addr, &pki.ca, None);
    for (user, password) in [("admin", "wrong"), ("nobody", "admin-pw"), ("admin", "")] {
        let d = base.clone().login(user, password);
        assert_eq!(
            v5(&d, "c5").await.err().as_deref(),
            Some("BadUserNamePassword"),
            "v5 {user}/{password:?}: 0x86"
        );
        assert_eq!(
            v4(&d, "c4").await.err().as_deref(),
            Some("BadUserNamePassword"),
            "3.1.1 {user}/{password:?}: return code 4"
        );
    }
    // No credentials on a listener without allow_anonymous: v5 0x87, 3.1.1 5.
    assert_eq!(
        v5(&base, "anon5").await.err().as_deref(),
        Some("NotAuthorized")
    );
    assert_eq!(
        v4(&base, "anon4").await.err().as_deref(),
        Some("NotAuthorized")
    );
    // The right password still works after all those failures.
    v5(&dial(&gw, &pki, "admin"), "admin-after")
        .await
        .expect("admin");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_follow_the_same_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, pki) = deployment(dir.path()).await;
    let port = gw.port("devices");
    let tls = |user: &str, password: &str| -> Vec<String> {
        let mut args = mosquitto_tls_args(&port, &pki.ca, None);
        args.extend(["-u", user, "-P", password].map(String::from));
        args
    };
    let run_pub = |user: &str, password: &str, extra: &[&str]| {
        let mut args = tls(user, password);
        args.extend(extra.iter().map(|s| s.to_string()));
        mosquitto_pub(&args)
    };
    // Retained so the subscriber below needs no timing.
    assert!(run_pub(
        "sensor_001",
        "sensor-pw",
        &["-q", "1", "-r", "-t", "sensors/001/temp", "-m", "22.0"]
    ));
    assert!(run_pub(
        "admin",
        "admin-pw",
        &["-q", "1", "-r", "-t", "commands/001", "-m", "reboot"]
    ));
    assert!(!run_pub(
        "sensor_001",
        "wrong",
        &["-t", "sensors/001/temp", "-m", "x"]
    ));

    let sub = |user: &str, password: &str, filter: &str| {
        let mut args = tls(user, password);
        args.extend(["-q", "1", "-t", filter].iter().map(|s| s.to_string()));
        finish(mosquitto_sub(&args, 1))
    };
    let (ok, out, _) = sub("dashboard", "dash-pw", "sensors/#");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "sensors/001/temp 22.0");
    let (ok, out, _) = sub("sensor_001", "sensor-pw", "commands/001");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "commands/001 reboot");
    // Every filter refused (SUBACK 0x80): mosquitto_sub says so and stops, having received nothing.
    let (_, out, err) = sub("dashboard", "dash-pw", "commands/#");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("denied"), "{err}");
    gw.stop().await;
}
