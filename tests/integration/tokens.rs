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
    /// Which secret each token was minted with.
    minted_with: Arc<Mutex<Vec<(String, String)>>>,
    /// Secrets whose tokens the API refuses (a client not activated yet).
    inactive: Arc<Mutex<Vec<String>>>,
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
            minted_with: Arc::default(),
            inactive: Arc::default(),
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
                            && get("client_secret") == Some(secret.clone())
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
                    idp.minted_with
                        .lock()
                        .unwrap()
                        .push((token.clone(), secret.clone()));
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
                let inactive = idp.inactive.lock().unwrap().clone();
                let from_inactive = idp
                    .minted_with
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(t, s)| *t == token && inactive.contains(s));
                let live = idp.issued.lock().unwrap().iter().any(|(t, at)| {
                    *t == token && at.elapsed() < idp.ttl && revoked.is_none_or(|r| *at >= r)
                });
                match live && !from_inactive {
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

/// An RSA key made now with the openssl CLI: (PEM private key, DER RSAPublicKey).
fn rsa_key(dir: &TempDir, name: &str, pkcs1: bool) -> (String, Vec<u8>) {
    let path = dir.path().join(name);
    let mut make = std::process::Command::new("openssl");
    if pkcs1 {
        make.args(["genrsa", "-traditional", "-out"])
            .arg(&path)
            .arg("2048");
    } else {
        make.args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path);
    }
    assert!(make.output().unwrap().status.success());
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(public.status.success());
    (std::fs::read_to_string(&path).unwrap(), public.stdout)
}

/// Verifies an RS256 JWT against `public` and returns its claims.
fn verify_jwt(jwt: &str, public: &[u8]) -> Option<serde_json::Value> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = jwt.rsplitn(2, '.');
    let (sig, signed) = (it.next()?, it.next()?);
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    key.verify(signed.as_bytes(), &b64.decode(sig).ok()?).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(signed.split('.').next()?).ok()?).ok()?;
    (header["alg"] == "RS256").then_some(())?;
    serde_json::from_slice(&b64.decode(signed.split('.').nth(1)?).ok()?).ok()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// GitHub: the app JWT is checked (RS256 with the app's key, iss, iat in the past, exp at most
