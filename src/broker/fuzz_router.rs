//! Fuzz logic for the broker's routing state and the inbound topic alias state. The
//! cargo-fuzz targets `router_ops` and `topic_alias` are two-line shims over the
//! functions here, and `tests/broker_fuzz.rs` runs the same functions on random inputs
//! under stable Rust. Each function decodes its input into a short program, runs it
//! against a real [`Broker`] on a current-thread runtime and panics only when an
//! invariant breaks (that is what the fuzzer looks for). It must never be used outside
//! fuzzing and tests: it starts and drops a whole broker per input.
//!
//! Deep topics are part of the input language (one opcode repeats a level up to
//! `max_levels` times, see [`MAX_LEVELS`]), because topic depth comes from clients.
//! A stack overflow kills the process with SIGSEGV (exit 139) before libFuzzer can
//! save the input: its signal handler has no stack left to run on.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::codec::{v5, QoS};
use super::{
    Broker, BrokerSettings, ConnectionInfo, InternalClient, InternalOptions, ListenerContext,
};
use crate::acl::AllowAll;
use crate::auth::{AnonymousOnly, Identity};

/// Most levels one generated topic or filter may have in the `router_ops` target:
/// the most `broker.max_topic_levels` allows, which the fuzzed broker is given.
pub const MAX_LEVELS: usize = 32_768;

/// Stack of the thread the program runs on: a tokio worker's (2 MiB), where the router
/// runs in production, so depth limits found here are the real ones.
const ROUTER_STACK: usize = 2 << 20;

/// Operations per input; longer inputs are cut here so one input stays fast.
const MAX_OPS: usize = 96;

/// Client ids the programs use: few, so sessions are reused and taken over.
const CLIENTS: usize = 3;

/// Topic levels the generated topics and filters are made of: plain, empty, `$`,
/// wildcards (invalid in topic names, valid in filters) and a non-ASCII one.
const LEVELS: &[&str] = &[
    "a",
    "b",
    "",
    "+",
    "#",
    "$SYS",
    "$x",
    "c",
    "sensor",
    "\u{e9}t\u{e9}",
    "a b",
];

/// Reads the fuzz input front to back; past the end every read yields zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn qos(&mut self) -> QoS {
        match self.byte() % 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// A topic or filter: up to four levels from `LEVELS`, or (one time in eight) one
    /// level repeated up to `max_levels` times, optionally ending in `/#`.
    fn path(&mut self, max_levels: usize) -> String {
        let shape = self.byte();
        if shape % 8 == 7 {
            let level = LEVELS[usize::from(self.byte()) % LEVELS.len()];
            let levels = usize::from(self.u16()).min(max_levels).max(1);
            let mut path = vec![level; levels].join("/");
            if shape & 0x80 != 0 {
                path.push_str("/#");
            }
            return path;
        }
        let levels = usize::from(shape % 5);
        let parts: Vec<&str> = (0..levels)
            .map(|_| LEVELS[usize::from(self.byte()) % LEVELS.len()])
            .collect();
        parts.join("/")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime for fuzzing")
}

fn start_broker(settings: BrokerSettings) -> (Broker, CancellationToken) {
    let shutdown = CancellationToken::new();
    let broker = Broker::start(
        settings,
        Arc::new(AnonymousOnly),
        Arc::new(AllowAll),
        shutdown.clone(),
    );
    (broker, shutdown)
}

fn fuzz_settings() -> BrokerSettings {
    BrokerSettings {
        sys_interval: Duration::ZERO,
        topic_alias_maximum: 4,
        max_topic_levels: MAX_LEVELS,
        ..BrokerSettings::default()
    }
}

/// What the program believes one session holds.
#[derive(Debug, Default)]
struct SessionModel {
    /// Filters (with their `$share/group/` prefix) granted and not unsubscribed.
    subscriptions: BTreeSet<String>,
    /// Session expiry asked at the last connect.
    expiry: u32,
}

