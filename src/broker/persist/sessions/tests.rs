use std::sync::Arc;

use crate::auth::AuthMethod;

use super::wills::{encode_online_will, encode_will};
use super::*;

fn settings() -> PersistenceSettings {
    PersistenceSettings::default()
}

fn record(id: u64, client: &str, offline_until_ms: Option<u64>) -> SessionRecord {
    SessionRecord {
        id,
        identity: Identity {
            username: Some("alice".into()),
            client_id: client.into(),
            via: AuthMethod::Certificate,
            listener: Arc::from("tls"),
            jwt: None,
        },
        v5: true,
        expiry: 3600,
        offline_until_ms,
        overflow: QueueOverflow::DropNew,
        subscriptions: vec![
            StoredSubscription {
                path: "a/#".into(),
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: false,
                id: Some(7),
            },
            StoredSubscription {
                path: "$share/g/b/+".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: true,
                id: None,
            },
        ],
    }
}

fn message(topic: &str, payload: &str) -> Message {
    Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Some(v5::PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        }),
        expires_at: None,
        publisher: None,
        origin: None,
    }
}

async fn reopen(dir: &Path) -> (SessionLog, LoadedSessions) {
    SessionLog::open(dir, &settings()).await.expect("open")
}

#[test]
fn session_records_round_trip_and_damage_is_refused() {
    let s = record(5, "dev-1", Some(1234));
    let bytes = encode_session(&s);
    let Record::Session(back) = decode(Bytes::from(bytes.clone())).expect("decodes") else {
        panic!("a session record");
    };
    assert_eq!(back, s);
    for len in 0..bytes.len() {
        assert!(
            decode(Bytes::copy_from_slice(&bytes[..len])).is_err(),
            "{len}"
        );
    }
    let m = message("a/b", "hello");
    let bytes = encode_message(9, None, &m, QoS::AtLeastOnce, true, &[3, 4], Instant::now());
    let moved = encode_message(
        9,
        Some(77),
        &m,
        QoS::AtLeastOnce,
        true,
        &[3, 4],
        Instant::now(),
    );
    // Cut inside its fixed fields: refused (the payload runs to the record's end).
    for len in 0..20 {
        assert!(
            decode(Bytes::copy_from_slice(&moved[..len])).is_err(),
            "{len}"
        );
    }
    let Record::Message {
        order: Some(77), ..
    } = decode(Bytes::from(moved)).expect("decodes")
    else {
        panic!("a moved message record keeps its order");
    };
    let Record::Message {
        id,
        order: None,
        msg,
        qos,
        retain,
        sub_ids,
        expires_ms,
    } = decode(Bytes::from(bytes.clone())).expect("decodes")
    else {
        panic!("a message record");
    };
    assert_eq!(
        (id, qos, retain, sub_ids, expires_ms),
        (9, QoS::AtLeastOnce, true, vec![3, 4], None)
    );
    assert_eq!(
        (msg.topic, msg.payload, msg.qos),
        (m.topic, m.payload, QoS::ExactlyOnce)
    );
    assert_eq!(msg.properties, m.properties);
    // A huge subscription count in a short record is damage, not an allocation.
    let mut empty = record(1, "x", None);
    empty.subscriptions.clear();
    let mut bad = encode_session(&empty);
    let at = bad.len() - 4;
    bad[at..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode(Bytes::from(bad)).is_err());
}

