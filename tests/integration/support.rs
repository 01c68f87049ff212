//! Test support: a temp dir, the mock HTTPS upstream, a proxy started through the same
//! `App::bind` as `main`, a raw TCP client that writes exact bytes, and `eventually`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sidekey::App;
use sidekey::config::Config;
use sidekey::mock::{Handler, MockUpstream};
use sidekey::pki::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const KEY: &str = "sk_test_SECRET_0123456789abcdef";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sidekey-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA plus a mock upstream signed by it.
pub struct Upstream {
    pub ca: Ca,
    pub mock: MockUpstream,
}

impl Upstream {
    pub async fn banata() -> Self {
        let ca = Ca::new("test CA").unwrap();
        let mock = MockUpstream::start_banata(&ca).await.unwrap();
        Self { ca, mock }
    }

    pub async fn with(handler: Handler) -> Self {
        let ca = Ca::new("test CA").unwrap();
        let mock = MockUpstream::start(&ca, handler).await.unwrap();
        Self { ca, mock }
    }
}

/// The standard test config: loopback :0 listeners, inline catalogue, key in `api-key`.
pub fn config_text(upstream_url: &str, extra: &str) -> String {
    format!(
        r#"
[listener]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{upstream_url}"
ca_file = "ca.pem"
connect_timeout = "1s"
response_timeout = "2s"

[credential]
file = "secret/api-key"

[service]
name = "test-svc"
allow = ["sandbox_sessions:create", "sandbox_sessions:read"]

[runtime]
shutdown_idle = "50ms"
shutdown_grace = "5s"

[reload]
interval = "30s"
debounce = "50ms"

[permissions]
"sandbox_sessions:create" = ["POST /v1/sandboxes"]
"sandbox_sessions:read" = ["GET /v1/sandboxes", "GET /v1/sandboxes/{{id}}", "GET /v1/sandboxes/{{id}}/{{*rest}}"]
"sandbox_sessions:delete" = ["DELETE /v1/sandboxes/{{id}}"]
"sandbox_sessions:exec" = ["POST /v1/sandboxes/{{id}}/exec"]
{extra}
"#
    )
}

