//! Logging and metrics set-up, and the metric names (a contract: dashboards and alerts use
//! them). Labels are bounded: permission, decision, status code, error code, failure kind,
//! reload result, key fingerprint. Never raw paths, hosts or header values.

use std::sync::{Arc, OnceLock};

use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

mod budget;
pub use budget::WarnBudget;

/// Proxied requests: `caller` (the service, or the gateway caller; `unidentified`), `api`
/// (`none`: under no API's prefix), `permission`, `decision` (allow, deny, reject, error, would_deny), `status`.
pub const REQUESTS_TOTAL: &str = "sidekey_requests_total";
/// Time from request arrival to response headers, seconds.
pub const REQUEST_DURATION: &str = "sidekey_request_duration_seconds";
/// Errors the proxy answered itself: `code`.
pub const ERRORS_TOTAL: &str = "sidekey_errors_total";
/// Upstream failures: `kind` (connect, connect_timeout, tls, response_timeout, protocol).
pub const UPSTREAM_ERRORS_TOTAL: &str = "sidekey_upstream_errors_total";
/// Upstream answered 401 (the key may be revoked): `fingerprint`.
pub const UPSTREAM_UNAUTHORIZED_TOTAL: &str = "sidekey_upstream_unauthorized_total";
/// Key reload attempts that found a change or failed: `result` (ok, invalid, error).
pub const CREDENTIAL_RELOADS_TOTAL: &str = "sidekey_credential_reloads_total";
/// Verify requests sent with a rotated key before it is used: `api`, `credential`, `result`
/// (ok, rejected, unverified).
pub const CREDENTIAL_VERIFICATIONS_TOTAL: &str = "sidekey_credential_verifications_total";
/// Token requests of minted credentials: `api`, `credential`, `result` (ok, refused,
/// unreachable, malformed, invalid_secret).
pub const TOKEN_FETCHES_TOTAL: &str = "sidekey_token_fetches_total";
/// When the current minted token expires (Unix seconds): `api`, `credential`.
pub const TOKEN_EXPIRY_TIMESTAMP_SECONDS: &str = "sidekey_token_expiry_timestamp_seconds";
/// A credential an upstream echoed, taken out of a response: `api`, `credential`, `where`
/// (header).
pub const KEY_ECHOES_TOTAL: &str = "sidekey_key_echoes_total";
/// Config reload attempts that found a change or failed: `result` (ok, invalid, refused).
pub const CONFIG_RELOADS_TOTAL: &str = "sidekey_config_reloads_total";
/// Listener certificate reloads that found a change or failed: `result` (ok, invalid).
pub const TLS_RELOADS_TOTAL: &str = "sidekey_tls_reloads_total";
/// Gauge 1 with the current key's `fingerprint` (rendered from the live snapshot).
pub const CREDENTIAL_INFO: &str = "sidekey_credential_info";
/// Unix time of the last accepted key load.
pub const CREDENTIAL_LAST_RELOAD: &str = "sidekey_credential_last_reload_timestamp_seconds";
/// 1 when ready, else 0.
pub const READY: &str = "sidekey_ready";
/// Generation of the published snapshot.
pub const SNAPSHOT_GENERATION: &str = "sidekey_snapshot_generation";
/// Forward proxy: CONNECT and absolute-form requests decided, by `decision` (intercept,
/// tunnel, deny).
pub const FORWARD_CONNECT_TOTAL: &str = "sidekey_forward_connect_total";
/// Forward proxy: intercepted TLS handshakes that failed, by `reason` (sni_mismatch,
/// handshake).
pub const FORWARD_TLS_FAILURES_TOTAL: &str = "sidekey_forward_tls_failures_total";
/// Forward proxy: inner requests whose `Host`/`:authority` was not the CONNECT host.
pub const FORWARD_AUTHORITY_MISMATCH_TOTAL: &str = "sidekey_forward_authority_mismatch_total";
/// Forward proxy: leaf certificates minted.
pub const LEAF_CERTS_MINTED_TOTAL: &str = "sidekey_leaf_certs_minted_total";
/// Gauge: blind forward-proxy tunnels open now.
pub const TUNNELS_ACTIVE: &str = "sidekey_tunnels_active";
/// Gauge: the interception CA's notAfter, Unix seconds.
pub const CA_NOT_AFTER_SECONDS: &str = "sidekey_ca_not_after_seconds";
/// Gauge: WebSocket tunnels open now, by `api` and `caller`.
pub const WEBSOCKETS_OPEN: &str = "sidekey_websockets_open";
/// WebSocket handshakes decided: `api`, `caller`, `permission`, `result` (upgraded,
/// refused: by sidekey, upstream_refused: the upstream did not switch).
pub const WEBSOCKET_SESSIONS_TOTAL: &str = "sidekey_websocket_sessions_total";
/// Shared (Redis) rate-limit decisions by `result`: allowed, limited, fallback_allowed,
/// fallback_limited.
pub const SHARED_LIMIT_DECISIONS_TOTAL: &str = "sidekey_shared_limit_decisions_total";
/// Redis calls that did not decide, by `reason` (timeout, connection, auth, server, backoff).
pub const SHARED_LIMIT_ERRORS_TOTAL: &str = "sidekey_shared_limit_errors_total";
/// Histogram of shared-limiter round trips.
pub const SHARED_LIMIT_DURATION: &str = "sidekey_shared_limit_duration_seconds";
/// 1 while the shared limiter's last call succeeded (or none was made yet), else 0.
pub const SHARED_LIMIT_UP: &str = "sidekey_shared_limit_up";
/// Bytes through WebSocket tunnels: `api`, `caller`, `direction` (to_upstream, to_client).
pub const WEBSOCKET_BYTES_TOTAL: &str = "sidekey_websocket_bytes_total";

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Installs the global tracing subscriber (stdout; `RUST_LOG`, default `info`).
///
/// `RUST_LOG` takes `level` and `target=level` directives, comma-separated (as
/// `RUST_LOG=info,sidekey::access=off`); the most specific target wins. (A plain target
/// filter rather than `EnvFilter`: no regex engine in the binary, ~1 MB less code.)
pub fn init_logging(format: LogFormat) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    // notify traces every inotify event; with logs written into a watched directory that
    // would feed itself. Keep it quiet unless asked for by name.
    let spec = if spec.contains("notify") {
        spec
    } else {
        format!("{spec},notify=info")
    };
    let filter: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("RUST_LOG={spec:?} is not understood ({e}); using info");
        Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("notify", tracing::Level::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    // A second init (tests, demo) is harmless: the first subscriber stays.
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init(),
        LogFormat::Text => registry.with(fmt.with_target(true)).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; then ours renders nothing, which the
        // admin tests would show.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests handled, by permission, decision and status"
    );
    describe_counter!(ERRORS_TOTAL, "Errors answered by sidekey itself, by code");
    describe_counter!(UPSTREAM_ERRORS_TOTAL, "Upstream failures, by kind");
    describe_counter!(
        UPSTREAM_UNAUTHORIZED_TOTAL,
        "Upstream 401 answers, by key fingerprint"
    );
    describe_counter!(CREDENTIAL_RELOADS_TOTAL, "Key reloads, by result");
    describe_counter!(
        KEY_ECHOES_TOTAL,
        "Credentials an upstream echoed, taken out of responses"
    );
    describe_counter!(
        TOKEN_FETCHES_TOTAL,
        "Token requests of minted credentials, by result"
    );
    metrics::describe_gauge!(
        TOKEN_EXPIRY_TIMESTAMP_SECONDS,
        "When the current minted token expires (Unix seconds)"
    );
    describe_counter!(
        CREDENTIAL_VERIFICATIONS_TOTAL,
        "Verify requests with a rotated key before it is used, by result"
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Config reloads, by result");
    describe_counter!(TLS_RELOADS_TOTAL, "Listener certificate reloads, by result");
    metrics::describe_gauge!(WEBSOCKETS_OPEN, "WebSocket tunnels open, by api and caller");
    describe_counter!(
        WEBSOCKET_SESSIONS_TOTAL,
        "WebSocket handshakes, by api, caller, permission and result"
    );
    describe_counter!(
        WEBSOCKET_BYTES_TOTAL,
        "Bytes through WebSocket tunnels, by api, caller and direction"
    );
    describe_counter!(
        SHARED_LIMIT_DECISIONS_TOTAL,
        "Shared (Redis) rate-limit decisions, by result"
    );
    describe_counter!(
        SHARED_LIMIT_ERRORS_TOTAL,
        "Shared rate-limit decisions Redis did not make, by reason (the fallback decided)"
    );
}

