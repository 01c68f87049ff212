//! Body wrappers on the streaming path: an idle timeout between frames (long streams such as
//! SSE have no total deadline, but a stalled one does not hold a connection forever), an
//! optional size cap for request bodies, and the in-flight guard that is released only when
//! the response body is done.
//!
//! The timer is created lazily, the first time the inner body is not ready, so a small body
//! that arrives in one poll costs no timer at all.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Errors the wrapper adds to the inner body's.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no body data for {0:?}")]
    Idle(Duration),
    #[error("the request body is larger than the configured limit")]
    TooLarge,
    #[error(transparent)]
    Inner(Box<dyn std::error::Error + Send + Sync>),
}

/// Counts requests in flight; the count drops when the guard does.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightGuard {
    /// Takes a slot if fewer than `max` are taken.
    pub fn try_acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let taken = counter.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(counter.clone()))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body with an idle timeout, an optional byte limit and an optional guard.
pub struct Watched<B> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    remaining: Option<u64>,
    /// Set when `remaining` ran out: HTTP/2 reports our body error only as a stream reset,
    /// so the caller learns why from this flag.
    overflowed: Option<Arc<AtomicBool>>,
    drop_trailers: bool,
    _guard: Option<InFlightGuard>,
    /// A gateway caller's concurrency slot, released with the body.
    _caller_guard: Option<InFlightGuard>,
}

impl<B> Watched<B> {
    pub fn new(inner: B, idle: Duration, guard: Option<InFlightGuard>) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            remaining: None,
            overflowed: None,
            drop_trailers: false,
            _guard: guard,
            _caller_guard: None,
        }
    }

    /// Also holds `guard` until the body is done.
    pub fn holding(mut self, guard: Option<InFlightGuard>) -> Self {
        self._caller_guard = guard;
        self
    }

    /// Fails the body once more than `limit` bytes passed; the flag tells that it did.
    pub fn limited(mut self, limit: u64) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        self.remaining = Some(limit);
        self.overflowed = Some(flag.clone());
        (self, flag)
    }

    /// Ends the body where trailers would start. Request trailers are dropped: they could
    /// carry credential headers past the header strip (HTTP/2 forwards them unasked).
    pub fn without_trailers(mut self) -> Self {
        self.drop_trailers = true;
        self
    }
}

impl<B> Body for Watched<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Progress: the idle clock starts again at the next wait.
                this.timer = None;
                let frame = match frame {
                    Some(Ok(f)) if f.is_trailers() && this.drop_trailers => {
                        return Poll::Ready(None);
                    }
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Inner(e.into())))),
                    None => return Poll::Ready(None),
                };
                if let (Some(left), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    let n = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
                    match left.checked_sub(n) {
                        Some(l) => *left = l,
                        None => {
                            if let Some(flag) = &this.overflowed {
                                flag.store(true, Ordering::Release);
                            }
                            return Poll::Ready(Some(Err(BodyError::TooLarge)));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Idle(idle))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
