//! The last denials and rejects, for the status page: a fixed ring of slots written with one
//! atomic increment and one pointer swap (no lock, nothing on the path of allowed requests),
//! read by the admin listener. Entries hold the canonical path only, never a query string,
//! a header or a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

/// How many are kept.
pub const KEPT: usize = 50;

/// One refused request.
#[derive(Debug)]
pub struct Refusal {
    pub seq: u64,
    pub at: SystemTime,
    pub method: http::Method,
    /// Canonical path (no query); `None` when the target was rejected before it had one.
    pub path: Option<String>,
    pub api: Option<Arc<str>>,
    pub caller: Option<Arc<str>>,
    /// The permission the route needs and the caller lacks.
    pub missing: Option<Arc<str>>,
    /// Why a reject was rejected (`dot_segment`, `encoded_slash`, ...), when it was.
    pub reason: Option<&'static str>,
    pub decision: &'static str,
    pub code: &'static str,
}

#[derive(Debug)]
pub struct Recent {
    next: AtomicU64,
    slots: [ArcSwapOption<Refusal>; KEPT],
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            slots: std::array::from_fn(|_| ArcSwapOption::empty()),
        }
    }
}

impl Recent {
    pub fn push(&self, mut r: Refusal) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        r.seq = seq;
        let i = usize::try_from(seq % KEPT as u64).unwrap_or(0);
        if let Some(slot) = self.slots.get(i) {
            slot.store(Some(Arc::new(r)));
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<Refusal>> {
        let mut all: Vec<Arc<Refusal>> = self.slots.iter().filter_map(|s| s.load_full()).collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.seq));
        all
    }
}
