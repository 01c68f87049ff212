//! The upstream side: verified TLS, a pooled keep-alive client ([`pool`]) over hyper's
//! connection-level client, timeouts, and a small classification of failures into stable
//! error kinds.
//!
//! The client is built from the snapshot's config, so a config reload that changes the
//! upstream builds a new pool; requests in flight keep the old one. Redirects are never
//! followed (nothing here follows them), so the key only ever goes to `upstream.url`'s
//! origin: every connection is opened to that origin and nowhere else.

mod auto;
mod connect;
pub mod oneshot;
mod pool;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use http_body_util::{Either, Full};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tower_service::Service as _;

use crate::body::{BodyError, Watched};
use crate::config::{self, Protocol};
use connect::{BoxError, ConnectTimeout, TimeoutConnector, find};
pub use pool::UpstreamBody;
use pool::{Conn, Pool};

/// What the client sends: the caller's body, watched for idleness and size, or one read
/// whole (a SigV4 body hashed before signing) or nothing (a bodiless request, which can be
/// replayed if HTTP/2 proves it was never processed).
pub type RequestBody = Either<Watched<crate::serve::RequestBody>, Full<Bytes>>;

/// Under `protocol = "auto"`, request bodies at least this long go over HTTP/1.1 even when
/// the upstream speaks HTTP/2 (see [`Upstream::bulk`]).
pub const BULK_BODY: u64 = 1024 * 1024;

/// Hands an open connection to hyper's HTTP/1.1 client and spawns its task.
async fn h1_handshake<T>(io: T) -> Result<Conn, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http1::Builder::new()
        // Bounded per-connection read buffers: hyper's default lets each grow to ~400 KiB.
        .max_buf_size(64 * 1024)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn::H1(tx))
}

/// The pooled client for one upstream config.
pub struct Upstream {
    connector: TimeoutConnector<HttpsConnector<HttpConnector>>,
    /// HTTP/1.1 only (no ALPN offered, so no server can pick h2): a WebSocket handshake gets
    /// a fresh connection of its own, never the pooled (possibly HTTP/2) ones.
    upgrade_connector: TimeoutConnector<HttpsConnector<HttpConnector>>,
    /// ALPN offers `http/1.1` alone: the HTTP/1.1 connections `auto` pools next to an HTTP/2
    /// upstream (`auto.rs`), used only if the server agrees to `http/1.1` (an h2-only server
    /// that ignored the offer and spoke h2 would fail every request sent over it).
    h1_connector: TimeoutConnector<HttpsConnector<HttpConnector>>,
    pool: Arc<Pool>,
    /// Held while an HTTP/2 connection is being opened: a burst of requests shares one
    /// connect instead of opening a connection each.
    h2_connect: tokio::sync::Mutex<()>,
    /// `scheme://authority`: the origin requests name (h2 `:authority`).
    origin: Uri,
    /// Where connections are dialled: the origin, or `connect_to` (TLS is verified for the
    /// origin's host either way).
    dial: Uri,
    /// `Host` for HTTP/1.1 requests.
    host: HeaderValue,
    protocol: Protocol,
    pub response_timeout: Duration,
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
    /// Every `kind` label of `sidekey_upstream_errors_total`.
    pub const KINDS: [&'static str; 5] = [
        "connect",
        "connect_timeout",
        "tls",
        "response_timeout",
        "protocol",
    ];

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
        // `connect_to`: dial that address, still verify (and send SNI for) the URL's host.
        let server_name = match cfg.connect_to {
            None => None,
            Some(_) => {
                let host = cfg.authority.host().trim_matches(['[', ']']).to_owned();
                Some(
                    rustls_pki_types::ServerName::try_from(host)
                        .map_err(|e| rustls::Error::General(e.to_string()))?,
                )
            }
        };
        let start = |tls: rustls::ClientConfig| {
            let b = HttpsConnectorBuilder::new().with_tls_config(tls);
            let b = if cfg.allow_plaintext {
                b.https_or_http()
            } else {
                b.https_only()
            };
            match &server_name {
                Some(name) => b.with_server_name_resolver(
                    hyper_rustls::FixedServerNameResolver::new(name.clone()),
                ),
                None => b,
            }
        };
        let mut h1_tls = tls.clone();
        h1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let resolver: Arc<dyn hyper_rustls::ResolveServerName + Send + Sync> = match &server_name {
            Some(name) => Arc::new(hyper_rustls::FixedServerNameResolver::new(name.clone())),
            None => Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
        };
        let h1_connector = TimeoutConnector {
            inner: HttpsConnector::new(http.clone(), h1_tls, !cfg.allow_plaintext, resolver),
            timeout: cfg.connect_timeout,
        };
        let builder = start(tls.clone());
        let upgrade_builder = start(tls);
        let upgrade_connector = TimeoutConnector {
            inner: upgrade_builder.enable_http1().wrap_connector(http.clone()),
            timeout: cfg.connect_timeout,
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
        let origin = Uri::builder()
            .scheme(cfg.scheme.clone())
            .authority(cfg.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let dial = match cfg.connect_to {
            None => origin.clone(),
            Some(addr) => Uri::builder()
                .scheme(cfg.scheme.clone())
                .authority(addr.to_string())
                .path_and_query("/")
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        };
        let host = HeaderValue::from_str(cfg.authority.as_str())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self {
            connector,
            upgrade_connector,
            h1_connector,
            dial,
            pool: Arc::new(Pool::new(cfg.pool_idle_timeout)),
            h2_connect: tokio::sync::Mutex::new(()),
            origin,
            host,
            protocol: cfg.protocol,
            response_timeout: cfg.response_timeout,
        })
    }

