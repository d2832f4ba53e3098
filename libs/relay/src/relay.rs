//! Relays ttrpc frames between a downstream connection (the side that sends
//! requests) and an upstream one (the side that answers).
//!
//! Frames are moved whole and in order per direction; many requests may be
//! in flight and a silent connection is normal (no idle or per-request
//! timeout here). The relay tracks which request stream ids await a
//! response, so that when the upstream goes away each waiting caller gets an
//! `UNAVAILABLE` error instead of hanging — also when the owner of the
//! relay ends it ([`relay_connection_until`], e.g. the sandbox is being
//! stopped). A frame over the size limit is read past (not buffered) and
//! answered with `RESOURCE_EXHAUSTED`; the connection stays usable. When a
//! relay ends, both sides are shut down (a TLS side with `close_notify`).

use crate::frame::{read_header, FrameHeader, MessageType, HEADER_LEN};
use crate::rewrite::{self, RequestRewriter};
use crate::status::error_frame;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadHalf, WriteHalf,
};
use tokio::sync::Mutex;
use ttrpc::Code;

/// Buffers larger than this are released after use, so one big frame does
/// not pin memory for the life of a connection.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long closing a side (flushing, TLS close_notify) may take.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a relay behaves.
#[derive(Clone)]
pub struct RelayOptions {
    /// Largest frame payload relayed in either direction.
    pub max_payload: u32,
    /// Names the connection in logs (e.g. the sandbox id).
    pub label: String,
    /// Counts relayed bytes, shared across connections (for metrics).
    pub counters: Arc<RelayCounters>,
}

impl RelayOptions {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            max_payload: crate::frame::DEFAULT_MAX_PAYLOAD,
            label: label.into(),
            counters: Arc::new(RelayCounters::default()),
        }
    }
}

/// Byte and connection counters.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_downstream: AtomicU64,
    pub active_connections: AtomicU64,
    /// Connections that ended with a read or write error on the
    /// downstream side (e.g. a TLS peer that hung up without
    /// `close_notify`), as opposed to a clean close.
    pub downstream_errors: AtomicU64,
}

/// Why a relayed connection ended.
#[derive(Debug)]
pub enum RelayOutcome {
    /// The downstream side closed its connection.
    DownstreamClosed,
    /// The upstream side closed; waiting callers were failed.
    UpstreamClosed { failed_requests: usize },
    /// Reading or writing downstream failed.
    DownstreamError(std::io::Error),
    /// Reading or writing upstream failed; waiting callers were failed.
    UpstreamError {
        error: std::io::Error,
        failed_requests: usize,
    },
    /// The relay's owner ended it (see [`relay_connection_until`]);
    /// waiting callers were failed with the owner's reason.
    Stopped { failed_requests: usize },
}

enum End {
    DownClosed,
    DownErr(std::io::Error),
    UpClosed,
    UpErr(std::io::Error),
    Stopped(String),
}

type Pending = Arc<StdMutex<HashSet<u32>>>;

struct Shared<D> {
    down_writer: Mutex<WriteHalf<D>>,
    /// Set while a frame is being written downstream; still set after the
    /// writing future was dropped mid-frame, so nothing more is written on
    /// a torn stream.
    down_torn: AtomicBool,
    pending: Pending,
    opts: RelayOptions,
}

impl<D: AsyncWrite> Shared<D> {
    async fn write_down(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut w = self.down_writer.lock().await;
        if self.down_torn.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("a frame to the caller was cut short"));
        }
        self.down_torn.store(true, Ordering::Relaxed);
        w.write_all(frame).await?;
        w.flush().await?;
        self.down_torn.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn pending_insert(&self, id: u32) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id);
        }
    }

    fn pending_remove(&self, id: u32) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    fn pending_take(&self) -> Vec<u32> {
        match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Relays frames until either side ends, then closes both.
pub async fn relay_connection<D, U>(
    down: D,
    up: U,
    opts: RelayOptions,
    rewriter: Arc<dyn RequestRewriter>,
) -> RelayOutcome
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    relay_connection_until(down, up, opts, rewriter, std::future::pending()).await
}

