//! The byte stream a listener hands to the broker core: plain TCP, TLS over TCP
//! (the lean TLS stream of `crate::tls`), or WebSocket over either (`crate::edge::ws`).
//! It only forwards reads and writes and must never look at MQTT bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::edge::metrics::ListenerCounters;
use crate::edge::ws::WsStream;
use crate::tls;

/// A client byte stream: plain TCP, TLS over TCP, or WebSocket over one of them.
pub struct ClientStream {
    inner: Transport,
    /// The listener's byte counters (the outermost stream only: MQTT bytes).
    counters: Option<Arc<ListenerCounters>>,
}

impl ClientStream {
    /// A plain TCP stream.
    pub(crate) fn tcp(socket: TcpStream) -> Self {
        ClientStream {
            inner: Transport::Tcp(socket),
            counters: None,
        }
    }

    /// A TLS stream after its handshake.
    pub(crate) fn tls(stream: tls::LeanTlsStream<TcpStream>) -> Self {
        ClientStream {
            inner: Transport::Tls(Box::new(stream)),
            counters: None,
        }
    }

    /// A WebSocket stream after its upgrade, over a TCP or TLS stream.
    pub(crate) fn ws(stream: WsStream<ClientStream>) -> Self {
        ClientStream {
            inner: Transport::Ws(Box::new(stream)),
            counters: None,
        }
    }

    /// Count the bytes read and written through this stream in `counters`.
    pub(crate) fn counted(mut self, counters: Arc<ListenerCounters>) -> Self {
        self.counters = Some(counters);
        self
    }
}

enum Transport {
    Tcp(TcpStream),
    Tls(Box<tls::LeanTlsStream<TcpStream>>),
    Ws(Box<WsStream<ClientStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.inner {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let (Some(c), Poll::Ready(Ok(()))) = (&this.counters, &poll) {
            let n = buf.filled().len().saturating_sub(before) as u64;
            c.bytes_received.fetch_add(n, Ordering::Relaxed);
        }
        poll
    }
}

fn count_sent(counters: &Option<Arc<ListenerCounters>>, poll: &Poll<io::Result<usize>>) {
    if let (Some(c), Poll::Ready(Ok(n))) = (counters, poll) {
        c.bytes_sent.fetch_add(*n as u64, Ordering::Relaxed);
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.inner {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        count_sent(&this.counters, &poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.inner {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::Ws(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        count_sent(&this.counters, &poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Ws(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.inner {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
