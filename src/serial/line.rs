//! The line task: one per `[[serial]]`, the only owner of its port. It opens the port
//! by path with the configured line settings, reads and frames what arrives, hands each
//! frame to the publisher (a full queue is an overrun: counted, never waited on, so the
//! port is always drained), writes accepted sends, and publishes the status document
//! (online, counters) on every change of state and every `status_interval`. A port that
//! fails or disappears (a USB adapter unplugged) is closed and reopened by path with a
//! backoff doubling from `backoff_min` to `backoff_max`; the gateway never stops for it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{FlowControl, SerialConfig};
use super::framer::{Frame, FrameError, Framer};
use super::publish::Outputs;
use super::send::{SendJob, SendOutcome};
use crate::component::{Health, HealthReporter};
use crate::timestamp::rfc3339;
use crate::uart;

/// Bytes read from the port at once.
const CHUNK: usize = 4096;

/// The counters of one line, as published in its status document.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Frames published (queued towards the broker).
    pub frames: u64,
    /// Bytes read from the port.
    pub bytes: u64,
    /// Lines longer than `max_length`.
    pub overlong: u64,
    /// Lines that were not UTF-8 (rejected or replaced).
    pub invalid_utf8: u64,
    /// Lines the regex did not match.
    pub no_match: u64,
    /// Frames whose topic could not be made (a capture that is not a topic level).
    pub bad_topic: u64,
    /// Frames dropped because the publish queue was full.
    pub overruns: u64,
    /// Sends written to the port.
    pub sends: u64,
    /// Sends that failed at the port (refusals before it are counted by the command task).
    pub sends_refused: u64,
    /// Times the port was opened.
    pub opens: u64,
}

impl Counters {
    /// Framing errors of every kind.
    pub fn framing_errors(&self) -> u64 {
        self.overlong + self.invalid_utf8 + self.no_match + self.bad_topic
    }
}

/// Open `config`'s port with its line settings.
pub fn open(config: &SerialConfig) -> io::Result<SerialStream> {
    uart::open(&config.line_settings())
}

/// One line at run time.
pub(super) struct Line {
    config: SerialConfig,
    framer: Framer,
    counters: Counters,
    online: bool,
    last_error: Option<String>,
    reporter: HealthReporter,
    out: Outputs,
    /// Sends refused by the command task (allowlist, rate, size), shared with it.
    refused: Arc<AtomicU64>,
    /// Whether the command task still sends (reads of a closed channel are skipped).
    sends_open: bool,
    /// The kernel's UART error counters of the port (framing, overrun, parity, break).
    kernel: uart::KernelCounters,
    /// The template with `{prefix}` and `{name}` filled in.
    topic: String,
    status_topic: String,
}

/// Why serving an open port ended.
enum End {
    Shutdown,
    Lost(String),
}

impl Line {
    pub fn new(
        config: SerialConfig,
        reporter: HealthReporter,
        out: Outputs,
        refused: Arc<AtomicU64>,
    ) -> Self {
        let topic = config
            .topic
            .replace("{prefix}", &config.topic_prefix)
            .replace("{name}", &config.name);
        Line {
            framer: Framer::new(&config),
            counters: Counters::default(),
            online: false,
            last_error: None,
            reporter,
            out,
            refused,
            sends_open: true,
            topic,
            status_topic: format!("{}/status", config.base_topic()),
            kernel: uart::KernelCounters::new(&config.port),
            config,
        }
    }

