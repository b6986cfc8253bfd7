//! Live-connection fuzzing: generated MQTT conversations against a real broker over
//! TCP. Besides random bytes after a CONNECT, it generates valid v3.1.1 and v5
//! packets (encoded with rumqttc's mqttbytes) with deep and long topics and filters,
//! topic alias sequences, property-heavy packets, SUBSCRIBE with many and duplicate
//! filters, retained publishes and clears, `$share/` filters, `$SYS/` writes and
//! wills, interleaved over three sockets that reuse client ids with clean and
//! persistent sessions. After every case:
//! - a fresh client is served end to end (subscribe, publish, receive);
//! - once every session is ended and retained topics are cleared, the broker holds
//!   nothing: sessions, subscriptions, retained messages and trie nodes are all zero;
//! - no task panicked: connection tasks run in a `JoinSet` of this file's own accept
//!   loop (a `JoinError::is_panic` fails the case) and a process-wide panic hook
//!   counts panics in every thread (the router runs in the broker's `TaskTracker`,
//!   where only the hook sees it panic).
//!
//! A stack overflow (e.g. recursion over a topic of 65,000 levels) aborts the whole
//! test process instead of failing one case: that is a failure too, reported by cargo
//! as "process didn't exit successfully ... SIGABRT".
//!
//! Case count: `PROPTEST_CASES` (default 32 per test, about a minute in all). Long run:
//!   PROPTEST_CASES=5000 TOLLGATE_FUZZ_MAX_LEVELS=65535 cargo test --release --test broker_fuzz
//! `TOLLGATE_FUZZ_MAX_LEVELS` bounds the depth of generated topics; the default stays
//! below 2,000 levels until the recursive trie/retained removal is replaced (a deeper
//! topic overflows the stack today); then it becomes 65,535.
//! The same file runs the stable counterparts of the `router_ops` and `topic_alias`
//! cargo-fuzz targets on random inputs.

mod support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::{start_broker_on, test_listener, test_settings, v4, Raw, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tollgate::acl::AllowAll;
use tollgate::auth::{AnonymousOnly, Identity};
use tollgate::broker::fuzz_router::{fuzz_router_ops_limited, fuzz_topic_alias};
use tollgate::broker::{BrokerStats, InternalOptions, ListenerContext};

/// Deepest generated topic when `TOLLGATE_FUZZ_MAX_LEVELS` is not set: MQTT's
/// deepest (the broker under test allows 32,768, so deeper ones test the refusal).
const DEFAULT_MAX_LEVELS: usize = 65_535;

/// Cases per test when `PROPTEST_CASES` is not set (CI).
const CI_CASES: u32 = 32;

/// Client ids the conversations use: few, so sessions are resumed and taken over.
const CLIENT_IDS: [&str; 3] = ["fz-0", "fz-1", "fz-2"];

/// Sockets open at once in one conversation.
const SLOTS: usize = 3;

fn max_levels() -> usize {
    std::env::var("TOLLGATE_FUZZ_MAX_LEVELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_LEVELS)
        .clamp(2, 65_535)
}

/// `ProptestConfig::default()` reads `PROPTEST_CASES`; without it, a CI-sized run.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CI_CASES;
    }
    config
}

// ---------------------------------------------------------------------------
// Panic accounting

thread_local! {
    /// The case whose runtime owns the current thread (0: not a case's runtime thread).
    static CASE: Cell<u64> = const { Cell::new(0) };
}

static NEXT_CASE: AtomicU64 = AtomicU64::new(1);

/// For every panic in any thread of this process: the case of the thread (0 if none).
static PANICS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Install (once) a hook that records every panic with its thread's case, then prints
/// it as usual. Panics are attributed per case so a failing concurrent test (its own
/// panics are expected) cannot fail this one.
fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let case = CASE.with(Cell::get);
            PANICS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(case);
            previous(info);
        }));
    });
}

fn panics_in_case(case: u64) -> usize {
    PANICS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter(|c| **c == case)
        .count()
}

// ---------------------------------------------------------------------------
// Broker with an accept loop that keeps its connection tasks

