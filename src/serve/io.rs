//! The connection's socket as hyper sees it, with the timing hyper lacks.
//!
//! hyper's `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, so it closed every idle connection after 10 s, under client pools that keep them
//! for 90 s (Go) or far longer (Java). [`Timed`] tells the three phases of an HTTP/1.1
//! connection apart and gives each its own clock:
//!
//! - **idle** (no request, nothing read since the last response): `idle_timeout`, and after
//!   [`PARK_AFTER`] the connection is *parked*: the wrapper reports end-of-stream so hyper
//!   finishes without shutting the socket down, and the driver drops hyper's state (two
//!   8 KiB buffers) until the client writes again; beyond [`MAX_WARM_IDLE`] idle connections
//!   holding that state, a connection parks as soon as it is idle;
//! - **head** (the first byte of a request head has arrived): `header_read_timeout`;
//! - **busy** (a request is being served, up to the end of its response body): no clock here;
//!   the body and upstream timeouts apply.
//!
//! The phase is learned from [`Activity`], which the service and body wrappers update. A
//! timer is armed lazily: it is reset only when a new deadline is earlier than the armed one,
//! and when it fires early it is re-armed, so a busy keep-alive connection resets it about
//! once per [`PARK_AFTER`], not per request.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// An idle connection gives back hyper's buffers after this long without a request: long
/// enough that a connection in steady use is never parked between requests.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// At most this many idle connections keep hyper's state for [`PARK_AFTER`]; beyond, an idle
/// connection parks at once. Without the cap, a burst of N connections holds N sets of
/// buffers for a second, and the allocator keeps those pages long after (measured: 2000
/// connections, +13 MB that stayed). A sidecar's app rarely keeps more connections warm.
const MAX_WARM_IDLE: usize = 64;

/// Idle connections still holding hyper's state (process-wide: every listener shares it).
static WARM_IDLE: AtomicUsize = AtomicUsize::new(0);

/// What the service and body wrappers tell the socket wrapper (same task, but hyper requires
/// `Send`, hence atomics; every access is `Relaxed`: there is one thread at a time).
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests whose response body has not ended (HTTP/1.1: 0 or 1).
    busy: AtomicU32,
    /// Requests started on this connection (wrapping): a change means a head was read.
    heads: AtomicU32,
    /// The current request's body has been read to its end (or it had none).
    body_done: AtomicBool,
    /// Draining: idle connections close, the next response says `Connection: close`.
    stopping: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            busy: AtomicU32::new(0),
            heads: AtomicU32::new(0),
            body_done: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
        }
    }

    /// A request head was read; `has_body`: hyper expects body bytes after it.
    pub(super) fn begin(&self, has_body: bool) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.body_done.store(!has_body, Ordering::Relaxed);
    }

    /// The response body ended or was dropped.
    pub(super) fn end(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn body_done(&self) {
        self.body_done.store(true, Ordering::Relaxed);
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// The three clocks; `Copy`, read once per connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clocks {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
}

/// Why the wrapper ended the stream while the connection was idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdleEnd {
    /// Hand the socket back to the driver, which waits for the next byte without hyper.
    Park,
    /// `idle_timeout` passed, or draining: close the connection.
    Close,
}

