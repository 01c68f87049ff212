//! Tokens sidekey mints itself: an OAuth2 token endpoint (client credentials, both client
//! authentication methods) and a GitHub App endpoint, both TLS mocks with short-lived tokens so
//! refreshes happen during the test; an API mock that takes only live tokens it issued.
//! Single-flight under load, no failed request across refreshes, invalid_client shown, an
//! outage shorter than the token's life unnoticed and a longer one failing closed then
//! recovering, a 401 forcing one refresh and a replay, nothing of a secret or token in what
//! sidekey shows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::BodyExt;
use sidekey::mock::{Handler, MockUpstream};
use sidekey::pki::Ca;

use crate::support::*;

const SECRET: &str = "cs_token_secret_0001";

/// A token endpoint and the API it guards, in one mock: tokens live `ttl`.
#[derive(Clone)]
struct Idp {
    issued: Arc<Mutex<Vec<(String, Instant)>>>,
    token_requests: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    secret: Arc<Mutex<String>>,
    ttl: Duration,
    /// Tokens issued before this are refused by the API (revoked).
    revoked_before: Arc<Mutex<Option<Instant>>>,
    /// `post`: the client authenticates in the body; else with Basic.
    post: bool,
}

impl Idp {
    fn new(ttl: Duration, post: bool) -> Self {
        Self {
            issued: Arc::default(),
            token_requests: Arc::default(),
            down: Arc::default(),
            secret: Arc::new(Mutex::new(SECRET.to_owned())),
            ttl,
            revoked_before: Arc::default(),
            post,
        }
    }

    fn handler(&self) -> Handler {
        let idp = self.clone();
        Arc::new(move |req| {
            let idp = idp.clone();
            Box::pin(async move {
                let json = |s: u16, v: serde_json::Value| {
                    sidekey::mock::json(http::StatusCode::from_u16(s).unwrap(), &v)
                };
                if req.uri().path() == "/oauth2/token" {
                    idp.token_requests.fetch_add(1, Ordering::SeqCst);
                    if idp.down.load(Ordering::SeqCst) {
                        return json(503, serde_json::json!({"error": "temporarily_unavailable"}));
                    }
                    let basic = req.headers().get("authorization").cloned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let form: Vec<(String, String)> =
                        form_urlencoded::parse(&body).into_owned().collect();
                    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                    let secret = idp.secret.lock().unwrap().clone();
                    let ok_client = if idp.post {
                        basic.is_none()
                            && get("client_id").as_deref() == Some("cid")
                            && get("client_secret") == Some(secret)
                    } else {
                        let want = base64::engine::general_purpose::STANDARD
                            .encode(format!("cid:{secret}"));
                        basic.is_some_and(|b| b == format!("Basic {want}").as_str())
                            && get("client_secret").is_none()
                    };
                    if get("grant_type").as_deref() != Some("client_credentials")
                        || get("scope").as_deref() != Some("api.read")
                    {
                        return json(400, serde_json::json!({"error": "invalid_request"}));
                    }
                    if !ok_client {
                        return json(
                            401,
                            serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"}),
                        );
                    }
                    let mut issued = idp.issued.lock().unwrap();
                    let token = format!("at_{:04}", issued.len() + 1);
                    issued.push((token.clone(), Instant::now()));
                    return json(
                        200,
                        serde_json::json!({
                            "access_token": token, "token_type": "Bearer",
                            // A numeric string, as Azure AD v1 sends it.
                            "expires_in": format!("{}", idp.ttl.as_secs_f64()),
                        }),
                    );
                }
                let token = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_owned();
                let revoked = *idp.revoked_before.lock().unwrap();
                let live = idp.issued.lock().unwrap().iter().any(|(t, at)| {
                    *t == token && at.elapsed() < idp.ttl && revoked.is_none_or(|r| *at >= r)
                });
                match live {
                    true => json(200, serde_json::json!({"token": token})),
                    false => json(401, serde_json::json!({"error": "invalid_token"})),
                }
            })
        })
    }
}

async fn start(idp: &Idp, extra: &str) -> (TestProxy, MockUpstream) {
    let ca = Ca::new("test CA").unwrap();
    let mock = MockUpstream::start(&ca, idp.handler()).await.unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    dir.write("keys/secret", SECRET);
    let auth = if idp.post { "post" } else { "basic" };
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.graph]
url = "{url}"
ca_file = "ca.pem"
path_prefix = "/graph"
[api.graph.credential]
scheme = "oauth2_client_credentials"
token_url = "{url}/oauth2/token"
token_ca_file = "ca.pem"
client_id = "cid"
client_secret_file = "keys/secret"
client_auth = "{auth}"
scope = "api.read"
{extra}
[api.graph.permissions]
"me" = ["GET /v1/me", "POST /v1/me"]
[service]
name = "tokens-test"
allow = ["graph/me"]
[runtime]
shutdown_idle = "50ms"
[reload]
interval = "300ms"
debounce = "20ms"
"#,
        url = mock.url()
    );
    (TestProxy::start_in(dir, &config).await, mock)
}

async fn ready(p: &TestProxy) -> bool {
    eventually(Duration::from_secs(10), || async {
        get(p.admin, "/readyz").await.status == 200
    })
    .await
}

/// Runs `n` request loops until `stop`; every status.
fn load(
    addr: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut s = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    s.push(get(addr, "/graph/v1/me").await.status.as_u16());
                }
                s
            })
        })
        .collect()
}

