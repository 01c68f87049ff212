//! The upstream connection pool: HTTP/1.1 connections reused one request at a time (most
//! recently used first), or one multiplexed HTTP/2 connection. A request checks a
//! connection out without spawning anything; an HTTP/1.1 connection goes back to the pool
//! when its response body has been read to the end (never before: a long stream must not
//! block the next request), and is dropped if the body ends early or fails.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use super::RequestBody;

/// Most idle HTTP/1.1 connections kept.
const MAX_IDLE: usize = 256;

/// A connection ready for one request.
pub(super) enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

struct Idle {
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// The upstream has spoken HTTP/2: new connections are opened one at a time.
    seen_h2: AtomicBool,
    /// An HTTP/1.1 connection (for a large body or quiet traffic, `auto.rs`) failed where
    /// HTTP/2 worked: no more tries.
    no_bulk_h1: AtomicBool,
    /// Exchanges waiting for response headers (the load signal of `auto`).
    in_flight: AtomicUsize,
    /// A background HTTP/1.1 connect for quiet traffic is under way (one at a time).
    warming: AtomicBool,
    idle_timeout: Duration,
}

/// One exchange in flight; counted down when dropped.
pub(super) struct InFlight<'p>(&'p Pool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            seen_h2: AtomicBool::new(false),
            no_bulk_h1: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            warming: AtomicBool::new(false),
            idle_timeout,
        }
    }

    /// The shared HTTP/2 connection, if it is open.
    pub(super) fn shared_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match h2.as_ref() {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    pub(super) fn seen_h2(&self) -> bool {
        self.seen_h2.load(Ordering::Acquire)
    }

    /// Large bodies and quiet traffic may go over HTTP/1.1 (no attempt has failed).
    pub(super) fn bulk_h1(&self) -> bool {
        !self.no_bulk_h1.load(Ordering::Relaxed)
    }

    pub(super) fn no_bulk_h1(&self) {
        self.no_bulk_h1.store(true, Ordering::Relaxed);
    }

    /// Counts an exchange until the guard drops; returns how many were in flight before it.
    pub(super) fn enter(&self) -> (InFlight<'_>, usize) {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        (InFlight(self), before)
    }

    /// Claims the one background HTTP/1.1 connect; false if one is under way.
    pub(super) fn start_warming(&self) -> bool {
        !self.warming.swap(true, Ordering::AcqRel)
    }

    pub(super) fn done_warming(&self) {
        self.warming.store(false, Ordering::Release);
    }

    /// A pooled connection that can take a request now, if there is one. `now` is the
    /// request's arrival (close enough for an idle timeout; saves a clock read).
    pub(super) async fn checkout(&self, now: Instant) -> Option<Conn> {
        // An HTTP/1.1-only upstream never takes the HTTP/2 slot's lock.
        if self.seen_h2() {
            if let Some(tx) = self.shared_h2() {
                return Some(Conn::H2(tx));
            }
        }
        self.checkout_h1(now).await
    }

    /// An idle HTTP/1.1 connection that can take a request now, if there is one.
    pub(super) async fn checkout_h1(&self, now: Instant) -> Option<Conn> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            let idle_for = now.saturating_duration_since(idle.since);
            if idle.tx.is_closed() || idle_for > self.idle_timeout {
                continue;
            }
            let mut tx = idle.tx;
            if tx.is_ready() {
                return Some(Conn::H1(tx));
            }
            // Released a moment ago: its connection task has not caught up yet.
            if tx.ready().await.is_ok() {
                return Some(Conn::H1(tx));
            }
        }
    }

    /// Shares a new HTTP/2 connection with later requests.
    pub(super) fn set_h2(&self, tx: http2::SendRequest<RequestBody>) {
        self.seen_h2.store(true, Ordering::Release);
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    }

    /// Forgets the shared HTTP/2 connection (it refused a request).
    pub(super) fn clear_h2(&self) {
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub(super) fn release(&self, tx: http1::SendRequest<RequestBody>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Checkout takes from the top, so the bottom is the longest idle: close it once it
        // is past the idle timeout (a steady load never reaches it otherwise).
        if idle
            .first()
            .is_some_and(|oldest| now.saturating_duration_since(oldest.since) > self.idle_timeout)
        {
            idle.remove(0);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { tx, since: now });
        }
    }
}

/// An upstream response body; an HTTP/1.1 connection rides along and goes back to the pool
/// at the end of the body.
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<(http1::SendRequest<RequestBody>, Arc<Pool>)>,
}

impl UpstreamBody {
    pub(super) fn h1(
        inner: Incoming,
        tx: http1::SendRequest<RequestBody>,
        pool: &Arc<Pool>,
    ) -> Self {
        let mut body = Self {
            inner,
            release: Some((tx, pool.clone())),
        };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    /// A body whose connection is not pooled (HTTP/2 streams, upgrade handshakes).
    pub(super) fn h2(inner: Incoming) -> Self {
        Self {
            inner,
            release: None,
        }
    }

    fn give_back(&mut self) {
        if let Some((tx, pool)) = self.release.take() {
            pool.release(tx);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            // A broken body leaves the connection in an unknown state: never reuse it.
            Some(Err(_)) => this.release = None,
            Some(Ok(_)) if this.inner.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
