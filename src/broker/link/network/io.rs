//! Socket I/O of a network connection with its limits: buffer sizes, the write
//! timeout, the last write before a close, and the drain after the broker's own
//! DISCONNECT. It moves bytes and counts them; it must never decode or decide.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::broker::shared::Shared;

/// Initial read buffer; it grows for bursts and is given back once idle.
pub(super) const READ_BUFFER: usize = 1024;

/// Write buffers above this capacity are released when empty, so a burst does not pin memory.
pub(super) const SHRINK_ABOVE: usize = 64 * 1024;

/// Encoded bytes gathered from the outbox before they are written: a busy connection
/// writes in steps of about this size, so its write buffer stays under `SHRINK_ABOVE`
/// and is reused from write to write (until the connection goes quiet) instead of
/// growing from nothing and being released after every write; a slow reader's backlog
/// stays in the outbox until the socket takes it.
pub(super) const WRITE_STEP: usize = 32 * 1024;

/// Largest single read; the read size adapts between `READ_BUFFER` and this, and an
/// empty read buffer more than four times the current read size is released.
pub(super) const MAX_READ: usize = 32 * 1024;

/// A client that accepts no bytes for this long is cut off (its socket buffer is full).
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection with no traffic for this long gives back its read and write buffers
/// (idle connections are the common case: memory per connection).
pub(super) const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// After the broker's own DISCONNECT, what the client still sends is read and discarded
/// for at most this long: closing with unread bytes makes the kernel reset the
/// connection, which can destroy the DISCONNECT before the client reads it.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Write and flush `buf`; false when the connection is unusable (error, timeout, or
/// shutdown while the client is not reading), since a partial write would leave the
/// byte stream misframed.
pub(super) async fn write_now<S: AsyncWrite + Unpin>(
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
        // The write first: what can be written at once is written even during shutdown.
        biased;
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
pub(super) async fn write_last<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    buf: &mut BytesMut,
) {
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

/// Read and discard until EOF, an error or `DRAIN_LIMIT`: the client reads the broker's
/// last packet and the FIN instead of a reset caused by its unread bytes.
pub(super) async fn discard_until_eof<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) {
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
