//! A mock HTTPS upstream for `sidekey demo` and the tests: TLS with a certificate from a CA
//! minted at start, HTTP/1.1 and HTTP/2 (ALPN), and a record of every request it received
//! (exact target bytes and headers), so a test can assert what did, or did not, arrive.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::pki::{Ca, Leaf};

/// Most requests a mock keeps (tests send far fewer).
const MAX_RECORDS: usize = 100_000;

/// Response body type handlers return.
pub type MockBody = BoxBody<Bytes, std::io::Error>;
/// A request handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<MockBody>> + Send>>
        + Send
        + Sync,
>;

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub version: Version,
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    ca_pem: String,
    records: Arc<Mutex<Vec<Recorded>>>,
    /// Off for the demo: a long-running mock must not keep every request it saw.
    recording: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    _stop: watch::Sender<bool>,
}

impl MockUpstream {
    /// Starts on 127.0.0.1:0 with a certificate for `localhost` and `127.0.0.1` from `ca`.
    pub async fn start(ca: &Ca, handler: Handler) -> std::io::Result<Self> {
        let leaf = ca
            .leaf(&["localhost", "127.0.0.1"])
            .map_err(std::io::Error::other)?;
        Self::start_with_leaf(ca.cert_pem().to_owned(), leaf, handler).await
    }

    /// Starts with a given certificate (tests of untrusted or expired certificates).
    pub async fn start_with_leaf(
        ca_pem: String,
        leaf: Leaf,
        handler: Handler,
    ) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(leaf.chain, leaf.key)
            })
            .map_err(std::io::Error::other)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let recording = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let (recs, conns, on) = (records.clone(), connections.clone(), recording.clone());
        tokio::spawn(async move {
            loop {
                // An accept error (a connection reset in the backlog, a full fd table) must not
                // end the loop: `Ok(..) = accept()` in `select!` would disable the branch and
                // leave the mock deaf for good (found by the 30-minute soak).
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = stopped.changed() => return,
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, recs, on) =
                    (acceptor.clone(), handler.clone(), recs.clone(), on.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        if on.load(Ordering::Relaxed) {
                            record(&recs, &req);
                        }
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem,
            records,
            recording,
            connections,
            _stop: stop,
        })
    }

    /// A Banata-like API: 401 without a bearer key, else JSON naming the key's fingerprint.
    pub async fn start_banata(ca: &Ca) -> std::io::Result<Self> {
        Self::start(ca, Arc::new(|req| Box::pin(banata(req)))).await
    }

    /// A mock LLM-style API that takes its key in `x-api-key` (as Anthropic's does) and
    /// answers with the key's fingerprint.
    pub async fn start_llm(ca: &Ca) -> std::io::Result<Self> {
        Self::start(ca, Arc::new(|req| Box::pin(llm(req)))).await
    }

    /// A Twilio-like messaging API that takes HTTP Basic (account SID + auth token) and
    /// answers with the user name and the fingerprint of the password it received.
    pub async fn start_basic(ca: &Ca) -> std::io::Result<Self> {
        Self::start(ca, Arc::new(|req| Box::pin(basic(req)))).await
    }

    /// Stops recording requests (and drops what was recorded).
    pub fn without_recording(self) -> Self {
        self.recording.store(false, Ordering::Relaxed);
        if let Ok(mut r) = self.records.lock() {
            r.clear();
        }
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn record(records: &Mutex<Vec<Recorded>>, req: &Request<Incoming>) {
    let rec = Recorded {
        method: req.method().clone(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: req.headers().clone(),
        version: req.version(),
    };
    if let Ok(mut r) = records.lock() {
        // A hard cap, so even a recording mock left running stays bounded.
        if r.len() < MAX_RECORDS {
            r.push(rec);
        }
    }
}

/// A JSON response body.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<MockBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn llm(req: Request<Incoming>) -> Response<MockBody> {
    let key = req
        .headers()
        .get("x-api-key")
        .filter(|v| !v.is_empty())
        .map(|v| crate::credential::fingerprint(v.as_bytes()));
    match key {
        None => json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": {"type": "authentication_error", "message": "missing x-api-key"}}),
        ),
        Some(fingerprint) => json(
            StatusCode::OK,
            &serde_json::json!({
                "mock": "llm",
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "key_fingerprint": fingerprint,
                "content": [{"type": "text", "text": "hello from the mock LLM"}],
            }),
        ),
    }
}

async fn basic(req: Request<Incoming>) -> Response<MockBody> {
    use base64::Engine;
    let pair = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, password)) = pair.as_deref().and_then(|p| p.split_once(':')) else {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": {"code": 20003, "message": "Authenticate"}}),
        );
    };
    json(
        StatusCode::CREATED,
        &serde_json::json!({
            "mock": "sms",
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "account": user,
            "key_fingerprint": crate::credential::fingerprint(password.as_bytes()),
        }),
    )
}

async fn banata(req: Request<Incoming>) -> Response<MockBody> {
    let key = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|k| !k.is_empty())
        .map(|k| crate::credential::fingerprint(k.as_bytes()));
    let Some(fingerprint) = key else {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": {"code": "unauthorized", "message": "missing API key"}}),
        );
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let status = if method == Method::POST && path == "/v1/sandboxes" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(
        status,
        &serde_json::json!({
            "mock": "banata",
            "method": method.as_str(),
            "path": path,
            "key_fingerprint": fingerprint,
        }),
    )
}
