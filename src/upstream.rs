//! The upstream side: verified TLS, a pooled keep-alive client, timeouts, and a small
//! classification of failures into stable error kinds.
//!
//! The client is built from the snapshot's config, so a config reload that changes the
//! upstream builds a new pool; requests in flight keep the old one. Redirects are never
//! followed (hyper's client does not), so the key only ever goes to `upstream.url`'s origin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::config::{self, Protocol};
use crate::proxy::body::{BodyError, Watched};

/// What the client sends: the caller's body, watched for idleness and size, or nothing
/// (a bodiless request, which can be replayed if HTTP/2 proves it was never processed).
pub type RequestBody = Either<Watched<Incoming>, Empty<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client for one upstream config.
pub struct Upstream {
    client: Client<TimeoutConnector<HttpsConnector<HttpConnector>>, RequestBody>,
    pub response_timeout: Duration,
    /// HTTP/2 may be negotiated: keep what is needed to replay a refused bodiless request.
    may_use_h2: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// How an upstream exchange failed (metric label `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect failed (refused, unreachable).
    Connect,
    /// TCP + TLS handshake did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The TLS handshake failed (untrusted or expired certificate, wrong name).
    Tls,
    /// No response headers within `response_timeout`.
    ResponseTimeout,
    /// The connection broke or the peer spoke bad HTTP.
    Protocol,
    /// The caller's body went over `limits.max_request_body` while streaming.
    BodyTooLarge,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ConnectTimeout => "connect_timeout",
            Self::Tls => "tls",
            Self::ResponseTimeout => "response_timeout",
            Self::Protocol => "protocol",
            Self::BodyTooLarge => "request_body_too_large",
        }
    }

    pub fn is_timeout(self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::ResponseTimeout)
    }
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &cfg.extra_roots {
            roots.add(cert.clone())?;
        }
        // One provider, chosen here explicitly rather than through process-global state.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        // The scheme is checked by the https connector; Nagle off for request/response latency.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if cfg.allow_plaintext {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        // The connector sets ALPN from what is enabled here.
        let https = match cfg.protocol {
            Protocol::Auto => builder.enable_http1().enable_http2().wrap_connector(http),
            Protocol::Http1 => builder.enable_http1().wrap_connector(http),
            Protocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let connector = TimeoutConnector {
            inner: https,
            timeout: cfg.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .http2_only(cfg.protocol == Protocol::Http2)
            // Bounded per-connection read buffers: a sidecar holds dozens of pooled
            // connections, and hyper's default lets each grow to ~400 KiB.
            .http1_max_buf_size(64 * 1024)
            .build(connector);
        Ok(Self {
            client,
            response_timeout: cfg.response_timeout,
            may_use_h2: cfg.protocol != Protocol::Http1,
        })
    }

    /// Sends one request; resolves when response headers arrive (the body streams after).
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, FailureKind> {
        // hyper-util replays requests a pooled connection never started; an HTTP/2 stream
        // the upstream refused (REFUSED_STREAM) or left above its GOAWAY's last stream id was
        // provably not processed either, and is replayed here once, if it had no body.
        let replay = match req.body() {
            Either::Right(_) if self.may_use_h2 => Some(parts_of(&req)),
            _ => None,
        };
        let exchange = async {
            match (self.client.request(req).await, replay) {
                (Err(e), Some(parts)) if unprocessed(&e) => {
                    tracing::debug!(error = %e, "upstream did not process the request; replaying once");
                    self.client
                        .request(http::Request::from_parts(
                            parts,
                            Either::Right(Empty::new()),
                        ))
                        .await
                }
                (result, _) => result,
            }
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(FailureKind::ResponseTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Finds the first `T` in an error's chain. `io::Error::source` skips the error it wraps,
/// so this descends through `get_ref` too (hyper-rustls wraps rustls errors in two).
fn find<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn classify(err: &hyper_util::client::legacy::Error) -> FailureKind {
    if find::<ConnectTimeout>(err).is_some() {
        FailureKind::ConnectTimeout
    } else if find::<rustls::Error>(err).is_some() {
        FailureKind::Tls
    } else if matches!(find::<BodyError>(err), Some(BodyError::TooLarge)) {
        FailureKind::BodyTooLarge
    } else if err.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Protocol
    }
}

/// An HTTP/2 stream the upstream provably did not process: reset with REFUSED_STREAM, or
/// above the last stream id of a graceful (NO_ERROR) GOAWAY.
fn unprocessed(err: &hyper_util::client::legacy::Error) -> bool {
    find::<h2::Error>(err).is_some_and(|h2| {
        h2.is_remote()
            && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)))
    })
}

/// A copy of a bodiless request's head (extensions are not carried: the proxy sets none).
fn parts_of<B>(req: &http::Request<B>) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method().clone();
    parts.uri = req.uri().clone();
    parts.version = req.version();
    parts.headers = req.headers().clone();
    parts
}

fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<std::io::Error>(err).is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Marker error: the connect (TCP + TLS) deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
struct ConnectTimeout;

/// Bounds the whole connect, TLS handshake included (`HttpConnector`'s own timeout only
/// covers TCP).
#[derive(Clone)]
struct TimeoutConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for TimeoutConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Response: Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let first = self.inner.call(uri.clone());
        let mut again = self.inner.clone();
        let timeout = self.timeout;
        let connect = async move {
            match first.await.map_err(Into::into) {
                // Refused means nothing was sent: one immediate retry rides out a restarting
                // upstream or a stale DNS answer, within the same deadline.
                Err(e) if is_refused(&*e) => {
                    std::future::poll_fn(|cx| again.poll_ready(cx))
                        .await
                        .map_err(Into::into)?;
                    again.call(uri).await.map_err(Into::into)
                }
                other => other,
            }
        };
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r,
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses the first `refusals` connects, then succeeds; counts calls.
    #[derive(Clone)]
    struct Flaky {
        calls: Arc<AtomicUsize>,
        refusals: usize,
    }

    impl tower_service::Service<Uri> for Flaky {
        type Response = ();
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let refused = n < self.refusals;
            Box::pin(async move {
                if refused {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(())
                }
            })
        }
    }

    async fn connect(refusals: usize) -> (Result<(), BoxError>, usize) {
        use tower_service::Service as _;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut c = TimeoutConnector {
            inner: Flaky {
                calls: calls.clone(),
                refusals,
            },
            timeout: Duration::from_secs(1),
        };
        let r = c.call(Uri::from_static("https://localhost")).await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_refused_connect_is_retried_once() {
        let (r, calls) = connect(1).await;
        assert!(r.is_ok());
        assert_eq!(calls, 2);
        let (r, calls) = connect(2).await;
        assert!(r.is_err_and(|e| is_refused(&*e)));
        assert_eq!(calls, 2, "only one retry");
        let (r, calls) = connect(0).await;
        assert!(r.is_ok());
        assert_eq!(calls, 1);
    }
}
