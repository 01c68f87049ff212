//! The client connection layer: keep-alive idle vs. header timeouts, clean closes, drain of
//! idle connections, and client mistakes answered as client errors (never as upstream ones).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const GET: &[u8] = b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn listener(extra: &str) -> impl Fn(&str) -> String {
    let extra = extra.to_owned();
    move |url: &str| {
        config_text(url, "").replace(
            "[listener]\naddress = \"127.0.0.1:0\"",
            &format!("[listener]\naddress = \"127.0.0.1:0\"\n{extra}"),
        )
    }
}

/// Reads one whole response (the mock answers with `content-length`) off a kept-alive socket.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text;
            }
        }
    }
}

/// A keep-alive connection that has been served one request.
async fn served(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s
}

/// Reads until the peer closes; `Ok` is a FIN, `Err` a reset.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .map(|_| rest)
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_and_parks() {
    let up = Upstream::banata().await;
    let text = listener("header_read_timeout = \"300ms\"")(&up.mock.url());
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let mut s = served(p.addr).await;
    // Idle for longer than header_read_timeout, and long enough to be parked (1 s): the
    // connection must still serve the next request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(GET).await.unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(up.mock.requests().len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn idle_past_idle_timeout_is_closed_cleanly() {
    let up = Upstream::banata().await;
    let text = listener("idle_timeout = \"600ms\"")(&up.mock.url());
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let mut s = served(p.addr).await;
    let idle = Instant::now();
    let rest = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("a FIN, not a reset");
    assert!(rest.is_empty(), "bytes on close: {rest:?}");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // A connection that never sent a byte is closed by the same clock.
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    let rest = until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(rest.is_ok_and(|r| r.is_empty()));
    p.stop().await;
}

#[tokio::test]
async fn a_slow_head_on_a_reused_connection_still_times_out() {
    let up = Upstream::banata().await;
    let text = listener("header_read_timeout = \"300ms\"")(&up.mock.url());
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let mut s = served(p.addr).await;
    let t = Instant::now();
    s.write_all(b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let _ = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "held {:?}",
        t.elapsed()
    );
    assert_eq!(up.mock.requests().len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn drain_closes_idle_connections_at_once() {
    let up = Upstream::banata().await;
    let text = config_text(&up.mock.url(), "")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"20s\"");
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    // One idle in hyper (just served) and one parked (a fresh silent connection is parked
    // from the start): both close at once, well within the 20 s grace.
    let mut served = served(p.addr).await;
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    let t = Instant::now();
    let stop = tokio::spawn(p.stop());
    assert!(
        until_closed(&mut served, Duration::from_secs(5))
            .await
            .is_ok()
    );
    assert!(
        until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_ok()
    );
    stop.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn malformed_chunked_body_is_a_client_error() {
    // The real binary: its metrics registry is its own, so counts are exact.
    let up = Upstream::banata().await;
    let (run, _dir) = run_binary(&up, &config_text(&up.mock.url(), ""), None).await;
    let out = raw(
        run.proxy,
        b"POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"reason\":\"malformed_body\""), "{out}");
    // A client gone mid-body (half-closed after 10 of 100 bytes) is the same mistake.
    let mut s = TcpStream::connect(run.proxy).await.unwrap();
    s.write_all(
        b"POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    let out = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let m = String::from_utf8_lossy(&get(run.admin, "/metrics").await.body).into_owned();
    for series in [
        "sidekey_upstream_errors_total{api=\"default\",kind=\"protocol\"} 0",
        "sidekey_errors_total{code=\"invalid_request\"} 2",
        "sidekey_errors_total{code=\"upstream_unavailable\"} 0",
    ] {
        assert!(m.contains(series), "missing {series}: {m}");
    }
    run.stop().await;
}

#[tokio::test]
async fn host_is_required_once_and_valid() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let cases: [(&[u8], &str); 4] = [
        (b"GET /v1/sandboxes HTTP/1.1\r\n\r\n", "missing_host"),
        (
            b"GET /v1/sandboxes HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "multiple_host",
        ),
        (
            b"GET /v1/sandboxes HTTP/1.1\r\nHost: u@evil\r\n\r\n",
            "invalid_host",
        ),
        (
            b"GET /v1/sandboxes HTTP/1.1\r\nHost: a b\r\n\r\n",
            "invalid_host",
        ),
    ];
    for (req, reason) in cases {
        let out = raw(p.addr, req, Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains(&format!("\"reason\":\"{reason}\"")), "{out}");
    }
    // HTTP/1.0 has no Host requirement.
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert_eq!(up.mock.requests().len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn underscore_spellings_of_framing_and_hop_headers_are_not_forwarded() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let out = raw(
        p.addr,
        b"POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent_Length: 40\r\nTransfer_Encoding: chunked\r\nKeep_Alive: 1\r\nProxy_Authorization: x\r\nX_Forwarded_Host: evil\r\nConnection: close\r\n\r\n{}",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 1);
    for name in seen[0].headers.keys() {
        assert!(
            !name.as_str().contains('_'),
            "forwarded {name}: {:?}",
            seen[0].headers
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn counters_exist_at_zero_before_the_first_event() {
    // The real binary: a registry of its own, so "0" means no event yet.
    let up = Upstream::banata().await;
    let (run, dir) = run_binary(&up, &config_text(&up.mock.url(), ""), None).await;
    let key = dir.path().join("secret/api-key");
    let admin = run.admin;
    let scrape = move || async move {
        String::from_utf8_lossy(&get(admin, "/metrics").await.body).into_owned()
    };
    let fp = sidekey::credential::fingerprint(KEY.as_bytes());
    let m = scrape().await;
    for series in [
        format!(
            "sidekey_upstream_unauthorized_total{{api=\"default\",credential=\"default\",fingerprint=\"{fp}\"}} 0"
        ),
        "sidekey_errors_total{code=\"credential_unavailable\"} 0".into(),
        "sidekey_errors_total{code=\"tls_handshake\"} 0".into(),
        "sidekey_upstream_errors_total{api=\"default\",kind=\"connect\"} 0".into(),
        "sidekey_config_reloads_total{result=\"invalid\"} 0".into(),
        "sidekey_credential_reloads_total{api=\"default\",credential=\"default\",result=\"error\"} 0".into(),
    ] {
        assert!(m.contains(&series), "missing {series}: {m}");
    }
    // A rotated key's series exists before its first 401.
    std::fs::write(&key, "sk_rotated_key_0002").unwrap();
    let new = sidekey::credential::fingerprint(b"sk_rotated_key_0002");
    let want = format!(
        "sidekey_upstream_unauthorized_total{{api=\"default\",credential=\"default\",fingerprint=\"{new}\"}} 0"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let want = want.clone();
            async move { scrape().await.contains(&want) }
        })
        .await
    );
    run.stop().await;
}
