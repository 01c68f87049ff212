//! The spliced WebSocket: bytes copied both ways as they arrive (16 KiB at a time, never a
//! whole message), closed when either side closes, when no byte has moved for
//! `limits.websocket_idle_timeout`, after `limits.websocket_max_duration`, or when the
//! listener's drain grace is over. Frames are not parsed: sidekey makes none, so none can
//! carry the key.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::proxy::body::InFlightGuard;
use crate::serve::Switched;
use crate::telemetry;

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

/// One upgraded session: its limits, its labels, and the slots it holds while open.
pub struct Tunnel {
    pub idle_timeout: Duration,
    pub max_duration: Option<Duration>,
    pub api: Arc<str>,
    pub caller: Arc<str>,
    pub permission: Arc<str>,
    pub request_id: String,
    /// A place under `limits.max_websockets`.
    pub slot: InFlightGuard,
    /// The caller's `max_concurrent` place, when it has one.
    pub caller_slot: Option<InFlightGuard>,
}

/// `sidekey_websockets_open{api,caller}` up while this lives.
struct Open(metrics::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

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

fn bytes_counter(t: &Tunnel, direction: &'static str) -> metrics::Counter {
    metrics::counter!(telemetry::WEBSOCKET_BYTES_TOTAL, "api" => t.api.to_string(), "caller" => t.caller.to_string(), "direction" => direction)
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

impl Tunnel {
    /// Splices `client` and the upstream until one of the ends above; one access-log line.
    pub async fn run(self, upstream: Upgraded, client: Switched) {
        let gauge = metrics::gauge!(telemetry::WEBSOCKETS_OPEN, "api" => self.api.to_string(), "caller" => self.caller.to_string());
        gauge.increment(1.0);
        let open = Open(gauge);
        let (to_upstream, to_client) = (
            bytes_counter(&self, "to_upstream"),
            bytes_counter(&self, "to_client"),
        );
        let clock = Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            closed_by: AtomicU8::new(0),
        };
        let Switched {
            io,
            early,
            mut closing,
        } = client;
        let mut down = Metered {
            io,
            side: CLIENT,
            read: early.len() as u64,
            bytes: to_upstream,
            clock: &clock,
        };
        down.bytes.increment(early.len() as u64);
        let mut up = Metered {
            io: TokioIo::new(upstream),
            side: UPSTREAM,
            read: 0,
            bytes: to_client,
            clock: &clock,
        };
        let max = self.max_duration.unwrap_or(Duration::MAX);
        let max = tokio::time::Instant::now().checked_add(max);
        let error = {
            let splice = async {
                // What the client sent right after its handshake goes first, in order.
                up.io.write_all(&early).await?;
                tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await
            };
            tokio::select! {
                r = splice => r.err(),
                () = idle(&clock, self.idle_timeout) => { clock.close(IDLE); None }
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
        drop(open);
        tracing::info!(
            target: "sidekey::access",
            request_id = self.request_id,
            api = &*self.api,
            caller = &*self.caller,
            permission = &*self.permission,
            event = "websocket_closed",
            closed_by,
            bytes_to_upstream = down.read,
            bytes_to_client = up.read,
            duration_ms = clock.start.elapsed().as_secs_f64() * 1000.0,
            error = error.as_ref().map(|e| e.kind().to_string()),
        );
        drop((self.slot, self.caller_slot));
    }
}
