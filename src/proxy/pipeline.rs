//! One request, stage by stage, in the order a request meets them (pingora's named phases):
//! `admit` (screen the head, route to an API, the allow-list), `limit` (tunnel cap, a key to
//! send, the caller's limits, the declared body size), `shape` (the upstream form: the checked
//! path, caller headers stripped, request id), then `send` (the credential applied, the body
//! streamed, one replay after a 401 with a re-read key) or `upgrade` (a WebSocket handshake),
//! and `respond::respond` on the way back. Each stage returns early with a typed
//! [`ProxyError`]; nothing is forwarded before `send`.

use std::borrow::Cow;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Either;

use super::websocket::{self, Ask};
use super::{Outcome, ProxyBody, ProxyError, Via, inject, request_id, respond, unauthorized};
use crate::body::{Fault, InFlightGuard, Watched};
use crate::config::Mode;
use crate::control::state::{PrincipalState, Shared, Snapshot};
use crate::credential::Credential;
use crate::limit::Limited;
use crate::policy::Verdict;
use crate::policy::apis::decide;
use crate::upstream::{FailureKind, Upstream};

/// When the request arrived, the snapshot, the principal, where it came in, and the shared
/// state (open tunnels, the 401 re-read).
pub(super) type Context<'s, 'a> = (std::time::Instant, &'s Snapshot, usize, &'a Via, &'a Shared);

/// What `admit` decided: the API, the origin-form target to forward (exactly the checked
/// path plus the raw query), the path template the client used, what kind of request it is.
struct Admitted {
    api: usize,
    target: PathAndQuery,
    template: usize,
    ask: Ask,
}

pub(super) async fn forward<'s>(
    ctx: Context<'s, '_>,
    req: Request<crate::serve::RequestBody>,
    request_id: &HeaderValue,
    guard: InFlightGuard,
    out: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (started, snap, principal, via, shared) = ctx;
    let (mut parts, body) = req.into_parts();
    let state = snap
        .principals
        .get(principal)
        .ok_or(ProxyError::CallerUnauthenticated("no_caller_identity"))?;
    let admitted = admit(snap, state, via, &parts, out)?;
    let api = admitted.api;
    let route = out.route;
    // Upgrades are default-deny: only a route that opts in, and only under the tunnel cap.
    let tunnel_slot = match &admitted.ask {
        Ask::WebSocket { .. } if !route.is_some_and(|r| r.websocket) => {
            return Err(ProxyError::UpgradeNotAllowed);
        }
        Ask::WebSocket { .. } => Some(
            InFlightGuard::try_acquire(&shared.websockets, snap.config.limits.max_websockets)
                .ok_or(ProxyError::TooManyWebSockets)?,
        ),
        _ => None,
    };
    // Through the forward proxy, a name a wildcard intercepts comes with its own client.
    let own_upstream = match via {
        Via::Forward(_) => parts
            .extensions
            .remove::<super::forward::HostUpstream>()
            .map(|u| u.0),
        _ => None,
    };
    let upstream = match &own_upstream {
        Some(u) => u,
        None => {
            &snap
                .apis
                .get(api)
                .ok_or(ProxyError::RouteNotAllowed)?
                .upstream
        }
    };
    // Fail closed: no key, nothing sent. The key is this API's, for this principal: it
    // only ever goes to this API's origin (the upstream client adds that origin).
    let credential = snap
        .credential_for(principal, api)
        .ok_or(ProxyError::CredentialUnavailable)?;
    let caller_guard = limit(snap, state, principal, &parts).await?;
    let host = shape(&mut parts, admitted.target, credential, request_id, out);
    if snap.config.apis.get(api).is_some_and(|a| a.scrub_bodies) {
        // Scanned bodies must come uncompressed.
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    // Link headers: rebased onto the shared listener, the API's own, or left alone.
    let links = match via {
        Via::Shared => Some(false),
        Via::Listener(_) => Some(true),
        Via::Forward(_) => None,
    };
    let template = admitted.template;
    if let (Ask::WebSocket { accept }, Some(slot)) = (&admitted.ask, tunnel_slot) {
        websocket::ask_upstream(&mut parts.headers);
        apply(credential, &mut parts, template)?;
        let req = Request::from_parts(parts, http_body_util::Empty::new());
        let resp = upstream
            .upgrade(req, started)
            .await
            .map_err(ProxyError::Upstream)?;
        out.upstream_status = Some(resp.status());
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Refused: passed back as a normal response (the connection is not reused).
            respond::check_scrubbable(snap, api, &resp)?;
            let path = out.path.as_ref().map_or("", |p| p.path());
            let at = (principal, api, &**credential, links, host.as_ref(), path);
            return Ok(respond::respond(snap, at, resp, guard, caller_guard));
        }
        let limits = &snap.config.limits;
        let name = |n: Option<&std::sync::Arc<str>>| n.map_or("none".into(), Clone::clone);
        let tunnel = websocket::tunnel::Tunnel {
            idle_timeout: limits.websocket_idle_timeout,
            max_duration: limits.websocket_max_duration,
            api: name(snap.config.apis.get(api).map(|a| &a.name)),
            caller: name(snap.config.principals.get(principal).map(|p| &p.name)),
            permission: route.map_or("none".into(), |r| r.permission.clone()),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            slot,
            caller_slot: caller_guard,
        };
        return websocket::switch(resp, accept, tunnel, started, upstream.response_timeout).await;
    }
    let sent = send(ctx, (upstream, credential, template, api), parts, body).await?;
    let (resp, sent_key) = sent;
    out.upstream_status = Some(resp.status());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpstreamUpgrade);
    }
    respond::check_scrubbable(snap, api, &resp)?;
    let path = out.path.as_ref().map_or("", |p| p.path());
    let at = (principal, api, &*sent_key, links, host.as_ref(), path);
    Ok(respond::respond(snap, at, resp, guard, caller_guard))
}

