//! Shared state: one atomically swapped [`Snapshot`] (config + policy + upstream client +
//! key) and the few process-wide flags the admin endpoints report.
//!
//! A request loads the snapshot once and uses only that copy, so a reload can never pair a
//! new policy with an old key or the reverse; requests in flight finish with the snapshot
//! they started with. Writers (the reload task) build a complete new snapshot off the
//! request path and publish it with one store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::Config;
use crate::control::tls::TlsMaterial;
use crate::credential::Credential;
use crate::limit::Limiter;
use crate::limit::shared::SharedLimiter;
use crate::policy::Policy;
use crate::policy::apis::Router;
use crate::telemetry::RequestCounters;
use crate::upstream::Upstream;

/// Everything a request needs, consistent with itself.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every published change (config, key or listener certificate).
    pub generation: u64,
    pub config: Arc<Config>,
    /// Per principal, parallel to `config.principals`.
    pub principals: Arc<[PrincipalState]>,
    /// Per key source, parallel to `config.credentials`. `None` while no valid key has ever
    /// been loaded for it: its callers fail closed.
    pub credentials: Arc<[Option<Arc<Credential>>]>,
    /// Per API, parallel to `config.apis`: its pooled client (its origin only).
    pub apis: Arc<[ApiState]>,
    /// Path prefix -> API.
    pub router: Arc<Router>,
    /// The listener's TLS config (`[listener.tls]`).
    pub tls: Option<Arc<TlsMaterial>>,
    /// Counters for gateway requests no caller could be matched to.
    pub unidentified: Arc<RequestCounters>,
    /// `[limits.shared]`: the Redis side of the caller rates (`None`: rates are per replica).
    pub shared_limiter: Option<Arc<SharedLimiter>>,
}

/// A rotated key not in use yet: its fingerprint, `verifying` or `rejected`, the verify
/// request's status, and since when.
#[derive(Clone, Debug)]
pub struct Pending {
    pub fingerprint: String,
    pub state: &'static str,
    pub status: Option<u16>,
    pub since: std::time::SystemTime,
}

/// One API's live parts.
#[derive(Debug)]
pub struct ApiState {
    pub upstream: Arc<Upstream>,
}

/// A principal's compiled grants, counters and limits.
#[derive(Debug)]
pub struct PrincipalState {
    /// Per API (parallel to `config.apis`).
    pub policies: Arc<[Arc<Policy>]>,
    /// Per API, then one for requests under no API: request counters by
    /// `Policy::permissions()` index; the last of each is `permission="none"`.
    pub counters: Arc<[Arc<[RequestCounters]>]>,
    pub limiter: Arc<Limiter>,
}

impl Snapshot {
    /// The key principal `i` sends to API `api`.
    pub fn credential_for(&self, i: usize, api: usize) -> Option<&Arc<Credential>> {
        let slot = (*self.config.principals.get(i)?.credentials.get(api)?)?;
        self.credentials.get(slot)?.as_ref()
    }

    /// Names of key sources with no valid key loaded.
    pub fn missing_credentials(&self) -> Vec<&str> {
        self.config
            .credentials
            .iter()
            .zip(self.credentials.iter())
            .filter(|(_, c)| c.is_none())
            .map(|(n, _)| &*n.name)
            .collect()
    }
}

/// Per API, one counter table per catalogue permission plus one for requests no route
/// matched; then one table (`api="none"`) for requests under no API's prefix.
pub fn request_counters(
    caller: &Arc<str>,
    apis: &[crate::config::Api],
    policies: &[Arc<Policy>],
) -> Arc<[Arc<[RequestCounters]>]> {
    let none: Arc<str> = Arc::from("none");
    let per_api = apis.iter().zip(policies).map(|(api, policy)| {
        policy
            .permissions()
            .iter()
            .cloned()
            .chain(std::iter::once(none.clone()))
            .map(|p| RequestCounters::new(caller.clone(), api.name.clone(), p))
            .collect::<Arc<[_]>>()
    });
    let outside: Arc<[RequestCounters]> = Arc::new([RequestCounters::new(
        caller.clone(),
        none.clone(),
        none.clone(),
    )]);
    per_api.chain(std::iter::once(outside)).collect()
}