/// The support broker (its connection tasks live in a `JoinSet`, so a panic in one is
/// reported by `stop_and_collect_panics`), on a listener named `fuzz`, with the deepest
/// topics the configuration allows reaching the trie and retained store.
async fn start_broker() -> TestBroker {
    let settings = tollgate::broker::BrokerSettings {
        max_topic_levels: 32_768,
        ..test_settings()
    };
    let context = ListenerContext {
        name: Arc::from("fuzz"),
        ..test_listener()
    };
    start_broker_on(
        settings,
        Arc::new(AnonymousOnly),
        Arc::new(AllowAll),
        context,
    )
    .await
}

/// Poll the stats until `done` holds or the limit passes; returns the last stats.
async fn stats_until(b: &TestBroker, done: impl Fn(&BrokerStats) -> bool) -> BrokerStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let _ = b.broker.ping().await;
        let stats = b.broker.stats();
        if done(&stats) || tokio::time::Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A runtime whose worker and blocking threads are tagged with `case`.
fn runtime(case: u64) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || CASE.with(|c| c.set(case)))
        .build()
        .expect("test runtime")
}

/// Run one case on a fresh broker: `conversation`, then the end-to-end check, the
/// empty-state check and the panic checks. `retained` gets every topic the
/// conversation may have retained on.
fn run_case<F, Fut>(conversation: F)
where
    F: FnOnce(SocketAddr, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    install_panic_hook();
    let case = NEXT_CASE.fetch_add(1, Ordering::Relaxed);
    runtime(case).block_on(async {
        let b = start_broker().await;
        let retained = conversation(b.addr, Vec::new()).await;
        check_still_serves(b.addr).await;
        check_empty_after_cleanup(&b, &retained).await;
        let task_panics = b.stop_and_collect_panics().await;
        assert!(
            task_panics.is_empty(),
            "broker tasks panicked: {task_panics:?}"
        );
    });
    assert_eq!(
        panics_in_case(case),
        0,
        "a broker thread panicked during this case (see the panic message above)"
    );
}

/// A fresh client is still served end to end.
async fn check_still_serves(addr: SocketAddr) {
    let mut s = v4(addr, "fuzz-check").await;
    s.subscribe("fuzz/ok", rumqttc::QoS::AtLeastOnce).await;
    s.client
        .publish("fuzz/ok", rumqttc::QoS::AtLeastOnce, false, "1")
        .await
        .expect("publish queued");
    assert_eq!(s.publish().await.payload, Bytes::from("1"));
    s.client.disconnect().await.expect("disconnect queued");
    let _ = s.closed().await;
}

/// End every session the conversation may have left (a clean v5 CONNECT discards a
/// persistent one), clear retained topics, then expect nothing held.
async fn check_empty_after_cleanup(b: &TestBroker, retained: &[String]) {
    for id in CLIENT_IDS {
        let mut raw = Raw::connect_v5(b.addr, id).await;
        raw.send_bytes(&[0xE0, 0x00]).await;
        let _ = raw.read_to_close().await;
    }
    // Wills of ended sessions are published by now; sessions must all be gone.
    let stats = stats_until(b, |s| s.sessions == 0).await;
    assert_eq!(stats.sessions, 0, "sessions left after cleanup: {stats:?}");

    let mut cleaner = b
        .broker
        .connect_internal(InternalOptions::new(Identity::internal("fuzz:cleaner")))
        .await
        .expect("in-process client");
    for topic in retained {
        // Refused for invalid topics, which were never retained either.
        let _ = cleaner
            .publish(topic, Bytes::new(), Q5::AtMostOnce, true)
            .await;
    }
    if stats_until(b, |s| s.retained_messages == 0)
        .await
        .retained_messages
        > 0
    {
        // Random bytes may have formed a retained PUBLISH: sweep what `#` matches.
        cleaner
            .subscribe("#", Q5::AtMostOnce)
            .await
            .expect("subscribe answered");
        while let Ok(Some(d)) =
            tokio::time::timeout(Duration::from_millis(200), cleaner.recv()).await
        {
            if d.retain {
                let _ = cleaner
                    .publish(&d.topic, Bytes::new(), Q5::AtMostOnce, true)
                    .await;
            }
        }
    }
    cleaner.disconnect().await;
    let stats = stats_until(b, |s| {
        (
            s.sessions,
            s.subscriptions,
            s.retained_messages,
            s.subscription_trie_nodes,
            s.clients_connected,
        ) == (0, 0, 0, 0, 0)
    })
    .await;
    assert_eq!(
        (
            stats.sessions,
            stats.subscriptions,
            stats.retained_messages,
            stats.subscription_trie_nodes,
            stats.clients_connected
        ),
        (0, 0, 0, 0, 0),
        "state left once every client is gone: {stats:?}"
    );
}