/// Fuzz entry point for the `router_ops` target: [`fuzz_router_ops_limited`] with
/// topics up to [`MAX_LEVELS`] levels deep.
pub fn fuzz_router_ops(data: &[u8]) {
    fuzz_router_ops_limited(data, MAX_LEVELS);
}

/// Decodes `data` into operations on up to three in-process clients (connect clean or
/// persistent, disconnect, subscribe plain or `$share/`, unsubscribe, publish with or
/// without retain, clear a retained topic, drain deliveries) and runs them on a fresh
/// broker. Invariants, after every operation: the broker's session and subscription
/// counts equal the program's model; every delivery matches a filter its session
/// subscribed to. At the end, once every session is gone and every retained topic is
/// cleared: sessions, subscriptions, retained messages and trie nodes are all zero,
/// and the broker shuts down and drains (dropping its trees) without panicking.
pub fn fuzz_router_ops_limited(data: &[u8], max_levels: usize) {
    let data = data.to_vec();
    let run = std::thread::Builder::new()
        .name("fuzz-router".into())
        .stack_size(ROUTER_STACK)
        .spawn(move || runtime().block_on(router_ops(&data, max_levels)))
        .expect("spawn the fuzz thread");
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The program's side of `router_ops`: the broker under test, up to [`CLIENTS`]
/// attached clients, and the model of what the broker should hold.
struct RouterOps {
    broker: Broker,
    max_levels: usize,
    clients: Vec<Option<InternalClient>>,
    sessions: HashMap<usize, SessionModel>,
    /// Every filter each client was granted, for checking deliveries.
    ever_subscribed: Vec<Vec<String>>,
    /// Topics holding a retained message.
    retained: BTreeSet<String>,
}

fn fuzz_identity(c: usize) -> Identity {
    Identity::internal(&format!("fuzz:{c}"))
}

async fn router_ops(data: &[u8], max_levels: usize) {
    let (broker, shutdown) = start_broker(fuzz_settings());
    let mut input = Input { data };
    let mut ops = RouterOps {
        broker,
        max_levels,
        clients: (0..CLIENTS).map(|_| None).collect(),
        sessions: HashMap::new(),
        ever_subscribed: vec![Vec::new(); CLIENTS],
        retained: BTreeSet::new(),
    };
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.byte();
        let c = usize::from(input.byte()) % CLIENTS;
        match op % 8 {
            0 => ops.connect(c, op).await,
            1 => ops.disconnect(c).await,
            2 | 3 => ops.subscribe(c, &mut input).await,
            4 => ops.unsubscribe(c, &mut input).await,
            5 | 6 => ops.publish(c, &mut input).await,
            // Drain and check what the client received so far.
            _ => {
                if let Some(client) = ops.clients[c].as_mut() {
                    drain(client, &ops.ever_subscribed[c]).await;
                }
            }
        }
        ops.check_counts().await;
    }
    ops.end_everything().await;
    let broker = ops.broker;
    broker.ping().await.expect("router alive");
    let stats = broker.stats();
    assert_eq!(
        (
            stats.sessions,
            stats.subscriptions,
            stats.retained_messages,
            stats.subscription_trie_nodes,
            stats.clients_connected
        ),
        (0, 0, 0, 0, 0),
        "routing state left behind once every session ended: {stats:?}"
    );
    shutdown.cancel();
    broker.drained().await;
}

impl RouterOps {
    /// Connect (a takeover when already attached), clean or persistent.
    async fn connect(&mut self, c: usize, op: u8) {
        let clean = op & 0x10 != 0;
        let expiry = if op & 0x20 != 0 { 3600 } else { 0 };
        let mut options = InternalOptions::new(fuzz_identity(c));
        options.clean_start = clean;
        options.session_expiry = expiry;
        let client = self
            .broker
            .connect_internal(options)
            .await
            .expect("router accepts an in-process client");
        let existed = self.sessions.contains_key(&c);
        assert_eq!(
            client.session_present(),
            !clean && existed,
            "session present flag of client {c} (model {:?})",
            self.sessions.get(&c)
        );
        let session = self.sessions.entry(c).or_default();
        if clean {
            session.subscriptions.clear();
        }
        session.expiry = expiry;
        // The old handle (if any) is dropped only now, after the takeover.
        self.clients[c] = Some(client);
    }