/// Process-wide state shared by listeners, admin and the reload task.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    draining: AtomicBool,
    started: Instant,
    /// Milliseconds since `started` at which the last proxied request arrived.
    last_request_ms: AtomicU64,
    /// The last reload failure of each key source, by name, for `/credential` (admin path
    /// and reload task only: never locked on the request path).
    credential_errors: Mutex<BTreeMap<Arc<str>, String>>,
    /// A rotated key waiting for its verify request (or rejected by it), by credential name.
    credential_pending: Mutex<BTreeMap<Arc<str>, Pending>>,
    /// Unix time of the last accepted key load.
    credential_reloaded_at: AtomicU64,
    /// Requests in flight (until their response body is done).
    pub in_flight: Arc<AtomicUsize>,
    /// WebSocket tunnels open (under `limits.max_websockets`).
    pub websockets: Arc<AtomicUsize>,
    /// An upstream 401 asks the reload task for an immediate re-read of the keys.
    reread: tokio::sync::Notify,
    /// Milliseconds since `started` of the last re-read asked for (at most one a second),
    /// and of the last one finished.
    last_reread_ms: AtomicU64,
    reread_done_ms: AtomicU64,
    /// The generation of the published snapshot, for those waiting on a re-read.
    generation: tokio::sync::watch::Sender<u64>,
    /// The last denials and rejects (the status page).
    pub recent: crate::recent::Recent,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            credential_errors: Mutex::default(),
            credential_pending: Mutex::default(),
            credential_reloaded_at: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            websockets: Arc::new(AtomicUsize::new(0)),
            reread: tokio::sync::Notify::new(),
            last_reread_ms: AtomicU64::new(0),
            reread_done_ms: AtomicU64::new(0),
            generation: tokio::sync::watch::Sender::new(0),
            recent: crate::recent::Recent::default(),
        }
    }

    /// After an upstream 401: asks the reload task to re-read the key sources now and waits
    /// (at most `wait`) for the snapshot it publishes. At most one re-read a second, however
    /// many 401s arrive (a revoked key must not become a read storm); requests that arrive
    /// meanwhile share the one in flight.
    pub async fn reread_keys(&self, wait: std::time::Duration) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_reread_ms.load(Ordering::Relaxed);
        let mut changed = self.generation.subscribe();
        let asked = (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_reread_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if asked {
            self.reread.notify_one();
        } else if self.reread_done_ms.load(Ordering::Acquire)
            >= self.last_reread_ms.load(Ordering::Acquire)
        {
            // The last re-read (under a second ago) is done: its snapshot is current.
            return;
        }
        // The re-read in flight (ours or another 401's) publishes a snapshot, or finds
        // nothing new: either way this returns within `wait`.
        let _ = tokio::time::timeout(wait, changed.changed()).await;
    }

    /// Resolves when a 401 asked for a re-read (the reload task waits on it).
    pub async fn reread_asked(&self) {
        self.reread.notified().await;
    }

    /// The current snapshot. Call once per request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot (reload task only).
    pub fn store(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.snapshot.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// A re-read found nothing new: wakes those waiting on it.
    pub fn reread_done(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.reread_done_ms.store(now.max(1), Ordering::Release);
        self.generation.send_modify(|_| {});
    }

    /// Ready: every key source has a key and we are not draining.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        if self.snapshot.load().credentials.iter().any(Option::is_none) {
            return Err("credential_unavailable");
        }
        Ok(())
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Notes that a request arrived at `at` (for the idle-drain on shutdown).
    pub fn touch(&self, at: Instant) {
        let since = at.saturating_duration_since(self.started);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last request arrived.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn set_credential_error(&self, name: &Arc<str>, error: Option<String>) {
        let mut errors = self
            .credential_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match error {
            Some(e) => errors.insert(name.clone(), e),
            None => errors.remove(name),
        };
    }

    pub fn set_credential_pending(&self, name: &Arc<str>, pending: Option<Pending>) {
        let mut all = self
            .credential_pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pending {
            Some(p) => all.insert(name.clone(), p),
            None => all.remove(name),
        };
    }

    /// The rotated key held back for `name`, if any (admin pages only, never per request).
    pub fn credential_pending(&self, name: &str) -> Option<Pending> {
        let all = self
            .credential_pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.get(name).cloned()
    }

    pub fn credential_error(&self, name: &str) -> Option<String> {
        let errors = self
            .credential_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.get(name).cloned()
    }

    pub fn set_credential_reloaded_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.credential_reloaded_at.store(now, Ordering::Relaxed);
    }

    pub fn credential_reloaded_at(&self) -> u64 {
        self.credential_reloaded_at.load(Ordering::Relaxed)
    }
}
