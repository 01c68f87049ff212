//! The accept loop shared by the proxy and admin listeners: HTTP/1.1 only, a header-read
//! timeout against slowloris, bounded header buffers, back-off on accept errors (EMFILE must
//! not spin or exit), and a graceful drain when told to stop. A gateway listener also
//! terminates TLS: each connection takes the current server config (so a rotated
//! certificate applies to new connections at once) and its verified client certificate
//! names become the connection's [`Peer`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::caller::Peer;

/// The current listener TLS config, taken afresh for each connection.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// Largest request head (line + headers) accepted; hyper answers 431 beyond it.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
}

/// Serves `listener` until `stop` turns true, then drains open connections for at most
/// `*drain.borrow()` (read when stopping, so the caller can spend part of the grace first).
pub async fn serve<M, H, Fut, B>(
    listener: TcpListener,
    make: M,
    tls: Option<TlsSource>,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<Duration>,
) where
    M: Fn(Peer) -> H + Clone + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    match tls.as_ref().map(|current| current()) {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(make(Peer::default())));
                            let conn = graceful.watch(conn);
                            tokio::spawn(async move {
                                if let Err(e) = conn.await {
                                    tracing::debug!(error = %e, "connection ended with an error");
                                }
                            });
                        }
                        Some(None) => {
                            tracing::warn!("no listener certificate loaded; closing the connection");
                        }
                        Some(Some(server)) => {
                            // The handshake runs in the connection's task: a slow client
                            // never holds up accepting others.
                            let (make, builder, watcher) = (make.clone(), builder.clone(), graceful.watcher());
                            let limit = opts.header_read_timeout;
                            tokio::spawn(async move {
                                let handshake = TlsAcceptor::from(server).accept(stream);
                                let tls = match tokio::time::timeout(limit, handshake).await {
                                    Ok(Ok(tls)) => tls,
                                    Ok(Err(e)) => {
                                        tracing::info!(error = %e, "TLS handshake refused");
                                        metrics::counter!(crate::telemetry::ERRORS_TOTAL, "code" => "tls_handshake").increment(1);
                                        return;
                                    }
                                    Err(_) => return,
                                };
                                let names = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|leaf| Arc::from(crate::tls::peer_names(leaf)));
                                let peer = Peer { cert_names: names };
                                let conn = builder.serve_connection(TokioIo::new(tls), service_fn(make(peer)));
                                if let Err(e) = watcher.watch(conn).await {
                                    tracing::debug!(error = %e, "connection ended with an error");
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: wait for descriptors to free up instead of spinning.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let deadline = *drain.borrow();
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing connections with requests still in flight");
    }
}

/// Resolves once `stop` holds `true` (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, inside this future.
    let _ = stop.wait_for(|s| *s).await;
}