// ---------------------------------------------------------------------------
// Generated conversations

/// A topic name or filter level: ordinary, empty, wildcard, `$`, non-ASCII, spaces.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "", "+", "#", "$SYS", "$share", "x y", "\u{e9}", "sensor"])
            .prop_map(str::to_string),
        1 => "[a-z0-9]{1,12}",
    ]
}

/// Cut to MQTT's 65,535-byte string limit (on a char boundary) so rumqttc encodes it.
fn clip(mut s: String) -> String {
    let mut end = s.len().min(65_535);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// Topics and filters: short ones, one level repeated up to `max_levels` times
/// ("/" repeated when the level is empty), one long level up to 65,535 bytes, and
/// `$SYS/` / `$share/` forms. Wildcards appear anywhere: a filter strategy and a
/// topic strategy at once, so invalid names and filters are exercised too.
fn path(max_levels: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(level(), 1..6).prop_map(|l| l.join("/")),
        1 => (prop::sample::select(vec!["", "a", "+", "$SYS"]), 1..=max_levels, any::<bool>())
            .prop_map(|(level, n, hash)| {
                let mut p = vec![level; n].join("/");
                if hash {
                    p.push_str("/#");
                }
                clip(p)
            }),
        1 => (1usize..=65_535).prop_map(|n| "t".repeat(n)),
        1 => prop::collection::vec(level(), 1..4).prop_map(|l| format!("$SYS/broker/{}", l.join("/"))),
        1 => (0u8..3, prop::collection::vec(level(), 0..4))
            .prop_map(|(g, l)| format!("$share/g{g}/{}", l.join("/"))),
    ]
}

#[derive(Debug, Clone)]
struct Will {
    topic: String,
    qos: u8,
    retain: bool,
    /// v5 Will Delay Interval (seconds).
    delay: Option<u32>,
}

/// v5 PUBLISH properties that make a packet heavy.
#[derive(Debug, Clone)]
struct HeavyProps {
    user_properties: usize,
    correlation: usize,
    response_topic: Option<String>,
    content_type: Option<String>,
}

#[derive(Debug, Clone)]
enum Step {
    Connect {
        slot: usize,
        v5: bool,
        id: usize,
        clean: bool,
        /// v5 Session Expiry Interval; v3.1.1 uses `clean` only.
        expiry: u32,
        will: Option<Will>,
    },
    Subscribe {
        slot: usize,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        slot: usize,
        filters: Vec<String>,
    },
    Publish {
        slot: usize,
        topic: String,
        qos: u8,
        retain: bool,
        payload: usize,
        /// v5 topic alias (0 and > 32 are out of range; an empty topic uses it).
        alias: Option<u16>,
        props: Option<HeavyProps>,
    },
    Raw {
        slot: usize,
        bytes: Vec<u8>,
    },
    /// 0: DISCONNECT, 1: drop the socket (will), 2: v5 DISCONNECT 0x04 (with will),
    /// 3: v5 DISCONNECT setting a session expiry.
    Disconnect {
        slot: usize,
        how: u8,
    },
    Settle {
        millis: u8,
    },
}

fn will(max_levels: usize) -> impl Strategy<Value = Will> {
    (
        path(max_levels),
        0u8..3,
        any::<bool>(),
        prop::option::of(0u32..3),
    )
        .prop_map(|(topic, qos, retain, delay)| Will {
            topic,
            qos,
            retain,
            delay,
        })
}

