//! Load for `benches/forward.sh`: a TLS mock upstream for one host name, and a client that
//! keeps N keep-alive connections busy for a while, either through sidekey's forward proxy
//! (CONNECT, TLS to sidekey's leaf, HTTP/1.1 inside), through its reverse listener (plain
//! HTTP), or straight to the upstream over TLS (the baseline), and prints the requests per
//! second. Not part of the product.
//!
//!   forward_load upstream DIR HOST
//!   forward_load direct UPSTREAM_ADDR HOST PATH CA_PEM CONNS SECS
//!   forward_load forward PROXY HOST PATH CA_PEM CONNS SECS
//!   forward_load reverse ADDR PATH CONNS SECS
//!   forward_load forward-new PROXY HOST PATH CA_PEM CONNS SECS [resume]
//!   forward_load reverse-new ADDR PATH CONNS SECS
//!
//! The `-new` modes open a new connection (or tunnel: CONNECT, a full TLS handshake unless
//! `resume` lets the client resume its last session) for every request and close it after
//! the answer: new connections per second, by CONNS workers in a closed loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tokio::task::LocalSet::new().run_until(run()).await;
}

async fn run() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("upstream") => upstream(&a[2], &a[3]).await,
        Some("forward") => {
            let tls = Arc::new(tls(&a[5]));
            let (conns, secs) = (a[6].parse().unwrap(), a[7].parse().unwrap());
            let (proxy, host, path) = (a[2].clone(), a[3].clone(), a[4].clone());
            load(conns, secs, move || {
                let (proxy, host, path, tls) =
                    (proxy.clone(), host.clone(), path.clone(), tls.clone());
                async move { forward(&proxy, &host, &path, tls).await }
            })
            .await;
        }
        Some("direct") => {
            let tls = Arc::new(tls(&a[5]));
            let (conns, secs) = (a[6].parse().unwrap(), a[7].parse().unwrap());
            let (addr, host, path) = (a[2].clone(), a[3].clone(), a[4].clone());
            load(conns, secs, move || {
                let (addr, host, path, tls) =
                    (addr.clone(), host.clone(), path.clone(), tls.clone());
                async move {
                    let tcp = TcpStream::connect(&addr).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    over_tls(tcp, &host, &path, tls).await
                }
            })
            .await;
        }
        Some("reverse") => {
            let (conns, secs) = (a[4].parse().unwrap(), a[5].parse().unwrap());
            let (addr, path) = (a[2].clone(), a[3].clone());
            load(conns, secs, move || {
                let (addr, path) = (addr.clone(), path.clone());
                async move { reverse(&addr, &path).await }
            })
            .await;
        }
        Some("forward-new") => {
            let mut cfg = tls(&a[5]);
            if a.get(8).map(String::as_str) != Some("resume") {
                cfg.resumption = rustls::client::Resumption::disabled();
            }
            let tls = Arc::new(cfg);
            let (conns, secs) = (a[6].parse().unwrap(), a[7].parse().unwrap());
            let (proxy, host, path) = (a[2].clone(), a[3].clone(), a[4].clone());
            churn(conns, secs, move || {
                let (proxy, host, path, tls) =
                    (proxy.clone(), host.clone(), path.clone(), tls.clone());
                async move { forward(&proxy, &host, &path, tls).await }
            })
            .await;
        }
        Some("reverse-new") => {
            let (conns, secs) = (a[4].parse().unwrap(), a[5].parse().unwrap());
            let (addr, path) = (a[2].clone(), a[3].clone());
            churn(conns, secs, move || {
                let (addr, path) = (addr.clone(), path.clone());
                async move { reverse(&addr, &path).await }
            })
            .await;
        }
        _ => eprintln!("see the file's header for usage"),
    }
}

async fn upstream(dir: &str, host: &str) {
    let ca = sidekey::pki::Ca::new("forward bench CA").unwrap();
    std::fs::write(format!("{dir}/upstream-ca.pem"), ca.cert_pem()).unwrap();
    let leaf = ca.leaf(&[host]).unwrap();
    let handler: sidekey::mock::Handler = Arc::new(|_req| {
        Box::pin(async {
            sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({"ok": true}))
        })
    });
    let mock =
        sidekey::mock::MockUpstream::start_with_leaf(ca.cert_pem().to_owned(), leaf, handler)
            .await
            .unwrap()
            .without_recording();
    println!("{}", mock.addr().port());
    std::future::pending::<()>().await;
}

fn tls(ca: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Runs `conns` connections for `secs` seconds; prints `requests rps`.
async fn load<F, Fut>(conns: usize, secs: u64, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (Sender, Request<Empty<Bytes>>)> + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (mut tx, template) = open().await;
        let done = done.clone();
        workers.push(tokio::task::spawn_local(async move {
            while Instant::now() < end {
                let mut req = Request::new(Empty::new());
                *req.uri_mut() = template.uri().clone();
                *req.headers_mut() = template.headers().clone();
                let resp = tx.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for w in workers {
        w.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!("{n} {:.0}", n as f64 / start.elapsed().as_secs_f64());
}

/// `conns` workers, each opening a connection, sending one request and closing, again and
/// again for `secs` seconds; prints `connections per_second`.
async fn churn<F, Fut>(conns: usize, secs: u64, open: F)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = (Sender, Request<Empty<Bytes>>)> + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let open = std::rc::Rc::new(open);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (done, open) = (done.clone(), open.clone());
        workers.push(tokio::task::spawn_local(async move {
            while Instant::now() < end {
                let (mut tx, mut req) = open().await;
                req.headers_mut()
                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                let resp = tx.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!("{n} {:.0}", n as f64 / start.elapsed().as_secs_f64());
}

async fn forward(
    proxy: &str,
    host: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> (Sender, Request<Empty<Bytes>>) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    over_tls(tcp, host, path, tls).await
}

/// HTTP/1.1 over TLS to `host` on an open TCP stream (a CONNECT tunnel or the upstream itself).
async fn over_tls(
    tcp: TcpStream,
    host: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> (Sender, Request<Empty<Bytes>>) {
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::task::spawn_local(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    (tx, req)
}

async fn reverse(addr: &str, path: &str) -> (Sender, Request<Empty<Bytes>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::task::spawn_local(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", addr) // a loopback Host: the listener refuses others (DNS rebinding)
        .body(Empty::new())
        .unwrap();
    (tx, req)
}
