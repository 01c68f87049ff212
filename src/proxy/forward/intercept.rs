//! An intercepted CONNECT: TLS with a leaf for exactly the CONNECT host (SNI must be that
//! host, else the handshake is refused with an alert), then HTTP/1.1 or HTTP/2 (ALPN) inside,
//! each request run through the reverse pipeline for that API once its `Host`/`:authority`
//! is checked against the CONNECT host (421 `authority_mismatch` otherwise).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

use super::Forward;
use crate::config::normalise_host;
use crate::proxy::caller::Peer;
use crate::proxy::{ProxyBody, ProxyError, Via, request_id};
use crate::serve::{RequestBody, Switched, Upgrade};
use crate::telemetry;

fn tls_failure(reason: &'static str) {
    metrics::counter!(telemetry::FORWARD_TLS_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// A server config that can present nothing: the handshake fails with an alert.
fn refusing() -> Option<Arc<rustls::ServerConfig>> {
    #[derive(Debug)]
    struct Nothing;
    impl rustls::server::ResolvesServerCert for Nothing {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    static REFUSING: std::sync::OnceLock<Option<Arc<rustls::ServerConfig>>> =
        std::sync::OnceLock::new();
    REFUSING
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|b| {
                    Arc::new(
                        b.with_no_client_auth()
                            .with_cert_resolver(Arc::new(Nothing)),
                    )
                })
        })
        .clone()
}

/// Runs one intercepted tunnel to its end. `clocks`: (handshake limit, idle limit).
pub(super) async fn run(
    fwd: Arc<Forward>,
    api: Arc<str>,
    peer: Peer,
    (host, port): (String, u16),
    (handshake, idle): (Duration, Duration),
    switched: Switched,
) {
    let (io, mut closing) = switched.into_io();
    let accept = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let Ok(Ok(start)) = tokio::time::timeout(handshake, accept).await else {
        tls_failure("handshake");
        return;
    };
    let sni = start.client_hello().server_name().and_then(normalise_host);
    if sni.as_deref() != Some(host.as_str()) {
        tls_failure("sni_mismatch");
        tracing::warn!(target: "sidekey::access", event = "sni_mismatch", host, sni = sni.as_deref().map(|s| s.get(..64).unwrap_or(s)), "TLS server name is not the CONNECT host; handshake refused");
        if let Some(refusing) = refusing() {
            let _ = tokio::time::timeout(handshake, start.into_stream(refusing)).await;
        }
        return;
    }
    let config = match fwd.leaf(&host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(host, error = %e, "cannot mint a leaf certificate");
            tls_failure("handshake");
            return;
        }
    };
    let Ok(Ok(tls)) = tokio::time::timeout(handshake, start.into_stream(config)).await else {
        tls_failure("handshake");
        return;
    };
    let clock = Arc::new(Idle {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let io = Touching {
        io: tls,
        clock: clock.clone(),
    };
    let inner_closing = closing.clone();
    // A name a wildcard (`hosts`) intercepts has its own client (its TLS name and `Host`).
    let own = {
        let snap = fwd.shared.load();
        let index = snap.config.apis.iter().position(|a| a.name == api);
        index.and_then(|i| fwd.upstream_for(&snap.config, i, &host, port))
    };
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (fwd, api, host, peer) = (fwd.clone(), api.clone(), host.clone(), peer.clone());
        if let Some(u) = &own {
            req.extensions_mut().insert(super::HostUpstream(u.clone()));
        }
        let closing = inner_closing.clone();
        async move {
            let at = (&*host, port);
            Ok::<_, std::convert::Infallible>(inner(fwd, api, peer, at, closing, req).await)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        _ = conn => {}
        () = clock.idle_for(idle) => {}
        () = crate::shutdown::stopped(&mut closing) => {}
    }
}

/// `host[:port]` equals the CONNECT host and port (the port may be left out when it is 443).
fn same_authority(value: &str, host: &str, port: u16) -> bool {
    let Ok(a) = http::uri::Authority::try_from(value) else {
        return false;
    };
    let p = a.port_u16().unwrap_or(443);
    p == port && normalise_host(a.host()).as_deref() == Some(host)
}

async fn inner(
    fwd: Arc<Forward>,
    api: Arc<str>,
    peer: Peer,
    (host, port): (&str, u16),
    closing: watch::Receiver<bool>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    // h2 carries `:authority` in the URI; HTTP/1.1 carries `Host` (or an absolute URI).
    let uri_authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let claimed = uri_authority.or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let scheme_ok = req.uri().scheme_str().is_none_or(|s| s == "https");
    if !scheme_ok || !claimed.is_some_and(|c| same_authority(&c, host, port)) {
        metrics::counter!(telemetry::FORWARD_AUTHORITY_MISMATCH_TOTAL).increment(1);
        tracing::warn!(target: "sidekey::access", event = "authority_mismatch", host, "a request inside the tunnel names another host; refused");
        let request_id = request_id::from_headers(req.headers());
        let e = ProxyError::AuthorityMismatch;
        metrics::counter!(telemetry::ERRORS_TOTAL, "code" => e.code()).increment(1);
        return e.to_response(&request_id);
    }
    // The pipeline sees origin-form, with `Host` (HTTP/2 has none of its own).
    if req.uri().scheme().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(pq);
    }
    if !req.headers().contains_key(http::header::HOST) {
        if let Ok(h) = HeaderValue::from_str(host) {
            req.headers_mut().insert(http::header::HOST, h);
        }
    }
    let on_upgrade = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let shared = fwd.shared.clone();
    let version = req.version();
    let req = req.map(|b| RequestBody::detached(b, version));
    let Ok(mut resp) = crate::proxy::handle(shared, peer, Via::Forward(api), req).await;
    // A WebSocket inside the tunnel: once hyper has switched, the tunnel runs on it.
    if let (Some(upgrade), Some(on)) = (resp.extensions_mut().remove::<Upgrade>(), on_upgrade) {
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let io = Box::new(TokioIo::new(upgraded));
                let switched = Switched {
                    io,
                    early: Bytes::new(),
                    closing,
                };
                upgrade.run(switched).await;
            }
        });
    }
    resp
}

/// When a byte last moved on the intercepted connection.
struct Idle {
    start: Instant,
    last_ms: AtomicU64,
}

impl Idle {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// The TLS stream, noting each read and write in the idle clock.
struct Touching<T> {
    io: T,
    clock: Arc<Idle>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if r.is_ready() {
            self.clock.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if r.is_ready() {
            self.clock.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.clock.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
