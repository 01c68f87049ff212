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
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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

/// Why a request body failed. HTTP/2 reports our body error to the upstream only as a
/// stream reset, and hyper's HTTP/1.1 client as a generic send error, so the proxy learns
/// from this shared cell that the failure was the client's, not the upstream's.
#[derive(Clone, Debug, Default)]
pub struct BodyFault(Arc<AtomicU8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Over `limits.max_request_body`.
    TooLarge,
    /// Bad chunked framing, or the client went away mid-body.
    Malformed,
    /// No body data for `limits.body_idle_timeout`.
    Stalled,
}

impl BodyFault {
    fn set(&self, fault: Fault) {
        let code = match fault {
            Fault::TooLarge => 1,
            Fault::Malformed => 2,
            Fault::Stalled => 3,
        };
        self.0.store(code, Ordering::Release);
    }

    pub fn get(&self) -> Option<Fault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Fault::TooLarge),
            2 => Some(Fault::Malformed),
            3 => Some(Fault::Stalled),
            _ => None,
        }
    }
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
    /// A request body records here why it failed.
    fault: Option<BodyFault>,
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
            fault: None,
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

    /// Fails the body once more than `limit` bytes passed.
    pub fn limited(mut self, limit: u64) -> Self {
        self.remaining = Some(limit);
        self
    }

    /// Records why the body failed in the returned cell (request bodies: the client's fault).
    pub fn faults(mut self) -> (Self, BodyFault) {
        let fault = BodyFault::default();
        self.fault = Some(fault.clone());
        (self, fault)
    }

    fn fail(&self, fault: Fault) {
        if let Some(cell) = &self.fault {
            cell.set(fault);
        }
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
                    Some(Err(e)) => {
                        this.fail(Fault::Malformed);
                        return Poll::Ready(Some(Err(BodyError::Inner(e.into()))));
                    }
                    None => return Poll::Ready(None),
                };
                if let (Some(left), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    let n = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
                    match left.checked_sub(n) {
                        Some(l) => *left = l,
                        None => {
                            this.fail(Fault::TooLarge);
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
                this.fail(Fault::Stalled);
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
