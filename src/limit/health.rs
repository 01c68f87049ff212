//! The shared limiter's health, lock-free: the backoff window after a failure (and the one
//! request that probes when it ends), the last outcome for the status page, and the budget
//! of fallback warnings.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::telemetry::WarnBudget;

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most one fallback warning per this long (the rest are counted in the next one).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Lock-free health: the backoff window, the last outcome, and the warning budget.
pub(super) struct Health {
    epoch: Instant,
    /// Nanoseconds after `epoch` before which Redis is skipped (0: not backing off).
    retry_at: AtomicU64,
    backoff: AtomicU64,
    /// `Failure::code` of the last failure since the last success (0: none).
    pub(super) last_failure: AtomicU8,
    pub(super) last_failure_unix: AtomicU64,
    pub(super) last_ok_unix: AtomicU64,
    warnings: WarnBudget,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            backoff: AtomicU64::new(0),
            last_failure: AtomicU8::new(0),
            last_failure_unix: AtomicU64::new(0),
            last_ok_unix: AtomicU64::new(0),
            warnings: WarnBudget::new(WARN_EVERY),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Outside a backoff window anyone may call; inside it, nobody; when it has just
    /// ended, exactly one request (the one that moves the window on) probes.
    pub(super) fn may_try(&self) -> bool {
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

    pub(super) fn succeeded(&self) {
        if self.retry_at.load(Ordering::Relaxed) != 0 {
            self.retry_at.store(0, Ordering::Release);
            self.backoff.store(0, Ordering::Relaxed);
        }
        self.last_failure.store(0, Ordering::Relaxed);
        self.last_ok_unix.store(unix_now(), Ordering::Relaxed);
    }

    pub(super) fn failed(&self, failure: Failure) {
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

    pub(super) fn healthy(&self) -> bool {
        self.last_failure.load(Ordering::Relaxed) == 0
    }

    pub(super) fn state(&self) -> &'static str {
        if !self.healthy() {
            "down"
        } else if self.last_ok_unix.load(Ordering::Relaxed) == 0 {
            "not_yet_used"
        } else {
            "up"
        }
    }

    /// `Some(n)`: warn now, `n` fallbacks were not logged since the last warning.
    pub(super) fn may_warn(&self) -> Option<u64> {
        self.warnings.may_warn()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    pub(super) fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|f| *f == self)
            .map_or(0, |i| i as u8 + 1)
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
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
    fn fallback_warnings_are_rate_limited() {
        let h = Health::new();
        assert_eq!(h.may_warn(), Some(0));
        assert_eq!(h.may_warn(), None);
        assert_eq!(h.may_warn(), None);
    }
}
