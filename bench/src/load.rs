//! The message load generator: N rumqttc publishers to M rumqttc subscribers
//! on `bench/<publisher>` (or any prefix; the subscribers may sit on another broker,
//! behind a bridge), every payload stamped with its send time,
//! publisher and sequence number, so the subscribers count loss and
//! duplicates exactly and record end-to-end latency. It must never report a
//! rate for a run that lost messages without saying so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, TlsConfiguration,
    Transport,
};
use thiserror::Error;
use tokio::sync::{watch, Barrier};
use tokio::task::JoinHandle;

/// Smallest payload that fits the stamp (time, publisher, sequence).
pub const STAMP_LEN: usize = 14;

/// Errors of one load run.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A client could not connect or subscribe.
    #[error("{who} could not {what}: {detail}")]
    Client {
        who: String,
        what: &'static str,
        detail: String,
    },
}

/// Where a client of the run connects (always 127.0.0.1).
#[derive(Clone)]
pub struct Endpoint {
    pub port: u16,
    /// TLS (with a client certificate for mTLS, if the config has one); `None` = plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub login: Option<(String, String)>,
    /// MQTT over WebSocket (over `tls`), path `/mqtt`.
    pub ws: bool,
}

/// Parameters of a run.
#[derive(Clone)]
pub struct LoadSpec {
    /// Where the publishers connect.
    pub publish_to: Endpoint,
    /// Where the subscribers connect (the same broker, or the cloud behind a bridge).
    pub subscribe_at: Endpoint,
    /// Publisher `p` sends on `<publish_prefix><p>`.
    pub publish_prefix: String,
    /// What the subscribers subscribe to (it must cover every publisher's topic as
    /// delivered to them).
    pub subscribe_filter: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: QoS,
    pub payload: usize,
    /// Messages per publisher.
    pub per_publisher: usize,
    /// Total send rate over all publishers in msg/s; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Give up when no message arrives for this long after publishers finished.
    pub stall: Duration,
    /// Hard limit for the whole run.
    pub limit: Duration,
    /// Tag making client ids unique across runs.
    pub tag: String,
    /// Subscribers keep a session (clean session off); it is ended after the run.
    pub persistent: bool,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Publishers' first send to the subscribers' last expected receive.
    pub elapsed: Duration,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    /// The hard limit ended the run.
    pub timed_out: bool,
    /// Client-side errors (publisher connection lost, subscriber reconnects).
    pub errors: Vec<String>,
}

