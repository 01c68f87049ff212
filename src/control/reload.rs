//! The single writer of the snapshot: watches the config, catalogue and key directories,
//! re-reads on events (debounced) and on a periodic tick, validates, and publishes a new
//! snapshot only when something valid changed. A bad update keeps the last good value and
//! says so in the log, the metrics and `/credential`.
//!
//! Directories are watched, never files: Kubernetes replaces Secret and ConfigMap content by
//! swapping a `..data` symlink, and editors rename over files, either of which silently ends
//! a watch on the file itself. The periodic re-read covers lost events, network volumes and
//! a watcher that could not be created.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, CredentialConfig};
use crate::control::state::{Shared, Snapshot};
use crate::credential::{Credential, KeyError};
use crate::telemetry;

use super::compose::optional_client_cert;
pub use super::compose::{compose, first_credentials, listener_tls};
use super::watch::{counts, watch_dirs};

/// Longest wait for forced token refreshes after a 401 (the replay waits for the re-read).
const TOKEN_WAIT: Duration = Duration::from_millis(400);

/// Interval used when no filesystem watcher could be created.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (tx, mut events) = mpsc::channel::<()>(1);
    let names: Arc<ArcSwap<Vec<OsString>>> = Arc::default();
    let relevant = names.clone();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if counts(&event, &relevant.load()) {
                // A full channel already holds a pending reload: coalesce.
                let _ = tx.try_send(());
            }
        },
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a filesystem watcher; falling back to polling every second");
            None
        }
    };
    let (verifier, mut verified) = super::verify::Verifier::new();
    let (tokens, mut minted) = super::token::Tokens::new();
    let mut reloader = Reloader {
        verifier,
        tokens,
        urgent: false,
        shared,
        names,
        watched: BTreeSet::new(),
        last_config_error: None,
        last_key_errors: std::collections::BTreeMap::new(),
        last_tls_error: None,
        last_password_error: None,
    };
    reloader.ensure_watches(watcher.as_mut());
    reloader.report_start();
    // Anything that changed between the first load and the watch being set up would
    // otherwise wait for the periodic tick: read once now.
    reloader.reload_once();
    loop {
        let snap = reloader.shared.load();
        let every = if watcher.is_some() {
            snap.config.reload.interval
        } else {
            POLL_FALLBACK
        };
        let debounce = snap.config.reload.debounce;
        drop(snap);
        tokio::select! {
            Some(()) = events.recv() => {
                // Let a burst of events (a `..data` swap is several) settle, then read once
                // (at once when a 401 asks for it meanwhile).
                tokio::select! {
                    () = tokio::time::sleep(debounce) => {}
                    () = reloader.shared.reread_asked() => reloader.urgent = true,
                    () = crate::shutdown::stopped(&mut stop) => return,
                }
                while events.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(every) => {}
            () = reloader.shared.reread_asked() => {
                tracing::info!("upstream answered 401: re-reading the keys now");
                reloader.urgent = true;
                // Minted tokens: one forced refresh each (at most one per 10 s); the replay
                // waits briefly for the new tokens.
                let mut waiting = reloader.tokens.force_all();
                let deadline = tokio::time::Instant::now() + TOKEN_WAIT;
                while !waiting.is_empty() {
                    match tokio::time::timeout_at(deadline, minted.recv()).await {
                        Ok(Some(m)) => {
                            waiting.remove(m.name());
                            reloader.tokens.accept(m);
                        }
                        _ => break,
                    }
                }
            }
            Some(m) = minted.recv() => reloader.tokens.accept(m),
            Some(outcome) = verified.recv() => {
                let snap = reloader.shared.load();
                let current = snap
                    .config
                    .credentials
                    .iter()
                    .zip(snap.credentials.iter())
                    .find(|(n, _)| n.name == *outcome.name())
                    .and_then(|(_, c)| c.as_ref().map(|c| c.fingerprint().to_owned()));
                reloader.verifier.settle(&reloader.shared, &outcome, current.as_deref());
            }
            () = crate::shutdown::stopped(&mut stop) => return,
        }
        reloader.reload_once();
        reloader.urgent = false;
        reloader.shared.reread_done();
        reloader.ensure_watches(watcher.as_mut());
    }
}

