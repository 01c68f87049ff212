//! Upstream faults map to 502/504 with stable codes; an untrusted upstream never sees a
//! request (so never the key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;

use crate::support::*;

#[tokio::test]
async fn upstream_down_is_502() {
    let up = Upstream::banata().await;
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = TestProxy::start(
        &up,
        Some(KEY),
        &config_text(&format!("https://localhost:{port}"), ""),
    )
    .await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(
        !String::from_utf8_lossy(&r.body).contains("refused"),
        "upstream error text leaked"
    );
    assert!(
        metrics(&p)
            .await
            .contains(r#"sidekey_upstream_errors_total{api="default",kind="connect"}"#)
    );
    p.stop().await;
}

#[tokio::test]
async fn silent_upstream_is_504_within_connect_timeout() {
    let up = Upstream::banata().await;
    // Accepts TCP and never answers the TLS handshake.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let p = TestProxy::start(
        &up,
        Some(KEY),
        &config_text(&format!("https://localhost:{port}"), ""),
    )
    .await;
    let t = Instant::now();
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    p.stop().await;
}

#[tokio::test]
async fn upstream_without_response_headers_is_504() {
    let up = Upstream::with(Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}))
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
    assert_eq!(up.mock.requests().len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn upstream_with_certificate_from_another_ca_gets_nothing() {
    let trusted = Upstream::banata().await;
    let other = Ca::new("not trusted").unwrap();
    let leaf = other.leaf(&["localhost", "127.0.0.1"]).unwrap();
    let rogue = MockUpstream::start_with_leaf(
        other.cert_pem().to_owned(),
        leaf,
        Arc::new(|_r| {
            Box::pin(async { sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({})) })
        }),
    )
    .await
    .unwrap();
    // The proxy trusts `trusted.ca` only; the rogue presents a cert from another CA.
    let p = TestProxy::start(&trusted, Some(KEY), &config_text(&rogue.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(rogue.requests().is_empty());
    assert!(
        metrics(&p)
            .await
            .contains(r#"sidekey_upstream_errors_total{api="default",kind="tls"}"#)
    );
    p.stop().await;
}

#[tokio::test]
async fn wrong_hostname_is_refused() {
    let ca = Ca::new("test CA").unwrap();
    let leaf = ca.leaf(&["api.other.example"]).unwrap();
    let up = MockUpstream::start_with_leaf(
        ca.cert_pem().to_owned(),
        leaf,
        Arc::new(|_r| {
            Box::pin(async { sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({})) })
        }),
    )
    .await
    .unwrap();
    let holder = Upstream { ca, mock: up };
    let p = TestProxy::start(&holder, Some(KEY), &config_text(&holder.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status, 502);
    assert!(holder.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn upstream_401_is_counted_by_fingerprint() {
    let up = Upstream::with(Arc::new(|_req| {
        Box::pin(async {
            sidekey::mock::json(
                http::StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "revoked"}),
            )
        })
    }))
    .await;
    let key = "sk_test_revoked_401";
    let p = TestProxy::start(&up, Some(key), &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status, 401);
    let m = metrics(&p).await;
    let fp = sidekey::credential::fingerprint(key.as_bytes());
    assert!(
        m.contains(&format!(
            "sidekey_upstream_unauthorized_total{{api=\"default\",credential=\"default\",fingerprint=\"{fp}\"}}"
        )),
        "{m}"
    );
    p.stop().await;
}

/// An upstream that answers one request per connection and then closes it without saying
/// `Connection: close`: every pooled connection goes stale. Requests must not fail for it.
#[tokio::test]
async fn stale_pooled_connections_never_fail_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new("test CA").unwrap();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = tls.flush().await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Close shortly after, while the proxy holds the connection as idle.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let holder = Upstream {
        mock: MockUpstream::start_banata(&ca).await.unwrap(),
        ca,
    };
    let text = config_text(&format!("https://localhost:{port}"), "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nprotocol = \"http1\"",
    );
    let p = TestProxy::start(&holder, Some(KEY), &text).await;
    for i in 0..20 {
        let r = get(p.addr, "/v1/sandboxes").await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        // Half the time, wait until the upstream has closed the pooled connection.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 20);
    p.stop().await;
}
