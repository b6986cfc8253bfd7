//! The bus scheduler: one task per bus owns the wire, so exactly one request is in
//! flight. It polls each device at its rate (fixed-rate: a late poll does not shift
//! the next ones), runs writes between polls, retries timeouts and damaged replies,
//! and quarantines a device that does not answer: after a failed poll the device is
//! tried again once per backoff period (doubling up to `backoff_max`), with a single
//! attempt, so a dead slave costs the bus at most one timeout per period and the
//! healthy devices keep their rate. The port or connection is reopened when it fails
//! (a serial adapter unplugged and plugged back, a TCP peer restarted).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{self, Value};
use super::config::{ModbusConfig, RegisterKind};
use super::frame::{FrameError, Request, Response};
use super::health::BusHealth;
use super::outputs::Outputs;
use super::plan::{self, Limits, ReadRequest, Span};
use super::points::{PointState, Quality};
use super::transport::{Endpoint, ExchangeError, Link};
use super::write::{WriteAction, WriteJob, WriteOutcome};
use crate::component::{Health, HealthReporter};

/// A device at run time.
pub(super) struct Device {
    pub name: String,
    unit: u8,
    poll: Duration,
    /// `<prefix>/<device>`.
    pub topic: String,
    pub points: Vec<PointState>,
    spans: Vec<Span>,
    requests: Vec<ReadRequest>,
    next_poll: Instant,
    /// Current backoff (zero while healthy).
    backoff: Duration,
    /// Quarantined until then (one attempt, no retries).
    retry_at: Option<Instant>,
    online: Option<bool>,
}

impl Device {
    fn due(&self) -> Instant {
        self.retry_at.unwrap_or(self.next_poll)
    }
}

/// One bus: its wire, devices and counters.
pub(super) struct Bus {
    config: ModbusConfig,
    endpoint: Endpoint,
    pub devices: Vec<Device>,
    health: BusHealth,
    link: Option<Link>,
    next_open: Instant,
    last_exchange: Instant,
    next_status: Instant,
    reporter: HealthReporter,
    pub out: Outputs,
    /// Reloads applied; write jobs made for another generation are refused.
    generation: u64,
}

/// How a read of a device went.
enum PollEnd {
    /// Every request answered (some perhaps with exceptions).
    Answered,
    /// The device did not answer (timeouts, damaged replies) or the wire failed.
    Failed(String),
}

impl Bus {
    pub fn new(config: ModbusConfig, reporter: HealthReporter, out: Outputs) -> Self {
        let now = Instant::now();
        let endpoint = Endpoint::of(&config);
        let devices = devices(&config, now);
        let mut health = BusHealth::new(devices.iter().map(|d| d.name.as_str()));
        if let Endpoint::Rtu { path, .. } = &endpoint {
            health.uart = Some(crate::uart::KernelCounters::new(path));
        }
        Bus {
            endpoint,
            devices,
            health,
            link: None,
            next_open: now,
            last_exchange: now,
            next_status: now + config.status_interval,
            reporter,
            out,
            config,
            generation: 0,
        }
    }

    /// A reload with the same wire: new devices, points and timings, while the port or
    /// connection stays open and the counters of devices that stay are kept. Topics of
    /// points and devices that are gone are cleared (empty retained message).
    async fn apply(&mut self, generation: u64, config: ModbusConfig) {
        self.generation = generation;
        let mut next = devices(&config, Instant::now());
        for d in &mut next {
            if let Some(old) = self
                .devices
                .iter()
                .find(|o| o.name == d.name && o.unit == d.unit)
            {
                d.online = old.online;
                d.backoff = old.backoff;
                d.retry_at = old.retry_at;
                // A reload does not reset the rate limit of a point that stays.
                for p in &mut d.points {
                    if let Some(o) = old.points.iter().find(|o| o.config.name == p.config.name) {
                        p.last_write = o.last_write;
                    }
                }
            }
        }
        let kept: std::collections::HashSet<String> = next
            .iter()
            .flat_map(|d| {
                d.points
                    .iter()
                    .map(|p| p.topic.clone())
                    .chain([format!("{}/status", d.topic)])
            })
            .collect();
        let gone: Vec<String> = self
            .devices
            .iter()
            .flat_map(|d| {
                d.points
                    .iter()
                    .map(|p| p.topic.clone())
                    .chain([format!("{}/status", d.topic)])
            })
            .filter(|t| !kept.contains(t))
            .collect();
        for topic in &gone {
            self.out.publish(topic, String::new(), true).await;
        }
        self.health
            .retain_devices(next.iter().map(|d| d.name.as_str()));
        info!(bus = %self.config.name, devices = next.len(), cleared_topics = gone.len(), "Modbus bus reloaded in place; the port stays open.");
        self.devices = next;
        self.config = config;
    }

