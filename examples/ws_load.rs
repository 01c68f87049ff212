//! WebSocket load for `benches/websocket.sh`: a TLS echo upstream, and a client that pushes
//! binary messages through a URL (via sidekey, or straight to the upstream) while reading
//! the echoes, and prints the throughput. Not part of the product.
//!
//!   ws_load upstream DIR              # mints a CA + leaf into DIR, serves wss, prints the port
//!   ws_load client URL MIB MSG_KIB [CA_PEM]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::pem::PemObject as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream(&args[2]).await,
        Some("client") => {
            let mib: usize = args[3].parse().unwrap();
            let kib: usize = args[4].parse().unwrap();
            client(&args[2], mib, kib, args.get(5).map(String::as_str)).await;
        }
        _ => eprintln!("usage: ws_load upstream DIR | client URL MIB MSG_KIB [CA_PEM]"),
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

async fn upstream(dir: &str) {
    let ca = sidekey::pki::Ca::new("ws bench CA").unwrap();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(format!("{dir}/ca.pem"), ca.cert_pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    loop {
        // An accept error must not end the loop (the soak runs this for half an hour).
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tls, Some(config())).await
            else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_binary() && tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn client(url: &str, mib: usize, kib: usize, ca: Option<&str>) {
    let total = mib << 20;
    let msg = kib << 10;
    let count = total / msg;
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_owned();
    let port = uri.port_u16().unwrap();
    let tcp = TcpStream::connect((host.as_str(), port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let payload = bytes::Bytes::from(vec![0x5a; msg]);
    let start = Instant::now();
    let received = match ca {
        None => {
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config()))
                .await
                .unwrap();
            pump(ws, payload, count).await
        }
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host).unwrap();
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
                .unwrap();
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
                .await
                .unwrap();
            pump(ws, payload, count).await
        }
    };
    let secs = start.elapsed().as_secs_f64();
    // Each byte crosses the tunnel twice (there and back).
    let mb = (2 * received) as f64 / 1e6;
    println!("{mb:.1} {secs:.3} {:.1}", mb / secs);
}

/// Sends `count` messages while reading the echoes; returns the bytes echoed back.
async fn pump<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    payload: bytes::Bytes,
    count: usize,
) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let send = async {
        for _ in 0..count {
            tx.send(Message::Binary(payload.clone())).await.unwrap();
        }
        tx
    };
    let recv = async {
        let mut got = 0;
        let mut n = 0;
        while n < count {
            match rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    got += b.len();
                    n += 1;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        got
    };
    let (mut tx, got) = tokio::join!(send, recv);
    let _ = tx.close().await;
    got
}