/// A socket that can report readiness without being read (to wait while parked).
pub(super) trait Readiness {
    /// Whether a fresh connection may wait for readiness before hyper reads: false when the
    /// handshake may already have buffered the first request (TLS 1.3 clients send it with
    /// their Finished message).
    const PARK_AT_START: bool;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readiness for TcpStream {
    const PARK_AT_START: bool = true;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Readiness for tokio_rustls::server::TlsStream<TcpStream> {
    const PARK_AT_START: bool = false;

    // When hyper last saw `Pending`, rustls held no plaintext: new bytes arrive on the socket.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

pub(super) struct Timed<IO> {
    pub(super) io: IO,
    activity: std::sync::Arc<Activity>,
    clocks: Clocks,
    phase: Phase,
    seen_heads: u32,
    /// Bytes that may belong to the next request were read while busy, or a body was left
    /// unread: hyper may hold part of a head, so this idle period is not parked.
    dirty: bool,
    idle_since: Instant,
    /// The phase's deadline; the armed timer may be earlier.
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    warm: Warm,
    pub(super) ended: Option<IdleEnd>,
}

impl<IO> Timed<IO> {
    pub(super) fn new(io: IO, activity: std::sync::Arc<Activity>, clocks: Clocks) -> Self {
        let now = Instant::now();
        Self {
            io,
            activity,
            clocks,
            phase: Phase::Idle,
            seen_heads: 0,
            dirty: false,
            idle_since: now,
            deadline: now,
            timer: None,
            warm: Warm(false),
            ended: None,
        }
    }

    /// When an idle connection closes.
    pub(super) fn idle_deadline(&self) -> Instant {
        self.idle_since + self.clocks.idle
    }

    /// Unparked: hyper owns the socket again, still idle since the same instant.
    pub(super) fn resume(&mut self) {
        self.ended = None;
        // A wake-up that brings no request (a TLS record of no data) parks again soon.
        let park = (Instant::now() + PARK_AFTER).min(self.idle_deadline());
        self.arm(park);
    }

    /// Parked: resolves `true` when the client writes again, `false` when the connection
    /// should close (`idle_timeout`, or a socket error).
    pub(super) fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<bool>
    where
        IO: Readiness,
    {
        match self.io.poll_ready(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(true),
            Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Pending => {}
        }
        self.arm(self.idle_deadline());
        if self.expired(cx) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Brings the phase up to date with what the service reported.
    fn observe(&mut self) {
        let heads = self.activity.heads.load(Ordering::Relaxed);
        if heads != self.seen_heads {
            self.seen_heads = heads;
            self.phase = Phase::Busy;
            self.dirty = false;
        }
        if self.phase == Phase::Busy && self.activity.busy.load(Ordering::Relaxed) == 0 {
            let now = Instant::now();
            self.phase = Phase::Idle;
            self.idle_since = now;
            self.dirty |= !self.activity.body_done.load(Ordering::Relaxed);
            let crowded = WARM_IDLE.fetch_add(1, Ordering::Relaxed) >= MAX_WARM_IDLE;
            self.warm.0 = true;
            self.arm(if crowded {
                now
            } else {
                now + PARK_AFTER.min(self.clocks.idle)
            });
        }
    }

    /// No longer an idle connection holding hyper's state.
    fn cool(&mut self) {
        self.warm.cool();
    }

    /// The socket itself, clocks and all else dropped (a switched connection's tunnel).
    pub(super) fn into_io(self) -> IO {
        self.io
    }

    fn on_bytes(&mut self) {
        self.cool();
        match self.phase {
            Phase::Idle if !self.dirty => {
                self.phase = Phase::Head;
                self.arm(Instant::now() + self.clocks.header_read);
            }
            Phase::Busy if self.activity.body_done.load(Ordering::Relaxed) => self.dirty = true,
            Phase::Idle | Phase::Head | Phase::Busy => {}
        }
    }

    /// Sets the phase deadline; resets the timer only when it would fire too late.
    fn arm(&mut self, deadline: Instant) {
        self.deadline = deadline;
        match &mut self.timer {
            Some(t) if t.deadline() <= deadline => {}
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the phase deadline has passed (registering the waker when not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.deadline {
                return true;
            }
            // Fired for an earlier deadline: wait for the current one.
            timer.as_mut().reset(self.deadline);
        }
    }

    /// The read found nothing: decide whether a clock ran out.
    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.phase {
            Phase::Busy => Poll::Pending,
            Phase::Head => {
                if self.expired(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received within header_read_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            Phase::Idle => {
                if self.activity.stopping() {
                    return self.end(IdleEnd::Close);
                }
                if !self.expired(cx) {
                    return Poll::Pending;
                }
                if Instant::now() >= self.idle_deadline() {
                    return self.end(IdleEnd::Close);
                }
                if !self.dirty {
                    return self.end(IdleEnd::Park);
                }
                // hyper may hold part of a head: stay, until the idle deadline.
                self.arm(self.idle_deadline());
                if self.expired(cx) {
                    self.end(IdleEnd::Close)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    /// Reports end-of-stream to hyper: idle, it finishes cleanly and hands the socket back.
    fn end(&mut self, why: IdleEnd) -> Poll<io::Result<()>> {
        self.cool();
        self.ended = Some(why);
        Poll::Ready(Ok(()))
    }
}

/// Counted in [`WARM_IDLE`] while true; uncounted when dropped.
struct Warm(bool);

impl Warm {
    fn cool(&mut self) {
        if std::mem::take(&mut self.0) {
            WARM_IDLE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.cool();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Timed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended.is_some() {
            return Poll::Ready(Ok(()));
        }
        this.observe();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.on_pending(cx),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Timed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes right after a response's last byte, but reads again only when the
        // socket wakes it: start the idle clock here, with this task's waker on the timer.
        this.observe();
        if this.phase == Phase::Idle && this.ended.is_none() && this.expired(cx) {
            cx.waker().wake_by_ref();
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
