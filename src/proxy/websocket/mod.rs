//! WebSocket (RFC 6455) through the reverse listener: which requests are handshakes, what
//! is forwarded, what the upstream must answer before a byte is spliced ([`tunnel`] runs the
//! splice).
//!
//! A handshake is screened, routed, stripped and injected like any request; the route must
//! opt in (`websocket = true`). Only `Upgrade: websocket` on an HTTP/1.1 GET that lists
//! `upgrade` in `Connection` is a handshake; every other `Upgrade` (h2c above all) is
//! stripped as a hop-by-hop header and the request goes on as a plain one.

pub mod tunnel;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use sha1::{Digest as _, Sha1};

use super::{ProxyBody, ProxyError, inject};
use crate::serve::Upgrade;
use crate::upstream::{FailureKind, UpstreamBody};
use tunnel::Tunnel;

/// What a request asks for, as far as protocol switching goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    /// A plain request (any other `Upgrade` is stripped with the hop-by-hop headers).
    Plain,
    /// A WebSocket handshake; the upstream's `Sec-WebSocket-Accept` must equal this.
    WebSocket { accept: HeaderValue },
    /// A WebSocket handshake that breaks RFC 6455 section 4.1: 400 with this reason.
    Invalid(&'static str),
}

/// RFC 6455 section 1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The one value of a header that must appear once.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

fn is_websocket_token(headers: &HeaderMap) -> bool {
    single(headers, header::UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Classifies a request head. Costs one header lookup for a plain request.
pub fn classify(method: &Method, version: Version, headers: &HeaderMap) -> Ask {
    if !headers.contains_key(header::UPGRADE)
        || method != Method::GET
        || version != Version::HTTP_11
        || !is_websocket_token(headers)
        || !lists(headers, header::CONNECTION, "upgrade")
    {
        return Ask::Plain;
    }
    let version_ok = single(headers, header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_ok {
        return Ask::Invalid("unsupported_websocket_version");
    }
    let Some(key) = single(headers, header::SEC_WEBSOCKET_KEY) else {
        return Ask::Invalid("invalid_websocket_key");
    };
    let key = key.as_bytes().trim_ascii();
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Ask::Invalid("invalid_websocket_key");
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Ask::Invalid("websocket_with_body");
    }
    match HeaderValue::try_from(accept_for(key)) {
        Ok(accept) => Ask::WebSocket { accept },
        Err(_) => Ask::Invalid("invalid_websocket_key"),
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// The handshake as forwarded: the hop-by-hop headers were stripped with the rest, so the
/// upgrade is asked for again, in its canonical spelling.
pub fn ask_upstream(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// An upstream `101` is spliced only when it really switches to WebSocket for this key.
pub fn check_switch(headers: &HeaderMap, accept: &HeaderValue) -> Result<(), &'static str> {
    if !is_websocket_token(headers) {
        return Err("upgrade_not_websocket");
    }
    if !lists(headers, header::CONNECTION, "upgrade") {
        return Err("connection_not_upgrade");
    }
    match single(headers, header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes().trim_ascii() == accept.as_bytes() => Ok(()),
        _ => Err("accept_mismatch"),
    }
}

/// The 101 as the client gets it: the upstream's headers, hop-by-hop ones stripped, plus
/// the switch itself.
fn answer_client(headers: &mut HeaderMap) {
    inject::strip_response(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The upstream answered 101: checks it, takes the switched connection, and answers the
/// client 101 with the tunnel to run once that is written. A 101 that does not complete
/// this handshake is a broken upstream: 502, nothing spliced.
pub async fn switch(
    mut resp: Response<UpstreamBody>,
    accept: &HeaderValue,
    tunnel: Tunnel,
    started: Instant,
    timeout: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let Err(reason) = check_switch(resp.headers(), accept) {
        tracing::warn!(
            api = &*tunnel.api,
            reason,
            "the upstream's 101 does not complete the WebSocket handshake"
        );
        return Err(ProxyError::Upstream(FailureKind::Protocol));
    }
    let deadline = tokio::time::Instant::from_std(started) + timeout;
    let switched = tokio::time::timeout_at(deadline, hyper::upgrade::on(&mut resp)).await;
    let Ok(Ok(upstream)) = switched else {
        return Err(ProxyError::Upstream(FailureKind::Protocol));
    };
    let (mut parts, _) = resp.into_parts();
    answer_client(&mut parts.headers);
    let mut out = Response::new(Either::Right(Full::default()));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = parts.headers;
    out.extensions_mut()
        .insert(Upgrade::new(move |client| tunnel.run(upstream, client)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn ws(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = vec![
            ("host", "x"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ];
        pairs.extend_from_slice(extra);
        head(&pairs)
    }

    /// RFC 6455 section 1.3's worked example.
    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(accept_for(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn what_is_a_handshake() {
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        let want = Ask::WebSocket {
            accept: HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        };
        assert_eq!(classify(&get, v11, &ws(&[])), want);
        // Case-insensitive tokens, `keep-alive, Upgrade` (Firefox).
        let mut h = ws(&[]);
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(classify(&get, v11, &h), want);
        // Not a WebSocket handshake: plain requests, their Upgrade stripped later.
        let plain = [
            (
                get.clone(),
                v11,
                head(&[("upgrade", "h2c"), ("connection", "upgrade")]),
            ),
            (
                get.clone(),
                v11,
                head(&[("upgrade", "foo"), ("connection", "upgrade")]),
            ),
            (
                get.clone(),
                v11,
                head(&[("upgrade", "websocket"), ("connection", "keep-alive")]),
            ),
            (
                get.clone(),
                v11,
                head(&[("upgrade", "websocket, h2c"), ("connection", "upgrade")]),
            ),
            (Method::POST, v11, ws(&[])),
            (get.clone(), Version::HTTP_10, ws(&[])),
            (get.clone(), v11, head(&[("connection", "upgrade")])),
        ];
        for (m, v, h) in &plain {
            assert_eq!(classify(m, *v, h), Ask::Plain, "{m} {v:?} {h:?}");
        }
        // Handshakes that break the RFC.
        let mut no_key = ws(&[]);
        no_key.remove("sec-websocket-key");
        let mut short_key = ws(&[]);
        short_key.insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        let mut v8 = ws(&[]);
        v8.insert("sec-websocket-version", HeaderValue::from_static("8"));
        let invalid = [
            (no_key, "invalid_websocket_key"),
            (short_key, "invalid_websocket_key"),
            (ws(&[("sec-websocket-key", KEY)]), "invalid_websocket_key"),
            (v8, "unsupported_websocket_version"),
            (ws(&[("content-length", "5")]), "websocket_with_body"),
            (
                ws(&[("transfer-encoding", "chunked")]),
                "websocket_with_body",
            ),
        ];
        for (h, reason) in &invalid {
            assert_eq!(classify(&get, v11, h), Ask::Invalid(reason), "{h:?}");
        }
    }

    #[test]
    fn the_upstream_must_switch_for_this_key() {
        let accept = HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let good = head(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(check_switch(&good, &accept), Ok(()));
        let mut wrong = good.clone();
        wrong.insert("sec-websocket-accept", HeaderValue::from_static("AAAA"));
        assert_eq!(check_switch(&wrong, &accept), Err("accept_mismatch"));
        let mut h2c = good.clone();
        h2c.insert("upgrade", HeaderValue::from_static("h2c"));
        assert_eq!(check_switch(&h2c, &accept), Err("upgrade_not_websocket"));
        let mut no_conn = good;
        no_conn.remove("connection");
        assert_eq!(
            check_switch(&no_conn, &accept),
            Err("connection_not_upgrade")
        );
    }
}