fn heavy_props(max_levels: usize) -> impl Strategy<Value = HeavyProps> {
    (
        0usize..400,
        0usize..4096,
        prop::option::of(path(max_levels)),
        prop::option::of("[a-z/]{0,40}"),
    )
        .prop_map(
            |(user_properties, correlation, response_topic, content_type)| HeavyProps {
                user_properties,
                correlation,
                response_topic,
                content_type,
            },
        )
}

fn alias() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![
        3 => Just(None),
        4 => (1u16..=4).prop_map(Some),
        1 => prop::sample::select(vec![0u16, 32, 33, 1000, u16::MAX]).prop_map(Some),
    ]
}

fn connect(slot: impl Strategy<Value = usize>, max_levels: usize) -> impl Strategy<Value = Step> {
    (
        slot,
        any::<bool>(),
        0..CLIENT_IDS.len(),
        any::<bool>(),
        prop::sample::select(vec![0u32, 0, 60, u32::MAX]),
        prop::option::of(will(max_levels)),
    )
        .prop_map(|(slot, v5, id, clean, expiry, will)| Step::Connect {
            slot,
            v5,
            id,
            clean,
            expiry,
            will,
        })
}

/// A conversation: every socket connects first (so most steps have a connection to
/// act on), then steps in any order, reconnections and takeovers included.
fn conversation(max_levels: usize) -> impl Strategy<Value = Vec<Step>> {
    (
        (0..SLOTS)
            .map(|slot| connect(Just(slot), max_levels))
            .collect::<Vec<_>>(),
        prop::collection::vec(step(max_levels), 1..24),
    )
        .prop_map(|(mut connects, steps)| {
            connects.extend(steps);
            connects
        })
}

fn step(max_levels: usize) -> impl Strategy<Value = Step> {
    let slot = 0..SLOTS;
    prop_oneof![
        3 => connect(slot.clone(), max_levels),
        4 => (slot.clone(), prop_oneof![
                3 => prop::collection::vec((path(max_levels), 0u8..3), 1..4),
                // Many filters, with duplicates from a small pool.
                1 => prop::collection::vec((prop::sample::select(vec!["a/+", "a/#", "#", "+/+", "$share/g0/a", "a"])
                        .prop_map(str::to_string), 0u8..3), 1..80),
             ])
            .prop_map(|(slot, filters)| Step::Subscribe { slot, filters }),
        1 => (slot.clone(), prop::collection::vec(path(max_levels), 1..4))
            .prop_map(|(slot, filters)| Step::Unsubscribe { slot, filters }),
        6 => (slot.clone(), prop_oneof![4 => path(max_levels), 1 => Just(String::new())], 0u8..3,
              any::<bool>(), prop::sample::select(vec![0usize, 1, 10, 3000]), alias(),
              prop::option::of(heavy_props(max_levels)))
            .prop_map(|(slot, topic, qos, retain, payload, alias, props)| Step::Publish {
                slot, topic, qos, retain, payload, alias, props,
            }),
        1 => (slot.clone(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(slot, bytes)| Step::Raw { slot, bytes }),
        2 => (slot, 0u8..4).prop_map(|(slot, how)| Step::Disconnect { slot, how }),
        1 => (0u8..5).prop_map(|millis| Step::Settle { millis }),
    ]
}

/// One open socket: its write half, its protocol, and a task discarding what the
/// broker sends (so the broker never blocks on a full socket).
struct Peer {
    write: OwnedWriteHalf,
    v5: bool,
    next_pkid: u16,
    _reader: JoinHandle<()>,
}

impl Peer {
    async fn open(addr: SocketAddr, v5: bool) -> Peer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (mut read, write) = stream.into_split();
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = read.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        });
        Peer {
            write,
            v5,
            next_pkid: 0,
            _reader: reader,
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        self.next_pkid
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The broker may have closed the connection already (that is allowed).
        let _ = self.write.write_all(bytes).await;
    }
}