struct Reloader {
    /// Rotated keys tried with the API's verify request before they are used.
    verifier: super::verify::Verifier,
    /// The tasks that mint the token schemes' tokens, and their latest tokens.
    tokens: super::token::Tokens,
    /// This pass re-reads because the upstream refused the key in use: a new value is used
    /// at once (verified for the report only).
    urgent: bool,
    shared: Arc<Shared>,
    /// File names whose events trigger a reload (read by the watcher's thread).
    names: Arc<ArcSwap<Vec<OsString>>>,
    watched: BTreeSet<PathBuf>,
    last_config_error: Option<String>,
    last_key_errors: std::collections::BTreeMap<Arc<str>, String>,
    last_tls_error: Option<String>,
    last_password_error: Option<String>,
}

impl Reloader {
    /// Watches the parent directory of every file the config depends on (again after a
    /// directory appears later or the config names new files).
    fn ensure_watches(&mut self, watcher: Option<&mut notify::RecommendedWatcher>) {
        let files = self.shared.load().config.watched_files();
        let names: Vec<OsString> = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        if **self.names.load() != names {
            self.names.store(Arc::new(names));
        }
        let Some(watcher) = watcher else { return };
        // A directory that went away took its watch with it (kubelet deletes the old
        // `..<timestamp>` directory after a swap).
        self.watched.retain(|dir| dir.is_dir());
        for dir in files.iter().flat_map(|f| watch_dirs(f)) {
            if self.watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching");
                    self.watched.insert(dir);
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch yet; the periodic re-read covers it")
                }
            }
        }
    }

    /// One pass: re-read config and key, publish if anything valid changed.
    fn reload_once(&mut self) {
        let snap = self.shared.load();
        let mut config = snap.config.clone();
        let mut config_changed = false;
        match Config::load(&snap.config.path) {
            Ok(new) if new.digest == config.digest => self.last_config_error = None,
            Ok(new) => match unreloadable(&config, &new) {
                Some(what) => self.config_failed(
                    "refused",
                    format!("{what} cannot change without a restart; keeping the running config"),
                ),
                None => {
                    tracing::info!(file = %new.path.display(), "config reloaded");
                    metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "result" => "ok")
                        .increment(1);
                    self.last_config_error = None;
                    config = Arc::new(new);
                    config_changed = true;
                }
            },
            Err(e) => self.config_failed("invalid", e.to_string()),
        }

        // Every key source: a new valid key replaces the last good one of the same name
        // and source; a failure keeps it.
        let mut key_changed = false;
        let mut credentials = Vec::with_capacity(config.credentials.len());
        for named in &config.credentials {
            let previous = snap
                .config
                .credentials
                .iter()
                .zip(snap.credentials.iter())
                .find(|(old, _)| old.name == named.name && old.config == named.config)
                .and_then(|(_, c)| c.clone());
            // A token scheme: its task mints; the latest token is the credential.
            if named.config.scheme.mint().is_some() {
                let api = config.apis.get(named.api).map_or("none", |a| &*a.name);
                let next = match (&previous, self.tokens.sync(named, api)) {
                    // A token from a new secret (its fingerprint is the secret's): tried with
                    // the API's verify request before it replaces the one in use; a refresh
                    // with the same secret is used at once.
                    // (Kept only while it is valid: the old secret's token is never refreshed.)
                    (Some(old), Some(new))
                        if old.fingerprint() != new.fingerprint()
                            && old
                                .token()
                                .is_some_and(|t| t.expires_at > std::time::SystemTime::now())
                            && !self.may_use(&snap, &config, named, true, &new) =>
                    {
                        Some(old.clone())
                    }
                    (Some(old), Some(new)) if old.fingerprint() == new.fingerprint() => {
                        self.verifier.forget(&self.shared, &named.name);
                        Some(new)
                    }
                    (_, next) => next,
                };
                let same = match (&previous, &next) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                key_changed |= !same;
                credentials.push(next);
                continue;
            }
            let next = match Credential::load(&named.config) {
                Ok(new) => {
                    let new = Arc::new(new);
                    self.last_key_errors.remove(&named.name);
                    self.shared.set_credential_error(&named.name, None);
                    match previous {
                        Some(old) if old.same_as(&new) => {
                            self.verifier.forget(&self.shared, &named.name);
                            Some(old)
                        }
                        old if !self.may_use(&snap, &config, named, old.is_some(), &new) => old,
                        old => {
                            tracing::info!(
                                credential = &*named.name,
                                old_fingerprint = old.as_ref().map(|c| c.fingerprint()),
                                new_fingerprint = new.fingerprint(),
                                "API key rotated"
                            );
                            let api = config.apis.get(named.api).map_or("none", |a| &*a.name);
                            metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "result" => "ok")
                                .increment(1);
                            self.shared.set_credential_reloaded_now();
                            key_changed = true;
                            // Responses are scrubbed of the key it replaces too.
                            Some(match &old {
                                Some(o) => Arc::try_unwrap(new)
                                    .map(|c| Arc::new(c.with_previous(o)))
                                    .unwrap_or_else(|shared| shared),
                                None => new,
                            })
                        }
                    }
                }
                Err(e) => {
                    let api = config.apis.get(named.api).map_or("none", |a| &*a.name);
                    self.key_failed(api, &named.name, &named.config, &e);
                    previous
                }
            };
            credentials.push(next);
        }
        if credentials.len() != snap.credentials.len() {
            key_changed = true;
        }
        let minted: std::collections::BTreeSet<Arc<str>> = config
            .credentials
            .iter()
            .filter(|c| c.config.scheme.mint().is_some())
            .map(|c| c.name.clone())
            .collect();
        self.tokens.retain(&minted);

        // The listener certificate: rebuilt when its files (or the config) changed.
        let mut tls = snap.tls.clone();
        let mut tls_changed = false;
        if let Some(files) = &config.listener.tls {
            let now = crate::control::tls::digest(files, optional_client_cert(&config));
            let same = matches!((&now, &tls), (Ok(d), Some(t)) if *d == t.digest);
            if !same || config_changed {
                match listener_tls(&config) {
                    Ok(Some(built)) => {
                        if !same {
                            tracing::info!(cert = %files.cert_file.display(), "listener certificate reloaded");
                            metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "result" => "ok")
                                .increment(1);
                        }
                        self.last_tls_error = None;
                        tls = Some(built);
                        tls_changed = true;
                    }
                    Ok(None) => {}
                    Err(e) => self.tls_failed(e),
                }
            }
        }

        // The shared limiter's password (a config change rebuilds it in `compose`).
        let mut limiter = snap.shared_limiter.clone();
        let mut limiter_changed = false;
        if !config_changed {
            match super::shared_limit::refresh(&config, snap.shared_limiter.as_ref()) {
                Ok(r) => {
                    self.password_result(&config, r.password_error);
                    limiter_changed = match (&r.limiter, &limiter) {
                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                        (a, b) => a.is_some() != b.is_some(),
                    };
                    limiter = r.limiter;
                }
                Err(e) => self.config_failed("invalid", e),
            }
        }

        if !config_changed && !key_changed && !tls_changed && !limiter_changed {
            return;
        }
        let credentials: Arc<[Option<Arc<Credential>>]> = credentials.into();
        let next = if config_changed {
            compose(config, credentials, tls, snap.generation + 1, Some(&snap))
        } else {
            super::seed::key_series(&config, &credentials);
            Ok(Snapshot {
                generation: snap.generation + 1,
                config,
                principals: snap.principals.clone(),
                unidentified: snap.unidentified.clone(),
                apis: snap.apis.clone(),
                router: snap.router.clone(),
                credentials,
                tls,
                shared_limiter: limiter,
            })
        };
        match next {
            Ok(next) => self.shared.store(next),
            Err(e) => self.config_failed("invalid", e.to_string()),
        }
    }

    /// Reports a refused Redis password file once per distinct error.
    fn password_result(&mut self, config: &Config, error: Option<String>) {
        if error.is_some() && error != self.last_password_error {
            let file = config
                .limits
                .shared
                .as_ref()
                .and_then(|s| s.password_file.as_deref());
            super::shared_limit::password_refused(file, error.as_deref().unwrap_or_default());
        }
        self.last_password_error = error;
    }

    fn tls_failed(&mut self, message: String) {
        if self.last_tls_error.as_ref() != Some(&message) {
            tracing::warn!(error = %message, "listener certificate update refused; the last good certificate keeps serving");
            metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "result" => "invalid").increment(1);
            self.last_tls_error = Some(message);
        }
    }

    fn config_failed(&mut self, result: &'static str, message: String) {
        // The periodic re-read sees the same bad file every tick: report each error once.
        if self.last_config_error.as_ref() != Some(&message) {
            tracing::warn!(error = %message, "config update refused; the last good config keeps serving");
            metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
            self.last_config_error = Some(message);
        }
    }

    /// Whether a new value of `named` may replace the key in use now (`has_old`): yes without
    /// a verify request, at start, on a 401 re-read (those are verified for the report), or
    /// once the verify request accepted it.
    fn may_use(
        &mut self,
        snap: &Snapshot,
        config: &Config,
        named: &crate::config::NamedCredential,
        has_old: bool,
        new: &Arc<Credential>,
    ) -> bool {
        let Some((api, verify)) = config
            .apis
            .get(named.api)
            .and_then(|a| Some((a, a.verify.as_ref()?)))
        else {
            return true;
        };
        // The running snapshot's client for this API (a config change rebuilds clients; the
        // verify request then waits for the next pass).
        let Some(upstream) = snap
            .config
            .apis
            .iter()
            .position(|a| a.name == api.name)
            .and_then(|i| snap.apis.get(i))
            .map(|s| s.upstream.clone())
        else {
            return true;
        };
        let target = (&*api.name, verify, upstream);
        if !has_old || self.urgent {
            self.verifier.forget(&self.shared, &named.name);
            self.verifier.report(named, new, target);
            return true;
        }
        let interval = config.reload.interval;
        self.verifier
            .admit(&self.shared, named, new, target, interval)
    }

    /// At start the keys are in use already: each is verified for the report only.
    fn report_start(&self) {
        let snap = self.shared.load();
        for (named, key) in snap.config.credentials.iter().zip(snap.credentials.iter()) {
            let Some(key) = key else { continue };
            let api = snap.config.apis.get(named.api);
            let state = snap.apis.get(named.api);
            if let (Some(api), Some(state)) = (api, state) {
                if let Some(verify) = &api.verify {
                    let target = (&*api.name, verify, state.upstream.clone());
                    self.verifier.report(named, key, target);
                }
            }
        }
    }

    fn key_failed(&mut self, api: &str, name: &Arc<str>, config: &CredentialConfig, e: &KeyError) {
        let message = e.to_string();
        if self.last_key_errors.get(name) == Some(&message) {
            return;
        }
        let sources: Vec<String> = config.parts.iter().map(|p| p.source.describe()).collect();
        let source = sources.join(", ");
        tracing::warn!(credential = &**name, reason = %message, source, "API key update refused; the last good key stays in use");
        metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "api" => api.to_owned(), "credential" => name.to_string(), "result" => e.result_label())
            .increment(1);
        self.shared
            .set_credential_error(name, Some(message.clone()));
        self.last_key_errors.insert(name.clone(), message);
    }
}

