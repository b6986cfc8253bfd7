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

mod io;
mod protocol;
mod reauth;
mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use self::io::{write_last, READ_BUFFER};
use self::protocol::{ConnState, WriteDecisions};
use self::session::Session;
use super::{refusal_properties, ConnectRequest, Message, RouterMsg, WillSpec};
use crate::auth::{AuthError, AuthMethod, AuthRequest, Identity, TokenStep};
use crate::broker::aliases::{InboundAliases, OutboundAliases};
use crate::broker::checks::will_topic;
use crate::broker::codec::{self, v5, ProtocolVersion, QoS};
use crate::broker::fasthash::IntSet;
use crate::broker::keepalive::KeepAliveGrant;
use crate::broker::reason::ReasonCode;
use crate::broker::revalidate::RevalidateCheck;
use crate::broker::settings::{BrokerSettings, ConnectionInfo};
use crate::broker::shared::Shared;
use crate::edge::rate::PublishLimiter;
use crate::telemetry::audit::{Event, Kind as AuditKind};
use crate::telemetry::limit::{self as log_limit, Kind, LogStr};

async fn refuse_connect<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    version: ProtocolVersion,
    code: ReasonCode,
    reason: &str,
) {
    let codec = codec::Codec::new(version, shared.settings.max_packet_size as usize);
    let connack = v5::ConnAck {
        session_present: false,
        code: code.connect_return_code(),
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

/// The CONNACK code of an authentication failure.
fn auth_reason(e: &AuthError) -> ReasonCode {
    match e {
        AuthError::BadCredentials => ReasonCode::BadUserNameOrPassword,
        AuthError::NotAuthorized(_) => ReasonCode::NotAuthorized,
        AuthError::Throttled => ReasonCode::ConnectionRateExceeded,
        AuthError::Unavailable(_) => ReasonCode::UnspecifiedError,
    }
}

/// Serve one connection until it ends: read the CONNECT, admit the client, serve the
/// session. The first two phases run in a boxed future that owns the stream and the
/// connection facts and is freed once the session starts, so a long-lived connection
/// holds none of the CONNECT phase's state.
///
/// A plain function around an `async` block, not an `async fn`: the arguments of an
/// `async fn` keep their own slots in its future beside the locals they move to, and
/// the session (about 500 B) is held by one binding and only borrowed by `serve`
/// (moved into `serve`, it was stored three times).
pub(crate) fn run<S>(
    shared: Arc<Shared>,
    stream: S,
    info: ConnectionInfo,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connect = Box::pin(connect_phase(shared, stream, info));
    async move {
        let Some((mut stream, mut session)) = connect.await else {
            return;
        };
        session.serve(&mut stream).await;
    }
}

/// Read the CONNECT, then admit it; `None` when the connection ends there.
async fn connect_phase<S>(
    shared: Arc<Shared>,
    mut stream: S,
    info: ConnectionInfo,
) -> Option<(S, Session)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if shared.shutdown.is_cancelled() {
        return None;
    }
    // Subscribed before authentication so a reload that swaps the authenticator
    // while this CONNECT is being checked is still applied to this session.
    let revalidate = shared.revalidate.subscribe();
    let (connect, rbuf) = read_connect(&shared, &mut stream, &info).await?;
    let session = admit(&shared, &mut stream, info, connect, rbuf, revalidate).await?;
    Some((stream, session))
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
                        e.reason(),
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

/// Why admission stopped: a refusing CONNACK (v5 reason code and reason string, the
/// 3.1.1 return code follows from the code), or a plain close.
enum Refusal {
    Connack(ReasonCode, String),
    /// Authentication did not finish before the connect deadline, or the router is gone.
    Close,
}

fn refusal(code: ReasonCode, reason: impl Into<String>) -> Refusal {
    Refusal::Connack(code, reason.into())
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
    let version = connect.version;
    match admit_steps(shared, info, connect, rbuf, revalidate).await {
        Ok(session) => Some(session),
        Err(Refusal::Connack(code, reason)) => {
            refuse_connect(stream, shared, version, code, &reason).await;
            None
        }
        Err(Refusal::Close) => None,
    }
}

/// The steps of admission, in order; each refusal is logged where it is decided.
async fn admit_steps(
    shared: &Arc<Shared>,
    info: ConnectionInfo,
    connect: codec::ConnectPacket,
    rbuf: BytesMut,
    revalidate: tokio::sync::watch::Receiver<Option<RevalidateCheck>>,
) -> Result<Session, Refusal> {
    let peer = info.peer;
    let settings = &shared.settings;
    let codec::ConnectPacket {
        version,
        connect,
        will,
        username,
        password,
    } = connect;
    let v5mode = version == ProtocolVersion::V5;
    let props = connect.properties.unwrap_or_default();

    let token = reauth::connect_token(&info, props.authentication_method.as_deref())
        .map_err(|(code, reason)| refusal(code, reason))?;
    let password = match token {
        Some(_) if password.is_some() => {
            return Err(refusal(
                ReasonCode::BadUserNameOrPassword,
                "with the authentication method jwt the token goes in Authentication Data, not in the password",
            ))
        }
        Some(_) => props.authentication_data.clone(),
        None => password,
    };
    let (client_id, assigned) = client_id(connect.client_id, connect.clean_start, v5mode, &info)?;
    let requested_expiry = if v5mode {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry = requested_expiry.min(settings.max_session_expiry);
    let grant = keep_alive(shared, &info, connect.keep_alive, v5mode, &client_id)?;
    let will = match will {
        None => None,
        Some(w) => Some(will_spec(shared, &info, w, &client_id)?),
    };
    let identity = authenticate(shared, &info, client_id, username, password, token).await?;
    authorize_will(shared, &info, &identity, will.as_ref())?;
    Event::new(AuditKind::ClientConnected)
        .identity(&identity)
        .peer(Some(peer))
        .emit();

    let connack = v5::ConnAck {
        session_present: false,
        code: v5::ConnectReturnCode::Success,
        properties: v5mode.then(|| {
            accepted_properties(
                settings,
                (session_expiry != requested_expiry).then_some(session_expiry),
                assigned,
                grant.server_keep_alive,
                info.listener.max_qos,
                token.map(|_| reauth::JWT_METHOD.to_string()),
            )
        }),
    };
    let (request, out_rx) = ConnectRequest::new(
        shared.new_conn_id(),
        identity,
        props.receive_maximum.unwrap_or(settings.max_inflight),
        connack,
    );
    let request = ConnectRequest {
        clean_start: connect.clean_start,
        session_expiry,
        will,
        max_packet_size: props.max_packet_size,
        v5: v5mode,
        overflow: info.listener.queue_overflow,
        ..request
    };
    let (conn, identity) = (request.conn, request.identity.clone());
    if shared
        .router_tx
        .send(RouterMsg::Connect(Box::new(request)))
        .await
        .is_err()
    {
        return Err(Refusal::Close);
    }
    let out_aliases = if v5mode {
        props
            .topic_alias_max
            .unwrap_or(0)
            .min(settings.topic_alias_maximum)
    } else {
        0
    };
    Ok(Session {
        conn,
        state: ConnState {
            shared: shared.clone(),
            codec: codec::Codec::new(version, settings.max_packet_size as usize),
            identity,
            peer,
            session_expiry,
            problem_info: props.request_problem_info != Some(0),
            aliases: InboundAliases::default(),
            out_aliases: OutboundAliases::new(out_aliases),
            inbound_qos: IntSet::default(),
            awaiting_ack: IntSet::default(),
            wbuf: BytesMut::new(),
            write_decisions: WriteDecisions::default(),
            max_qos: info.listener.max_qos,
            rate: info
                .listener
                .publish_rate
                .map(|r| Box::new(PublishLimiter::new(r, tokio::time::Instant::now()))),
            throttled_until: None,
            publishes: 0,
            traffic: info.traffic.clone(),
            reauth: token.map(|_| Box::default()),
        },
        rbuf,
        out_rx,
        keep_alive: grant.keep_alive,
        revalidate,
        listener: info.listener.name.clone(),
        peer_certificates: info.peer_certificates.clone(),
        client_max_packet: props.max_packet_size.map_or(usize::MAX, |m| m as usize),
        carry: Vec::new(),
        carry_at: 0,
    })
}

/// Admission step: the client id, assigned when empty (which 3.1.1 allows only for
/// clean sessions); returns it and, when assigned, the copy for the CONNACK.
fn client_id(
    requested: String,
    clean_start: bool,
    v5mode: bool,
    info: &ConnectionInfo,
) -> Result<(String, Option<String>), Refusal> {
    if !requested.is_empty() {
        return Ok((requested, None));
    }
    if !v5mode && !clean_start {
        if log_limit::event(Kind::InvalidConnect) {
            warn!(peer = %info.peer, "Connection refused: empty client id with clean session = 0.");
        }
        return Err(refusal(
            ReasonCode::ClientIdentifierNotValid,
            "empty client id needs a clean session",
        ));
    }
    let id = format!("tollgate-{:016x}", rand::random::<u64>());
    Ok((id.clone(), Some(id)))
}

/// Admission step: the keep alive granted under the listener's policy.
fn keep_alive(
    shared: &Shared,
    info: &ConnectionInfo,
    requested: u16,
    v5mode: bool,
    client_id: &str,
) -> Result<KeepAliveGrant, Refusal> {
    info.listener
        .keep_alive
        .grant(requested, shared.settings.max_keepalive, v5mode)
        .map_err(|reason| {
            // Only 3.1.1 is refused (v5 is told Server Keep Alive): 0x85 is 3.1.1's 0x02.
            if log_limit::event(Kind::InvalidConnect) {
                warn!(client_id = %LogStr(client_id), peer = %info.peer, listener = %info.listener.name, keep_alive = requested, %reason, "Connection refused: keep alive outside the listener's policy.");
            }
            refusal(ReasonCode::ClientIdentifierNotValid, reason)
        })
}

/// Admission step: the will, its topic validated, as the router will publish it.
fn will_spec(
    shared: &Shared,
    info: &ConnectionInfo,
    w: v5::LastWill,
    client_id: &str,
) -> Result<WillSpec, Refusal> {
    if let Some(max) = info.listener.max_qos.filter(|max| w.qos as u8 > *max as u8) {
        info.traffic.qos_refused.fetch_add(1, Ordering::Relaxed);
        if log_limit::event(Kind::RateLimited) {
            warn!(client_id = %LogStr(client_id), peer = %info.peer, listener = %info.listener.name, will_qos = w.qos as u8, max_qos = max as u8, "Connection refused: will QoS above the listener's max_qos.");
        }
        // v5: 0x9B QoS not supported; 3.1.1 gets its mapping (`reason.rs`: 0x03).
        return Err(refusal(
            ReasonCode::QoSNotSupported,
            format!("will QoS above the listener's maximum QoS {}", max as u8),
        ));
    }
    if let Err(reason) = will_topic(&w.topic, shared.settings.max_topic_levels) {
        if log_limit::event(Kind::InvalidConnect) {
            warn!(client_id = %LogStr(client_id), peer = %info.peer, reason = %LogStr(&reason), "Connection refused: invalid will topic.");
        }
        return Err(refusal(ReasonCode::TopicNameInvalid, "invalid will topic"));
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
    // The will lives as long as the session: it owns its bytes, not the CONNECT's
    // read buffer.
    let (topic, payload) = super::own_bytes(&w.topic, &w.message);
    let mut properties = properties;
    super::own_correlation_data(&mut properties);
    Ok(WillSpec {
        message: Message {
            topic,
            payload,
            qos: w.qos,
            retain: w.retain,
            properties,
            expires_at: None,
            publisher: None,
            origin: None,
        },
        delay,
    })
}

/// Admission step: the identity, from the authenticator, before the connect deadline.
async fn authenticate(
    shared: &Shared,
    info: &ConnectionInfo,
    client_id: String,
    username: Option<String>,
    password: Option<Bytes>,
    token: Option<TokenStep>,
) -> Result<Identity, Refusal> {
    let peer = info.peer;
    let request = AuthRequest {
        listener: info.listener.name.clone(),
        allow_anonymous: info.listener.allow_anonymous,
        password_auth: info.listener.password_auth,
        jwt_auth: info.listener.jwt_auth,
        peer,
        client_id: client_id.clone(),
        username,
        password,
        certificate_identity: info.certificate_identity.clone(),
        token,
    };
    // The method tried, for the metrics: what the CONNECT brought.
    let tried = if token.is_some()
        || request.jwt_auth
            && request
                .password
                .as_deref()
                .is_some_and(crate::auth::jwt::looks_like_jwt)
    {
        "jwt"
    } else if request.password.is_some() || request.username.is_some() {
        "password"
    } else if request.certificate_identity.is_some() {
        "certificate"
    } else {
        "anonymous"
    };
    let authenticator = shared.authenticator();
    let outcome =
        tokio::time::timeout_at(info.connect_deadline, authenticator.authenticate(request)).await;
    shared.stats.auth(
        match &outcome {
            Ok(Ok(identity)) => match identity.via {
                AuthMethod::Password => "password",
                AuthMethod::Certificate => "certificate",
                AuthMethod::Anonymous => "anonymous",
                AuthMethod::Jwt => "jwt",
                AuthMethod::Internal => "other",
            },
            _ => tried,
        },
        crate::broker::stats::auth_outcome(&outcome),
    );
    match outcome {
        Err(_) => {
            if log_limit::event(Kind::Timeout) {
                info!(client_id = %LogStr(&client_id), %peer, "Connection closed: authentication did not finish before the connect timeout.");
            }
            Err(Refusal::Close)
        }
        Ok(Err(e)) => {
            Event::new(AuditKind::ConnectRefused)
                .listener(&info.listener.name)
                .peer(Some(peer))
                .client_id(&client_id)
                .reason(&e.to_string())
                .emit();
            Err(refusal(auth_reason(&e), e.to_string()))
        }
        Ok(Ok(identity)) => Ok(identity),
    }
}

/// Admission step: the will is a write like any PUBLISH: checked now (refused at
/// CONNECT, as Mosquitto does) and again when it is sent (the rules may change
/// meanwhile).
fn authorize_will(
    shared: &Shared,
    info: &ConnectionInfo,
    identity: &Identity,
    will: Option<&WillSpec>,
) -> Result<(), Refusal> {
    let Some(will) = will else { return Ok(()) };
    let topic = will.message.topic_str();
    if crate::acl::authorize_write(&*shared.authorizer(), identity, topic, Some(info.peer)) {
        return Ok(());
    }
    Event::new(AuditKind::WillDenied)
        .identity(identity)
        .peer(Some(info.peer))
        .emit();
    Err(refusal(
        ReasonCode::NotAuthorized,
        "not authorized to publish to the will topic",
    ))
}

/// The v5 CONNACK properties of an accepted client: the broker's limits and what it
/// changed of the client's request.
fn accepted_properties(
    settings: &BrokerSettings,
    session_expiry_interval: Option<u32>,
    assigned_client_identifier: Option<String>,
    server_keep_alive: Option<u16>,
    max_qos: Option<QoS>,
    authentication_method: Option<String>,
) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval,
        receive_max: Some(settings.receive_maximum),
        // Absent means 2; the property may only say 0 or 1.
        max_qos: max_qos.filter(|q| *q != QoS::ExactlyOnce).map(|q| q as u8),
        retain_available: Some(1),
        max_packet_size: Some(settings.max_packet_size),
        assigned_client_identifier,
        topic_alias_max: Some(settings.topic_alias_maximum),
        reason_string: None,
        user_properties: vec![],
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method,
        authentication_data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::settings::ListenerContext;

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
                jwt_auth: false,
                ..Default::default()
            }),
            certificate_identity: None,
            peer_certificates: None,
            connect_deadline: tokio::time::Instant::now(),
            traffic: Default::default(),
        };
        let run_size = std::mem::size_of_val(&run(shared.clone(), stream, info.clone()));
        let (stream, _peer) = tokio::io::duplex(64);
        let connect_size =
            std::mem::size_of_val(&connect_phase(shared.clone(), stream, info.clone()));
        eprintln!(
            "run future {run_size} B, connect phase {connect_size} B, session {} B",
            std::mem::size_of::<Session>()
        );
        assert!(
            run_size < connect_size,
            "the CONNECT phase is boxed, not part of the session future"
        );
        // The session is stored once: the last phase (`finish`) borrows it. Moving it
        // into a sub-future kept a second copy (3672 B instead of 2496 B, debug build).
        let session = std::mem::size_of::<Session>();
        assert!(
            run_size < 5 * session,
            "run future {run_size} B holds the session ({session} B) more than once"
        );
        shutdown.cancel();
    }
}
