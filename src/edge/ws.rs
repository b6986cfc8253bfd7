//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the server side of the HTTP
//! upgrade (path, `Origin` allowlist, subprotocol `mqtt` or the old `mqttv3.1`) and a
//! byte-stream adapter over the binary messages, so the broker core reads and writes
//! MQTT exactly as over TCP: one MQTT packet may span several WebSocket messages and one
//! message may carry several packets. Frames and messages are bounded by the broker's
//! `max_packet_size`; the upgrade request by tungstenite (64 KiB) and by the listener's
//! connect deadline. It must never look at MQTT bytes and never accept text frames.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::telemetry::limit::LogStr;

/// Subprotocols accepted, in order of preference: `mqtt` (MQTT 3.1.1 and 5) and
/// `mqttv3.1` (clients written for MQTT 3.1).
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Longest `path` a listener may configure.
pub const PATH_MAX: usize = 256;

/// Bytes tungstenite reads from the socket at a time (its default, 128 KiB, is allocated
/// eagerly per connection; MQTT packets of devices are small).
const READ_BUFFER: usize = 8 * 1024;

/// What the upgrade of one WebSocket listener checks; fixed per listener state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// The only HTTP path upgraded (the query string is ignored).
    pub path: String,
    /// Browser origins admitted, lower case; a request without `Origin` is a
    /// non-browser client and always admitted.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket frame and message accepted: the broker's `max_packet_size`.
    pub max_message_size: usize,
}

impl WebSocketSettings {
    /// Settings for a listener; origins are compared case-insensitively.
    pub fn new(path: &str, allowed_origins: &[String], max_packet_size: u32) -> Self {
        WebSocketSettings {
            path: path.to_string(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            max_message_size: max_packet_size as usize,
        }
    }

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }

    /// The answer to an upgrade request: the response with the chosen subprotocol, or
    /// the HTTP refusal whose body says why.
    fn answer(
        &self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, (StatusCode, String)> {
        if request.uri().path() != self.path {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "path {:?} is not this listener's WebSocket path",
                    LogStr(request.uri().path())
                ),
            ));
        }
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let admitted = origin.to_str().is_ok_and(|o| {
                self.allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
            if !admitted {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "origin {} is not in allowed_origins",
                        LogStr::lossy(origin.as_bytes())
                    ),
                ));
            }
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "subprotocol {:?} offered; MQTT over WebSocket needs \"mqtt\" (or \"mqttv3.1\")",
                    LogStr(&offered.join(", "))
                ),
            ));
        };
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(chosen),
        );
        Ok(response)
    }
}

/// The HTTP answer of a refused upgrade; the body says why.
fn refusal((status, reason): (StatusCode, String)) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason));
    *response.status_mut() = status;
    response
}

/// Why an upgrade did not complete, for the listener's log line.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The request was answered with an HTTP error (wrong path, origin, subprotocol).
    #[error("WebSocket upgrade refused with HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status sent.
        status: u16,
        /// What was wrong.
        reason: String,
    },
    /// Not a valid upgrade request, too large, or the socket failed.
    #[error("WebSocket upgrade failed: {0}")]
    Failed(String),
}

/// Answer the HTTP upgrade on `stream` and return the WebSocket byte stream.
pub async fn accept<S>(stream: S, settings: &WebSocketSettings) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // tungstenite's callback type returns its (large) HTTP response as the error.
    #[allow(clippy::result_large_err)]
    let callback =
        |request: &Request, response: Response| settings.answer(request, response).map_err(refusal);
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(settings.config()))
        .await
    {
        Ok(inner) => Ok(WsStream {
            inner,
            pending: Bytes::new(),
            ended: false,
        }),
        Err(WsError::Http(response)) => Err(UpgradeError::Refused {
            status: response.status().as_u16(),
            reason: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(e) => Err(UpgradeError::Failed(e.to_string())),
    }
}

/// Whether `path` can be a listener's WebSocket path; the error completes a sentence.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/' (e.g. \"/mqtt\")".to_string());
    }
    if path.len() > PATH_MAX {
        return Err(format!("is longer than {PATH_MAX} bytes"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err(
            "may only hold visible ASCII without '?' or '#' (a path, no query or fragment)"
                .to_string(),
        );
    }
    Ok(())
}

/// Whether `origin` is a browser origin as browsers send it: `http(s)://host[:port]`.
pub fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with https:// or http:// (an origin as the browser sends it)")?;
    if rest.is_empty()
        || rest.len() > 253 + 6
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err("must be scheme://host[:port] with no path, not even a trailing '/' (e.g. \"https://dashboard.example.com\")".to_string());
    }
    Ok(())
}

