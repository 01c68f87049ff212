//! sidekey: an egress credential sidecar.
//!
//! Applications send plain HTTP to sidekey on loopback. sidekey checks each request against
//! the service's allow-list (default deny), strips caller credentials, injects the API key
//! from a hot-reloaded secret file, and forwards over verified TLS with bodies streamed both
//! ways. The key never appears in logs, metrics, errors or `Debug` output; only its
//! fingerprint does.
//!
//! [`App::bind`] binds the listeners (port 0 allowed) and reports the real addresses;
//! [`App::run`] serves until the shutdown future resolves. `main` and the integration tests
//! use exactly this path.

// The request path (per request): serve -> proxy -> policy, upstream.
pub mod policy;
pub mod proxy;
pub mod serve;
pub mod upstream;
// The writers (per reload): config, and control (snapshot state, reload, keys, TLS material).
pub mod config;
pub mod control;
pub mod credential;
// Beside both: admin endpoints, telemetry, the ground-floor names and the shutdown flag.
pub mod admin;
pub mod body;
pub mod headers;
pub mod limit;
pub mod recent;
pub mod shutdown;
pub mod telemetry;
// Once per command (the library never imports `cli`), and the demo/test mock.
pub mod cli;
pub mod mock;
pub mod pki;

use control::reload;
use proxy::caller;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::control::state::Shared;
use crate::credential::Credential;
use crate::serve::ServeOptions;

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, not yet serving, sidekey.
pub struct App {
    shared: Arc<Shared>,
    proxy: TcpListener,
    admin: TcpListener,
    /// APIs with their own `listen` address: name and listener.
    apis: Vec<(Arc<str>, TcpListener)>,
    /// `[forward_proxy]`: its listener and state.
    forward: Option<(TcpListener, Arc<proxy::forward::Forward>)>,
}

