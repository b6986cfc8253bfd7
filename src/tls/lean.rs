//! A server-side TLS stream that holds no buffer while the connection is quiet.
//!
//! tokio-rustls wraps rustls' buffered `ServerConnection`, which keeps a receive buffer of
//! at least 4 KiB for the connection's whole life (`DeframerVecBuffer::prepare_read` sizes
//! it before every read and nothing can release it). [`LeanTlsStream`] drives rustls'
//! *unbuffered* API instead (`UnbufferedServerConnection`), where the caller owns the TLS
//! bytes:
//!
//! - reads go into one per-thread scratch buffer; complete records are decrypted in place
//!   there and only a partial record (or a handshake message still being joined) is copied
//!   into the connection's own `incoming`, freed as soon as it is consumed;
//! - writes are encrypted into the same scratch buffer and written to the socket at once;
//!   only what the socket did not take is kept in `outgoing`, freed once written;
//! - decrypted bytes the reader had no room for wait in `plaintext`, freed once read.
//!
//! An idle connection thus holds the rustls connection state (record keys, sequence
//! numbers, peer certificates) and three empty `Vec`s. Everything rustls does is kept:
//! TLS 1.2 and 1.3, client certificates, alerts (a failed handshake still sends its
//! alert), key updates, session tickets and close_notify on shutdown.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest TLS record on the wire: 5-byte header + 2^14 bytes + 2048 (TLS 1.2's limit
/// for ciphertext expansion).
const MAX_RECORD: usize = 5 + 16_384 + 2_048;

/// Bytes of one socket read and of the ciphertext of one `poll_write` (per-thread buffer).
const SCRATCH_LEN: usize = 34 * 1024;

/// Plaintext encrypted per `poll_write`: two full records, so their ciphertext fits in
/// the scratch buffer with room for record overhead and a pending key update.
const WRITE_CHUNK: usize = 2 * 16_384;

/// Most TLS bytes kept while a record or handshake message is incomplete: a handshake
/// message may be up to 64 KiB (rustls' own limit) plus the record that carries its end.
const MAX_INCOMING: usize = 0xffff + MAX_RECORD;

thread_local! {
    /// The socket read / encryption buffer shared by every connection on this thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is in use, which the
/// stream's code never does, as no poll function runs inside another).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut vec![0; SCRATCH_LEN]),
    })
}

fn tls_error(e: rustls::Error) -> io::Error {
    // As tokio-rustls does, so `classify_handshake_error` can downcast it.
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Where processing of the received TLS bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every complete record was processed; more bytes are needed.
    NeedData,
    /// Both sides sent close_notify.
    Closed,
}

/// A server-side TLS connection over `IO` that frees its buffers whenever they are empty.
pub struct LeanTlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// TLS bytes received but not processed yet (an incomplete record).
    incoming: Vec<u8>,
    /// TLS bytes to send; `outgoing[out_pos..]` is still unwritten.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// Decrypted bytes not read yet; `plaintext[pt_pos..]` is unread.
    plaintext: Vec<u8>,
    pt_pos: usize,
    /// The peer sent close_notify: reads return EOF once `plaintext` is drained.
    peer_closed: bool,
    /// The socket returned EOF.
    eof: bool,
    /// close_notify queued by `poll_shutdown`.
    close_sent: bool,
    /// A TLS error ends the connection: every later read or write returns it. Boxed: the
    /// stream then fits mimalloc's 1,280-byte size class (1,536 with the error inline).
    error: Option<Box<rustls::Error>>,
}

impl<IO> std::fmt::Debug for LeanTlsStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.out_pos))
            .field("plaintext", &(self.plaintext.len() - self.pt_pos))
            .field("peer_closed", &self.peer_closed)
            .field("eof", &self.eof)
            .field("close_sent", &self.close_sent)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO> {
    /// Runs the server side of a TLS handshake on `io` with `config`.
    ///
    /// On failure the alert rustls produced (e.g. `unknown_ca`) is sent before the error
    /// is returned; the error is an `InvalidData` `io::Error` wrapping the `rustls::Error`,
    /// as with tokio-rustls. The caller bounds the time it may take.
    pub async fn accept(config: Arc<ServerConfig>, io: IO) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = LeanTlsStream {
            io,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            out_pos: 0,
            plaintext: Vec::new(),
            pt_pos: 0,
            peer_closed: false,
            eof: false,
            close_sent: false,
            error: None,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }
}

