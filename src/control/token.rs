//! Minted tokens, off the request path: one task per credential with a token scheme mints a
//! token at start, refreshes it in the background before it expires and hands each new token
//! to the reload task, the snapshot's single writer, so a request still loads one snapshot and
//! takes no lock.
//!
//! - One task per credential: a burst of requests never causes more than one token request
//!   (single-flight), and no request waits for a refresh while the current token is valid.
//! - Refresh when the time left is under the scheme's margin (`refresh_before`, else the
//!   smaller of 20% of the lifetime and 5 minutes), measured from when the request was sent.
//! - Failures back off with jitter, but at least every tenth of the lifetime or 30 s, whichever
//!   is shorter, so an endpoint back before expiry is used before expiry. The current token is
//!   kept while valid; at its expiry with no replacement it is withdrawn (503
//!   `credential_unavailable`, nothing sent).
//! - A forced refresh (an upstream 401, at most one per 10 s per credential; a rotated secret
//!   file, at once) wakes the task early.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};

use crate::config::NamedCredential;
use crate::credential::mint::{MAX_RESPONSE, Mint, MintError};
use crate::credential::{Credential, Spec};
use crate::telemetry;

/// Longest token exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Fewest seconds between two 401-forced refreshes of one credential.
const FORCE_EVERY: Duration = Duration::from_secs(10);

/// What a task reports to the reload task.
pub(super) enum Minted {
    Token {
        name: Arc<str>,
        credential: Arc<Credential>,
    },
    /// The token `fingerprint` expired with no replacement: withdraw it.
    Expired { name: Arc<str>, fingerprint: String },
}

impl Minted {
    pub(super) fn name(&self) -> &Arc<str> {
        match self {
            Self::Token { name, .. } | Self::Expired { name, .. } => name,
        }
    }
}

struct Task {
    spec: Spec,
    force: Arc<Notify>,
    handle: tokio::task::JoinHandle<()>,
    /// SHA-256 of the secret inputs last seen: a change mints with the new secret at once.
    inputs: Option<[u8; 32]>,
    last_forced: Option<Instant>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The reload task's side: the tasks and the latest token of each.
pub(super) struct Tokens {
    tasks: BTreeMap<Arc<str>, Task>,
    current: BTreeMap<Arc<str>, Arc<Credential>>,
    tx: mpsc::UnboundedSender<Minted>,
}

impl Tokens {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Minted>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let t = Self {
            tasks: BTreeMap::new(),
            current: BTreeMap::new(),
            tx,
        };
        (t, rx)
    }

    /// The current token of `named` (a token scheme), starting its task when there is none
    /// for this config, and minting at once when its secret inputs changed.
    pub(super) fn sync(&mut self, named: &NamedCredential, api: &str) -> Option<Arc<Credential>> {
        let mint = named.config.scheme.mint()?.clone();
        let inputs = digest(&named.config);
        match self.tasks.get_mut(&named.name) {
            Some(task) if task.spec == named.config => {
                if inputs.is_some() && task.inputs.is_some() && inputs != task.inputs {
                    tracing::info!(
                        credential = &*named.name,
                        "the token's secret changed: minting a new token with it"
                    );
                    task.force.notify_one();
                }
                if inputs.is_some() {
                    task.inputs = inputs;
                }
            }
            _ => {
                // New, or its settings changed: a fresh task; the old token goes with the old
                // settings (another endpoint or secret may not honour it).
                self.current.remove(&named.name);
                let force = Arc::new(Notify::new());
                let handle = tokio::spawn(run(
                    named.name.clone(),
                    Arc::from(api),
                    named.config.clone(),
                    mint,
                    force.clone(),
                    self.tx.clone(),
                ));
                let task = Task {
                    spec: named.config.clone(),
                    force,
                    handle,
                    inputs,
                    last_forced: None,
                };
                self.tasks.insert(named.name.clone(), task);
            }
        }
        self.current.get(&named.name).cloned()
    }

    /// Stops the tasks of credentials no longer configured with a token scheme.
    pub(super) fn retain(&mut self, names: &BTreeSet<Arc<str>>) {
        self.tasks.retain(|n, _| names.contains(n));
        self.current.retain(|n, _| names.contains(n));
    }

    /// Takes a task's report.
    pub(super) fn accept(&mut self, m: Minted) {
        match m {
            Minted::Token { name, credential } if self.tasks.contains_key(&name) => {
                self.current.insert(name, credential);
            }
            Minted::Expired { name, fingerprint } => {
                let same = self
                    .current
                    .get(&name)
                    .and_then(|c| c.token())
                    .is_some_and(|t| t.fingerprint == fingerprint);
                if same {
                    self.current.remove(&name);
                }
            }
            Minted::Token { .. } => {}
        }
    }

    /// An upstream 401: every token task refreshes now, each at most once per 10 s. Returns
    /// the credentials asked (the reload task waits briefly for their new tokens).
    pub(super) fn force_all(&mut self) -> BTreeSet<Arc<str>> {
        let mut asked = BTreeSet::new();
        for (name, task) in &mut self.tasks {
            if task.last_forced.is_some_and(|t| t.elapsed() < FORCE_EVERY) {
                continue;
            }
            task.last_forced = Some(Instant::now());
            task.force.notify_one();
            asked.insert(name.clone());
        }
        asked
    }
}

