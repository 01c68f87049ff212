//! DNS rebinding: listeners without caller authentication serve this machine's own callers,
//! never a web page. A `Host` that names another domain (what a rebinding page sends), a
//! foreign `Origin`, a cross-site fetch and a CORS preflight are refused with nothing sent, on
//! the shared listener, an API's own listener and the admin listener; loopback names and the
//! listed hosts and origins are served.

use crate::support::*;

fn config(url: &str) -> String {
    let mut text = config_text(url, "");
    text = text.replace(
        "[admin]",
        "allowed_hosts = [\"app.internal\"]\nallowed_origins = [\"https://tools.internal\"]\n[admin]",
    );
    text
}

#[tokio::test]
async fn a_rebinding_page_gets_nothing_and_local_callers_everything() {
    let up = Upstream::banata().await;
    let text = config(&up.mock.url());
    assert!(text.contains("allowed_hosts"), "{text}");
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let with = |host: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut h = vec![("host", host)];
        h.extend(extra);
        h
    };
    // Refused, nothing sent.
    let refused = [
        (with("evil.test:8080", vec![]), "host_not_allowed"),
        (with("127.0.0.1.nip.io", vec![]), "host_not_allowed"),
        (
            with("localhost", vec![("origin", "https://evil.test")]),
            "browser_request_refused",
        ),
        (
            with("localhost", vec![("origin", "null")]),
            "browser_request_refused",
        ),
        (
            with("localhost", vec![("sec-fetch-site", "cross-site")]),
            "browser_request_refused",
        ),
        (
            with("localhost", vec![("sec-fetch-site", "same-site")]),
            "browser_request_refused",
        ),
    ];
    for (headers, code) in &refused {
        let r = raw_request(p.addr, "GET", "/v1/sandboxes", headers).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, code.to_string()),
            "{headers:?}"
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
    }
    let preflight = raw_request(
        p.addr,
        "OPTIONS",
        "/v1/sandboxes",
        &with(
            "localhost",
            vec![
                ("origin", "http://localhost:3000"),
                ("access-control-request-method", "GET"),
            ],
        ),
    )
    .await;
    assert_eq!(preflight.code(), "browser_request_refused");
    assert!(
        preflight
            .headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-allow"))
    );
    assert_eq!(up.mock.requests().len(), 0, "nothing reached the upstream");
    // Served: loopback names, the listed host and origin, a same-origin fetch.
    let served = [
        with("localhost:8080", vec![]),
        with("127.0.0.2", vec![]),
        with("[::1]:9", vec![]),
        with("dev.localhost", vec![]),
        with("app.internal:8080", vec![]),
        with(
            "localhost",
            vec![
                ("origin", "http://127.0.0.1:5173"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        with("localhost", vec![("origin", "https://tools.internal")]),
        with("localhost", vec![("sec-fetch-site", "same-origin")]),
    ];
    for headers in &served {
        let r = raw_request(p.addr, "GET", "/v1/sandboxes", headers).await;
        assert_eq!(
            r.status,
            200,
            "{headers:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The admin listener: the same checks (fingerprints, paths, refusals stay local).
    for path in ["/credential", "/metrics", "/"] {
        let r = raw_request(p.admin, "GET", path, &with("evil.test:9901", vec![])).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, "host_not_allowed".to_owned()),
            "{path}"
        );
        let r = raw_request(
            p.admin,
            "GET",
            path,
            &with("localhost", vec![("origin", "https://evil.test")]),
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        let r = raw_request(p.admin, "GET", path, &with("127.0.0.1:9901", vec![])).await;
        assert_eq!(r.status, 200, "{path}");
    }
    let m = metrics(&p).await;
    assert!(m.contains("code=\"browser_request_refused\""), "{m}");
    p.stop().await;
}

/// One request with exactly these headers (no default `Host`).
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        addr,
        b.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
}

/// An API's own listener: the same checks, with its own `allowed_hosts`.
#[tokio::test]
async fn an_apis_own_listener_serves_loopback_and_its_listed_hosts() {
    let ca = sidekey::pki::Ca::new("test CA").unwrap();
    let mock = sidekey::mock::MockUpstream::start_banata(&ca)
        .await
        .unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    dir.write("key", KEY);
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.banata]
url = "{}"
ca_file = "ca.pem"
listen = "127.0.0.1:0"
allowed_hosts = ["banata.internal"]
credential = {{ file = "key" }}
[api.banata.permissions]
"read" = ["GET /v1/sandboxes"]
[service]
name = "own-listener"
allow = ["banata/read"]
"#,
        mock.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    let own = p.apis.iter().find(|(n, _)| n == "banata").unwrap().1;
    let with = |host: &'static str| vec![("host", host)];
    let r = raw_request(own, "GET", "/v1/sandboxes", &with("evil.test:9000")).await;
    assert_eq!(r.code(), "host_not_allowed");
    let r = raw_request(own, "GET", "/v1/sandboxes", &with("app.internal")).await;
    assert_eq!(
        r.code(),
        "host_not_allowed",
        "the shared listener's list is not this one's"
    );
    assert!(mock.requests().is_empty());
    for host in ["banata.internal:9000", "127.0.0.1:9000", "localhost"] {
        let r = raw_request(own, "GET", "/v1/sandboxes", &with(host)).await;
        assert_eq!(r.status, 200, "{host}");
    }
    p.stop().await;
}
