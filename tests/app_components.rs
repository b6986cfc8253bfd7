//! The component seam of `App` with toy components (one per drain stage): they start
//! before the listeners accept (a component's readiness hold keeps the first client
//! waiting until it has attached), talk to the broker only through in-process clients authorized by
//! their built-in grants (the ACL grants them nothing), are reloaded live or replaced by
//! name when their settings change, are stopped when a reload drops them, and drain in
//! the stated order on shutdown (adapters, then bridges, then services, then the broker,
//! whose clients are still served while the components flush).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tollgate::acl::Access;
use tollgate::app::{App, ComponentSource};
use tollgate::auth::Identity;
use tollgate::broker::codec::QoS as BrokerQoS;
use tollgate::broker::InternalOptions;
use tollgate::component::{Component, ComponentContext, Grant, Health, Settings, Stage};
use tollgate::config::{load_with_env, ConfigSource};

mod support;

use support::peers::require_peer;
use support::wait::WAIT;

/// What happened, in order, across every toy instance.
type Events = Arc<Mutex<Vec<String>>>;

fn record(events: &Events, line: String) {
    events.lock().expect("events").push(line);
}

/// The toy's settings: the reply prefix can change live, the generation only by restart.
#[derive(Debug, Clone, PartialEq)]
struct ToySettings {
    prefix: String,
    generation: u32,
}

struct Toy {
    short: &'static str,
    name: String,
    stage: Stage,
    settings: ToySettings,
    /// The running instance's prefix, changed in place by a live reload.
    live_prefix: Arc<Mutex<String>>,
    events: Events,
}

impl Toy {
    fn new(short: &'static str, stage: Stage, settings: ToySettings, events: Events) -> Self {
        Toy {
            short,
            name: format!("{short}:toy"),
            stage,
            live_prefix: Arc::new(Mutex::new(settings.prefix.clone())),
            settings,
            events,
        }
    }
}

impl Component for Toy {
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn settings(&self) -> &dyn Settings {
        &self.settings
    }

    fn grants(&self) -> Vec<Grant> {
        vec![
            Grant {
                identity: self.name.clone(),
                access: Access::Read,
                filter: format!("toy/{}/in", self.short),
            },
            Grant {
                identity: self.name.clone(),
                access: Access::Write,
                filter: format!("toy/{}/#", self.short),
            },
        ]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let generation = self.settings.generation;
        record(&self.events, format!("start {} gen{generation}", self.name));
        let (name, short, events, prefix) = (
            self.name.clone(),
            self.short,
            self.events.clone(),
            self.live_prefix.clone(),
        );
        // The adapter takes a while to drain: the next stage must wait for it.
        let drain_time = if self.stage == Stage::Adapter {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        };
        ctx.tracker.spawn(async move {
            let mut client = ctx
                .broker
                .connect_internal(InternalOptions::new(Identity::internal(&name)))
                .await
                .expect("in-process client");
            let code = client
                .subscribe(&format!("toy/{short}/in"), BrokerQoS::AtLeastOnce)
                .await
                .expect("subscribe");
            record(&events, format!("subscribed {name} {code:?}"));
            // Not granted and not in the ACL: refused like any client's publish.
            let forbidden = client
                .publish("elsewhere/x", "no", BrokerQoS::AtLeastOnce, false)
                .await;
            record(&events, format!("forbidden {name} ok={}", forbidden.is_ok()));
            ctx.health.set(Health::Ok("echoing".into()));
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    delivery = client.recv() => {
                        let Some(d) = delivery else { break };
                        let reply = format!(
                            "{}:{}",
                            prefix.lock().expect("prefix"),
                            String::from_utf8_lossy(&d.payload)
                        );
                        let _ = d.ack().await;
                        client
                            .publish(&format!("toy/{short}/out"), reply, BrokerQoS::AtLeastOnce, false)
                            .await
                            .expect("granted publish");
                    }
                }
            }
            record(&events, format!("stopping {name} gen{generation}"));
            tokio::time::sleep(drain_time).await;
            // Flush: the broker still serves while components drain.
            let flushed = client
                .publish(&format!("toy/{short}/bye"), "flushed", BrokerQoS::AtLeastOnce, false)
                .await;
            record(
                &events,
                format!("stopped {name} gen{generation} flush_ok={}", flushed.is_ok()),
            );
        });
        Ok(())
    }

    fn can_reload(&self, next: &dyn Settings) -> bool {
        next.as_any()
            .downcast_ref::<ToySettings>()
            .is_some_and(|n| n.generation == self.settings.generation)
    }

    fn reload(&mut self, next: Box<dyn Component>) {
        let new = next
            .settings()
            .as_any()
            .downcast_ref::<ToySettings>()
            .expect("a toy's settings")
            .clone();
        record(
            &self.events,
            format!("live-reload {} {}", self.name, new.prefix),
        );
        *self.live_prefix.lock().expect("prefix") = new.prefix.clone();
        self.settings = new;
    }
}