/// `decision` label values, in table order.
pub const DECISIONS: [&str; 5] = ["allow", "deny", "reject", "error", "would_deny"];

/// Status codes with a cached counter; others take the registry lookup.
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 414, 422, 429, 431,
    500, 502, 503, 504, 101,
];

/// `sidekey_requests_total` handles for one permission label, registered on first use and
/// then reached without a registry lookup (no hashing, no lock on the request path).
#[derive(Debug)]
pub struct RequestCounters {
    caller: Arc<str>,
    api: Arc<str>,
    permission: Arc<str>,
    slots: Box<[OnceLock<Counter>]>,
}

impl RequestCounters {
    pub fn new(caller: Arc<str>, api: Arc<str>, permission: Arc<str>) -> Self {
        let slots = (0..DECISIONS.len() * STATUSES.len())
            .map(|_| OnceLock::new())
            .collect();
        Self {
            caller,
            api,
            permission,
            slots,
        }
    }

    pub fn increment(&self, decision: usize, status: StatusCode) {
        let status_slot = STATUSES.iter().position(|s| *s == status.as_u16());
        let slot = status_slot.and_then(|s| self.slots.get(decision * STATUSES.len() + s));
        match slot {
            Some(cell) => cell
                .get_or_init(|| self.register(decision, status))
                .increment(1),
            None => self.register(decision, status).increment(1),
        }
    }

