//! Lightweight raw MQTT 3.1.1 connections (plain TCP, tokio-rustls, or WebSocket over
//! tokio-rustls with subprotocol `mqtt` on `/mqtt`) for the
//! connect-rate, idle-memory and power-cut measurements: a hand-written
//! CONNECT, a 4-byte CONNACK read, optionally DISCONNECT. Thousands of these
//! cost far less in the load generator than rumqttc event loops. It must
//! never be used to judge protocol correctness: it only checks CONNACK 0.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Errors of one raw connection attempt.
#[derive(Debug, Error)]
pub enum ConnError {
    /// TCP or TLS failed.
    #[error("{stage} to {addr} failed: {source}")]
    Io {
        stage: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The broker answered with something other than CONNACK 0.
    #[error("broker at {addr} refused CONNECT: CONNACK bytes {bytes:02x?} (5 = not authorized, 4 = bad credentials)")]
    Refused { addr: SocketAddr, bytes: [u8; 4] },
    /// Not a single connect of a batch succeeded.
    #[error("all {count} connects failed; first error: {first}")]
    AllFailed { count: usize, first: String },
    /// The whole batch took too long.
    #[error("connect batch timed out after {0} s")]
    Timeout(u64),
}

/// A connected client socket, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

/// How to reach a listener.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
    /// MQTT over WebSocket (on top of `tls`).
    pub ws: bool,
}

/// Credentials for CONNECT.
#[derive(Clone, Debug)]
pub struct Login {
    pub user: String,
    pub pass: String,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("invariant: bench strings are short");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encode an MQTT 3.1.1 CONNECT with clean session.
pub fn connect_packet(client_id: &str, keepalive: u16, login: Option<&Login>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, "MQTT");
    body.push(4);
    let mut flags = 0x02u8;
    if login.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    put_str(&mut body, client_id);
    if let Some(l) = login {
        put_str(&mut body, &l.user);
        put_str(&mut body, &l.pass);
    }
    let mut pkt = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        pkt.push(byte);
        if len == 0 {
            break;
        }
    }
    pkt.extend_from_slice(&body);
    pkt
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    addr: SocketAddr,
    connect: &[u8],
) -> Result<(), ConnError> {
    let io = |stage| {
        move |source| ConnError::Io {
            stage,
            addr,
            source,
        }
    };
    s.write_all(connect).await.map_err(io("CONNECT write"))?;
    s.flush().await.map_err(io("CONNECT flush"))?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.map_err(io("CONNACK read"))?;
    if ack != [0x20, 0x02, 0x00, 0x00] {
        return Err(ConnError::Refused { addr, bytes: ack });
    }
    Ok(())
}

