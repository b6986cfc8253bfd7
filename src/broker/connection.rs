//! One task per client connection: reads the CONNECT within the connect deadline,
//! authenticates it, then decodes everything available from the socket, validates and
//! authorizes it and hands it to the router in one batch, and writes every packet the
//! router queued in one write and flush. It owns the per-connection protocol state
//! (topic aliases, inbound Receive Maximum accounting, keepalive) and must never
//! panic on client input or let one client's bad bytes affect another client.
//!
//! Inbound flow control: a v5 client exceeding the Receive Maximum it was told is
//! disconnected (0x93); a v3.1.1 client, which was told nothing, is paused instead:
//! with `receive_maximum` QoS 1/2 publications not yet answered by PUBACK/PUBREC,
//! the next QoS 1/2 PUBLISH stays in the socket until an answer goes out (TCP
//! back-pressure), and keep alive does not run out while the broker is the one
//! waiting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::aliases::{InboundAliases, OutboundAliases};
use super::checks::{check_filter, publish_topic, violation, will_topic, Violation};
use super::codec::{self, v5, ProtocolVersion, QoS};
use super::fasthash::IntSet;
use super::keepalive::KeepAliveGrant;
use super::link::{
    refusal_properties, Backlog, ConnId, ConnectRequest, Inbound, Message, Outgoing, RouterMsg,
    WillSpec,
};
use super::revalidate::{RevalidateCheck, SessionCredentials};
use super::settings::ConnectionInfo;
use super::shared::Shared;
use crate::acl::Access;
use crate::auth::{AuthError, AuthRequest, Identity};
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};
use crate::topic;

/// Why the main loop ended; decides whether the will is published.
enum End {
    /// Normal DISCONNECT from the client.
    Disconnect {
        send_will: bool,
        session_expiry: Option<u32>,
    },
    /// Socket error, EOF, keepalive timeout or protocol violation: the will fires.
    Abnormal,
    /// Broker shutdown or session takeover.
    Server,
    /// A revalidation check rejected the session's credentials: no will (the
    /// client is no longer trusted).
    Revoked,
}

/// Maps a v5 reason code onto the CONNACK return code type.
pub(crate) fn connack_code(code: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match code {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8A => C::Banned,
        0x8C => C::BadAuthenticationMethod,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x99 => C::PayloadFormatInvalid,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        0x9F => C::ConnectionRateExceeded,
        _ => C::UnspecifiedError,
    }
}

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

/// Initial read buffer; it grows for bursts and is given back once idle.
const READ_BUFFER: usize = 1024;
/// Write buffers above this capacity are released when empty, so a burst does not pin memory.
const SHRINK_ABOVE: usize = 64 * 1024;
/// Largest single read; the read size adapts between `READ_BUFFER` and this, and an
/// empty read buffer more than four times the current read size is released.
const MAX_READ: usize = 32 * 1024;

/// A client that accepts no bytes for this long is cut off (its socket buffer is full).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Write and flush `buf`; false when the connection is unusable (error, timeout, or
/// shutdown while the client is not reading), since a partial write would leave the
/// byte stream misframed.
async fn write_now<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    buf: &mut BytesMut,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let len = buf.len();
    let write = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(buf).await?;
        stream.flush().await
    });
    let written = tokio::select! {
        w = write => matches!(w, Ok(Ok(()))),
        _ = shared.shutdown.cancelled() => false,
    };
    buf.clear();
    if written {
        shared
            .stats
            .bytes_sent
            .fetch_add(len as u64, Ordering::Relaxed);
    }
    written
}

/// Final write before closing (DISCONNECT): not interrupted by shutdown, short limit.
async fn write_last<S: AsyncWrite + Unpin>(stream: &mut S, shared: &Shared, buf: &mut BytesMut) {
    if buf.is_empty() {
        return;
    }
    let len = buf.len();
    let written = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(buf).await?;
        stream.flush().await
    })
    .await;
    buf.clear();
    if matches!(written, Ok(Ok(()))) {
        shared
            .stats
            .bytes_sent
            .fetch_add(len as u64, Ordering::Relaxed);
    }
}

