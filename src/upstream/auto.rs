//! `protocol = "auto"` once the upstream has spoken HTTP/2: which requests still go over
//! pooled HTTP/1.1 connections because that is cheaper for them (BENCHMARKS.md, "Large
//! bodies" and "Quiet traffic under `auto`"):
//! - a body known to be at least [`BULK_BODY`] long (flow-control windows, 16 KiB frames and
//!   the copy into h2's send buffer cost 1.66x the CPU per GiB);
//! - quiet traffic, fewer than [`QUIET_IN_FLIGHT`] exchanges in flight: with nothing to
//!   multiplex, the HTTP/2 path (connection task, stream state, HPACK) costs 15-25% more CPU
//!   per request than an idle keep-alive connection at 2000 req/s. A quiet request takes a
//!   pooled HTTP/1.1 connection if one is idle; otherwise it goes over HTTP/2 at once and one
//!   HTTP/1.1 connection is opened in the background for the next (no request waits for a
//!   handshake it would not otherwise need). Under concurrency everything multiplexes.
//!
//! If the upstream refuses HTTP/1.1 (an HTTP/1.1 connect fails, or the server does not select
//! `http/1.1` by ALPN, where HTTP/2 worked), both stop for the life of the pool and everything
//! stays on HTTP/2.

use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use super::connect::{BoxError, TimeoutConnector};
use super::pool::Conn;
use super::{BULK_BODY, RequestBody, Upstream, h1_handshake};
use crate::config::Protocol;

/// Below this many exchanges in flight, `auto` prefers an idle HTTP/1.1 connection.
pub const QUIET_IN_FLIGHT: usize = 4;

type Connector = TimeoutConnector<HttpsConnector<HttpConnector>>;

/// Opens an HTTP/1.1 connection with `connector` (`Upstream::h1_connector`: ALPN offers
/// `http/1.1` alone; the same verified TLS, server name and origin as every upstream
/// connection). An upstream that speaks HTTP/2 also speaks ALPN, so one that does not select
/// `http/1.1` (it refuses the handshake, or ignores the offer and would speak h2) has refused
/// HTTP/1.1.
async fn open_h1(mut connector: Connector, dial: http::Uri) -> Result<Conn, BoxError> {
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let io = connector.call(dial).await?;
    let agreed = match &io {
        MaybeHttpsStream::Https(tls) => {
            tls.inner().get_ref().1.alpn_protocol() == Some(b"http/1.1")
        }
        MaybeHttpsStream::Http(_) => false,
    };
    if !agreed {
        return Err("the upstream did not select http/1.1 by ALPN".into());
    }
    h1_handshake(io).await
}

impl Upstream {
    /// `auto` and the upstream speaks HTTP/2, and HTTP/1.1 has not been refused.
    fn h1_allowed(&self) -> bool {
        self.protocol == Protocol::Auto && self.pool.seen_h2() && self.pool.bulk_h1()
    }

    /// A large body: HTTP/1.1 although the upstream speaks HTTP/2.
    pub(super) fn bulk(&self, req: &http::Request<RequestBody>) -> bool {
        use http_body::Body as _;
        self.h1_allowed() && req.body().size_hint().lower() >= BULK_BODY
    }

    /// Quiet traffic (`before` exchanges were in flight when this one started).
    pub(super) fn quiet(&self, before: usize) -> bool {
        before < QUIET_IN_FLIGHT && self.h1_allowed()
    }

    /// An idle HTTP/1.1 connection, else the shared HTTP/2 one (warming an HTTP/1.1
    /// connection for the next quiet request).
    pub(super) async fn checkout_quiet(&self, now: std::time::Instant) -> Option<Conn> {
        if let Some(c) = self.pool.checkout_h1(now).await {
            return Some(c);
        }
        self.warm_h1();
        self.pool.checkout(now).await
    }

    /// Opens one HTTP/1.1 connection in the background and pools it.
    fn warm_h1(&self) {
        if !self.pool.start_warming() {
            return;
        }
        let pool = self.pool.clone();
        let opening = open_h1(self.h1_connector.clone(), self.dial.clone());
        tokio::spawn(async move {
            match opening.await {
                Ok(Conn::H1(tx)) => pool.release(tx),
                Ok(Conn::H2(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "no HTTP/1.1 connection for quiet traffic; staying on HTTP/2");
                    pool.no_bulk_h1();
                }
            }
            pool.done_warming();
        });
    }

    /// Opens an HTTP/1.1 connection for a large body, now.
    pub(super) fn connect_h1(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, BoxError>> + Send + '_>>
    {
        Box::pin(open_h1(self.h1_connector.clone(), self.dial.clone()))
    }
}