    /// Poll, write and report until `shutdown`; then mark every device offline.
    pub async fn run(
        mut self,
        mut writes: mpsc::Receiver<WriteJob>,
        mut updates: watch::Receiver<(u64, ModbusConfig)>,
        shutdown: CancellationToken,
    ) {
        info!(bus = %self.config.name, endpoint = %self.endpoint.label(), devices = self.devices.len(), "Modbus bus started.");
        loop {
            if self.link.is_none() && Instant::now() >= self.next_open {
                self.open().await;
            }
            let mut wake = self.next_status;
            if self.link.is_none() {
                wake = wake.min(self.next_open);
            } else if let Some(d) = self.devices.iter().map(Device::due).min() {
                wake = wake.min(d);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Ok(()) = updates.changed() => {
                    let (generation, config) = updates.borrow_and_update().clone();
                    self.apply(generation, config).await;
                }
                job = writes.recv() => match job {
                    Some(job) => self.write(job).await,
                    None => break,
                },
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= self.next_status {
                        self.publish_status().await;
                        self.next_status = now + self.config.status_interval;
                    }
                    if self.link.is_some() {
                        if let Some(i) = self.next_due(now) {
                            self.poll(i).await;
                        }
                    }
                }
            }
        }
        for i in 0..self.devices.len() {
            self.set_online(i, false, "adapter stopped").await;
        }
        self.publish_status().await;
        info!(bus = %self.config.name, "Modbus bus stopped.");
    }

    fn next_due(&self, now: Instant) -> Option<usize> {
        (0..self.devices.len())
            .filter(|&i| self.devices[i].due() <= now)
            .min_by_key(|&i| self.devices[i].due())
    }

    async fn open(&mut self) {
        match Link::open(
            &self.endpoint,
            self.config.timeout.max(Duration::from_secs(1)),
        )
        .await
        {
            Ok(link) => {
                if let (Some(kernel), Some(port)) = (self.health.uart.as_mut(), link.serial_port())
                {
                    kernel.opened(port);
                }
                self.link = Some(link);
                let now = Instant::now();
                for d in &mut self.devices {
                    d.retry_at = None;
                    d.backoff = Duration::ZERO;
                    d.next_poll = now;
                }
                self.health.connected = true;
                self.health.opens += 1;
                self.health.open_error = None;
                info!(bus = %self.config.name, endpoint = %self.endpoint.label(), "Modbus bus opened.");
            }
            Err(e) => {
                let text = e.to_string();
                if self.health.open_error.as_deref() != Some(&text) {
                    warn!(bus = %self.config.name, endpoint = %self.endpoint.label(), error = %text, retry_in = ?self.config.backoff_min, "Modbus bus cannot be opened; retrying.");
                }
                self.health.open_error = Some(text.clone());
                self.next_open = Instant::now() + self.config.backoff_min;
                for i in 0..self.devices.len() {
                    self.unreachable(i, &format!("bus not open: {text}")).await;
                }
            }
        }
    }

    fn close(&mut self, why: &str) {
        if let Some(kernel) = self.health.uart.as_mut() {
            kernel.closed();
        }
        if self.link.take().is_some() {
            warn!(bus = %self.config.name, endpoint = %self.endpoint.label(), error = %why, "Modbus bus lost; reopening.");
        }
        self.health.connected = false;
        self.next_open = Instant::now() + Duration::from_millis(100).min(self.config.backoff_min);
    }

    /// One exchange with up to `attempts` tries; counts everything it sees.
    async fn exchange(
        &mut self,
        device: usize,
        request: &Request,
        attempts: u32,
    ) -> Result<Response, ExchangeError> {
        let unit = self.devices[device].unit;
        let name = self.devices[device].name.clone();
        let mut last = ExchangeError::Timeout;
        for attempt in 0..attempts {
            let Some(link) = self.link.as_mut() else {
                return Err(ExchangeError::Io(std::io::ErrorKind::NotConnected.into()));
            };
            sleep_until(self.last_exchange + self.config.inter_request_delay).await;
            let started = Instant::now();
            let h = self
                .health
                .devices
                .get_mut(&name)
                .expect("every device has health");
            let result = link
                .exchange(unit, request, self.config.timeout, &mut h.stray_frames)
                .await;
            let elapsed = started.elapsed();
            self.last_exchange = Instant::now();
            self.health.busy(elapsed);
            let h = self
                .health
                .devices
                .get_mut(&name)
                .expect("every device has health");
            h.requests += 1;
            match result {
                Ok(r) => {
                    h.latency(elapsed);
                    return Ok(r);
                }
                Err(ExchangeError::Timeout) => {
                    h.timeouts += 1;
                    debug!(bus = %self.config.name, device = %name, attempt, "Modbus request timed out.");
                    last = ExchangeError::Timeout;
                }
                Err(ExchangeError::Frame(FrameError::Crc)) => {
                    h.crc_errors += 1;
                    debug!(bus = %self.config.name, device = %name, attempt, "Modbus reply with a CRC error.");
                    last = ExchangeError::Frame(FrameError::Crc);
                }
                Err(ExchangeError::Frame(FrameError::Exception(code))) => {
                    h.latency(elapsed);
                    *h.exceptions.entry(code).or_default() += 1;
                    return Err(ExchangeError::Frame(FrameError::Exception(code)));
                }
                Err(ExchangeError::Frame(e)) => {
                    debug!(bus = %self.config.name, device = %name, attempt, error = %e, "Modbus reply unusable.");
                    last = ExchangeError::Frame(e);
                }
                Err(ExchangeError::Io(e)) => {
                    self.close(&e.to_string());
                    return Err(ExchangeError::Io(e));
                }
            }
        }
        Err(last)
    }

    async fn poll(&mut self, i: usize) {
        let now = Instant::now();
        let quarantined = self.devices[i].retry_at.is_some();
        let attempts = if quarantined {
            1
        } else {
            1 + self.config.retries
        };
        let mut r = 0;
        let mut end = PollEnd::Answered;
        while r < self.devices[i].requests.len() {
            let q = self.devices[i].requests[r].clone();
            let request = Request::Read {
                kind: q.kind,
                start: q.start,
                count: q.count,
            };
            match self.exchange(i, &request, attempts).await {
                Ok(response) => {
                    let (regs, bits) = match response {
                        Response::Registers(regs) => (regs, Vec::new()),
                        Response::Bits(bits) => (Vec::new(), bits),
                        Response::Written => (Vec::new(), Vec::new()),
                    };
                    for &p in &q.points {
                        let value = self.devices[i].points[p].decode(q.start, &regs, &bits);
                        let quality = if value.is_some() {
                            Quality::Good
                        } else {
                            Quality::Error
                        };
                        self.report(i, p, quality, value).await;
                    }
                }
                // A Modbus TCP gateway saying the device behind it is unreachable.
                Err(e @ ExchangeError::Frame(FrameError::Exception(10 | 11))) => {
                    end = PollEnd::Failed(e.to_string());
                    break;
                }
                Err(ExchangeError::Frame(FrameError::Exception(2))) if q.points.len() > 1 => {
                    let d = &mut self.devices[i];
                    plan::split(&mut d.requests, r, &d.spans);
                    info!(bus = %self.config.name, device = %d.name, start = q.start, count = q.count, "Device refused a joined read (illegal data address): reading its points in smaller requests from now on.");
                    continue;
                }
                Err(ExchangeError::Frame(FrameError::Exception(code))) => {
                    let why = FrameError::Exception(code).to_string();
                    // Said once per refusal, not once per poll.
                    let first = q
                        .points
                        .first()
                        .map(|&p| self.devices[i].points[p].quality());
                    if first != Some(Some(Quality::Error)) {
                        warn!(bus = %self.config.name, device = %self.devices[i].name, kind = q.kind.name(), start = q.start, count = q.count, error = %why, "Device refused a read; its points report quality \"error\".");
                    }
                    self.health
                        .devices
                        .get_mut(&self.devices[i].name)
                        .expect("health")
                        .last_error = Some(why);
                    for &p in &q.points {
                        let value = self.devices[i].points[p].value.clone();
                        self.report(i, p, Quality::Error, value).await;
                    }
                }
                Err(e) => {
                    end = PollEnd::Failed(e.to_string());
                    break;
                }
            }
            r += 1;
        }
        let d = &mut self.devices[i];
        match end {
            PollEnd::Answered => {
                d.retry_at = None;
                d.backoff = Duration::ZERO;
                // Fixed rate: a poll delayed by another device's timeout is caught up
                // back to back; only a long stall (bus reopened) restarts the schedule.
                d.next_poll += d.poll;
                if d.next_poll + (d.poll * 5).max(Duration::from_secs(1)) < now {
                    d.next_poll = now;
                }
                self.health.devices.get_mut(&d.name).expect("health").polls += 1;
                self.set_online(i, true, "answered").await;
            }
            PollEnd::Failed(why) => self.device_failed(i, &why).await,
        }
    }

    /// The device did not answer: stale values, offline, and the next backoff step.
    async fn device_failed(&mut self, i: usize, why: &str) {
        let d = &mut self.devices[i];
        d.backoff = if d.backoff.is_zero() {
            self.config.backoff_min
        } else {
            (d.backoff * 2).min(self.config.backoff_max)
        };
        d.retry_at = Some(Instant::now() + d.backoff);
        d.next_poll = Instant::now() + d.poll;
        self.unreachable(i, why).await;
    }

    /// Values stale, device offline, `why` its last error.
    async fn unreachable(&mut self, i: usize, why: &str) {
        let d = &self.devices[i];
        self.health
            .devices
            .get_mut(&d.name)
            .expect("health")
            .last_error = Some(why.to_string());
        for p in 0..self.devices[i].points.len() {
            let value = self.devices[i].points[p].value.clone();
            self.report(i, p, Quality::Stale, value).await;
        }
        self.set_online(i, false, why).await;
    }

    /// Publish point `p` of device `i` if its report rule says so.
    async fn report(&mut self, i: usize, p: usize, quality: Quality, value: Option<Value>) {
        let format = self.config.payload;
        let point = &mut self.devices[i].points[p];
        if quality == Quality::Good {
            point.value = value.clone();
        }
        if !point.take_report(quality, value.as_ref(), Instant::now()) {
            return;
        }
        let topic = point.topic.clone();
        let payload = point.payload(format, quality, value.as_ref());
        self.out.publish(&topic, payload, true).await;
    }

    async fn set_online(&mut self, i: usize, online: bool, why: &str) {
        let d = &mut self.devices[i];
        if d.online == Some(online) {
            return;
        }
        d.online = Some(online);
        let name = d.name.clone();
        let topic = format!("{}/status", d.topic);
        self.health.devices.get_mut(&name).expect("health").online = Some(online);
        if online {
            info!(bus = %self.config.name, device = %name, "Modbus device online.");
        } else {
            warn!(bus = %self.config.name, device = %name, reason = %why, retry_in = ?self.devices[i].backoff, "Modbus device offline.");
        }
        let text = if online { "online" } else { "offline" };
        self.out.publish(&topic, text.to_string(), true).await;
        let offline: Vec<&str> = self
            .devices
            .iter()
            .filter(|d| d.online == Some(false))
            .map(|d| d.name.as_str())
            .collect();
        self.reporter.set(if offline.is_empty() {
            Health::Ok(format!("{} devices online", self.devices.len()))
        } else {
            Health::Degraded(format!("offline: {}", offline.join(", ")))
        });
    }

    async fn publish_status(&mut self) {
        self.health.roll(Instant::now());
        if let (Some(kernel), Some(port)) = (
            self.health.uart.as_mut(),
            self.link.as_ref().and_then(Link::serial_port),
        ) {
            kernel.update(port);
        }
        let doc = self.health.to_json(&self.config.name);
        let topic = format!("{}/status", self.config.topic_prefix);
        self.out.publish(&topic, doc.clone(), true).await;
        self.out.sys(super::sys_topic(&self.config.name), doc).await;
    }

    /// Run one write job: refuse if expired, write once (a write is not retried: a
    /// timed-out write may have happened), read the point back, answer.
    async fn write(&mut self, job: WriteJob) {
        let outcome = self.execute(&job).await;
        self.out.answer(job.reply, outcome).await;
    }

    async fn execute(&mut self, job: &WriteJob) -> WriteOutcome {
        if job.generation != self.generation {
            return WriteOutcome::Refused(
                "the configuration was reloaded while the command waited: send it again".into(),
            );
        }
        if job.deadline.is_some_and(|d| Instant::now() > d) {
            return WriteOutcome::Refused(
                "expired: the command's message expiry passed before it could run".into(),
            );
        }
        let (i, p) = (job.device, job.point);
        let now = Instant::now();
        let point = &self.devices[i].points[p];
        if let Some(next) = point.last_write.map(|at| at + point.config.write_interval) {
            if now < next {
                return WriteOutcome::Refused(format!(
                    "rate limited: one write per {:?}; next in {} ms",
                    point.config.write_interval,
                    (next - now).as_millis()
                ));
            }
        }
        if self.link.is_none() {
            return WriteOutcome::Failed("bus not open".into());
        }
        let request = match job.action.clone() {
            WriteAction::Send(request) => request,
            WriteAction::SetBit {
                address,
                bit,
                value,
                multiple,
            } => {
                let read = Request::Read {
                    kind: RegisterKind::Holding,
                    start: address,
                    count: 1,
                };
                let current = match self.exchange(i, &read, 1 + self.config.retries).await {
                    Ok(Response::Registers(regs)) if regs.len() == 1 => regs[0],
                    Ok(_) => return WriteOutcome::Failed("unexpected reply to the read".into()),
                    Err(e) => {
                        return WriteOutcome::Failed(format!(
                            "not written: reading the register first failed: {e}"
                        ))
                    }
                };
                let value = codec::with_bit(current, bit, value);
                if multiple {
                    Request::WriteRegisters {
                        address,
                        values: vec![value],
                    }
                } else {
                    Request::WriteRegister { address, value }
                }
            }
        };
        // The write is sent: it counts against the rate limit whatever the device answers.
        self.devices[i].points[p].last_write = Some(Instant::now());
        if let Err(e) = self.exchange(i, &request, 1).await {
            return WriteOutcome::Failed(e.to_string());
        }
        let point = &self.devices[i].points[p];
        let read = Request::Read {
            kind: point.config.kind,
            start: point.config.address as u16,
            count: point.value_type.registers(),
        };
        let attempts = 1 + self.config.retries;
        match self.exchange(i, &read, attempts).await {
            Ok(Response::Registers(regs)) => {
                let value = self.devices[i].points[p].decode(read_start(&read), &regs, &[]);
                self.report(i, p, Quality::Good, value.clone()).await;
                WriteOutcome::Done(value)
            }
            Ok(Response::Bits(bits)) => {
                let value = self.devices[i].points[p].decode(read_start(&read), &[], &bits);
                self.report(i, p, Quality::Good, value.clone()).await;
                WriteOutcome::Done(value)
            }
            Ok(Response::Written) => WriteOutcome::Done(None),
            Err(e) => WriteOutcome::Failed(format!("written, but the read-back failed: {e}")),
        }
    }
}

/// The run-time devices of `config`, all due at `now`.
fn devices(config: &ModbusConfig, now: Instant) -> Vec<Device> {
    let limits = Limits {
        max_gap: config.max_gap,
        max_registers: config.max_registers,
        max_bits: config.max_bits,
    };
    config
        .device
        .iter()
        .map(|d| {
            let topic = format!("{}/{}", config.topic_prefix, d.name);
            let points: Vec<PointState> = d
                .point
                .iter()
                .map(|p| PointState::new(p.clone(), &topic, d.poll))
                .collect();
            let spans: Vec<Span> = points.iter().map(PointState::span).collect();
            Device {
                name: d.name.clone(),
                unit: d.unit as u8,
                poll: d.poll,
                topic,
                requests: plan::plan(&spans, limits),
                spans,
                points,
                next_poll: now,
                backoff: Duration::ZERO,
                retry_at: None,
                online: None,
            }
        })
        .collect()
}

fn read_start(r: &Request) -> u16 {
    match r {
        Request::Read { start, .. } => *start,
        _ => 0,
    }
}
