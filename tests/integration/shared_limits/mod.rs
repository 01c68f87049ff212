//! `[limits.shared]` against a real `redis-server`: gateway replicas (real `sidekey run`
//! processes) sharing one caller rate, Redis killed and restarted under load, the password
//! rotated, and `rediss://` with a CA minted here.

mod redis;
mod rotation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::{CertificateDer, ServerName};
use sidekey::pki::Ca;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;
use redis::RedisServer;

pub(super) const LIMITED: &str = "skc_limited-token-for-shared-0001";
pub(super) const FREE: &str = "skc_free-token-for-shared-000002";

/// A gateway directory: listener TLS, the upstream CA, the key, and a config whose
/// `[limits.shared]` section is `shared` (the `limited` caller's rate is `rate`).
pub(super) struct Gateway {
    pub(super) dir: TempDir,
    pub(super) ca: Ca,
}

impl Gateway {
    pub(super) fn new(up: &Upstream) -> Self {
        let dir = TempDir::new();
        let ca = Ca::new("gateway listener CA").unwrap();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::create_dir_all(dir.path().join("secret")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        dir.write("tls/tls.crt", &leaf.cert_pem);
        dir.write("tls/tls.key", &leaf.key_pem);
        dir.write("ca.pem", up.ca.cert_pem());
        dir.write("secret/api-key", KEY);
        Self { dir, ca }
    }

    pub(super) async fn start(&self, up: &Upstream, rate: &str, shared: &str) -> Running {
        let sha = sidekey::proxy::caller::token_sha256;
        let config = format!(
            r#"
[listener]
address = "127.0.0.1:0"
[listener.tls]
cert_file = "tls/tls.crt"
key_file = "tls/tls.key"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "{url}"
ca_file = "ca.pem"
[credential]
file = "secret/api-key"
[reload]
interval = "30s"
debounce = "20ms"
[permissions]
read = ["GET /v1/sandboxes"]
[limits.shared]
{shared}

[[caller]]
name = "limited"
token_sha256 = "{limited}"
allow = ["read"]
{rate}

[[caller]]
name = "free"
token_sha256 = "{free}"
allow = ["read"]
"#,
            url = up.mock.url(),
            limited = sha(LIMITED),
            free = sha(FREE),
        );
        let path = self.dir.write("sidekey.toml", &config);
        Running::start(&path, "info", &self.dir.path().join("logs")).await
    }
}

/// A kept-alive HTTPS connection to a gateway.
pub(super) async fn client(addr: SocketAddr, ca_pem: &str) -> SendRequest<Full<Bytes>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET as `token`: status, `error.reason` (if any) and how long it took.
pub(super) async fn call(
    s: &mut SendRequest<Full<Bytes>>,
    token: &str,
) -> (StatusCode, String, Duration) {
    let start = Instant::now();
    let req = Request::get("/v1/sandboxes")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let reason = json["error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, reason, start.elapsed())
}

/// Sends `per_second` requests a second as `token` to each gateway for `run`; returns every
/// (status, reason, latency).
pub(super) async fn load(
    gateways: &[(SocketAddr, String)],
    token: &'static str,
    per_second: u32,
    run: Duration,
) -> Vec<(StatusCode, String, Duration)> {
    let mut tasks = Vec::new();
    for (addr, ca) in gateways {
        let mut s = client(*addr, ca).await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            let end = Instant::now() + run;
            while Instant::now() < end {
                tick.tick().await;
                out.push(call(&mut s, token).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

pub(super) fn count(results: &[(StatusCode, String, Duration)], status: StatusCode) -> usize {
    results.iter().filter(|r| r.0 == status).count()
}

pub(super) async fn limiter(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/credential").await.json()["limiter"].clone()
}

pub(super) async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = String::from_utf8_lossy(&get(admin, "/metrics").await.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Two replicas, one Redis: together they admit the caller's rate, not twice it; the
/// burst is one burst across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_rate_and_one_burst() {
    let up = Upstream::banata().await;
    let (a, b) = (Gateway::new(&up), Gateway::new(&up));
    let redis = RedisServer::start(a.dir.path(), None, None).await;
    let shared = format!("redis_url = \"{}\"\ntimeout = \"50ms\"", redis.url());
    // The burst: 5 of 10 alternating requests, whichever replica they reach.
    let (ga, gb) = (
        a.start(&up, "rate = \"1/m\"\nburst = 5", &shared).await,
        b.start(&up, "rate = \"1/m\"\nburst = 5", &shared).await,
    );
    let (mut ca, mut cb) = (
        client(ga.proxy, a.ca.cert_pem()).await,
        client(gb.proxy, b.ca.cert_pem()).await,
    );
    let mut admitted = 0;
    for i in 0..10 {
        let s = if i % 2 == 0 { &mut ca } else { &mut cb };
        if call(s, LIMITED).await.0 == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "one burst of 5 across both replicas");
    // A caller without a rate never costs a Redis call.
    let before = metric(
        ga.admin,
        "sidekey_shared_limit_decisions_total{result=\"allowed\"}",
    )
    .await;
    for _ in 0..5 {
        assert_eq!(call(&mut ca, FREE).await.0, StatusCode::OK);
    }
    let after = metric(
        ga.admin,
        "sidekey_shared_limit_decisions_total{result=\"allowed\"}",
    )
    .await;
    assert_eq!(before, after);
    drop((ga, gb));

    // 20/s shared, offered 100/s at each replica for 10 s: about 20/s * 10 s + the burst
    // (20) in all, where two independent limiters admit twice that.
    redis.cmd(&["FLUSHALL"]).await;
    let (ga, gb) = (
        a.start(&up, "rate = \"20/s\"", &shared).await,
        b.start(&up, "rate = \"20/s\"", &shared).await,
    );
    let results = load(
        &[
            (ga.proxy, a.ca.cert_pem().to_owned()),
            (gb.proxy, b.ca.cert_pem().to_owned()),
        ],
        LIMITED,
        100,
        Duration::from_secs(10),
    )
    .await;
    let ok = count(&results, StatusCode::OK) as f64;
    let limited = count(&results, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ok as usize + limited, results.len(), "only 200 and 429");
    let expected = 20.0 * 10.0 + 20.0;
    assert!(
        (ok - expected).abs() <= expected * 0.10,
        "admitted {ok} of {}, expected {expected} +-10%",
        results.len()
    );
    assert_eq!(metric(ga.admin, "sidekey_shared_limit_up").await, 1.0);
}

/// Redis killed under load: the fallback decides at once (no request waits past the
/// timeout, none fails with `local`), `/readyz` stays ready, and sharing resumes on its own
/// once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_at_once_and_recovers() {
    let up = Upstream::banata().await;
    let gw = Gateway::new(&up);
    let mut redis = RedisServer::start(gw.dir.path(), None, None).await;
    let shared = format!("redis_url = \"{}\"\ntimeout = \"20ms\"", redis.url());
    let run = gw.start(&up, "rate = \"50/s\"", &shared).await;
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    assert_eq!(limiter(run.admin).await["state"], "up");

    let gateways = [(run.proxy, gw.ca.cert_pem().to_owned())];
    let loader =
        tokio::spawn(async move { load(&gateways, LIMITED, 40, Duration::from_secs(3)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    let results = loader.await.unwrap();
    let worst = results.iter().map(|r| r.2).max().unwrap();
    assert_eq!(
        count(&results, StatusCode::OK),
        results.len(),
        "no failures"
    );
    assert!(
        worst < Duration::from_millis(20 + 50),
        "a request waited {worst:?} (timeout 20 ms)"
    );
    assert_eq!(get(run.admin, "/readyz").await.status, StatusCode::OK);
    let status = limiter(run.admin).await;
    assert_eq!(status["healthy"], false, "{status}");
    assert!(
        metric(
            run.admin,
            "sidekey_shared_limit_decisions_total{result=\"fallback_allowed\"}"
        )
        .await
            > 0.0
    );
    let errors = metric(
        run.admin,
        "sidekey_shared_limit_errors_total{reason=\"connection\"}",
    )
    .await
        + metric(
            run.admin,
            "sidekey_shared_limit_errors_total{reason=\"timeout\"}",
        )
        .await;
    assert!(errors > 0.0);
    assert_eq!(metric(run.admin, "sidekey_shared_limit_up").await, 0.0);
    // One warning per ten seconds, not one per request.
    let log = std::fs::read_to_string(&run.stdout).unwrap();
    let warnings = log.matches("shared rate limiter unavailable").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings");

    redis.restart().await;
    // With no traffic at all, the limiter finds Redis again by itself: the gauge (and the
    // SidekeySharedLimiterDown alert) clear before the next request arrives.
    let admin = run.admin;
    let back = eventually(Duration::from_secs(10), || async move {
        limiter(admin).await["state"] == "up"
            && metric(admin, "sidekey_shared_limit_up").await == 1.0
    })
    .await;
    assert!(
        back,
        "the idle limiter did not reconnect: {}",
        limiter(run.admin).await
    );
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    let keys = redis.cmd(&["KEYS", "sidekey:*"]).await;
    assert_eq!(
        keys,
        ::redis::Value::Array(vec![::redis::Value::BulkString(
            b"sidekey:rate:limited".to_vec()
        )])
    );
}