fn qos4(q: u8) -> rumqttc::mqttbytes::QoS {
    match q {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> Q5 {
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

fn user_properties(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("k{i}"), "v".repeat(i % 17)))
        .collect()
}

/// Encode a step's packet for `peer`'s protocol; `None` when rumqttc refuses it.
fn encode(peer: &mut Peer, step: &Step) -> Option<BytesMut> {
    let mut buf = BytesMut::new();
    let ok = match step {
        Step::Subscribe { filters, .. } => {
            let pkid = peer.pkid();
            if peer.v5 {
                p5::Packet::Subscribe(p5::Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(path, q)| p5::Filter {
                            path: path.clone(),
                            qos: qos5(*q),
                            nolocal: *q == 1 && path.starts_with('a'),
                            preserve_retain: *q == 2,
                            retain_forward_rule: p5::RetainForwardRule::OnEverySubscribe,
                        })
                        .collect(),
                    properties: None,
                })
                .write(&mut buf, None)
                .is_ok()
            } else {
                p4::Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(path, q)| p4::SubscribeFilter::new(path.clone(), qos4(*q)))
                        .collect(),
                }
                .write(&mut buf)
                .is_ok()
            }
        }
        Step::Unsubscribe { filters, .. } => {
            let pkid = peer.pkid();
            if peer.v5 {
                p5::Packet::Unsubscribe(p5::Unsubscribe {
                    pkid,
                    filters: filters.clone(),
                    properties: None,
                })
                .write(&mut buf, None)
                .is_ok()
            } else {
                p4::Unsubscribe {
                    pkid,
                    topics: filters.clone(),
                }
                .write(&mut buf)
                .is_ok()
            }
        }
        Step::Publish {
            topic,
            qos,
            retain,
            payload,
            alias,
            props,
            ..
        } => {
            let pkid = if *qos == 0 { 0 } else { peer.pkid() };
            let payload = Bytes::from(vec![b'p'; *payload]);
            if peer.v5 {
                let properties = (alias.is_some() || props.is_some()).then(|| {
                    let heavy = props.clone();
                    p5::PublishProperties {
                        topic_alias: *alias,
                        user_properties: heavy
                            .as_ref()
                            .map(|h| user_properties(h.user_properties))
                            .unwrap_or_default(),
                        correlation_data: heavy
                            .as_ref()
                            .map(|h| Bytes::from(vec![0xC0; h.correlation])),
                        response_topic: heavy.as_ref().and_then(|h| h.response_topic.clone()),
                        content_type: heavy.and_then(|h| h.content_type),
                        ..Default::default()
                    }
                });
                p5::Packet::Publish(p5::Publish {
                    dup: false,
                    qos: qos5(*qos),
                    retain: *retain,
                    topic: Bytes::from(topic.clone()),
                    pkid,
                    payload,
                    properties,
                })
                .write(&mut buf, None)
                .is_ok()
            } else {
                p4::Publish {
                    dup: false,
                    qos: qos4(*qos),
                    retain: *retain,
                    topic: topic.clone(),
                    pkid,
                    payload,
                }
                .write(&mut buf)
                .is_ok()
            }
        }
        _ => unreachable!("only packet steps are encoded"),
    };
    ok.then_some(buf)
}

fn encode_connect(v5: bool, id: &str, clean: bool, expiry: u32, will: &Option<Will>) -> BytesMut {
    let mut buf = BytesMut::new();
    if v5 {
        let last_will = will.as_ref().map(|w| p5::LastWill {
            topic: Bytes::from(w.topic.clone()),
            message: Bytes::from_static(b"gone"),
            qos: qos5(w.qos),
            retain: w.retain,
            properties: w.delay.map(|d| p5::LastWillProperties {
                delay_interval: Some(d),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: user_properties(3),
            }),
        });
        let properties = (expiry > 0).then(|| p5::ConnectProperties {
            session_expiry_interval: Some(expiry),
            user_properties: user_properties(5),
            ..Default::default()
        });
        p5::Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: id.to_string(),
                clean_start: clean,
                properties,
            },
            last_will,
            None,
        )
        .write(&mut buf, None)
        .expect("a generated CONNECT encodes");
    } else {
        let mut connect = p4::Connect::new(id);
        connect.keep_alive = 30;
        connect.clean_session = clean;
        connect.last_will = will.as_ref().map(|w| p4::LastWill {
            topic: w.topic.clone(),
            message: Bytes::from_static(b"gone"),
            qos: qos4(w.qos),
            retain: w.retain,
        });
        connect
            .write(&mut buf)
            .expect("a generated CONNECT encodes");
    }
    buf
}