#[tokio::test]
async fn sessions_messages_and_packet_ids_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, loaded) = reopen(dir.path()).await;
    assert!(loaded.sessions.is_empty());
    let now = Instant::now();
    let id = log.new_id();
    let first = log
        .write_session(0, &record(id, "dev-1", None))
        .expect("write");
    let rec = log.write_session(first, &record(id, "dev-1", Some(now_ms() + 3_600_000)));
    let rec = rec.expect("write");
    let mut seqs = Vec::new();
    for i in 0..4 {
        let m = message("a/b", &format!("m{i}"));
        let d = log
            .append_message(id, None, &m, QoS::AtLeastOnce, false, &[7], now)
            .expect("append");
        seqs.push(d.seq());
        d.await.expect("durable");
    }
    // m0 was acknowledged; m1 is in flight as packet id 42, PUBREC'd; compaction wrote
    // m2 again after m3 (it keeps its place in the queue).
    log.ack(seqs[0]);
    let moved = log
        .append_message(
            id,
            Some(seqs[2]),
            &message("a/b", "m2"),
            QoS::AtLeastOnce,
            false,
            &[7],
            now,
        )
        .expect("append");
    log.ack(seqs[2]);
    moved.await.expect("durable");
    let p = log.set_pkid(id, seqs[1], 42, false, 0).expect("pkid");
    log.set_pkid(id, seqs[1], 42, true, p).expect("pkid");
    // An ended session and one that expired while down are not loaded.
    let gone = log.new_id();
    let g = log
        .write_session(0, &record(gone, "dev-2", None))
        .expect("write");
    log.append_message(
        gone,
        None,
        &message("a/c", "x"),
        QoS::AtLeastOnce,
        false,
        &[],
        now,
    )
    .expect("append");
    log.end_session(g, gone);
    let old = log.new_id();
    log.write_session(0, &record(old, "dev-3", Some(now_ms() - 1)))
        .expect("write");
    assert_eq!(log.live().0, 2);
    log.close().await;

    let (mut log, loaded) = reopen(dir.path()).await;
    assert_eq!(loaded.expired, 1);
    assert_eq!(loaded.sessions.len(), 1);
    let s = &loaded.sessions[0];
    assert_eq!(s.record, rec);
    assert_eq!(s.session, record(id, "dev-1", s.session.offline_until_ms));
    let left = s.expires_at.expect("expires") - Instant::now();
    assert!(left > Duration::from_secs(3500), "{left:?}");
    let payloads: Vec<_> = s
        .messages
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.msg.payload).into_owned(),
                m.pkid.map(|p| (p.0, p.1)),
            )
        })
        .collect();
    assert_eq!(
        payloads,
        vec![
            ("m1".into(), Some((42, true))),
            ("m2".into(), None),
            ("m3".into(), None)
        ]
    );
    assert_eq!(s.messages[0].sub_ids, vec![7]);
    assert!(log.new_id() > old, "ids are never reused");
    log.close().await;
    // A reopen without changes loads the same.
    let (log, loaded) = reopen(dir.path()).await;
    assert_eq!(loaded.sessions[0].messages.len(), 3);
    assert_eq!(loaded.expired, 0);
    log.close().await;
}

/// A crash after compaction wrote a message again and before it acknowledged the old
/// record leaves both on disk: the load keeps one delivery (the newest copy, with the
/// packet id the old copy was in flight under), not two.
#[tokio::test]
async fn a_message_and_its_compacted_copy_both_on_disk_load_as_one_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = reopen(dir.path()).await;
    let now = Instant::now();
    let id = log.new_id();
    log.write_session(0, &record(id, "dev-1", Some(now_ms() + 3_600_000)))
        .expect("write");
    let mut seqs = Vec::new();
    for i in 0..3 {
        let d = log
            .append_message(
                id,
                None,
                &message("a/b", &format!("m{i}")),
                QoS::AtLeastOnce,
                false,
                &[],
                now,
            )
            .expect("append");
        seqs.push(d.seq());
        d.await.expect("durable");
    }
    log.set_pkid(id, seqs[0], 9, false, 0).expect("pkid");
    // Compaction writes m0 and m1 again; the crash comes before the old ones' acks.
    for (i, &order) in seqs[..2].iter().enumerate() {
        log.append_message(
            id,
            Some(order),
            &message("a/b", &format!("m{i}")),
            QoS::AtLeastOnce,
            false,
            &[],
            now,
        )
        .expect("append")
        .await
        .expect("durable");
    }
    log.sync().await;
    drop(log);

    let (log, loaded) = reopen(dir.path()).await;
    let s = &loaded.sessions[0];
    let got: Vec<_> = s
        .messages
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.msg.payload).into_owned(),
                m.pkid.map(|p| p.0),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("m0".into(), Some(9)),
            ("m1".into(), None),
            ("m2".into(), None)
        ]
    );
    assert!(
        s.messages[0].record > seqs[2],
        "the copy is kept, the old record goes"
    );
    log.close().await;
}

#[tokio::test]
async fn an_online_session_counts_its_expiry_from_the_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = reopen(dir.path()).await;
    let id = log.new_id();
    let mut short = record(id, "dev", None);
    short.expiry = 2;
    log.write_session(0, &short).expect("write");
    log.sync().await;
    drop(log);
    let (log, loaded) = reopen(dir.path()).await;
    let s = &loaded.sessions[0];
    let left = s.expires_at.expect("expires") - Instant::now();
    assert!(
        left <= Duration::from_secs(2) && left > Duration::from_secs(1),
        "{left:?}"
    );
    log.close().await;
}

