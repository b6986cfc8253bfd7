//! A hostile or careless client against the broker core: sessions belong to the
//! identity that created them, one write-authorization path (wills and in-process
//! clients included, `$SYS` reserved), topic depth is bounded and deep structures
//! are torn down without recursion, and durable hold-backs are released as success
//! only when the durable subscriber stored the message.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::*;
use tollgate::acl::{Acl, AllowAll, Authorizer};
use tollgate::auth::{AuthFuture, AuthMethod, AuthRequest, Authenticator, Identity};
use tollgate::broker::codec::QoS;
use tollgate::broker::{Broker, BrokerSettings, InternalOptions};

/// Trusts the CONNECT username as a password-verified identity (the password
/// check itself is tested elsewhere); no username means anonymous.
struct NamedUsers;

impl Authenticator for NamedUsers {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(async move {
            Ok(Identity {
                via: if request.username.is_some() {
                    AuthMethod::Password
                } else {
                    AuthMethod::Anonymous
                },
                username: request.username,
                client_id: request.client_id,
                listener: request.listener,
                jwt: None,
            })
        })
    }
}

const ACL: &str = "\
user alice
topic readwrite alice/#
user bob
topic readwrite bob/#
user feeder
topic write alice/#
topic write bob/#
";

fn acl(text: &str) -> Arc<dyn Authorizer> {
    Arc::new(Acl::parse("test.acl", text, &[]).expect("valid acl"))
}

async fn users_broker() -> TestBroker {
    start_broker_full(test_settings(), Arc::new(NamedUsers), acl(ACL)).await
}

fn v4_user(addr: std::net::SocketAddr, id: &str, user: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = v4_options(addr, id);
    o.set_credentials(user, "x");
    o.set_clean_session(clean);
    o
}

