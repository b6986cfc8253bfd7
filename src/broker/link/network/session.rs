//! Phase 3 of a network connection: the session loop. It reads the socket and hands
//! each read's packets to the router in one message, writes every batch the router
//! queued in one write and flush, runs the keep alive and the idle release of
//! buffers, applies revalidation checks, and at the end tells the router how the
//! connection ended (which decides the will). It must never block on the router
//! while holding a decoded batch longer than one send, nor panic on client input.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use super::io::{
    discard_until_eof, write_last, write_now, IDLE_RELEASE, MAX_READ, READ_BUFFER, SHRINK_ABOVE,
    WRITE_STEP,
};
use super::protocol::{next_is_qos_publish, ConnState, End};
use crate::auth::Identity;
use crate::broker::codec::{self, v5};
use crate::broker::link::{pool, ConnId, OutRx, Outgoing, RouterMsg};
use crate::broker::reason::ReasonCode;
use crate::broker::revalidate::{RevalidateCheck, SessionCredentials};
use crate::broker::shared::Shared;
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};

pub(super) fn disconnect_packet(code: ReasonCode, reason: &str) -> v5::Packet {
    let reason_code = code.disconnect_reason_code();
    v5::Packet::Disconnect(v5::Disconnect {
        reason_code,
        properties: Some(v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason.to_string()),
            user_properties: vec![],
            server_reference: None,
        }),
    })
}

/// An admitted connection: what phase 3 needs and nothing of the CONNECT phase.
pub(super) struct Session {
    pub(super) conn: ConnId,
    pub(super) state: ConnState,
    /// Bytes not yet decoded (at first: whatever followed the CONNECT).
    pub(super) rbuf: BytesMut,
    /// Packets the router queued for this connection.
    pub(super) out_rx: OutRx,
    /// Granted keep alive in seconds (0: none).
    pub(super) keep_alive: u16,
    /// Reload notices: a check the session's credentials must still pass.
    pub(super) revalidate: tokio::sync::watch::Receiver<Option<RevalidateCheck>>,
    /// Listener the connection came in on (for the revalidation checks, which see the
    /// session's credentials built from this, `state` and `peer_certificates` when a
    /// check comes: not kept per connection as a second copy of the identity).
    pub(super) listener: Arc<str>,
    /// Verified client certificate chain, leaf first, if the client presented one.
    pub(super) peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The client's Maximum Packet Size (v5), which bounds the revalidation DISCONNECT.
    pub(super) client_max_packet: usize,
    /// What the router handed and is not encoded yet: items from `carry_at` on. A
    /// batch is encoded in steps of `WRITE_STEP` bytes, each written before the next,
    /// so the write buffer stays small however large the batch.
    pub(super) carry: Vec<Outgoing>,
    pub(super) carry_at: usize,
}

/// A re-authentication succeeded: the session now ends at the new token's `exp`
/// (earlier or later than the old one), and decoding resumes.
fn token_renewed(left: Duration, pace: &mut Pace) {
    let now = Instant::now();
    pace.token_expires_at = Some(now + left);
    pace.keepalive_at = pace.clamp(now + pace.keepalive.unwrap_or(FAR));
    pace.parse = true;
}

