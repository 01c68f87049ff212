//! The admin listener (its own port, never the app's): `/healthz` (the process serves),
//! `/readyz` (a key is loaded and we are not draining), `/metrics` (Prometheus text) and
//! `/credential` (which key is live, by fingerprint only).

pub mod status;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::control::state::Shared;
use crate::telemetry;

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<crate::serve::RequestBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // A DNS-rebinding page must not read fingerprints, paths or refusals either: the same
    // Host and browser checks as the proxy's listeners (the admin listener has no callers).
    let screened = {
        let snap = shared.load();
        let l = &snap.config.listener;
        crate::proxy::local::browser(req.method(), req.headers(), &l.allowed_origins)
            .and_then(|()| crate::proxy::local::host(req.uri(), req.headers(), &l.allowed_hosts))
    };
    if let Err(e) = screened {
        metrics::counter!(crate::telemetry::ERRORS_TOTAL, "code" => e.code()).increment(1);
        tracing::info!(target: "sidekey::access", listener = "admin", error = e.code(), reason = e.reason(), "admin request refused");
        return Ok(json(
            e.status(),
            &serde_json::json!({"error": {"code": e.code(), "reason": e.reason(), "message": e.message()}}),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": {"code": "method_not_allowed"}}),
        ));
    }
    let resp = match req.uri().path() {
        "/" if shared.load().config.admin.status_page => {
            let mut r = Response::new(Full::new(Bytes::from(status::page(&shared))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => readyz(&shared),
        "/metrics" => metrics(&shared),
        "/credential" => credential(&shared),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"code": "not_found"}}),
        ),
    };
    Ok(resp)
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    let snap = shared.load();
    match shared.readiness() {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ready",
                "service": &*snap.config.service.name,
                "mode": snap.config.service.mode.as_str(),
                "generation": snap.generation,
            }),
        ),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready", "reason": reason, "generation": snap.generation, "mode": snap.config.service.mode.as_str()}),
        ),
    }
}

/// Every key source by name, fingerprints only. The top-level fields describe the first
/// source (`default` in the service shape), as before gateways existed.
fn credential(shared: &Shared) -> Response<Full<Bytes>> {
    let snap = shared.load();
    let list: Vec<serde_json::Value> = snap
        .config
        .credentials
        .iter()
        .zip(snap.credentials.iter())
        .enumerate()
        .map(|(slot, (named, key))| {
            let used_by: Vec<&str> = snap
                .config
                .principals
                .iter()
                .filter(|p| p.credentials.contains(&Some(slot)))
                .map(|p| &*p.name)
                .collect();
            serde_json::json!({
                "name": &*named.name,
                "api": snap.config.apis.get(named.api).map(|a| &*a.name),
                "fingerprint": key.as_ref().map(|c| c.fingerprint()),
                "source": key.as_ref().map(|c| c.source()),
                "scheme": named.config.scheme.name(),
                "placement": named.config.scheme.placement(),
                "parts": key.as_ref().map(|c| parts_json(c, &named.config)),
                "loaded_at": key.as_ref().map(|c| humantime::format_rfc3339_seconds(c.loaded_at()).to_string()),
                "last_error": shared.credential_error(&named.name),
                "token": key.as_ref().and_then(|c| c.token()).map(|t| serde_json::json!({
                    "fingerprint": t.fingerprint,
                    "fetched_at": humantime::format_rfc3339_seconds(t.fetched_at).to_string(),
                    "expires_at": humantime::format_rfc3339_seconds(t.expires_at).to_string(),
                })),
                "pending": shared.credential_pending(&named.name).map(|p| serde_json::json!({
                    "fingerprint": p.fingerprint,
                    "state": p.state,
                    "status": p.status,
                    "since": humantime::format_rfc3339_seconds(p.since).to_string(),
                })),
                "used_by": used_by,
            })
        })
        .collect();
    let first = list.first().cloned().unwrap_or_default();
    let body = serde_json::json!({
        "fingerprint": first.get("fingerprint"),
        "source": first.get("source"),
        "loaded_at": first.get("loaded_at"),
        "last_error": first.get("last_error"),
        "generation": snap.generation,
        "mode": snap.config.service.mode.as_str(),
        "credentials": list,
        "limiter": limiter_status(&snap),
    });
    let status = if snap.missing_credentials().is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// Where caller rates are decided: this replica (`local`) or Redis, with its health.
pub(crate) fn limiter_status(snap: &crate::control::state::Snapshot) -> serde_json::Value {
    match &snap.shared_limiter {
        Some(shared) => shared.status(),
        None => serde_json::json!({ "backend": "local" }),
    }
}

/// The recorder's metrics plus gauges rendered from the live snapshot, so the credential
/// series always shows the current fingerprint only (the old series is gone at once).
fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let snap = shared.load();
    let mut text = telemetry::metrics().render();
    telemetry::request_duration().render(&mut text);
    if let Some(shared) = &snap.shared_limiter {
        telemetry::shared_limit_duration().render(&mut text);
        let _ = writeln!(
            text,
            "# TYPE {} gauge\n{} {}",
            telemetry::SHARED_LIMIT_UP,
            telemetry::SHARED_LIMIT_UP,
            u8::from(shared.healthy())
        );
    }
    let ready = u8::from(shared.readiness().is_ok());
    let _ = writeln!(
        text,
        "# TYPE {} gauge\n{} {ready}",
        telemetry::READY,
        telemetry::READY
    );
    let _ = writeln!(
        text,
        "# TYPE {} gauge\n{} {}",
        telemetry::SNAPSHOT_GENERATION,
        telemetry::SNAPSHOT_GENERATION,
        snap.generation
    );
    let _ = writeln!(text, "# TYPE {} gauge", telemetry::CREDENTIAL_INFO);
    for (named, key) in snap.config.credentials.iter().zip(snap.credentials.iter()) {
        if let Some(c) = key {
            let api = snap.config.apis.get(named.api).map_or("none", |a| &*a.name);
            let _ = writeln!(
                text,
                "{}{{api=\"{api}\",credential=\"{}\",fingerprint=\"{}\"}} 1",
                telemetry::CREDENTIAL_INFO,
                named.name,
                c.fingerprint()
            );
        }
    }
    let at = shared.credential_reloaded_at();
    let _ = writeln!(
        text,
        "# TYPE {} gauge\n{} {at}",
        telemetry::CREDENTIAL_LAST_RELOAD,
        telemetry::CREDENTIAL_LAST_RELOAD
    );
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Each part of a credential: name, source (`file PATH`, `env $VAR`, `config`) and the
/// fingerprint of a secret part. Never a value.
fn parts_json(
    c: &crate::credential::Credential,
    spec: &crate::config::CredentialConfig,
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = c
        .parts()
        .iter()
        .zip(spec.parts.iter())
        .map(|(p, s)| {
            serde_json::json!({
                "name": &*p.name,
                "source": p.source,
                "from": s.source.describe(),
                "fingerprint": p.fingerprint,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}