/// MQTT bytes over a WebSocket: reads concatenate binary messages, each write is sent as
/// one binary message. Ping, pong and close are handled by tungstenite; a text message
/// ends the connection (MQTT 5.0 [MQTT-6.0.0-1]).
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// The peer closed (or the stream failed): reads return end of file.
    ended: bool,
}

fn read_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::Capacity(e) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket frame over max_packet_size: {e}"),
        ),
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket protocol error: {other}"),
        ),
    }
}

fn write_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::other(format!("WebSocket write failed: {other}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => this.pending = bytes,
                // Pings are answered by tungstenite; a close is acknowledged by it and
                // followed by the end of the stream.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.ended = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket text message: MQTT travels in binary messages only",
                    )));
                }
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Err(read_error(e)));
                }
                None => this.ended = true,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(write_error)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(write_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    /// The broker writes a batch of packets with one vectored write: one message.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(write_error)?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let mut message = Vec::with_capacity(len);
        for b in bufs {
            message.extend_from_slice(b);
        }
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(message.into()))
            .map_err(write_error)?;
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(write_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_close(cx)
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_visible_ascii_without_query() {
        assert!(check_path("/mqtt").is_ok());
        assert!(check_path("/a/b-c_d").is_ok());
        assert!(check_path("mqtt").is_err());
        assert!(check_path("/mqtt?x=1").is_err());
        assert!(check_path("/m qtt").is_err());
        assert!(check_path(&format!("/{}", "a".repeat(PATH_MAX))).is_err());
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert!(check_origin("https://dash.example.com").is_ok());
        assert!(check_origin("http://localhost:8080").is_ok());
        assert!(check_origin("http://[::1]:8080").is_ok());
        assert!(check_origin("dash.example.com").is_err());
        assert!(check_origin("https://dash.example.com/").is_err());
        assert!(check_origin("https://").is_err());
        assert!(check_origin("*").is_err());
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    fn settings() -> WebSocketSettings {
        WebSocketSettings::new("/mqtt", &["https://Dash.example.com".to_string()], 1024)
    }

    #[test]
    fn upgrade_chooses_mqtt_first_and_refuses_other_subprotocols() {
        let s = settings();
        let ok = s
            .answer(
                &request("/mqtt?x", &[("Sec-WebSocket-Protocol", "mqttv3.1, mqtt")]),
                Response::new(()),
            )
            .expect("admitted");
        assert_eq!(ok.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqtt");
        let old = s
            .answer(
                &request("/mqtt", &[("Sec-WebSocket-Protocol", "mqttv3.1")]),
                Response::new(()),
            )
            .expect("admitted");
        assert_eq!(old.headers()[header::SEC_WEBSOCKET_PROTOCOL], "mqttv3.1");
        for offered in [&[("Sec-WebSocket-Protocol", "chat")][..], &[]] {
            let refused = s
                .answer(&request("/mqtt", offered), Response::new(()))
                .expect_err("refused");
            assert_eq!(refused.0, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn upgrade_checks_path_and_origin() {
        let s = settings();
        let mqtt = ("Sec-WebSocket-Protocol", "mqtt");
        let wrong_path = s
            .answer(&request("/other", &[mqtt]), Response::new(()))
            .expect_err("refused");
        assert_eq!(wrong_path.0, StatusCode::NOT_FOUND);
        let wrong_origin = s
            .answer(
                &request("/mqtt", &[mqtt, ("Origin", "https://evil.example.com")]),
                Response::new(()),
            )
            .expect_err("refused");
        assert_eq!(wrong_origin.0, StatusCode::FORBIDDEN);
        s.answer(
            &request("/mqtt", &[mqtt, ("Origin", "https://dash.EXAMPLE.com")]),
            Response::new(()),
        )
        .expect("listed origin, any case");
        s.answer(&request("/mqtt", &[mqtt]), Response::new(()))
            .expect("no Origin: not a browser");
    }
}