    /// The `Host` requests carry (the origin's authority).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends one request (origin-form target) to the upstream; resolves when response
    /// headers arrive (the body streams after). `started` is when the request arrived (the
    /// response deadline counts from it; no clock read here).
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
        started: std::time::Instant,
    ) -> Result<http::Response<UpstreamBody>, FailureKind> {
        // Boxed once here: `send` is awaited inside every request's future, which hyper and
        // tokio move around; a small future there is cheaper than copying this one.
        let exchange = Box::pin(self.exchange(req, started));
        let deadline = tokio::time::Instant::from_std(started) + self.response_timeout;
        match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => Err(FailureKind::ResponseTimeout),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        mut req: http::Request<RequestBody>,
        started: std::time::Instant,
    ) -> Result<http::Response<UpstreamBody>, FailureKind> {
        // An HTTP/2 stream the upstream refused (REFUSED_STREAM) or left above its GOAWAY's
        // last stream id was provably not processed: replayed once, if it had no body. The
        // head is copied for that only on HTTP/2 (HTTP/1.1 requests pay nothing).
        let mut replay: Option<http::request::Parts> = None;
        let mut may_replay = true;
        // A pooled connection found closed before the request was written gives the request
        // back: it goes once more, on a new connection.
        let mut stale_retry = true;
        let (_in_flight, before) = self.pool.enter();
        let quiet = self.quiet(before);
        loop {
            let bulk = self.bulk(&req);
            let pooled = if bulk {
                self.pool.checkout_h1(started).await
            } else if quiet {
                self.checkout_quiet(started).await
            } else {
                self.pool.checkout(started).await
            };
            let (conn, reused) = match pooled {
                Some(c) => (c, true),
                None => {
                    let opened = match bulk {
                        // An upstream that refuses HTTP/1.1 gets the request over HTTP/2,
                        // and no more bulk attempts.
                        true => match self.connect_h1().await {
                            Ok(c) => Ok(c),
                            Err(e) => {
                                tracing::debug!(error = %e, "no HTTP/1.1 connection for a large body; using HTTP/2");
                                let h2 = self.connect().await;
                                if h2.is_ok() {
                                    self.pool.no_bulk_h1();
                                }
                                h2
                            }
                        },
                        false => self.connect().await,
                    };
                    (opened.map_err(|e| classify_connect(&*e))?, false)
                }
            };
            let failed = match conn {
                Conn::H1(mut tx) => {
                    self.h1_form(&mut req);
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            return Ok(resp.map(|b| UpstreamBody::h1(b, tx, &self.pool)));
                        }
                        Err(e) => e,
                    }
                }
                Conn::H2(mut tx) => {
                    self.h2_form(&mut req);
                    if may_replay
                        && matches!(req.body(), Either::Right(b) if http_body::Body::is_end_stream(b))
                    {
                        replay = Some(parts_of(&req));
                    }
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok(resp.map(UpstreamBody::h2)),
                        Err(e) => {
                            self.pool.clear_h2();
                            e
                        }
                    }
                }
            };
            let mut failed = failed;
            match failed.take_message() {
                Some(unsent) if reused && stale_retry => {
                    stale_retry = false;
                    req = unsent;
                    continue;
                }
                _ => {}
            }
            let err = failed.into_error();
            match replay.take() {
                Some(parts) if may_replay && unprocessed(&err) => {
                    may_replay = false;
                    tracing::debug!(error = %err, "upstream did not process the request; replaying once");
                    req = http::Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                }
                _ => return Err(classify(&err)),
            }
        }
    }

    /// Opens a connection (TCP + TLS within `connect_timeout`) and hands it to hyper.
    /// Boxed: the connect path (TLS and HTTP/2 handshakes) is rare and its future is large;
    /// inline, it would be part of every request's future and copied with it.
    fn connect(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, BoxError>> + Send + '_>>
    {
        Box::pin(self.open())
    }

    async fn open(&self) -> Result<Conn, BoxError> {
        // HTTP/2 multiplexes: one connect at a time, and whoever waited uses its result.
        let _one_at_a_time = if self.protocol == Protocol::Http2 || self.pool.seen_h2() {
            let guard = self.h2_connect.lock().await;
            if let Some(tx) = self.pool.shared_h2() {
                return Ok(Conn::H2(tx));
            }
            Some(guard)
        } else {
            None
        };
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.dial.clone()).await?;
        if self.protocol == Protocol::Http2 || io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            self.pool.set_h2(tx.clone());
            Ok(Conn::H2(tx))
        } else {
            h1_handshake(io).await
        }
    }

    /// HTTP/1.1 wants an origin-form target and a `Host` header.
    fn h1_form(&self, req: &mut http::Request<RequestBody>) {
        if req.uri().scheme().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
    }

    /// HTTP/2 carries scheme and authority as pseudo-headers (from an absolute URI).
    fn h2_form(&self, req: &mut http::Request<RequestBody>) {
        if req.uri().scheme().is_none() {
            let mut parts = self.origin.clone().into_parts();
            parts.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        req.headers_mut().remove(http::header::HOST);
    }
}

fn classify_connect(err: &(dyn std::error::Error + 'static)) -> FailureKind {
    if find::<ConnectTimeout>(err).is_some() {
        FailureKind::ConnectTimeout
    } else if find::<rustls::Error>(err).is_some() {
        FailureKind::Tls
    } else {
        FailureKind::Connect
    }
}

fn classify(err: &hyper::Error) -> FailureKind {
    if find::<rustls::Error>(err).is_some() {
        FailureKind::Tls
    } else if matches!(find::<BodyError>(err), Some(BodyError::TooLarge)) {
        FailureKind::BodyTooLarge
    } else {
        FailureKind::Protocol
    }
}

/// An HTTP/2 stream the upstream provably did not process: reset with REFUSED_STREAM, or
/// above the last stream id of a graceful (NO_ERROR) GOAWAY.
fn unprocessed(err: &hyper::Error) -> bool {
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
