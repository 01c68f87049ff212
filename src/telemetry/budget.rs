//! A warning budget: at most one log line per period for a repeating event, the ones left
//! out counted in the next. An upstream that echoes the key on every response would
//! otherwise write a warning per request (a log flood and a syscall on the request path);
//! the metric still counts every event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lock-free: one compare-and-swap decides which caller logs when a period has passed.
#[derive(Debug)]
pub struct WarnBudget {
    epoch: Instant,
    every: Duration,
    /// Nanoseconds after `epoch` of the last warning logged (0: none yet).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnBudget {
    pub fn new(every: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            every,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` events were left out since the last line. The first event
    /// always logs.
    pub fn may_warn(&self) -> Option<u64> {
        self.may_warn_at(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// `may_warn` at `now` nanoseconds after the budget was made.
    fn may_warn_at(&self, now: u64) -> Option<u64> {
        let now = now.max(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(self.every.as_nanos()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another caller took this period's line: this event is one it left out.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logs_then_one_per_period_with_the_count_left_out() {
        let b = WarnBudget::new(Duration::from_secs(10));
        let s = 1_000_000_000;
        assert_eq!(b.may_warn_at(5), Some(0));
        assert_eq!(b.may_warn_at(s), None);
        assert_eq!(b.may_warn_at(9 * s), None);
        assert_eq!(b.may_warn_at(10 * s + 4), None);
        // The period has passed: the next line carries the three left out.
        assert_eq!(b.may_warn_at(10 * s + 5), Some(3));
        assert_eq!(b.may_warn_at(11 * s), None);
        assert_eq!(b.may_warn_at(30 * s), Some(1));
        // The real clock: the first event logs.
        assert_eq!(WarnBudget::new(Duration::from_secs(10)).may_warn(), Some(0));
    }
}