    /// Disconnect: the session ends unless it asked for an expiry.
    async fn disconnect(&mut self, c: usize) {
        if let Some(client) = self.clients[c].take() {
            client.disconnect().await;
            if self.sessions.get(&c).is_some_and(|s| s.expiry == 0) {
                self.sessions.remove(&c);
            }
        }
    }

    /// Subscribe, plain or shared.
    async fn subscribe(&mut self, c: usize, input: &mut Input<'_>) {
        let qos = input.qos();
        let share = input.byte();
        let mut filter = input.path(self.max_levels);
        if share % 4 == 1 {
            filter = format!("$share/g{}/{filter}", share % 3);
        }
        if let Some(client) = &self.clients[c] {
            let code = client
                .subscribe(&filter, qos)
                .await
                .expect("subscribe answered");
            if matches!(code, v5::SubscribeReasonCode::Success(_)) {
                self.sessions
                    .entry(c)
                    .or_default()
                    .subscriptions
                    .insert(filter.clone());
                self.ever_subscribed[c].push(filter);
            }
        }
    }

    /// Unsubscribe one of the client's filters or a generated one.
    async fn unsubscribe(&mut self, c: usize, input: &mut Input<'_>) {
        let pick = usize::from(input.byte());
        let filter = match self.sessions.get(&c) {
            Some(s) if pick % 4 != 0 && !s.subscriptions.is_empty() => s
                .subscriptions
                .iter()
                .nth(pick % s.subscriptions.len())
                .cloned()
                .expect("index in range"),
            _ => input.path(self.max_levels),
        };
        if let Some(client) = &self.clients[c] {
            let reason = client
                .unsubscribe(&filter)
                .await
                .expect("unsubscribe answered");
            let existed = self
                .sessions
                .get_mut(&c)
                .is_some_and(|s| s.subscriptions.remove(&filter));
            assert_eq!(
                reason == v5::UnsubAckReason::Success,
                existed,
                "UNSUBACK {reason:?} for {} ({} bytes)",
                preview(&filter),
                filter.len()
            );
        }
    }

    /// Publish, retained or not; an empty retained payload clears.
    async fn publish(&mut self, c: usize, input: &mut Input<'_>) {
        let qos = input.qos();
        let flags = input.byte();
        let topic = input.path(self.max_levels);
        let retain = flags & 1 != 0;
        let payload = if flags & 2 != 0 {
            Bytes::new()
        } else {
            Bytes::from(vec![flags; usize::from(flags % 16)])
        };
        if let Some(client) = &self.clients[c] {
            let published = client
                .publish(&topic, payload.clone(), qos, retain)
                .await
                .is_ok();
            if published && retain {
                if payload.is_empty() {
                    self.retained.remove(&topic);
                } else {
                    self.retained.insert(topic);
                }
            }
        }
    }

    /// The broker's session, subscription and retained counts equal the model's.
    async fn check_counts(&self) {
        self.broker.ping().await.expect("router alive");
        let stats = self.broker.stats();
        let subscriptions: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        assert_eq!(
            stats.sessions as usize,
            self.sessions.len(),
            "sessions: {stats:?}"
        );
        assert_eq!(
            stats.subscriptions as usize, subscriptions,
            "subscriptions: {stats:?}"
        );
        assert_eq!(
            stats.retained_messages as usize,
            self.retained.len(),
            "retained: {stats:?}"
        );
    }

