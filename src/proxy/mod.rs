//! The proxy service: one snapshot per request -> screen and decide -> strip and inject ->
//! forward with a streamed body -> strip the response -> one access-log line and metrics.
//!
//! `handle` is infallible: every failure inside `forward` is a typed [`ProxyError`] turned
//! into a JSON response, so nothing on this path panics or leaks upstream error text.

pub mod caller;
mod error;
pub mod forward;
pub mod inject;

mod links;
pub mod local;
mod pipeline;
mod request_id;
mod respond;
mod scrub;
mod sign;
pub mod splice;
mod unauthorized;
pub mod websocket;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

pub use error::ProxyError;

use crate::body::{InFlightGuard, Watched};
use crate::control::state::{Shared, Snapshot};
use crate::policy::Route;
use crate::telemetry;
use crate::upstream::UpstreamBody;
use caller::Peer;

/// Response body: the upstream's, streamed (holding the in-flight slot), or one of ours.
pub type ProxyBody = Either<Watched<scrub::Scrubbed<UpstreamBody>>, Full<Bytes>>;

/// What the access log and metrics need to know about one request.
struct Outcome<'s> {
    /// The identified principal (index into `config.principals`).
    principal: Option<usize>,
    /// The API the path was routed to.
    api: Option<usize>,
    route: Option<&'s Route>,
    /// Report mode forwarded a request that enforcement would deny.
    would_deny: bool,
    path: Option<PathAndQuery>,
    upstream_status: Option<StatusCode>,
    /// The request was a WebSocket handshake.
    websocket: bool,
}

/// Where a request came in, which decides the APIs it may reach.
#[derive(Clone, Debug)]
pub enum Via {
    /// The shared listener: routed by path prefix.
    Shared,
    /// That API's own listener: that API only (its prefix, if any, still applies).
    Listener(Arc<str>),
    /// The forward proxy, intercepted for that API: its own paths, no prefix, and link
    /// headers left as they are (the client talks to the real origin).
    Forward(Arc<str>),
}

/// Serves one request. Never fails: errors become JSON responses.
pub async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    via: Via,
    req: Request<crate::serve::RequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    shared.touch(start);
    let snap = shared.load();
    let request_id = request_id::from_headers(req.headers());
    let method = req.method().clone();
    let mut outcome = Outcome {
        principal: None,
        api: None,
        route: None,
        would_deny: false,
        path: None,
        upstream_status: None,
        websocket: false,
    };
    let max = snap.config.limits.max_in_flight;
    let result = match screen(&snap, &via, &req).and_then(|()| {
        caller::identify(&snap.config, &peer, req.headers())
            .map_err(|why| ProxyError::CallerUnauthenticated(why.reason()))
    }) {
        Err(e) => Err(e),
        Ok(i) => {
            outcome.principal = Some(i);
            match InFlightGuard::try_acquire(&shared.in_flight, max) {
                Some(guard) => {
                    let fwd = (start, &*snap, i, &via, &*shared);
                    pipeline::forward(fwd, req, &request_id, guard, &mut outcome).await
                }
                None => Err(ProxyError::Overloaded),
            }
        }
    };
    let (mut resp, decision, error) = match result {
        Ok(resp) if outcome.would_deny => (resp, "would_deny", None),
        Ok(resp) => (resp, "allow", None),
        Err(e) => (e.to_response(&request_id), e.decision(), Some(e)),
    };
    if !resp.headers().contains_key("x-request-id") {
        resp.headers_mut()
            .insert("x-request-id", request_id.clone());
    }
    if matches!(decision, "deny" | "reject" | "would_deny") {
        remember(
            &shared.recent,
            &snap,
            &method,
            &outcome,
            decision,
            error.as_ref(),
        );
    }
    record(
        &snap,
        &method,
        &request_id,
        &outcome,
        decision,
        error.as_ref(),
        resp.status(),
        start,
    );
    Ok(resp)
}

/// A listener without caller authentication (the service shape: every listener) serves this
/// machine's own callers, never a web page (`local`); gateway callers authenticate instead.
fn screen<B>(snap: &Snapshot, via: &Via, req: &Request<B>) -> Result<(), ProxyError> {
    let config = &snap.config;
    if config.gateway {
        return Ok(());
    }
    // A malformed or doubled Host is a 400 before it is a refusal.
    inject::check_host(req.version(), req.headers()).map_err(ProxyError::InvalidRequest)?;
    local::browser(
        req.method(),
        req.headers(),
        &config.listener.allowed_origins,
    )?;
    let allowed = match via {
        Via::Shared => &config.listener.allowed_hosts,
        Via::Listener(name) => match config.apis.iter().find(|a| a.name == *name) {
            Some(a) => &a.allowed_hosts,
            None => return Err(ProxyError::RouteNotAllowed),
        },
        // Inside an intercepted tunnel the Host is the API's (checked against the CONNECT).
        Via::Forward(_) => return Ok(()),
    };
    local::host(req.uri(), req.headers(), allowed)
}