/// A running proxy; shut down (and awaited) on `stop`, or aborted on drop.
pub struct TestProxy {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// APIs with their own listener: name -> bound address.
    pub apis: Vec<(String, SocketAddr)>,
    /// The forward-proxy listener, when the config has one.
    pub forward: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Writes `ca.pem`, `secret/api-key` (unless `key` is None) and `sidekey.toml`, then binds.
    pub async fn start(upstream: &Upstream, key: Option<&str>, config: &str) -> Self {
        let dir = TempDir::new();
        dir.write("ca.pem", upstream.ca.cert_pem());
        std::fs::create_dir_all(dir.path().join("secret")).unwrap();
        if let Some(k) = key {
            dir.write("secret/api-key", k);
        }
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: TempDir, config: &str) -> Self {
        let path = dir.write("sidekey.toml", config);
        let config = Config::load(&path).unwrap();
        let api_names: Vec<String> = config.apis.iter().map(|a| a.name.to_string()).collect();
        let app = App::bind(config).await.unwrap();
        let (addr, admin) = (app.proxy_addr(), app.admin_addr());
        let forward = app.forward_addr();
        let apis = api_names
            .into_iter()
            .filter_map(|n| Some((app.api_addr(&n)?, n)).map(|(a, n)| (n, a)))
            .collect();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            dir,
            addr,
            admin,
            apis,
            forward,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("secret/api-key")
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A response as the test client saw it.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of a sidekey error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp: Response<hyper::body::Incoming> = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[]).await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Writes `bytes` as they are, then reads until the peer closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin `/metrics` text.
pub async fn metrics(p: &TestProxy) -> String {
    String::from_utf8_lossy(&get(p.admin, "/metrics").await.body).into_owned()
}

/// Runs the real binary with `args`; returns exit code, stdout, stderr.
pub fn sidekey(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sidekey run` (the real binary: a metrics registry of its own) on `config`, with
/// `ca.pem` and `secret/api-key` written beside it as `TestProxy::start` does. Keep the
/// directory until the process is stopped (a tuple drops its first element first).
pub async fn run_binary(up: &Upstream, config: &str, fd_limit: Option<u32>) -> (Running, TempDir) {
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    dir.write("secret/api-key", KEY);
    let path = dir.write("sidekey.toml", config);
    let run = Running::start_limited(&path, "info", &dir.path().join("logs"), fd_limit).await;
    (run, dir)
}

/// `sidekey run` as a child process, logging to files; stopped with SIGTERM by `stop`.
pub struct Running {
    /// `None` once stopped; a test that panics before `stop` still kills it (Drop).
    child: Option<std::process::Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Running {
    /// Starts `sidekey run --config config` with `RUST_LOG=rust_log`, logs into `log_dir`, and
    /// waits until it reports its listener addresses.
    pub async fn start(config: &Path, rust_log: &str, log_dir: &Path) -> Self {
        Self::start_limited(config, rust_log, log_dir, None).await
    }

    /// The same, with the open-file limit (`ulimit -n`) set to `fd_limit`.
    pub async fn start_limited(
        config: &Path,
        rust_log: &str,
        log_dir: &Path,
        fd_limit: Option<u32>,
    ) -> Self {
        let stdout = log_dir.join("stdout");
        let stderr = log_dir.join("stderr");
        let bin = env!("CARGO_BIN_EXE_sidekey");
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = std::process::Command::new("bash");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => std::process::Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", rust_log)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut addrs = None;
        let found = eventually(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&stdout).unwrap_or_default();
            addrs = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| {
                    Some((
                        v["listener"].as_str()?.parse().ok()?,
                        v["admin"].as_str()?.parse().ok()?,
                    ))
                });
            async move { addrs.is_some() }
        })
        .await;
        if !found {
            let _ = child.kill();
        }
        assert!(found, "sidekey did not report its addresses");
        let (proxy, admin) = addrs.unwrap();
        Self {
            child: Some(child),
            proxy,
            admin,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// SIGTERM, then the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .ok()?
            .code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP/1.1 client connection to `addr` (for requests with streaming bodies).
pub async fn connect_h1<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A raw HTTP/2 upstream's listening half: a TLS acceptor on `127.0.0.1:0` that offers only
/// `h2` by ALPN, with a leaf for `localhost` from a CA minted here. Returns the CA, the
/// upstream's URL, the listener and the acceptor.
pub async fn h2_tls_listener(
    name: &str,
) -> (
    Ca,
    String,
    tokio::net::TcpListener,
    tokio_rustls::TlsAcceptor,
) {
    let ca = Ca::new(name).unwrap();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(leaf.chain, leaf.key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    (ca, url, listener, acceptor)
}

/// A proxy for the raw HTTP/2 upstream at `url` (trusting `ca`), with `upstream.protocol`.
pub async fn h2_proxy(ca: &Ca, url: &str, protocol: &str) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    let text = config_text(url, "").replace(
        "response_timeout = \"2s\"",
        &format!("response_timeout = \"2s\"\nprotocol = \"{protocol}\""),
    );
    TestProxy::start_in(dir, &text).await
}

/// A raw HTTP/2 server's start: reads the client's connection preface and sends an empty
/// SETTINGS frame. False if the client went away.
pub async fn h2_raw_start<S>(io: &mut S) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    if io.read_exact(&mut preface).await.is_err() {
        return false;
    }
    io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.is_ok()
}

/// The next frame the client sends (its 9-byte head and payload), acknowledging any SETTINGS
/// on the way; None when the client went away.
pub async fn h2_raw_frame<S>(io: &mut S) -> Option<([u8; 9], Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.ok()?;
        match (head[3], head[4]) {
            (4, 0) => io.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.ok()?,
            _ => return Some((head, payload)),
        }
    }
}