    /// End every session: detach, then a clean connect with no expiry discards what a
    /// persistent session kept; then clear every retained topic.
    async fn end_everything(&mut self) {
        for (c, slot) in self.clients.iter_mut().enumerate() {
            if let Some(client) = slot.as_mut() {
                drain(client, &self.ever_subscribed[c]).await;
            }
            if let Some(client) = slot.take() {
                client.disconnect().await;
            }
            if self.sessions.remove(&c).is_some() {
                let client = self
                    .broker
                    .connect_internal(InternalOptions::new(fuzz_identity(c)))
                    .await
                    .expect("router accepts an in-process client");
                client.disconnect().await;
            }
        }
        let cleaner = self
            .broker
            .connect_internal(InternalOptions::new(Identity::internal("fuzz:cleaner")))
            .await
            .expect("router accepts an in-process client");
        for topic in &self.retained {
            cleaner
                .publish(topic, Bytes::new(), QoS::AtMostOnce, true)
                .await
                .expect("clearing a retained topic");
        }
        cleaner.disconnect().await;
    }
}

/// Take every delivery already queued for `client` and check it matches a filter
/// the session subscribed to at some point.
async fn drain(client: &mut InternalClient, subscribed: &[String]) {
    while let Ok(Some(delivery)) = tokio::time::timeout(Duration::ZERO, client.recv()).await {
        let topic = delivery.topic.clone();
        let covered = subscribed.iter().any(|f| {
            let inner = match crate::topic::parse_shared(f) {
                Ok(Some(shared)) => shared.filter,
                _ => f.as_str(),
            };
            crate::topic::matches(inner, &topic)
        });
        assert!(
            covered,
            "{} received {} ({} bytes), which none of its filters matches",
            client.client_id(),
            preview(&topic),
            topic.len()
        );
        let _ = delivery.ack().await;
    }
}

