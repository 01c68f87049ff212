//! WebSocket handshakes upstream: one fresh HTTP/1.1 connection per handshake (no ALPN
//! offered, so h2 cannot be chosen; verified TLS to the API's origin, like every other
//! connection), never pooled.
//! When the upstream switches protocols, hyper hands the connection over whole through the
//! response's `OnUpgrade`; any other answer streams back as a normal response and the
//! connection closes after it.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use tower_service::Service as _;

use super::{FailureKind, Upstream, UpstreamBody, classify, classify_connect};

impl Upstream {
    /// Sends a bodiless handshake (origin-form target) on a connection of its own; resolves
    /// with the response head within `response_timeout` of `started`. A `101` carries the
    /// switched connection: take it with `hyper::upgrade::on`.
    pub async fn upgrade(
        &self,
        mut req: http::Request<Empty<Bytes>>,
        started: Instant,
    ) -> Result<http::Response<UpstreamBody>, FailureKind> {
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let deadline = tokio::time::Instant::from_std(started) + self.response_timeout;
        let exchange = async {
            let mut connector = self.upgrade_connector.clone();
            std::future::poll_fn(|cx| connector.poll_ready(cx))
                .await
                .map_err(|e| classify_connect(&*e))?;
            let io = connector
                .call(self.dial.clone())
                .await
                .map_err(|e| classify_connect(&*e))?;
            let (mut tx, conn) = http1::Builder::new()
                .max_buf_size(64 * 1024)
                .handshake::<_, Empty<Bytes>>(io)
                .await
                .map_err(|e| classify(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
                }
            });
            let resp = tx.send_request(req).await.map_err(|e| classify(&e))?;
            Ok(resp.map(UpstreamBody::h2))
        };
        match tokio::time::timeout_at(deadline, Box::pin(exchange)).await {
            Ok(result) => result,
            Err(_) => Err(FailureKind::ResponseTimeout),
        }
    }
}
