//! The upstream pool: keep-alive connections are reused (HTTP/1.1 one request at a time,
//! HTTP/2 multiplexed), a connection goes back only when its response body has ended, so a
//! long stream never holds up the next request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use tokio::sync::{Mutex, mpsc};

use crate::support::*;

fn with_protocol(url: &str, protocol: &str) -> String {
    config_text(url, "").replace(
        "response_timeout = \"2s\"",
        &format!("response_timeout = \"2s\"\nprotocol = \"{protocol}\""),
    )
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    for protocol in ["http1", "http2"] {
        let up = Upstream::banata().await;
        let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), protocol)).await;
        for _ in 0..20 {
            let r = get(p.addr, "/v1/sandboxes").await;
            assert_eq!(r.status, 200, "{protocol}");
        }
        assert_eq!(up.mock.requests().len(), 20);
        assert_eq!(up.mock.connections(), 1, "{protocol}");
        let version = up.mock.requests()[0].version;
        let want = if protocol == "http1" {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        assert_eq!(version, want, "{protocol}");
        p.stop().await;
    }
}

/// `auto` against an upstream that offers HTTP/2: the first request negotiates it; quiet
/// traffic (one request at a time) then moves to one pooled HTTP/1.1 connection, opened in
/// the background (cheaper per request with nothing to multiplex: BENCHMARKS.md), and stays
/// there: two connections in all, however many requests.
#[tokio::test]
async fn auto_moves_quiet_traffic_to_one_pooled_http1_connection() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), "auto")).await;
    // One request at a time until one arrives over the HTTP/1.1 connection opened behind it.
    let moved = eventually(Duration::from_secs(5), || async {
        assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
        up.mock.requests().last().map(|r| r.version) == Some(http::Version::HTTP_11)
    })
    .await;
    assert!(moved, "quiet traffic never moved to HTTP/1.1");
    let sent = up.mock.requests().len();
    assert_eq!(up.mock.requests()[0].version, http::Version::HTTP_2);
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    }
    let requests = up.mock.requests();
    let tail = requests.get(sent..).unwrap_or_default();
    assert!(
        tail.iter().all(|r| r.version == http::Version::HTTP_11),
        "quiet requests left the idle HTTP/1.1 connection"
    );
    assert_eq!(up.mock.connections(), 2, "one HTTP/2 and one HTTP/1.1");
    p.stop().await;
}

/// Under concurrency `auto` multiplexes: requests that find QUIET_IN_FLIGHT (4) or more
/// exchanges in flight go over the shared HTTP/2 connection even while idle HTTP/1.1
/// connections are pooled (six here, left by six concurrent large uploads).
#[tokio::test]
async fn auto_multiplexes_a_burst_over_http2() {
    const UPLOADS: usize = 6;
    const BURST: usize = 10;
    let uploads = Arc::new(tokio::sync::Barrier::new(UPLOADS));
    let burst = Arc::new(tokio::sync::Barrier::new(BURST));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (u, b, a) = (uploads.clone(), burst.clone(), armed.clone());
    let up = Upstream::with(Arc::new(move |req| {
        let (u, b, a) = (u.clone(), b.clone(), a.clone());
        Box::pin(async move {
            // Each phase's requests wait until all of them are in flight together.
            if req.method() == http::Method::POST {
                let _ = req.into_body().collect().await;
                u.wait().await;
            } else if a.load(std::sync::atomic::Ordering::SeqCst) {
                b.wait().await;
            }
            sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}))
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), "auto")).await;
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    let spawn_all = |n: usize, big: bool| -> Vec<tokio::task::JoinHandle<http::StatusCode>> {
        (0..n)
            .map(|_| {
                let addr = p.addr;
                tokio::spawn(async move {
                    if big {
                        let req = Request::post("/v1/sandboxes")
                            .header("host", "localhost")
                            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 2 << 20])))
                            .unwrap();
                        send(addr, req).await.status
                    } else {
                        get(addr, "/v1/sandboxes").await.status
                    }
                })
            })
            .collect()
    };
    for t in spawn_all(UPLOADS, true) {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        up.mock.connections(),
        1 + UPLOADS,
        "one HTTP/2, six bulk HTTP/1.1"
    );
    let before = up.mock.requests().len();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in spawn_all(BURST, false) {
        assert_eq!(t.await.unwrap(), 200);
    }
    let requests = up.mock.requests();
    let seen = requests.get(before..).unwrap_or_default();
    assert_eq!(seen.len(), BURST);
    let h2 = seen
        .iter()
        .filter(|r| r.version == http::Version::HTTP_2)
        .count();
    // The first four are quiet and take idle HTTP/1.1 connections; the other six multiplex.
    assert_eq!(h2, BURST - 4, "the burst did not multiplex");
    assert_eq!(
        up.mock.connections(),
        1 + UPLOADS,
        "the burst opened connections"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_burst_shares_one_http2_connection() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), "http2")).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let addr = p.addr;
            tokio::spawn(async move { get(addr, "/v1/sandboxes").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.mock.requests().len(), 20);
    assert_eq!(
        up.mock.connections(),
        1,
        "a connection per request of the burst"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_long_stream_never_holds_up_the_next_request() {
    // `/v1/sandboxes/sb_1` streams until released; everything else answers at once.
    let (release_tx, release_rx) = mpsc::channel::<()>(1);
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let up = Upstream::with(Arc::new(move |req| {
        let release_rx = release_rx.clone();
        Box::pin(async move {
            if req.uri().path() != "/v1/sandboxes/sb_1" {
                return sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}));
            }
            let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
            let mut release = release_rx.lock().await.take();
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
                if let Some(r) = release.as_mut() {
                    let _ = r.recv().await;
                }
            });
            http::Response::new(body.boxed())
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), "http1")).await;
    let mut sender = connect_h1(p.addr).await;
    let req = Request::get("/v1/sandboxes/sb_1")
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut stream = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.frame()).await;
    assert!(first.is_ok(), "the stream did not start");
    // While the stream is open, another request gets its own connection and completes.
    let r = tokio::time::timeout(Duration::from_secs(5), get(p.addr, "/v1/sandboxes"))
        .await
        .expect("held up behind the stream");
    assert_eq!(r.status, 200);
    assert_eq!(up.mock.connections(), 2);
    // The stream ends; its connection goes back to the pool and is reused.
    release_tx.send(()).await.unwrap();
    while let Some(frame) = stream.frame().await {
        frame.unwrap();
    }
    for _ in 0..5 {
        assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    }
    assert_eq!(
        up.mock.connections(),
        2,
        "an ended stream's connection was not reused"
    );
    p.stop().await;
}

