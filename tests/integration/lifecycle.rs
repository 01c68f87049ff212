//! Overload, limits, stalls and shutdown: bounded, fast answers and no lost requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use sidekey::mock::MockUpstream;

use crate::support::*;

fn slow(delay: Duration) -> sidekey::mock::Handler {
    Arc::new(move |_req| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({"slow": true}))
        })
    })
}

#[tokio::test]
async fn in_flight_limit_sheds_load_at_once() {
    let up = Upstream::with(slow(Duration::from_millis(800))).await;
    let p = TestProxy::start(
        &up,
        Some(KEY),
        &config_text(&up.mock.url(), "[limits]\nmax_in_flight = 1"),
    )
    .await;
    let addr = p.addr;
    let first = tokio::spawn(async move { get(addr, "/v1/sandboxes").await.status });
    assert!(
        eventually(Duration::from_secs(3), || async {
            !up.mock.requests().is_empty()
        })
        .await
    );
    let t = Instant::now();
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "overloaded"));
    assert_eq!(r.headers["retry-after"], "1");
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(first.await.unwrap(), 200);
    // The slot is released with the response body: the next request goes through.
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    p.stop().await;
}

#[tokio::test]
async fn request_body_limit() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(
        &up,
        Some(KEY),
        &config_text(&up.mock.url(), "[limits]\nmax_request_body = \"1KiB\""),
    )
    .await;
    let big = "x".repeat(2048);
    let out = raw(
        p.addr,
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2048\r\n\r\n{big}"
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload_too_large"));
    assert!(up.mock.requests().is_empty());
    // Chunked, so the size shows only while streaming: never more than the cap goes out.
    let chunked = format!(
        "POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{big}\r\n0\r\n\r\n"
    );
    let out = raw(p.addr, chunked.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        out.starts_with("HTTP/1.1 413") || out.starts_with("HTTP/1.1 201"),
        "{out}"
    );
    let small = raw(p.addr, b"POST /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", Duration::from_secs(3)).await;
    assert!(small.starts_with("HTTP/1.1 201"), "{small}");
    p.stop().await;
}