    /// Open, serve, reopen with backoff, until `shutdown`; then publish `offline`.
    pub async fn run(mut self, mut sends: mpsc::Receiver<SendJob>, shutdown: CancellationToken) {
        info!(line = %self.config.name, port = %self.config.port.display(), "Serial line started.");
        let mut backoff = self.config.backoff_min;
        self.publish_status().await;
        loop {
            match open(&self.config) {
                Ok(port) => {
                    self.counters.opens += 1;
                    self.last_error = None;
                    self.framer.reset();
                    self.kernel.opened(&port);
                    self.set_online(true, "port opened").await;
                    info!(line = %self.config.name, port = %self.config.port.display(), "Serial port opened.");
                    match self.serve(port, &mut sends, &shutdown).await {
                        End::Shutdown => break,
                        End::Lost(why) => {
                            self.kernel.closed();
                            warn!(line = %self.config.name, port = %self.config.port.display(), error = %why, "Serial port lost; reopening.");
                            self.last_error = Some(why.clone());
                            self.set_online(false, &why).await;
                            backoff = Duration::from_millis(100).min(self.config.backoff_min);
                        }
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_error.as_deref() != Some(&text) {
                        warn!(line = %self.config.name, port = %self.config.port.display(), error = %text, retry_in = ?backoff, "Serial port cannot be opened; retrying.");
                    }
                    self.last_error = Some(text.clone());
                    self.set_online(false, &text).await;
                }
            }
            if !self.wait(backoff, &mut sends, &shutdown).await {
                break;
            }
            backoff = (backoff * 2).clamp(self.config.backoff_min, self.config.backoff_max);
        }
        self.set_online(false, "adapter stopped").await;
        self.publish_status().await;
        info!(line = %self.config.name, "Serial line stopped.");
    }

    /// Wait `delay` while the port is closed: sends are refused, the status goes on.
    /// False on shutdown.
    async fn wait(
        &mut self,
        delay: Duration,
        sends: &mut mpsc::Receiver<SendJob>,
        shutdown: &CancellationToken,
    ) -> bool {
        let until = Instant::now() + delay;
        let mut next_status = Instant::now() + self.config.status_interval;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                job = sends.recv(), if self.sends_open => match job {
                    Some(job) => {
                        self.counters.sends_refused += 1;
                        self.out.answer(job.reply, SendOutcome::Failed("port not open".into())).await;
                    }
                    None => self.sends_open = false,
                },
                _ = sleep_until(until.min(next_status)) => {
                    if Instant::now() >= until {
                        return true;
                    }
                    self.publish_status().await;
                    next_status = Instant::now() + self.config.status_interval;
                }
            }
        }
    }

    async fn serve(
        &mut self,
        mut port: SerialStream,
        sends: &mut mpsc::Receiver<SendJob>,
        shutdown: &CancellationToken,
    ) -> End {
        let mut chunk = vec![0u8; CHUNK];
        let mut frames = Vec::new();
        let mut next_status = Instant::now() + self.config.status_interval;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.kernel.update(&port);
                    return End::Shutdown;
                }
                read = port.read(&mut chunk) => match read {
                    Ok(0) => return End::Lost("end of file on the port".into()),
                    Ok(n) => {
                        self.counters.bytes += n as u64;
                        let replaced = self.framer.replaced;
                        self.framer.push(&chunk[..n], &mut frames);
                        self.counters.invalid_utf8 += self.framer.replaced - replaced;
                        for frame in frames.drain(..) {
                            self.frame(frame).await;
                        }
                    }
                    Err(e) => return End::Lost(e.to_string()),
                },
                job = sends.recv(), if self.sends_open => match job {
                    Some(job) => {
                        if let Some(end) = self.send(&mut port, job, shutdown).await {
                            return end;
                        }
                    }
                    // Sending is off (no allowlist, or the ACL refused the subscription).
                    None => self.sends_open = false,
                },
                _ = sleep_until(next_status) => {
                    self.kernel.update(&port);
                    self.publish_status().await;
                    next_status = Instant::now() + self.config.status_interval;
                }
            }
        }
    }

    /// Write one accepted send, at most `send_timeout` long: a device that takes no
    /// bytes (flow control holding the line) must not stop the reading, the status or
    /// the shutdown. `Some` when serving ends.
    async fn send(
        &mut self,
        port: &mut SerialStream,
        job: SendJob,
        shutdown: &CancellationToken,
    ) -> Option<End> {
        let timeout = self.config.send_timeout;
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            r = tokio::time::timeout(timeout, async {
                port.write_all(&job.bytes).await?;
                port.flush().await
            }) => Some(r),
        };
        let (outcome, end) = match result {
            Some(Ok(Ok(()))) => {
                self.counters.sends += 1;
                (SendOutcome::Done(job.bytes.len()), None)
            }
            Some(Ok(Err(e))) => (
                SendOutcome::Failed(format!("write failed: {e}")),
                Some(End::Lost(e.to_string())),
            ),
            Some(Err(_)) => {
                // What the device did not take is dropped: the next send starts clean.
                let _ = tokio_serial::SerialPort::clear(&*port, tokio_serial::ClearBuffer::Output);
                warn!(line = %self.config.name, timeout = ?timeout, "Serial send not written in time (the device takes no bytes: flow control?); its rest is discarded.");
                (
                    SendOutcome::Failed(format!(
                        "write timed out after {} (the device takes no bytes); the rest was discarded",
                        crate::duration::format(timeout)
                    )),
                    None,
                )
            }
            None => {
                let _ = tokio_serial::SerialPort::clear(&*port, tokio_serial::ClearBuffer::Output);
                self.kernel.update(port);
                (
                    SendOutcome::Failed("the line is stopping".into()),
                    Some(End::Shutdown),
                )
            }
        };
        if !matches!(outcome, SendOutcome::Done(_)) {
            self.counters.sends_refused += 1;
        }
        self.out.answer(job.reply, outcome).await;
        end
    }

    /// Count a framing result, publish a frame.
    async fn frame(&mut self, frame: Result<Frame, FrameError>) {
        let name = &self.config.name;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let counter = match e {
                    FrameError::Overlong => &mut self.counters.overlong,
                    FrameError::InvalidUtf8 => &mut self.counters.invalid_utf8,
                    FrameError::NoMatch => &mut self.counters.no_match,
                };
                *counter += 1;
                if *counter == 1 || counter.is_power_of_two() {
                    warn!(line = %name, error = ?e, count = *counter, "Serial framing error; frame dropped.");
                }
                return;
            }
        };
        let ts = rfc3339(SystemTime::now());
        let (topic, payload) = match frame {
            Frame::Text(line) => (self.topic.clone(), json!({"line": line, "ts": ts})),
            Frame::Bytes(bytes) => (self.topic.clone(), json!({"hex": hex(&bytes), "ts": ts})),
            Frame::Fields(fields) => {
                let mut topic = self.topic.clone();
                let mut doc = serde_json::Map::new();
                let mut usable = true;
                for (k, v) in fields {
                    let placeholder = format!("{{{k}}}");
                    if topic.contains(&placeholder) {
                        usable &= !v.is_empty()
                            && v.len() <= 64
                            && !v.contains(['/', '+', '#', '{', '}', '\0']);
                        topic = topic.replace(&placeholder, &v);
                    }
                    doc.insert(k, v.into());
                }
                // A capture leading the template must not make a `$` topic (`$SYS/...`).
                if !usable || topic.contains(['{', '}']) || topic.starts_with('$') {
                    self.counters.bad_topic += 1;
                    if self.counters.bad_topic.is_power_of_two() {
                        warn!(line = %name, count = self.counters.bad_topic, "Serial frame dropped: a capture in the topic template is missing, not a topic level, or makes a $ topic.");
                    }
                    return;
                }
                doc.insert("ts".into(), ts.into());
                (topic, serde_json::Value::Object(doc))
            }
        };
        // With flow control the device can be paused: wait for room (the kernel tells
        // the device to stop while the port is not read). Without, never wait: the port
        // must be drained, a full queue is an overrun.
        let queued = if self.config.flow_control == FlowControl::None {
            self.out.frame(topic, payload.to_string())
        } else {
            self.out.frame_waiting(topic, payload.to_string()).await
        };
        if queued {
            self.counters.frames += 1;
        } else {
            self.counters.overruns += 1;
            if self.counters.overruns.is_power_of_two() {
                warn!(line = %name, count = self.counters.overruns, "Serial frames dropped: the publish queue is full (overrun).");
            }
        }
    }

    async fn set_online(&mut self, online: bool, why: &str) {
        let changed = self.online != online;
        self.online = online;
        self.reporter.set(if online {
            Health::Ok(format!("{} open", self.config.port.display()))
        } else {
            Health::Degraded(format!("{} not open: {why}", self.config.port.display()))
        });
        if changed {
            debug!(line = %self.config.name, online, reason = %why, "Serial line state changed.");
            self.publish_status().await;
        }
    }

    /// The status document.
    pub fn status(&self) -> String {
        let c = &self.counters;
        json!({
            "line": self.config.name,
            "port": self.config.port.display().to_string(),
            "online": self.online,
            "frames": c.frames,
            "bytes": c.bytes,
            "framing_errors": c.framing_errors(),
            "overlong": c.overlong,
            "invalid_utf8": c.invalid_utf8,
            "no_match": c.no_match,
            "bad_topic": c.bad_topic,
            "overruns": c.overruns,
            "sends": c.sends,
            "sends_refused": c.sends_refused + self.refused.load(Ordering::Relaxed),
            "opens": c.opens,
            "uart": self.kernel.to_json(),
            "last_error": self.last_error,
            "ts": rfc3339(SystemTime::now()),
        })
        .to_string()
    }

    async fn publish_status(&mut self) {
        let doc = self.status();
        self.out
            .status(self.status_topic.clone(), doc.clone())
            .await;
        self.out.sys(super::sys_topic(&self.config.name), doc).await;
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
