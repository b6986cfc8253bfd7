//! Phase 3 of a network connection: the session loop. It reads the socket and hands
//! each read's packets to the router in one message, writes every batch the router
//! queued in one write and flush, runs the keep alive and the idle release of
//! buffers, applies revalidation checks, and at the end tells the router how the
//! connection ended (which decides the will). It must never block on the router
//! while holding a decoded batch longer than one send, nor panic on client input.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::io::{
    discard_until_eof, write_last, write_now, IDLE_RELEASE, MAX_READ, READ_BUFFER, SHRINK_ABOVE,
};
use super::protocol::{next_is_qos_publish, ConnState, End};
use crate::broker::codec::{self, v5};
use crate::broker::link::{Backlog, ConnId, Outgoing, RouterMsg};
use crate::broker::revalidate::{RevalidateCheck, SessionCredentials};
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};

fn disconnect_packet(code: u8, reason: &str) -> v5::Packet {
    let reason_code = v5::DisconnectReasonCode::try_from(code)
        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError);
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
    pub(super) out_rx: mpsc::UnboundedReceiver<Vec<Outgoing>>,
    /// Outgoing items handed over and not yet taken (the router's accounting).
    pub(super) backlog: Arc<Backlog>,
    /// Granted keep alive in seconds (0: none).
    pub(super) keep_alive: u16,
    /// Reload notices: a check the session's credentials must still pass.
    pub(super) revalidate: tokio::sync::watch::Receiver<Option<RevalidateCheck>>,
    /// What the session was admitted with, as a revalidation check sees it.
    pub(super) credentials: SessionCredentials,
    /// The client's Maximum Packet Size (v5), which bounds the revalidation DISCONNECT.
    pub(super) client_max_packet: usize,
}