/// Open one connection and complete CONNECT/CONNACK.
pub async fn open(
    target: &Target,
    client_id: &str,
    keepalive: u16,
    login: Option<&Login>,
) -> Result<Stream, ConnError> {
    let addr = target.addr;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnError::Io {
            stage: "TCP connect",
            addr,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let connect = connect_packet(client_id, keepalive, login);
    match &target.tls {
        None => {
            let mut s = tcp;
            handshake(&mut s, addr, &connect).await?;
            Ok(Stream::Plain(s))
        }
        Some(tls) => {
            let name = ServerName::IpAddress(addr.ip().into());
            let mut s = tls
                .connect(name, tcp)
                .await
                .map_err(|source| ConnError::Io {
                    stage: "TLS handshake",
                    addr,
                    source,
                })?;
            if target.ws {
                return ws_handshake(s, addr, connect).await;
            }
            handshake(&mut s, addr, &connect).await?;
            Ok(Stream::Tls(Box::new(s)))
        }
    }
}

/// The WebSocket upgrade, then CONNECT and CONNACK in binary messages.
async fn ws_handshake(
    tls: TlsStream<TcpStream>,
    addr: SocketAddr,
    connect: Vec<u8>,
) -> Result<Stream, ConnError> {
    use futures_util::{SinkExt, StreamExt};
    let io = |stage: &'static str| {
        move |e: tokio_tungstenite::tungstenite::Error| ConnError::Io {
            stage,
            addr,
            source: io::Error::other(e.to_string()),
        }
    };
    let mut request = format!("wss://{addr}/mqtt")
        .into_client_request()
        .map_err(io("WebSocket request"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(io("WebSocket upgrade"))?;
    ws.send(Message::binary(connect))
        .await
        .map_err(io("CONNECT write"))?;
    let mut ack = Vec::new();
    while ack.len() < 4 {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => ack.extend_from_slice(&b),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(io("CONNACK read")(e)),
            None => {
                return Err(ConnError::Io {
                    stage: "CONNACK read",
                    addr,
                    source: io::ErrorKind::UnexpectedEof.into(),
                })
            }
        }
    }
    if ack[..4] != [0x20, 0x02, 0x00, 0x00] {
        return Err(ConnError::Refused {
            addr,
            bytes: [ack[0], ack[1], ack[2], ack[3]],
        });
    }
    Ok(Stream::Wss(Box::new(ws)))
}

/// Send DISCONNECT and close.
pub async fn close(stream: Stream) {
    match stream {
        Stream::Plain(mut s) => {
            let _ = s.write_all(&[0xE0, 0x00]).await;
            let _ = s.shutdown().await;
        }
        Stream::Tls(mut s) => {
            let _ = s.write_all(&[0xE0, 0x00]).await;
            let _ = s.shutdown().await;
        }
        Stream::Wss(mut s) => {
            use futures_util::SinkExt;
            let _ = s.send(Message::binary(vec![0xE0, 0x00])).await;
            let _ = SinkExt::close(&mut *s).await;
        }
    }
}

/// Result of a connect batch.
#[derive(Clone, Debug)]
pub struct Batch {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Batch {
    /// Successful connects per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Run `count` connect + CONNACK (+ DISCONNECT when `hold` is false) cycles
/// with at most `concurrency` in flight; `login(i)` gives credentials of
/// client `i`. When `hold` is true the open streams are returned.
pub async fn batch(
    target: &Target,
    count: usize,
    concurrency: usize,
    prefix: &str,
    login: impl Fn(usize) -> Option<Login>,
    hold: bool,
    limit: Duration,
) -> Result<(Batch, Vec<Stream>), ConnError> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..count {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("invariant: semaphore never closed");
        let target = target.clone();
        let id = format!("{prefix}-{i}");
        let login = login(i);
        let failed = failed.clone();
        tasks.spawn(async move {
            let r = open(&target, &id, 300, login.as_ref()).await;
            drop(permit);
            match r {
                Ok(s) if hold => Ok(Some(s)),
                Ok(s) => {
                    close(s).await;
                    Ok(None)
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    Err(e.to_string())
                }
            }
        });
    }
    let mut streams = Vec::new();
    let mut first_error = None;
    let mut ok = 0;
    let collect = async {
        while let Some(res) = tasks.join_next().await {
            match res {
                Ok(Ok(Some(s))) => {
                    ok += 1;
                    streams.push(s);
                }
                Ok(Ok(None)) => ok += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    };
    if tokio::time::timeout(limit, collect).await.is_err() {
        return Err(ConnError::Timeout(limit.as_secs()));
    }
    let elapsed = start.elapsed();
    if ok == 0 && count > 0 {
        return Err(ConnError::AllFailed {
            count,
            first: first_error.unwrap_or_default(),
        });
    }
    Ok((
        Batch {
            ok,
            failed: failed.load(Ordering::Relaxed),
            elapsed,
            first_error,
        },
        streams,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311_with_clean_session() {
        let p = connect_packet("ab", 300, None);
        assert_eq!(
            p,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x01, 0x2C, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn connect_packet_carries_credentials_and_long_lengths() {
        let login = Login {
            user: "u".into(),
            pass: "p".repeat(200),
        };
        let p = connect_packet("c", 60, Some(&login));
        // remaining length 10 + 3 + 3 + 202 = 218 -> two varint bytes.
        assert_eq!(&p[..3], &[0x10, 218 - 128 + 0x80, 1]);
        assert_eq!(p[3 + 7], 0x02 | 0x80 | 0x40);
        assert_eq!(p.len(), 3 + 218);
    }
}