/// Play `steps` over up to three sockets; returns every topic a retained message
/// may have been stored on (retained publishes and retained wills).
async fn converse(addr: SocketAddr, steps: Vec<Step>) -> Vec<String> {
    let mut peers: Vec<Option<Peer>> = (0..SLOTS).map(|_| None).collect();
    let mut retained = Vec::new();
    for step in steps {
        match &step {
            Step::Connect {
                slot,
                v5,
                id,
                clean,
                expiry,
                will,
            } => {
                // Replacing a socket drops the old one (its will fires).
                peers[*slot] = None;
                let mut peer = Peer::open(addr, *v5).await;
                if let Some(w) = will.as_ref().filter(|w| w.retain) {
                    retained.push(w.topic.clone());
                }
                peer.send(&encode_connect(*v5, CLIENT_IDS[*id], *clean, *expiry, will))
                    .await;
                peers[*slot] = Some(peer);
            }
            Step::Subscribe { slot, .. }
            | Step::Unsubscribe { slot, .. }
            | Step::Publish { slot, .. } => {
                if let Step::Publish {
                    topic,
                    retain: true,
                    ..
                } = &step
                {
                    retained.push(topic.clone());
                }
                if let Some(peer) = peers[*slot].as_mut() {
                    if let Some(bytes) = encode(peer, &step) {
                        peer.send(&bytes).await;
                    }
                }
            }
            Step::Raw { slot, bytes } => {
                if let Some(peer) = peers[*slot].as_mut() {
                    peer.send(bytes).await;
                }
            }
            Step::Disconnect { slot, how } => {
                if let Some(mut peer) = peers[*slot].take() {
                    match (how, peer.v5) {
                        (1, _) => {}
                        (2, true) => peer.send(&[0xE0, 0x01, 0x04]).await,
                        (3, true) => {
                            peer.send(&[0xE0, 0x06, 0x00, 0x05, 0x11, 0, 0, 0, 30])
                                .await
                        }
                        _ => peer.send(&[0xE0, 0x00]).await,
                    }
                    let _ = peer.write.shutdown().await;
                }
            }
            Step::Settle { millis } => {
                tokio::time::sleep(Duration::from_millis(u64::from(*millis))).await
            }
        }
        tokio::task::yield_now().await;
    }
    // Give the broker a moment with the last packets before the sockets close.
    tokio::time::sleep(Duration::from_millis(2)).await;
    drop(peers);
    retained
}

/// A clean CONNECT with keep alive 30 s (client id `f5` on v5, `fz` on 3.1.1).
fn connect_30(v5: bool) -> Vec<u8> {
    support::raw::Connect {
        keep_alive: 30,
        ..support::raw::Connect::new(v5, if v5 { "f5" } else { "fz" })
    }
    .encode()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_conversations_leave_the_broker_serving_and_empty(
        steps in conversation(max_levels()),
    ) {
        run_case(|addr, _| converse(addr, steps));
    }

    #[test]
    fn random_bytes_after_connect_never_stop_the_broker(
        v5 in any::<bool>(),
        // Bias towards packet-looking input: a valid first byte then noise.
        first in prop::sample::select(vec![0x30u8, 0x32, 0x34, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0, 0xF0, 0x00]),
        noise in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        run_case(|addr, retained| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let _ = stream.write_all(&connect_30(v5)).await;
            let mut data = vec![first];
            data.extend_from_slice(&noise);
            let _ = stream.write_all(&data).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            retained
        });
    }

    #[test]
    fn random_connect_bytes_never_stop_the_broker(
        noise in prop::collection::vec(any::<u8>(), 0..200),
        level in prop::sample::select(vec![3u8, 4, 5, 6, 0xFF]),
        flags in any::<u8>(),
    ) {
        run_case(|addr, retained| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            // A CONNECT header with random level/flags and a random body.
            let mut data = vec![0x10, (8 + noise.len()).min(127) as u8, 0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
            data.extend_from_slice(&noise);
            let _ = stream.write_all(&data).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            retained
        });
    }

    /// Stable counterpart of the `router_ops` cargo-fuzz target.
    #[test]
    fn router_ops_on_random_programs(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzz_router_ops_limited(&data, max_levels());
    }

    /// Stable counterpart of the `topic_alias` cargo-fuzz target.
    #[test]
    fn topic_alias_on_random_sequences(data in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzz_topic_alias(&data);
    }
}

