//! Per-caller limits: a rate (GCRA, one atomic, no lock) and a concurrency cap. A limiter
//! outlives config reloads that leave its settings unchanged, so a reload never hands a
//! caller a fresh burst. With `[limits.shared]` the rate is decided in Redis for every
//! replica together ([`shared`]); the concurrency cap always stays per replica.

mod health;
pub mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::body::InFlightGuard;
use crate::config::{OnError, Rate};
use crate::telemetry;
use shared::{Shared, SharedLimiter};

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// Over the rate: the next request fits after this long.
    Rate(Duration),
    /// `max_concurrent` requests are in flight.
    Concurrency,
    /// The shared limiter could not decide and `limits.shared.on_error = "deny"`.
    Unavailable,
}

#[derive(Debug)]
pub struct Limiter {
    rate: Option<Rate>,
    max_concurrent: Option<usize>,
    epoch: Instant,
    /// GCRA's theoretical arrival time, nanoseconds after `epoch`.
    tat: AtomicU64,
    in_flight: Arc<AtomicUsize>,
}

impl Limiter {
    pub fn new(rate: Option<Rate>, max_concurrent: Option<usize>) -> Self {
        Self {
            rate,
            max_concurrent,
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Same settings: the state can carry over a reload.
    pub fn same_settings(&self, rate: Option<Rate>, max_concurrent: Option<usize>) -> bool {
        self.rate == rate && self.max_concurrent == max_concurrent
    }

    /// Admits one request: takes a concurrency slot (held by the guard until the response
    /// body is done) and a rate token. The slot is given back when the rate refuses.
    pub fn admit(&self) -> Result<Option<InFlightGuard>, Limited> {
        let guard = self.slot()?;
        if let Some(rate) = self.rate {
            self.take_token(rate, self.now())?;
        }
        Ok(guard)
    }

    /// As [`Self::admit`], with the rate decided by the shared limiter. A caller without a
    /// `rate` costs no Redis call. When Redis cannot decide, `on_error` does: this replica's
    /// own rate (`local`) or a refusal (`deny`).
    pub async fn admit_shared(
        &self,
        shared: &SharedLimiter,
        caller: &str,
    ) -> Result<Option<InFlightGuard>, Limited> {
        let guard = self.slot()?;
        let Some(rate) = self.rate else {
            return Ok(guard);
        };
        let (admitted, result) = match shared.decide(caller, rate).await {
            Ok(Shared::Admitted) => (Ok(()), "allowed"),
            Ok(Shared::Limited(wait)) => (Err(Limited::Rate(wait)), "limited"),
            Err(failure) => {
                shared.warn_fallback(failure);
                match shared.settings().on_error {
                    OnError::Local => match self.take_token(rate, self.now()) {
                        Ok(()) => (Ok(()), "fallback_allowed"),
                        Err(l) => (Err(l), "fallback_limited"),
                    },
                    OnError::Deny => (Err(Limited::Unavailable), "fallback_limited"),
                }
            }
        };
        metrics::counter!(telemetry::SHARED_LIMIT_DECISIONS_TOTAL, "result" => result).increment(1);
        admitted.map(|()| guard)
    }

    /// A concurrency slot, held by the guard until the response body is done.
    fn slot(&self) -> Result<Option<InFlightGuard>, Limited> {
        match self.max_concurrent {
            Some(max) => Ok(Some(
                InFlightGuard::try_acquire(&self.in_flight, max).ok_or(Limited::Concurrency)?,
            )),
            None => Ok(None),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// GCRA: each request moves the theoretical arrival time on by one interval; a request
    /// is admitted while that time is at most `burst - 1` intervals ahead of now.
    fn take_token(&self, rate: Rate, now: u64) -> Result<(), Limited> {
        let interval = (1e9 / rate.per_second) as u64;
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let ahead = base - now;
            if ahead > tolerance {
                return Err(Limited::Rate(Duration::from_nanos(ahead - tolerance)));
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = Limiter::new(None, None);
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        // Three at once, the fourth waits one interval.
        for _ in 0..3 {
            assert_eq!(l.take_token(rate, SEC), Ok(()));
        }
        assert_eq!(
            l.take_token(rate, SEC),
            Err(Limited::Rate(Duration::from_millis(100)))
        );
        // One interval later exactly one more fits.
        assert_eq!(l.take_token(rate, SEC + SEC / 10), Ok(()));
        assert!(l.take_token(rate, SEC + SEC / 10).is_err());
        // After a long pause the burst is back, not more.
        for _ in 0..3 {
            assert_eq!(l.take_token(rate, 10 * SEC), Ok(()));
        }
        assert!(l.take_token(rate, 10 * SEC).is_err());
    }

    #[test]
    fn concurrency_slots_come_back_when_guards_drop() {
        let l = Limiter::new(None, Some(2));
        let a = l.admit().unwrap();
        let b = l.admit().unwrap();
        assert_eq!(l.admit().unwrap_err(), Limited::Concurrency);
        drop(a);
        let _c = l.admit().unwrap();
        drop(b);
    }

    #[test]
    fn a_rate_refusal_gives_the_concurrency_slot_back() {
        let l = Limiter::new(
            Some(Rate {
                per_second: 1.0,
                burst: 1,
            }),
            Some(1),
        );
        let first = l.admit().unwrap();
        drop(first);
        assert!(matches!(l.admit(), Err(Limited::Rate(_))));
        assert_eq!(l.in_flight.load(Ordering::Acquire), 0);
    }
}
