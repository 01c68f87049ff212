//! The request path: allowed requests carry exactly one injected key; every refusal has its
//! status and code, and the upstream sees nothing of it.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn allowed_request_carries_exactly_one_injected_key() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let r = request(
        p.addr,
        "GET",
        "/v1/sandboxes/sb_1?view=full&x=%2F",
        &[
            ("authorization", "Bearer caller-key"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("x-request-id", "req-42"),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-request-id"], "req-42");
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.target, "/v1/sandboxes/sb_1?view=full&x=%2F");
    let auth: Vec<_> = req.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {KEY}").as_str()]);
    assert!(req.headers.get("x-forwarded-for").is_none());
    assert!(req.headers.get("x-drop-me").is_none());
    assert_eq!(req.headers["x-request-id"], "req-42");
    assert_eq!(req.headers["accept"], "application/json");
    // HTTP/2 carries the authority in :authority; HTTP/1.1 in Host. Either way, ours.
    if let Some(host) = req.headers.get("host") {
        assert_eq!(host, &format!("localhost:{}", up.mock.addr().port()));
    }
    assert_eq!(
        r.json()["key_fingerprint"],
        sidekey::credential::fingerprint(KEY.as_bytes())
    );
    p.stop().await;
}

#[tokio::test]
async fn canonical_path_is_what_is_forwarded() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/%73andboxes/sb%5f1").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.mock.requests()[0].target, "/v1/sandboxes/sb_1");
    p.stop().await;
}

#[tokio::test]
async fn policy_refusals_reach_nothing_upstream() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let cases = [
        ("DELETE", "/v1/sandboxes/sb_1", 403, "permission_denied"),
        ("POST", "/v1/sandboxes/sb_1/exec", 403, "permission_denied"),
        ("GET", "/v1/sandboxesX", 403, "route_not_allowed"),
        ("POST", "/v1/sandboxes/", 403, "route_not_allowed"),
        ("PUT", "/v1/sandboxes", 403, "route_not_allowed"),
        ("GET", "/v2/anything", 403, "route_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let r = request(p.addr, method, path, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{method} {path}"
        );
        assert_eq!(r.headers["x-sidekey-error"], code);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.json()["error"]["request_id"].is_string());
    }
    let r = request(p.addr, "DELETE", "/v1/sandboxes/sb_1", &[]).await;
    assert_eq!(r.json()["error"]["permission"], "sandbox_sessions:delete");
    assert!(
        up.mock.requests().is_empty(),
        "upstream saw {:?}",
        up.mock.requests()
    );
    let m = metrics(&p).await;
    assert!(m.contains(r#"decision="deny""#), "{m}");
    assert!(
        m.contains(r#"sidekey_errors_total{code="permission_denied"}"#),
        "{m}"
    );
    p.stop().await;
}

/// Malformed targets go over raw TCP: client libraries would normalise them.
#[tokio::test]
async fn malformed_targets_are_rejected_over_raw_tcp() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let long = format!("/v1/sandboxes/{}", "a".repeat(9000));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "GET /v1/sandboxes/sb_1/../../admin HTTP/1.1".into(),
            "400",
            "dot_segment",
        ),
        (
            "GET /v1/sandboxes/%2e%2e/x HTTP/1.1".into(),
            "400",
            "dot_segment",
        ),
        (
            "GET /v1/sandboxes/sb_1%2Fexec HTTP/1.1".into(),
            "400",
            "encoded_delimiter",
        ),
        (
            "GET /v1/sandboxes/sb_1%252F HTTP/1.1".into(),
            "400",
            "encoded_delimiter",
        ),
        ("GET /v1//sandboxes HTTP/1.1".into(), "400", "empty_segment"),
        (
            "GET //evil.example/v1/sandboxes HTTP/1.1".into(),
            "400",
            "empty_segment",
        ),
        ("GET /v1/sandboxes;x=1 HTTP/1.1".into(), "400", "semicolon"),
        (
            "GET /v1/sandboxes\\sb_1 HTTP/1.1".into(),
            "400",
            "backslash",
        ),
        (
            "GET /v1/sandboxes/%C0%AF HTTP/1.1".into(),
            "400",
            "invalid_utf8",
        ),
        (
            "GET /v1/sandboxes/%00 HTTP/1.1".into(),
            "400",
            "encoded_control",
        ),
        (
            "GET /v1/sandboxes/%zz HTTP/1.1".into(),
            "400",
            "malformed_escape",
        ),
        (
            "GET https://evil.example/v1/sandboxes HTTP/1.1".into(),
            "400",
            "not_origin_form",
        ),
        ("OPTIONS * HTTP/1.1".into(), "400", "not_origin_form"),
        (
            "CONNECT evil.example:443 HTTP/1.1".into(),
            "405",
            "method_not_allowed",
        ),
        (
            "TRACE /v1/sandboxes HTTP/1.1".into(),
            "405",
            "method_not_allowed",
        ),
        (format!("GET {long} HTTP/1.1"), "414", "uri_too_long"),
    ];
    for (line, status, needle) in cases {
        let req = format!("{line}\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let out = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        let first = out.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("HTTP/1.1 {status}")),
            "{line}: {first}"
        );
        assert!(out.contains(needle), "{line}: {out}");
    }
    assert!(
        up.mock.requests().is_empty(),
        "upstream saw {:?}",
        up.mock.requests()
    );
    p.stop().await;
}

#[tokio::test]
async fn bad_transfer_encoding_is_rejected() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let req = "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    let out = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn no_key_fails_closed_and_sends_nothing() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, None, &config_text(&up.mock.url(), "")).await;
    let r = request(p.addr, "POST", "/v1/sandboxes", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "credential_unavailable")
    );
    assert_eq!(get(p.admin, "/readyz").await.status, 503);
    assert_eq!(get(p.admin, "/healthz").await.status, 200);
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn admin_endpoints_report_state_without_the_key() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    let ready = get(p.admin, "/readyz").await;
    assert_eq!(ready.status, 200);
    let cred = get(p.admin, "/credential").await.json();
    assert_eq!(
        cred["fingerprint"],
        sidekey::credential::fingerprint(KEY.as_bytes())
    );
    assert_eq!(cred["source"], "file");
    assert!(cred["last_error"].is_null());
    let m = metrics(&p).await;
    assert!(m.contains(&format!(
        "sidekey_credential_info{{api=\"default\",credential=\"default\",fingerprint=\"{}\"}} 1",
        sidekey::credential::fingerprint(KEY.as_bytes())
    )));
    assert!(m.contains("sidekey_requests_total{"), "{m}");
    assert!(m.contains("sidekey_request_duration_seconds_bucket"), "{m}");
    for body in [
        m,
        String::from_utf8_lossy(&ready.body).into_owned(),
        cred.to_string(),
    ] {
        assert!(!body.contains("SECRET"), "key material leaked: {body}");
    }
    p.stop().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    use std::sync::Arc;
    let up = Upstream::with(Arc::new(|_req| {
        Box::pin(async {
            let mut r = sidekey::mock::json(
                http::StatusCode::TOO_MANY_REQUESTS,
                &serde_json::json!({"error": "slow down"}),
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("7"));
            r
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");
    assert!(r.headers.get("x-sidekey-error").is_none());
    assert_eq!(r.json()["error"], "slow down");
    p.stop().await;
}
