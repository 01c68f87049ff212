//! Names a `hosts` wildcard intercepts (`BUCKET.s3.REGION.amazonaws.com`): each gets its own
//! upstream client, the API's settings with that authority, so TLS verifies that name and the
//! request (and a SigV4 signature) carries it. Built once per name and config, bounded.

use std::collections::HashMap;
use std::sync::Arc;

use super::Forward;
use crate::config::{Config, api_key};

/// Upstream clients of wildcard-intercepted names.
#[derive(Default)]
pub(super) struct Hosted {
    /// The config they were built from.
    config: Option<Arc<Config>>,
    by_host: HashMap<(usize, String), Arc<crate::upstream::Upstream>>,
}

/// Most wildcard-intercepted names kept with a client (then the cache starts over).
const MAX_HOSTED: usize = 256;

/// A request extension: the client for the name this forward-proxy request was for, when
/// that is not the API's own host (a `hosts` wildcard).
#[derive(Clone)]
pub struct HostUpstream(pub Arc<crate::upstream::Upstream>);

impl Forward {
    /// The client for `host` when it is not API `api`'s own host (a wildcard name): the
    /// API's upstream settings with that authority, so TLS, `Host` and a signature name it.
    pub(crate) fn upstream_for(
        &self,
        config: &Arc<Config>,
        api: usize,
        host: &str,
        port: u16,
    ) -> Option<Arc<crate::upstream::Upstream>> {
        let cfg = config.apis.get(api)?;
        if api_key(cfg).is_some_and(|(h, _)| h == host) {
            return None;
        }
        let same = |c: &Option<Arc<Config>>| c.as_ref().is_some_and(|c| Arc::ptr_eq(c, config));
        let hosted = self.hosted.load();
        if same(&hosted.config) {
            if let Some(u) = hosted.by_host.get(&(api, host.to_owned())) {
                return Some(u.clone());
            }
        }
        let mut upstream_cfg = cfg.upstream.clone();
        // The default port is left out, as clients write it (and as a signature names it).
        let default = if cfg.upstream.scheme == http::uri::Scheme::HTTP {
            80
        } else {
            443
        };
        upstream_cfg.authority = match port == default {
            true => host.parse().ok()?,
            false => format!("{host}:{port}").parse().ok()?,
        };
        let client = match crate::upstream::Upstream::new(&upstream_cfg) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot build a client for a wildcard host");
                return None;
            }
        };
        self.hosted.rcu(|old| {
            let mut by_host = if same(&old.config) && old.by_host.len() < MAX_HOSTED {
                old.by_host.clone()
            } else {
                HashMap::new()
            };
            by_host.insert((api, host.to_owned()), client.clone());
            Hosted {
                config: Some(config.clone()),
                by_host,
            }
        });
        Some(client)
    }
}