/// Where decrypted bytes go: the reader's buffer first, the rest to `rest`.
struct Sink<'a, 'b> {
    out: Option<&'a mut ReadBuf<'b>>,
    rest: &'a mut Vec<u8>,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut data: &[u8]) {
        if let Some(out) = self.out.as_deref_mut() {
            let n = out.remaining().min(data.len());
            out.put_slice(&data[..n]);
            data = &data[n..];
        }
        self.rest.extend_from_slice(data);
    }
}

type State<'c, 'i> = ConnectionState<'c, 'i, ServerConnectionData>;

/// Handles one state rustls returned while processing received bytes; `Some` ends the
/// processing round. Handshake records rustls wants sent are appended to `outgoing`.
fn step(
    state: State<'_, '_>,
    discard: &mut usize,
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
) -> Option<Result<Stop, rustls::Error>> {
    match state {
        ConnectionState::ReadTraffic(mut traffic) => {
            while let Some(record) = traffic.next_record() {
                match record {
                    Ok(record) => {
                        *discard += record.discard;
                        sink.put(record.payload);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            None
        }
        ConnectionState::EncodeTlsData(mut encode) => {
            let at = outgoing.len();
            let needed = match encode.encode(&mut []) {
                Err(EncodeError::InsufficientSize(s)) => s.required_size,
                _ => 0,
            };
            outgoing.resize(at + needed, 0);
            match encode.encode(&mut outgoing[at..]) {
                Ok(n) => {
                    outgoing.truncate(at + n);
                    None
                }
                Err(e) => {
                    outgoing.truncate(at);
                    Some(Err(rustls::Error::General(format!("TLS encode: {e}"))))
                }
            }
        }
        // The bytes are in `outgoing`, which is written, in order, before anything
        // encrypted later: as good as sent for rustls.
        ConnectionState::TransmitTlsData(transmit) => {
            transmit.done();
            None
        }
        ConnectionState::PeerClosed => {
            *peer_closed = true;
            None
        }
        ConnectionState::Closed => Some(Ok(Stop::Closed)),
        ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
            Some(Ok(Stop::NeedData))
        }
        // Early data is off (`max_early_data_size` 0); nothing else exists today.
        other => Some(Err(rustls::Error::General(format!(
            "unexpected TLS state {other:?}"
        )))),
    }
}

/// After an error, rustls hands out the alert it queued (`wants_write`) before looking at
/// any input; it must not look at the input again (the same bad record would fail again).
fn drain_alert(conn: &mut UnbufferedServerConnection, buf: &mut [u8], outgoing: &mut Vec<u8>) {
    let mut ignored = Vec::new();
    let mut sink = Sink {
        out: None,
        rest: &mut ignored,
    };
    let mut peer_closed = false;
    while conn.wants_write() {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(buf);
        match state {
            Ok(state @ ConnectionState::EncodeTlsData(_)) => {
                if step(state, &mut discard, &mut sink, outgoing, &mut peer_closed).is_some() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Processes `buf` (received TLS bytes) until rustls needs more; decrypted bytes go to
/// `sink`. Returns how many bytes from the front of `buf` are consumed; the rest must be
/// kept verbatim for the next call (rustls may hold positions in it while joining a
/// handshake message). After an error the alert for it is in `outgoing`.
fn process(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
) -> (usize, Result<Stop, rustls::Error>) {
    let mut start = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[start..]);
        let mut discard = discard;
        let stop = match state {
            Err(e) => Some(Err(e)),
            Ok(state) => step(state, &mut discard, sink, outgoing, peer_closed),
        };
        start += discard;
        match stop {
            None => {}
            Some(Err(e)) => {
                drain_alert(conn, &mut buf[start..], outgoing);
                return (start, Err(e));
            }
            Some(Ok(stop)) => return (start, Ok(stop)),
        }
    }
}

/// Ciphertext produced by one `poll_write`.
enum Cipher {
    /// The first `n` bytes of the scratch buffer.
    Scratch(usize),
    /// Too large for the scratch buffer (a pending key update made it so).
    Heap(Vec<u8>),
}

impl<IO> LeanTlsStream<IO> {
    /// The underlying socket.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The rustls connection state (protocol version, cipher suite, ALPN, ...).
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// The client's certificate chain (leaf first) as verified in the handshake; `None`
    /// when it sent none.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Heap bytes held by the stream's own buffers (not rustls' state): 0 when idle.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }

    fn fail(&self) -> Option<io::Error> {
        self.error.as_deref().cloned().map(tls_error)
    }

    /// Feeds `data` (just read from the socket) to rustls after the partial record kept
    /// from before; keeps what is still incomplete in `incoming`. Decrypted bytes go to
    /// `out` first, then to `plaintext`; an error is recorded in `error`.
    fn ingest(&mut self, data: &mut [u8], out: Option<&mut ReadBuf<'_>>) {
        let mut rest = std::mem::take(&mut self.plaintext);
        let mut sink = Sink {
            out,
            rest: &mut rest,
        };
        let result = if self.incoming.is_empty() {
            let (used, result) = process(
                &mut self.conn,
                data,
                &mut sink,
                &mut self.outgoing,
                &mut self.peer_closed,
            );
            if used < data.len() {
                self.incoming = data[used..].to_vec();
            }
            result
        } else {
            let mut incoming = std::mem::take(&mut self.incoming);
            incoming.extend_from_slice(data);
            let (used, result) = process(
                &mut self.conn,
                &mut incoming,
                &mut sink,
                &mut self.outgoing,
                &mut self.peer_closed,
            );
            if used < incoming.len() {
                incoming.drain(..used);
                self.incoming = incoming;
            }
            result
        };
        self.plaintext = rest;
        let result = match result {
            Ok(_) if self.incoming.len() > MAX_INCOMING => {
                Err(rustls::Error::General("TLS message too large".into()))
            }
            other => other,
        };
        match result {
            Ok(Stop::NeedData) => {}
            Ok(Stop::Closed) => self.peer_closed = true,
            Err(e) => {
                self.incoming = Vec::new();
                self.error = Some(Box::new(e));
            }
        }
    }

    /// Runs `f` in rustls' `WriteTraffic` state (reached by processing the kept partial
    /// record, which yields nothing new). `Ok(None)`: the connection is closed for
    /// writing (close_notify sent).
    fn write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> R,
    ) -> Result<Option<R>, rustls::Error> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut rest = std::mem::take(&mut self.plaintext);
        let mut f = Some(f);
        let mut start = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[start..]);
            let mut discard = discard;
            let mut sink = Sink {
                out: None,
                rest: &mut rest,
            };
            let stop = match state {
                Err(e) => Some(Err(e)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match f.take() {
                    Some(f) => break Ok(Some(f(&mut traffic))),
                    None => break Ok(None),
                },
                Ok(ConnectionState::Closed) => break Ok(None),
                Ok(ConnectionState::BlockedHandshake) => {
                    Some(Err(rustls::Error::HandshakeNotComplete))
                }
                Ok(state) => step(
                    state,
                    &mut discard,
                    &mut sink,
                    &mut self.outgoing,
                    &mut self.peer_closed,
                ),
            };
            start += discard;
            match stop {
                None => {}
                Some(Err(e)) => {
                    drain_alert(&mut self.conn, &mut incoming[start..], &mut self.outgoing);
                    break Err(e);
                }
                Some(Ok(_)) => break Ok(None),
            }
        };
        incoming.drain(..start);
        if !incoming.is_empty() {
            self.incoming = incoming;
        }
        self.plaintext = rest;
        if let Err(e) = &result {
            self.error = Some(Box::new(e.clone()));
        }
        result
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO> {
    /// Writes `outgoing` to the socket; frees it once everything is written.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads once from the socket into the scratch buffer and processes what came.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        out: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        with_scratch(|scratch| {
            let mut rb = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
            } else {
                self.ingest(&mut scratch[..n], out);
            }
            Poll::Ready(Ok(()))
        })
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(e) = self.fail() {
                // Send the alert; the handshake's own error is what counts.
                let _ = ready!(self.poll_flush_outgoing(cx));
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_flush_outgoing(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof || self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            // Bytes the client sent right behind its Finished (its CONNECT) land in
            // `plaintext` for the first read.
            ready!(self.poll_read_tls(cx, None))?;
        }
    }

    /// Encrypts (at most `WRITE_CHUNK` bytes of) `data` and writes as much as the socket
    /// takes; keeps the rest in `outgoing`. Returns the plaintext bytes taken.
    fn encrypt_and_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<usize> {
        let data = &data[..data.len().min(WRITE_CHUNK)];
        with_scratch(|scratch| {
            let encrypted = self.write_traffic(|traffic| match traffic.encrypt(data, scratch) {
                Ok(n) => Ok(Cipher::Scratch(n)),
                Err(EncryptError::InsufficientSize(s)) => {
                    let mut heap = vec![0; s.required_size];
                    let n = traffic.encrypt(data, &mut heap)?;
                    heap.truncate(n);
                    Ok(Cipher::Heap(heap))
                }
                Err(e) => Err(e),
            });
            let cipher = match encrypted {
                Err(e) => return Err(tls_error(e)),
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "TLS connection closed for writing",
                    ))
                }
                Ok(Some(Err(e))) => {
                    let e = rustls::Error::General(format!("TLS encrypt: {e}"));
                    self.error = Some(Box::new(e.clone()));
                    return Err(tls_error(e));
                }
                Ok(Some(Ok(cipher))) => cipher,
            };
            let cipher: &[u8] = match &cipher {
                Cipher::Scratch(n) => &scratch[..*n],
                Cipher::Heap(v) => v,
            };
            // What rustls queued before (already in `outgoing`) must go first.
            let mut sent = 0;
            if self.outgoing.is_empty() {
                while sent < cipher.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &cipher[sent..]) {
                        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => break,
                    }
                }
            }
            self.outgoing.extend_from_slice(&cipher[sent..]);
            Ok(data.len())
        })
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LeanTlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.pt_pos < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.pt_pos);
                buf.put_slice(&this.plaintext[this.pt_pos..this.pt_pos + n]);
                this.pt_pos += n;
                if this.pt_pos == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.pt_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.fail() {
                return Poll::Ready(Err(e));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                let what = if this.incoming.is_empty() {
                    "peer closed connection without sending TLS close_notify"
                } else {
                    "peer closed connection in the middle of a TLS record"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
            // Send what rustls queued while reading (a key update, an alert) on the way.
            if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            ready!(this.poll_read_tls(cx, Some(buf)))?;
            if buf.filled().len() > before {
                if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LeanTlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.fail() {
            return Poll::Ready(Err(e));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Poll::Ready(this.encrypt_and_send(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends close_notify (once), then shuts down the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.error.is_none() {
            this.close_sent = true;
            let mut alert = Vec::new();
            let queued = this.write_traffic(|traffic| {
                if let Err(EncryptError::InsufficientSize(s)) = traffic.queue_close_notify(&mut [])
                {
                    alert.resize(s.required_size, 0);
                }
                traffic.queue_close_notify(&mut alert)
            });
            if let Ok(Some(Ok(n))) = queued {
                alert.truncate(n);
                this.outgoing.extend_from_slice(&alert);
            }
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "lean_tests.rs"]
mod tests;