#[tokio::test]
async fn received_packet_ids_and_delayed_wills_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = reopen(dir.path()).await;
    let id = log.new_id();
    log.write_session(0, &record(id, "dev-1", Some(now_ms() + 3_600_000)))
        .expect("write");
    // 7 and 9 PUBRECed; 9 released since (its record acknowledged).
    log.set_received(id, 7).expect("received");
    let nine = log.set_received(id, 9).expect("received").seq();
    log.ack(nine);
    let mut will = message("will/dev-1", "gone");
    will.retain = true;
    let first = log
        .set_will(id, &will, 30, now_ms() + 30_000)
        .expect("will");
    let second = log
        .set_will(id, &will, 30, now_ms() + 20_000)
        .expect("will");
    log.ack(first);
    // A session that expired while down: its will is due now.
    let old = log.new_id();
    log.write_session(0, &record(old, "dev-2", Some(now_ms() - 1)))
        .expect("write");
    log.set_will(old, &message("will/dev-2", "late"), 60, now_ms() + 60_000)
        .expect("will");
    log.close().await;

    let (log, loaded) = reopen(dir.path()).await;
    assert_eq!(loaded.sessions.len(), 1);
    let s = &loaded.sessions[0];
    assert_eq!(s.received.iter().map(|r| r.0).collect::<Vec<_>>(), vec![7]);
    let w = s.will.as_ref().expect("will loaded");
    assert_eq!(w.record, second);
    assert_eq!((w.delay, w.msg.retain), (30, true));
    assert_eq!(
        (&w.msg.topic[..], &w.msg.payload[..]),
        (&b"will/dev-1"[..], &b"gone"[..])
    );
    assert_eq!(w.msg.properties, will.properties);
    let left = w.due_ms - now_ms();
    assert!((15_000..=20_000).contains(&left), "{left}");
    assert_eq!(loaded.expired, 1);
    assert_eq!(loaded.wills_due.len(), 1);
    assert_eq!(loaded.wills_due[0].0.client_id, "dev-2");
    assert_eq!(&loaded.wills_due[0].1.msg.payload[..], b"late");
    // Truncated will records are refused, never misread.
    let bytes = encode_will(3, &will, 5, 99);
    for len in 0..bytes.len() - 4 {
        assert!(
            decode(Bytes::copy_from_slice(&bytes[..len])).is_err(),
            "{len}"
        );
    }
    log.close().await;
}

/// Wills of clients connected at a crash: the latest per client id loads, as the
/// delayed will of its restored session (due `min(delay, expiry)` from the load) or as
/// due now without one; an older connection's and one superseded by a later session
/// record do not.
#[tokio::test]
async fn online_wills_load_as_if_their_connection_dropped_at_the_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = reopen(dir.path()).await;
    let ident = |client: &str| Identity {
        username: None,
        client_id: client.into(),
        via: AuthMethod::Password,
        listener: Arc::from("local"),
        jwt: None,
    };
    // A stored session online with a will delayed 20 s (expiry 3600 s).
    let id = log.new_id();
    log.write_session(0, &record(id, "dev-1", None))
        .expect("write");
    let mut will = message("will/dev-1", "gone");
    will.retain = true;
    let stored = log
        .set_online_will(id, &ident("dev-1"), &will, 20)
        .expect("will");
    // A client without a stored session: its first connection's will is superseded.
    log.set_online_will(0, &ident("dev-2"), &message("will/dev-2", "old"), 0)
        .expect("will");
    let latest = log
        .set_online_will(0, &ident("dev-2"), &message("will/dev-2", "new"), 5)
        .expect("will");
    // A will whose client has connected since with a stored session that has none.
    log.set_online_will(0, &ident("dev-3"), &message("will/dev-3", "x"), 0)
        .expect("will");
    let later = log.new_id();
    log.write_session(0, &record(later, "dev-3", None))
        .expect("write");
    // A will acknowledged (its connection ended cleanly) does not come back.
    let done = log
        .set_online_will(0, &ident("dev-4"), &message("will/dev-4", "x"), 0)
        .expect("will");
    log.ack(done);
    log.close().await;

    let (log, loaded) = reopen(dir.path()).await;
    let s = loaded
        .sessions
        .iter()
        .find(|s| s.session.id == id)
        .expect("dev-1 restored");
    let w = s.will.as_ref().expect("its will is a delayed will now");
    assert_eq!((w.record, w.delay, w.msg.retain), (stored, 20, true));
    assert_eq!(&w.msg.payload[..], b"gone");
    let left = w.due_ms - now_ms();
    assert!((15_000..=20_000).contains(&left), "{left}");
    let due: Vec<(&str, &[u8], u64)> = loaded
        .wills_due
        .iter()
        .map(|(i, w)| (i.client_id.as_str(), &w.msg.payload[..], w.record))
        .collect();
    assert_eq!(due, vec![("dev-2", &b"new"[..], latest)]);
    assert_eq!(loaded.wills_due[0].0, ident("dev-2"));
    // Truncated online will records are refused, never misread.
    let bytes = encode_online_will(0, &ident("dev-5"), &will, 5);
    for len in 0..bytes.len() - 4 {
        assert!(
            decode(Bytes::copy_from_slice(&bytes[..len])).is_err(),
            "{len}"
        );
    }
    log.close().await;
}