    fn register(&self, decision: usize, status: StatusCode) -> Counter {
        let decision = DECISIONS.get(decision).copied().unwrap_or("error");
        metrics::counter!(REQUESTS_TOTAL, "caller" => self.caller.to_string(), "api" => self.api.to_string(), "permission" => self.permission.to_string(), "decision" => decision, "status" => status.as_str().to_owned())
    }
}

/// Upper bounds of the request-duration buckets, seconds.
const DURATION_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the shared-limiter round-trip buckets, seconds (a loopback or in-zone
/// Redis answers in tens to hundreds of microseconds; the timeout defaults to 20 ms).
const SHARED_LIMIT_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram's buckets: fixed atomics, recorded with one increment and rendered by
/// `/metrics`. (The exporter's histogram keeps every raw sample until its next upkeep: at
/// saturation that was megabytes and an allocation per 64 requests.)
#[derive(Debug)]
pub struct DurationHistogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64; 14],
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    const fn new(name: &'static str, help: &'static str, bounds: &'static [f64; 14]) -> Self {
        Self {
            name,
            help,
            bounds,
            buckets: [const { AtomicU64::new(0) }; DURATION_BOUNDS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn record(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Prometheus text for the histogram (cumulative buckets, sum, count).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (name, help) = (self.name, self.help);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// The process-wide request-duration histogram.
pub fn request_duration() -> &'static DurationHistogram {
    static H: DurationHistogram = DurationHistogram::new(
        REQUEST_DURATION,
        "Time to response headers",
        &DURATION_BOUNDS,
    );
    &H
}

/// Round trips to the shared limiter (answered, failed or timed out).
pub fn shared_limit_duration() -> &'static DurationHistogram {
    static H: DurationHistogram = DurationHistogram::new(
        SHARED_LIMIT_DURATION,
        "Time for one shared rate-limit decision in Redis",
        &SHARED_LIMIT_BOUNDS,
    );
    &H
}

/// Drains any exporter histogram samples into their buckets every few seconds. Without it
/// the recorder keeps every raw sample until `/metrics` is scraped, which grew memory without
/// bound on an unscraped sidecar (found by `benches/soak.sh`; the request-duration histogram
/// has since moved to [`DurationHistogram`], this guards any other).
pub async fn upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => metrics().run_upkeep(),
            () = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn duration_buckets_are_cumulative() {
        let h = DurationHistogram::new(REQUEST_DURATION, "t", &DURATION_BOUNDS);
        h.record(Duration::from_micros(100));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("sidekey_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("sidekey_request_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(out.contains("sidekey_request_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("sidekey_request_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("sidekey_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("sidekey_request_duration_seconds_count 3\n"));
        assert!(
            out.contains("sidekey_request_duration_seconds_sum 60.0031\n"),
            "{out}"
        );
    }
}