impl LoadResult {
    /// Unique messages per second over all subscribers.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn options(at: &Endpoint, payload: usize, id: String, clean: bool) -> MqttOptions {
    let mut o = match (&at.tls, at.ws) {
        // rumqttc takes a WebSocket broker as a URL.
        (Some(tls), true) => {
            let mut o = MqttOptions::new(id, format!("wss://127.0.0.1:{}/mqtt", at.port), at.port);
            o.set_transport(Transport::wss_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
            o
        }
        _ => MqttOptions::new(id, "127.0.0.1", at.port),
    };
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(clean);
    o.set_max_packet_size(payload + 1024, payload + 1024);
    o.set_inflight(100);
    o.set_request_channel_capacity(1000);
    if let (Some(tls), false) = (&at.tls, at.ws) {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let Some((u, p)) = &at.login {
        o.set_credentials(u.clone(), p.clone());
    }
    o
}

/// A rumqttc client of `at` (clean session, inflight 100, Nagle off) for payloads up to
/// `payload` bytes; nothing is sent until its event loop is polled.
pub fn new_client(at: &Endpoint, payload: usize, id: String) -> (AsyncClient, EventLoop) {
    new_session_client(at, payload, id, true)
}

/// [`new_client`] with clean session off unless `clean` (a persistent session).
pub fn new_session_client(
    at: &Endpoint,
    payload: usize,
    id: String,
    clean: bool,
) -> (AsyncClient, EventLoop) {
    let (client, mut ev) = AsyncClient::new(options(at, payload, id, clean), 1000);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    ev.set_network_options(net);
    (client, ev)
}

/// Polls `ev` until its CONNACK (10 s at most).
pub async fn wait_connack(ev: &mut EventLoop, who: &str) -> Result<(), LoadError> {
    let fut = async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(LoadError::Client {
            who: who.to_string(),
            what: "connect",
            detail,
        }),
        Err(_) => Err(LoadError::Client {
            who: who.to_string(),
            what: "connect",
            detail: "no CONNACK within 10 s".into(),
        }),
    }
}

fn now_ns(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct SubTally {
    seen: Vec<Vec<u64>>,
    received: u64,
    duplicates: u64,
    hist: Histogram<u64>,
    last: Instant,
    errors: Vec<String>,
}

/// Run one load: connect subscribers, subscribe, connect publishers, release
/// them together, wait for every subscriber to hold every message (or stall).
/// `on_start`/`on_end` run at the measurement boundaries (CPU sampling).
pub async fn run(
    spec: &LoadSpec,
    on_start: impl FnOnce(),
    on_end: impl FnOnce(),
) -> Result<LoadResult, LoadError> {
    let base = Instant::now();
    let total = (spec.publishers * spec.per_publisher) as u64;

    // Subscribers.
    let (done_tx, done_rx) = watch::channel(0usize);
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Arc::new(AtomicU64::new(0));
    let mut sub_tasks = Vec::new();
    let mut sub_clients = Vec::new();
    for s in 0..spec.subscribers {
        let who = format!("subscriber {s}");
        let (client, mut ev) = new_session_client(
            &spec.subscribe_at,
            spec.payload,
            format!("bench-sub-{}-{s}", spec.tag),
            !spec.persistent,
        );
        wait_connack(&mut ev, &who).await?;
        subscribe(&client, &mut ev, &spec.subscribe_filter, spec.qos, who).await?;
        let tally = Tally {
            base,
            total,
            done_tx: done_tx.clone(),
            stop_rx: stop_rx.clone(),
            progress: progress.clone(),
        };
        sub_tasks.push(spawn_subscriber(spec, ev, tally));
        sub_clients.push(client);
    }

    // Publishers: connect all, then release together.
    let barrier = Arc::new(Barrier::new(spec.publishers + 1));
    let mut pub_tasks = Vec::new();
    let mut pub_clients = Vec::new();
    for p in 0..spec.publishers {
        let who = format!("publisher {p}");
        let (client, mut ev) = new_client(
            &spec.publish_to,
            spec.payload,
            format!("bench-pub-{}-{p}", spec.tag),
        );
        wait_connack(&mut ev, &who).await?;
        pub_tasks.push(spawn_publisher(spec, p, &client, ev, base, barrier.clone()));
        pub_clients.push(client);
    }

    on_start();
    let start = Instant::now();
    barrier.wait().await;
    let (publish_errors, timed_out) = finish(spec, pub_tasks, &done_rx, &progress).await;
    let elapsed_all = start.elapsed();
    on_end();
    let _ = stop_tx.send(true);
    let mut received = 0;
    let mut duplicates = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .expect("invariant: valid histogram bounds");
    let mut last_receive = start;
    let mut sub_errors = Vec::new();
    for t in sub_tasks {
        if let Ok(mut t) = t.await {
            t.errors.truncate(3);
            sub_errors.extend(t.errors);
            received += t.received;
            duplicates += t.duplicates;
            let _ = hist.add(&t.hist);
            if t.last > last_receive {
                last_receive = t.last;
            }
        }
    }
    for c in pub_clients.iter().chain(sub_clients.iter()) {
        let _ = c.try_disconnect();
    }
    if spec.persistent {
        end_sessions(spec).await;
    }
    let expected = total * spec.subscribers as u64;
    let lost = expected.saturating_sub(received);
    // With loss, the run ends at the last message that did arrive.
    let elapsed = if lost == 0 {
        elapsed_all
    } else {
        last_receive.saturating_duration_since(start)
    };
    Ok(LoadResult {
        expected,
        received,
        duplicates,
        lost,
        elapsed,
        latency_p50_us: hist.value_at_quantile(0.50) as f64,
        latency_p99_us: hist.value_at_quantile(0.99) as f64,
        latency_max_us: hist.max() as f64,
        timed_out,
        errors: publish_errors.into_iter().chain(sub_errors).collect(),
    })
}

/// Ends the run's persistent subscriber sessions (a clean-session connect of each id),
/// so the next run's messages do not queue for them.
async fn end_sessions(spec: &LoadSpec) {
    // Their DISCONNECTs first: a connect before it would take the session over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in 0..spec.subscribers {
        let id = format!("bench-sub-{}-{s}", spec.tag);
        let (client, mut ev) = new_client(&spec.subscribe_at, spec.payload, id);
        if wait_connack(&mut ev, "session end").await.is_ok() {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while ev.poll().await.is_ok() {}
            })
            .await;
        }
    }
}

