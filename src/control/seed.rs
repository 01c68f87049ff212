//! Series that start at 0 (Prometheus instrumentation guidance): every label value known
//! from the config is published before its first event, so `rate()` and alerts see it.

use std::sync::Arc;

use crate::config::Config;
use crate::credential::Credential;
use crate::telemetry;

/// Series known at load exist from the start, at 0, so `rate()` and alerts see the first
/// event after a change (a key revoked too early: its first 401s).
pub(super) fn key_series(config: &Config, credentials: &[Option<Arc<Credential>>]) {
    for api in &config.apis {
        for kind in crate::upstream::FailureKind::KINDS {
            metrics::counter!(telemetry::UPSTREAM_ERRORS_TOTAL, "api" => api.name.to_string(), "kind" => kind).increment(0);
        }
    }
    // Each granted permission's allowed requests, so request-rate panels and alerts see the
    // series before the first request (the other decisions and statuses appear when used).
    for p in &config.principals {
        for (api, perm) in &p.grants {
            let Some(api) = config.apis.get(*api) else {
                continue;
            };
            metrics::counter!(telemetry::REQUESTS_TOTAL, "caller" => p.name.to_string(), "api" => api.name.to_string(), "permission" => perm.to_string(), "decision" => "allow", "status" => "200").increment(0);
        }
    }
    // WebSocket series for each caller and each permission with a websocket route it holds.
    for p in &config.principals {
        for (i, api) in config.apis.iter().enumerate() {
            let granted = |perm: &str| p.grants.iter().any(|(a, g)| *a == i && &**g == perm);
            let mut perms: Vec<&str> = api
                .catalogue
                .iter()
                .filter(|r| r.websocket && granted(&r.permission))
                .map(|r| &*r.permission)
                .collect();
            perms.dedup();
            if perms.is_empty() {
                continue;
            }
            let (api, caller) = (api.name.to_string(), p.name.to_string());
            metrics::gauge!(telemetry::WEBSOCKETS_OPEN, "api" => api.clone(), "caller" => caller.clone()).increment(0.0);
            for perm in perms {
                for result in ["upgraded", "refused", "upstream_refused"] {
                    metrics::counter!(telemetry::WEBSOCKET_SESSIONS_TOTAL, "api" => api.clone(), "caller" => caller.clone(), "permission" => perm.to_owned(), "result" => result).increment(0);
                }
            }
        }
    }
    if config.limits.shared.is_some() {
        for result in ["allowed", "limited", "fallback_allowed", "fallback_limited"] {
            metrics::counter!(telemetry::SHARED_LIMIT_DECISIONS_TOTAL, "result" => result)
                .increment(0);
        }
        let reasons = crate::limit::shared::Failure::ALL.map(|f| f.as_str());
        for reason in reasons.iter().chain(&["password_file"]) {
            metrics::counter!(telemetry::SHARED_LIMIT_ERRORS_TOTAL, "reason" => *reason)
                .increment(0);
        }
    }
    for (named, key) in config.credentials.iter().zip(credentials) {
        let api = config.apis.get(named.api).map_or("none", |a| &*a.name);
        for result in ["ok", "invalid", "error"] {
            metrics::counter!(telemetry::CREDENTIAL_RELOADS_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "result" => result).increment(0);
        }
        for place in ["header", "body"] {
            metrics::counter!(telemetry::KEY_ECHOES_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "where" => place).increment(0);
        }
        // Token schemes: the fetch results, and the expiry at 0 until a token is minted.
        if named.config.scheme.mint().is_some() {
            for result in [
                "ok",
                "refused",
                "unreachable",
                "malformed",
                "invalid_secret",
            ] {
                metrics::counter!(telemetry::TOKEN_FETCHES_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "result" => result).increment(0);
            }
            metrics::gauge!(telemetry::TOKEN_EXPIRY_TIMESTAMP_SECONDS, "api" => api.to_owned(), "credential" => named.name.to_string()).increment(0.0);
        }
        if config
            .apis
            .get(named.api)
            .is_some_and(|a| a.verify.is_some())
        {
            for result in ["ok", "rejected", "unverified"] {
                metrics::counter!(telemetry::CREDENTIAL_VERIFICATIONS_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "result" => result).increment(0);
            }
        }
        if let Some(key) = key {
            metrics::counter!(telemetry::UPSTREAM_UNAUTHORIZED_TOTAL, "api" => api.to_owned(), "credential" => named.name.to_string(), "fingerprint" => key.fingerprint().to_owned()).increment(0);
        }
    }
}
