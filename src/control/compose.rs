//! Building a snapshot from a validated config: policies compiled, upstream clients and the
//! shared limiter built, limiters carried over; and the first load of keys and listener TLS.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::control::state::{ApiState, PrincipalState, Snapshot};
use crate::control::tls::TlsMaterial;
use crate::credential::{Credential, KeyError};
use crate::limit::Limiter;
use crate::telemetry::RequestCounters;
use crate::upstream::Upstream;

/// Builds a snapshot from a validated config (policies compiled, upstream client built).
/// Limiters whose settings did not change carry over from `previous`.
pub fn compose(
    config: Arc<Config>,
    credentials: Arc<[Option<Arc<Credential>>]>,
    tls: Option<Arc<TlsMaterial>>,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let mut apis = Vec::with_capacity(config.apis.len());
    for api in &config.apis {
        let upstream = Upstream::new(&api.upstream).map_err(|e| ConfigError {
            file: config.path.clone(),
            line: None,
            key: if config.named_apis {
                format!("api.{}.ca_file", api.name)
            } else {
                "upstream.ca_file".into()
            },
            message: format!("cannot build the TLS client: {e}"),
        })?;
        apis.push(ApiState {
            upstream: Arc::new(upstream),
        });
    }
    let principals = config
        .principals
        .iter()
        .map(|p| {
            let policies = config.compile_policies(p);
            let kept = previous.and_then(|prev| {
                let (i, _) = prev.config.principal(&p.name)?;
                let old = prev.principals.get(i)?;
                old.limiter
                    .same_settings(p.rate, p.max_concurrent)
                    .then(|| old.limiter.clone())
            });
            PrincipalState {
                counters: crate::control::state::request_counters(&p.name, &config.apis, &policies),
                policies: policies.into(),
                limiter: kept.unwrap_or_else(|| Arc::new(Limiter::new(p.rate, p.max_concurrent))),
            }
        })
        .collect();
    super::seed::key_series(&config, &credentials);
    let previous_limiter = previous.and_then(|p| p.shared_limiter.as_ref());
    let refreshed =
        super::shared_limit::refresh(&config, previous_limiter).map_err(|e| ConfigError {
            file: config.path.clone(),
            line: None,
            key: "limits.shared".into(),
            message: e,
        })?;
    if let Some(e) = &refreshed.password_error {
        let file = config
            .limits
            .shared
            .as_ref()
            .and_then(|s| s.password_file.as_deref());
        super::shared_limit::password_refused(file, e);
    }
    Ok(Snapshot {
        shared_limiter: refreshed.limiter,
        generation,
        principals,
        credentials,
        router: Arc::new(config.router()),
        apis: apis.into(),
        tls,
        unidentified: Arc::new(RequestCounters::new(
            "unidentified".into(),
            "none".into(),
            "none".into(),
        )),
        config,
    })
}

/// The listener TLS config for `config` (`None` without `[listener.tls]`).
pub fn listener_tls(config: &Config) -> Result<Option<Arc<TlsMaterial>>, String> {
    let Some(tls) = &config.listener.tls else {
        return Ok(None);
    };
    crate::control::tls::build(tls, optional_client_cert(config)).map(|m| Some(Arc::new(m)))
}

/// Token callers connect without a certificate; certificate-only gateways require one.
pub(super) fn optional_client_cert(config: &Config) -> bool {
    config
        .principals
        .iter()
        .any(|p| !matches!(p.identity, crate::config::Identity::ClientCert(_)))
}

/// Loads every key source once (start-up): the keys, and each failure by name.
pub fn first_credentials(config: &Config) -> Vec<(Option<Arc<Credential>>, Option<KeyError>)> {
    config
        .credentials
        .iter()
        .map(|c| match Credential::load(&c.config) {
            // Minted by its task once the reload task runs: not ready until then.
            Err(KeyError::Minted) => (None, None),
            Ok(k) => (Some(Arc::new(k)), None),
            Err(e) => (None, Some(e)),
        })
        .collect()
}