/// 1 + 2: method, target form, path screen; 3: the allow-list. Nothing has been read from the
/// body yet, so a refusal here never forwards (or even reads) a body byte, and
/// `Expect: 100-continue` is never answered with 100.
fn admit<'s>(
    snap: &'s Snapshot,
    state: &'s PrincipalState,
    via: &Via,
    parts: &Parts,
    out: &mut Outcome<'s>,
) -> Result<Admitted, ProxyError> {
    inject::check_host(parts.version, &parts.headers).map_err(ProxyError::InvalidRequest)?;
    let ask = websocket::classify(&parts.method, parts.version, &parts.headers);
    out.websocket = matches!(ask, Ask::WebSocket { .. });
    if let Ask::Invalid(reason) = ask {
        return Err(ProxyError::InvalidRequest(reason));
    }
    // A request on an API's own listener may reach that API only (its prefix still applies);
    // one through the forward proxy, that API at its own paths.
    let find = |name: &str| {
        let i = snap.config.apis.iter().position(|a| &*a.name == name);
        i.ok_or(ProxyError::RouteNotAllowed)
    };
    let only = match via {
        Via::Shared => None,
        Via::Listener(name) => {
            let i = find(name)?;
            Some((i, snap.config.apis.get(i).and_then(|a| a.prefix.as_deref())))
        }
        Via::Forward(name) => Some((find(name)?, None)),
    };
    let decision = decide(
        &snap.router,
        &state.policies,
        only,
        &parts.method,
        &parts.uri,
    );
    out.api = decision.api;
    let verdict = decision.verdict;
    out.route = match &verdict {
        Verdict::Allow { route, .. } | Verdict::PermissionDenied { route, .. } => Some(*route),
        _ => None,
    };
    let path = match (ProxyError::from_verdict(&verdict), verdict) {
        (None, Verdict::Allow { path, .. }) => path,
        // Report mode: what enforcement would deny is forwarded and logged as would_deny.
        // Ambiguous or malformed targets are never forwarded, in any mode.
        (
            Some(ProxyError::PermissionDenied(_) | ProxyError::RouteNotAllowed),
            Verdict::PermissionDenied { path, .. } | Verdict::NoRoute { path },
        ) if snap.config.service.mode == Mode::Report && decision.api.is_some() => {
            out.would_deny = true;
            path
        }
        (refusal, verdict) => {
            // Log the canonical path of a denied request (a rejected one has none).
            if let Verdict::PermissionDenied { path, .. } | Verdict::NoRoute { path } = verdict {
                out.path = PathAndQuery::try_from(path.into_owned()).ok();
            }
            return Err(refusal.unwrap_or(ProxyError::RouteNotAllowed));
        }
    };
    inject::check_framing(&parts.headers).map_err(|e| ProxyError::InvalidRequest(e.reason()))?;
    let api = decision.api.ok_or(ProxyError::RouteNotAllowed)?;
    // Forward exactly the canonical path that was matched, plus the raw query. Reuse the
    // inbound bytes when they already are canonical (no copy).
    let target = match (&path, parts.uri.path_and_query()) {
        (Cow::Borrowed(_), Some(pq)) if decision.whole_path => pq.clone(),
        _ => {
            let joined = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            PathAndQuery::try_from(joined)
                .map_err(|_| ProxyError::InvalidRequest("invalid_target"))?
        }
    };
    Ok(Admitted {
        api,
        target,
        template: decision.template,
        ask,
    })
}

/// The caller's own limits (they count forwarded requests only: they guard the upstream
/// quota), then the declared body size.
async fn limit(
    snap: &Snapshot,
    state: &PrincipalState,
    principal: usize,
    parts: &Parts,
) -> Result<Option<InFlightGuard>, ProxyError> {
    let admitted = match &snap.shared_limiter {
        Some(shared) => {
            let name = snap
                .config
                .principals
                .get(principal)
                .map_or("", |p| &*p.name);
            state.limiter.admit_shared(shared, name).await
        }
        None => state.limiter.admit(),
    };
    let caller_guard = admitted.map_err(|l| match l {
        Limited::Rate(wait) => ProxyError::RateLimited(wait.as_secs() + 1),
        Limited::Concurrency => ProxyError::RateLimited(1),
        Limited::Unavailable => ProxyError::RateLimitUnavailable,
    })?;
    if let Some(max) = snap.config.limits.max_request_body {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ProxyError::PayloadTooLarge);
        }
    }
    Ok(caller_guard)
}