/// SHA-256 over the secret inputs as they read now (`None`: unreadable; the task reports it).
fn digest(spec: &Spec) -> Option<[u8; 32]> {
    let parts = spec.read_parts().ok()?;
    let mut h = Sha256::new();
    for p in &parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_slice());
    }
    Some(h.finalize().into())
}

/// A fraction in [0, 1) from the process's random hasher keys (jitter; not cryptographic).
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `check --online`: mints one token with these settings and returns its fingerprint and
/// lifetime (the token itself goes nowhere).
pub async fn mint_once(spec: &Spec) -> Result<(String, Duration), MintError> {
    let mint = spec
        .scheme
        .mint()
        .ok_or_else(|| MintError::Secret("not a token scheme".into()))?;
    let (credential, lifetime) = fetch(spec, mint).await?;
    let fp = credential
        .token()
        .map(|t| t.fingerprint.clone())
        .unwrap_or_default();
    Ok((fp, lifetime))
}

/// Mints one token: reads the secret inputs, asks the endpoint, reads the answer.
async fn fetch(spec: &Spec, mint: &Mint) -> Result<(Arc<Credential>, Duration), MintError> {
    let parts = spec
        .read_parts()
        .map_err(|e| MintError::Secret(e.to_string()))?;
    let now = SystemTime::now();
    let req = mint.request(&parts, now)?;
    let (status, body) =
        crate::upstream::oneshot::exchange(&mint.endpoint, req, MAX_RESPONSE, EXCHANGE_TIMEOUT)
            .await
            .map_err(MintError::Unreachable)?;
    let token = mint.parse(status, &body, now)?;
    let credential = match &token.aws {
        Some(keys) => Credential::minted_aws(spec, &parts, keys, &token.value, now, token.lifetime),
        None => Credential::minted(spec, &parts, &token.value, now, token.lifetime),
    }
    .map_err(|e| MintError::Malformed(e.to_string()))?;
    Ok((Arc::new(credential), token.lifetime))
}

/// One credential's task: mint, hand over, sleep until the refresh point (or a forced
/// refresh), withdraw an expired token, back off on failures.
async fn run(
    name: Arc<str>,
    api: Arc<str>,
    spec: Spec,
    mint: Arc<Mint>,
    force: Arc<Notify>,
    tx: mpsc::UnboundedSender<Minted>,
) {
    let mut backoff = Duration::from_millis(500);
    // The current token: its fingerprint, when it expires, its lifetime.
    let mut current: Option<(String, Instant, Duration)> = None;
    loop {
        let sent = Instant::now();
        let wait = match fetch(&spec, &mint).await {
            Ok((credential, lifetime)) => {
                let token = credential
                    .token()
                    .map(|t| t.fingerprint.clone())
                    .unwrap_or_default();
                let expires = credential
                    .token()
                    .map_or(SystemTime::now(), |t| t.expires_at);
                metrics::counter!(telemetry::TOKEN_FETCHES_TOTAL, "api" => api.to_string(), "credential" => name.to_string(), "result" => "ok").increment(1);
                let at = expires
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics::gauge!(telemetry::TOKEN_EXPIRY_TIMESTAMP_SECONDS, "api" => api.to_string(), "credential" => name.to_string()).set(at);
                tracing::info!(credential = &*name, token_fingerprint = %token, expires_in_s = lifetime.as_secs(), "token minted");
                current = Some((token, sent + lifetime, lifetime));
                backoff = Duration::from_millis(500);
                let _ = tx.send(Minted::Token {
                    name: name.clone(),
                    credential,
                });
                // Refresh at the margin, never in a tight loop.
                lifetime
                    .saturating_sub(mint.margin(lifetime))
                    .max(Duration::from_millis(500))
            }
            Err(e) => {
                metrics::counter!(telemetry::TOKEN_FETCHES_TOTAL, "api" => api.to_string(), "credential" => name.to_string(), "result" => e.result_label()).increment(1);
                let left = current
                    .as_ref()
                    .map(|(_, until, _)| until.saturating_duration_since(Instant::now()));
                tracing::warn!(credential = &*name, reason = %e, token_left_s = left.map(|d| d.as_secs()), "token refresh failed; the current token stays in use while it is valid");
                // Back off with jitter, but try at least every tenth of the lifetime (or 30 s).
                let lifetime = current.as_ref().map_or(Duration::from_secs(300), |c| c.2);
                let cap =
                    (lifetime / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
                let wait = backoff.mul_f64(0.5 + jitter()).min(cap);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            let expiry = current.as_ref().map(|(_, until, _)| *until);
            tokio::select! {
                () = &mut sleep => break,
                () = force.notified() => break,
                () = until(expiry) => {
                    if let Some((fingerprint, _, _)) = current.take() {
                        tracing::warn!(credential = &*name, "the token expired with no replacement: requests get 503 credential_unavailable until a new one is minted");
                        let _ = tx.send(Minted::Expired { name: name.clone(), fingerprint });
                    }
                }
            }
        }
    }
}

/// Resolves at `at`, never when `None`.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
