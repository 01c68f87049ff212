//! Hostile bytes from a raw TCP client. Each case asserts what reached the upstream: nothing
//! for a refusal, exactly one well-framed request carrying exactly one key otherwise.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(3);

async fn proxy(up: &Upstream, extra: &str) -> TestProxy {
    TestProxy::start(up, Some(KEY), &config_text(&up.mock.url(), extra)).await
}

fn status_of(out: &str) -> u16 {
    out.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn path_bypass_classes_never_reach_the_upstream() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let targets = [
        "/v1/sandboxes/sb_1/..",
        "/v1/sandboxes/sb_1/.%2E/x",
        "/v1/sandboxes/%2e",
        "/v1/sandboxes/sb_1%5Cexec",
        "/v1/sandboxes/sb_1%25",
        "/v1/sandboxes/sb_1%3Bexec",
        "/v1/sandboxes/sb_1%0d%0aX:%20y",
        "/v1/sandboxes/%C0%AF",
        "/v1/sandboxes/%E0%80%AF",
        "/v1/sandboxes/%",
        "/v1/sandboxes/%G1",
        "/http://169.254.169.254/",
        "/v1/sandboxes/caf\u{e9}",
    ];
    for t in targets {
        let out = raw(
            p.addr,
            format!("GET {t} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(status_of(&out), 400, "{t}: {out}");
        assert!(out.contains("\"code\":\"invalid_request\""), "{t}: {out}");
    }
    // Raw control bytes and spaces never even parse.
    for t in ["/v1/sandboxes/\tx", "/v1/sandboxes/\x00"] {
        let out = raw(
            p.addr,
            format!("GET {t} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(status_of(&out), 400, "{t:?}: {out}");
    }
    let long_query = format!("/v1/sandboxes?q={}", "a".repeat(17 * 1024));
    let out = raw(
        p.addr,
        format!("GET {long_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status_of(&out), 414, "{out}");
    assert!(up.mock.requests().is_empty(), "{:?}", up.mock.requests());
    p.stop().await;
}

#[tokio::test]
async fn methods_case_and_segment_confusion_are_denied() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    for (line, status) in [
        ("get /v1/sandboxes", 403),
        ("FOO /v1/sandboxes", 403),
        ("GET /V1/sandboxes", 403),
        ("GET /v1/sandboxesX", 403),
        ("GET /v1/sandboxes/sb_1/", 403),
        ("TRACE /v1/sandboxes", 405),
        ("CONNECT localhost:443", 405),
    ] {
        let out = raw(
            p.addr,
            format!("{line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(status_of(&out), status, "{line}: {out}");
    }
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn fragments_never_reach_the_upstream() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes#/../admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/v1/sandboxes");
    p.stop().await;
}

#[tokio::test]
async fn smuggling_attempts_forward_nothing_smuggled() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let smuggled = "GET /v1/sandboxes/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases = [
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{smuggled}"
        ),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5x\r\n\r\nhello{smuggled}"
        ),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let out = raw(p.addr, case.as_bytes(), WAIT).await;
        // CL + TE: hyper drops Content-Length, frames by chunked (RFC 9112 section 6.1) and
        // closes the connection after the response, so what follows is never read.
        // Everything else is refused outright.
        let want: &[u16] = if i < 2 { &[201, 400] } else { &[400] };
        assert!(want.contains(&status_of(&out)), "{case:?}: {out}");
        assert_eq!(
            out.matches("HTTP/1.1").count(),
            1,
            "a second response: {out}"
        );
    }
    let seen = up.mock.requests();
    assert!(
        seen.iter().all(|r| !r.target.contains("smuggled")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|r| r.headers.get("content-length").is_none_or(|v| v == "0")),
        "{seen:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn pipelined_request_after_a_denied_one_with_an_unread_body() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    // The denied request's body is itself a request: it must never be parsed as one.
    let inner = "GET /v1/sandboxes/from-body HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let req = format!(
        "POST /v1/sandboxes/sb_1/exec HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{inner}GET /v1/sandboxes/next HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        inner.len()
    );
    let out = raw(p.addr, req.as_bytes(), WAIT).await;
    assert_eq!(status_of(&out), 403, "{out}");
    let targets: Vec<_> = up.mock.requests().into_iter().map(|r| r.target).collect();
    assert!(
        !targets.iter().any(|t| t.contains("from-body")),
        "{targets:?}"
    );
    assert!(
        targets.iter().all(|t| t == "/v1/sandboxes/next"),
        "{targets:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn bare_lf_get_with_body_and_http10_are_framed_once() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes HTTP/1.1\nHost: localhost\nConnection: close\n\n",
        WAIT,
    )
    .await;
    assert!(matches!(status_of(&out), 200 | 400), "{out}");
    let out = raw(p.addr, b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n", WAIT).await;
    assert_eq!(status_of(&out), 200, "{out}");
    let out = raw(p.addr, b"GET /v1/sandboxes HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    let seen = up.mock.requests();
    assert!(seen.len() <= 3);
    for r in seen {
        assert_eq!(r.target, "/v1/sandboxes");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }
    p.stop().await;
}

#[tokio::test]
async fn request_trailers_never_reach_the_upstream() {
    // This upstream answers with the names of the trailers it received.
    let up = Upstream::with(Arc::new(|req| {
        Box::pin(async move {
            let collected = req.into_body().collect().await.ok();
            let names: Vec<String> = collected
                .and_then(|c| c.trailers().cloned())
                .map(|t| t.keys().map(|k| k.to_string()).collect())
                .unwrap_or_default();
            sidekey::mock::json(
                http::StatusCode::OK,
                &serde_json::json!({ "trailers": names }),
            )
        })
    }))
    .await;
    let p = proxy(&up, "").await;
    let req = "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: authorization, x-api-key\r\nTE: trailers\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nauthorization: Bearer evil\r\nx-api-key: evil\r\n\r\n";
    let out = raw(p.addr, req.as_bytes(), WAIT).await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("\"trailers\":[]"), "{out}");
    let seen = up.mock.requests();
    assert_eq!(
        seen[0]
            .headers
            .get_all("authorization")
            .iter()
            .collect::<Vec<_>>(),
        vec![format!("Bearer {KEY}").as_str()]
    );
    p.stop().await;
}

#[tokio::test]
async fn connection_header_cannot_remove_or_double_the_key() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    for conn in [
        "authorization",
        "x-api-key, host",
        "close, authorization, keep-alive",
    ] {
        let req = format!(
            "GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\nX_Api_Key: c\r\nConnection: {conn}\r\n\r\n"
        );
        let out = raw(p.addr, req.as_bytes(), WAIT).await;
        assert_eq!(status_of(&out), 200, "{conn}: {out}");
    }
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 3);
    for r in seen {
        let auth: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert_eq!(auth, vec![format!("Bearer {KEY}").as_str()]);
        // Not the configured credential header (authorization here): passed through as is.
        assert_eq!(r.headers["x_api_key"], "c");
    }
    p.stop().await;
}

#[tokio::test]
async fn underscore_spelling_of_a_custom_credential_header_is_stripped() {
    let up = Upstream::banata().await;
    let text = config_text(&up.mock.url(), "").replace(
        "file = \"secret/api-key\"",
        "file = \"secret/api-key\"\nheader = \"x-api-key\"\nprefix = \"\"",
    );
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let out = raw(p.addr, b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nX_Api_Key: evil\r\nx-api-key: evil2\r\nConnection: close\r\n\r\n", WAIT).await;
    assert_eq!(status_of(&out), 401, "the mock wants Authorization: {out}");
    let r = &up.mock.requests()[0];
    assert_eq!(
        r.headers.get_all("x-api-key").iter().collect::<Vec<_>>(),
        vec![KEY]
    );
    assert!(r.headers.get("x_api_key").is_none());
    p.stop().await;
}

#[tokio::test]
async fn upgrades_are_never_tunnelled() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    // A WebSocket handshake is an upgrade of its own (tests/integration/websocket.rs);
    // anything else asking to switch is a plain request with its Upgrade stripped.
    for upgrade in ["h2c", "foo"] {
        let req = format!(
            "GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let out = raw(p.addr, req.as_bytes(), WAIT).await;
        assert_eq!(status_of(&out), 200, "{upgrade}: {out}");
    }
    for r in up.mock.requests() {
        assert!(r.headers.get("upgrade").is_none());
        assert!(r.headers.get("http2-settings").is_none());
    }
    p.stop().await;
}

#[tokio::test]
async fn expect_continue_on_a_denied_route_reads_no_body() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"POST /v1/sandboxes/sb_1/exec HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("no answer without the body")
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn header_floods_and_odd_bytes_do_not_crash() {
    let up = Upstream::banata().await;
    let p = proxy(&up, "").await;
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw(
        p.addr,
        format!("GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status_of(&out), 431, "{out}");
    let huge = "a".repeat(1 << 20);
    let out = raw(
        p.addr,
        format!("GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n")
            .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(status_of(&out), 431, "{}", &out[..out.len().min(200)]);
    assert!(up.mock.requests().is_empty());
    let mut req = b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nX-Obs: caf".to_vec();
    req.extend_from_slice(&[0xE9, 0xFF, 0x80]);
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let out = raw(p.addr, &req, WAIT).await;
    assert!(matches!(status_of(&out), 200 | 400), "{out}");
    // Still serving.
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    p.stop().await;
}

#[tokio::test]
async fn redirects_are_passed_back_and_never_followed() {
    let other = Upstream::banata().await;
    let location = format!("{}/v1/sandboxes", other.mock.url());
    let up = Upstream::with(Arc::new(move |_req| {
        let location = location.clone();
        Box::pin(async move {
            let mut r = sidekey::mock::json(http::StatusCode::FOUND, &serde_json::json!({}));
            r.headers_mut()
                .insert("location", http::HeaderValue::from_str(&location).unwrap());
            r
        })
    }))
    .await;
    let p = proxy(&up, "").await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status, 302);
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with(&other.mock.url())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(other.mock.requests().is_empty());
    assert_eq!(other.mock.connections(), 0);
    p.stop().await;
}