/// 4: the upstream form, short of the credential: the checked target in origin-form (the
/// upstream client adds the configured origin, never the inbound Host), what the caller must
/// not send stripped, our request id. Returns the `Host` the client used (to rewrite link
/// headers, never to route).
fn shape(
    parts: &mut Parts,
    target: PathAndQuery,
    credential: &Credential,
    request_id: &HeaderValue,
    out: &mut Outcome<'_>,
) -> Option<HeaderValue> {
    out.path = Some(target.clone());
    parts.uri = Uri::from(target);
    let host = parts.headers.get(http::header::HOST).cloned();
    inject::strip(&mut parts.headers, credential.stripped());
    parts
        .headers
        .insert("x-request-id", request_id::for_upstream(request_id));
    // The upstream connection's version is the client's business (ALPN).
    parts.version = http::Version::HTTP_11;
    host
}

/// The credential goes in once the request's upstream form is final: `apply` is the only code
/// that puts it there.
fn apply(credential: &Credential, parts: &mut Parts, template: usize) -> Result<(), ProxyError> {
    credential
        .apply(parts, template)
        .map_err(|_| ProxyError::InvalidRequest("invalid_target"))
}

/// What `send` sends with: the API's client, the key, the path template, the API.
type With<'a> = (&'a Upstream, &'a std::sync::Arc<Credential>, usize, usize);

/// 5: the credential applied, the body streamed under its limits; a bodiless request that gets
/// a 401 is replayed once if re-reading the key found a new one. Returns the response and the
/// key it was sent with.
async fn send(
    (started, snap, principal, _, shared): Context<'_, '_>,
    (upstream, credential, template, api): With<'_>,
    mut parts: Parts,
    body: crate::serve::RequestBody,
) -> Result<
    (
        Response<crate::upstream::UpstreamBody>,
        std::sync::Arc<Credential>,
    ),
    ProxyError,
> {
    let limits = &snap.config.limits;
    let (body, fault) = if http_body::Body::is_end_stream(&body) {
        // No body: nothing to watch, and the upstream client may replay the request.
        (
            Either::Right(http_body_util::Full::new(bytes::Bytes::new())),
            None,
        )
    } else {
        let (body, fault) = Watched::new(body, limits.body_idle_timeout, None)
            .without_trailers()
            .faults();
        let body = match limits.max_request_body {
            Some(max) => body.limited(max),
            None => body,
        };
        (Either::Left(body), Some(fault))
    };
    // A signing credential signs the Host and the body's hash: both are set first.
    let body = match credential.signer() {
        Some(signer) => {
            super::sign::prepare(signer, upstream.host(), &mut parts, body, fault.as_ref()).await?
        }
        None => body,
    };
    // A bodiless request may be replayed once after a 401 with a re-read key: its head is
    // kept, before the credential goes in (a streamed body never is).
    let head = fault.is_none().then(|| unauthorized::Head::of(&parts));
    apply(credential, &mut parts, template)?;
    let sent = upstream
        .send(Request::from_parts(parts, body), started)
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        // The caller's body failed: its mistake, never reported as the upstream's.
        Err(kind) => {
            return Err(match fault.and_then(|f| f.get()) {
                Some(Fault::TooLarge) => ProxyError::PayloadTooLarge,
                Some(Fault::Malformed) => ProxyError::InvalidRequest("malformed_body"),
                Some(Fault::Stalled) => ProxyError::InvalidRequest("body_timeout"),
                None if kind == FailureKind::BodyTooLarge => ProxyError::PayloadTooLarge,
                None => ProxyError::Upstream(kind),
            });
        }
    };
    if credential.signer().is_some() && super::sign::expired(&resp) {
        // AWS refused the temporary credentials: one forced refresh (at most once a second).
        tracing::warn!(
            fingerprint = credential.fingerprint(),
            "the upstream answered that the AWS credentials expired: refreshing them now"
        );
        shared.reread_keys(std::time::Duration::ZERO).await;
    }
    let (StatusCode::UNAUTHORIZED, Some(head)) = (resp.status(), head) else {
        if resp.status() == StatusCode::UNAUTHORIZED {
            // A streamed body is never replayed, but the key is re-read at once all the same
            // (at most once a second): the next request goes out with the new one.
            shared.reread_keys(std::time::Duration::ZERO).await;
        }
        return Ok((resp, credential.clone()));
    };
    let Some(newer) = unauthorized::newer_key(shared, principal, api, credential).await else {
        return Ok((resp, credential.clone()));
    };
    respond::count_unauthorized(snap, principal, api, credential);
    tracing::info!(
        old_fingerprint = credential.fingerprint(),
        new_fingerprint = newer.fingerprint(),
        "upstream answered 401; the key changed: replaying once with the new key"
    );
    let req = head
        .with_key(&newer, template)
        .map_err(|_| ProxyError::InvalidRequest("invalid_target"))?;
    let resp = upstream
        .send(req, started)
        .await
        .map_err(ProxyError::Upstream)?;
    Ok((resp, newer))
}