/// 10 minutes ahead) before an installation token is issued; the API takes only that token.
#[tokio::test]
async fn a_github_app_mints_installation_tokens() {
    let dir = TempDir::new();
    let (pem, public) = rsa_key(&dir, "app.pem", true);
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_jwts = Arc::new(Mutex::new(Vec::<String>::new()));
    let (i, j) = (issued.clone(), seen_jwts.clone());
    let handler: Handler = Arc::new(move |req| {
        let (issued, jwts, public) = (i.clone(), j.clone(), public.clone());
        Box::pin(async move {
            let bearer = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            if req.method() == http::Method::POST
                && req.uri().path() == "/app/installations/7890/access_tokens"
            {
                jwts.lock().unwrap().push(bearer.clone());
                let ok = verify_jwt(&bearer, &public).is_some_and(|c| {
                    let (iat, exp) = (
                        c["iat"].as_i64().unwrap_or(0),
                        c["exp"].as_i64().unwrap_or(0),
                    );
                    c["iss"] == "123456" && iat <= now_s() - 30 && exp > now_s() && exp - iat <= 600
                });
                if !ok {
                    return sidekey::mock::json(
                        http::StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"message": "A JSON web token could not be decoded"}),
                    );
                }
                let token = format!("ghs_{:04}", issued.lock().unwrap().len() + 1);
                issued.lock().unwrap().push(token.clone());
                let expires = humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now() + Duration::from_secs(3600),
                )
                .to_string();
                return sidekey::mock::json(
                    http::StatusCode::CREATED,
                    &serde_json::json!({"token": token, "expires_at": expires}),
                );
            }
            let ok = issued.lock().unwrap().contains(&bearer);
            match ok {
                true => {
                    sidekey::mock::json(http::StatusCode::OK, &serde_json::json!([{"number": 1}]))
                }
                false => sidekey::mock::json(
                    http::StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"message": "Bad credentials"}),
                ),
            }
        })
    });
    let ca = Ca::new("test CA").unwrap();
    let mock = MockUpstream::start(&ca, handler).await.unwrap();
    dir.write("ca.pem", ca.cert_pem());
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.github]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/github"
credential = {{ scheme = "github_app", app_id = "123456", installation_id = "7890", private_key_file = "app.pem" }}
[api.github.permissions]
"issues:read" = ["GET /repos/{{o}}/{{r}}/issues"]
[service]
name = "gh-test"
allow = ["github/issues:read"]
"#,
        mock.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    assert!(ready(&p).await);
    let r = request(
        p.addr,
        "GET",
        "/github/repos/o/r/issues",
        &[("authorization", "token caller-junk")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(issued.lock().unwrap().len(), 1);
    // The app JWT went to the token endpoint only; the installation token to the API only.
    for rec in mock.requests() {
        let auth = rec
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if rec.target.starts_with("/repos/") {
            assert_eq!(auth, "Bearer ghs_0001");
        }
    }
    let shown = String::from_utf8_lossy(&get(p.admin, "/credential").await.body).into_owned()
        + &metrics(&p).await
        + &String::from_utf8_lossy(&get(p.admin, "/").await.body);
    assert!(!shown.contains("ghs_0001"));
    assert!(!shown.contains(&seen_jwts.lock().unwrap()[0]));
    assert!(!shown.contains(pem.lines().nth(1).unwrap()));
    p.stop().await;
}

/// Google: the RFC 7523 assertion is checked (RS256 with the service account's key, iss, aud =
/// token_uri, scope, a lifetime of at most an hour) at the key file's token_uri.
#[tokio::test]
async fn a_google_service_account_mints_with_a_jwt_bearer_assertion() {
    let dir = TempDir::new();
    let (pem, public) = rsa_key(&dir, "sa.pem", false);
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let token_uri = Arc::new(std::sync::OnceLock::<String>::new());
    let (i, t) = (issued.clone(), token_uri.clone());
    let handler: Handler = Arc::new(move |req| {
        let (issued, public, token_uri) = (i.clone(), public.clone(), t.clone());
        Box::pin(async move {
            if req.uri().path() == "/token" {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: Vec<(String, String)> =
                    form_urlencoded::parse(&body).into_owned().collect();
                let get = |k: &str| {
                    form.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let claims = verify_jwt(&get("assertion"), &public);
                let ok = get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    && claims.is_some_and(|c| {
                        let (iat, exp) = (
                            c["iat"].as_i64().unwrap_or(0),
                            c["exp"].as_i64().unwrap_or(0),
                        );
                        c["iss"] == "sa@proj.iam.gserviceaccount.com"
                            && c["aud"] == token_uri.get().cloned().unwrap_or_default().as_str()
                            && c["scope"] == "https://www.googleapis.com/auth/devstorage.read_only"
                            && iat <= now_s()
                            && exp - iat <= 3600
                    });
                if !ok {
                    return sidekey::mock::json(
                        http::StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                    );
                }
                let token = format!("ya29.{:04}", issued.lock().unwrap().len() + 1);
                issued.lock().unwrap().push(token.clone());
                return sidekey::mock::json(
                    http::StatusCode::OK,
                    &serde_json::json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
                );
            }
            let bearer = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let ok = issued
                .lock()
                .unwrap()
                .iter()
                .any(|t| bearer == format!("Bearer {t}"));
            match ok {
                true => sidekey::mock::json(
                    http::StatusCode::OK,
                    &serde_json::json!({"kind": "storage#objects", "items": []}),
                ),
                false => sidekey::mock::json(
                    http::StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": {"code": 401}}),
                ),
            }
        })
    });
    let ca = Ca::new("test CA").unwrap();
    let mock = MockUpstream::start(&ca, handler).await.unwrap();
    let _ = token_uri.set(format!("{}/token", mock.url()));
    dir.write("ca.pem", ca.cert_pem());
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "sa@proj.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": format!("{}/token", mock.url()),
    });
    dir.write("sa.json", &key.to_string());
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.gcs]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/gcs"
credential = {{ scheme = "google_service_account", key_file = "sa.json", scope = "https://www.googleapis.com/auth/devstorage.read_only", token_ca_file = "ca.pem" }}
[api.gcs.permissions]
"objects:list" = ["GET /storage/v1/b/{{bucket}}/o"]
[service]
name = "gcs-test"
allow = ["gcs/objects:list"]
"#,
        mock.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    assert!(
        ready(&p).await,
        "{}",
        String::from_utf8_lossy(&get(p.admin, "/credential").await.body)
    );
    let r = get(p.addr, "/gcs/storage/v1/b/bkt/o").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(issued.lock().unwrap().len(), 1);
    let shown = String::from_utf8_lossy(&get(p.admin, "/credential").await.body).into_owned()
        + &metrics(&p).await;
    assert!(!shown.contains("ya29.0001"));
    p.stop().await;
}

