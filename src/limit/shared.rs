//! `[limits.shared]`: one GCRA state per caller in Redis, so N replicas together admit the
//! configured rate. One decision is one round trip (a server-side script called by its SHA,
//! loaded again on NOSCRIPT), bounded by `timeout`; past it, or while Redis is failing, the
//! caller's fallback decides at once. After a failure Redis is skipped for a backoff (100 ms
//! doubling to 2 s) and then probed by one request, so an outage costs no request more than
//! `timeout` and the shared path comes back on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use super::health::Failure;
use super::health::{Health, MAX_BACKOFF, MIN_BACKOFF};
use crate::config::{Rate, SharedLimits};
use crate::telemetry;

/// GCRA over the server's clock (replica clocks never matter). KEYS[1] holds the theoretical
/// arrival time in microseconds; ARGV: the emission interval and the burst tolerance, in
/// microseconds. Returns {1, 0} when admitted, {0, wait_us} when not.
const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {1, 0}
";

/// What Redis said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    Admitted,
    /// Over the shared rate: the next request fits after this long.
    Limited(Duration),
}

/// Which failure a Redis error is.
fn failure_of(e: &redis::RedisError) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || e.code()
            .is_some_and(|c| matches!(c, "NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        Failure::Auth
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Failure::Connection
    } else {
        Failure::Server
    }
}

/// How often an idle sidekey probes a Redis that is down.
const IDLE_PROBE: Duration = Duration::from_millis(500);

/// The live Redis side of the shared limits: built from the settings and the password read
/// at that time, replaced (not mutated) when either changes.
pub struct SharedLimiter {
    settings: SharedLimits,
    /// SHA-256 of the password this connection authenticates with (`None`: none).
    password_sha: Option<[u8; 32]>,
    /// `None` while the password file cannot be read: the fallback decides.
    conn: Option<ConnectionManager>,
    script: redis::Script,
    health: Health,
}