/// [`relay_connection`] that also ends when `stop` completes: every request
/// still waiting for its answer is then answered with `UNAVAILABLE` and
/// the reason `stop` returned, and both sides are closed.
pub async fn relay_connection_until<D, U, S>(
    down: D,
    up: U,
    opts: RelayOptions,
    rewriter: Arc<dyn RequestRewriter>,
    stop: S,
) -> RelayOutcome
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
    S: std::future::Future<Output = String>,
{
    let (down_r, down_w) = tokio::io::split(down);
    let (up_r, mut up_w) = tokio::io::split(up);
    let shared = Arc::new(Shared {
        down_writer: Mutex::new(down_w),
        down_torn: AtomicBool::new(false),
        pending: Arc::new(StdMutex::new(HashSet::new())),
        opts,
    });
    shared
        .opts
        .counters
        .active_connections
        .fetch_add(1, Ordering::Relaxed);

    let end = tokio::select! {
        e = requests(down_r, &mut up_w, &shared, rewriter.as_ref()) => e,
        e = responses(up_r, &shared) => e,
        why = stop => End::Stopped(why),
    };

    let outcome = match end {
        End::DownClosed => RelayOutcome::DownstreamClosed,
        End::DownErr(e) => {
            shared
                .opts
                .counters
                .downstream_errors
                .fetch_add(1, Ordering::Relaxed);
            RelayOutcome::DownstreamError(e)
        }
        End::UpClosed => RelayOutcome::UpstreamClosed {
            failed_requests: fail_pending(&shared, "the pod VM closed the connection").await,
        },
        End::UpErr(error) => {
            let why = format!("the connection to the pod VM failed: {error}");
            RelayOutcome::UpstreamError {
                failed_requests: fail_pending(&shared, &why).await,
                error,
            }
        }
        End::Stopped(why) => RelayOutcome::Stopped {
            failed_requests: fail_pending(&shared, &why).await,
        },
    };
    // Close both sides properly: a TLS side sends close_notify, so its peer
    // sees a clean end rather than a truncated stream. Bounded: a peer that
    // reads nothing must not hold the relay.
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        shared.down_writer.lock().await.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, up_w.shutdown()).await;
    shared
        .opts
        .counters
        .active_connections
        .fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(label = %shared.opts.label, ?outcome, "relayed connection ended");
    outcome
}

async fn fail_pending<D: AsyncWrite>(shared: &Shared<D>, why: &str) -> usize {
    let ids = shared.pending_take();
    for id in &ids {
        if shared
            .write_down(&error_frame(*id, Code::UNAVAILABLE, why))
            .await
            .is_err()
        {
            break;
        }
    }
    if !ids.is_empty() {
        tracing::warn!(label = %shared.opts.label, failed = ids.len(), "{why}; failed the requests still waiting");
    }
    ids.len()
}

/// Reads past `len` payload bytes without keeping them.
async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads one payload after `h` into `buf` (header included at the front),
/// copying from the reader's buffer as bytes arrive: the buffer grows with
/// what was actually received, never to the announced length up front, so
/// a peer that sends a header announcing 4 MiB and then nothing costs no
/// more memory than it sent.
async fn read_frame<R: AsyncBufRead + Unpin>(
    r: &mut R,
    h: &FrameHeader,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    if buf.capacity() > KEEP_BUFFER_BYTES && (h.length as usize) < KEEP_BUFFER_BYTES {
        *buf = Vec::new();
    }
    buf.clear();
    buf.extend_from_slice(&h.encode());
    let want = h.length as usize;
    // Room for a typical frame at once (capacity only: no page is touched
    // before bytes arrive); larger ones grow as they come.
    buf.reserve(want.min(KEEP_BUFFER_BYTES));
    let mut left = want;
    while left > 0 {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside a frame ({} of {want} payload bytes)",
                    want - left
                ),
            ));
        }
        let n = chunk.len().min(left);
        buf.extend_from_slice(&chunk[..n]);
        r.consume(n);
        left -= n;
    }
    Ok(())
}