/// Connect a v3.1.1 client and return the CONNACK return code (or the error text).
async fn v4_connack_code(
    options: rumqttc::MqttOptions,
) -> Result<rumqttc::ConnectReturnCode, String> {
    let (_client, mut el) = rumqttc::AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("answer in time")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => return Ok(c.code),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
            Err(e) => return Err(e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------
// Sessions belong to an identity.

async fn alice_leaves_five_messages(addr: std::net::SocketAddr) {
    let (mut alice, _) = v4_connect(v4_user(addr, "victim-dev", "alice", false)).await;
    alice.subscribe("alice/#", rumqttc::QoS::AtLeastOnce).await;
    alice.client.disconnect().await.expect("disconnect queued");
    let _ = alice.closed().await;
    let (feeder, _) = v4_connect(v4_user(addr, "feeder", "feeder", true)).await;
    for i in 0..5 {
        feeder
            .client
            .publish("alice/x", rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .expect("publish queued");
    }
    // The feeder's own round trip through the router orders its PUBLISHes first.
    let mut feeder = feeder;
    for _ in 0..5 {
        feeder
            .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
    }
}

async fn alice_gets_her_five_messages(addr: std::net::SocketAddr) {
    let (mut alice, present) = v4_connect(v4_user(addr, "victim-dev", "alice", false)).await;
    assert!(present, "alice's session survived the foreign CONNECT");
    for i in 0..5 {
        let p = alice.publish().await;
        assert_eq!(p.topic, "alice/x");
        assert_eq!(p.payload, Bytes::from(format!("m{i}")));
    }
}

#[tokio::test]
async fn v311_session_of_another_identity_is_refused_and_kept_for_its_owner() {
    let b = users_broker().await;
    alice_leaves_five_messages(b.addr).await;
    let code = v4_connack_code(v4_user(b.addr, "victim-dev", "bob", false)).await;
    assert_eq!(code, Ok(rumqttc::ConnectReturnCode::NotAuthorized));
    // Anonymous is another identity too.
    let mut anon = v4_options(b.addr, "victim-dev");
    anon.set_clean_session(true);
    assert_eq!(
        v4_connack_code(anon).await,
        Ok(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(b.broker.stats().refused_session_owner, 2);
    alice_gets_her_five_messages(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn v5_session_of_another_identity_is_refused_with_0x87() {
    let b = users_broker().await;
    alice_leaves_five_messages(b.addr).await;
    let (mut bob, connack) = raw_v5(b.addr, "victim-dev", Some("bob"), false, 3600, None).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::NotAuthorized);
    assert!(!connack.session_present);
    let reason = connack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(
        reason.contains("another identity"),
        "reason string: {reason}"
    );
    assert!(
        bob.read().await.is_none(),
        "connection closed after the refusal"
    );
    alice_gets_her_five_messages(b.addr).await;
    b.stop().await;
}

#[tokio::test]
async fn live_connection_is_not_taken_over_by_another_identity() {
    let b = users_broker().await;
    let (mut alice, _) = v4_connect(v4_user(b.addr, "shared-id", "alice", true)).await;
    alice.subscribe("alice/#", rumqttc::QoS::AtLeastOnce).await;
    let (mut bob, connack) = raw_v5(b.addr, "shared-id", Some("bob"), true, 0, None).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::NotAuthorized);
    assert!(bob.read().await.is_none());
    // Alice's connection was not touched: she still publishes and receives.
    alice
        .client
        .publish("alice/still", rumqttc::QoS::AtLeastOnce, false, "here")
        .await
        .expect("publish queued");
    assert_eq!(alice.publish().await.topic, "alice/still");
    // The same principal may take over (a device reconnecting from a new socket).
    let (mut again, _) = v4_connect(v4_user(b.addr, "shared-id", "alice", true)).await;
    again.subscribe("alice/#", rumqttc::QoS::AtMostOnce).await;
    assert!(!alice.closed().await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn in_process_client_cannot_resume_a_network_session() {
    let b = users_broker().await;
    let (alice, _) = v4_connect(v4_user(b.addr, "alice-dev", "alice", false)).await;
    drop(alice);
    let mut options = InternalOptions::new(Identity::internal("alice-dev"));
    options.clean_start = false;
    match b.broker.connect_internal(options).await {
        Err(tollgate::broker::BrokerError::Refused(reason)) => {
            assert!(reason.contains("another identity"), "{reason}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an in-process client resumed a network client's session"),
    }
    b.stop().await;
}

#[tokio::test]
async fn queued_messages_are_rechecked_against_the_receivers_current_rules() {
    let b = users_broker().await;
    let (mut alice, _) = v4_connect(v4_user(b.addr, "victim-dev", "alice", false)).await;
    alice.subscribe("alice/#", rumqttc::QoS::AtLeastOnce).await;
    alice.client.disconnect().await.expect("disconnect queued");
    let _ = alice.closed().await;
    let (mut feeder, _) = v4_connect(v4_user(b.addr, "feeder", "feeder", true)).await;
    let client = feeder.client.clone();
    let publish = |topic: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, "m")
                .await
                .expect("publish queued")
        }
    };
    for _ in 0..3 {
        publish("alice/x").await;
    }
    for _ in 0..3 {
        feeder
            .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
            .await;
    }
    // A reload narrows alice's read rules while her messages wait; the marker
    // queued behind them is still hers to read.
    let narrowed = "user alice\ntopic readwrite alice/marker\nuser feeder\ntopic write alice/#\n";
    b.broker.reload_auth(Arc::new(NamedUsers), acl(narrowed));
    publish("alice/marker").await;
    feeder
        .wait_for(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await;
    let (mut alice, present) = v4_connect(v4_user(b.addr, "victim-dev", "alice", false)).await;
    assert!(present);
    let first = alice.publish().await;
    assert_eq!(
        first.topic, "alice/marker",
        "queued alice/x messages were sent after the reload narrowed alice's rules"
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// One write-authorization path; `$SYS` is the broker's.

#[tokio::test]
async fn will_on_sys_topic_is_refused_at_connect_without_any_acl() {
    let b = start_broker().await;
    let will = p5::LastWill::new("$SYS/broker/version", "pwned", Q5::AtMostOnce, true, None);
    let (mut raw, connack) = raw_v5(b.addr, "forger", None, true, 0, Some(will)).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::NotAuthorized);
    assert!(raw.read().await.is_none());
    // 3.1.1: return code 5.
    let mut o = v4_options(b.addr, "forger4");
    o.set_last_will(rumqttc::LastWill::new(
        "$SYS/broker/version",
        "pwned",
        rumqttc::QoS::AtMostOnce,
        true,
    ));
    assert_eq!(
        v4_connack_code(o).await,
        Ok(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    // Nothing was retained there.
    let mut reader = v4(b.addr, "reader").await;
    reader.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
    let mut probe = InternalOptions::new(Identity::internal("tollgate:probe"));
    probe.clean_start = true;
    let probe = b.broker.connect_internal(probe).await.expect("attach");
    // The broker's own identities may write under $SYS: the marker proves absence.
    probe
        .publish("$SYS/marker", "m", QoS::AtMostOnce, false)
        .await
        .expect("broker identity writes $SYS");
    assert_eq!(reader.publish().await.topic, "$SYS/marker");
    b.stop().await;
}

#[tokio::test]
async fn in_process_clients_cannot_write_sys_topics() {
    let b = start_broker().await;
    for name in ["adapter:plc", "bridge:cloud"] {
        let c = b
            .broker
            .connect_internal(InternalOptions::new(Identity::internal(name)))
            .await
            .expect("attach");
        for topic in [
            "$SYS",
            "$SYS/broker/version",
            "$SYS/tollgate/certs/x/expiry",
        ] {
            let e = c
                .publish(topic, "x", QoS::AtMostOnce, true)
                .await
                .expect_err("$SYS write refused");
            assert!(e.to_string().contains("0x87"), "{e}");
        }
    }
    assert_eq!(b.broker.stats().retained_messages, 0);
    b.stop().await;
}

#[tokio::test]
async fn network_publish_to_sys_is_refused_even_with_an_allow_all_acl() {
    let b = start_broker_full(
        test_settings(),
        Arc::new(NamedUsers),
        acl("pattern readwrite #\npattern readwrite $SYS/#\n"),
    )
    .await;
    let (mut raw, _) = raw_v5(b.addr, "p", Some("x"), true, 0, None).await;
    raw.send(&v5_publish("$SYS/broker/uptime", Q5::AtLeastOnce, 3, "0"))
        .await;
    let ack = raw_wait(&mut raw, |p| match p {
        p5::Packet::PubAck(a) => Some(a.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ack.reason, p5::PubAckReason::NotAuthorized);
    b.stop().await;
}

#[tokio::test]
async fn will_is_checked_again_when_it_is_sent() {
    let rules = "pattern readwrite dev/#\npattern read marker\npattern write marker\n";
    let b = start_broker_full(test_settings(), Arc::new(NamedUsers), acl(rules)).await;
    let will = p5::LastWill::new("dev/status", "offline", Q5::AtLeastOnce, false, None);
    let (raw, connack) = raw_v5(b.addr, "dying", Some("dev"), true, 0, Some(will)).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::Success);
    let mut o = v5_options(b.addr, "watcher");
    o.set_credentials("dev", "x");
    let mut watcher = v5_connect(o).await;
    watcher
        .subscribe("dev/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    watcher
        .subscribe("marker", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    // The rules change: nobody may write dev/# any more.
    b.broker.reload_auth(
        Arc::new(NamedUsers),
        acl("pattern read dev/#\npattern read marker\npattern write marker\n"),
    );
    drop(raw);
    // The router has handled the dropped socket (and its will) once only the
    // watcher is left; the marker is published after that.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.broker.stats().clients_connected != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket close not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher
        .client
        .publish(
            "marker",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "end",
        )
        .await
        .expect("publish queued");
    let first = watcher.publish().await;
    assert_eq!(
        first.topic,
        Bytes::from("marker"),
        "the will was sent after its write grant was removed"
    );
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Topic depth.

fn deep(levels: usize) -> String {
    vec!["l"; levels].join("/")
}

#[tokio::test]
async fn too_deep_topics_and_filters_get_the_specified_reactions() {
    let b = start_broker().await;
    let max = BrokerSettings::default().max_topic_levels;
    assert_eq!(max, 64);
    let (mut raw, _) = raw_v5(b.addr, "deep5", None, true, 0, None).await;
    raw.send(&v5_subscribe(&deep(max + 1), 1)).await;
    let suback = raw_wait(&mut raw, |p| match p {
        p5::Packet::SubAck(s) => Some(s.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        suback.return_codes,
        vec![p5::SubscribeReasonCode::TopicFilterInvalid]
    );
    raw.send(&v5_subscribe(&deep(max), 2)).await;
    let suback = raw_wait(&mut raw, |p| match p {
        p5::Packet::SubAck(s) => Some(s.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        suback.return_codes,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    raw.send(&v5_publish(&deep(max + 1), Q5::AtLeastOnce, 3, "x"))
        .await;
    let ack = raw_wait(&mut raw, |p| match p {
        p5::Packet::PubAck(a) => Some(a.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ack.reason, p5::PubAckReason::TopicNameInvalid);
    let reason = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(reason.contains("max_topic_levels"), "{reason}");
    // The connection stays usable: the deepest allowed topic is delivered.
    raw.send(&v5_publish(&deep(max), Q5::AtMostOnce, 0, "ok"))
        .await;
    let delivered = raw_wait(&mut raw, |p| match p {
        p5::Packet::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(delivered.topic, Bytes::from(deep(max)));
    let mut unsub = p5::Unsubscribe::new(deep(max + 1), None);
    unsub.pkid = 4;
    raw.send(&p5::Packet::Unsubscribe(unsub)).await;
    let unsuback = raw_wait(&mut raw, |p| match p {
        p5::Packet::UnsubAck(u) => Some(u.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        unsuback.reasons,
        vec![p5::UnsubAckReason::TopicFilterInvalid]
    );

    // Will topic: CONNACK 0x90.
    let will = p5::LastWill::new(deep(max + 1), "x", Q5::AtMostOnce, false, None);
    let (_w, connack) = raw_v5(b.addr, "deepwill", None, true, 0, Some(will)).await;
    assert_eq!(connack.code, p5::ConnectReturnCode::TopicNameInvalid);

    // 3.1.1: SUBACK 0x80 for the filter, the connection closed for the PUBLISH.
    let mut c4 = v4(b.addr, "deep4").await;
    c4.client
        .subscribe(deep(max + 1), rumqttc::QoS::AtMostOnce)
        .await
        .expect("queued");
    let suback = c4.suback().await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    c4.client
        .publish(deep(max + 1), rumqttc::QoS::AtMostOnce, false, "x")
        .await
        .expect("queued");
    let _ = c4.closed().await;

    // In-process clients obey the same limit.
    let internal = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:deep")))
        .await
        .expect("attach");
    let e = internal
        .publish(&deep(max + 1), "x", QoS::AtMostOnce, false)
        .await
        .expect_err("too deep");
    assert!(e.to_string().contains("0x90"), "{e}");
    assert_eq!(
        internal
            .subscribe(&deep(max + 1), QoS::AtMostOnce)
            .await
            .expect("answered"),
        p5::SubscribeReasonCode::TopicFilterInvalid
    );
    b.stop().await;
}

/// The deepest structures the configuration allows (32,768 levels, the most a
/// 65,535-byte topic can have), built and torn down by a broker whose worker
/// threads have small stacks: any walk that recurses per level overflows them.
#[test]
fn deepest_allowed_topics_are_built_and_torn_down_on_small_stacks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(256 * 1024)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let settings = BrokerSettings {
            max_topic_levels: 32_768,
            ..test_settings()
        };
        let b = start_broker_full(
            settings,
            Arc::new(tollgate::auth::AnonymousOnly),
            Arc::new(AllowAll),
        )
        .await;
        let only_slashes = "/".repeat(32_767);
        let lettered = deep(32_768);
        for (i, topic) in [only_slashes.as_str(), lettered.as_str()]
            .into_iter()
            .enumerate()
        {
            let id = format!("deep{i}");
            let (mut raw, _) = raw_v5(b.addr, &id, None, true, 0, None).await;
            // Subscription trie: the deepest filter, and `#` below it.
            raw.send(&v5_subscribe(topic, 1)).await;
            raw_wait(&mut raw, |p| {
                matches!(p, p5::Packet::SubAck(_)).then_some(())
            })
            .await;
            // Retained store: the deepest topic, then a `#` subscriber walks it.
            let mut retained =
                p5::Publish::new(topic, Q5::AtLeastOnce, Bytes::from_static(b"r"), None);
            retained.retain = true;
            retained.pkid = 2;
            raw.send(&p5::Packet::Publish(retained)).await;
            raw_wait(&mut raw, |p| {
                matches!(p, p5::Packet::PubAck(_)).then_some(())
            })
            .await;
            let mut options = v4_options(b.addr, &format!("all{i}"));
            options.set_max_packet_size(256 * 1024, 256 * 1024);
            let (mut all, _) = v4_connect(options).await;
            all.subscribe("#", rumqttc::QoS::AtMostOnce).await;
            let got = all.publish().await;
            assert_eq!(got.topic.len(), topic.len());
            all.client.disconnect().await.expect("disconnect queued");
            let _ = all.closed().await;
            // Clearing it prunes the branch; disconnecting removes the deep filter.
            let mut clear = p5::Publish::new(topic, Q5::AtLeastOnce, Bytes::new(), None);
            clear.retain = true;
            clear.pkid = 3;
            raw.send(&p5::Packet::Publish(clear)).await;
            raw_wait(&mut raw, |p| {
                matches!(p, p5::Packet::PubAck(_)).then_some(())
            })
            .await;
            drop(raw);
        }
        // Everything is gone, and the broker still serves.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = b.broker.stats();
            if s.subscription_trie_nodes == 0 && s.retained_messages == 0 && s.sessions == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not torn down: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut check = v4(b.addr, "after").await;
        check.subscribe("ok", rumqttc::QoS::AtLeastOnce).await;
        check
            .client
            .publish("ok", rumqttc::QoS::AtLeastOnce, false, "1")
            .await
            .expect("queued");
        assert_eq!(check.publish().await.topic, "ok");
        b.stop().await;
    });
}

// ---------------------------------------------------------------------------
// Durable hold-back is exact.

async fn durable(
    broker: &Broker,
    name: &str,
    receive_maximum: u16,
    expiry: u32,
) -> tollgate::broker::InternalClient {
    let mut o = InternalOptions::new(Identity::internal(name));
    o.durable = true;
    o.receive_maximum = receive_maximum;
    o.session_expiry = expiry;
    broker.connect_internal(o).await.expect("attach durable")
}

async fn puback(raw: &mut Raw, pkid: u16) -> p5::PubAck {
    raw_wait(raw, |p| match p {
        p5::Packet::PubAck(a) if a.pkid == pkid => Some(a.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn hold_is_lost_when_the_message_expires_in_the_durable_queue() {
    let b = start_broker().await;
    let mut store = durable(&b.broker, "bridge:store", 1, 0).await;
    store
        .subscribe("q/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    publisher
        .send(&v5_publish("q/1", Q5::AtLeastOnce, 1, "first"))
        .await;
    let mut second = p5::Publish::new(
        "q/2",
        Q5::AtLeastOnce,
        Bytes::from_static(b"second"),
        Some(p5::PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        }),
    );
    second.pkid = 2;
    publisher.send(&p5::Packet::Publish(second)).await;
    let first = store.recv().await.expect("first delivery");
    // The second waits behind the window of one and expires there.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    first.ack().await.expect("ack");
    assert_eq!(
        puback(&mut publisher, 1).await.reason,
        p5::PubAckReason::Success
    );
    assert_eq!(
        puback(&mut publisher, 2).await.reason,
        p5::PubAckReason::QuotaExceeded
    );
    b.stop().await;
}

#[tokio::test]
async fn hold_is_lost_when_a_non_durable_shared_member_takes_the_message() {
    let b = start_broker().await;
    let mut store = durable(&b.broker, "bridge:store", 10, 0).await;
    store
        .subscribe("$share/g/s/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut plain = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:plain")))
        .await
        .expect("attach");
    plain
        .subscribe("$share/g/s/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    publisher
        .send(&v5_publish("s/1", Q5::AtLeastOnce, 1, "m"))
        .await;
    // Round robin gives it to the first member, the durable one, which goes away
    // without storing it: the message moves to the other member.
    let first = store.recv().await.expect("delivered to the durable member");
    assert_eq!(first.topic, "s/1");
    drop(first);
    store.disconnect().await;
    let moved = plain.recv().await.expect("handed to the other member");
    assert_eq!(moved.topic, "s/1");
    moved.ack().await.expect("ack");
    assert_eq!(
        puback(&mut publisher, 1).await.reason,
        p5::PubAckReason::QuotaExceeded
    );
    b.stop().await;
}

#[tokio::test]
async fn hold_is_lost_when_a_non_durable_connection_takes_the_session_over() {
    let b = start_broker().await;
    let mut store = durable(&b.broker, "bridge:store", 10, 3600).await;
    store
        .subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (mut publisher, _) = raw_v5(b.addr, "pub", None, true, 0, None).await;
    publisher
        .send(&v5_publish("t/1", Q5::AtLeastOnce, 1, "m"))
        .await;
    let held = store.recv().await.expect("delivered");
    drop(held);
    // The same identity attaches without durability and resumes the session.
    let mut o = InternalOptions::new(Identity::internal("bridge:store"));
    o.clean_start = false;
    o.session_expiry = 3600;
    let mut resumed = b.broker.connect_internal(o).await.expect("resume");
    assert!(resumed.session_present());
    let again = resumed.recv().await.expect("redelivered");
    assert!(again.dup);
    again.ack().await.expect("ack");
    assert_eq!(
        puback(&mut publisher, 1).await.reason,
        p5::PubAckReason::QuotaExceeded
    );
    drop(store);
    b.stop().await;
}

#[tokio::test]
async fn lost_qos2_hold_while_publisher_is_offline_lets_the_resend_through() {
    let b = start_broker().await;
    let store = durable(&b.broker, "bridge:store", 10, 0).await;
    store
        .subscribe("x/#", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    let (mut publisher, _) = raw_v5(b.addr, "qos2pub", None, true, 3600, None).await;
    publisher
        .send(&v5_publish("x/1", Q5::ExactlyOnce, 7, "m"))
        .await;
    // Wait until the durable subscriber holds it, then the publisher drops.
    let mut store = store;
    let held = store.recv().await.expect("delivered");
    drop(held);
    drop(publisher);
    // The publisher is offline (only the durable subscriber is attached) before the
    // hold is lost.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.broker.stats().clients_connected != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket close not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The durable subscriber's session ends without storing it: the hold is lost.
    store.disconnect().await;
    let mut other = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("adapter:other")))
        .await
        .expect("attach");
    other
        .subscribe("x/#", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    // The publisher comes back and resends the same packet id: it is routed again.
    let (mut publisher, connack) = raw_v5(b.addr, "qos2pub", None, false, 3600, None).await;
    assert!(connack.session_present);
    let mut resend = p5::Publish::new("x/1", Q5::ExactlyOnce, Bytes::from_static(b"m"), None);
    resend.pkid = 7;
    resend.dup = true;
    publisher.send(&p5::Packet::Publish(resend)).await;
    let got = tokio::time::timeout(WAIT, other.recv())
        .await
        .expect("the resend is routed, not swallowed as a duplicate")
        .expect("delivery");
    assert_eq!(got.topic, "x/1");
    b.stop().await;
}