fn preview(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Fuzz entry point for the `topic_alias` target: one MQTT 5 connection over an
/// in-memory stream sends a sequence of QoS 0/1 PUBLISH packets that set, use,
/// reuse and overstep topic aliases (the broker allows 4). A subscriber on `#`
/// sees what was routed. Invariants: no panic; an alias outside 1..=4 ends the
/// connection with DISCONNECT 0x94, an alias used before it was set (or an empty
/// topic without alias) with 0x82; until then every PUBLISH is delivered on the
/// topic its alias maps to, in order; a sequence without violation ends with no
/// server DISCONNECT at all.
pub fn fuzz_topic_alias(data: &[u8]) {
    runtime().block_on(topic_alias(data));
}

/// Topics the alias programs publish to (valid names; the subscriber uses `#`).
const ALIAS_TOPICS: &[&str] = &["a", "b/c", "d/e/f", "", "sensor/1/temperature"];

async fn topic_alias(data: &[u8]) {
    let settings = fuzz_settings();
    let alias_max = settings.topic_alias_maximum;
    let (broker, shutdown) = start_broker(settings);
    let mut subscriber = broker
        .connect_internal(InternalOptions::new(Identity::internal("fuzz:sub")))
        .await
        .expect("router accepts an in-process client");
    subscriber
        .subscribe("#", QoS::AtMostOnce)
        .await
        .expect("subscribe answered");

    let (mut client, server) = tokio::io::duplex(1 << 20);
    let info = ConnectionInfo {
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
        listener: Arc::new(ListenerContext {
            name: Arc::from("fuzz"),
            allow_anonymous: true,
            password_auth: false,
            jwt_auth: false,
            ..Default::default()
        }),
        certificate_identity: None,
        peer_certificates: None,
        connect_deadline: tokio::time::Instant::now() + Duration::from_secs(10),
        traffic: Default::default(),
    };
    let serving = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.serve(server, info).await })
    };

    // v5 CONNECT, clean start, keep alive 30, no properties, client id "alias".
    let connect: &[u8] = &[
        0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 5, b'a', b'l', b'i', b'a',
        b's',
    ];
    // The CONNACK is awaited before anything else is sent: the broker does not parse
    // bytes that arrive together with the CONNECT until the next read (a separate
    // defect, outside what this target looks at).
    client
        .write_all(connect)
        .await
        .expect("writing to an in-memory stream");
    let mut received = Vec::new();
    let mut chunk = [0u8; 256];
    while !received.starts_with(&[0x20]) || first_frame_len(&received).is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .expect("CONNACK within the limit")
            .expect("reading an in-memory stream");
        assert!(n > 0, "the broker closed before CONNACK");
        received.extend_from_slice(&chunk[..n]);
    }
    let mut out = BytesMut::new();

    let mut input = Input { data };
    let mut aliases: HashMap<u16, &str> = HashMap::new();
    let mut expected: Vec<(String, Bytes)> = Vec::new();
    let mut violation: Option<u8> = None;
    for i in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.byte();
        let topic = ALIAS_TOPICS[usize::from(op >> 4) % ALIAS_TOPICS.len()];
        let alias = match op % 8 {
            0 | 1 => None,
            2 => Some(0),
            3 => Some(alias_max + 1 + u16::from(input.byte())),
            4 => Some(u16::MAX),
            _ => Some(1 + u16::from(input.byte()) % alias_max),
        };
        let qos = if op & 0x08 != 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let payload = Bytes::from(format!("{i}"));
        let publish = v5::Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from(topic),
            pkid: if qos == QoS::AtMostOnce {
                0
            } else {
                i as u16 + 1
            },
            payload: payload.clone(),
            properties: alias.map(|a| v5::PublishProperties {
                topic_alias: Some(a),
                ..Default::default()
            }),
        };
        publish
            .write(&mut out)
            .expect("a generated PUBLISH encodes");
        // What the broker must do with it, given the aliases set so far.
        let resolved = match alias {
            Some(a) if a == 0 || a > alias_max => Err(0x94),
            Some(a) if topic.is_empty() => aliases.get(&a).copied().ok_or(0x82),
            Some(a) => {
                aliases.insert(a, topic);
                Ok(topic)
            }
            None if topic.is_empty() => Err(0x82),
            None => Ok(topic),
        };
        match resolved {
            Ok(t) => expected.push((t.to_string(), payload)),
            Err(code) => {
                violation = Some(code);
                break;
            }
        }
    }
    if violation.is_none() {
        out.extend_from_slice(&[0xE0, 0x00]); // DISCONNECT, normal
    }
    // The broker closes after a DISCONNECT either way; a write error means it already has.
    // Closing our side too ends the broker's drain after its own DISCONNECT at once (a
    // real client closes when it reads the DISCONNECT; here we read to the end instead).
    let _ = client.write_all(&out).await;
    let _ = client.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received))
        .await
        .expect("the broker closes the connection")
        .expect("reading an in-memory stream");
    serving.await.expect("the connection task does not panic");

    let server_disconnect = server_disconnect_reason(&received);
    assert_eq!(
        server_disconnect, violation,
        "server DISCONNECT reason (None: no DISCONNECT)"
    );

    broker.ping().await.expect("router alive");
    let mut delivered = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::ZERO, subscriber.recv()).await {
        delivered.push((d.topic, d.payload));
    }
    assert_eq!(delivered, expected, "deliveries in publish order");
    drop(subscriber);
    shutdown.cancel();
    broker.drained().await;
}

/// Length of the first complete packet in `bytes` (fixed header included).
fn first_frame_len(bytes: &[u8]) -> Option<usize> {
    let mut length = 0usize;
    for (i, b) in bytes.iter().skip(1).take(4).enumerate() {
        length |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 1 + i + 1 + length;
            return (bytes.len() >= total).then_some(total);
        }
    }
    None
}

/// The reason code of the first DISCONNECT in what the broker wrote, if any.
fn server_disconnect_reason(mut bytes: &[u8]) -> Option<u8> {
    while let Some((&first, rest)) = bytes.split_first() {
        let mut length = 0usize;
        let mut used = 0;
        loop {
            let b = *rest.get(used)?;
            length |= usize::from(b & 0x7F) << (7 * used);
            used += 1;
            if b & 0x80 == 0 {
                break;
            }
            if used == 4 {
                panic!("the broker wrote a malformed remaining length");
            }
        }
        let body = rest.get(used..used + length)?;
        if first == 0xE0 {
            // Remaining length 0 means reason 0x00 (normal disconnection).
            return Some(body.first().copied().unwrap_or(0));
        }
        bytes = &rest[used + length..];
    }
    None
}