impl App {
    /// Loads the key (a missing key is not fatal: we start not-ready), builds the first
    /// snapshot and binds both listeners.
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        Self::bind_with_ca(config, None).await
    }

    /// The same, with the forward proxy's CA given (`sidekey exec`'s ephemeral one) instead
    /// of read from `forward_proxy.ca_cert_file`/`ca_key_file`.
    pub async fn bind_with_ca(
        config: Config,
        ca: Option<control::ca::InterceptCa>,
    ) -> Result<Self, AppError> {
        telemetry::metrics();
        seed_series();
        if config.service.mode == config::Mode::Report {
            tracing::warn!(
                service = &*config.service.name,
                "report mode: NOT enforcing the allow-list; requests it would deny are forwarded and logged as would_deny"
            );
        }
        for api in config.apis.iter().filter(|a| a.upstream.allow_plaintext) {
            tracing::warn!(api = &*api.name, url = %api.upstream.url, "allow_plaintext_upstream is on: the key may cross the network unencrypted (tests only)");
        }
        let loaded = reload::first_credentials(&config);
        for (named, (key, error)) in config.credentials.iter().zip(&loaded) {
            match (key, error) {
                (Some(c), _) => tracing::info!(
                    credential = &*named.name,
                    fingerprint = c.fingerprint(),
                    scheme = c.scheme(),
                    source = c.source(),
                    "API key loaded"
                ),
                (None, Some(e)) => {
                    tracing::warn!(credential = &*named.name, reason = %e, "no valid API key at start; its callers get 503 until one appears");
                    let api = config.apis.get(named.api).map_or("none", |a| &*a.name);
                    metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "result" => e.result_label()).increment(1);
                }
                (None, None) => tracing::info!(
                    credential = &*named.name,
                    scheme = named.config.scheme.name(),
                    "minting the first token; ready once it is here"
                ),
            }
            for path in named.config.files() {
                if credential::looks_like_subpath_mount(path) {
                    tracing::warn!(file = %path.display(), "the key file is a single-file mount (Kubernetes subPath?): such mounts never see Secret updates; mount the Secret as a whole volume");
                }
            }
        }
        let tls = reload::listener_tls(&config).map_err(|message| ConfigError {
            file: config.path.clone(),
            line: None,
            key: "listener.tls".into(),
            message,
        })?;
        let config = Arc::new(config);
        let proxy_addr = config.listener.address;
        let admin_addr = config.admin.address;
        let credentials: Arc<[Option<Arc<Credential>>]> =
            loaded.iter().map(|(k, _)| k.clone()).collect();
        let any_key = credentials.iter().any(Option::is_some);
        let snapshot = reload::compose(config.clone(), credentials, tls, 1, None)?;
        let shared = Arc::new(Shared::new(snapshot));
        for (named, (_, error)) in config.credentials.iter().zip(loaded) {
            shared.set_credential_error(&named.name, error.map(|e| e.to_string()));
        }
        if any_key {
            shared.set_credential_reloaded_now();
        }
        let proxy = bind("listener", proxy_addr).await?;
        let admin = bind("admin", admin_addr).await?;
        let mut apis = Vec::new();
        for api in &config.apis {
            if let Some(addr) = api.listen {
                let listener = bind("api listener", addr).await?;
                if let Ok(bound) = listener.local_addr() {
                    tracing::info!(api = &*api.name, listener = %bound, "api listener bound");
                }
                apis.push((api.name.clone(), listener));
            }
        }
        let forward = match &config.forward_proxy {
            None => None,
            Some(fp) => {
                let ca = match (ca, &fp.ca) {
                    (Some(ca), _) => ca,
                    (None, Some(files)) => {
                        control::ca::InterceptCa::load(files).map_err(|message| ConfigError {
                            file: config.path.clone(),
                            line: None,
                            key: "forward_proxy.ca_key_file".into(),
                            message,
                        })?
                    }
                    (None, None) => {
                        return Err(AppError::Config(ConfigError {
                            file: config.path.clone(),
                            line: None,
                            key: "forward_proxy".into(),
                            message: "needs ca_cert_file and ca_key_file (`sidekey ca init`), or run under `sidekey exec`".into(),
                        }));
                    }
                };
                warn_outside_ca(&config, &ca);
                let listener = bind("forward proxy", fp.address).await?;
                if let Ok(bound) = listener.local_addr() {
                    tracing::info!(forward_proxy = %bound, ca = &*ca.fingerprint, "forward proxy bound");
                }
                let fwd = proxy::forward::Forward::new(shared.clone(), ca);
                // Before anything serves: the app (and a startup probe) may wait for them.
                fwd.write_trust().map_err(|message| ConfigError {
                    file: config.path.clone(),
                    line: None,
                    key: "forward_proxy.trust_dir".into(),
                    message,
                })?;
                Some((listener, fwd))
            }
        };
        Ok(Self {
            shared,
            proxy,
            admin,
            apis,
            forward,
        })
    }

    /// The bound address of the forward-proxy listener.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The forward proxy's CA certificate (PEM), for the clients to trust.
    pub fn forward_ca_pem(&self) -> Option<String> {
        self.forward
            .as_ref()
            .map(|(_, f)| f.ca().cert_pem().to_owned())
    }

    /// The bound address of API `name`'s own listener.
    pub fn api_addr(&self, name: &str) -> Option<SocketAddr> {
        self.apis
            .iter()
            .find(|(n, _)| &**n == name)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains: not ready at once, keep serving until
    /// no request has arrived for `shutdown_idle` (a classic sidecar's app may still be
    /// finishing work), stop accepting, let in-flight requests finish, all within
    /// `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            shared,
            proxy,
            admin,
            apis,
            forward,
        } = self;
        let runtime = shared.load().config.runtime.clone();
        let opts = ServeOptions {
            header_read_timeout: shared.load().config.listener.header_read_timeout,
            idle_timeout: shared.load().config.listener.idle_timeout,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (drain_tx, drain_rx) = watch::channel(runtime.shutdown_grace);
        let proxy_shared = shared.clone();
        let tls_shared = shared.clone();
        let tls: Option<serve::TlsSource> = shared.load().tls.is_some().then(|| {
            Arc::new(move || tls_shared.load().tls.as_ref().map(|t| t.server.clone()))
                as serve::TlsSource
        });
        let proxy_task = tokio::spawn(serve::serve(
            proxy,
            move |peer: caller::Peer| {
                let shared = proxy_shared.clone();
                move |req| proxy::handle(shared.clone(), peer.clone(), proxy::Via::Shared, req)
            },
            tls,
            opts,
            stop_rx.clone(),
            drain_rx.clone(),
        ));
        // Each API's own listener: plain HTTP on loopback, that API only.
        let api_tasks: Vec<_> = apis
            .into_iter()
            .map(|(name, listener)| {
                let shared = shared.clone();
                tokio::spawn(serve::serve(
                    listener,
                    move |peer: caller::Peer| {
                        let (shared, name) = (shared.clone(), name.clone());
                        move |req| {
                            let via = proxy::Via::Listener(name.clone());
                            proxy::handle(shared.clone(), peer.clone(), via, req)
                        }
                    },
                    None,
                    opts,
                    stop_rx.clone(),
                    drain_rx.clone(),
                ))
            })
            .collect();
        let forward_task = forward.map(|(listener, fwd)| {
            tokio::spawn(fwd.clone().watch_ca(stop_rx.clone()));
            tokio::spawn(serve::serve(
                listener,
                move |_peer: caller::Peer| {
                    let fwd = fwd.clone();
                    move |req| proxy::forward::handle(fwd.clone(), req)
                },
                None,
                opts,
                stop_rx.clone(),
                drain_rx.clone(),
            ))
        });
        let admin_shared = shared.clone();
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(serve::serve(
            admin,
            move |_peer| {
                let shared = admin_shared.clone();
                move |req| admin::handle(shared.clone(), req)
            },
            None,
            opts,
            admin_stop_rx,
            drain_rx,
        ));
        let reload_task = tokio::spawn(reload::run(shared.clone(), stop_rx.clone()));
        let status_task = tokio::spawn(admin::status::sample(stop_rx.clone()));
        let upkeep_task = tokio::spawn(telemetry::upkeep(stop_rx));
        {
            let snap = shared.load();
            let callers: Vec<&str> = snap.config.principals.iter().map(|p| &*p.name).collect();
            tracing::info!(
                service = &*snap.config.service.name,
                gateway = snap.config.gateway,
                tls = snap.tls.is_some(),
                ?callers,
                "serving"
            );
        }

        shutdown.await;
        let started = Instant::now();
        shared.start_draining();
        tracing::info!(idle = ?runtime.shutdown_idle, grace = ?runtime.shutdown_grace, "shutting down: not ready, draining");
        while shared.idle_for() < runtime.shutdown_idle
            && started.elapsed() < runtime.shutdown_grace
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = drain_tx.send(runtime.shutdown_grace.saturating_sub(started.elapsed()));
        let _ = stop_tx.send(true);
        let _ = proxy_task.await;
        for task in api_tasks {
            let _ = task.await;
        }
        if let Some(task) = forward_task {
            let _ = task.await;
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        let _ = reload_task.await;
        let _ = upkeep_task.await;
        let _ = status_task.await;
        tracing::info!("stopped");
    }
}

/// Counters whose label values are known before the first event start at 0 (Prometheus
/// instrumentation guidance), so `rate()` and alerts see the first event.
fn seed_series() {
    for code in proxy::ProxyError::CODES
        .into_iter()
        .chain(["tls_handshake"])
    {
        metrics::counter!(telemetry::ERRORS_TOTAL, "code" => code).increment(0);
    }

    for result in ["ok", "invalid", "refused"] {
        metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
    }
    for result in ["ok", "invalid"] {
        metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "result" => result).increment(0);
    }
}

/// A name-constrained CA that does not cover a configured API host cannot intercept it.
fn warn_outside_ca(config: &Config, ca: &control::ca::InterceptCa) {
    let Some(permitted) = ca.permitted() else {
        return;
    };
    for api in &config.apis {
        let wildcard = api.wildcard_hosts.iter().map(|s| format!("x.{s}"));
        for host in config::api_key(api)
            .map(|(h, _)| h)
            .into_iter()
            .chain(wildcard)
        {
            if !control::ca::permits(&permitted, &host) {
                tracing::warn!(
                    api = &*api.name,
                    host,
                    "the interception CA's name constraints do not cover this host: clients will reject its leaf; re-issue the CA with `sidekey ca init`"
                );
            }
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}
