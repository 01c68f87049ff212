//! Header hygiene: strip what must not cross the proxy, before the credential goes in.
//!
//! Order matters: everything the caller could use to smuggle or override a credential is
//! removed first (including headers the caller lists in `Connection`, which could otherwise
//! name our own header), and only then does `Credential::apply` put the credential in. The
//! hop-by-hop set is RFC 9110 section 7.6.1 plus the de-facto `Keep-Alive` and
//! `Proxy-Connection`.

use http::header::{self, HeaderMap, HeaderName};

use crate::headers::{HOP_BY_HOP, is_hop_by_hop};

/// Framing problems that make a request unsafe to forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// `Transfer-Encoding` other than exactly `chunked`.
    TransferEncoding,
}

impl FramingError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::TransferEncoding => "unsupported_transfer_encoding",
        }
    }
}

/// Rejects framing that proxies and origins have been known to read differently.
/// `Transfer-Encoding` with `Content-Length` never reaches here: hyper frames such a request
/// as chunked, drops `Content-Length` and closes the connection after the answer (RFC 9112
/// section 6.3 allows this; `tests/integration/adversarial.rs` holds it).
pub fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(FramingError::TransferEncoding),
    }
}

/// Request headers removed before forwarding, besides hop-by-hop ones: caller credentials,
/// routing and client-identity claims, method overrides, and `Expect` (we answer it).
fn is_stripped_request(name: &str, credential: &[HeaderName]) -> bool {
    if is_hop_by_hop(name)
        || credential.iter().any(|c| c.as_str() == name)
        || name.starts_with("x-forwarded-")
    {
        return true;
    }
    if matches!(
        name,
        "host"
            | "authorization"
            | "proxy-authorization"
            | "expect"
            | "forwarded"
            | "via"
            | "x-real-ip"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    ) {
        return true;
    }
    // `X_Api_Key` is read as `x-api-key` by some servers (CGI-style environments and several
    // frameworks take `_` for `-`), and `Content_Length` as a second, disagreeing length.
    if name.contains('_') {
        let dashed = name.replace('_', "-");
        return dashed == "content-length" || is_stripped_request(&dashed, credential);
    }
    false
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, and any request with more than
/// one or with an invalid value, is answered 400. (We never forward `Host`; a request that
/// breaks the rule is malformed, and another hop could read it differently.)
pub fn check_host(version: http::Version, headers: &HeaderMap) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == http::Version::HTTP_11 => Err("missing_host"),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err("multiple_host"),
        (Some(v), None) if v.is_empty() => Ok(()),
        (Some(v), None) => match http::uri::Authority::try_from(v.as_bytes()) {
            Ok(a) if a.as_str().contains('@') => Err("invalid_host"),
            Ok(_) => Ok(()),
            Err(_) => Err("invalid_host"),
        },
    }
}

/// Names listed in every `Connection` header (RFC 9110 section 7.6.1).
fn connection_named(headers: &HeaderMap, into: &mut Vec<HeaderName>) {
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                into.push(name);
            }
        }
    }
}

/// Strips the request headers a caller must not send upstream: hop-by-hop, routing and
/// identity claims, `Authorization`, and `credential` (the headers the credential takes).
pub fn strip(headers: &mut HeaderMap, credential: &[HeaderName]) {
    // Host is in every request: removed directly, so the usual request strips nothing else
    // and the list below never allocates.
    headers.remove(header::HOST);
    let mut doomed = Vec::new();
    connection_named(headers, &mut doomed);
    doomed.extend(
        headers
            .keys()
            .filter(|n| is_stripped_request(n.as_str(), credential))
            .cloned(),
    );
    for name in &doomed {
        headers.remove(name);
    }
    if headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        strip_subprotocol_credentials(headers);
    }
}

/// Subprotocols that carry a bearer token, because browsers cannot set `Authorization` on a
/// WebSocket: Kubernetes' and OpenAI Realtime's. They are caller credentials.
const CREDENTIAL_SUBPROTOCOLS: [&str; 2] = [
    "base64url.bearer.authorization.k8s.io.",
    "openai-insecure-api-key.",
];