impl Session {
    /// Phase 3: serve the session until it ends, then close the connection and tell
    /// the router (which fires the will when it should).
    pub(super) async fn serve<S>(mut self, stream: &mut S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Fields are used in place: moving them out of `self` would store them twice in
        // this future.
        let shared = self.state.shared.clone();
        let conn = self.conn;
        let peer = self.state.peer;
        let v5mode = self.state.v5();
        let keep_alive = self.keep_alive;
        let mut revalidate_open = true;

        let keepalive =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let far = Duration::from_secs(365 * 24 * 3600);
        // One timer serves two deadlines: the idle release of the buffers (first) and
        // the keep alive timeout.
        let mut keepalive_at = Instant::now() + keepalive.unwrap_or(far);
        let mut buffers_held = true;
        let sleep = tokio::time::sleep(IDLE_RELEASE.min(keepalive.unwrap_or(far)));
        tokio::pin!(sleep);

        let mut read_hint = READ_BUFFER;
        // Capacity of the next router batch (like the last one).
        let mut items_hint = 1;
        // Packets sent right behind the CONNECT are already in `rbuf`.
        let mut parse = !self.rbuf.is_empty();
        // Whether the broker ends the connection with its own DISCONNECT while the client
        // may still be sending: then the socket is drained before it is closed.
        let mut drain = false;
        let end = loop {
            if parse {
                parse = false;
                let mut items = Vec::with_capacity(items_hint);
                let outcome = self.state.process(&mut self.rbuf, &mut items);
                items_hint = items.len().clamp(1, 256);
                if !items.is_empty()
                    && shared
                        .router_tx
                        .send(RouterMsg::Inbound { conn, items })
                        .await
                        .is_err()
                {
                    break End::Server;
                }
                if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * read_hint {
                    self.rbuf = BytesMut::with_capacity(read_hint);
                }
                match outcome {
                    Ok(None) => {}
                    Ok(Some(end)) => break end,
                    Err(v) => {
                        if log_limit::event(Kind::ProtocolViolation) {
                            warn!(client_id = %LogStr(&self.state.identity.client_id), %peer, code = v.code, reason = %LogStr(&v.reason), "Client disconnected: protocol violation.");
                        }
                        if v5mode {
                            self.state.encode(&disconnect_packet(v.code, &v.reason));
                        }
                        drain = true;
                        break End::Abnormal;
                    }
                }
            }
            if !self.state.wbuf.is_empty()
                && !write_now(stream, &shared, &mut self.state.wbuf).await
            {
                debug!(client_id = %LogStr(&self.state.identity.client_id), %peer, "Connection write failed or timed out.");
                break End::Abnormal;
            }
            if self.state.wbuf.capacity() > SHRINK_ABOVE {
                self.state.wbuf = BytesMut::new();
            }

            // v3.1.1 has no Receive Maximum: at the limit, the socket is simply not read
            // until the router has acknowledged enough (back-pressure, not disconnection).
            let stalled = self.state.inbound_full() && next_is_qos_publish(&self.rbuf);
            // Room for one read of `read_hint` bytes: a busy publisher's reads grow so one
            // read (and one router message) carries many packets. After an idle release
            // the buffer is empty and the first read is small (BytesMut takes 64 bytes).
            if self.rbuf.capacity() > 0 && self.rbuf.capacity() - self.rbuf.len() < read_hint / 2 {
                self.rbuf.reserve(read_hint);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => {
                    if v5mode {
                        self.state.encode(&disconnect_packet(0x8B, "server shutting down"));
                    }
                    break End::Server;
                }
                batch = self.out_rx.recv() => {
                    let Some(batch) = batch else { break End::Server };
                    self.backlog.taken(&batch);
                    let mut close = self.state.encode_batch(batch);
                    while !close {
                        match self.out_rx.try_recv() {
                            Ok(batch) => {
                                self.backlog.taken(&batch);
                                close = self.state.encode_batch(batch);
                            }
                            Err(_) => break,
                        }
                    }
                    if close {
                        drain = true;
                        break End::Server;
                    }
                    buffers_held = true;
                    if stalled && !self.state.inbound_full() {
                        // The stall was ours: the client gets a full keep alive period again.
                        if let Some(k) = keepalive {
                            keepalive_at = Instant::now() + k;
                            sleep.as_mut().reset(keepalive_at);
                        }
                        parse = true;
                    }
                }
                read = stream.read_buf(&mut self.rbuf), if !stalled => {
                    match read {
                        Ok(0) => {
                            debug!(client_id = %LogStr(&self.state.identity.client_id), %peer, "Connection closed by client without DISCONNECT.");
                            break End::Abnormal;
                        }
                        Err(e) => {
                            debug!(client_id = %LogStr(&self.state.identity.client_id), %peer, error = %e, "Connection read failed.");
                            break End::Abnormal;
                        }
                        Ok(n) => {
                            shared.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            let now = Instant::now();
                            if let Some(k) = keepalive {
                                keepalive_at = now + k;
                            }
                            buffers_held = true;
                            sleep.as_mut().reset((now + IDLE_RELEASE).min(keepalive_at));
                            if n >= spare {
                                read_hint = (read_hint * 2).min(MAX_READ);
                            } else if n < read_hint / 4 {
                                read_hint = (read_hint / 2).max(READ_BUFFER);
                            }
                            parse = true;
                        }
                    }
                }
                changed = self.revalidate.changed(), if revalidate_open => {
                    if changed.is_err() {
                        revalidate_open = false;
                        continue;
                    }
                    let check = self.revalidate.borrow_and_update().clone();
                    if let Some(verdict) = check.and_then(|check| check(&self.credentials)) {
                        warn!(target: "audit", listener = %self.credentials.listener, %peer, client_id = %LogStr(&self.credentials.identity.client_id), username = %LogStr::opt(self.credentials.identity.username.as_deref()), via = ?self.credentials.identity.via, code = verdict.reason_code(), reason = %LogStr(verdict.reason()), "Client disconnected: credentials no longer valid after reload.");
                        if v5mode {
                            codec::encode_v5_disconnect(verdict.reason_code(), verdict.reason(), self.client_max_packet, &mut self.state.wbuf);
                        }
                        drain = true;
                        break End::Revoked;
                    }
                }
                _ = &mut sleep, if !stalled => {
                    if Instant::now() < keepalive_at {
                        // Quiet for IDLE_RELEASE: give the buffers back until traffic returns.
                        if buffers_held {
                            if self.rbuf.is_empty() {
                                self.rbuf = BytesMut::new();
                            }
                            self.state.release_idle_memory();
                            buffers_held = false;
                            read_hint = READ_BUFFER;
                        }
                        sleep.as_mut().reset(keepalive_at);
                        continue;
                    }
                    if keepalive.is_none() {
                        // No keep alive: the far deadline passed; wait another one.
                        keepalive_at = Instant::now() + far;
                        sleep.as_mut().reset(keepalive_at);
                        continue;
                    }
                    if log_limit::event(Kind::Timeout) {
                        info!(client_id = %LogStr(&self.state.identity.client_id), %peer, keep_alive, "Client disconnected: keep alive timeout.");
                    }
                    if v5mode {
                        self.state.encode(&disconnect_packet(0x8D, "keep alive timeout"));
                    }
                    drain = true;
                    break End::Abnormal;
                }
            }
        };
        // The last words (DISCONNECT) get a short limit so shutdown drains promptly.
        write_last(stream, &shared, &mut self.state.wbuf).await;
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
                conn,
                send_will,
                session_expiry,
            })
            .await;
        // The router is told first: a takeover or the will does not wait for the drain.
        if drain && !shared.shutdown.is_cancelled() {
            discard_until_eof(stream, &mut self.rbuf).await;
        }
        debug!(client_id = %LogStr(&self.state.identity.client_id), %peer, "Connection task finished.");
    }
}
