//! WebSocket through the reverse listener: a real TLS WebSocket upstream (tokio-tungstenite
//! over tokio-rustls, a certificate from a CA minted here) and a real WebSocket client.
//! What the upstream saw of each handshake is recorded, so a test can assert the key was
//! there, the caller's credentials were not, and that a refused handshake sent nothing.

// tungstenite's handshake callback returns its (large) error response by value.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderMap;
use sidekey::pki::Ca;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Message, handshake::server};

use crate::support::*;

const KEY: &str = "sk_ws_0001";
const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Mode {
    /// Echo every message; pick `chat` when it is offered.
    Echo,
    /// Answer the handshake 403.
    Refuse,
    /// Answer 101 with a wrong `Sec-WebSocket-Accept`.
    BadAccept,
    /// Echo a few messages, then drop the TCP connection without a close frame.
    DropAfterOne,
}

/// A TLS WebSocket upstream that offers ALPN h2 and http/1.1 and records what it saw.
struct WsUpstream {
    addr: SocketAddr,
    ca: Ca,
    /// Handshake heads, in arrival order.
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// ALPN protocol each TLS connection negotiated.
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    accepted: Arc<AtomicUsize>,
    /// Upstream sessions still open.
    open: Arc<AtomicUsize>,
}

impl WsUpstream {
    async fn start(mode: Mode) -> Self {
        let ca = Ca::new("ws test CA").unwrap();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self {
            addr: listener.local_addr().unwrap(),
            ca,
            seen: Arc::default(),
            alpn: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let (seen, alpn, accepted, open) = (
            up.seen.clone(),
            up.alpn.clone(),
            up.accepted.clone(),
            up.open.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen, alpn, open) =
                    (acceptor.clone(), seen.clone(), alpn.clone(), open.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    alpn.lock()
                        .unwrap()
                        .push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                    if let Mode::BadAccept = mode {
                        let mut head = vec![0u8; 4096];
                        let _ = tls.read(&mut head).await;
                        let _ = tls.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\nhello").await;
                        let _ = tls.flush().await;
                        tokio::time::sleep(WAIT).await;
                        return;
                    }
                    let record = |req: &server::Request, mut resp: server::Response| {
                        seen.lock().unwrap().push(req.headers().clone());
                        if let Mode::Refuse = mode {
                            let mut no = server::ErrorResponse::new(Some("no sockets here".into()));
                            *no.status_mut() = http::StatusCode::FORBIDDEN;
                            return Err(no);
                        }
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if offered.split(',').any(|p| p.trim() == "chat") {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", "chat".parse().unwrap());
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, record).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                        if let Mode::DropAfterOne = mode {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

/// A service whose catalogue opts one route in to WebSocket; `extra` goes under `[limits]`.
fn ws_config(url: &str, service: &str, limits: &str) -> String {
    format!(
        r#"
[listener]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{url}"
ca_file = "ca.pem"
connect_timeout = "1s"
response_timeout = "2s"

[credential]
file = "secret/api-key"

[service]
name = "{service}"
allow = ["sandbox_sessions:read", "sandbox_sessions:exec"]

[runtime]
shutdown_idle = "10ms"
shutdown_grace = "1500ms"

[limits]
{limits}

[permissions]
"sandbox_sessions:read" = ["GET /v1/sandboxes/{{id}}", "GET /v1/sandboxes/{{id}}/{{*rest}}"]
"sandbox_sessions:exec" = [
  "POST /v1/sandboxes/{{id}}/exec",
  {{ route = "GET /v1/sandboxes/{{id}}/terminal", websocket = true }},
]
"#
    )
}

async fn start(up: &WsUpstream, service: &str, limits: &str) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    TestProxy::start_in(dir, &ws_config(&up.url(), service, limits)).await
}

type Client = WebSocketStream<TcpStream>;

/// Opens a WebSocket through the proxy, with `headers` added to the handshake.
async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await
}

async fn open(addr: SocketAddr) -> Client {
    connect(addr, "/v1/sandboxes/sb_1/terminal", &[])
        .await
        .expect("handshake through sidekey")
        .0
}

/// The `sidekey_websockets_open` value for `caller` (0 when absent).
async fn open_gauge(p: &TestProxy, caller: &str) -> f64 {
    let text = metrics(p).await;
    text.lines()
        .filter(|l| {
            l.starts_with("sidekey_websockets_open{") && l.contains(&format!("caller=\"{caller}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a raw handshake and returns the head of what came back.
async fn raw_handshake(addr: SocketAddr, path: &str, extra: &str) -> String {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    raw(addr, req.as_bytes(), Duration::from_millis(500)).await
}

#[tokio::test]
async fn echoes_text_and_binary_with_the_key_on_the_handshake_only() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-echo", "").await;
    let (mut ws, resp) = connect(
        p.addr,
        "/v1/sandboxes/sb_1/terminal",
        &[
            ("authorization", "Bearer caller-token"),
            // A loopback page's origin (a foreign one is refused: see browser tests).
            ("origin", "http://localhost:3000"),
            (
                "sec-websocket-protocol",
                "chat, openai-insecure-api-key.sk-caller, base64url.bearer.authorization.k8s.io.dG9r",
            ),
        ],
    )
    .await
    .expect("handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    let bin: Vec<u8> = (0..=255).collect();
    ws.send(Message::Binary(bin.clone().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(bin.into())
    );
    ws.close(None).await.unwrap();

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0];
    assert_eq!(h["authorization"], format!("Bearer {KEY}"));
    assert_eq!(h.get_all("authorization").iter().count(), 1);
    assert_eq!(h["origin"], "http://localhost:3000");
    assert_eq!(h["sec-websocket-protocol"], "chat");
    assert_eq!(h["sec-websocket-version"], "13");
    assert!(h.contains_key("sec-websocket-key"));
    assert_eq!(h["upgrade"], "websocket");
    // A connection of its own, HTTP/1.1: h2 is not offered (the upstream would take it).
    assert_eq!(up.alpn.lock().unwrap().as_slice(), [None]);
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-echo").await == 0.0 }).await);
    let text = metrics(&p).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("sidekey_websocket_sessions_total{")
                && l.contains("caller=\"ws-echo\"")
                && l.contains("permission=\"sandbox_sessions:exec\"")
                && l.contains("result=\"upgraded\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(!text.contains(KEY));
    p.stop().await;
}

#[tokio::test]
async fn a_one_mib_message_and_a_hundred_tunnels() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-many", "").await;
    let mut ws = open(p.addr).await;
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(big.into())
    );
    ws.close(None).await.unwrap();

    let mut all = Vec::new();
    for _ in 0..100 {
        all.push(open(p.addr).await);
    }
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-many").await == 100.0 }).await);
    let echoes = all.iter_mut().enumerate().map(|(i, ws)| async move {
        ws.send(Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::Text(format!("m{i}").into()));
        ws.close(None).await.unwrap();
    });
    futures_util::future::join_all(echoes).await;
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-many").await == 0.0 }).await);
    assert!(eventually(WAIT, || async { up.open.load(Ordering::SeqCst) == 0 }).await);
    p.stop().await;
}

#[tokio::test]
async fn routes_without_websocket_refuse_and_send_nothing() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-refuse", "").await;
    // Granted (sandbox_sessions:read) but not opted in.
    let out = raw_handshake(p.addr, "/v1/sandboxes/sb_1/logs", "").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("\"upgrade_not_allowed\""), "{out}");
    // Outside the allow-list: the usual refusal.
    let out = raw_handshake(p.addr, "/v1/other", "").await;
    assert!(out.contains("\"route_not_allowed\""), "{out}");
    // A broken handshake: 400.
    let out = raw(p.addr, b"GET /v1/sandboxes/sb_1/terminal HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", Duration::from_millis(500)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("invalid_websocket_key"), "{out}");
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let text = metrics(&p).await;
    assert!(
        text.lines()
            .any(|l| l.contains("sidekey_websocket_sessions_total{")
                && l.contains("caller=\"ws-refuse\"")
                && l.contains("result=\"refused\""))
    );
    p.stop().await;
}

#[tokio::test]
async fn upstream_refusal_is_passed_back_and_a_bad_accept_is_502() {
    let up = WsUpstream::start(Mode::Refuse).await;
    let p = start(&up, "ws-upref", "").await;
    let out = raw_handshake(p.addr, "/v1/sandboxes/sb_1/terminal", "").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("no sockets here"), "{out}");
    assert!(
        !out.contains("x-sidekey-error"),
        "the upstream's answer, not ours: {out}"
    );
    p.stop().await;

    let up = WsUpstream::start(Mode::BadAccept).await;
    let p = start(&up, "ws-badaccept", "").await;
    let out = raw_handshake(p.addr, "/v1/sandboxes/sb_1/terminal", "").await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(!out.contains("hello"), "no upstream byte is spliced: {out}");
    p.stop().await;
}

#[tokio::test]
async fn idle_timeout_and_max_duration_close_the_tunnel() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-idle", "websocket_idle_timeout = \"300ms\"").await;
    let mut ws = open(p.addr).await;
    let t = Instant::now();
    // Traffic keeps it open past the idle limit.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::Text("x".into())).await.unwrap();
        assert!(ws.next().await.unwrap().is_ok());
    }
    assert!(t.elapsed() > Duration::from_millis(500));
    // Then silence: closed.
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(end.is_ok(), "closed after the idle timeout");
    p.stop().await;

    let p = start(&up, "ws-max", "websocket_max_duration = \"400ms\"").await;
    let mut ws = open(p.addr).await;
    let t = Instant::now();
    let busy = async {
        loop {
            if ws.send(Message::Text("x".into())).await.is_err() {
                return;
            }
            match ws.next().await {
                Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => return,
            }
        }
    };
    tokio::time::timeout(WAIT, busy)
        .await
        .expect("closed at max duration");
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-max").await == 0.0 }).await);
    p.stop().await;
}

#[tokio::test]
async fn the_tunnel_cap_answers_503() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-cap", "max_websockets = 2").await;
    let a = open(p.addr).await;
    let _b = open(p.addr).await;
    let out = raw_handshake(p.addr, "/v1/sandboxes/sb_1/terminal", "").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("\"overloaded\""), "{out}");
    assert_eq!(up.seen().len(), 2);
    // A place frees up when a tunnel closes.
    drop(a);
    assert!(
        eventually(WAIT, || async {
            connect(p.addr, "/v1/sandboxes/sb_1/terminal", &[])
                .await
                .is_ok()
        })
        .await
    );
    p.stop().await;
}