/// Removes credential-carrying entries from `Sec-WebSocket-Protocol`, keeping the others in
/// order (the header goes when none is left).
fn strip_subprotocol_credentials(headers: &mut HeaderMap) {
    let is_credential = |token: &str| {
        CREDENTIAL_SUBPROTOCOLS.iter().any(|p| {
            token
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        })
    };
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        // A value that is not text cannot be inspected: dropped, like a credential.
        let Ok(text) = value.to_str() else {
            dropped = true;
            continue;
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if is_credential(token) {
                dropped = true;
            } else {
                kept.push(token.to_owned());
            }
        }
    }
    if !dropped {
        return;
    }
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = http::HeaderValue::try_from(kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

/// Strips hop-by-hop headers (and those named by `Connection`) from an upstream response.
/// Runs on every response: names listed in `Connection` are collected only when they are
/// not hop-by-hop already (`Connection: keep-alive`, the usual case, allocates nothing).
pub fn strip_response(headers: &mut HeaderMap) {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use crate::credential::{Credential, Source, Spec};

    fn cred(header: &str) -> Credential {
        let spec = Spec::header(
            Source::Env("UNUSED".into()),
            HeaderName::from_bytes(header.as_bytes()).unwrap(),
            "Bearer ",
        );
        Credential::from_values(&spec, &[b"k-123"]).unwrap()
    }

    /// What the request path does: strip, then the credential's own `apply`.
    fn apply(h: &mut HeaderMap, c: &Credential) {
        strip(h, c.stripped());
        let mut parts = http::Request::get("/").body(()).unwrap().into_parts().0;
        parts.headers = std::mem::take(h);
        c.apply(&mut parts, 0).unwrap();
        *h = parts.headers;
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_then_injects_exactly_one_key() {
        let mut h = headers(&[
            ("host", "evil.example"),
            ("authorization", "Bearer caller"),
            ("authorization", "Basic x"),
            ("proxy-authorization", "x"),
            ("connection", "authorization, x-keep-me-not, host"),
            ("x-keep-me-not", "1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
            ("forwarded", "for=1"),
            ("x-http-method-override", "DELETE"),
            ("expect", "100-continue"),
            ("te", "trailers"),
            ("trailer", "authorization"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
        ]);
        apply(&mut h, &cred("authorization"));
        let auth: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(auth, vec!["Bearer k-123"]);
        assert!(auth.iter().all(|v| v.is_sensitive()));
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["accept", "authorization", "content-type"]);
    }

    #[test]
    fn custom_credential_header_and_its_underscore_spelling() {
        let mut h = headers(&[
            ("x-api-key", "caller"),
            ("x_api_key", "caller2"),
            ("authorization", "Bearer c"),
        ]);
        apply(&mut h, &cred("x-api-key"));
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert_eq!(h.get("x-api-key").unwrap(), "Bearer k-123");
        assert!(h.get("x_api_key").is_none());
        assert!(h.get("authorization").is_none());
    }

    #[test]
    fn subprotocol_tokens_are_caller_credentials() {
        let mut h = headers(&[
            (
                "sec-websocket-protocol",
                "base64url.bearer.authorization.k8s.io.c2VjcmV0, base64.channel.k8s.io",
            ),
            (
                "sec-websocket-protocol",
                "realtime, OpenAI-Insecure-Api-Key.sk-caller",
            ),
        ]);
        apply(&mut h, &cred("authorization"));
        let kept: Vec<_> = h.get_all("sec-websocket-protocol").iter().collect();
        assert_eq!(kept, vec!["base64.channel.k8s.io, realtime"]);
        // Nothing else offered: the header goes.
        let mut h = headers(&[("sec-websocket-protocol", "openai-insecure-api-key.sk-x")]);
        apply(&mut h, &cred("authorization"));
        assert!(h.get("sec-websocket-protocol").is_none());
        // No credential: left exactly as sent.
        let mut h = headers(&[("sec-websocket-protocol", "chat,  superchat")]);
        apply(&mut h, &cred("authorization"));
        assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat,  superchat");
    }

    #[test]
    fn framing_rules() {
        assert_eq!(check_framing(&headers(&[])), Ok(()));
        assert_eq!(
            check_framing(&headers(&[("transfer-encoding", "chunked")])),
            Ok(())
        );
        assert_eq!(
            check_framing(&headers(&[("transfer-encoding", "gzip, chunked")])),
            Err(FramingError::TransferEncoding)
        );
        assert_eq!(
            check_framing(&headers(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])),
            Err(FramingError::TransferEncoding)
        );
    }

    #[test]
    fn response_hop_by_hop_removed() {
        let mut h = headers(&[
            ("connection", "x-a"),
            ("x-a", "1"),
            ("keep-alive", "5"),
            ("content-type", "text/plain"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_response(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
        // Case-insensitive tokens, `close`, and names that are hop-by-hop anyway.
        let mut h = headers(&[
            ("connection", "Keep-Alive, close , X-B"),
            ("x-b", "1"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("x-kept", "1"),
        ]);
        strip_response(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }
}
