//! `[limits.shared]`: one GCRA state per caller in Redis, so N replicas together admit the
//! configured rate. One decision is one round trip (a server-side script called by its SHA,
//! loaded again on NOSCRIPT), bounded by `timeout`; past it, or while Redis is failing, the
//! caller's fallback decides at once. After a failure Redis is skipped for a backoff (100 ms
//! doubling to 2 s) and then probed by one request, so an outage costs no request more than
//! `timeout` and the shared path comes back on its own.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most one fallback warning per this long (the rest are counted in the next one).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What Redis said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    Admitted,
    /// Over the shared rate: the next request fits after this long.
    Limited(Duration),
}

/// Why Redis did not decide (the `reason` label of `sidekey_shared_limit_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `limits.shared.timeout`.
    Timeout,
    /// Cannot connect, or the connection broke.
    Connection,
    /// `AUTH` refused, or no password could be read.
    Auth,
    /// Redis answered with an error (OOM, read-only replica, script error...).
    Server,
    /// Skipped: a recent failure, and another request is probing.
    Backoff,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Self::Timeout,
        Self::Connection,
        Self::Auth,
        Self::Server,
        Self::Backoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Auth => "auth",
            Self::Server => "server",
            Self::Backoff => "backoff",
        }
    }

    fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|f| *f == self)
            .map_or(0, |i| i as u8 + 1)
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    fn of(e: &redis::RedisError) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
            || e.code()
                .is_some_and(|c| matches!(c, "NOAUTH" | "WRONGPASS" | "NOPERM"))
        {
            Self::Auth
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            Self::Connection
        } else {
            Self::Server
        }
    }
}

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
    /// round trip and the status page shows the health before any traffic. (Outside a
    /// runtime, as in `check`, nothing is started.)
    pub fn warm(self: &std::sync::Arc<Self>) {
        let (Some(conn), Ok(rt)) = (&self.conn, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (mut conn, me) = (conn.clone(), std::sync::Arc::downgrade(self));
        rt.spawn(async move {
            let Some(me) = me.upgrade() else { return };
            let load = me.script.load_async(&mut conn);
            match tokio::time::timeout(Duration::from_secs(5), load).await {
                Ok(Ok(_)) => me.health.succeeded(),
                Ok(Err(e)) => me.failed(Failure::of(&e)),
                Err(_) => me.failed(Failure::Timeout),
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
            Ok(Err(e)) => Err(Failure::of(&e)),
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

/// Lock-free health: the backoff window, the last outcome, and the warning budget.
struct Health {
    epoch: Instant,
    /// Nanoseconds after `epoch` before which Redis is skipped (0: not backing off).
    retry_at: AtomicU64,
    backoff: AtomicU64,
    /// `Failure::code` of the last failure since the last success (0: none).
    last_failure: AtomicU8,
    last_failure_unix: AtomicU64,
    last_ok_unix: AtomicU64,
    last_warn: AtomicU64,
    suppressed: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
            last_failure: AtomicU8::new(0),
            last_failure_unix: AtomicU64::new(0),
            last_ok_unix: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Outside a backoff window anyone may call; inside it, nobody; when it has just
    /// ended, exactly one request (the one that moves the window on) probes.
    fn may_try(&self) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        let now = self.now();
        if now < retry_at {
            return false;
        }
        let hold = self.backoff.load(Ordering::Relaxed).max(1);
        self.retry_at
            .compare_exchange(retry_at, now + hold, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn succeeded(&self) {
        if self.retry_at.load(Ordering::Relaxed) != 0 {
            self.retry_at.store(0, Ordering::Release);
            self.backoff.store(0, Ordering::Relaxed);
        }
        self.last_failure.store(0, Ordering::Relaxed);
        self.last_ok_unix.store(unix_now(), Ordering::Relaxed);
    }

    fn failed(&self, failure: Failure) {
        let min = MIN_BACKOFF.as_nanos() as u64;
        let max = MAX_BACKOFF.as_nanos() as u64;
        let next = match self.backoff.load(Ordering::Relaxed) {
            0 => min,
            b => b.saturating_mul(2).min(max),
        };
        self.backoff.store(next, Ordering::Relaxed);
        self.retry_at
            .store(self.now().saturating_add(next).max(1), Ordering::Release);
        self.last_failure.store(failure.code(), Ordering::Relaxed);
        self.last_failure_unix.store(unix_now(), Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        self.last_failure.load(Ordering::Relaxed) == 0
    }

    fn state(&self) -> &'static str {
        if !self.healthy() {
            "down"
        } else if self.last_ok_unix.load(Ordering::Relaxed) == 0 {
            "not_yet_used"
        } else {
            "up"
        }
    }

    /// `Some(n)`: warn now, `n` fallbacks were not logged since the last warning.
    fn may_warn(&self) -> Option<u64> {
        let now = self.now().max(1);
        let last = self.last_warn.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_nanos() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last_warn
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_after_the_backoff_window() {
        let h = Health::new();
        assert!(h.may_try() && h.may_try());
        h.failed(Failure::Connection);
        assert!(!h.may_try(), "inside the window nobody calls");
        assert!(!h.healthy());
        h.retry_at.store(1, Ordering::Release);
        assert!(h.may_try(), "the first after the window probes");
        assert!(!h.may_try(), "and only one");
        h.succeeded();
        assert!(h.healthy() && h.may_try() && h.may_try());
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let h = Health::new();
        let mut seen = Vec::new();
        for _ in 0..7 {
            h.failed(Failure::Timeout);
            seen.push(h.backoff.load(Ordering::Relaxed) / 1_000_000);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 2000, 2000]);
        h.succeeded();
        h.failed(Failure::Timeout);
        assert_eq!(h.backoff.load(Ordering::Relaxed), 100_000_000);
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_skipped() {
        let mut h = Health::new();
        // A minute of uptime, so that "ten seconds ago" exists.
        h.epoch = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .unwrap_or(h.epoch);
        assert_eq!(h.may_warn(), Some(0));
        assert_eq!(h.may_warn(), None);
        assert_eq!(h.may_warn(), None);
        h.last_warn.store(1, Ordering::Relaxed);
        assert_eq!(h.may_warn(), Some(2));
    }

    #[test]
    fn failure_codes_round_trip() {
        for f in Failure::ALL {
            assert_eq!(Failure::from_code(f.code()), Some(f));
        }
        assert_eq!(Failure::from_code(0), None);
    }
}
