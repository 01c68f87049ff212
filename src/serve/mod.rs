//! The accept loop shared by the proxy and admin listeners: HTTP/1.1 only, a header-read
//! timeout against slowloris and an idle timeout for keep-alive connections (`conn`, `io`),
//! bounded header buffers, back-off on accept errors (EMFILE must
//! not spin or exit), and a graceful drain when told to stop. A gateway listener also
//! terminates TLS: each connection takes the current server config (so a rotated
//! certificate applies to new connections at once) and its verified client certificate
//! names become the connection's [`Peer`].

mod conn;
mod io;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Body;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

pub(crate) use crate::shutdown::stopped;
pub use conn::RequestBody;
pub use upgrade::{ClientIo, Prefixed, Switched, Upgrade};

use crate::proxy::caller::Peer;

/// The current listener TLS config, taken afresh for each connection.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// Largest request head (line + headers) accepted; hyper answers 431 beyond it.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// From the first byte of a request head to its end; also bounds a TLS handshake.
    pub header_read_timeout: Duration,
    /// A keep-alive connection without a request for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves `listener` until `stop` turns true, then drains open connections for at most
/// `*drain.borrow()` (read when stopping, so the caller can spend part of the grace first):
/// idle ones close at once, busy ones after their response (sent with `Connection: close`).
pub async fn serve<M, H, Fut, B>(
    listener: TcpListener,
    make: M,
    tls: Option<TlsSource>,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<Duration>,
) where
    M: Fn(Peer) -> H + Clone + Send + Sync + 'static,
    H: Fn(Request<RequestBody>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    // hyper's own header timer would also run while a keep-alive connection is idle: the
    // connection driver keeps both clocks instead (see `io`).
    builder
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let clocks = io::Clocks {
        header_read: opts.header_read_timeout,
        idle: opts.idle_timeout,
    };
    // Every connection task holds a sender; the drain waits until all are gone.
    let (live, mut all_closed) = mpsc::channel::<()>(1);
    // Switched connections (tunnels) run until the drain grace is over, then close.
    let (closing_tx, closing) = watch::channel(false);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    let (builder, stop, live) = (builder.clone(), stop.clone(), live.clone());
                    let closing = closing.clone();
                    match tls.as_ref().map(|current| current()) {
                        None => {
                            let handler = make(Peer::default());
                            tokio::spawn(async move {
                                conn::drive(stream, builder, handler, clocks, stop, closing).await;
                                drop(live);
                            });
                        }
                        Some(None) => {
                            tracing::warn!("no listener certificate loaded; closing the connection");
                        }
                        Some(Some(server)) => {
                            // The handshake runs in the connection's task: a slow client
                            // never holds up accepting others.
                            let make = make.clone();
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
                                    .map(|leaf| Arc::from(crate::control::tls::peer_names(leaf)));
                                let handler = make(Peer {
                                    cert_names: names,
                                    proxy_caller: None,
                                });
                                conn::drive(tls, builder, handler, clocks, stop, closing).await;
                                drop(live);
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
    drop(live);
    let deadline = *drain.borrow();
    if tokio::time::timeout(deadline, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing connections with requests still in flight");
        // Tunnels close themselves (FIN to both sides) when told: give them a moment.
        let _ = closing_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), all_closed.recv()).await;
    }
}