/// What the next frame on a connection turned out to be.
enum Next {
    /// A frame within the limit, in the buffer (header included).
    Frame(FrameHeader),
    /// A frame over the limit; its payload is still to be read past
    /// (after the caller answered, so a sender of a huge frame hears at
    /// once rather than after it sent gigabytes).
    Oversized(FrameHeader),
    /// The peer closed the connection between frames.
    Closed,
}

/// Reads the next frame into `buf`, or only its header when its payload
/// is over `max` (both directions enforce the limit the same way).
async fn next_frame<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: u32,
    buf: &mut Vec<u8>,
) -> std::io::Result<Next> {
    let Some(h) = read_header(r).await? else {
        return Ok(Next::Closed);
    };
    if h.length > max {
        return Ok(Next::Oversized(h));
    }
    read_frame(r, &h, buf).await?;
    Ok(Next::Frame(h))
}

/// The error answer for a refused oversized request or response.
fn oversized_answer(what: &str, h: &FrameHeader, max: u32) -> Vec<u8> {
    let msg = format!(
        "{what} of {} bytes exceeds the relay's frame limit of {max} bytes",
        h.length
    );
    error_frame(h.stream_id, Code::RESOURCE_EXHAUSTED, &msg)
}

/// Downstream → upstream: requests (and stream data) from the caller.
async fn requests<D, U>(
    down_r: ReadHalf<D>,
    up_w: &mut WriteHalf<U>,
    shared: &Shared<D>,
    rewriter: &dyn RequestRewriter,
) -> End
where
    D: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, down_r);
    let mut buf = Vec::new();
    let max = shared.opts.max_payload;
    let mut warned_unknown = false;
    loop {
        let h = match next_frame(&mut r, max, &mut buf).await {
            Ok(Next::Frame(h)) => h,
            Ok(Next::Closed) => return End::DownClosed,
            Ok(Next::Oversized(h)) => {
                tracing::warn!(label = %shared.opts.label, stream = h.stream_id, bytes = h.length, limit = max,
                    "refused an oversized frame from the caller");
                if h.kind == MessageType::Request {
                    if let Err(e) = shared
                        .write_down(&oversized_answer("request", &h, max))
                        .await
                    {
                        return End::DownErr(e);
                    }
                }
                if let Err(e) = discard(&mut r, h.length).await {
                    return End::DownErr(e);
                }
                continue;
            }
            Err(e) => return End::DownErr(e),
        };
        if let MessageType::Other(t) = h.kind {
            if !warned_unknown {
                warned_unknown = true;
                tracing::warn!(label = %shared.opts.label, stream = h.stream_id, message_type = t,
                    "frame of a message type ttrpc does not define from the caller; passed on unchanged (ttrpc peers ignore such frames)");
            }
        }
        if h.kind == MessageType::Request {
            match rewrite::apply(rewriter, &buf[HEADER_LEN..]) {
                Ok(None) => {}
                Ok(Some(new_payload)) => {
                    buf = crate::frame::encode_frame(h.stream_id, h.kind, h.flags, &new_payload);
                }
                Err(e) => {
                    tracing::warn!(label = %shared.opts.label, stream = h.stream_id, error = %e,
                        "refusing a request that could not be rewritten");
                    let f = error_frame(h.stream_id, Code::INVALID_ARGUMENT, &e.to_string());
                    if let Err(e) = shared.write_down(&f).await {
                        return End::DownErr(e);
                    }
                    continue;
                }
            }
            shared.pending_insert(h.stream_id);
        }
        if let Err(e) = up_w.write_all(&buf).await {
            return End::UpErr(e);
        }
        if let Err(e) = up_w.flush().await {
            return End::UpErr(e);
        }
        shared
            .opts
            .counters
            .bytes_to_upstream
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
}