#[tokio::test]
async fn stalled_response_stream_is_cut_after_the_idle_timeout() {
    let up = Upstream::with(Arc::new(|_req| {
        Box::pin(async {
            let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(1);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            });
            http::Response::new(body.boxed())
        })
    }))
    .await;
    let p = TestProxy::start(
        &up,
        Some(KEY),
        &config_text(&up.mock.url(), "[limits]\nbody_idle_timeout = \"300ms\""),
    )
    .await;
    let t = Instant::now();
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("data: one"), "{out}");
    // Aborted, not finished: no terminating chunk, no error text appended.
    assert!(!out.ends_with("0\r\n\r\n"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    p.stop().await;
}

#[tokio::test]
async fn upstream_reset_after_headers_aborts_the_client_connection() {
    let up = Upstream::with(Arc::new(|_req| {
        Box::pin(async {
            let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(1);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"partial")).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.abort(std::io::Error::other("reset"));
            });
            http::Response::new(body.boxed())
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("partial"));
    assert!(!out.ends_with("0\r\n\r\n"), "{out:?}");
    assert!(
        !out.contains("upstream_unavailable"),
        "made-up error appended: {out}"
    );
    p.stop().await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() {
    let up = Upstream::banata().await;
    let text = config_text(&up.mock.url(), "").replace(
        "[listener]\naddress = \"127.0.0.1:0\"",
        "[listener]\naddress = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"",
    );
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let t = Instant::now();
    let out = raw(
        p.addr,
        b"GET /v1/sandboxes HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "connection held {:?}: {out}",
        t.elapsed()
    );
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn expired_upstream_certificate_is_refused() {
    let ca = sidekey::pki::Ca::new("test CA").unwrap();
    let leaf = ca
        .leaf_with(&["localhost", "127.0.0.1"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
        .unwrap();
    let mock = MockUpstream::start_with_leaf(ca.cert_pem().to_owned(), leaf, slow(Duration::ZERO))
        .await
        .unwrap();
    let up = Upstream { ca, mock };
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn shutdown_drains_without_failing_a_request() {
    let up = Upstream::with(slow(Duration::from_millis(300))).await;
    let text = config_text(&up.mock.url(), "")
        .replace("shutdown_idle = \"50ms\"", "shutdown_idle = \"400ms\"");
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let (addr, admin) = (p.addr, p.admin);
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // A client that keeps calling while the drain starts, then stops (as the app would).
    let client = {
        let (failures, done) = (failures.clone(), done.clone());
        tokio::spawn(async move {
            for _ in 0..6 {
                let r = get(addr, "/v1/sandboxes").await;
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            done.load(Ordering::SeqCst) >= 1
        })
        .await
    );
    let stopping = tokio::spawn(p.stop());
    // Not ready at once, but still serving while the app keeps calling.
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(admin, "/readyz").await.status == 503
        })
        .await
    );
    client.await.unwrap();
    stopping.await.unwrap();
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(done.load(Ordering::SeqCst), 6);
    // And then it is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// CPU time (user + system, clock ticks) of a process, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let up = Upstream::banata().await;
    let (run, _dir) = run_binary(&up, &config_text(&up.mock.url(), ""), Some(40)).await;
    assert_eq!(get(run.proxy, "/v1/sandboxes").await.status, 200);
    // Hold more connections than the process has descriptors left: accept hits EMFILE.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = tokio::net::TcpStream::connect(run.proxy).await {
            held.push(s);
        }
    }
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&run.stdout)
            .unwrap_or_default()
            .contains("accept failed; backing off")
    })
    .await;
    assert!(logged, "EMFILE was never hit; raise the connection count");
    // Backing off, not spinning: well under half a core over one second.
    let before = cpu_ticks(run.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(run.pid()) - before;
    assert!(spent < 50, "{spent} ticks in 1 s: the accept loop spins");
    drop(held);
    let recovered = eventually(Duration::from_secs(10), || async {
        match tokio::time::timeout(Duration::from_secs(2), async {
            tokio::net::TcpStream::connect(run.proxy).await
        })
        .await
        {
            Ok(Ok(_)) => get(run.proxy, "/v1/sandboxes").await.status == 200,
            _ => false,
        }
    })
    .await;
    assert!(
        recovered,
        "did not serve again after descriptors were freed"
    );
    assert_eq!(run.stop().await, Some(0));
}

/// The admin status page: readiness, the key's fingerprint, the last refusals with the
/// permission they need, the allow line, and never a query string or a key.
#[tokio::test]
async fn the_status_page_shows_refusals_and_never_secrets() {
    let up = Upstream::banata().await;
    let key = "sk_status_page_0001";
    let p = TestProxy::start(&up, Some(key), &config_text(&up.mock.url(), "")).await;
    let r = request(
        p.addr,
        "DELETE",
        "/v1/sandboxes/sb_9?token=querysecret",
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    // A reject shows its reason where a denial shows the missing permission.
    let r = get(p.addr, "/v1/sandboxes/%2e%2e/usage").await;
    assert_eq!(r.status, 400);
    let page = get(p.admin, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("Ready."), "{html}");
    assert!(
        html.contains(&sidekey::credential::fingerprint(key.as_bytes())),
        "{html}"
    );
    assert!(html.contains("<code>/v1/sandboxes/sb_9</code>"), "{html}");
    assert!(html.contains("<td>sandbox_sessions:delete</td>"), "{html}");
    assert!(html.contains("<td>dot_segment</td>"), "{html}");
    assert!(html.contains("allow = [&quot;sandbox_sessions:create&quot;, &quot;sandbox_sessions:delete&quot;, &quot;sandbox_sessions:read&quot;]"), "{html}");
    assert!(
        !html.contains("querysecret") && !html.contains(key),
        "{html}"
    );
    p.stop().await;

    let text = config_text(&up.mock.url(), "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"127.0.0.1:0\"\nstatus_page = false",
    );
    let p = TestProxy::start(&up, Some(key), &text).await;
    assert_eq!(get(p.admin, "/").await.status, 404);
    p.stop().await;
}