struct Knobs {
    settings: ToySettings,
    with_service: bool,
}

fn source(knobs: Arc<Mutex<Knobs>>, events: Events) -> ComponentSource {
    Arc::new(move |_config| {
        let k = knobs.lock().expect("knobs");
        let mut all: Vec<Box<dyn Component>> = vec![
            Box::new(Toy::new(
                "adapter",
                Stage::Adapter,
                k.settings.clone(),
                events.clone(),
            )),
            Box::new(Toy::new(
                "bridge",
                Stage::Bridge,
                k.settings.clone(),
                events.clone(),
            )),
        ];
        if k.with_service {
            all.push(Box::new(Toy::new(
                "service",
                Stage::Service,
                k.settings.clone(),
                events.clone(),
            )));
        }
        all
    })
}

async fn next_publish(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("client running")
}

/// Wait until `count` events start with `prefix`.
async fn wait_event(events: &Events, prefix: &str, count: usize) {
    support::wait::wait_until(&format!("{count} events {prefix:?}"), || {
        events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
            >= count
    })
    .await;
}

fn position(events: &[String], prefix: &str) -> usize {
    events
        .iter()
        .position(|e| e.starts_with(prefix))
        .unwrap_or_else(|| panic!("no event {prefix:?} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toy_components_start_echo_reload_by_name_and_drain_in_stage_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tollgate.toml");
    // Anonymous clients may use toy/#; the toys' identities appear nowhere in the ACL.
    let body = format!(
        "[broker]\ndata_dir = {:?}\nsys_interval = \"0s\"\n\
         [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n\
         [[acl.rule]]\naccess = \"readwrite\"\ntopic = \"toy/#\"\n",
        dir.path().display()
    );
    std::fs::write(&path, body).expect("config");
    let loaded =
        load_with_env(&ConfigSource::File(path), &Default::default()).expect("valid config");
    let events: Events = Arc::default();
    let knobs = Arc::new(Mutex::new(Knobs {
        settings: ToySettings {
            prefix: "p1".into(),
            generation: 1,
        },
        with_service: true,
    }));
    let app = App::build_with_components(loaded, vec![source(knobs.clone(), events.clone())])
        .await
        .expect("app builds");
    let addr = app.local_addr("local").expect("bound");
    let reload = app.reload_handle();
    let health = app.component_health();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let mut options = MqttOptions::new("toy-tester", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (disconnected_tx, mut disconnected) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).to_string(),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("client ended: {e}");
                    let _ = disconnected_tx.send(());
                    break;
                }
            }
        }
    });
    client
        .subscribe("toy/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");

    // Started after the listeners, subscribed through their grants; an ungranted
    // publish is refused even though the toy is an in-process client.
    // Other messages seen meanwhile (the flushes of stopped toys) go to `others`.
    let mut others: Vec<String> = Vec::new();
    let echoed = async |rx: &mut mpsc::UnboundedReceiver<(String, String)>,
                        others: &mut Vec<String>,
                        expect: &str| {
        loop {
            client
                .publish("toy/adapter/in", QoS::AtLeastOnce, false, "ping")
                .await
                .expect("publish");
            loop {
                let (topic, payload) = next_publish(rx).await;
                match topic.as_str() {
                    "toy/adapter/in" => continue,
                    "toy/adapter/out" if payload == expect => return,
                    // A reply from before the reload was applied; ask again.
                    "toy/adapter/out" => break,
                    _ => others.push(format!("{topic} {payload}")),
                }
            }
        }
    };
    wait_event(&events, "forbidden", 3).await;
    echoed(&mut rx, &mut others, "p1:ping").await;
    {
        let ev = events.lock().expect("events").clone();
        assert!(
            ev.iter()
                .all(|e| !e.starts_with("forbidden") || e.ends_with("ok=false")),
            "an ungranted publish went through: {ev:#?}"
        );
        assert!(
            ev.iter()
                .any(|e| e.starts_with("subscribed adapter:toy Success")),
            "{ev:#?}"
        );
    }
    assert_eq!(
        health.snapshot()["adapter:toy"],
        Health::Ok("echoing".into())
    );

    // A live change: applied in place, nothing restarted.
    knobs.lock().expect("knobs").settings.prefix = "p2".into();
    reload.reload().await.expect("reload accepted");
    echoed(&mut rx, &mut others, "p2:ping").await;
    // A reload that changes nothing keeps every instance.
    reload.reload().await.expect("reload accepted");
    // A change that needs a restart, and the service toy removed.
    {
        let mut k = knobs.lock().expect("knobs");
        k.settings.generation = 2;
        k.with_service = false;
    }
    reload.reload().await.expect("reload accepted");
    wait_event(&events, "stopped adapter:toy gen1", 1).await;
    wait_event(&events, "subscribed adapter:toy", 2).await;
    echoed(&mut rx, &mut others, "p2:ping").await;
    wait_event(&events, "stopped service:toy gen1", 1).await;
    {
        let ev = events.lock().expect("events").clone();
        let count = |name: &str| ev.iter().filter(|e| e.starts_with(name)).count();
        assert_eq!(count("start adapter:toy"), 2, "{ev:#?}");
        assert_eq!(count("start bridge:toy"), 2, "{ev:#?}");
        assert_eq!(count("start service:toy"), 1, "{ev:#?}");
        assert_eq!(count("live-reload adapter:toy p2"), 1, "{ev:#?}");
        assert_eq!(count("live-reload"), 3, "one live reload per toy: {ev:#?}");
        // The replaced and the removed toys drained completely, with their old grants,
        // before the new instances started.
        for toy in ["adapter", "bridge", "service"] {
            assert!(
                ev.contains(&format!("stopped {toy}:toy gen1 flush_ok=true")),
                "{ev:#?}"
            );
        }
        assert!(
            position(&ev, "stopped adapter:toy gen1") < position(&ev, "start adapter:toy gen2"),
            "{ev:#?}"
        );
    }
    while others.len() < 3 {
        let (topic, payload) = next_publish(&mut rx).await;
        others.push(format!("{topic} {payload}"));
    }
    others.sort();
    assert_eq!(
        others,
        [
            "toy/adapter/bye flushed",
            "toy/bridge/bye flushed",
            "toy/service/bye flushed"
        ]
    );
    assert!(!health.snapshot().contains_key("service:toy"));

    // Shutdown: the adapter (slow to drain) stops before the bridge is asked to stop;
    // both flush while the broker still serves its clients; then the broker ends them.
    // The flushes are read by Debian's mosquitto_sub: rumqttc drops packets that arrive
    // together with the end of the connection (its `readb` returns the EOF error instead).
    let mut bye_reader = require_peer("mosquitto_sub").then(|| {
        Command::new("mosquitto_sub")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-t", "toy/+/bye", "-q", "1", "-v", "-i", "bye-reader"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub starts")
    });
    let mut bye_lines = bye_reader
        .as_mut()
        .map(|r| BufReader::new(r.stdout.take().expect("piped")).lines());
    if let Some(lines) = bye_lines.as_mut() {
        wait_subscribed(&client, lines).await;
    }
    let before = events.lock().expect("events").len();
    let _ = stop.send(());
    tokio::time::timeout(WAIT, disconnected.recv())
        .await
        .expect("the broker disconnected the client after the components drained");
    tokio::time::timeout(WAIT, running)
        .await
        .expect("run returns")
        .expect("task")
        .expect("clean exit");
    let ev = events.lock().expect("events")[before..].to_vec();
    let stopped_adapter = position(&ev, "stopped adapter:toy gen2 flush_ok=true");
    let stopping_bridge = position(&ev, "stopping bridge:toy gen2");
    assert!(stopped_adapter < stopping_bridge, "{ev:#?}");
    position(&ev, "stopped bridge:toy gen2 flush_ok=true");
    if let (Some(mut reader), Some(mut lines)) = (bye_reader.take(), bye_lines.take()) {
        // Read what it printed (late markers aside) until both flushes, then stop it
        // (it keeps trying to reconnect).
        let mut printed = Vec::new();
        while printed.len() < 2 {
            match tokio::time::timeout(WAIT, lines.next_line()).await {
                Ok(Ok(Some(line))) if line == "toy/sync/bye ready" => {}
                Ok(Ok(Some(line))) => printed.push(line),
                _ => break,
            }
        }
        let _ = reader.start_kill();
        assert_eq!(
            printed,
            ["toy/adapter/bye flushed", "toy/bridge/bye flushed"],
            "the flushes of draining components reach network clients before the broker stops"
        );
    }
}