async fn statuses(tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test]
async fn refreshes_single_flight_under_load_with_no_failed_request() {
    for post in [false, true] {
        let idp = Idp::new(Duration::from_secs(2), post);
        let (p, _mock) = start(&idp, "").await;
        assert!(ready(&p).await, "no token minted");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(p.addr, 16, stop.clone());
        tokio::time::sleep(Duration::from_millis(4500)).await;
        stop.store(true, Ordering::SeqCst);
        let all = statuses(tasks).await;
        assert!(all.len() > 50, "{}", all.len());
        assert!(
            all.iter().all(|s| *s == 200),
            "post={post}: {:?}",
            all.iter().filter(|s| **s != 200).collect::<Vec<_>>()
        );
        // 2 s tokens refreshed at 1.6 s: about 3 or 4 over 4.5 s, one at a time.
        let n = idp.token_requests.load(Ordering::SeqCst);
        assert!((3..=6).contains(&n), "post={post}: {n} token requests");
        // /credential shows the token's fingerprint and expiry, never the token or secret.
        let body = String::from_utf8_lossy(&get(p.admin, "/credential").await.body).into_owned();
        let tokens: Vec<String> = idp
            .issued
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        for t in tokens.iter().chain([&SECRET.to_owned()]) {
            assert!(!body.contains(t.as_str()), "{t} in /credential");
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let c = &v["credentials"][0];
        assert_eq!(c["scheme"], "oauth2_client_credentials");
        assert_eq!(
            c["fingerprint"],
            sidekey::credential::fingerprint(SECRET.as_bytes())
        );
        let last = tokens.last().unwrap();
        assert!(
            eventually(Duration::from_secs(2), || async {
                let v: serde_json::Value =
                    serde_json::from_slice(&get(p.admin, "/credential").await.body).unwrap();
                v["credentials"][0]["token"]["fingerprint"]
                    == sidekey::credential::fingerprint(
                        idp.issued.lock().unwrap().last().unwrap().0.as_bytes(),
                    )
            })
            .await,
            "{last}"
        );
        let m = metrics(&p).await;
        assert!(m.contains("sidekey_token_expiry_timestamp_seconds"), "{m}");
        for t in &tokens {
            assert!(!m.contains(t.as_str()));
        }
        p.stop().await;
    }
}

#[tokio::test]
async fn invalid_client_fails_closed_and_a_fixed_secret_recovers() {
    let idp = Idp::new(Duration::from_secs(30), false);
    *idp.secret.lock().unwrap() = "the_idp_expects_another".into();
    let (p, _mock) = start(&idp, "").await;
    let refused = eventually(Duration::from_secs(5), || async {
        metrics(&p).await.lines().any(|l| {
            l.starts_with("sidekey_token_fetches_total")
                && l.contains("result=\"refused\"")
                && !l.ends_with(" 0")
        })
    })
    .await;
    assert!(refused);
    let r = get(p.addr, "/graph/v1/me").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "credential_unavailable")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(SECRET));
    assert_eq!(get(p.admin, "/readyz").await.status, 503);
    // The operator fixes the secret file: the next mint uses it.
    *idp.secret.lock().unwrap() = "cs_fixed_0002".into();
    std::fs::write(p.dir.path().join("keys/secret"), "cs_fixed_0002").unwrap();
    assert!(ready(&p).await);
    assert_eq!(get(p.addr, "/graph/v1/me").await.status, 200);
    p.stop().await;
}

#[tokio::test]
async fn a_short_outage_goes_unnoticed_and_a_long_one_fails_closed_then_recovers() {
    let idp = Idp::new(Duration::from_secs(3), false);
    let (p, _mock) = start(&idp, "refresh_before = \"1s\"").await;
    assert!(ready(&p).await);
    // Down for a second around the refresh point: the current token serves throughout and a
    // retry after the outage mints before expiry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idp.down.store(true, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(p.addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    idp.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let all = statuses(tasks).await;
    assert!(
        all.iter().all(|s| *s == 200),
        "{:?}",
        all.iter().filter(|s| **s != 200).count()
    );
    // Down past the expiry: 503 credential_unavailable, nothing sent; back: recovered.
    idp.down.store(true, Ordering::SeqCst);
    let closed = eventually(Duration::from_secs(8), || async {
        get(p.addr, "/graph/v1/me").await.code() == "credential_unavailable"
    })
    .await;
    assert!(closed);
    idp.down.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(8), || async {
            get(p.addr, "/graph/v1/me").await.status == 200
        })
        .await
    );
    p.stop().await;
}

#[tokio::test]
async fn a_401_forces_one_refresh_and_a_replay() {
    let idp = Idp::new(Duration::from_secs(60), false);
    let (p, _mock) = start(&idp, "").await;
    assert!(ready(&p).await);
    assert_eq!(get(p.addr, "/graph/v1/me").await.status, 200);
    let before = idp.token_requests.load(Ordering::SeqCst);
    // The API revokes every token issued so far.
    *idp.revoked_before.lock().unwrap() = Some(Instant::now());
    let all = futures_util::future::join_all((0..8).map(|_| get(p.addr, "/graph/v1/me"))).await;
    assert!(
        all.iter().all(|r| r.status == 200),
        "{:?}",
        all.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        idp.token_requests.load(Ordering::SeqCst),
        before + 1,
        "one forced refresh, shared"
    );
    p.stop().await;
}
