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
    for protocol in ["http1", "http2", "auto"] {
        let up = Upstream::banata().await;
        let p = TestProxy::start(&up, Some(KEY), &with_protocol(&up.mock.url(), protocol)).await;
        for _ in 0..20 {
            let r = get(p.addr, "/v1/sandboxes").await;
            assert_eq!(r.status, 200, "{protocol}");
        }
        assert_eq!(up.mock.requests().len(), 20);
        assert_eq!(up.mock.connections(), 1, "{protocol}");
        // HTTP/2 only when asked for or negotiated.
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
        .header("host", "x")
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
/// known to be large goes over an HTTP/1.1 connection of its own (cheaper per byte:
/// BENCHMARKS.md, "Large bodies"); small requests stay on the multiplexed connection, and
/// `protocol = "http2"` keeps everything there.
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
                .header("host", "app.local")
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
        // Below the threshold, and after the bulk connection exists: still multiplexed.
        let medium = send(p.addr, upload(64 * 1024)).await;
        assert_eq!(version(&medium), "HTTP/2.0", "{protocol}");
        assert_eq!(version(&get(p.addr, "/v1/sandboxes").await), "HTTP/2.0");
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
