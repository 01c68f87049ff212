//! The last stage of the request path: an upstream response on its way back. A 401 is
//! counted against the key that was sent, hop-by-hop headers go, link headers on the API's
//! origin are rebased onto the address the client used, and the body streams out under
//! its idle timeout, holding the in-flight and caller slots until it is done.

use http::{HeaderValue, Response, StatusCode};
use http_body_util::Either;

use super::{ProxyBody, inject, links, scrub};
use crate::body::{InFlightGuard, Watched};
use crate::control::state::Snapshot;
use crate::credential::Credential;
use crate::telemetry;
use crate::upstream::UpstreamBody;

/// Where the response goes: principal, API, the key sent, how link headers are rebased
/// (`Some(own_listener)`; `None`: left alone), the `Host` the client used, the path sent.
pub(super) type At<'a> = (
    usize,
    usize,
    &'a Credential,
    Option<bool>,
    Option<&'a HeaderValue>,
    &'a str,
);

/// `scrub = "bodies"`: a textual answer that came back compressed cannot be scanned.
pub(super) fn check_scrubbable(
    snap: &Snapshot,
    api: usize,
    resp: &Response<UpstreamBody>,
) -> Result<(), super::ProxyError> {
    let bodies = snap.config.apis.get(api).is_some_and(|a| a.scrub_bodies);
    if bodies && scrub::textual(resp.headers()) && scrub::encoded(resp.headers()) {
        return Err(super::ProxyError::ResponseNotScrubbable);
    }
    Ok(())
}

pub(super) fn respond(
    snap: &Snapshot,
    (principal, api, credential, own_listener, host, path): At<'_>,
    mut resp: Response<UpstreamBody>,
    guard: InFlightGuard,
    caller_guard: Option<InFlightGuard>,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::UNAUTHORIZED {
        count_unauthorized(snap, principal, api, credential);
    }
    inject::strip_response(resp.headers_mut());
    let h = resp.headers();
    let linked = h.contains_key(http::header::LOCATION)
        || h.contains_key(http::header::CONTENT_LOCATION)
        || h.contains_key(http::header::LINK);
    match own_listener {
        Some(own) if linked => {
            rewrite_links(snap, (api, credential), own, host, resp.headers_mut())
        }
        _ => {}
    }
    let cfg = snap.config.apis.get(api);
    if cfg.is_some_and(|a| a.scrub_headers) {
        scrub_headers(snap, (principal, api, credential), resp.headers_mut());
    }
    let scan = cfg.is_some_and(|a| a.scrub_bodies) && scrub::textual(resp.headers());
    let report = scan.then(|| {
        let (api_name, named) = names(snap, principal, api);
        scrub::Report {
            api: api_name.to_owned(),
            credential: named.to_owned(),
            fingerprint: credential.fingerprint().to_owned(),
            path: path.to_owned(),
        }
    });
    let idle = snap.config.limits.body_idle_timeout;
    resp.map(|b| {
        let b = match report {
            Some(r) => scrub::Scrubbed::scanning(b, credential.needles().clone(), r),
            None => scrub::Scrubbed::plain(b),
        };
        Either::Left(Watched::new(b, idle, Some(guard)).holding(caller_guard))
    })
}

/// The API's and the credential's names (metric labels).
fn names(snap: &Snapshot, principal: usize, api: usize) -> (&str, &str) {
    let api_name = snap.config.apis.get(api).map_or("none", |a| &*a.name);
    let named = snap
        .config
        .principals
        .get(principal)
        .and_then(|p| p.credentials.get(api).copied().flatten())
        .and_then(|s| snap.config.credentials.get(s))
        .map_or("none", |c| &*c.name);
    (api_name, named)
}

/// `sidekey_upstream_unauthorized_total` for the key that was sent.
pub(super) fn count_unauthorized(
    snap: &Snapshot,
    principal: usize,
    api: usize,
    credential: &Credential,
) {
    let api_name = snap.config.apis.get(api).map_or("none", |a| &*a.name);
    let slot = snap
        .config
        .principals
        .get(principal)
        .and_then(|p| p.credentials.get(api).copied().flatten());
    let named = slot
        .and_then(|s| snap.config.credentials.get(s))
        .map_or("none", |c| &*c.name);
    metrics::counter!(telemetry::UPSTREAM_UNAUTHORIZED_TOTAL, "api" => api_name.to_owned(), "credential" => named.to_owned(), "fingerprint" => credential.fingerprint().to_owned()).increment(1);
}

/// Rebases link headers on API `api`'s origin onto the local address the client used.
/// A `path` credential's rendered templates are taken back out first, so a link never
/// carries the key and still comes back through sidekey.
fn rewrite_links(
    snap: &Snapshot,
    (api, credential): (usize, &Credential),
    own_listener: bool,
    host: Option<&HeaderValue>,
    headers: &mut http::HeaderMap,
) {
    let Some(cfg) = snap.config.apis.get(api) else {
        return;
    };
    let origin = format!("{}://{}", cfg.upstream.scheme, cfg.upstream.authority);
    let scheme = if !own_listener && snap.config.listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let fallback = cfg
        .listen
        .filter(|_| own_listener)
        .unwrap_or(snap.config.listener.address)
        .to_string();
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or(&fallback);
    let prefix = match cfg.prefix.as_deref() {
        Some("/") | None => "",
        Some(p) => p,
    };
    let local = format!("{scheme}://{host}{prefix}");
    for key_path in credential.key_paths() {
        links::rewrite(headers, &format!("{origin}{key_path}"), &local);
        // A relative reference (`/bot<key>/x`) too: rebased onto sidekey, key taken out.
        links::rewrite(headers, key_path, &local);
    }
    links::rewrite(headers, &origin, &local);
}

/// Takes every form of the credential out of the response headers (`*` of the same length):
/// an upstream that echoes the key must not hand it back to the app. Each echo is counted and
/// logged with the fingerprint (the upstream published the key: an incident).
fn scrub_headers(
    snap: &Snapshot,
    (principal, api, credential): (usize, usize, &Credential),
    headers: &mut http::HeaderMap,
) {
    let mut found = 0;
    for value in headers.values_mut() {
        if !credential.echoed_in(value.as_bytes()) {
            continue;
        }
        let mut bytes = value.as_bytes().to_vec();
        let n = credential.scrub(&mut bytes);
        if n > 0 {
            found += n;
            if let Ok(clean) = HeaderValue::from_bytes(&bytes) {
                *value = clean;
            }
        }
    }
    if found == 0 {
        return;
    }
    let (api_name, named) = names(snap, principal, api);
    metrics::counter!(telemetry::KEY_ECHOES_TOTAL, "api" => api_name.to_owned(), "credential" => named.to_owned(), "where" => "header").increment(found as u64);
    let Some(unlogged) = credential.may_warn_echo() else {
        return;
    };
    tracing::warn!(
        api = api_name,
        credential = named,
        fingerprint = credential.fingerprint(),
        echoes = found,
        unlogged,
        "the upstream echoed the credential in a response header; taken out before the app saw it (treat the key as published)"
    );
}