/// `check --online` mints one token and reports it (fingerprint, lifetime) or the token
/// endpoint's error, never the token.
#[tokio::test]
async fn check_online_mints_one_token_and_reports_without_printing_it() {
    let idp = Idp::new(Duration::from_secs(60), false);
    let (p, _mock) = start(&idp, "").await;
    let config = p.dir.path().join("sidekey.toml");
    let run = |config: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            sidekey(&["check", "--config", config.to_str().unwrap(), "--online"])
        })
    };
    let (code, out, err) = run(config.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("online: `graph`: token minted (fingerprint "),
        "{out}"
    );
    for (t, _) in idp.issued.lock().unwrap().iter() {
        assert!(!out.contains(t.as_str()) && !err.contains(t.as_str()));
    }
    std::fs::write(p.dir.path().join("keys/secret"), "wrong").unwrap();
    let (code, out, _) = run(config).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid_client"), "{out}");
    assert!(!out.contains("wrong"), "{out}");
    p.stop().await;
}

/// With `verify`, a token minted from a new client secret is tried before it replaces the one
/// in use: refused (the API has not activated the new client yet), traffic stays on the old
/// secret's token and /credential shows it pending; activated, it is switched to.
#[tokio::test]
async fn a_token_from_a_new_secret_is_verified_before_it_is_used() {
    let idp = Idp::new(Duration::from_secs(60), false);
    let new_secret = "cs_rotated_0002";
    idp.inactive.lock().unwrap().push(new_secret.to_owned());
    let (p, _mock) = start(&idp, "").await;
    let path = p.dir.path().join("sidekey.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let with_verify = text.replace(
        "path_prefix = \"/graph\"",
        "path_prefix = \"/graph\"\nverify = \"GET /v1/me\"",
    );
    assert_ne!(text, with_verify);
    std::fs::write(&path, with_verify).unwrap();
    assert!(ready(&p).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics(&p)
                .await
                .contains("sidekey_credential_verifications_total")
        })
        .await,
        "verify not configured"
    );
    let old_fp = sidekey::credential::fingerprint(SECRET.as_bytes());
    let new_fp = sidekey::credential::fingerprint(new_secret.as_bytes());
    // The IdP takes the new secret; the API refuses its tokens until activated.
    *idp.secret.lock().unwrap() = new_secret.into();
    std::fs::write(p.dir.path().join("keys/secret"), new_secret).unwrap();
    let credential = || async {
        let v: serde_json::Value =
            serde_json::from_slice(&get(p.admin, "/credential").await.body).unwrap();
        v["credentials"][0].clone()
    };
    let rejected = eventually(Duration::from_secs(5), || async {
        let c = credential().await;
        c["pending"]["state"] == "rejected" && c["pending"]["fingerprint"] == new_fp.as_str()
    })
    .await;
    assert!(rejected, "{}", credential().await);
    assert_eq!(credential().await["fingerprint"], old_fp.as_str());
    assert_eq!(
        get(p.addr, "/graph/v1/me").await.status,
        200,
        "the old token still serves"
    );
    // Activated: switched within an interval or so.
    idp.inactive.lock().unwrap().clear();
    let switched = eventually(Duration::from_secs(5), || async {
        credential().await["fingerprint"] == new_fp.as_str()
    })
    .await;
    assert!(switched, "{}", credential().await);
    assert_eq!(get(p.addr, "/graph/v1/me").await.status, 200);
    p.stop().await;
}
