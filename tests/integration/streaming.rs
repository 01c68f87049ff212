//! Bodies stream both ways: an SSE event reaches the client while the upstream still holds
//! the stream open, and an upload reaches the upstream while the client is still sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use tokio::sync::{Mutex, mpsc};

use crate::support::*;

#[tokio::test]
async fn sse_events_arrive_before_the_stream_ends() {
    // The upstream sends one event, then waits for the test to release the second.
    let (release_tx, release_rx) = mpsc::channel::<()>(1);
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let up = Upstream::with(Arc::new(move |_req| {
        let release_rx = release_rx.clone();
        Box::pin(async move {
            let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
            let mut release = release_rx.lock().await.take();
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
                if let Some(r) = release.as_mut() {
                    let _ = r.recv().await;
                }
                let _ = tx.send_data(Bytes::from_static(b"data: two\n\n")).await;
            });
            let body = body.boxed();
            let mut resp = http::Response::new(body);
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let mut sender = connect_h1(p.addr).await;
    let req = Request::get("/v1/sandboxes/sb_1/events")
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event not streamed")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"data: one\n\n")
    );
    release_tx.send(()).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        second.into_data().unwrap(),
        Bytes::from_static(b"data: two\n\n")
    );
    p.stop().await;
}

#[tokio::test]
async fn uploads_stream_to_the_upstream() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 32;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let up = Upstream::with(Arc::new(move |req| {
        let seen = seen.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    seen.fetch_add(d.len(), Ordering::SeqCst);
                }
            }
            sidekey::mock::json(
                http::StatusCode::CREATED,
                &serde_json::json!({"bytes": seen.load(Ordering::SeqCst)}),
            )
        })
    }))
    .await;
    let p = TestProxy::start(&up, Some(KEY), &config_text(&up.mock.url(), "")).await;
    let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(1);
    let mut sender = connect_h1(p.addr).await;
    let req = Request::post("/v1/sandboxes")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    // Send the first chunk and hold the rest back: it must reach the upstream on its own.
    tx.send_data(Bytes::from(vec![b'a'; CHUNK])).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            received.load(Ordering::SeqCst) >= CHUNK
        })
        .await,
        "the first chunk did not reach the upstream before the upload ended: the body is buffered"
    );
    for _ in 1..CHUNKS {
        tx.send_data(Bytes::from(vec![b'a'; CHUNK])).await.unwrap();
    }
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(received.load(Ordering::SeqCst), CHUNK * CHUNKS);
    p.stop().await;
}