/// Subscribes `client` to `filter` and waits for a SUBACK granting it.
pub async fn subscribe(
    client: &AsyncClient,
    ev: &mut EventLoop,
    filter: &str,
    qos: QoS,
    who: String,
) -> Result<(), LoadError> {
    client
        .subscribe(filter, qos)
        .await
        .map_err(|e| LoadError::Client {
            who: who.clone(),
            what: "subscribe",
            detail: e.to_string(),
        })?;
    let suback = async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(a))) => return Ok(a),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), suback).await {
        Ok(Ok(a))
            if a.return_codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))) =>
        {
            Ok(())
        }
        Ok(Ok(a)) => Err(LoadError::Client {
            who,
            what: "subscribe",
            detail: format!("SUBACK refused {filter}: {:?}", a.return_codes),
        }),
        Ok(Err(detail)) => Err(LoadError::Client {
            who,
            what: "subscribe",
            detail,
        }),
        Err(_) => Err(LoadError::Client {
            who,
            what: "subscribe",
            detail: "no SUBACK within 10 s".into(),
        }),
    }
}

/// What a subscriber task shares with the run.
struct Tally {
    /// The run's time base (the stamps' zero).
    base: Instant,
    /// Messages each subscriber expects.
    total: u64,
    /// Counts the subscribers holding every message.
    done_tx: watch::Sender<usize>,
    /// Ends the task.
    stop_rx: watch::Receiver<bool>,
    /// Unique messages received by all subscribers.
    progress: Arc<AtomicU64>,
}

