//! A raw HTTP/2-only upstream (its ALPN offers `h2` alone), recording what sidekey sends:
//! - HPACK on the shared connection: a value that is new on every request (the minted
//!   `x-request-id`) must not enter the encoder's dynamic table. Indexed, each id evicted the
//!   entries that do repeat, so every request re-sent and re-inserted them and walked the
//!   chain of earlier ids (3-5% of sidekey's CPU at saturation in the profile).
//! - `protocol = "auto"` against it: the HTTP/1.1 connection opened for quiet traffic is
//!   refused once, and then never tried again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use sidekey::pki::Ca;

use crate::support::*;

/// What the raw upstream saw: each HEADERS block, and how many TCP connections it accepted.
struct Recording {
    ca: Ca,
    url: String,
    blocks: Arc<Mutex<Vec<Vec<u8>>>>,
    accepted: Arc<AtomicUsize>,
}

/// A raw TLS h2 upstream: records each HEADERS block it receives and answers `:status 200`.
async fn recording_upstream() -> Recording {
    let (ca, url, listener, acceptor) = h2_tls_listener("hpack test CA").await;
    let blocks = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = blocks.clone();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                if let Ok(mut io) = acceptor.accept(tcp).await {
                    if !h2_raw_start(&mut io).await {
                        return;
                    }
                    while let Some((head, payload)) = h2_raw_frame(&mut io).await {
                        if head[3] != 1 {
                            continue;
                        }
                        let flags = head[4];
                        assert_eq!(flags & 0x2c, 0x04, "one unpadded block, no priority");
                        seen.lock().unwrap().push(payload);
                        // HEADERS, END_STREAM | END_HEADERS, `:status 200` (static 8).
                        let mut resp = vec![0, 0, 1, 1, 5];
                        resp.extend_from_slice(&head[5..9]);
                        resp.push(0x88);
                        let _ = io.write_all(&resp).await;
                        let _ = io.flush().await;
                    }
                }
            });
        }
    });
    Recording {
        ca,
        url,
        blocks,
        accepted,
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1) at `b[*at]`.
fn integer(b: &[u8], at: &mut usize, n: u32) -> usize {
    let mask = (1usize << n) - 1;
    let mut v = usize::from(b[*at]) & mask;
    *at += 1;
    if v == mask {
        let mut shift = 0;
        loop {
            let c = b[*at];
            *at += 1;
            v += usize::from(c & 0x7f) << shift;
            shift += 7;
            if c & 0x80 == 0 {
                break;
            }
        }
    }
    v
}

/// The representations of one header block (RFC 7541 6): "indexed", "incremental" (a literal
/// added to the dynamic table), "without", "never" or "size".
fn representations(b: &[u8]) -> Vec<&'static str> {
    let mut at = 0;
    let mut out = Vec::new();
    let skip_string = |at: &mut usize| {
        let len = integer(b, at, 7);
        *at += len;
    };
    while at < b.len() {
        let first = b[at];
        let (kind, prefix) = match first {
            f if f & 0x80 != 0 => ("indexed", 7),
            f if f & 0xc0 == 0x40 => ("incremental", 6),
            f if f & 0xe0 == 0x20 => ("size", 5),
            f if f & 0xf0 == 0x10 => ("never", 4),
            _ => ("without", 4),
        };
        let index = integer(b, &mut at, prefix);
        if kind != "indexed" && kind != "size" {
            if index == 0 {
                skip_string(&mut at);
            }
            skip_string(&mut at);
        }
        out.push(kind);
    }
    out
}

#[tokio::test]
async fn a_per_request_id_never_enters_the_hpack_table() {
    let up = recording_upstream().await;
    let p = h2_proxy(&up.ca, &up.url, "http2").await;
    for _ in 0..4 {
        let r = get(p.addr, "/v1/sandboxes").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let blocks = up.blocks.lock().unwrap().clone();
    assert_eq!(blocks.len(), 4, "one HTTP/2 connection, four streams");
    let first = representations(&blocks[0]);
    assert!(first.contains(&"incremental"), "{first:?}");
    // Two never-indexed fields per request: the injected key and the request id.
    assert_eq!(
        first.iter().filter(|k| **k == "never").count(),
        2,
        "{first:?}"
    );
    for block in &blocks[1..] {
        let kinds = representations(block);
        assert!(
            !kinds.contains(&"incremental"),
            "a later request added to the table: {kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "never").count(),
            2,
            "{kinds:?}"
        );
    }
    p.stop().await;
}

/// `auto`, an upstream that speaks only HTTP/2: the background HTTP/1.1 open for quiet traffic
/// fails its TLS handshake (no common ALPN protocol) once; every request still succeeds over
/// HTTP/2, and no quiet request tries HTTP/1.1 again (two connections in all, however many
/// requests follow).
#[tokio::test]
async fn auto_stops_trying_http1_once_the_upstream_refuses_it() {
    let up = recording_upstream().await;
    let p = h2_proxy(&up.ca, &up.url, "auto").await;
    for i in 0..3 {
        let r = get(p.addr, "/v1/sandboxes").await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let tried = eventually(Duration::from_secs(5), || async {
        up.accepted.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(
        tried,
        "no HTTP/1.1 attempt: {}",
        up.accepted.load(Ordering::SeqCst)
    );
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    }
    assert_eq!(
        up.blocks.lock().unwrap().len(),
        23,
        "every request over HTTP/2"
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "HTTP/1.1 tried again after the upstream refused it"
    );
    p.stop().await;
}