async fn refuse_connect<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    version: ProtocolVersion,
    code: u8,
    reason: &str,
) {
    let codec = codec::Codec::new(version, shared.settings.max_packet_size as usize);
    let connack = v5::ConnAck {
        session_present: false,
        code: connack_code(code),
        properties: (version == ProtocolVersion::V5).then(|| refusal_properties(reason)),
    };
    let mut buf = BytesMut::new();
    if codec
        .encode(&v5::Packet::ConnAck(connack), &mut buf)
        .is_ok()
    {
        write_last(stream, shared, &mut buf).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

fn auth_codes(e: &AuthError) -> u8 {
    match e {
        AuthError::BadCredentials => 0x86,
        AuthError::NotAuthorized(_) => 0x87,
        AuthError::Throttled => 0x9F,
        AuthError::Unavailable(_) => 0x80,
    }
}

/// A connection with no traffic for this long gives back its read and write buffers
/// (idle connections are the common case: memory per connection).
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// After the broker's own DISCONNECT, what the client still sends is read and discarded
/// for at most this long: closing with unread bytes makes the kernel reset the
/// connection, which can destroy the DISCONNECT before the client reads it.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Serve one connection until it ends: read the CONNECT, admit the client, serve the
/// session. The first two phases run in a boxed future that is freed once the session
/// starts, so a long-lived connection holds none of the CONNECT phase's state.
pub(crate) async fn run<S>(shared: Arc<Shared>, mut stream: S, info: ConnectionInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Box::pin(connect_phase(&shared, &mut stream, info)).await;
    if let Some(session) = session {
        session.serve(&mut stream).await;
    }
}

/// Read the CONNECT, then admit it; `None` when the connection ends there.
async fn connect_phase<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    info: ConnectionInfo,
) -> Option<Session>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Subscribed before authentication so a reload that swaps the authenticator
    // while this CONNECT is being checked is still applied to this session.
    let revalidate = shared.revalidate.subscribe();
    let (connect, rbuf) = read_connect(shared, stream, &info).await?;
    admit(shared, stream, info, connect, rbuf, revalidate).await
}