/// Once the gauge shows a free place, a handshake gets it: the tunnel releases its
/// `max_websockets` slot before it lowers `sidekey_websockets_open`. Under CPU load, on a
/// multi-threaded runtime (where a scrape can run between the two steps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_right_after_the_gauge_drops_gets_the_place() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-reopen", "max_websockets = 1").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    for round in 0..8 {
        let ws = open(p.addr).await;
        assert!(eventually(WAIT, || async { open_gauge(&p, "ws-reopen").await == 1.0 }).await);
        drop(ws);
        assert!(eventually(WAIT, || async { open_gauge(&p, "ws-reopen").await == 0.0 }).await);
        let out = raw_handshake(p.addr, "/v1/sandboxes/sb_1/terminal", "").await;
        assert!(out.starts_with("HTTP/1.1 101"), "round {round}: {out}");
        // Let that tunnel close before the next round.
        assert!(eventually(WAIT, || async { open_gauge(&p, "ws-reopen").await == 0.0 }).await);
    }
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    p.stop().await;
}

#[tokio::test]
async fn abrupt_closes_close_the_other_side() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-abrupt", "").await;
    // The client vanishes without a close frame: the upstream session ends.
    let ws = open(p.addr).await;
    assert!(eventually(WAIT, || async { up.open.load(Ordering::SeqCst) == 1 }).await);
    drop(ws);
    assert!(eventually(WAIT, || async { up.open.load(Ordering::SeqCst) == 0 }).await);
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-abrupt").await == 0.0 }).await);
    p.stop().await;

    // The upstream drops the connection: the client sees the end.
    let up = WsUpstream::start(Mode::DropAfterOne).await;
    let p = start(&up, "ws-abrupt-up", "").await;
    let mut ws = open(p.addr).await;
    ws.send(Message::Text("one".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("one".into())
    );
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(end.is_ok());
    assert!(
        eventually(WAIT, || async {
            open_gauge(&p, "ws-abrupt-up").await == 0.0
        })
        .await
    );
    p.stop().await;
}