impl std::fmt::Debug for SharedLimiter {
    // The connection holds the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("server", &self.settings.server)
            .field("tls", &self.settings.tls)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// A lazily connecting limiter (nothing is dialled until the first decision). `password`
    /// is `Err` when the file could not be read: every decision falls back until it can.
    pub fn new(
        settings: &SharedLimits,
        password: Result<Option<&str>, ()>,
    ) -> Result<Self, String> {
        use redis::IntoConnectionInfo as _;
        let script = redis::Script::new(GCRA);
        let health = Health::new();
        let Ok(password) = password else {
            health.failed(Failure::Auth);
            return Ok(Self {
                settings: settings.clone(),
                password_sha: None,
                conn: None,
                script,
                health,
            });
        };
        let mut info = settings
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("limits.shared.redis_url: {e}"))?;
        // One small request and reply per decision: Nagle would hold some of them back.
        info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if let Some(p) = password {
            let redis = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(redis);
        }
        let client = match &settings.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("limits.shared: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF)
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("limits.shared: {e}"))?;
        Ok(Self {
            settings: settings.clone(),
            password_sha: password.map(|p| sha256(p.as_bytes())),
            conn: Some(conn),
            script,
            health,
        })
    }

    /// Connects and loads the script in the background, so that the first decision is one
    /// round trip and the status page shows the health before any traffic; then, while Redis
    /// is down, keeps probing it (every `IDLE_PROBE`), so the health gauge and its alert clear
    /// by themselves and sharing is back before the traffic is. The task ends with the
    /// limiter (a reload that replaces it). (Outside a runtime, as in `check`, nothing is
    /// started.)
    pub fn warm(self: &std::sync::Arc<Self>) {
        let (Some(conn), Ok(rt)) = (&self.conn, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (mut conn, weak) = (conn.clone(), std::sync::Arc::downgrade(self));
        rt.spawn(async move {
            let mut first = true;
            loop {
                let Some(me) = weak.upgrade() else { return };
                if first || !me.health.healthy() {
                    let load = me.script.load_async(&mut conn);
                    match tokio::time::timeout(Duration::from_secs(5), load).await {
                        Ok(Ok(_)) => me.health.succeeded(),
                        Ok(Err(e)) => me.failed(failure_of(&e)),
                        Err(_) => me.failed(Failure::Timeout),
                    }
                }
                first = false;
                // Never hold the limiter across the wait: a reload must be able to drop it.
                drop(me);
                tokio::time::sleep(IDLE_PROBE).await;
            }
        });
    }

    /// Connected with these settings and this password (`None`: no password file).
    pub fn same_as(&self, settings: &SharedLimits, password: Option<&str>) -> bool {
        self.settings == *settings
            && self.conn.is_some()
            && self.password_sha == password.map(|p| sha256(p.as_bytes()))
    }

    pub fn settings(&self) -> &SharedLimits {
        &self.settings
    }

    /// One shared decision for `caller` at `rate`, within `limits.shared.timeout`.
    pub async fn decide(&self, caller: &str, rate: Rate) -> Result<Shared, Failure> {
        // Every decision Redis does not make is counted, skipped ones too.
        let skipped = |f: Failure| {
            metrics::counter!(telemetry::SHARED_LIMIT_ERRORS_TOTAL, "reason" => f.as_str())
                .increment(1);
            Err(f)
        };
        let Some(conn) = &self.conn else {
            return skipped(Failure::Auth);
        };
        if !self.health.may_try() {
            return skipped(Failure::Backoff);
        }
        let interval = (1e6 / rate.per_second).max(1.0) as u64;
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        let key = format!("{}rate:{caller}", self.settings.key_prefix);
        let mut conn = conn.clone();
        let mut call = self.script.key(key);
        call.arg(interval).arg(tolerance);
        let start = Instant::now();
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        telemetry::shared_limit_duration().record(start.elapsed());
        let result = match answer {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(failure_of(&e)),
            Ok(Ok((1, _))) => Ok(Shared::Admitted),
            Ok(Ok((_, wait))) => Ok(Shared::Limited(Duration::from_micros(
                u64::try_from(wait).unwrap_or(0),
            ))),
        };
        match result {
            Ok(_) => self.health.succeeded(),
            Err(f) => self.failed(f),
        }
        result
    }

    fn failed(&self, failure: Failure) {
        metrics::counter!(telemetry::SHARED_LIMIT_ERRORS_TOTAL, "reason" => failure.as_str())
            .increment(1);
        self.health.failed(failure);
    }

    /// Logs a fallback decision, at most once per [`WARN_EVERY`].
    pub fn warn_fallback(&self, failure: Failure) {
        if let Some(suppressed) = self.health.may_warn() {
            tracing::warn!(
                server = %self.settings.server,
                reason = failure.as_str(),
                on_error = self.settings.on_error.as_str(),
                suppressed,
                "shared rate limiter unavailable; the fallback decides"
            );
        }
    }

    /// For `/credential` and the status page.
    pub fn status(&self) -> serde_json::Value {
        let h = &self.health;
        let unix = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => serde_json::Value::Null,
            n => n.into(),
        };
        serde_json::json!({
            "backend": "redis",
            "server": self.settings.server,
            "tls": self.settings.tls,
            "healthy": h.healthy(),
            "state": h.state(),
            "last_error": Failure::from_code(h.last_failure.load(Ordering::Relaxed)).map(Failure::as_str),
            "last_error_unix": unix(&h.last_failure_unix),
            "last_ok_unix": unix(&h.last_ok_unix),
            "timeout_ms": self.settings.timeout.as_millis() as u64,
            "on_error": self.settings.on_error.as_str(),
        })
    }

    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_round_trip() {
        for f in Failure::ALL {
            assert_eq!(Failure::from_code(f.code()), Some(f));
        }
        assert_eq!(Failure::from_code(0), None);
    }
}
