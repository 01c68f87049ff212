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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError, CredentialSource};
use crate::secret::{Credential, KeyError};
use crate::state::{Shared, Snapshot};
use crate::telemetry;
use crate::upstream::Upstream;

/// Interval used when no filesystem watcher could be created.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// Builds a snapshot from a validated config (policy compiled, upstream client built).
pub fn compose(
    config: Arc<Config>,
    credential: Option<Arc<Credential>>,
    generation: u64,
) -> Result<Snapshot, ConfigError> {
    let upstream = Upstream::new(&config.upstream).map_err(|e| ConfigError {
        file: config.path.clone(),
        line: None,
        key: "upstream.ca_file".into(),
        message: format!("cannot build the TLS client: {e}"),
    })?;
    let policy = config.compile_policy();
    Ok(Snapshot {
        generation,
        counters: crate::state::request_counters(&policy),
        policy: Arc::new(policy),
        upstream: Arc::new(upstream),
        credential,
        config,
    })
}

/// Runs until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (tx, mut events) = mpsc::channel::<()>(1);
    let names: Arc<ArcSwap<Vec<OsString>>> = Arc::default();
    let relevant = names.clone();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            // Only events about our files, or about kubelet's `..data` / `..<timestamp>`
            // entries, count: a log file written into the same directory must not turn
            // every log line into a reload (and every reload's log line into an event).
            let names = relevant.load();
            let ours =
                event.paths.iter().filter_map(|p| p.file_name()).any(|n| {
                    n.as_encoded_bytes().starts_with(b"..") || names.iter().any(|w| w == n)
                });
            if ours {
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
    let mut reloader = Reloader {
        shared,
        names,
        watched: BTreeSet::new(),
        last_config_error: None,
        last_key_error: None,
    };
    reloader.ensure_watches(watcher.as_mut());
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
                // Let a burst of events (a `..data` swap is several) settle, then read once.
                tokio::time::sleep(debounce).await;
                while events.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(every) => {}
            () = crate::serve::stopped(&mut stop) => return,
        }
        reloader.reload_once();
        reloader.ensure_watches(watcher.as_mut());
    }
}

struct Reloader {
    shared: Arc<Shared>,
    /// File names whose events trigger a reload (read by the watcher's thread).
    names: Arc<ArcSwap<Vec<OsString>>>,
    watched: BTreeSet<PathBuf>,
    last_config_error: Option<String>,
    last_key_error: Option<String>,
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
        for file in files {
            let dir = file
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
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

        let mut credential = snap.credential.clone();
        match Credential::load(&config.credential) {
            Ok(new) => {
                self.last_key_error = None;
                self.shared.set_credential_error(None);
                if !credential.as_ref().is_some_and(|old| old.same_as(&new)) {
                    tracing::info!(
                        old_fingerprint = credential.as_ref().map(|c| c.fingerprint()),
                        new_fingerprint = new.fingerprint(),
                        "API key rotated"
                    );
                    metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "result" => "ok")
                        .increment(1);
                    self.shared.set_credential_reloaded_now();
                    credential = Some(Arc::new(new));
                }
            }
            Err(e) => self.key_failed(&config, &e),
        }

        let key_changed = match (&credential, &snap.credential) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if !config_changed && !key_changed {
            return;
        }
        let next = if config_changed {
            compose(config, credential, snap.generation + 1)
        } else {
            Ok(Snapshot {
                generation: snap.generation + 1,
                config,
                policy: snap.policy.clone(),
                counters: snap.counters.clone(),
                upstream: snap.upstream.clone(),
                credential,
            })
        };
        match next {
            Ok(next) => self.shared.store(next),
            Err(e) => self.config_failed("invalid", e.to_string()),
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

    fn key_failed(&mut self, config: &Config, e: &KeyError) {
        let message = e.to_string();
        if self.last_key_error.as_ref() == Some(&message) {
            return;
        }
        let source = match &config.credential.source {
            CredentialSource::File(p) => p.display().to_string(),
            CredentialSource::Env(v) => format!("${v}"),
        };
        tracing::warn!(reason = %message, source, "API key update refused; the last good key stays in use");
        metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "result" => e.result_label())
            .increment(1);
        self.shared.set_credential_error(Some(message.clone()));
        self.last_key_error = Some(message);
    }
}

/// Settings bound at start (sockets, threads): a change is refused, not half-applied.
fn unreloadable(old: &Config, new: &Config) -> Option<&'static str> {
    if old.listener.address != new.listener.address {
        Some("listener.address")
    } else if old.admin.address != new.admin.address {
        Some("admin.address")
    } else if old.runtime.workers != new.runtime.workers {
        Some("runtime.workers")
    } else {
        None
    }
}