#[tokio::test]
async fn tunnels_outlive_the_drain_start_and_close_at_the_grace() {
    let up = WsUpstream::start(Mode::Echo).await;
    let p = start(&up, "ws-drain", "").await;
    let mut ws = open(p.addr).await;
    let t = Instant::now();
    let stopping = tokio::spawn(p.stop());
    // Draining: the open tunnel still carries traffic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("still here".into())
    );
    // At the grace (1.5 s), it is closed and the proxy stops.
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(end.is_ok());
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_gateway_callers_max_concurrent_counts_its_tunnels() {
    let up = WsUpstream::start(Mode::Echo).await;
    let token = "skc_ws-gateway-token-for-tests-01";
    let text = ws_config(&up.url(), "unused", "").replace(
        "[service]\nname = \"unused\"\nallow = [\"sandbox_sessions:read\", \"sandbox_sessions:exec\"]\n",
        &format!(
            "[[caller]]\nname = \"ws-gw\"\ntoken_sha256 = \"{}\"\nallow = [\"sandbox_sessions:exec\"]\nmax_concurrent = 1\n",
            sidekey::proxy::caller::token_sha256(token)
        ),
    );
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    let p = TestProxy::start_in(dir, &text).await;
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let path = "/v1/sandboxes/sb_1/terminal";
    let (mut first, _) = connect(p.addr, path, &auth).await.expect("first tunnel");
    // The open tunnel holds the caller's only place.
    let out = raw_handshake(p.addr, path, &format!("Authorization: {bearer}\r\n")).await;
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.seen()[0]["authorization"], format!("Bearer {KEY}"));
    first.send(Message::Text("hi".into())).await.unwrap();
    assert!(first.next().await.unwrap().is_ok());
    first.close(None).await.unwrap();
    drop(first);
    assert!(
        eventually(WAIT, || async {
            connect(p.addr, path, &auth).await.is_ok()
        })
        .await
    );
    assert!(eventually(WAIT, || async { open_gauge(&p, "ws-gw").await == 0.0 }).await);
    p.stop().await;
}
