//! ACL bypass attempts over the wire: wildcards that would widen a grant (`#`,
//! `+/#`, `$share/g/#`, `$SYS/#`), user names made of topic syntax (`a/b`, `+`) used
//! with `%u`/`%c` patterns, case and trailing-slash variants, and a deny inside a
//! granted subtree (the subscription is granted, the deliveries under the deny are not).

mod support;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5Sub};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::{dial::*, gateway::*, peers::*, wait::*};

const ACL: &str = "user alice
topic readwrite alice/#
topic read public/#
topic deny public/secret/#
topic read $SYS/broker/uptime

user admin
topic readwrite #

pattern readwrite users/%u/#
pattern write clients/%c/#
";

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("admin", "admin-pw"),
    ("a/b", "slash-pw"),
    ("+", "plus-pw"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_case_slash_and_placeholder_tricks_gain_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = mosquitto_passwd_file(dir.path(), USERS);
    std::fs::write(dir.path().join("acl"), ACL).expect("acl");
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\npassword_auth = true\n{}[acl]\nfile = \"acl\"\n",
        auth_section(&passwd)
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("local");
    let login = |u: &str, p: &str| Dial::tcp(addr).login(u, p);
    let mut admin = v5(&login("admin", "admin-pw"), "admin")
        .await
        .expect("admin");
    let mut alice = v5(&login("alice", "alice-pw"), "alice")
        .await
        .expect("alice");
    let granted = V5Sub::Success(Q5::AtLeastOnce);

    for filter in [
        "#",
        "+/#",
        "+",
        "$share/g/#",
        "$share/g/+/#",
        "$SYS/#",
        "$SYS/+/uptime",
        "+/broker/uptime",
        "Alice/#",
        "ALICE/x",
        "alice", // a sibling of the tree? no: alice/# also matches alice itself
        "public/secret/#",
        "public/secret",
        "public/secret/",
        "users/+/#",
        "users/#",
    ] {
        let expected = if filter == "alice" {
            granted
        } else {
            V5Sub::NotAuthorized
        };
        assert_eq!(
            alice.subscribe(filter).await,
            expected,
            "alice subscribe {filter}"
        );
    }
    for filter in [
        "alice/#",
        "$share/g/alice/#",
        "public/#",
        "public/+",
        "$SYS/broker/uptime",
        "users/alice/#",
    ] {
        assert_eq!(
            alice.subscribe(filter).await,
            granted,
            "alice subscribe {filter}"
        );
    }
    for topic in [
        "Alice/x",
        "alicex",
        "public/news",
        "users/admin/x",
        "clients/other/x",
        "/alice/x",
    ] {
        assert_eq!(
            alice.publish(topic, "x").await,
            PubAckReason::NotAuthorized,
            "alice publish {topic}"
        );
    }
    for topic in ["alice/x", "alice/", "users/alice/x", "clients/alice/x"] {
        assert!(
            matches!(
                alice.publish(topic, "x").await,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ),
            "alice publish {topic}"
        );
    }

    // A deny inside a granted subtree: `public/#` was granted above, and every delivery
    // is re-checked, so public/secret/* never reaches alice, with any trailing variant.
    assert!(matches!(
        alice.publish("alice/marker", MARKER).await,
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
    ));
    let _ = alice.messages_before_marker("alice/marker").await;
    for topic in [
        "public/secret",
        "public/secret/",
        "public/secret/plan",
        "public/news",
        "public/Secret",
    ] {
        assert!(matches!(
            admin.publish(topic, topic).await,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ));
    }
    // public/# and public/+ both match, so the marker may come twice: the first ends it.
    assert!(matches!(
        admin.publish("public/marker", MARKER).await,
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
    ));
    let mut got: Vec<String> = alice
        .messages_before_marker("public/marker")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got, ["public/Secret", "public/news"]);

    // User names made of topic syntax never fill %u.
    let mut slash = v5(&login("a/b", "slash-pw"), "slash").await.expect("a/b");
    assert_eq!(
        slash.publish("users/a/b/x", "x").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(slash.subscribe("users/a/b/#").await, V5Sub::NotAuthorized);
    let mut plus = v5(&login("+", "plus-pw"), "plus").await.expect("+");
    assert_eq!(plus.subscribe("users/+/#").await, V5Sub::NotAuthorized);
    assert_eq!(
        plus.publish("users/alice/x", "x").await,
        PubAckReason::NotAuthorized
    );
    // A client id made of topic syntax never fills %c either.
    let mut odd_id = v5(&login("alice", "alice-pw"), "x/y")
        .await
        .expect("alice as x/y");
    assert_eq!(
        odd_id.publish("clients/x/y/z", "x").await,
        PubAckReason::NotAuthorized
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_only_the_anonymous_rules_and_cannot_claim_a_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = mosquitto_passwd_file(dir.path(), &[("admin", "admin-pw")]);
    // Lines before the first `user` line are the anonymous rules.
    std::fs::write(
        dir.path().join("acl"),
        "topic read public/#\n\nuser admin\ntopic readwrite #\n",
    )
    .expect("acl");
    let body = format!(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\npassword_auth = true\n{}[acl]\nfile = \"acl\"\n",
        auth_section(&passwd)
    );
    let gw = Gateway::start(dir.path(), &body).await;
    let addr = gw.addr("local");
    let mut anon = v5(&Dial::tcp(addr), "anon")
        .await
        .expect("anonymous admitted");
    assert_eq!(
        anon.subscribe("public/#").await,
        V5Sub::Success(Q5::AtLeastOnce)
    );
    assert_eq!(anon.subscribe("#").await, V5Sub::NotAuthorized);
    assert_eq!(
        anon.publish("public/x", "x").await,
        PubAckReason::NotAuthorized
    );
    // Claiming `admin` without its password is not anonymous access with admin's rules.
    assert_eq!(
        v5(&Dial::tcp(addr).login("admin", "guess"), "claim")
            .await
            .err()
            .as_deref(),
        Some("BadUserNamePassword")
    );
    gw.stop().await;
}
