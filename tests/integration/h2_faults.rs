//! HTTP/2 upstream faults: a stream the upstream refused (REFUSED_STREAM) or never processed
//! (GOAWAY below its id) is provably unprocessed, so a bodiless request is retried once on a
//! fresh stream; a request whose body was already streamed is never replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use sidekey::pki::Ca;

use crate::support::*;

/// What the raw h2 upstream does with the n-th stream it sees (0-based).
#[derive(Clone, Copy)]
enum Fault {
    /// RST_STREAM(REFUSED_STREAM) on the first stream, 200 afterwards.
    RefuseFirst,
    /// GOAWAY(last_stream_id = 0, NO_ERROR) on the first connection's first stream (written
    /// as raw frames: the `h2` server always names the streams it accepted), 200 afterwards.
    GoawayFirst,
}

/// A TLS h2-only upstream built on the `h2` crate, so the test controls the frames.
struct H2Upstream {
    ca: Ca,
    url: String,
    streams: Arc<AtomicUsize>,
}

async fn h2_upstream(fault: Fault) -> H2Upstream {
    let (ca, url, listener, acceptor) = h2_tls_listener("h2 test CA").await;
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            connections += 1;
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            let raw_goaway = matches!(fault, Fault::GoawayFirst) && connections == 1;
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if raw_goaway {
                    goaway_on_first_stream(tls, &seen).await;
                    return;
                }
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let _ = req;
                    match (fault, n) {
                        (Fault::RefuseFirst, 0) => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        _ => {
                            let resp = Response::builder().status(200).body(()).unwrap();
                            if let Ok(mut body) = respond.send_response(resp, false) {
                                let _ = body.send_data(Bytes::from_static(b"{}"), true);
                            }
                        }
                    }
                }
                // Drive the connection until the peer leaves (flushes GOAWAY).
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
            });
        }
    });
    H2Upstream { ca, url, streams }
}

/// Speaks just enough HTTP/2 to refuse the first stream with GOAWAY(0, NO_ERROR).
async fn goaway_on_first_stream<S>(mut io: S, seen: &AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if !h2_raw_start(&mut io).await {
        return;
    }
    while let Some((head, _)) = h2_raw_frame(&mut io).await {
        // HEADERS: the request. GOAWAY, last_stream_id 0, NO_ERROR.
        if head[3] == 1 {
            seen.fetch_add(1, Ordering::SeqCst);
            let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let _ = io.write_all(&goaway).await;
            let _ = io.flush().await;
        }
    }
}

async fn proxy_for(up: &H2Upstream) -> TestProxy {
    h2_proxy(&up.ca, &up.url, "http2").await
}

/// A bodiless GET meets `fault` on its first stream and succeeds on the replay.
async fn get_is_replayed_once_after(fault: Fault) {
    let up = h2_upstream(fault).await;
    let p = proxy_for(&up).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(up.streams.load(Ordering::SeqCst), 2);
    p.stop().await;
}

#[tokio::test]
async fn refused_stream_get_is_retried_once() {
    get_is_replayed_once_after(Fault::RefuseFirst).await;
}

#[tokio::test]
async fn goaway_before_processing_get_is_retried_once() {
    get_is_replayed_once_after(Fault::GoawayFirst).await;
}

#[tokio::test]
async fn refused_stream_with_a_streamed_body_is_not_replayed() {
    let up = h2_upstream(Fault::RefuseFirst).await;
    let p = proxy_for(&up).await;
    let req = Request::post("/v1/sandboxes")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"image\":\"x\"}")))
        .unwrap();
    let r = send(p.addr, req).await;
    assert_eq!(
        r.status.as_u16(),
        502,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(up.streams.load(Ordering::SeqCst), 1);
    p.stop().await;
}
