//! Upstream for `benches/large-bodies.sh`: a TLS server (HTTP/1.1 and HTTP/2 by ALPN) that
//! reads every request body to the end before it answers with the byte count, and streams a
//! download of any size from one shared 64 KiB chunk. The same upstream serves every proxy
//! in the comparison. Not part of the product.
//!
//!   bulk_load upstream DIR    # writes DIR/ca.pem, prints the port
//!
//! `POST /...` answers `{"bytes":N}` once the whole body is read;
//! `GET /v1/sandboxes/blob/N` answers N bytes (`?json`: JSON text, `application/json`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;

const CHUNK: usize = 64 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some("upstream") = args.get(1).map(String::as_str) else {
        eprintln!("see the file's header for usage");
        return;
    };
    let ca = sidekey::pki::Ca::new("bulk bench CA").unwrap();
    std::fs::write(format!("{}/ca.pem", args[2]), ca.cert_pem()).unwrap();
    let plain = Bytes::from(vec![b'x'; CHUNK]);
    // A JSON listing's text, repeated to fill the chunk (what a scanned body looks like).
    let item = r#"{"id":"sb_01HZX3K9","status":"running","created_at":"2026-12-07T10:00:00Z","labels":{"team":"payments","env":"prod"},"usage":{"cpu_ms":123456,"mem_mb":512}},"#;
    let text: Vec<u8> = item.bytes().cycle().take(CHUNK).collect();
    let json_chunk = Bytes::from(text);
    let handler: sidekey::mock::Handler = Arc::new(move |req| {
        let json = req.uri().query().is_some_and(|q| q.contains("json"));
        let chunk = if json {
            json_chunk.clone()
        } else {
            plain.clone()
        };
        Box::pin(async move {
            if req.method() == Method::POST {
                let mut body = req.into_body();
                let mut n = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        n += data.len() as u64;
                    }
                }
                return sidekey::mock::json(StatusCode::OK, &serde_json::json!({ "bytes": n }));
            }
            let size: u64 = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunks = futures_util::stream::unfold(size, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(CHUNK as u64);
                    let data = chunk.slice(..take as usize);
                    Some((Ok::<_, std::io::Error>(Frame::data(data)), left - take))
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-length", size)
                .header(
                    "content-type",
                    if json {
                        "application/json"
                    } else {
                        "application/octet-stream"
                    },
                )
                .body(StreamBody::new(chunks).boxed())
                .unwrap()
        })
    });
    let mock = sidekey::mock::MockUpstream::start(&ca, handler)
        .await
        .unwrap()
        .without_recording();
    println!("{}", mock.addr().port());
    std::future::pending::<()>().await;
}
