//! One WebSocket session after the 101: spliced (`proxy::splice`) under the WebSocket
//! limits, counted in the open-tunnel gauge, one access-log line when it closes. Frames are
//! not parsed: sidekey makes none, so none can carry the key.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::body::InFlightGuard;
use crate::proxy::splice;
use crate::serve::Switched;
use crate::telemetry;

/// One upgraded session: its limits, its labels, and the slots it holds while open.
pub struct Tunnel {
    pub idle_timeout: Duration,
    pub max_duration: Option<Duration>,
    pub api: Arc<str>,
    pub caller: Arc<str>,
    pub permission: Arc<str>,
    pub request_id: String,
    /// A place under `limits.max_websockets`.
    pub slot: InFlightGuard,
    /// The caller's `max_concurrent` place, when it has one.
    pub caller_slot: Option<InFlightGuard>,
}

/// `sidekey_websockets_open{api,caller}` up while this lives.
struct Open(metrics::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn bytes_counter(t: &Tunnel, direction: &'static str) -> metrics::Counter {
    metrics::counter!(telemetry::WEBSOCKET_BYTES_TOTAL, "api" => t.api.to_string(), "caller" => t.caller.to_string(), "direction" => direction)
}

impl Tunnel {
    /// Splices `client` and the upstream until one of them ends it; one access-log line.
    pub async fn run(self, upstream: Upgraded, client: Switched) {
        let gauge = metrics::gauge!(telemetry::WEBSOCKETS_OPEN, "api" => self.api.to_string(), "caller" => self.caller.to_string());
        gauge.increment(1.0);
        let open = Open(gauge);
        let Switched { io, early, closing } = client;
        let limits = splice::Limits {
            idle: self.idle_timeout,
            max: self.max_duration,
        };
        let to_upstream = bytes_counter(&self, "to_upstream");
        let to_client = bytes_counter(&self, "to_client");
        let upstream = TokioIo::new(upstream);
        let end = splice::run(io, upstream, early, limits, closing, to_upstream, to_client).await;
        // The places first, then the gauge: once the gauge shows room, a handshake finds it
        // (the other order let one arriving in between get 503 `overloaded`).
        let Tunnel {
            slot, caller_slot, ..
        } = self;
        drop((slot, caller_slot));
        drop(open);
        tracing::info!(
            target: "sidekey::access",
            request_id = self.request_id,
            api = &*self.api,
            caller = &*self.caller,
            permission = &*self.permission,
            event = "websocket_closed",
            closed_by = end.closed_by,
            bytes_to_upstream = end.from_client,
            bytes_to_client = end.from_upstream,
            duration_ms = end.duration.as_secs_f64() * 1000.0,
            error = end.error.as_ref().map(|e| e.kind().to_string()),
        );
    }
}