/// Under `protocol = "auto"` with an upstream that speaks HTTP/2, a request whose body is
/// known to be large goes over an HTTP/1.1 connection (cheaper per byte: BENCHMARKS.md,
/// "Large bodies"), even when other requests are in flight; `protocol = "http2"` keeps
/// everything on the multiplexed connection.
#[tokio::test]
async fn auto_sends_large_uploads_over_http1() {
    const BIG: usize = 2 * 1024 * 1024;
    for protocol in ["auto", "http2"] {
        let up = Upstream::with(Arc::new(|req| {
            Box::pin(async move {
                let version = format!("{:?}", req.version());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                sidekey::mock::json(
                    http::StatusCode::OK,
                    &serde_json::json!({ "version": version, "bytes": body.len() }),
                )
            })
        }))
        .await;
        let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), protocol)).await;
        let version = |r: &Reply| r.json()["version"].as_str().unwrap_or_default().to_owned();
        let small = get(p.addr, "/v1/sandboxes").await;
        assert_eq!(version(&small), "HTTP/2.0", "{protocol}");
        let upload = |len: usize| {
            Request::post("/v1/sandboxes")
                .header("host", "localhost")
                .body(http_body_util::Full::new(Bytes::from(vec![b'x'; len])))
                .unwrap()
        };
        let big = send(p.addr, upload(BIG)).await;
        assert_eq!(big.status, 200, "{protocol}");
        assert_eq!(big.json()["bytes"], BIG, "{protocol}");
        let want = if protocol == "auto" {
            "HTTP/1.1"
        } else {
            "HTTP/2.0"
        };
        assert_eq!(version(&big), want, "{protocol}");
        // Below the threshold: `http2` multiplexes it; quiet `auto` takes the idle bulk
        // connection (see `auto_moves_quiet_traffic_to_one_pooled_http1_connection`).
        let medium = send(p.addr, upload(64 * 1024)).await;
        assert_eq!(version(&medium), want, "{protocol}");
        assert_eq!(version(&get(p.addr, "/v1/sandboxes").await), want);
        // The bulk connection is pooled for the next large body.
        assert_eq!(
            version(&send(p.addr, upload(BIG)).await),
            want,
            "{protocol}"
        );
        let expected = if protocol == "auto" { 2 } else { 1 };
        assert_eq!(up.mock.connections(), expected, "{protocol}");
        p.stop().await;
    }
}