/// Publish a marker on mosquitto_sub's topic until it prints it: its subscription is
/// then in force.
async fn wait_subscribed(client: &AsyncClient, lines: &mut Lines<BufReader<ChildStdout>>) {
    tokio::time::timeout(WAIT, async {
        loop {
            client
                .publish("toy/sync/bye", QoS::AtLeastOnce, false, "ready")
                .await
                .expect("publish");
            if let Ok(line) =
                tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
            {
                assert_eq!(line.expect("read").as_deref(), Some("toy/sync/bye ready"));
                return;
            }
        }
    })
    .await
    .expect("mosquitto_sub subscribed");
}

/// A component that takes a while to attach and holds the gateway's readiness meanwhile.
struct Late {
    seen: mpsc::UnboundedSender<String>,
}

impl Component for Late {
    fn name(&self) -> &str {
        "adapter:late"
    }

    fn stage(&self) -> Stage {
        Stage::Adapter
    }

    fn settings(&self) -> &dyn Settings {
        &()
    }

    fn grants(&self) -> Vec<Grant> {
        vec![Grant {
            identity: "adapter:late".into(),
            access: Access::Read,
            filter: "late/in".into(),
        }]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        let hold = ctx.readiness.hold();
        let seen = self.seen.clone();
        ctx.tracker.spawn(async move {
            // Slow to attach (a bus to open, a journal to recover).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut client = ctx
                .broker
                .connect_internal(InternalOptions::new(Identity::internal("adapter:late")))
                .await
                .expect("in-process client");
            client
                .subscribe("late/in", BrokerQoS::AtLeastOnce)
                .await
                .expect("subscribe");
            drop(hold);
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    delivery = client.recv() => {
                        let Some(d) = delivery else { break };
                        let _ = seen.send(String::from_utf8_lossy(&d.payload).into_owned());
                        let _ = d.ack().await;
                    }
                }
            }
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_client_is_accepted_only_after_components_attached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tollgate.toml");
    let body = format!(
        "[broker]\ndata_dir = {:?}\nsys_interval = \"0s\"\n\
         [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n",
        dir.path().display()
    );
    std::fs::write(&path, body).expect("config");
    let loaded =
        load_with_env(&ConfigSource::File(path), &Default::default()).expect("valid config");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let source: ComponentSource = Arc::new(move |_config| {
        vec![Box::new(Late {
            seen: seen_tx.clone(),
        }) as Box<dyn Component>]
    });
    let app = App::build_with_components(loaded, vec![source])
        .await
        .expect("app builds");
    let addr = app.local_addr("local").expect("bound");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    // The device connects and publishes at once: its connection waits in the listen
    // backlog until the component has subscribed, so the first message is not missed.
    let mut options = MqttOptions::new("early-device", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .publish("late/in", QoS::AtLeastOnce, false, "first")
        .await
        .expect("publish queued");
    let (acked_tx, acked) = oneshot::channel();
    tokio::spawn(async move {
        let mut acked_tx = Some(acked_tx);
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                if let Some(t) = acked_tx.take() {
                    let _ = t.send(());
                }
            }
        }
    });
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("PUBACK in time")
        .expect("client alive");
    let first = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the component saw the first message")
        .expect("component running");
    assert_eq!(first, "first");

    let _ = stop.send(());
    running.await.expect("join").expect("app ran");
}