/// Drives a subscribed event loop until the run stops: counts unique messages and
/// duplicates per publisher and sequence number, and records latency.
fn spawn_subscriber(spec: &LoadSpec, mut ev: EventLoop, tally: Tally) -> JoinHandle<SubTally> {
    let Tally {
        base,
        total,
        done_tx,
        mut stop_rx,
        progress,
    } = tally;
    let words = spec.per_publisher.div_ceil(64);
    let pubs = spec.publishers;
    tokio::spawn(async move {
        let mut t = SubTally {
            seen: vec![vec![0u64; words]; pubs],
            received: 0,
            duplicates: 0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("invariant: valid histogram bounds"),
            last: Instant::now(),
            errors: Vec::new(),
        };
        loop {
            tokio::select! {
                ev = ev.poll() => match ev {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let b = &p.payload;
                        if b.len() < STAMP_LEN {
                            continue;
                        }
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&b[0..8]);
                        let sent = u64::from_le_bytes(ts);
                        let pubi = usize::from(u16::from_le_bytes([b[8], b[9]]));
                        let seq = u32::from_le_bytes([b[10], b[11], b[12], b[13]]) as usize;
                        let now = now_ns(base);
                        let Some(row) = t.seen.get_mut(pubi) else { continue };
                        let Some(word) = row.get_mut(seq / 64) else { continue };
                        let bit = 1u64 << (seq % 64);
                        if *word & bit != 0 {
                            t.duplicates += 1;
                            continue;
                        }
                        *word |= bit;
                        t.received += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        t.last = Instant::now();
                        let _ = t.hist.record((now.saturating_sub(sent) / 1000).max(1));
                        if t.received == total {
                            done_tx.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        t.errors.push(format!("subscriber connection error: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = stop_rx.changed() => break,
            }
        }
        t
    })
}

/// A publisher's event-loop driver (its error, if the connection failed) and its sender.
type PublisherTasks = (JoinHandle<Result<(), String>>, JoinHandle<()>);

/// Publisher `p`: a task driving its event loop until every publish is acknowledged
/// (QoS 1) or written (QoS 0), and one that waits at `barrier` and then sends its
/// stamped messages, paced when the spec has a rate.
fn spawn_publisher(
    spec: &LoadSpec,
    p: usize,
    client: &AsyncClient,
    mut ev: EventLoop,
    base: Instant,
    barrier: Arc<Barrier>,
) -> PublisherTasks {
    let qos = spec.qos;
    let n = spec.per_publisher;
    let payload = spec.payload;
    let topic = format!("{}{p}", spec.publish_prefix);
    let gap = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.publishers as f64 / r.max(1.0)));
    let c = client.clone();
    // Event loop: drive until every publish is acknowledged (QoS 1) or written (QoS 0).
    let driver = tokio::spawn(async move {
        let mut finished = 0usize;
        while finished < n {
            match ev.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) if qos != QoS::AtMostOnce => finished += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                    finished += 1
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // Flush the QoS 0 tail: keep polling briefly.
        let _ = tokio::time::timeout(Duration::from_millis(50), ev.poll()).await;
        Ok(())
    });
    let sender = tokio::spawn(async move {
        barrier.wait().await;
        let mut buf = vec![0xA5u8; payload];
        let start = tokio::time::Instant::now();
        for seq in 0..n {
            if let Some(gap) = gap {
                tokio::time::sleep_until(start + gap * (seq as u32)).await;
            }
            buf[0..8].copy_from_slice(&now_ns(base).to_le_bytes());
            buf[8..10].copy_from_slice(&(p as u16).to_le_bytes());
            buf[10..14].copy_from_slice(&(seq as u32).to_le_bytes());
            if c.publish(topic.clone(), qos, false, buf.clone())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    (driver, sender)
}

/// Waits, within the spec's limit, until every subscriber holds every message, or the
/// publishers are done and no message arrived for `stall`. Returns the publishers'
/// errors and whether the limit ended the wait.
async fn finish(
    spec: &LoadSpec,
    pub_tasks: Vec<PublisherTasks>,
    done_rx: &watch::Receiver<usize>,
    progress: &AtomicU64,
) -> (Vec<String>, bool) {
    let mut publish_errors = Vec::new();
    let mut done_rx2 = done_rx.clone();
    let all_done = async {
        done_rx2
            .wait_for(|n| *n >= spec.subscribers)
            .await
            .map(|_| ())
    };
    let publishers_done = async {
        for (driver, sender) in pub_tasks {
            let _ = sender.await;
            match driver.await {
                Ok(Err(e)) => publish_errors.push(e),
                Err(e) => publish_errors.push(e.to_string()),
                Ok(Ok(())) => {}
            }
        }
    };
    let mut timed_out = false;
    let finish = async {
        tokio::pin!(all_done);
        tokio::select! {
            _ = &mut all_done => return,
            _ = publishers_done => {}
        }
        // Publishers finished: wait for the tail, give up after `stall`
        // without any new message.
        let mut last_count = progress.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        loop {
            tokio::select! {
                _ = &mut all_done => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let now = progress.load(Ordering::Relaxed);
            if now != last_count {
                last_count = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > spec.stall {
                return;
            }
        }
    };
    if tokio::time::timeout(spec.limit, finish).await.is_err() {
        timed_out = true;
    }
    (publish_errors, timed_out)
}