/// The deepest topic the generators make (`max_levels()` empty levels: "/" repeated),
/// subscribed to and retained by a v5 client, is served and cleaned up to an empty
/// broker. With `TOLLGATE_FUZZ_MAX_LEVELS=65535` this is the known stack overflow.
#[test]
fn deepest_retained_subscription_is_cleaned_up_to_an_empty_broker() {
    run_case(|addr, retained| async move {
        let mut options = support::v5_options(addr, "fz-0");
        options.set_max_packet_size(Some(256 * 1024));
        let mut c = support::v5_connect(options).await;
        // The deepest the broker under test accepts (its max_topic_levels).
        let deep = "/".repeat(max_levels().min(32_768) - 1);
        c.subscribe(&deep, Q5::AtLeastOnce).await;
        c.client
            .publish(deep.clone(), Q5::AtLeastOnce, true, "deep")
            .await
            .expect("publish queued");
        assert_eq!(c.publish().await.payload, Bytes::from("deep"));
        c.client.disconnect().await.expect("disconnect queued");
        let mut retained = retained;
        retained.push(deep);
        retained
    });
}

/// The committed seeds of the two broker targets pass their invariants (libFuzzer
/// starts from them in `scripts/fuzz-ci.sh`; a failing seed would fail CI at once).
#[test]
fn committed_router_ops_and_topic_alias_seeds_pass() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, run) in [
        ("router_ops", fuzz_router_ops_limited_default as fn(&[u8])),
        ("topic_alias", fuzz_topic_alias as fn(&[u8])),
    ] {
        let dir = seeds.join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let path = entry.expect("seed entry").path();
            run(&std::fs::read(&path).expect("seed file"));
            count += 1;
        }
        assert!(count >= 3, "{}: only {count} seeds", dir.display());
    }
}

fn fuzz_router_ops_limited_default(data: &[u8]) {
    fuzz_router_ops_limited(data, max_levels());
}

/// MQTT lets a client send packets right after its CONNECT without waiting for the
/// CONNACK. Found by the `topic_alias` target: the connection task did not parse
/// bytes that arrived in the same read as the CONNECT until the next read, so this
/// SUBSCRIBE was never answered (the session loop now parses them first).
#[test]
fn packets_pipelined_with_the_connect_are_served() {
    run_case(|addr, retained| async move {
        let mut raw = Raw::open(addr).await;
        let mut bytes = BytesMut::new();
        for packet in [
            p5::Packet::Connect(
                p5::Connect {
                    keep_alive: 30,
                    client_id: "fz-0".into(),
                    clean_start: true,
                    properties: None,
                },
                None,
                None,
            ),
            p5::Packet::Subscribe(p5::Subscribe::new(
                p5::Filter::new("pipelined", Q5::AtMostOnce),
                None,
            )),
        ] {
            let mut packet = packet;
            if let p5::Packet::Subscribe(s) = &mut packet {
                s.pkid = 1;
            }
            packet.write(&mut bytes, None).expect("encodable");
        }
        raw.send_bytes(&bytes).await;
        assert!(matches!(raw.read().await, Some(p5::Packet::ConnAck(_))));
        assert!(
            matches!(raw.read().await, Some(p5::Packet::SubAck(_))),
            "SUBACK for the SUBSCRIBE sent with the CONNECT"
        );
        retained
    });
}