/// Upstream → downstream: responses (and stream data) from the answering side.
async fn responses<D, U>(up_r: ReadHalf<U>, shared: &Shared<D>) -> End
where
    D: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let mut r = BufReader::with_capacity(READ_BUFFER_BYTES, up_r);
    let mut buf = Vec::new();
    let max = shared.opts.max_payload;
    loop {
        let h = match next_frame(&mut r, max, &mut buf).await {
            Ok(Next::Frame(h)) => h,
            Ok(Next::Closed) => return End::UpClosed,
            Ok(Next::Oversized(h)) => {
                tracing::warn!(label = %shared.opts.label, stream = h.stream_id, bytes = h.length, limit = max,
                    "dropped an oversized frame from the pod VM");
                if h.kind == MessageType::Response {
                    shared.pending_remove(h.stream_id);
                    if let Err(e) = shared
                        .write_down(&oversized_answer("response", &h, max))
                        .await
                    {
                        return End::DownErr(e);
                    }
                }
                if let Err(e) = discard(&mut r, h.length).await {
                    return End::UpErr(e);
                }
                continue;
            }
            Err(e) => return End::UpErr(e),
        };
        if h.kind == MessageType::Response {
            shared.pending_remove(h.stream_id);
        }
        if let Err(e) = shared.write_down(&buf).await {
            return End::DownErr(e);
        }
        shared
            .opts
            .counters
            .bytes_to_downstream
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, read_header};
    use crate::rewrite::NoRewrite;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A frame announcing more than the limit is answered as soon as its
    /// header arrives (not after its payload), and the connection keeps
    /// reading past the payload as it comes.
    #[tokio::test]
    async fn an_oversized_request_is_answered_before_its_payload_arrives() {
        let (mut shim, relay_down) = tokio::io::duplex(1 << 16);
        let (relay_up, mut agent) = tokio::io::duplex(1 << 16);
        let mut opts = RelayOptions::new("t");
        opts.max_payload = 1024;
        let relay = tokio::spawn(relay_connection(
            relay_down,
            relay_up,
            opts,
            Arc::new(NoRewrite),
        ));
        let huge = FrameHeader {
            length: u32::MAX,
            stream_id: 3,
            kind: MessageType::Request,
            flags: 0,
        };
        shim.write_all(&huge.encode()).await.unwrap();
        let h = tokio::time::timeout(Duration::from_secs(5), read_header(&mut shim))
            .await
            .expect("answered without waiting for 4 GiB")
            .unwrap()
            .unwrap();
        assert_eq!(h.stream_id, 3);
        assert_eq!(h.kind, MessageType::Response);
        let mut body = vec![0u8; h.length as usize];
        shim.read_exact(&mut body).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("exceeds the relay's frame limit"), "{text}");
        // Part of the payload, then the shim gives up: the relay ends.
        shim.write_all(&[0u8; 4096]).await.unwrap();
        drop(shim);
        let outcome = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("relay ends when the shim goes")
            .unwrap();
        assert!(
            matches!(outcome, RelayOutcome::DownstreamError(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{outcome:?}"
        );
        // Nothing of it reached the agent.
        let mut got = Vec::new();
        agent.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{} bytes reached the agent", got.len());
    }

    /// A frame cut short ends the connection with an error naming it.
    #[tokio::test]
    async fn a_truncated_frame_ends_the_connection() {
        let (mut shim, relay_down) = tokio::io::duplex(1 << 16);
        let (relay_up, _agent) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay_connection(
            relay_down,
            relay_up,
            RelayOptions::new("t"),
            Arc::new(NoRewrite),
        ));
        let frame = encode_frame(1, MessageType::Request, 0, &[7u8; 100]);
        shim.write_all(&frame[..60]).await.unwrap();
        drop(shim);
        let outcome = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        match outcome {
            RelayOutcome::DownstreamError(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                assert!(e.to_string().contains("50 of 100"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