/// Wait for the end of a `publish_rate` throttle (never without one).
async fn throttle_wait(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A deadline that never comes in practice: the timer's target without keep alive.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The session loop's timers and buffer sizing, apart from the session itself.
struct Pace {
    /// 1.5 × the granted keep alive; `None` without keep alive.
    keepalive: Option<Duration>,
    /// When the keep alive runs out (`FAR` ahead without keep alive). One timer serves
    /// two deadlines: the idle release of the buffers (first) and this one.
    keepalive_at: Instant,
    /// Whether the buffers may hold memory since the last idle release.
    buffers_held: bool,
    /// Size of the next read: grows for a busy publisher, back down when idle.
    read_hint: usize,
    /// Capacity of the next router batch (like the last one).
    items_hint: usize,
    /// Bytes in `rbuf` wait to be decoded.
    parse: bool,
    /// Whether the broker ends the connection with its own DISCONNECT while the client
    /// may still be sending: then the socket is drained before it is closed.
    drain: bool,
    /// Whether reload notices can still come.
    revalidate_open: bool,
    /// When the session's JWT expires (the timer's deadline is never later).
    token_expires_at: Option<Instant>,
}

impl Pace {
    /// `at`, or the token's expiry when that comes first.
    fn clamp(&self, at: Instant) -> Instant {
        self.token_expires_at.map_or(at, |t| at.min(t))
    }
}

impl Session {
    /// Phase 3: serve the session until it ends, then close the connection and tell
    /// the router (which fires the will when it should).
    pub(super) async fn serve<S>(&mut self, stream: &mut S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Fields are used in place: moving them out of `self` would store them twice in
        // this future.
        let shared = self.state.shared.clone();
        let keepalive =
            (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500));
        let token_expires_at = self
            .state
            .identity
            .jwt
            .as_ref()
            .map(|grant| Instant::now() + grant.remaining());
        let mut pace = Pace {
            keepalive,
            keepalive_at: (Instant::now() + keepalive.unwrap_or(FAR))
                .min(token_expires_at.unwrap_or(Instant::now() + FAR)),
            buffers_held: true,
            read_hint: READ_BUFFER,
            items_hint: 1,
            // Packets sent right behind the CONNECT are already in `rbuf`.
            parse: !self.rbuf.is_empty(),
            drain: false,
            revalidate_open: true,
            token_expires_at,
        };
        let sleep = tokio::time::sleep_until(
            (Instant::now() + IDLE_RELEASE.min(keepalive.unwrap_or(FAR))).min(pace.keepalive_at),
        );
        tokio::pin!(sleep);
        let end = loop {
            if pace.parse {
                if let Some(end) = self.parse(&shared, &mut pace).await {
                    break end;
                }
                if self.reauth_pending() {
                    // An AUTH stopped the decoding: its token is verified before what
                    // follows. Boxed: the rare verification adds nothing to every
                    // session's future.
                    match Box::pin(self.reauthenticate(&shared)).await {
                        None => {}
                        Some(Ok(left)) => {
                            token_renewed(left, &mut pace);
                            sleep
                                .as_mut()
                                .reset((Instant::now() + IDLE_RELEASE).min(pace.keepalive_at));
                        }
                        Some(Err(end)) => {
                            pace.drain = true;
                            break end;
                        }
                    }
                }
            }
            if !self.state.wbuf.is_empty()
                && !write_now(stream, &shared, &mut self.state.wbuf).await
            {
                debug!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, "Connection write failed or timed out.");
                break End::Abnormal;
            }
            if self.state.wbuf.capacity() > SHRINK_ABOVE {
                self.state.wbuf = BytesMut::new();
            }
            if self.carry_at < self.carry.len() {
                // The rest of a large batch, one step per write.
                if self.encode_carry() {
                    pace.drain = true;
                    break End::Server;
                }
                continue;
            }

            // v3.1.1 has no Receive Maximum: at the limit, the socket is simply not read
            // until the router has acknowledged enough (back-pressure, not disconnection).
            let stalled = self.state.inbound_full() && next_is_qos_publish(&self.rbuf);
            // Room for one read of `read_hint` bytes: a busy publisher's reads grow so one
            // read (and one router message) carries many packets. After an idle release
            // the buffer is empty and the first read is small (BytesMut takes 64 bytes).
            let read_hint = pace.read_hint;
            if self.rbuf.capacity() > 0 && self.rbuf.capacity() - self.rbuf.len() < read_hint / 2 {
                self.rbuf.reserve(read_hint);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            // `publish_rate` throttle: the socket is not read until the bucket refills.
            let throttled = self.state.throttled_until;
            let paused = stalled || throttled.is_some();
            let ended = tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => Some(self.shutting_down()),
                batch = self.out_rx.recv() => self.outgoing(batch, stalled, &mut pace, sleep.as_mut()),
                read = stream.read_buf(&mut self.rbuf), if !paused => {
                    self.received(read, spare, &shared, &mut pace, sleep.as_mut())
                }
                changed = self.revalidate.changed(), if pace.revalidate_open => {
                    self.revalidated(changed.is_ok(), &mut pace)
                }
                _ = &mut sleep, if !paused => self.timer(&mut pace, sleep.as_mut()),
                _ = throttle_wait(throttled), if throttled.is_some() => {
                    self.throttle_over(&mut pace, sleep.as_mut())
                }
            };
            if let Some(end) = ended {
                break end;
            }
        };
        self.finish(stream, &shared, end, pace.drain).await;
    }

    /// Decode what `rbuf` holds and hand it to the router in one message; `Some` when
    /// the connection ends (DISCONNECT, protocol violation, router gone).
    async fn parse(&mut self, shared: &Shared, pace: &mut Pace) -> Option<End> {
        pace.parse = false;
        let mut items = pool::INBOUND.take(pace.items_hint);
        let outcome = self.state.process(&mut self.rbuf, &mut items);
        pace.items_hint = items.len().clamp(1, 256);
        if self.state.publishes > 0 {
            let n = std::mem::take(&mut self.state.publishes);
            self.state
                .traffic
                .messages_received
                .fetch_add(n, Ordering::Relaxed);
        }
        if self.state.throttled_until.is_some() {
            self.throttled();
        }
        if items.is_empty() {
            pool::INBOUND.give(items);
        } else if shared
            .router_tx
            .send(RouterMsg::Inbound {
                conn: self.conn,
                items,
            })
            .await
            .is_err()
        {
            return Some(End::Server);
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * pace.read_hint {
            self.rbuf = BytesMut::with_capacity(pace.read_hint);
        }
        match outcome {
            Ok(end) => end,
            Err(v)
                if matches!(
                    v.code,
                    ReasonCode::MessageRateTooHigh | ReasonCode::QoSNotSupported
                ) =>
            {
                if v.code == ReasonCode::MessageRateTooHigh {
                    self.state
                        .traffic
                        .publish_rate_disconnects
                        .fetch_add(1, Ordering::Relaxed);
                }
                if log_limit::event(Kind::RateLimited) {
                    warn!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, listener = %self.listener, code = v.code.as_u8(), reason = %LogStr(&v.reason), "Client disconnected by the listener's rate controls.");
                }
                if self.state.v5() {
                    self.state.encode(&disconnect_packet(v.code, &v.reason));
                }
                pace.drain = true;
                Some(End::Abnormal)
            }
            Err(v) => {
                if log_limit::event(Kind::ProtocolViolation) {
                    warn!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, code = v.code.as_u8(), reason = %LogStr(&v.reason), "Client disconnected: protocol violation.");
                }
                if self.state.v5() {
                    self.state.encode(&disconnect_packet(v.code, &v.reason));
                }
                pace.drain = true;
                Some(End::Abnormal)
            }
        }
    }

    /// Whether an AUTH's token waits to be verified.
    fn reauth_pending(&self) -> bool {
        self.state
            .reauth
            .as_ref()
            .is_some_and(|r| r.pending.is_some())
    }

    /// `process` stopped before a PUBLISH beyond `publish_rate`: counted and logged
    /// (rate-limited); the loop stops reading until `throttled_until`.
    fn throttled(&mut self) {
        self.state
            .traffic
            .publish_throttled
            .fetch_add(1, Ordering::Relaxed);
        if log_limit::event(Kind::RateLimited) {
            info!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, listener = %self.listener, "Client throttled: PUBLISH rate above the listener's publish_rate; its socket is not read until the rate allows.");
        }
    }

    /// The throttle ran out: decode again; the client gets a full keep alive period
    /// (the pause was the broker's).
    fn throttle_over(&mut self, pace: &mut Pace, sleep: Pin<&mut Sleep>) -> Option<End> {
        self.state.throttled_until = None;
        if let Some(k) = pace.keepalive {
            pace.keepalive_at = Instant::now() + k;
        }
        sleep.reset((Instant::now() + IDLE_RELEASE).min(pace.keepalive_at));
        pace.parse = true;
        None
    }

    /// The broker is shutting down: v5 clients are told so.
    fn shutting_down(&mut self) -> End {
        // What the router already handed this connection (e.g. a component's last flush
        // during the drain) is written before the DISCONNECT.
        let mut close = self
            .state
            .encode_from(&mut self.carry, &mut self.carry_at, usize::MAX);
        while !close {
            let Ok(batch) = self.out_rx.try_recv() else {
                break;
            };
            self.out_rx.backlog().taken(&batch);
            close = self.state.encode_batch(batch);
        }
        if self.state.v5() {
            self.state.encode(&disconnect_packet(
                ReasonCode::ServerShuttingDown,
                "server shutting down",
            ));
        }
        End::Server
    }

    /// Encode what the router queued (this batch and any behind it); `Some` when the
    /// router closes the connection or is gone.
    fn outgoing(
        &mut self,
        batch: Option<Vec<Outgoing>>,
        stalled: bool,
        pace: &mut Pace,
        sleep: Pin<&mut Sleep>,
    ) -> Option<End> {
        let Some(batch) = batch else {
            return Some(End::Server);
        };
        self.out_rx.backlog().taken(&batch);
        // The carry is empty here: the loop encodes it to the end before it waits.
        pool::OUTGOING.give(std::mem::replace(&mut self.carry, batch));
        self.carry_at = 0;
        if self.encode_carry() {
            pace.drain = true;
            return Some(End::Server);
        }
        pace.buffers_held = true;
        if stalled && !self.state.inbound_full() {
            // The stall was ours: the client gets a full keep alive period again.
            if let Some(k) = pace.keepalive {
                pace.keepalive_at = pace.clamp(Instant::now() + k);
                sleep.reset(pace.keepalive_at);
            }
            pace.parse = true;
        }
        None
    }

    /// Encode the carry, then what the router queued behind it, up to `WRITE_STEP`
    /// bytes; true when the router closes the connection.
    fn encode_carry(&mut self) -> bool {
        loop {
            if self
                .state
                .encode_from(&mut self.carry, &mut self.carry_at, WRITE_STEP)
            {
                return true;
            }
            if self.carry_at < self.carry.len() || self.state.wbuf.len() >= WRITE_STEP {
                return false;
            }
            match self.out_rx.try_recv() {
                Ok(batch) => {
                    self.out_rx.backlog().taken(&batch);
                    pool::OUTGOING.give(std::mem::replace(&mut self.carry, batch));
                    self.carry_at = 0;
                }
                Err(_) => {
                    pool::OUTGOING.give(std::mem::take(&mut self.carry));
                    self.carry_at = 0;
                    return false;
                }
            }
        }
    }

    /// A socket read finished: count it, restart the timers, size the next read.
    fn received(
        &mut self,
        read: std::io::Result<usize>,
        spare: usize,
        shared: &Shared,
        pace: &mut Pace,
        sleep: Pin<&mut Sleep>,
    ) -> Option<End> {
        let client_id = LogStr(&self.state.identity.client_id);
        let peer = self.state.peer;
        let n = match read {
            Ok(0) => {
                debug!(%client_id, %peer, "Connection closed by client without DISCONNECT.");
                return Some(End::Abnormal);
            }
            Err(e) => {
                debug!(%client_id, %peer, error = %e, "Connection read failed.");
                return Some(End::Abnormal);
            }
            Ok(n) => n,
        };
        shared
            .stats
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        if let Some(k) = pace.keepalive {
            pace.keepalive_at = pace.clamp(now + k);
        }
        pace.buffers_held = true;
        sleep.reset((now + IDLE_RELEASE).min(pace.keepalive_at));
        if n >= spare {
            pace.read_hint = (pace.read_hint * 2).min(MAX_READ);
        } else if n < pace.read_hint / 4 {
            pace.read_hint = (pace.read_hint / 2).max(READ_BUFFER);
        }
        pace.parse = true;
        None
    }

    /// A reload published a check (or the broker dropped the channel: `open` false);
    /// `Some` when the session's credentials no longer pass it.
    fn revalidated(&mut self, open: bool, pace: &mut Pace) -> Option<End> {
        if !open {
            pace.revalidate_open = false;
            return None;
        }
        let check = self.revalidate.borrow_and_update().clone()?;
        let credentials = SessionCredentials {
            identity: Identity::clone(&self.state.identity),
            listener: self.listener.clone(),
            peer: self.state.peer,
            peer_certificates: self.peer_certificates.clone(),
        };
        let verdict = check(&credentials)?;
        let identity = &self.state.identity;
        Event::new(AuditKind::SessionRevoked)
            .identity(identity)
            .listener(&self.listener)
            .peer(Some(self.state.peer))
            .code(verdict.reason_code())
            .reason(verdict.reason())
            .emit();
        if self.state.v5() {
            codec::encode_v5_disconnect(
                verdict.reason_code(),
                verdict.reason(),
                self.client_max_packet,
                &mut self.state.wbuf,
            );
        }
        pace.drain = true;
        Some(End::Revoked)
    }

    /// The timer fired: release idle buffers, or end the session when the keep alive
    /// ran out.
    fn timer(&mut self, pace: &mut Pace, sleep: Pin<&mut Sleep>) -> Option<End> {
        if pace.token_expires_at.is_some_and(|at| Instant::now() >= at) {
            return Some(self.token_expired(pace));
        }
        if Instant::now() < pace.keepalive_at {
            // Quiet for IDLE_RELEASE: give the buffers back until traffic returns.
            if pace.buffers_held {
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                self.state.release_idle_memory();
                pace.buffers_held = false;
                pace.read_hint = READ_BUFFER;
            }
            sleep.reset(pace.keepalive_at);
            return None;
        }
        if pace.keepalive.is_none() {
            // No keep alive: the far deadline passed; wait another one.
            pace.keepalive_at = pace.clamp(Instant::now() + FAR);
            sleep.reset(pace.keepalive_at);
            return None;
        }
        if log_limit::event(Kind::Timeout) {
            info!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, keep_alive = self.keep_alive, "Client disconnected: keep alive timeout.");
        }
        if self.state.v5() {
            self.state.encode(&disconnect_packet(
                ReasonCode::KeepAliveTimeout,
                "keep alive timeout",
            ));
        }
        pace.drain = true;
        Some(End::Abnormal)
    }

    /// The JWT's `exp` passed: v5 DISCONNECT 0xA0 (Maximum connect time) with a reason
    /// string, 3.1.1 a close. No will: the credentials ended, like a revocation.
    fn token_expired(&mut self, pace: &mut Pace) -> End {
        Event::new(AuditKind::SessionRevoked)
            .identity(&self.state.identity)
            .peer(Some(self.state.peer))
            .reason("token expired")
            .emit();
        if self.state.v5() {
            self.state.encode(&disconnect_packet(
                ReasonCode::MaximumConnectTime,
                "token expired",
            ));
        }
        pace.drain = true;
        End::Revoked
    }

    /// Write the last words, close, tell the router how the connection ended, then
    /// drain what the client still sends when the broker spoke last.
    async fn finish<S>(&mut self, stream: &mut S, shared: &Shared, end: End, drain: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The last words (DISCONNECT) get a short limit so shutdown drains promptly.
        write_last(stream, shared, &mut self.state.wbuf).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        let (send_will, session_expiry) = match end {
            End::Disconnect {
                send_will,
                session_expiry,
            } => (send_will, session_expiry),
            End::Abnormal => (true, None),
            End::Server | End::Revoked => (false, None),
        };
        let _ = shared
            .router_tx
            .send(RouterMsg::Closed {
                conn: self.conn,
                send_will,
                session_expiry,
            })
            .await;
        // The router is told first: a takeover or the will does not wait for the drain.
        if drain && !shared.shutdown.is_cancelled() {
            discard_until_eof(stream, &mut self.rbuf).await;
        }
        debug!(client_id = %LogStr(&self.state.identity.client_id), peer = %self.state.peer, "Connection task finished.");
    }
}
