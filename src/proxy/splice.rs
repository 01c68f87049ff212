//! Two connections spliced together: bytes copied both ways as they arrive (16 KiB at a
//! time each way, never a whole message), until either side closes, no byte has moved for
//! the idle limit, the maximum duration passes, or the drain grace is over. Nothing is
//! parsed: used for WebSocket tunnels and the forward proxy's blind tunnels.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;

/// Per-direction copy buffer.
const BUF: usize = 16 * 1024;
/// Longest wait for a closing side's FIN (or TLS close_notify) to be written.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// Who ended a tunnel (the `closed_by` log field).
const CLOSERS: [&str; 7] = [
    "",
    "client",
    "upstream",
    "idle_timeout",
    "max_duration",
    "shutdown",
    "error",
];
const CLIENT: u8 = 1;
const UPSTREAM: u8 = 2;
const IDLE: u8 = 3;
const MAX_DURATION: u8 = 4;
const SHUTDOWN: u8 = 5;

/// What both directions share: when a byte last moved, and who closed first.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
    closed_by: AtomicU8,
}

impl Clock {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn close(&self, by: u8) {
        let _ = self
            .closed_by
            .compare_exchange(0, by, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// One side of the tunnel: counts what is read from it and notes its end.
struct Metered<'c, T> {
    io: T,
    side: u8,
    read: u64,
    bytes: metrics::Counter,
    clock: &'c Clock,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n == 0 {
                    self.clock.close(self.side);
                } else {
                    self.read += n;
                    self.bytes.increment(n);
                    self.clock.touch();
                }
            }
            Poll::Ready(Err(_)) => self.clock.close(self.side),
            Poll::Pending => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once no byte has moved for `idle`.
async fn idle(clock: &Clock, idle: Duration) {
    loop {
        let due = clock.last() + idle;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due.into()).await;
    }
}

/// The limits of one splice.
pub struct Limits {
    pub idle: Duration,
    pub max: Option<Duration>,
}

/// How a splice ended.
pub struct Ended {
    /// client, upstream, idle_timeout, max_duration, shutdown or error.
    pub closed_by: &'static str,
    pub from_client: u64,
    pub from_upstream: u64,
    pub duration: Duration,
    pub error: Option<std::io::Error>,
}

/// Copies between `client` and `upstream` (`early`: client bytes already read, sent first);
/// counts each direction into its counter; closes both sides cleanly at the end.
#[allow(clippy::too_many_arguments)]
pub async fn run<C, U>(
    client: C,
    upstream: U,
    early: Bytes,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    to_upstream: metrics::Counter,
    to_client: metrics::Counter,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Clock {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        closed_by: AtomicU8::new(0),
    };
    let mut down = Metered {
        io: client,
        side: CLIENT,
        read: early.len() as u64,
        bytes: to_upstream,
        clock: &clock,
    };
    down.bytes.increment(early.len() as u64);
    let mut up = Metered {
        io: upstream,
        side: UPSTREAM,
        read: 0,
        bytes: to_client,
        clock: &clock,
    };
    let max = tokio::time::Instant::now().checked_add(limits.max.unwrap_or(Duration::MAX));
    let error = {
        let splice = async {
            // What the client sent before the switch goes first, in order.
            up.io.write_all(&early).await?;
            tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await
        };
        tokio::select! {
            r = splice => r.err(),
            () = idle(&clock, limits.idle) => { clock.close(IDLE); None }
            () = async { match max {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => { clock.close(MAX_DURATION); None }
            () = crate::shutdown::stopped(&mut closing) => { clock.close(SHUTDOWN); None }
        }
    };
    // Both sides get a clean close (FIN, close_notify on TLS), bounded.
    let _ = tokio::time::timeout(CLOSE_WRITE, down.io.shutdown()).await;
    let _ = tokio::time::timeout(CLOSE_WRITE, up.io.shutdown()).await;
    let by = clock.closed_by.load(Ordering::Relaxed);
    let closed_by = match (by, &error) {
        (0, Some(_)) => "error",
        (by, _) => CLOSERS.get(usize::from(by)).copied().unwrap_or("error"),
    };
    Ended {
        closed_by,
        from_client: down.read,
        from_upstream: up.read,
        duration: clock.start.elapsed(),
        error,
    }
}
