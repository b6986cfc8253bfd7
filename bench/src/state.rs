//! `--state-startup`: how long tollgate takes to load a large durable state, and its RSS
//! once loaded. It fills a fresh state over MQTT (retained QoS 1 messages, persistent
//! 3.1.1 sessions with a subscription and queued QoS 1 messages each), stops tollgate
//! with SIGTERM, starts it again and reports the time from the spawn to the
//! "Broker state loaded" log line (and to "tollgate is ready"), the loader's own
//! figure, the RSS then, and the size of the state on disk. Mosquitto is not involved.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::setup;

/// What `--state-startup` measures with.
pub struct StateBench {
    pub tollgate: PathBuf,
    pub retained: usize,
    pub sessions: usize,
    pub queued_per_session: usize,
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(exe: &Path, dir: &Path) -> anyhow::Result<(Running, Instant)> {
    let started = Instant::now();
    let mut command = Command::new(exe);
    // The allocator policy of systemd/tollgate.service (as the other sections use),
    // unless the caller set one: the RSS figures are those of the deployed service.
    for (key, value) in crate::broker::TOLLGATE_UNIT_ENV {
        if std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    let mut child = command
        .args(["--log", "text", "run", "-c", "tollgate.toml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    Ok((Running { child, lines }, started))
}

impl Running {
    /// When the first line containing `needle` arrived, and the line.
    fn wait_for(&self, needle: &str) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) => return Ok((at, line)),
                Ok(_) => {}
                Err(_) => bail!("tollgate never logged {needle:?}"),
            }
        }
    }

    fn terminate(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Connect a 3.1.1 client and wait for its CONNACK; the client and its event loop task.
async fn client(
    port: u16,
    id: &str,
    clean: bool,
) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::UnboundedReceiver<Packet>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_inflight(1000);
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(o, 2000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(p) = ev {
                if tx.send(p).is_err() {
                    break;
                }
            }
        }
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Packet::ConnAck(_))) => return Ok((client, rx)),
            Ok(Some(_)) => {}
            _ => bail!("no CONNACK for {id}"),
        }
    }
}

/// Wait until `n` packets matching `f` arrived.
async fn count(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Packet>,
    n: usize,
    f: impl Fn(&Packet) -> bool,
) -> anyhow::Result<()> {
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(p)) => seen += usize::from(f(&p)),
            _ => bail!("{seen} of {n} acknowledgements"),
        }
    }
    Ok(())
}

/// Fill the state: sessions with their subscription and queued messages, then the
/// retained messages (all QoS 1, so everything is durable once acknowledged).
async fn fill(b: &StateBench, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    for i in 0..b.sessions {
        let (c, mut rx) = client(port, &format!("dev-{i}"), false).await?;
        c.subscribe(format!("dev/{i}/cmd/#"), QoS::AtLeastOnce)
            .await?;
        count(&mut rx, 1, |p| matches!(p, Packet::SubAck(_))).await?;
        c.disconnect().await?;
    }
    let (c, mut rx) = client(port, "filler", true).await?;
    let payload = vec![b'x'; 64];
    for k in 0..b.queued_per_session {
        for i in 0..b.sessions {
            c.publish(
                format!("dev/{i}/cmd/{k}"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await?;
        }
        count(&mut rx, b.sessions, |p| matches!(p, Packet::PubAck(_))).await?;
    }
    for chunk in (0..b.retained).collect::<Vec<_>>().chunks(1000) {
        for i in chunk {
            let topic = format!("site/{}/sensor/{i}", i % 100);
            c.publish(topic, QoS::AtLeastOnce, true, payload.clone())
                .await?;
        }
        count(&mut rx, chunk.len(), |p| matches!(p, Packet::PubAck(_))).await?;
    }
    c.disconnect().await?;
    eprintln!(
        "state filled in {:.1} s: {} sessions x {} queued, {} retained",
        started.elapsed().as_secs_f64(),
        b.sessions,
        b.queued_per_session,
        b.retained
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Run the measurement and print its figures.
pub async fn run(b: StateBench, scratch: &Path) -> anyhow::Result<()> {
    let port = setup::free_port()?;
    let dir = scratch.join("state-startup");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "[broker]\ndata_dir = \"data\"\nsys_interval = \"0s\"\n\
             max_retained_messages = {}\nmax_persistent_sessions = {}\n\
             max_offline_messages = {}\n[persistence]\nmax_bytes = 2147483648\n\
             [[listener]]\nname = \"local\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nallow_anonymous = true\n",
            b.retained.max(1),
            b.sessions.max(1),
            b.queued_per_session.max(1000),
        ),
    )?;
    let (gw, _) = spawn(&b.tollgate, &dir)?;
    gw.wait_for("tollgate is ready")?;
    fill(&b, port).await?;
    let rss_filled = gw.rss_kib();
    gw.terminate()?;
    let disk = dir_bytes(&dir.join("data/state"));

    let (gw, started) = spawn(&b.tollgate, &dir)?;
    let (loaded_at, loaded) = gw.wait_for("Broker state loaded")?;
    let (ready_at, _) = gw.wait_for("tollgate is ready")?;
    let rss = gw.rss_kib();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_later = gw.rss_kib();
    let ms = |at: Instant| at.duration_since(started).as_secs_f64() * 1000.0;
    println!("Startup with {} retained messages and {} persistent sessions ({} queued messages each), state on disk {:.1} MiB:", b.retained, b.sessions, b.queued_per_session, disk as f64 / 1048576.0);
    println!(
        "  spawn -> \"Broker state loaded\": {:.0} ms",
        ms(loaded_at)
    );
    println!("  spawn -> \"tollgate is ready\":   {:.0} ms", ms(ready_at));
    println!("  loader's log line: {}", loaded.trim());
    println!(
        "  RSS when ready: {:.1} MiB; 2 s later: {:.1} MiB (before the restart, with the same state built live: {:.1} MiB)",
        rss as f64 / 1024.0,
        rss_later as f64 / 1024.0,
        rss_filled as f64 / 1024.0
    );
    gw.terminate()?;
    Ok(())
}