/// Phase 1: the CONNECT packet, before the connect deadline. Returns it with the bytes
/// read after it (a client may send its first packets without waiting for CONNACK).
async fn read_connect<S>(
    shared: &Shared,
    stream: &mut S,
    info: &ConnectionInfo,
) -> Option<(codec::ConnectPacket, BytesMut)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let max_packet = shared.settings.max_packet_size as usize;
    let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
    loop {
        let level = codec::peek_connect_version(&rbuf);
        match codec::decode_connect(&mut rbuf, max_packet) {
            Ok(Some(c)) => return Some((c, rbuf)),
            Ok(None) => {}
            Err(e) => {
                if log_limit::event(Kind::InvalidConnect) {
                    warn!(%peer, reason = %LogStr(&e.to_string()), "Connection refused: invalid CONNECT.");
                }
                if let Some(code) = e.connack_v311_code() {
                    let mut buf = BytesMut::from(&[0x20u8, 2, 0, code][..]);
                    write_last(stream, shared, &mut buf).await;
                } else if level == Some(ProtocolVersion::V5) {
                    refuse_connect(
                        stream,
                        shared,
                        ProtocolVersion::V5,
                        e.reason_code(),
                        &e.to_string(),
                    )
                    .await;
                }
                return None;
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            read = tokio::time::timeout_at(info.connect_deadline, stream.read_buf(&mut rbuf)) => match read {
                Err(_) => {
                    if log_limit::event(Kind::Timeout) {
                        info!(%peer, "Connection closed: no complete CONNECT before the connect timeout.");
                    }
                    return None;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    debug!(%peer, "Connection closed before CONNECT.");
                    return None;
                }
                Ok(Ok(n)) => {
                    shared.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Phase 2: validate the CONNECT, authenticate it, check the will and hand the session
/// to the router (which sends the CONNACK). `None` when the client was refused.
async fn admit<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    info: ConnectionInfo,
    connect: codec::ConnectPacket,
    rbuf: BytesMut,
    revalidate: tokio::sync::watch::Receiver<Option<RevalidateCheck>>,
) -> Option<Session>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let settings = &shared.settings;
    let max_packet = settings.max_packet_size as usize;
    let codec::ConnectPacket {
        version,
        connect,
        will,
        username,
        password,
    } = connect;
    let v5mode = version == ProtocolVersion::V5;
    let props = connect.properties.unwrap_or_default();

    if props.authentication_method.is_some() {
        if log_limit::event(Kind::InvalidConnect) {
            warn!(%peer, "Connection refused: enhanced authentication is not supported.");
        }
        refuse_connect(
            stream,
            shared,
            version,
            0x8C,
            "enhanced authentication (AUTH) is not supported",
        )
        .await;
        return None;
    }

    // Client id: assigned when empty, which 3.1.1 allows only for clean sessions.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5mode && !connect.clean_start {
            if log_limit::event(Kind::InvalidConnect) {
                warn!(%peer, "Connection refused: empty client id with clean session = 0.");
            }
            refuse_connect(
                stream,
                shared,
                version,
                0x85,
                "empty client id needs a clean session",
            )
            .await;
            return None;
        }
        let id = format!("tollgate-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id
    };

    let requested_expiry = if v5mode {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry = requested_expiry.min(settings.max_session_expiry);

    let requested_keep_alive = connect.keep_alive;
    let KeepAliveGrant {
        keep_alive,
        server_keep_alive,
    } = match info
        .listener
        .keep_alive
        .grant(requested_keep_alive, settings.max_keepalive, v5mode)
    {
        Ok(grant) => grant,
        Err(reason) => {
            // Only 3.1.1 is refused (v5 is told Server Keep Alive): 0x85 is 3.1.1's 0x02.
            if log_limit::event(Kind::InvalidConnect) {
                warn!(client_id = %LogStr(&client_id), %peer, listener = %info.listener.name, keep_alive = requested_keep_alive, %reason, "Connection refused: keep alive outside the listener's policy.");
            }
            refuse_connect(stream, shared, version, 0x85, &reason).await;
            return None;
        }
    };

    let will = match will {
        None => None,
        Some(w) => {
            if let Err(reason) = will_topic(&w.topic, settings.max_topic_levels) {
                if log_limit::event(Kind::InvalidConnect) {
                    warn!(client_id = %LogStr(&client_id), %peer, reason = %LogStr(&reason), "Connection refused: invalid will topic.");
                }
                refuse_connect(stream, shared, version, 0x90, "invalid will topic").await;
                return None;
            }
            let delay = w
                .properties
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0);
            let properties = w.properties.map(|p| v5::PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: None,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                subscription_identifiers: vec![],
                content_type: p.content_type,
            });
            Some(WillSpec {
                message: Message {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos,
                    retain: w.retain,
                    properties,
                    expires_at: None,
                    publisher: None,
                },
                delay,
            })
        }
    };

    let request = AuthRequest {
        listener: info.listener.name.clone(),
        allow_anonymous: info.listener.allow_anonymous,
        password_auth: info.listener.password_auth,
        peer,
        client_id: client_id.clone(),
        username,
        password,
        certificate_identity: info.certificate_identity.clone(),
    };
    let authenticator = shared.authenticator();
    let identity: Identity = match tokio::time::timeout_at(
        info.connect_deadline,
        authenticator.authenticate(request),
    )
    .await
    {
        Err(_) => {
            if log_limit::event(Kind::Timeout) {
                info!(client_id = %LogStr(&client_id), %peer, "Connection closed: authentication did not finish before the connect timeout.");
            }
            return None;
        }
        Ok(Err(e)) => {
            if log_limit::event(Kind::AuthRefused) {
                warn!(target: "audit", client_id = %LogStr(&client_id), %peer, listener = %info.listener.name, reason = %LogStr(&e.to_string()), "Connection refused by authentication.");
            }
            refuse_connect(stream, shared, version, auth_codes(&e), &e.to_string()).await;
            return None;
        }
        Ok(Ok(identity)) => identity,
    };
    if let Some(will) = &will {
        // The will is a write like any PUBLISH: checked now (refused at CONNECT, as
        // Mosquitto does) and again when it is sent (the rules may change meanwhile).
        let topic = will.message.topic_str();
        if !crate::acl::authorize_write(&*shared.authorizer(), &identity, topic, Some(peer)) {
            if log_limit::line(Kind::AclDenied) {
                warn!(target: "audit", client_id = %LogStr(&client_id), %peer, listener = %info.listener.name, username = %LogStr::opt(identity.username.as_deref()), "Connection refused: not authorized to publish the will.");
            }
            refuse_connect(
                stream,
                shared,
                version,
                0x87,
                "not authorized to publish to the will topic",
            )
            .await;
            return None;
        }
    }
    info!(target: "audit", client_id = %LogStr(&client_id), %peer, listener = %info.listener.name, via = ?identity.via, username = %LogStr::opt(identity.username.as_deref()), "Client connected.");

    let connack = v5::ConnAck {
        session_present: false,
        code: v5::ConnectReturnCode::Success,
        properties: v5mode.then(|| v5::ConnAckProperties {
            session_expiry_interval: (session_expiry != requested_expiry).then_some(session_expiry),
            receive_max: Some(settings.receive_maximum),
            max_qos: None,
            retain_available: Some(1),
            max_packet_size: Some(settings.max_packet_size),
            assigned_client_identifier: assigned,
            topic_alias_max: Some(settings.topic_alias_maximum),
            reason_string: None,
            user_properties: vec![],
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }),
    };

    let credentials = SessionCredentials {
        identity: identity.clone(),
        listener: info.listener.name.clone(),
        peer,
        peer_certificates: info.peer_certificates.clone(),
    };

    let conn = shared.new_conn_id();
    let (tx, out_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let request = ConnectRequest {
        conn,
        tx,
        identity: identity.clone(),
        clean_start: connect.clean_start,
        session_expiry,
        will,
        receive_maximum: props.receive_maximum.unwrap_or(settings.max_inflight),
        max_packet_size: props.max_packet_size,
        durable: false,
        connack,
        backlog: backlog.clone(),
        v5: v5mode,
        overflow: info.listener.queue_overflow,
    };
    if shared
        .router_tx
        .send(RouterMsg::Connect(Box::new(request)))
        .await
        .is_err()
    {
        return None;
    }

    Some(Session {
        conn,
        state: ConnState {
            shared: shared.clone(),
            codec: codec::Codec::new(version, max_packet),
            identity,
            peer,
            session_expiry,
            problem_info: props.request_problem_info != Some(0),
            aliases: InboundAliases::default(),
            out_aliases: OutboundAliases::new(if v5mode {
                props
                    .topic_alias_max
                    .unwrap_or(0)
                    .min(settings.topic_alias_maximum)
            } else {
                0
            }),
            inbound_qos: IntSet::default(),
            awaiting_ack: IntSet::default(),
            wbuf: BytesMut::new(),
            write_decisions: WriteDecisions::default(),
        },
        rbuf,
        out_rx,
        backlog,
        keep_alive,
        revalidate,
        credentials,
        client_max_packet: props.max_packet_size.map_or(usize::MAX, |m| m as usize),
    })
}

/// An admitted connection: what phase 3 needs and nothing of the CONNECT phase.
struct Session {
    conn: ConnId,
    state: ConnState,
    /// Bytes not yet decoded (at first: whatever followed the CONNECT).
    rbuf: BytesMut,
    /// Packets the router queued for this connection.
    out_rx: mpsc::UnboundedReceiver<Vec<Outgoing>>,
    /// Outgoing items handed over and not yet taken (the router's accounting).
    backlog: Arc<Backlog>,
    /// Granted keep alive in seconds (0: none).
    keep_alive: u16,
    /// Reload notices: a check the session's credentials must still pass.
    revalidate: tokio::sync::watch::Receiver<Option<RevalidateCheck>>,
    /// What the session was admitted with, as a revalidation check sees it.
    credentials: SessionCredentials,
    /// The client's Maximum Packet Size (v5), which bounds the revalidation DISCONNECT.
    client_max_packet: usize,
}

impl Session {
    /// Phase 3: serve the session until it ends, then close the connection and tell
    /// the router (which fires the will when it should).
    async fn serve<S>(mut self, stream: &mut S)
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

/// Read and discard until EOF, an error or `DRAIN_LIMIT`: the client reads the broker's
/// last packet and the FIN instead of a reset caused by its unread bytes.
async fn discard_until_eof<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        buf.clear();
        buf.reserve(READ_BUFFER);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

struct ConnState {
    shared: Arc<Shared>,
    codec: codec::Codec,
    identity: Identity,
    peer: std::net::SocketAddr,
    session_expiry: u32,
    /// v5 Request Problem Information: reason strings allowed on acks.
    problem_info: bool,
    /// Topic aliases the client set (v5).
    aliases: InboundAliases,
    /// Topic aliases the broker assigns towards a v5 client that allows them.
    out_aliases: OutboundAliases,
    /// QoS 1/2 packet ids received and not yet completed (inbound Receive Maximum).
    inbound_qos: IntSet<u16>,
    /// v3.1.1 only: QoS 1/2 packet ids not yet answered with PUBACK/PUBREC (the
    /// back-pressure window; a QoS 2 id waiting for PUBREL must not stall reading,
    /// or the PUBREL behind the next PUBLISH would never be read).
    awaiting_ack: IntSet<u16>,
    wbuf: BytesMut,
    /// Recent PUBLISH authorization decisions of this connection.
    write_decisions: WriteDecisions,
}

/// Most recent PUBLISH topics whose decision a connection remembers.
const WRITE_DECISIONS: usize = 8;

/// Per-connection cache of PUBLISH authorization decisions (design decision 3): a device
/// publishes to a handful of topics over and over. Entries belong to the authorizer they
/// came from; a reload installs a new one, which empties the cache. Holding that `Arc`
/// keeps its address from being reused, so `ptr_eq` cannot confuse two authorizers.
/// Nothing is allocated until the first PUBLISH.
#[derive(Default)]
struct WriteDecisions {
    authorizer: Option<Arc<dyn crate::acl::Authorizer>>,
    /// (topic, allowed), most recently used first.
    entries: Vec<(Bytes, bool)>,
}

impl WriteDecisions {
    fn allowed(
        &mut self,
        authorizer: &Arc<dyn crate::acl::Authorizer>,
        identity: &Identity,
        topic: &str,
    ) -> bool {
        if !self
            .authorizer
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, authorizer))
        {
            self.authorizer = Some(authorizer.clone());
            self.entries.clear();
        }
        if let Some(i) = self
            .entries
            .iter()
            .position(|(t, _)| t.as_ref() == topic.as_bytes())
        {
            let entry = self.entries.remove(i);
            let allowed = entry.1;
            self.entries.insert(0, entry);
            return allowed;
        }
        let allowed = crate::acl::write_allowed(&**authorizer, identity, topic);
        self.entries.truncate(WRITE_DECISIONS - 1);
        self.entries
            .insert(0, (Bytes::copy_from_slice(topic.as_bytes()), allowed));
        allowed
    }
}

/// Whether the next packet in `rbuf` is a QoS 1/2 PUBLISH (counts against the
/// inbound Receive Maximum).
fn next_is_qos_publish(rbuf: &[u8]) -> bool {
    rbuf.first()
        .is_some_and(|&b| b >> 4 == 3 && (b >> 1) & 0x03 != 0)
}

impl ConnState {
    fn v5(&self) -> bool {
        self.codec.version == ProtocolVersion::V5
    }

    /// A v3.1.1 client has as many QoS 1/2 publications unacknowledged as the broker
    /// accepts (`receive_maximum`): the next one waits in the socket. v5 clients know
    /// the limit and are disconnected (0x93) when they exceed it.
    fn inbound_full(&self) -> bool {
        !self.v5() && self.awaiting_ack.len() >= usize::from(self.shared.settings.receive_maximum)
    }

    fn encode(&mut self, packet: &v5::Packet) {
        if !self.v5() && matches!(packet, v5::Packet::Disconnect(_)) {
            return;
        }
        match packet {
            v5::Packet::PubAck(a) => {
                self.inbound_qos.remove(&a.pkid);
                self.awaiting_ack.remove(&a.pkid);
            }
            v5::Packet::PubComp(c) => {
                self.inbound_qos.remove(&c.pkid);
            }
            v5::Packet::PubRec(r) => {
                self.awaiting_ack.remove(&r.pkid);
                if !matches!(
                    r.reason,
                    v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers
                ) {
                    self.inbound_qos.remove(&r.pkid);
                }
            }
            _ => {}
        }
        if self.v5() && self.problem_info {
            if let Some(explained) = explain_refusal(packet) {
                if let Err(e) = self.codec.encode(&explained, &mut self.wbuf) {
                    warn!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, error = %e, "Packet not sent: encoding failed.");
                }
                return;
            }
        }
        if let Err(e) = self.codec.encode(packet, &mut self.wbuf) {
            warn!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, error = %e, "Packet not sent: encoding failed.");
        }
    }

    /// Give back the write buffer and the capacity of empty per-connection tables after
    /// a quiet spell (an idle connection should hold no buffers).
    fn release_idle_memory(&mut self) {
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        if self.inbound_qos.is_empty() {
            self.inbound_qos.shrink_to_fit();
        }
        if self.awaiting_ack.is_empty() {
            self.awaiting_ack.shrink_to_fit();
        }
    }

    /// Encode a router batch; returns true when the router asked to close.
    fn encode_batch(&mut self, batch: Vec<Outgoing>) -> bool {
        for item in batch {
            match item {
                Outgoing::Publish(p) => {
                    let mut publish = p.to_publish(self.v5());
                    self.out_aliases.apply(&mut publish);
                    self.encode(&v5::Packet::Publish(publish))
                }
                Outgoing::Ack(a) => self.encode(&a.to_packet()),
                Outgoing::Packet(p) => self.encode(&p),
                Outgoing::Close => return true,
            }
        }
        false
    }

    /// Decode and handle every complete packet in `rbuf`.
    fn process(
        &mut self,
        rbuf: &mut BytesMut,
        items: &mut Vec<Inbound>,
    ) -> Result<Option<End>, Violation> {
        let authorizer = self.shared.authorizer();
        loop {
            if self.inbound_full() && next_is_qos_publish(rbuf) {
                return Ok(None);
            }
            let packet = match self.codec.decode(rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => return Err(violation(e.reason_code(), e.to_string())),
            };
            match packet {
                v5::Packet::Publish(p) => self.publish(p, &authorizer, items)?,
                v5::Packet::PubAck(a) => items.push(Inbound::PubAck(a.pkid)),
                v5::Packet::PubRec(r) => items.push(Inbound::PubRec {
                    pkid: r.pkid,
                    failed: !matches!(
                        r.reason,
                        v5::PubRecReason::Success | v5::PubRecReason::NoMatchingSubscribers
                    ),
                }),
                v5::Packet::PubRel(r) => items.push(Inbound::PubRel(r.pkid)),
                v5::Packet::PubComp(c) => items.push(Inbound::PubComp(c.pkid)),
                v5::Packet::Subscribe(s) => self.subscribe(s, &*authorizer, items)?,
                v5::Packet::Unsubscribe(u) => items.push(Inbound::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters,
                    reply: None,
                }),
                v5::Packet::PingReq(_) => self.encode(&v5::Packet::PingResp(v5::PingResp)),
                v5::Packet::Disconnect(d) => {
                    let send_will =
                        d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage;
                    let expiry = d.properties.and_then(|p| p.session_expiry_interval);
                    if self.session_expiry == 0 && expiry.is_some_and(|e| e > 0) {
                        return Err(violation(
                            0x82,
                            "session expiry set at DISCONNECT after connecting with 0",
                        ));
                    }
                    debug!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, "Client sent DISCONNECT.");
                    return Ok(Some(End::Disconnect {
                        send_will,
                        session_expiry: expiry,
                    }));
                }
                v5::Packet::Connect(..) => {
                    return Err(violation(0x82, "second CONNECT on one connection"))
                }
                v5::Packet::Auth(_) => {
                    return Err(violation(0x82, "AUTH without an authentication method"))
                }
                _ => return Err(violation(0x82, "packet type not allowed from a client")),
            }
        }
    }

    fn publish(
        &mut self,
        mut p: v5::Publish,
        authorizer: &Arc<dyn crate::acl::Authorizer>,
        items: &mut Vec<Inbound>,
    ) -> Result<(), Violation> {
        let settings = &self.shared.settings;
        let alias = p.properties.as_mut().and_then(|pp| pp.topic_alias.take());
        // Set only once the PUBLISH carrying it has been accepted (valid, authorized).
        let mut new_alias = None;
        if let Some(alias) = alias {
            if alias == 0 || alias > settings.topic_alias_maximum {
                return Err(violation(
                    0x94,
                    format!(
                        "topic alias {alias} outside 1..={}",
                        settings.topic_alias_maximum
                    ),
                ));
            }
            if p.topic.is_empty() {
                match self.aliases.get(alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(violation(
                            0x82,
                            format!("topic alias {alias} used before it was set"),
                        ))
                    }
                }
            } else {
                new_alias = Some(alias);
            }
        }
        if p.topic.is_empty() {
            return Err(violation(
                0x82,
                "zero-length topic name without topic alias",
            ));
        }
        let topic = publish_topic(&p.topic)?;
        if let Some(pp) = p.properties.as_mut() {
            pp.subscription_identifiers.clear();
        }
        if p.qos != QoS::AtMostOnce
            && self.v5()
            && !self.inbound_qos.contains(&p.pkid)
            && self.inbound_qos.len() >= usize::from(settings.receive_maximum)
        {
            return Err(violation(
                0x93,
                format!(
                    "more than {} unacknowledged QoS 1/2 publications",
                    settings.receive_maximum
                ),
            ));
        }
        if let Err(e) = topic::check_levels(topic, settings.max_topic_levels) {
            let reason = format!("topic name invalid: {e}");
            if !self.v5() {
                // v3.1.1 has no negative acknowledgement: the connection is closed.
                return Err(violation(0x90, reason));
            }
            debug!(client_id = %LogStr(&self.identity.client_id), peer = %self.peer, %reason, "PUBLISH refused: too many topic levels.");
            self.refuse_publish(
                &p,
                v5::PubAckReason::TopicNameInvalid,
                v5::PubRecReason::TopicNameInvalid,
                reason,
            );
            return Ok(());
        }
        if !self
            .write_decisions
            .allowed(authorizer, &self.identity, topic)
        {
            // Denials are rare: ask again for the deciding rule, for the audit line.
            let decision = crate::acl::write_denial(&**authorizer, &self.identity, topic);
            crate::acl::audit_denied(
                &self.identity,
                Access::Write,
                topic,
                &decision,
                Some(self.peer),
            );
            if self.v5() {
                self.refuse_publish(
                    &p,
                    v5::PubAckReason::NotAuthorized,
                    v5::PubRecReason::NotAuthorized,
                    "not authorized to publish to this topic".into(),
                );
            } else {
                // v3.1.1 completes the flow as if accepted; a QoS 2 PUBREL gets its
                // PUBCOMP from the router.
                self.refuse_publish(
                    &p,
                    v5::PubAckReason::Success,
                    v5::PubRecReason::Success,
                    String::new(),
                );
            }
            return Ok(());
        }
        if let Some(alias) = new_alias {
            self.aliases
                .set(alias, &p.topic)
                .map_err(|reason| violation(0x97, reason))?;
        }
        if p.qos != QoS::AtMostOnce {
            self.inbound_qos.insert(p.pkid);
            if !self.v5() {
                self.awaiting_ack.insert(p.pkid);
            }
        }
        let expires_at = p
            .properties
            .as_ref()
            .and_then(|pp| pp.message_expiry_interval)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        items.push(Inbound::Publish {
            publish: p,
            expires_at,
            reply: None,
        });
        Ok(())
    }

    /// Answer a PUBLISH that is not routed: PUBACK/PUBREC with `puback`/`pubrec` for
    /// QoS 1/2 (with `reason` as reason string on v5 when the client wants them),
    /// nothing for QoS 0.
    fn refuse_publish(
        &mut self,
        p: &v5::Publish,
        puback: v5::PubAckReason,
        pubrec: v5::PubRecReason,
        reason: String,
    ) {
        let reason = (self.v5() && self.problem_info && !reason.is_empty()).then_some(reason);
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.encode(&v5::Packet::PubAck(v5::PubAck {
                pkid: p.pkid,
                reason: puback,
                properties: reason.map(|r| v5::PubAckProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })),
            QoS::ExactlyOnce => self.encode(&v5::Packet::PubRec(v5::PubRec {
                pkid: p.pkid,
                reason: pubrec,
                properties: reason.map(|r| v5::PubRecProperties {
                    reason_string: Some(r),
                    user_properties: vec![],
                }),
            })),
        }
    }

    fn subscribe(
        &mut self,
        s: v5::Subscribe,
        authorizer: &dyn crate::acl::Authorizer,
        items: &mut Vec<Inbound>,
    ) -> Result<(), Violation> {
        let id = s.properties.and_then(|p| p.id);
        if id == Some(0) {
            return Err(violation(0x82, "subscription identifier 0"));
        }
        let mut filters = Vec::with_capacity(s.filters.len());
        for f in s.filters {
            let refused = match check_filter(
                &f,
                &self.identity,
                authorizer,
                Some(self.peer),
                self.shared.settings.max_topic_levels,
            )? {
                Ok(()) => None,
                Err(code) => {
                    // A refusal by ACL is audited by `check_filter` itself.
                    debug!(client_id = %LogStr(&self.identity.client_id), filter = %LogStr(&f.path), ?code, "Subscribe refused.");
                    Some(code)
                }
            };
            filters.push((f, refused));
        }
        items.push(Inbound::Subscribe {
            pkid: s.pkid,
            id,
            filters,
            reply: None,
        });
        Ok(())
    }
}