/// A denial or reject for the status page (canonical path only, never the query).
fn remember(
    recent: &crate::recent::Recent,
    snap: &Snapshot,
    method: &Method,
    out: &Outcome<'_>,
    decision: &'static str,
    error: Option<&ProxyError>,
) {
    let missing = out.route.filter(|r| !r.granted).map(|r| match out.api {
        Some(a) => Arc::from(snap.config.qualified(a, &r.permission).as_str()),
        None => r.permission.clone(),
    });
    recent.push(crate::recent::Refusal {
        seq: 0,
        at: std::time::SystemTime::now(),
        method: method.clone(),
        path: out.path.as_ref().map(|p| p.path().to_owned()),
        api: out
            .api
            .and_then(|a| snap.config.apis.get(a))
            .map(|a| a.name.clone()),
        caller: out
            .principal
            .and_then(|i| snap.config.principals.get(i))
            .map(|p| p.name.clone()),
        missing,
        reason: error.and_then(ProxyError::reason),
        decision,
        code: error.map_or("would_deny", ProxyError::code),
    });
}

#[allow(clippy::too_many_arguments)]
fn record(
    snap: &Snapshot,
    method: &Method,
    request_id: &HeaderValue,
    out: &Outcome<'_>,
    decision: &'static str,
    error: Option<&ProxyError>,
    status: StatusCode,
    start: Instant,
) {
    let elapsed = start.elapsed();
    // Cached handles: no label allocation, hashing or registry lock per request.
    let d = telemetry::DECISIONS
        .iter()
        .position(|d| *d == decision)
        .unwrap_or(3);
    match out.principal.and_then(|i| snap.principals.get(i)) {
        Some(state) => {
            // Per API (the last table: under no API), then per permission (the last: none).
            let table = out
                .api
                .and_then(|a| state.counters.get(a))
                .or_else(|| state.counters.last());
            if let Some(table) = table {
                let index = out
                    .route
                    .map_or(table.len().saturating_sub(1), |r| r.permission_index);
                if let Some(counters) = table.get(index) {
                    counters.increment(d, status);
                }
            }
        }
        None => snap.unidentified.increment(d, status),
    }
    let principal = out.principal.and_then(|i| snap.config.principals.get(i));
    telemetry::request_duration().record(elapsed);
    if out.websocket {
        let result = match (status, error) {
            (StatusCode::SWITCHING_PROTOCOLS, _) => "upgraded",
            (_, Some(ProxyError::Upstream(_))) => "upstream_refused",
            _ if out.upstream_status.is_some() => "upstream_refused",
            _ => "refused",
        };
        let api = out.api.and_then(|a| snap.config.apis.get(a));
        metrics::counter!(telemetry::WEBSOCKET_SESSIONS_TOTAL,
            "api" => api.map_or("none", |a| &*a.name).to_owned(),
            "caller" => principal.map_or("unidentified", |p| &*p.name).to_owned(),
            "permission" => out.route.map_or("none", |r| &*r.permission).to_owned(),
            "result" => result)
        .increment(1);
    }
    if let Some(e) = error {
        metrics::counter!(telemetry::ERRORS_TOTAL, "code" => e.code()).increment(1);
        if let ProxyError::Upstream(kind) = e {
            let api = out
                .api
                .and_then(|a| snap.config.apis.get(a))
                .map_or("none", |a| &*a.name);
            metrics::counter!(telemetry::UPSTREAM_ERRORS_TOTAL, "api" => api.to_owned(), "kind" => kind.as_str())
                .increment(1);
        }
    }
    tracing::info!(
        target: "sidekey::access",
        request_id = request_id.to_str().unwrap_or_default(),
        service = &*snap.config.service.name,
        caller = principal.map(|p| &*p.name),
        api = out.api.and_then(|a| snap.config.apis.get(a)).map(|a| &*a.name),
        method = method.as_str(),
        path = out.path.as_ref().map(PathAndQuery::path),
        permission = out.route.map(|r| &*r.permission),
        missing_permission = out.route.filter(|r| out.would_deny && !r.granted).map(|r| &*r.permission),
        decision,
        websocket = out.websocket.then_some(true),
        status = status.as_u16(),
        upstream_status = out.upstream_status.map(|s| s.as_u16()),
        error = error.map(ProxyError::code),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        fingerprint = out.principal.zip(out.api).and_then(|(i, a)| snap.credential_for(i, a)).map(|c| c.fingerprint()),
    );
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves each request's future into its connection state, so its size is copied
    /// per request. With the upstream connect path inlined it was 9.5 KB here (32 KB in a
    /// release build) and memmove was 6% of the proxy's CPU; boxing the rare, large parts
    /// brought it under 2 KB. A structural guard, not a timing test.
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(super::handle);
        assert!(size < 4096, "proxy::handle's future is {size} bytes");
    }
}
