//! A blind tunnel to a `tunnel` host: no TLS termination, no key, no policy; the TCP
//! connection is made before the CONNECT is answered, then bytes are spliced under the idle
//! limit and the drain grace. One access-log line when it closes.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::body::InFlightGuard;
use crate::proxy::splice;
use crate::serve::Switched;
use crate::telemetry;
use crate::upstream::FailureKind;

/// Resolves and connects within `timeout`.
pub(super) async fn dial(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, FailureKind> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(FailureKind::Connect),
        Err(_) => Err(FailureKind::ConnectTimeout),
    }
}

/// `sidekey_tunnels_active` up while this lives.
struct Active;

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::TUNNELS_ACTIVE).decrement(1.0);
    }
}

pub(super) async fn run(
    upstream: TcpStream,
    host: String,
    port: u16,
    idle: Duration,
    slot: InFlightGuard,
    client: Switched,
) {
    metrics::gauge!(telemetry::TUNNELS_ACTIVE).increment(1.0);
    let active = Active;
    let Switched { io, early, closing } = client;
    let limits = splice::Limits { idle, max: None };
    let none = || metrics::Counter::noop();
    let end = splice::run(io, upstream, early, limits, closing, none(), none()).await;
    drop(active);
    tracing::info!(
        target: "sidekey::access",
        event = "tunnel_closed",
        host,
        port,
        closed_by = end.closed_by,
        bytes_to_upstream = end.from_client,
        bytes_to_client = end.from_upstream,
        duration_ms = end.duration.as_secs_f64() * 1000.0,
        "blind tunnel closed (no key was sent)"
    );
    drop(slot);
}