/// A copy of a refusing v5 ack with a reason string added, or `None` when `packet`
/// is not a refusal (or already explains itself).
fn explain_refusal(packet: &v5::Packet) -> Option<v5::Packet> {
    match packet {
        v5::Packet::PubAck(a)
            if a.properties.is_none() && a.reason == v5::PubAckReason::NotAuthorized =>
        {
            let mut a = a.clone();
            a.properties = Some(v5::PubAckProperties {
                reason_string: Some("not authorized to publish to this topic".into()),
                user_properties: vec![],
            });
            Some(v5::Packet::PubAck(a))
        }
        v5::Packet::PubRec(r)
            if r.properties.is_none() && r.reason == v5::PubRecReason::NotAuthorized =>
        {
            let mut r = r.clone();
            r.properties = Some(v5::PubRecProperties {
                reason_string: Some("not authorized to publish to this topic".into()),
                user_properties: vec![],
            });
            Some(v5::Packet::PubRec(r))
        }
        v5::Packet::SubAck(s)
            if s.properties.is_none()
                && s.return_codes
                    .iter()
                    .any(|c| !matches!(c, v5::SubscribeReasonCode::Success(_))) =>
        {
            let refused: Vec<String> = s
                .return_codes
                .iter()
                .enumerate()
                .filter(|(_, c)| !matches!(c, v5::SubscribeReasonCode::Success(_)))
                .map(|(i, c)| format!("filter {i}: {c:?}"))
                .collect();
            let mut s = s.clone();
            s.properties = Some(v5::SubAckProperties {
                reason_string: Some(format!("refused {}", refused.join(", "))),
                user_properties: vec![],
            });
            Some(v5::Packet::SubAck(s))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AclDecision, Authorizer};
    use crate::broker::settings::{BrokerSettings, ListenerContext};
    use std::sync::atomic::AtomicUsize;

    /// Allows topics under `ok/` and counts how often it was asked.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Authorizer for Counting {
        fn check(&self, _: &Identity, _: Access, topic: &str) -> AclDecision {
            self.0.fetch_add(1, Ordering::Relaxed);
            if topic.starts_with("ok/") {
                AclDecision::Allow { rule: None }
            } else {
                AclDecision::Deny { rule: None }
            }
        }
    }

    fn asked(a: &Arc<Counting>) -> usize {
        a.0.load(Ordering::Relaxed)
    }

    /// What an idle connection's task holds is the session future: the CONNECT phase
    /// (decode buffers, authentication request, CONNACK) is boxed and freed before it.
    #[tokio::test]
    async fn session_future_holds_none_of_the_connect_phase() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        // No router runs: only the sizes of the futures are looked at.
        let (shared, _router_rx) = Shared::new(
            BrokerSettings::default(),
            Arc::new(crate::auth::AnonymousOnly),
            Arc::new(crate::acl::AllowAll),
            shutdown.clone(),
        );
        let (stream, _peer) = tokio::io::duplex(64);
        let info = ConnectionInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            listener: Arc::new(ListenerContext {
                name: Arc::from("test"),
                allow_anonymous: true,
                password_auth: true,
                ..Default::default()
            }),
            certificate_identity: None,
            peer_certificates: None,
            connect_deadline: Instant::now(),
        };
        let run_size = std::mem::size_of_val(&run(shared.clone(), stream, info.clone()));
        let (mut stream, _peer) = tokio::io::duplex(64);
        let connect_size =
            std::mem::size_of_val(&connect_phase(&shared, &mut stream, info.clone()));
        eprintln!(
            "run future {run_size} B, connect phase {connect_size} B, session {} B",
            std::mem::size_of::<Session>()
        );
        assert!(
            run_size < connect_size,
            "the CONNECT phase is boxed, not part of the session future"
        );
        shutdown.cancel();
    }

    #[test]
    fn publish_decisions_are_cached_per_connection_and_dropped_on_reload() {
        let identity = Identity::internal("device");
        let first = Arc::new(Counting::default());
        let first_dyn: Arc<dyn Authorizer> = first.clone();
        let mut cache = WriteDecisions::default();
        for _ in 0..5 {
            assert!(cache.allowed(&first_dyn, &identity, "ok/a"));
            assert!(!cache.allowed(&first_dyn, &identity, "no/a"));
        }
        assert_eq!(asked(&first), 2, "one check per topic, then cached");
        // A reload installs another authorizer: nothing of the old one is reused.
        let second = Arc::new(Counting::default());
        let second_dyn: Arc<dyn Authorizer> = second.clone();
        assert!(cache.allowed(&second_dyn, &identity, "ok/a"));
        assert_eq!(asked(&second), 1);
        assert_eq!(asked(&first), 2);
    }

    #[test]
    fn publish_decision_cache_is_bounded() {
        let identity = Identity::internal("device");
        let counting = Arc::new(Counting::default());
        let authorizer: Arc<dyn Authorizer> = counting.clone();
        let mut cache = WriteDecisions::default();
        for i in 0..100 {
            cache.allowed(&authorizer, &identity, &format!("ok/{i}"));
        }
        assert_eq!(cache.entries.len(), WRITE_DECISIONS);
        // The most recent topics are the ones kept.
        let before = asked(&counting);
        assert!(cache.allowed(&authorizer, &identity, "ok/99"));
        assert_eq!(asked(&counting), before);
        assert!(cache.allowed(&authorizer, &identity, "ok/0"));
        assert_eq!(asked(&counting), before + 1);
    }
}
