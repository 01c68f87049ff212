//! Errors the proxy answers itself. One exhaustive match maps each to its status and stable
//! `code`; bodies are JSON and never contain the key, request headers or upstream error text.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::ProxyBody;
use crate::policy::{PathError, Verdict};
use crate::upstream::FailureKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// 400 with a stable reason (path rule or framing rule).
    InvalidRequest(&'static str),
    RouteNotAllowed,
    PermissionDenied(Arc<str>),
    MethodNotAllowed,
    UriTooLong,
    CredentialUnavailable,
    /// `limits.max_in_flight` reached: shed load at once rather than queue.
    Overloaded,
    /// The request body exceeds `limits.max_request_body`.
    PayloadTooLarge,
    Upstream(FailureKind),
    /// The upstream tried to switch protocols: never tunnelled.
    UpstreamUpgrade,
    /// Gateway: no caller identity matched (reason: `caller::Unidentified::reason`).
    CallerUnauthenticated(&'static str),
    /// Gateway: the caller's rate or concurrency cap; retry after this many seconds.
    RateLimited(u64),
    /// `[limits.shared]` could not decide and `on_error = "deny"` (429 `rate_limited`,
    /// reason `shared_limiter_unavailable`).
    RateLimitUnavailable,
    /// A WebSocket handshake on a route without `websocket = true`.
    UpgradeNotAllowed,
    /// `limits.max_websockets` tunnels are open.
    TooManyWebSockets,
    /// Forward proxy: the CONNECT or absolute-form target is no configured API (and not a
    /// listed tunnel); reason says why.
    HostNotAllowed(&'static str),
    /// Forward proxy: an inner request's `Host`/`:authority` is not the CONNECT host.
    AuthorityMismatch,
    /// Forward proxy, gateway shape: no (known) caller token in `Proxy-Authorization`.
    ProxyAuthRequired(&'static str),
    /// A listener without caller authentication got a `Host` that names neither loopback nor
    /// an allowed host (DNS rebinding): 403 `host_not_allowed`.
    HostNotLocal,
    /// A listener without caller authentication got what a browser sends on a web page's
    /// behalf (a foreign `Origin`, a cross-site fetch, a CORS preflight); reason says which.
    BrowserRefused(&'static str),
    /// `aws_sigv4`: a chunk-signed upload (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`); its chunk
    /// signatures are made with the caller's key and cannot be redone by a proxy.
    SignedChunks,
    /// `aws_sigv4` with `payload = "signed"`: the body is over `max_signed_body`.
    BodyTooLargeToSign,
    /// `scrub = "bodies"`: a textual response came back compressed and cannot be scanned.
    ResponseNotScrubbable,
}

impl ProxyError {
    /// The error a policy verdict turns into (`None`: allowed). `run` and `explain` share it.
    pub fn from_verdict(verdict: &Verdict<'_, '_>) -> Option<Self> {
        match verdict {
            Verdict::Allow { .. } => None,
            Verdict::PermissionDenied { route, .. } => {
                Some(Self::PermissionDenied(route.permission.clone()))
            }
            Verdict::NoRoute { .. } => Some(Self::RouteNotAllowed),
            Verdict::MethodNotAllowed => Some(Self::MethodNotAllowed),
            Verdict::Rejected(PathError::TooLong) => Some(Self::UriTooLong),
            Verdict::Rejected(e) => Some(Self::InvalidRequest(e.reason())),
        }
    }

    /// The `reason` of the error body (which rule rejected, why a caller is refused).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest(reason)
            | Self::CallerUnauthenticated(reason)
            | Self::HostNotAllowed(reason)
            | Self::ProxyAuthRequired(reason)
            | Self::BrowserRefused(reason) => Some(reason),
            Self::RateLimitUnavailable => Some("shared_limiter_unavailable"),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::RouteNotAllowed | Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::CredentialUnavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Upstream(kind) if kind.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) | Self::UpstreamUpgrade => StatusCode::BAD_GATEWAY,
            Self::CallerUnauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) | Self::RateLimitUnavailable => StatusCode::TOO_MANY_REQUESTS,
            Self::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            Self::TooManyWebSockets => StatusCode::SERVICE_UNAVAILABLE,
            Self::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::AuthorityMismatch => StatusCode::MISDIRECTED_REQUEST,
            Self::ProxyAuthRequired(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Self::HostNotLocal | Self::BrowserRefused(_) => StatusCode::FORBIDDEN,
            Self::SignedChunks => StatusCode::BAD_REQUEST,
            Self::BodyTooLargeToSign => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ResponseNotScrubbable => StatusCode::BAD_GATEWAY,
        }
    }

    /// Every `code` (and `ERRORS_TOTAL` label) the proxy can answer, for series at 0.
    pub const CODES: [&'static str; 20] = [
        "invalid_request",
        "route_not_allowed",
        "permission_denied",
        "method_not_allowed",
        "uri_too_long",
        "credential_unavailable",
        "overloaded",
        "payload_too_large",
        "upstream_timeout",
        "upstream_unavailable",
        "caller_unauthenticated",
        "rate_limited",
        "upgrade_not_allowed",
        "host_not_allowed",
        "authority_mismatch",
        "proxy_auth_required",
        "browser_request_refused",
        "aws_chunk_signatures_unsupported",
        "body_too_large_to_sign",
        "response_not_scrubbable",
    ];

    /// The stable error code (a contract with clients, dashboards and docs).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::RouteNotAllowed => "route_not_allowed",
            Self::PermissionDenied(_) => "permission_denied",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UriTooLong => "uri_too_long",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::Overloaded | Self::TooManyWebSockets => "overloaded",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Upstream(kind) if kind.is_timeout() => "upstream_timeout",
            Self::Upstream(_) | Self::UpstreamUpgrade => "upstream_unavailable",
            Self::CallerUnauthenticated(_) => "caller_unauthenticated",
            Self::RateLimited(_) | Self::RateLimitUnavailable => "rate_limited",
            Self::UpgradeNotAllowed => "upgrade_not_allowed",
            Self::HostNotAllowed(_) => "host_not_allowed",
            Self::AuthorityMismatch => "authority_mismatch",
            Self::ProxyAuthRequired(_) => "proxy_auth_required",
            Self::HostNotLocal => "host_not_allowed",
            Self::BrowserRefused(_) => "browser_request_refused",
            Self::SignedChunks => "aws_chunk_signatures_unsupported",
            Self::BodyTooLargeToSign => "body_too_large_to_sign",
            Self::ResponseNotScrubbable => "response_not_scrubbable",
        }
    }

    /// `decision` label: refused by policy, refused as malformed, or failed after allowing.
    pub fn decision(&self) -> &'static str {
        match self {
            Self::RouteNotAllowed
            | Self::PermissionDenied(_)
            | Self::CallerUnauthenticated(_)
            | Self::RateLimited(_)
            | Self::RateLimitUnavailable
            | Self::UpgradeNotAllowed
            | Self::HostNotAllowed(_)
            | Self::HostNotLocal
            | Self::BrowserRefused(_)
            | Self::ProxyAuthRequired(_) => "deny",
            Self::InvalidRequest(_)
            | Self::MethodNotAllowed
            | Self::UriTooLong
            | Self::PayloadTooLarge
            | Self::SignedChunks
            | Self::BodyTooLargeToSign
            | Self::AuthorityMismatch => "reject",
            Self::CredentialUnavailable
            | Self::Overloaded
            | Self::TooManyWebSockets
            | Self::Upstream(_)
            | Self::ResponseNotScrubbable
            | Self::UpstreamUpgrade => "error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidRequest(reason) => format!("the request is ambiguous or malformed ({reason}); nothing was sent upstream"),
            Self::RouteNotAllowed => "no route of the permission catalogue matches this method and path; nothing was sent upstream".into(),
            Self::PermissionDenied(p) => format!("this service is not granted the permission `{p}` that this route needs; nothing was sent upstream"),
            Self::MethodNotAllowed => "CONNECT and TRACE are never proxied".into(),
            Self::UriTooLong => "the request path or query is too long".into(),
            Self::CredentialUnavailable => "no valid API key is loaded; nothing was sent upstream".into(),
            Self::Overloaded => "too many requests in flight; retry shortly".into(),
            Self::PayloadTooLarge => "the request body is larger than this proxy accepts".into(),
            Self::Upstream(kind) if kind.is_timeout() => format!("the upstream did not answer in time ({})", kind.as_str()),
            Self::Upstream(kind) => format!("the upstream could not be reached ({})", kind.as_str()),
            Self::UpstreamUpgrade => "the upstream tried to switch protocols; upgrades are not proxied".into(),
            Self::CallerUnauthenticated(reason) => format!("this gateway serves identified callers only ({reason}): present your client certificate or caller token; nothing was sent upstream"),
            Self::RateLimited(_) => "this caller is over its rate or concurrency limit; retry after the retry-after seconds".into(),
            Self::RateLimitUnavailable => "the shared rate limiter (Redis) cannot decide and limits.shared.on_error is deny; nothing was sent upstream, retry shortly".into(),
            Self::UpgradeNotAllowed => "this route does not accept WebSocket upgrades (the catalogue route needs `websocket = true`); nothing was sent upstream".into(),
            Self::TooManyWebSockets => "too many WebSocket tunnels are open (limits.max_websockets); retry shortly".into(),
            Self::HostNotAllowed(reason) => format!("this forward proxy only reaches its configured APIs ({reason}); nothing was sent"),
            Self::AuthorityMismatch => "the request's Host (or :authority) is not the host this tunnel was opened for; nothing was sent upstream".into(),
            Self::ProxyAuthRequired(reason) => format!("this forward proxy serves identified callers only ({reason}): put your caller token in the proxy URL or Proxy-Authorization; nothing was sent"),
            Self::HostNotLocal => "this listener serves this machine's own callers: the Host must be localhost, a loopback address or one of listener.allowed_hosts; nothing was sent".into(),
            Self::BrowserRefused(reason) => format!("a web page cannot use this listener ({reason}); nothing was sent"),
            Self::SignedChunks => "a chunk-signed upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) carries signatures made with the caller's key, which sidekey cannot redo: send the body unsigned (UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER) or with its SHA-256; nothing was sent upstream".into(),
            Self::BodyTooLargeToSign => "the body is larger than this API's max_signed_body, the most sidekey reads to hash for the signature; nothing was sent upstream".into(),
            Self::ResponseNotScrubbable => "the upstream answered with a compressed text body although sidekey asked for none; with scrub = \"bodies\" it cannot be scanned for the key, so it is not passed on".into(),
        }
    }

    /// The JSON error response.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let mut error = serde_json::json!({
            "code": self.code(),
            "message": self.message(),
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        if let Self::PermissionDenied(p) = self {
            error["permission"] = serde_json::Value::from(&**p);
        }
        if let Some(reason) = self.reason() {
            error["reason"] = serde_json::Value::from(reason);
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-sidekey-error", HeaderValue::from_static(self.code()));
        h.insert("x-request-id", request_id.clone());
        // After a malformed request the connection's framing is suspect: close it rather
        // than read what follows as another request.
        if matches!(
            self,
            Self::InvalidRequest(_)
                | Self::PayloadTooLarge
                | Self::AuthorityMismatch
                | Self::SignedChunks
                | Self::BodyTooLargeToSign
        ) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::RateLimited(secs) = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if let Self::RateLimitUnavailable = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::ProxyAuthRequired(_) = self {
            h.append(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sidekey\""),
            );
            h.append(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sidekey\""),
            );
        }
        if let Self::CallerUnauthenticated(_) = self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sidekey\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeded series must cover every code the proxy can answer.
    #[test]
    fn every_code_is_seeded() {
        let kinds = [
            FailureKind::Connect,
            FailureKind::ConnectTimeout,
            FailureKind::Tls,
            FailureKind::ResponseTimeout,
            FailureKind::Protocol,
            FailureKind::BodyTooLarge,
        ];
        let mut all = vec![
            ProxyError::InvalidRequest("x"),
            ProxyError::RouteNotAllowed,
            ProxyError::PermissionDenied("p".into()),
            ProxyError::MethodNotAllowed,
            ProxyError::UriTooLong,
            ProxyError::CredentialUnavailable,
            ProxyError::Overloaded,
            ProxyError::PayloadTooLarge,
            ProxyError::UpstreamUpgrade,
            ProxyError::CallerUnauthenticated("x"),
            ProxyError::RateLimited(1),
            ProxyError::RateLimitUnavailable,
            ProxyError::UpgradeNotAllowed,
            ProxyError::TooManyWebSockets,
            ProxyError::HostNotAllowed("x"),
            ProxyError::AuthorityMismatch,
            ProxyError::ProxyAuthRequired("x"),
        ];
        all.extend(kinds.iter().map(|k| ProxyError::Upstream(*k)));
        for e in &all {
            assert!(ProxyError::CODES.contains(&e.code()), "{e:?}");
        }
        for k in &kinds[..5] {
            assert!(FailureKind::KINDS.contains(&k.as_str()), "{k:?}");
        }
    }
}