/// Settings bound at start (sockets, threads): a change is refused, not half-applied.
/// The APIs with their own listener, bound at start.
fn own_listeners(config: &Config) -> Vec<(&str, std::net::SocketAddr)> {
    config
        .apis
        .iter()
        .filter_map(|a| Some((&*a.name, a.listen?)))
        .collect()
}

fn unreloadable(old: &Config, new: &Config) -> Option<&'static str> {
    if old.listener.address != new.listener.address {
        Some("listener.address")
    } else if old.admin.address != new.admin.address {
        Some("admin.address")
    } else if old.runtime.workers != new.runtime.workers {
        Some("runtime.workers")
    } else if old.listener.tls.is_some() != new.listener.tls.is_some() {
        Some("listener.tls")
    } else if own_listeners(old) != own_listeners(new) {
        Some("api.*.listen")
    } else if old.forward_proxy.as_ref().map(|f| f.address)
        != new.forward_proxy.as_ref().map(|f| f.address)
    {
        Some("forward_proxy.address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn gateway(dir: &Path, rate: &str) -> Arc<Config> {
        let hash = crate::proxy::caller::token_sha256("t");
        let text = format!(
            "[upstream]\nurl = \"https://api.example.com\"\n[credential]\nfile = \"k\"\n\
             [permissions]\nread = [\"GET /v1/x\"]\n\
             [[caller]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nallow = [\"read\"]\nrate = \"{rate}\"\n"
        );
        let path = dir.join("gw.toml");
        std::fs::write(&path, text).unwrap();
        Arc::new(Config::load(&path).unwrap())
    }

    /// Reading a watched file (as every re-read does) must not trigger a re-read; changing it
    /// must. Events arrive in order, so once the write to `sentinel` is seen, any event the
    /// read caused has been seen too.
    #[test]
    fn reading_a_watched_file_is_not_a_change() {
        let dir = std::env::temp_dir().join(format!("sidekey-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, sentinel) = (dir.join("key"), dir.join("sentinel"));
        std::fs::write(&key, "k1").unwrap();
        let names: Vec<OsString> = vec!["key".into(), "sentinel".into()];
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                let _ = tx.send(event);
            }
        })
        .unwrap();
        watcher.watch(&dir, RecursiveMode::NonRecursive).unwrap();
        // What events about `key` said until a counting event about `until` arrived.
        let key_events_until = |until: &Path| -> Vec<bool> {
            let mut seen = Vec::new();
            loop {
                let event = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                let about = |f: &Path| event.paths.iter().any(|p| p == f);
                if about(&key) {
                    seen.push(counts(&event, &names));
                }
                if about(until) && counts(&event, &names) {
                    return seen;
                }
            }
        };
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "k1");
        std::fs::write(&sentinel, "1").unwrap();
        let read = key_events_until(&sentinel);
        assert!(!read.is_empty(), "the read was reported (open, close)");
        assert!(
            read.iter().all(|c| !c),
            "a read counted as a change: {read:?}"
        );
        std::fs::write(&key, "k2").unwrap();
        assert!(key_events_until(&key).contains(&true));
        drop(watcher);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A reload that keeps a caller's limits keeps its limiter (no fresh burst); one that
    /// changes them starts a new one.
    #[test]
    fn limiters_survive_reloads_that_keep_their_settings() {
        let dir = std::env::temp_dir().join(format!("sidekey-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = compose(gateway(&dir, "5/s"), Arc::new([None]), None, 1, None).unwrap();
        let same = compose(
            gateway(&dir, "5/s"),
            Arc::new([None]),
            None,
            2,
            Some(&first),
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &first.principals[0].limiter,
            &same.principals[0].limiter
        ));
        let changed =
            compose(gateway(&dir, "9/s"), Arc::new([None]), None, 3, Some(&same)).unwrap();
        assert!(!Arc::ptr_eq(
            &same.principals[0].limiter,
            &changed.principals[0].limiter
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
