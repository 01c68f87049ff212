//! One client connection, from accept to close: parked (no hyper state) until the client
//! writes, then served by hyper until it goes idle for [`io::PARK_AFTER`], then parked
//! again; closed after `idle_timeout` without a request, or at once when draining.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for a connection's whole
//! life. Parking drops them (and the connection state) between bursts, so an idle keep-alive
//! connection costs its task, its socket and one timer.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use super::io::{Activity, Clocks, IdleEnd, Readiness, Timed};
use super::stopped;
use super::upgrade::{Switched, Upgrade};

/// Longest wait for a closing connection's FIN (or TLS close_notify) to be written.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// Serves one accepted (and, for TLS, handshaken) connection until it closes. After a 101
/// with an [`Upgrade`], runs the upgrade on the socket until it ends; `closing` tells it
/// when the drain grace is over.
pub(super) async fn drive<IO, H, Fut, B>(
    io: IO,
    builder: Arc<http1::Builder>,
    handler: H,
    clocks: Clocks,
    mut stop: watch::Receiver<bool>,
    closing: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Readiness + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let mut timed = Timed::new(io, activity.clone(), clocks);
    // Set at most once: the connection ends with the 101 that carried it.
    let switch = Arc::new(std::sync::OnceLock::<Upgrade>::new());
    let mut service = {
        let activity = activity.clone();
        let switch = switch.clone();
        service_fn(move |req: Request<Incoming>| {
            let has_body = !req.body().is_end_stream();
            activity.begin(has_body);
            let busy = Busy(activity.clone());
            let watch = has_body.then(|| activity.clone());
            let drain = req.version() == http::Version::HTTP_2;
            let fut = handler(req.map(|inner| RequestBody {
                inner: Some(inner),
                watch,
                drain,
            }));
            let switch = switch.clone();
            async move {
                let Ok(resp) = fut.await;
                let (mut parts, body) = resp.into_parts();
                // A 101, or a 2xx to CONNECT: hyper hands the socket back after it.
                if let Some(upgrade) = parts.extensions.remove::<Upgrade>() {
                    let _ = switch.set(upgrade);
                } else if busy.0.stopping() {
                    // Draining: this is the connection's last response.
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(Response::from_parts(
                    parts,
                    Tracked {
                        inner: body,
                        _busy: busy,
                    },
                ))
            }
        })
    };
    let mut parked = IO::PARK_AT_START;
    loop {
        // Parked (a fresh connection starts so): wait for a byte, the idle clock or a drain.
        if parked {
            let readable = tokio::select! {
                r = poll_fn(|cx| timed.poll_parked(cx)) => r,
                () = stopped(&mut stop) => false,
            };
            if !readable {
                break;
            }
        }
        parked = true;
        timed.resume();
        let conn = builder.serve_connection(TokioIo::new(timed), service);
        let mut conn = Box::pin(conn.without_shutdown());
        let done = loop {
            tokio::select! {
                done = &mut conn => break done,
                () = stopped(&mut stop), if !activity.stopping() => activity.stop(),
            }
        };
        let parts = match done {
            Ok(parts) => parts,
            Err(e) => {
                // The socket went with hyper's state (a client error, or the head timeout).
                tracing::debug!(error = %e, "connection ended with an error");
                return;
            }
        };
        if let Some(run) = switch.get().and_then(Upgrade::take) {
            let io = Box::new(parts.io.into_inner().into_io());
            let early = parts.read_buf;
            run(Switched { io, early, closing }).await;
            return;
        }
        timed = parts.io.into_inner();
        service = parts.service;
        // hyper ends cleanly only when idle with nothing buffered; anything else closes.
        if timed.ended != Some(IdleEnd::Park) || !parts.read_buf.is_empty() {
            break;
        }
    }
    // A clean close: FIN (after close_notify on TLS), never a reset of a request.
    let _ = tokio::time::timeout(CLOSE_WRITE, timed.io.shutdown()).await;
}

/// One request in flight on the connection, until its response body is done.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The request body as the handlers see it: tells the connection when it has been read.
///
/// An HTTP/2 body dropped unread (a refused request, an upstream that answered early) is
/// drained in the background, up to [`DRAIN_MAX`] bytes for at most [`DRAIN_FOR`], so the
/// stream ends with the client's END_STREAM after our answer instead of a RST_STREAM right
/// behind it, which some clients (curl 7.88) read as no response at all. Past the bound the
/// stream is reset as before.
pub struct RequestBody {
    inner: Option<Incoming>,
    watch: Option<Arc<Activity>>,
    drain: bool,
}

/// Most bytes of an unread HTTP/2 request body drained after the answer.
pub const DRAIN_MAX: usize = 1024 * 1024;
/// Longest such a drain waits for the client.
pub const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

impl RequestBody {
    /// A body from a connection this driver does not run (one inside a forward-proxy tunnel).
    pub fn detached(inner: Incoming, version: http::Version) -> Self {
        Self {
            inner: Some(inner),
            watch: None,
            drain: version == http::Version::HTTP_2,
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(inner) = self
            .inner
            .take()
            .filter(|b| self.drain && !b.is_end_stream())
        else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Frames are read and dropped: nothing is kept.
                let mut limited = http_body_util::Limited::new(inner, DRAIN_MAX);
                let drain = async {
                    while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut limited).await {}
                };
                let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
            });
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(&mut *inner).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            if let Some(activity) = this.watch.take() {
                activity.body_done();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body that ends the connection's busy phase when it is done (or dropped).
pub struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked connection's memory is mostly its task, which holds this future inline.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (_tx, rx) = watch::channel(false);
        let clocks = Clocks {
            header_read: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let handler = |_req: Request<RequestBody>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        };
        let fut = drive(
            stream,
            Arc::new(http1::Builder::new()),
            handler,
            clocks,
            rx.clone(),
            rx,
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size < 1024, "drive's future is {size} bytes");
    }
}
